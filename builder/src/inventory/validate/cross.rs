//! Rules that look at several sections at once: duplicates, the VIP against node addresses,
//! HA shape.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Ctx;
use crate::diag::Span;
use crate::inventory::model::*;
use crate::inventory::profiles::span;
use crate::inventory::raw::*;

/// Rules that look at several parts at once: duplicates, the VIP against node addresses, HA shape.
pub(super) fn cross_checks(
    c: &mut Ctx,
    raw: &RawInventory,
    net: &Network,
    cl: &Cluster,
    app: &Appliance,
    _nodes: &[Node],
) {
    let mut hostnames: HashMap<&str, (usize, &S<String>)> = HashMap::new();
    let mut macs: HashMap<String, (usize, String)> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, String> = HashMap::new();
    ips.insert(net.gateway, "the gateway (network.gateway)".into());
    ips.insert(app.ip, "the appliance (appliance.ip)".into());
    if app.ip == net.gateway {
        c.err(
            &raw.appliance.ip,
            "appliance.ip",
            "the appliance has the gateway's address",
        );
    }
    if app.ip == cl.api.vip {
        c.err(
            &raw.cluster.api.vip,
            "cluster.api.vip",
            "the VIP is the appliance's address",
        );
    }
    if let Some(p) = &net.dhcp_pool
        && p.contains(app.ip)
    {
        c.err(
            &raw.appliance.ip,
            "appliance.ip",
            format!("{} is inside the DHCP pool", app.ip),
        );
    }
    for (i, sn) in raw.nodes.iter().enumerate() {
        let n = &sn.value;
        let name = n.hostname.value.as_str();
        if let Some((j, _)) = hostnames.get(name) {
            c.err(
                &n.hostname,
                format!("nodes[{i}].hostname"),
                format!("duplicate hostname `{name}`: also nodes[{j}]"),
            );
        } else {
            hostnames.insert(name, (i, &n.hostname));
        }
        let all_macs = std::iter::once(("mac".to_string(), &n.mac)).chain(
            n.extra_macs
                .iter()
                .enumerate()
                .map(|(j, m)| (format!("extra_macs[{j}]"), m)),
        );
        for (field, m) in all_macs {
            let Ok(mac) = m.value.parse::<Mac>() else {
                continue;
            };
            let key = mac.to_string();
            if let Some((j, other)) = macs.get(&key) {
                let at = &raw.nodes[*j].value.mac;
                c.err(m, format!("nodes[{i}].{field}"), format!(
                    "duplicate MAC {key}: node `{name}` and node `{other}` (nodes[{j}], {}:{}) both claim it",
                    at.referenced.line(),
                    at.referenced.column()
                ));
            } else {
                macs.insert(key, (i, name.to_string()));
            }
        }
        if let Ok(ip) = n.ip.value.parse::<Ipv4Addr>() {
            if ip == cl.api.vip {
                c.err(&n.ip, format!("nodes[{i}].ip"), format!(
                    "{ip} is the API VIP (cluster.api.vip); kube-vip moves the VIP between servers, so no node may own it"
                ));
            }
            if let Some(other) = ips.get(&ip) {
                c.err(
                    &n.ip,
                    format!("nodes[{i}].ip"),
                    format!("duplicate IP {ip}: node `{name}` and {other}"),
                );
            } else {
                ips.insert(ip, format!("node `{name}` (nodes[{i}])"));
            }
        }
    }
    let servers: Vec<(usize, &S<RawNode>)> = raw
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.value.role.value == "server")
        .collect();
    let count = servers.len();
    let first_span = servers
        .first()
        .map(|(_, n)| span(c.file, *n))
        .unwrap_or_else(|| span(c.file, &raw.cluster.name));
    match count {
        0 => c.d.error(Span::new(c.file, raw.cluster.name.referenced.line(), 1), "nodes", "no node has role server: a k3s cluster needs at least one"),
        1 => c.d.warning(first_span, "nodes", "one server: this cluster is NOT highly available (etcd quorum needs 3 servers; losing the one server loses the control plane)"),
        n if n % 2 == 0 => c.d.error(first_span, "nodes", format!(
            "{n} servers: an even number of etcd members tolerates no more failures than {} and splits votes; use {} or {}",
            n - 1, n - 1, n + 1
        )),
        _ => {}
    }
}
