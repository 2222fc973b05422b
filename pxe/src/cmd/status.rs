//! `pxe status`, `pxe arm`, `pxe disarm`: the API as an operator reads it.

use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::clean;
use super::client::Client;
use crate::cli::{NodeArgs, StatusArgs};

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

pub fn status(a: &StatusArgs) -> Result<()> {
    let client = Client::new(&a.server, &a.token)?;
    let path = "/api/v1/nodes";
    if !a.watch {
        let v = client.get(path).context("asking the pxe server")?;
        print!(
            "{}",
            table(v["nodes"].as_array().map(Vec::as_slice).unwrap_or_default())
        );
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
    let client = Client::new(&a.server, &a.token)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
