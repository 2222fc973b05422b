//! `/metrics` in the Prometheus text format, from the counters each server keeps as atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::serve::dhcp::CountersSnapshot;
use crate::serve::tftp::TftpStats;
use crate::state::{NodeRecord, NodeState};

/// HTTP requests by route group and status class.
#[derive(Default)]
pub struct HttpCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    pub bytes: AtomicU64,
}

impl HttpCounters {
    pub fn record(&self, route: &'static str, status: u16) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((route, status))
            .or_default() += 1;
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(
    dhcp: Option<&CountersSnapshot>,
    tftp: &TftpStats,
    http: &HttpCounters,
    nodes: &[NodeRecord],
) -> String {
    let mut o = String::new();
    if let Some(d) = dhcp {
        header(
            &mut o,
            "ironseed_dhcp_received_total",
            "counter",
            "DHCP datagrams received.",
        );
        let _ = writeln!(o, "ironseed_dhcp_received_total {}", d.received);
        header(
            &mut o,
            "ironseed_dhcp_malformed_total",
            "counter",
            "Datagrams that did not decode.",
        );
        let _ = writeln!(o, "ironseed_dhcp_malformed_total {}", d.malformed);
        header(
            &mut o,
            "ironseed_dhcp_replies_total",
            "counter",
            "DHCP replies sent, by client architecture (option 93).",
        );
        for (arch, n) in &d.replies_by_arch {
            let _ = writeln!(o, "ironseed_dhcp_replies_total{{arch=\"{arch}\"}} {n}");
        }
        header(
            &mut o,
            "ironseed_dhcp_decisions_total",
            "counter",
            "Decoded requests by policy decision.",
        );
        for (dec, n) in &d.by_decision {
            let _ = writeln!(o, "ironseed_dhcp_decisions_total{{decision=\"{dec}\"}} {n}");
        }
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    header(
        &mut o,
        "ironseed_tftp_transfers_total",
        "counter",
        "TFTP transfers by outcome.",
    );
    for (outcome, v) in [
        ("started", g(&tftp.started)),
        ("finished", g(&tftp.finished)),
        ("failed", g(&tftp.failed)),
        ("aborted_by_client", g(&tftp.aborted_by_client)),
        ("refused", g(&tftp.refused)),
    ] {
        let _ = writeln!(
            o,
            "ironseed_tftp_transfers_total{{outcome=\"{outcome}\"}} {v}"
        );
    }
    header(
        &mut o,
        "ironseed_tftp_bytes_sent_total",
        "counter",
        "TFTP DATA payload bytes sent.",
    );
    let _ = writeln!(o, "ironseed_tftp_bytes_sent_total {}", g(&tftp.bytes_sent));
    header(
        &mut o,
        "ironseed_tftp_retransmits_total",
        "counter",
        "TFTP packets sent again after a timeout.",
    );
    let _ = writeln!(
        o,
        "ironseed_tftp_retransmits_total {}",
        g(&tftp.retransmits)
    );
    header(
        &mut o,
        "ironseed_tftp_transfers_active",
        "gauge",
        "TFTP transfers running now.",
    );
    let _ = writeln!(o, "ironseed_tftp_transfers_active {}", g(&tftp.active));
    header(
        &mut o,
        "ironseed_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    for ((route, status), n) in http.counts.lock().unwrap().iter() {
        let _ = writeln!(
            o,
            "ironseed_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    header(&mut o, "ironseed_nodes", "gauge", "Nodes by install state.");
    for s in [
        NodeState::Armed,
        NodeState::Booting,
        NodeState::Installing,
        NodeState::Installed,
        NodeState::Booted,
        NodeState::Failed,
        NodeState::Disarmed,
    ] {
        let n = nodes.iter().filter(|r| r.state == s).count();
        let label = serde_json::to_value(s).unwrap();
        let _ = writeln!(o, "ironseed_nodes{{state={label}}} {n}");
    }
    o
}
