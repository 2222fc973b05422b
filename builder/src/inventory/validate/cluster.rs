//! `cluster:`, `ssh:` and `os:`: the settings every node shares.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::network::host_in;
use super::{Ctx, DEFAULT_CILIUM_VERSION, DEFAULT_KUBE_VIP_VERSION};
use crate::inventory::model::*;
use crate::inventory::raw::*;
use crate::inventory::types::check_domain;

pub(super) fn cluster(c: &mut Ctx, r: &RawCluster, net: Option<&Network>) -> Option<Cluster> {
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

pub(super) fn ssh(c: &mut Ctx, s: &RawSsh) -> Option<Ssh> {
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

pub(super) fn os(r: &Option<RawOs>) -> Os {
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
