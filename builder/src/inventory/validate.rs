//! Raw inventory → validated model. Every rule adds to one `Diagnostics`, so all problems are
//! reported together. Pure: no host lookups (files named by the inventory are checked at render).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use super::model::*;
use super::profiles::{
    ProfileSet, check_labels, check_sysctls, check_taints, is_package_name, span,
};
use super::raw::*;
use super::types::check_domain;
use crate::diag::{Diagnostics, Span};
use crate::k3s_flags;

/// Templates a node may name; the caller knows which exist (embedded or from an override folder).
pub trait TemplateCatalog {
    fn has_template(&self, name: &str) -> bool;
}

pub const DEFAULT_USER_DATA_TEMPLATE: &str = "cloud-init/user-data.yaml.j2";
pub const DEFAULT_KUBE_VIP_VERSION: &str = "v0.8.9";
pub const DEFAULT_CILIUM_VERSION: &str = "1.16.6";

/// The sysctls the kubelet insists on when `protect-kernel-defaults` is set (k3s hardening guide).
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

struct Ctx<'a> {
    file: &'a str,
    d: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn err<T>(&mut self, at: &S<T>, path: impl Into<String>, msg: impl Into<String>) {
        self.d.error(span(self.file, at), path, msg);
    }
    fn warn<T>(&mut self, at: &S<T>, path: impl Into<String>, msg: impl Into<String>) {
        self.d.warning(span(self.file, at), path, msg);
    }
    fn parse<T: FromStr>(&mut self, at: &S<String>, path: &str, what: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        match at.value.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(at, path, format!("`{}` is not {what}: {e}", at.value));
                None
            }
        }
    }
}

pub fn validate(
    file: &str,
    raw: &RawInventory,
    profiles: &ProfileSet,
    templates: &dyn TemplateCatalog,
    diags: &mut Diagnostics,
) -> Option<Inventory> {
    let mut c = Ctx { file, d: diags };
    let network = network(&mut c, &raw.network);
    let cluster = cluster(&mut c, &raw.cluster, network.as_ref());
    let appliance = appliance(&mut c, &raw.appliance, network.as_ref());
    let ssh = ssh(&mut c, &raw.ssh);
    let os = os(&raw.os);
    let nodes = nodes(
        &mut c,
        raw,
        profiles,
        templates,
        network.as_ref(),
        cluster.as_ref(),
    );
    let nfs = nfs(&mut c, raw, &nodes, network.as_ref());
    if let (Some(net), Some(cl), Some(app)) = (&network, &cluster, &appliance) {
        cross_checks(&mut c, raw, net, cl, app, &nodes);
    }
    if c.d.has_errors() {
        return None;
    }
    Some(Inventory {
        cluster: cluster?,
        network: network?,
        appliance: appliance?,
        ssh: ssh?,
        os,
        nodes,
        nfs,
    })
}

fn network(c: &mut Ctx, n: &RawNetwork) -> Option<Network> {
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
fn host_in(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && (net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast()))
}

