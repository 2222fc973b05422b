//! Rules that look at several sections at once: duplicates, the VIP against node addresses,
//! HA shape. They compare the values the sections parsed ([`NodeKeys`], the model), never
//! re-parse the raw strings: one parser, one notion of "the same MAC".

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::Ctx;
use super::nodes::NodeKeys;
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
    keys: &[NodeKeys],
) {
    let mut hostnames: HashMap<&str, (usize, &S<String>)> = HashMap::new();
    let mut macs: HashMap<Mac, (usize, &str)> = HashMap::new();
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
    for (i, (sn, k)) in raw.nodes.iter().zip(keys).enumerate() {
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
        for &(field, mac) in &k.macs {
            if let Some(&(j, other)) = macs.get(&mac) {
                // Where the first claimant's `mac` stands (also when it claimed it as an extra).
                let at = &raw.nodes[j].value.mac;
                c.err(field.of(n), format!("nodes[{i}].{}", field.path()), format!(
                    "duplicate MAC {mac}: node `{name}` and node `{other}` (nodes[{j}], {}:{}) both claim it",
                    at.referenced.line(),
                    at.referenced.column()
                ));
            } else {
                macs.insert(mac, (i, name));
            }
        }
        if let Some(ip) = k.ip {
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
    let servers: Vec<&S<RawNode>> = raw
        .nodes
        .iter()
        .zip(keys)
        .filter(|(_, k)| k.role == Some(Role::Server))
        .map(|(n, _)| n)
        .collect();
    let count = servers.len();
    let first_span = servers
        .first()
        .map(|n| span(c.file, *n))
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

/// `secure_boot` nodes and no `network.dhcp_pool`: a warning. pxe's DHCP mode is its own
/// `--dhcp` flag (default `proxy`), not the inventory's; the pool is what `--dhcp full` hands
/// unknown machines, so an inventory without one is almost always served in proxy mode beside
/// the router. There Debian's signed GRUB 2.06 takes its TFTP server from the firmware's DHCP
/// ACK only (the router's, whose next-server is not pxe) and stops at `grub>`
/// (docs/secure-boot.md "Network boot", its DHCP mode paragraph). `--dhcp full` without a pool
/// works too (inventory nodes get their own addresses), so this is a warning, never an error.
pub(super) fn secure_boot_dhcp(
    c: &mut Ctx,
    raw: &RawInventory,
    net: &Network,
    app: &Appliance,
    nodes: &[Node],
) {
    if net.dhcp_pool.is_some() {
        return;
    }
    let sb: Vec<&str> = nodes
        .iter()
        .filter(|n| n.secure_boot)
        .map(|n| n.hostname.as_str())
        .collect();
    // Last in the message: a long list is what gets clipped, not the fixes.
    let named = match sb.len() {
        0 => return,
        1..=3 => sb.join(", "),
        n => format!("{} and {} more", sb[..3].join(", "), n - 3),
    };
    c.warn(
        &raw.network.subnet,
        "network.dhcp_pool",
        format!(
            "secure_boot nodes and no dhcp_pool: when pxe runs in its default `--dhcp proxy` mode, Debian's signed GRUB asks the router's next-server for its config and stops at `grub>`; run `pxe serve --dhcp full` (add a dhcp_pool if other machines need addresses from it), or set the router's next-server (TFTP server) to the appliance, {}. Nodes with secure_boot: {named}",
            app.ip
        ),
    );
}

#[cfg(test)]
mod tests {
    use crate::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
    use crate::templates::Templates;

    /// The cross checks see every entry's parsed addresses, not only the nodes that made it
    /// into the model: a node that fails another rule (an unknown profile) and takes another
    /// node's MAC, spelled differently, gets both errors in one run.
    #[test]
    fn a_node_failing_another_rule_still_gets_its_duplicate_mac_reported() {
        let text = DEFAULT_INVENTORY.replacen(
            "    profile: optiplex\n    mac: d8:9e:f3:20:00:22",
            "    profile: nope\n    mac: D8-9E-F3-20-00-21",
            1,
        );
        assert_ne!(text, DEFAULT_INVENTORY);
        let mut d = crate::diag::Diagnostics::default();
        let set = ProfileSet::load(&[], &mut d);
        let (inv, d) = inventory::load("inv.yaml", &text, &set, &Templates::embedded());
        assert!(inv.is_none());
        let errs: Vec<_> = d
            .errors()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        assert!(
            errs.iter()
                .any(|(p, m)| p == "nodes[4].profile" && m.contains("unknown hardware profile")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|(p, m)| p == "nodes[4].mac" && m.contains("duplicate MAC d8:9e:f3:20:00:21")),
            "{errs:?}"
        );
    }
}
