//! `pxe status`, `pxe arm`, `pxe disarm`: the API as an operator reads it.

use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::clean;
use super::client::Client;
use crate::cli::{InspectArgs, NodeArgs, StatusArgs};

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn table(nodes: &[Value]) -> String {
    let mut out = format!(
        "{:<16} {:<18} {:<15} {:<7} {:<11} {}\n",
        "NODE", "MAC", "IP", "ROLE", "STATE", "DETAIL"
    );
    for n in nodes {
        let s = |k: &str| clean(n[k].as_str().unwrap_or("-"));
        let state = s("state");
        let detail = match state.as_str() {
            "installing" => format!(
                "{} / {}",
                fmt_bytes(n["bytes_written"].as_u64().unwrap_or(0)),
                fmt_bytes(n["bytes_total"].as_u64().unwrap_or(0))
            ),
            "failed" => s("last_error"),
            "installed" | "booted" => format!("installs: {}", n["installs"]),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<16} {:<18} {:<15} {:<7} {:<11} {}\n",
            s("hostname"),
            s("mac"),
            s("ip"),
            s("role"),
            state,
            detail
        ));
    }
    out
}

/// `5s`, `3m`, `2h`, `4d`: how long ago, for the discovered table.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Machines not in the inventory. Every field came from the network: cleaned and cut.
fn discovered_table(machines: &[Value], now_ms: u64) -> String {
    let row = |c: [&str; 7]| {
        format!(
            "{:<18} {:<5} {:<6} {:<9} {:<8} {:<7} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    let mut out = row([
        "MAC",
        "BOOT",
        "SEEN",
        "LAST",
        "IF",
        "INSPECT",
        "VENDOR CLASS / FACTS",
    ]);
    for m in machines {
        let s = |k: &str| images::bundle::printable(m[k].as_str().unwrap_or("-"), 48);
        let boot = match m["arch"].as_u64() {
            Some(0) => "bios",
            Some(6 | 7 | 9 | 10 | 11 | 16) => "uefi",
            _ => "-",
        };
        let f = &m["facts"];
        let what = if f.is_object() {
            let d = |k: &str| images::bundle::printable(f["dmi"][k].as_str().unwrap_or("?"), 40);
            format!(
                "facts: {} {}, {} disks, {} NICs",
                d("sys_vendor"),
                d("product_name"),
                f["disks"].as_array().map_or(0, Vec::len),
                f["nics"].as_array().map_or(0, Vec::len)
            )
        } else {
            s("vendor_class")
        };
        out.push_str(&row([
            &s("mac"),
            boot,
            &m["count"].as_u64().unwrap_or(0).to_string(),
            &ago(now_ms, m["last_seen_ms"].as_u64().unwrap_or(0)),
            &s("interface"),
            if m["inspect"].as_bool() == Some(true) {
                "armed"
            } else {
                "-"
            },
            &what,
        ]));
    }
    out
}

pub fn status(a: &StatusArgs) -> Result<()> {
    let client = Client::new(&a.remote.server, &a.remote.token)?;
    let path = "/api/v1/nodes";
    if !a.watch {
        let v = client.get(path).context("asking the pxe server")?;
        print!(
            "{}",
            table(v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default())
        );
        let d = client
            .get("/api/v1/discovered")
            .context("asking the pxe server")?;
        let machines = d["machines"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !machines.is_empty() {
            println!("\nDiscovered (not in the inventory):");
            print!("{}", discovered_table(machines, pxe::state::now_ms()));
        }
        return Ok(());
    }
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:<16} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}")
            .unwrap()
            .progress_chars("=> ");
    let mut bars: std::collections::BTreeMap<String, ProgressBar> = Default::default();
    loop {
        let v = client.get(path).context("asking the pxe server")?;
        for n in v["nodes"].as_array().into_iter().flatten() {
            let host = clean(n["hostname"].as_str().unwrap_or("?"));
            let bar = bars.entry(host.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(host.clone());
                b
            });
            bar.set_length(n["bytes_total"].as_u64().unwrap_or(0));
            bar.set_position(n["bytes_written"].as_u64().unwrap_or(0));
            let state = clean(n["state"].as_str().unwrap_or("-"));
            let msg = match (state.as_str(), n["last_error"].as_str()) {
                ("failed", Some(e)) => format!("failed: {}", clean(e)),
                _ => state,
            };
            bar.set_message(msg);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn arm(a: &NodeArgs, arm: bool) -> Result<()> {
    let verb = if arm { "arm" } else { "disarm" };
    let client = Client::new(&a.remote.server, &a.remote.token)?;
    let nodes: Vec<String> = if a.all {
        let v = client
            .get("/api/v1/nodes")
            .context("asking the pxe server")?;
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["hostname"].as_str().map(String::from))
            .collect()
    } else {
        a.nodes.clone()
    };
    for node in &nodes {
        let v = client
            .post(&format!("/api/v1/nodes/{node}/{verb}"))
            .with_context(|| format!("{verb} {}", clean(node)))?;
        println!(
            "{}: {}",
            clean(node),
            clean(v["state"].as_str().unwrap_or("?"))
        );
    }
    Ok(())
}

pub fn inspect(a: &InspectArgs) -> Result<()> {
    let client = Client::new(&a.remote.server, &a.remote.token)?;
    for mac in &a.macs {
        let m = images::bundle::Mac::parse_nic(mac)?;
        client
            .post(&format!("/api/v1/discovered/{m}/inspect"))
            .with_context(|| format!("inspect {m}"))?;
        println!("{m}: armed for inspection: its next PXE boot reports its hardware");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects: vendor classes and facts any LAN client sent cannot drive the operator's
    /// terminal.
    #[test]
    fn the_discovered_table_strips_escape_sequences() {
        let m = vec![
            serde_json::json!({
                "mac": "52:54:00:00:00:01", "arch": 7, "count": 3, "last_seen_ms": 1000,
                "interface": "eth0", "inspect": true,
                "vendor_class": "PXE\u{1b}[2J\u{1b}]0;x\u{7}Client\nfake",
            }),
            serde_json::json!({
                "mac": "52:54:00:00:00:02", "arch": 0, "count": 1, "last_seen_ms": 0,
                "facts": {"dmi": {"sys_vendor": "Dell\u{1b}[31m", "product_name": "R630"},
                          "disks": [{}, {}], "nics": [{}]},
            }),
        ];
        let t = discovered_table(&m, 61_000);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.contains("uefi") && t.contains("armed") && t.contains("1m ago"));
        assert!(t.contains("facts: Dell[31m R630, 2 disks, 1 NICs"), "{t}");
    }

    /// Protects: a failure reason a node (or anyone on the LAN) reported cannot drive the
    /// operator's terminal.
    #[test]
    fn the_table_strips_escape_sequences_from_the_network() {
        let nodes = vec![serde_json::json!({
            "hostname": "n1\u{1b}]0;pwned\u{7}",
            "state": "failed",
            "last_error": "disk\u{1b}[2J\u{1b}[31mgone\r\nfake line",
        })];
        let t = table(&nodes);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains("gone"));
    }
}