fn cluster(c: &mut Ctx, r: &RawCluster, net: Option<&Network>) -> Option<Cluster> {
    if r.name.value.parse::<Hostname>().is_err() {
        c.err(
            &r.name,
            "cluster.name",
            format!(
                "`{}` must be lowercase letters, digits and `-`",
                r.name.value
            ),
        );
    }
    if let Err(e) = check_domain(&r.domain.value) {
        c.err(&r.domain, "cluster.domain", e);
    }
    if let Err(e) = check_domain(&r.api.dns_name.value) {
        c.err(&r.api.dns_name, "cluster.api.dns_name", e);
    }
    let vip: Option<Ipv4Addr> = c.parse(&r.api.vip, "cluster.api.vip", "an IPv4 address");
    if let (Some(v), Some(n)) = (vip, net) {
        if !host_in(&n.subnet, v) {
            c.err(&r.api.vip, "cluster.api.vip", format!(
                "VIP {v} is outside subnet {}; kube-vip in ARP mode can only announce an address on the nodes' own segment",
                n.subnet
            ));
        }
        if let Some(p) = &n.dhcp_pool
            && p.contains(v)
        {
            c.err(&r.api.vip, "cluster.api.vip", format!(
                "VIP {v} is inside the DHCP pool {}–{}: the DHCP server could lease it to another machine",
                p.start, p.end
            ));
        }
        if v == n.gateway {
            c.err(
                &r.api.vip,
                "cluster.api.vip",
                format!("VIP {v} is the gateway's address"),
            );
        }
    }
    let version = r.k3s.version.as_ref().map(|v| v.value.clone());
    let channel = r.k3s.channel.as_ref().map(|v| v.value.clone());
    match (&r.k3s.version, &r.k3s.channel) {
        (Some(v), _) if !(v.value.starts_with('v') && v.value.contains("+k3s")) => {
            c.err(v, "cluster.k3s.version", format!(
                "`{}` is not a k3s release name (like v1.31.4+k3s1); pin a release so every node runs the same version",
                v.value
            ));
        }
        (Some(_), Some(ch)) => c.err(
            ch,
            "cluster.k3s.channel",
            "set either version or channel, not both",
        ),
        (None, None) => c.err(
            &r.name,
            "cluster.k3s",
            "set cluster.k3s.version (recommended) or cluster.k3s.channel",
        ),
        (None, Some(ch)) => {
            if ch.value.is_empty()
                || !ch
                    .value
                    .chars()
                    .all(|x| x.is_ascii_alphanumeric() || x == '.' || x == '-')
            {
                c.err(
                    ch,
                    "cluster.k3s.channel",
                    format!(
                        "`{}` is not a k3s channel (stable, latest, v1.31, ...)",
                        ch.value
                    ),
                );
            }
            c.warn(ch, "cluster.k3s.channel", "following a channel: nodes installed at different times may run different k3s releases (servers must not differ by more than one minor version); pin cluster.k3s.version for reproducible installs");
            if let Some(a) = &r.k3s.airgap {
                c.err(
                    &a.binary,
                    "cluster.k3s.airgap",
                    "an air-gapped install needs a pinned cluster.k3s.version matching the binary",
                );
            }
        }
        _ => {}
    }
    let pod: Option<Ipv4Net> = c.parse(&r.pod_cidr, "cluster.pod_cidr", "a CIDR");
    let svc: Option<Ipv4Net> = c.parse(&r.service_cidr, "cluster.service_cidr", "a CIDR");
    for (cidr, at, f) in [
        (pod, &r.pod_cidr, "pod_cidr"),
        (svc, &r.service_cidr, "service_cidr"),
    ] {
        if let (Some(x), Some(n)) = (cidr, net)
            && (x.contains(&n.subnet) || n.subnet.contains(&x))
        {
            c.err(
                at,
                format!("cluster.{f}"),
                format!("{x} overlaps the node subnet {}", n.subnet),
            );
        }
    }
    if let (Some(p), Some(s)) = (pod, svc)
        && (p.contains(&s) || s.contains(&p))
    {
        c.err(
            &r.service_cidr,
            "cluster.service_cidr",
            format!("service CIDR {s} overlaps pod CIDR {p}"),
        );
    }
    // k3s puts CoreDNS at the 10th address of the service CIDR unless told otherwise.
    let cluster_dns = match &r.cluster_dns {
        Some(d) => {
            let ip: Option<Ipv4Addr> = c.parse(d, "cluster.cluster_dns", "an IPv4 address");
            if let (Some(ip), Some(s)) = (ip, svc)
                && !s.contains(&ip)
            {
                c.err(
                    d,
                    "cluster.cluster_dns",
                    format!("{ip} is not inside the service CIDR {s}"),
                );
            }
            ip
        }
        None => svc.map(|s| Ipv4Addr::from(u32::from(s.network()) + 10)),
    };
    if r.cni.value != "cilium" {
        c.err(&r.cni, "cluster.cni", format!(
            "`{}` is not supported: ironseed renders Cilium (flannel-backend: none) and nothing else",
            r.cni.value
        ));
    }
    let cilium = Cilium {
        version: r
            .cilium
            .as_ref()
            .and_then(|x| x.version.as_ref())
            .map(|v| v.value.clone())
            .unwrap_or_else(|| DEFAULT_CILIUM_VERSION.into()),
        kube_proxy_replacement: r
            .cilium
            .as_ref()
            .and_then(|x| x.kube_proxy_replacement.as_ref())
            .is_none_or(|v| v.value),
    };
    let disable = match &r.disable {
        Some(list) => {
            for (i, d) in list.iter().enumerate() {
                if ![
                    "traefik",
                    "servicelb",
                    "local-storage",
                    "metrics-server",
                    "coredns",
                ]
                .contains(&d.value.as_str())
                {
                    c.err(d, format!("cluster.disable[{i}]"), format!(
                        "`{}` is not a k3s packaged component (traefik, servicelb, local-storage, metrics-server, coredns)",
                        d.value
                    ));
                }
            }
            list.iter().map(|d| d.value.clone()).collect()
        }
        None => vec!["traefik".into(), "servicelb".into(), "local-storage".into()],
    };
    let snapshots = {
        let s = r.etcd_snapshots.as_ref();
        let schedule = s
            .and_then(|s| s.schedule.as_ref())
            .map(|x| x.value.clone())
            .unwrap_or_else(|| "0 */12 * * *".into());
        if let Some(at) = s.and_then(|s| s.schedule.as_ref())
            && at.value.split_whitespace().count() != 5
        {
            c.err(
                at,
                "cluster.etcd_snapshots.schedule",
                format!("`{}` is not a 5-field cron expression", at.value),
            );
        }
        let retention = s
            .and_then(|s| s.retention.as_ref())
            .map(|x| x.value)
            .unwrap_or(5);
        if let Some(at) = s.and_then(|s| s.retention.as_ref())
            && at.value == 0
        {
            c.err(
                at,
                "cluster.etcd_snapshots.retention",
                "retention 0 would keep no snapshot",
            );
        }
        let s3 = s.and_then(|s| s.s3.as_ref()).map(|s3| {
            if s3.endpoint.value.contains("://") {
                c.err(
                    &s3.endpoint,
                    "cluster.etcd_snapshots.s3.endpoint",
                    "give the host name only (k3s adds https://)",
                );
            }
            S3 {
                endpoint: s3.endpoint.value.clone(),
                bucket: s3.bucket.value.clone(),
                folder: s3.folder.as_ref().map(|x| x.value.clone()),
                region: s3.region.as_ref().map(|x| x.value.clone()),
            }
        });
        Snapshots {
            schedule,
            retention,
            s3,
        }
    };
    let pod_security = {
        let p = r.pod_security.as_ref();
        let enforce = p
            .and_then(|p| p.enforce.as_ref())
            .map(|x| x.value.clone())
            .unwrap_or_else(|| "baseline".into());
        if let Some(at) = p.and_then(|p| p.enforce.as_ref())
            && !["privileged", "baseline", "restricted"].contains(&at.value.as_str())
        {
            c.err(
                at,
                "cluster.pod_security.enforce",
                format!(
                    "`{}` is not a Pod Security level (privileged, baseline, restricted)",
                    at.value
                ),
            );
        }
        let exempt = p
            .and_then(|p| p.exempt_namespaces.as_ref())
            .map(|v| v.iter().map(|x| x.value.clone()).collect())
            .unwrap_or_else(|| {
                [
                    "kube-system",
                    "longhorn-system",
                    "gpu-operator",
                    "flux-system",
                ]
                .map(String::from)
                .to_vec()
            });
        PodSecurity {
            enforce,
            exempt_namespaces: exempt,
        }
    };
    let flux = r.flux.as_ref().map(|f| {
        let url = &f.url.value;
        if !(url.starts_with("https://") || url.starts_with("ssh://") || url.starts_with("http://"))
        {
            c.err(
                &f.url,
                "cluster.flux.url",
                format!("`{url}` is not an https:// or ssh:// Git URL"),
            );
        }
        Flux {
            url: url.clone(),
            branch: f
                .branch
                .as_ref()
                .map(|x| x.value.clone())
                .unwrap_or_else(|| "main".into()),
            path: f
                .path
                .as_ref()
                .map(|x| x.value.clone())
                .unwrap_or_else(|| "./clusters/homelab".into()),
            sops_age: f.sops_age.as_ref().is_some_and(|x| x.value),
        }
    });
    let airgap = r.k3s.airgap.as_ref().map(|a| Airgap {
        binary: a.binary.value.clone().into(),
        images: a.images.value.clone().into(),
        install_script: a.install_script.value.clone().into(),
    });
    Some(Cluster {
        name: r.name.value.clone(),
        domain: r.domain.value.clone(),
        api: Api {
            vip: vip?,
            dns_name: r.api.dns_name.value.clone(),
            kube_vip_version: r
                .api
                .kube_vip_version
                .as_ref()
                .map(|v| v.value.clone())
                .unwrap_or_else(|| DEFAULT_KUBE_VIP_VERSION.into()),
            kube_vip_interface: r.api.kube_vip_interface.as_ref().map(|v| v.value.clone()),
        },
        k3s: K3s {
            version,
            channel,
            airgap,
        },
        pod_cidr: pod?,
        service_cidr: svc?,
        cluster_dns: cluster_dns?,
        cni: r.cni.value.clone(),
        cilium,
        disable,
        secrets_encryption: r.secrets_encryption.as_ref().is_none_or(|v| v.value),
        servers_schedulable: r.servers_schedulable.as_ref().is_some_and(|v| v.value),
        snapshots,
        pod_security,
        flux,
    })
}

