//! `network:` and `appliance:`: the one served subnet and the appliance's place in it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::Ctx;
use crate::inventory::model::*;
use crate::inventory::raw::*;
use crate::inventory::types::check_domain;

pub(super) fn network(c: &mut Ctx, n: &RawNetwork) -> Option<Network> {
    let subnet: Option<Ipv4Net> = c.parse(&n.subnet, "network.subnet", "a CIDR like 10.0.20.0/24");
    if let Some(s) = subnet
        && s.network() != s.addr()
    {
        c.err(
            &n.subnet,
            "network.subnet",
            format!(
                "`{}` has host bits set; did you mean {}?",
                n.subnet.value,
                s.trunc()
            ),
        );
    }
    let gateway: Option<Ipv4Addr> = c.parse(&n.gateway, "network.gateway", "an IPv4 address");
    if let (Some(s), Some(g)) = (subnet, gateway)
        && !host_in(&s, g)
    {
        c.err(
            &n.gateway,
            "network.gateway",
            format!("gateway {g} is not a host address of subnet {s}"),
        );
    }
    let mut dns = Vec::new();
    if n.dns.is_empty() {
        c.err(
            &n.subnet,
            "network.dns",
            "at least one DNS server is needed",
        );
    }
    for (i, d) in n.dns.iter().enumerate() {
        if let Some(ip) = c.parse::<Ipv4Addr>(d, &format!("network.dns[{i}]"), "an IPv4 address") {
            dns.push(ip);
        }
    }
    for (i, s) in n.search.iter().enumerate() {
        if let Err(e) = check_domain(&s.value) {
            c.err(s, format!("network.search[{i}]"), e);
        }
    }
    for (i, s) in n.ntp.iter().enumerate() {
        let ok = s.value.parse::<Ipv4Addr>().is_ok() || check_domain(&s.value).is_ok();
        if !ok {
            c.err(
                s,
                format!("network.ntp[{i}]"),
                format!("`{}` is neither an IPv4 address nor a DNS name", s.value),
            );
        }
    }
    let pool = n.dhcp_pool.as_ref().and_then(|p| {
        let start: Option<Ipv4Addr> =
            c.parse(&p.start, "network.dhcp_pool.start", "an IPv4 address");
        let end: Option<Ipv4Addr> = c.parse(&p.end, "network.dhcp_pool.end", "an IPv4 address");
        let (start, end) = (start?, end?);
        if start > end {
            c.err(
                &p.start,
                "network.dhcp_pool",
                format!("pool start {start} is after its end {end}"),
            );
        }
        if let Some(s) = subnet {
            for (ip, at, f) in [(start, &p.start, "start"), (end, &p.end, "end")] {
                if !host_in(&s, ip) {
                    c.err(
                        at,
                        format!("network.dhcp_pool.{f}"),
                        format!("{ip} is not a host address of subnet {s}"),
                    );
                }
            }
        }
        Some(Pool { start, end })
    });
    if let (Some(p), Some(g)) = (&pool, gateway)
        && p.contains(g)
    {
        c.err(
            &n.gateway,
            "network.gateway",
            format!("gateway {g} is inside the DHCP pool"),
        );
    }
    Some(Network {
        subnet: subnet?,
        gateway: gateway?,
        dns,
        search: n.search.iter().map(|s| s.value.clone()).collect(),
        ntp: n.ntp.iter().map(|s| s.value.clone()).collect(),
        dhcp_pool: pool,
    })
}

/// A usable host address of the subnet (not the network or broadcast address of a /30 or wider).
pub(super) fn host_in(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && (net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast()))
}

pub(super) fn appliance(c: &mut Ctx, a: &RawAppliance, net: Option<&Network>) -> Option<Appliance> {
    let ip: Ipv4Addr = c.parse(&a.ip, "appliance.ip", "an IPv4 address")?;
    if let Some(n) = net
        && !host_in(&n.subnet, ip)
    {
        c.err(&a.ip, "appliance.ip", format!("{ip} is not a host address of subnet {}; nodes must reach the appliance on their own segment", n.subnet));
    }
    let port = a.http_port.as_ref().map(|p| p.value).unwrap_or(80);
    if let Some(p) = &a.http_port
        && p.value == 0
    {
        c.err(p, "appliance.http_port", "port 0 is not a port");
    }
    let url = if port == 80 {
        format!("http://{ip}")
    } else {
        format!("http://{ip}:{port}")
    };
    Some(Appliance {
        ip,
        http_port: port,
        url,
    })
}
