//! The lab's node table (`lab up`'s end, `lab status`): pure formatting of what the caller
//! collected from `lab.json`, the processes and pxe. Every text that came from the network is
//! already escaped by the caller.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub node: String,
    pub mac: String,
    /// qemu running (PID and start time as recorded).
    pub vm_running: bool,
    /// pxe's state, or `-` when pxe is not reachable or does not know the node.
    pub state: String,
    /// Arming/power-on to `booted`, when measured.
    pub took: Option<Duration>,
    /// The first-boot report's notes (`data-disk: …`, `first-boot-failed: …`).
    pub notes: Vec<String>,
}

fn dur(d: Option<Duration>) -> String {
    match d {
        Some(d) => {
            let s = d.as_secs();
            format!("{}m{:02}s", s / 60, s % 60)
        }
        None => "-".into(),
    }
}

/// Columns padded to the widest cell; notes on their own indented lines below the node.
pub fn render(rows: &[Row]) -> String {
    let head = ["NODE", "MAC", "VM", "STATE", "TO BOOTED"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.node.clone(),
                r.mac.clone(),
                if r.vm_running { "running" } else { "stopped" }.to_string(),
                r.state.clone(),
                dur(r.took),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, x) in c.iter().enumerate() {
            w[i] = w[i].max(x.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, x) in c.iter().enumerate() {
            if i + 1 == c.len() {
                s.push_str(x);
            } else {
                s.push_str(&format!("{x:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&head.map(String::from));
    for (r, c) in rows.iter().zip(&cells) {
        out.push_str(&line(c));
        for n in &r.notes {
            out.push_str(&format!("    {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_columns_and_notes_below_their_node() {
        let rows = vec![
            Row {
                node: "vm-server1".into(),
                mac: "52:54:00:88:00:11".into(),
                vm_running: true,
                state: "booted".into(),
                took: Some(Duration::from_secs(185)),
                notes: vec![],
            },
            Row {
                node: "nas".into(),
                mac: "52:54:00:88:07:30".into(),
                vm_running: false,
                state: "installing".into(),
                took: None,
                notes: vec!["data-disk: media: kept (xfs)".into()],
            },
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NODE        MAC                VM       STATE       TO BOOTED"
        );
        assert_eq!(
            lines[1],
            "vm-server1  52:54:00:88:00:11  running  booted      3m05s"
        );
        assert_eq!(
            lines[2],
            "nas         52:54:00:88:07:30  stopped  installing  -"
        );
        assert_eq!(lines[3], "    data-disk: media: kept (xfs)");
        assert_eq!(lines.len(), 4);
    }
}