fn appliance(c: &mut Ctx, a: &RawAppliance, net: Option<&Network>) -> Option<Appliance> {
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

fn ssh(c: &mut Ctx, s: &RawSsh) -> Option<Ssh> {
    if s.user.value.parse::<Hostname>().is_err() || s.user.value == "root" {
        c.err(
            &s.user,
            "ssh.user",
            format!(
                "`{}` is not a usable login name (lowercase letters, digits, `-`; not root)",
                s.user.value
            ),
        );
    }
    if s.authorized_keys.is_empty() {
        c.err(
            &s.user,
            "ssh.authorized_keys",
            "no SSH key: password login is disabled, so nobody could log in to the nodes",
        );
    }
    let mut keys = Vec::new();
    for (i, k) in s.authorized_keys.iter().enumerate() {
        match k.value.parse::<SshKey>() {
            Ok(key) => {
                if key.comment().contains("replace-me") {
                    c.warn(k, format!("ssh.authorized_keys[{i}]"), "this is the example key of the default inventory: replace it with your own public key or nobody can log in");
                }
                keys.push(key)
            }
            Err(e) => c.err(k, format!("ssh.authorized_keys[{i}]"), e),
        }
    }
    Some(Ssh {
        user: s.user.value.clone(),
        authorized_keys: keys,
    })
}

fn os(r: &Option<RawOs>) -> Os {
    let get = |f: fn(&RawOs) -> &Option<S<String>>, d: &str| {
        r.as_ref()
            .and_then(|o| f(o).as_ref())
            .map(|v| v.value.clone())
            .unwrap_or_else(|| d.to_string())
    };
    Os {
        image: get(|o| &o.image, "debian-12"),
        mirror: get(|o| &o.mirror, "http://deb.debian.org/debian"),
        suite: get(|o| &o.suite, "bookworm"),
        timezone: get(|o| &o.timezone, "Etc/UTC"),
    }
}

fn nodes(
    c: &mut Ctx,
    raw: &RawInventory,
    profiles: &ProfileSet,
    templates: &dyn TemplateCatalog,
    net: Option<&Network>,
    cluster: Option<&Cluster>,
) -> Vec<Node> {
    let mut out = Vec::new();
    let mut first_server_seen = false;
    for (i, sn) in raw.nodes.iter().enumerate() {
        let n = &sn.value;
        let p = |f: &str| format!("nodes[{i}].{f}");
        let hostname: Option<Hostname> = match n.hostname.value.parse() {
            Ok(h) => Some(h),
            Err(e) => {
                c.err(&n.hostname, p("hostname"), e);
                None
            }
        };
        let role = match n.role.value.as_str() {
            "server" => Some(Role::Server),
            "agent" => Some(Role::Agent),
            "nfs" => Some(Role::Nfs),
            other => {
                c.err(
                    &n.role,
                    p("role"),
                    format!("`{other}` is not a role (server, agent or nfs)"),
                );
                None
            }
        };
        let profile = match profiles.get(&n.profile.value) {
            Some(pr) => Some(pr.clone()),
            None => {
                let known: Vec<&str> = profiles.profiles.keys().map(String::as_str).collect();
                c.err(&n.profile, p("profile"), format!(
                    "unknown hardware profile `{}` (known: {}; add your own as a YAML file in a hardware folder)",
                    n.profile.value,
                    known.join(", ")
                ));
                None
            }
        };
        let mac: Option<Mac> = c.parse(&n.mac, &p("mac"), "a MAC address");
        let mut extra_macs = Vec::new();
        for (j, m) in n.extra_macs.iter().enumerate() {
            if let Some(m) =
                c.parse::<Mac>(m, &format!("nodes[{i}].extra_macs[{j}]"), "a MAC address")
            {
                extra_macs.push(m);
            }
        }
        let ip: Option<Ipv4Addr> = c.parse(&n.ip, &p("ip"), "an IPv4 address");
        if let (Some(ip), Some(net)) = (ip, net) {
            if !host_in(&net.subnet, ip) {
                c.err(
                    &n.ip,
                    p("ip"),
                    format!("{ip} is not a host address of subnet {}", net.subnet),
                );
            }
            if let Some(pool) = &net.dhcp_pool
                && pool.contains(ip)
            {
                c.err(&n.ip, p("ip"), format!(
                    "{ip} is inside the DHCP pool {}–{}: the pool could lease it to another machine",
                    pool.start, pool.end
                ));
            }
        }
        let template = n
            .template
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_else(|| DEFAULT_USER_DATA_TEMPLATE.into());
        if !templates.has_template(&template) {
            c.err(
                n.template.as_ref().unwrap_or(&n.hostname),
                p("template"),
                format!(
                    "unknown template `{template}` (not embedded and not in the template folder)"
                ),
            );
        }
        let gpu = match (&n.gpu, profile.as_ref()) {
            (Some(g), Some(pr)) if pr.gpu.is_none() => {
                c.err(g, p("gpu"), format!(
                    "GPU settings on a node whose profile `{}` has no GPU (add a `gpu:` section to the profile, or remove this)",
                    pr.name
                ));
                None
            }
            (g, Some(pr)) => pr.gpu.as_ref().map(|pg| NodeGpu {
                vendor: pg.vendor.clone(),
                default_runtime: g
                    .as_ref()
                    .and_then(|g| g.value.default_runtime)
                    .unwrap_or(false),
                driver_packages: g
                    .as_ref()
                    .and_then(|g| g.value.driver_packages.clone())
                    .unwrap_or_else(|| pg.driver_packages.clone()),
            }),
            _ => None,
        };
        if let (Some(Role::Nfs), Some(_)) = (role, &gpu) {
            c.err(&n.role, p("role"), "an nfs node runs no k3s, so its GPU would go unused; give it an agent role or another profile");
        }
        let mut labels = profile
            .as_ref()
            .map(|pr| pr.labels.clone())
            .unwrap_or_default();
        labels.extend(check_labels(c.file, &p("labels"), &n.labels, c.d));
        let mut taints = profile
            .as_ref()
            .map(|pr| pr.taints.clone())
            .unwrap_or_default();
        for t in check_taints(c.file, &p("taints"), &n.taints, c.d) {
            if !taints.contains(&t) {
                taints.push(t);
            }
        }
        if role == Some(Role::Server) && !cluster.is_some_and(|cl| cl.servers_schedulable) {
            let t = "node-role.kubernetes.io/control-plane:NoSchedule".to_string();
            if !taints.contains(&t) {
                taints.push(t);
            }
        }
        if let Some(pr) = &profile
            && pr
                .data_disks
                .iter()
                .any(|d| d.purpose == DiskPurpose::Longhorn)
        {
            // Longhorn reads the default-disks annotation only for nodes carrying this label.
            labels.insert(
                "node.longhorn.io/create-default-disk".into(),
                "config".into(),
            );
        }
        let mut packages = profile
            .as_ref()
            .map(|pr| pr.packages.clone())
            .unwrap_or_default();
        let mut kernel_args = profile
            .as_ref()
            .map(|pr| pr.kernel_args.clone())
            .unwrap_or_default();
        let mut sysctls: BTreeMap<String, String> = KUBELET_SYSCTLS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(pr) = &profile {
            sysctls.extend(pr.sysctls.clone());
        }
        let mut k3s_extra = BTreeMap::new();
        if let Some(o) = &n.overrides {
            for (j, pk) in o.packages.iter().enumerate() {
                if !is_package_name(&pk.value) {
                    c.err(
                        pk,
                        format!("nodes[{i}].overrides.packages[{j}]"),
                        format!("`{}` is not a Debian package name", pk.value),
                    );
                }
                if !packages.contains(&pk.value) {
                    packages.push(pk.value.clone());
                }
            }
            kernel_args.extend(o.kernel_args.iter().map(|k| k.value.clone()));
            sysctls.extend(check_sysctls(
                c.file,
                &format!("nodes[{i}].overrides.sysctls"),
                &o.sysctls,
                c.d,
            ));
            if let Some(k) = &o.k3s {
                if role == Some(Role::Nfs) {
                    c.err(
                        k,
                        format!("nodes[{i}].overrides.k3s"),
                        "an nfs node runs no k3s",
                    );
                }
                let keys = if role == Some(Role::Server) {
                    k3s_flags::SERVER_KEYS
                } else {
                    k3s_flags::AGENT_KEYS
                };
                for (key, v) in &k.value {
                    let bare = key.trim_end_matches('+');
                    if !keys.contains(&bare) {
                        let other = if role == Some(Role::Server) {
                            "server"
                        } else {
                            "agent"
                        };
                        c.err(k, format!("nodes[{i}].overrides.k3s.{key}"), format!(
                            "`{bare}` is not a k3s {other} flag; k3s would skip it with only a warning"
                        ));
                    }
                    if MANAGED_K3S_KEYS.contains(&bare) {
                        c.err(k, format!("nodes[{i}].overrides.k3s.{key}"), format!(
                            "`{bare}` is set by ironseed from the inventory (and must match on every server); change it there instead"
                        ));
                    }
                    k3s_extra.insert(key.clone(), v.clone());
                }
            }
        }
        if let Some(m) = &n.memory_mb
            && role == Some(Role::Server)
            && m.value < 2048
        {
            c.warn(
                m,
                p("memory_mb"),
                format!(
                    "{} MB is below the 2 GB a k3s server with embedded etcd needs",
                    m.value
                ),
            );
        }
        let bootstrap = role == Some(Role::Server) && !first_server_seen;
        if role == Some(Role::Server) {
            first_server_seen = true;
        }
        let (Some(hostname), Some(role), Some(profile), Some(mac), Some(ip), Some(net)) =
            (hostname, role, profile, mac, ip, net)
        else {
            continue;
        };
        let domain = cluster.map(|cl| cl.domain.clone()).unwrap_or_default();
        out.push(Node {
            fqdn: format!("{hostname}.{domain}"),
            hostname,
            role,
            bootstrap,
            profile,
            mac,
            extra_macs,
            ip,
            prefix_len: net.subnet.prefix_len(),
            labels,
            taints,
            memory_mb: n.memory_mb.as_ref().map(|m| m.value),
            gpu,
            template,
            packages,
            kernel_args,
            sysctls,
            k3s_extra,
        });
    }
    out
}

/// Keys rendered from the inventory; an override would break the critical-flag match or the VIP.
const MANAGED_K3S_KEYS: &[&str] = &[
    "cluster-init",
    "server",
    "token",
    "agent-token",
    "tls-san",
    "node-ip",
    "node-name",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "cluster-domain",
    "flannel-backend",
    "disable-network-policy",
    "disable-kube-proxy",
    "secrets-encryption",
    "disable",
];

fn nfs(c: &mut Ctx, raw: &RawInventory, nodes: &[Node], net: Option<&Network>) -> Option<Nfs> {
    let nfs_nodes: Vec<(usize, &S<RawNode>)> = raw
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.value.role.value == "nfs")
        .collect();
    let Some(r) = &raw.nfs else {
        if let Some((i, n)) = nfs_nodes.first() {
            c.warn(
                &n.value.role,
                format!("nodes[{i}].role"),
                "an nfs node but no `nfs:` section: nothing will be exported",
            );
        }
        return None;
    };
    if nfs_nodes.is_empty() {
        c.err(
            &r.exports[0],
            "nfs",
            "an `nfs:` section but no node has role nfs",
        );
    }
    let nfs_node = nodes.iter().find(|n| n.role == Role::Nfs);
    let mut exports = Vec::new();
    for (i, e) in r.exports.iter().enumerate() {
        let e = &e.value;
        if !e.path.value.starts_with('/') || e.path.value.contains(' ') {
            c.err(
                &e.path,
                format!("nfs.exports[{i}].path"),
                format!("`{}` is not an absolute path without spaces", e.path.value),
            );
        }
        if let Some(node) = nfs_node {
            match node
                .profile
                .data_disks
                .iter()
                .find(|d| d.name == e.pool.value)
            {
                Some(d) if d.purpose == DiskPurpose::NfsPool => {
                    if !e.path.value.starts_with(&d.mount) {
                        c.err(
                            &e.path,
                            format!("nfs.exports[{i}].path"),
                            format!(
                                "`{}` is not on pool `{}`, which is mounted at {}",
                                e.path.value, d.name, d.mount
                            ),
                        );
                    }
                }
                _ => c.err(
                    &e.pool,
                    format!("nfs.exports[{i}].pool"),
                    format!(
                        "profile `{}` of {} has no data disk `{}` with purpose nfs-pool",
                        node.profile.name, node.hostname, e.pool.value
                    ),
                ),
            }
        }
        let clients = e
            .clients
            .as_ref()
            .map(|x| x.value.clone())
            .or_else(|| net.map(|n| n.subnet.to_string()))
            .unwrap_or_default();
        let options = e
            .options
            .as_ref()
            .map(|x| x.value.clone())
            .unwrap_or_else(|| "rw,sync,no_subtree_check,root_squash".into());
        if options.contains(char::is_whitespace) {
            c.err(e.options.as_ref().unwrap_or(&e.path), format!("nfs.exports[{i}].options"), "export options must not contain spaces (exports(5) would read them as another client)");
        }
        exports.push(Export {
            path: e.path.value.clone(),
            pool: e.pool.value.clone(),
            clients,
            options,
        });
    }
    let secondary = r.secondary.as_ref().map(|s| {
        if !s.target.value.contains(':') {
            c.err(
                &s.target,
                "nfs.secondary.target",
                format!(
                    "`{}` is not an rsync target like backup@nas2:/srv/media",
                    s.target.value
                ),
            );
        }
        Secondary {
            target: s.target.value.clone(),
            schedule: s
                .schedule
                .as_ref()
                .map(|x| x.value.clone())
                .unwrap_or_else(|| "daily".into()),
        }
    });
    Some(Nfs { exports, secondary })
}

/// Rules that look at several parts at once: duplicates, the VIP against node addresses, HA shape.
fn cross_checks(
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
