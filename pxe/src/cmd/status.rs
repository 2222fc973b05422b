//! `pxe status`, `pxe arm`, `pxe disarm`: the API as an operator reads it.

use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client;
use crate::cli::{NodeArgs, StatusArgs};

fn base(server: &str) -> &str {
    server.trim_end_matches('/')
}

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
        let s = |k: &str| n[k].as_str().unwrap_or("-").to_string();
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
    let url = format!("{}/api/v1/nodes", base(&a.server));
    if !a.watch {
        let v = client::get_json(&url).context("asking the pxe server")?;
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
        let v = client::get_json(&url).context("asking the pxe server")?;
        for n in v["nodes"].as_array().into_iter().flatten() {
            let host = n["hostname"].as_str().unwrap_or("?").to_string();
            let bar = bars.entry(host.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(host.clone());
                b
            });
            bar.set_length(n["bytes_total"].as_u64().unwrap_or(0));
            bar.set_position(n["bytes_written"].as_u64().unwrap_or(0));
            let state = n["state"].as_str().unwrap_or("-");
            let msg = match (state, n["last_error"].as_str()) {
                ("failed", Some(e)) => format!("failed: {e}"),
                _ => state.to_string(),
            };
            bar.set_message(msg);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn arm(a: &NodeArgs, arm: bool) -> Result<()> {
    let verb = if arm { "arm" } else { "disarm" };
    let url = format!("{}/api/v1/nodes/{}/{verb}", base(&a.server), a.node);
    let v = client::post_json(&url, &Value::Null).with_context(|| format!("{verb} {}", a.node))?;
    println!("{}: {}", a.node, v["state"].as_str().unwrap_or("?"));
    Ok(())
}
