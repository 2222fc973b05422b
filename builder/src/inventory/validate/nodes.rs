//! `nodes:`: each entry against its hardware profile, the templates and the network.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::network::host_in;
use super::{Ctx, DEFAULT_USER_DATA_TEMPLATE, KUBELET_SYSCTLS, TemplateCatalog};
use crate::inventory::model::*;
use crate::inventory::power::{check_power, wol_reaches};
use crate::inventory::profiles::{
    ProfileSet, check_efi_boot_file, check_kernel_args, check_labels, check_selector,
    check_sysctls, check_taints, is_package_name,
};
use crate::inventory::raw::*;
use crate::inventory::types::NicMac;
use crate::k3s_flags;
use images::bundle::KERNEL_ARGS_MAX;

/// The typed values of one `nodes:` entry that the rules across entries compare
/// ([`super::cross`]). Kept for every entry, also one that fails other rules, so that its
/// duplicate address is still reported in the same run.
pub(super) struct NodeKeys {
    pub role: Option<Role>,
    /// Its valid MACs in inventory order.
    pub macs: Vec<(MacField, Mac)>,
    pub ip: Option<Ipv4Addr>,
}

/// Which of a node's MAC fields.
#[derive(Clone, Copy)]
pub(super) enum MacField {
    Mac,
    Extra(usize),
}

impl MacField {
    pub fn path(self) -> String {
        match self {
            MacField::Mac => "mac".into(),
            MacField::Extra(j) => format!("extra_macs[{j}]"),
        }
    }

    pub fn of(self, n: &RawNode) -> &S<String> {
        match self {
            MacField::Mac => &n.mac,
            MacField::Extra(j) => &n.extra_macs[j],
        }
    }
}

pub(super) fn nodes(
    c: &mut Ctx,
    raw: &RawInventory,
    profiles: &ProfileSet,
    templates: &dyn TemplateCatalog,
    net: Option<&Network>,
    cluster: Option<&Cluster>,
) -> (Vec<Node>, Vec<NodeKeys>) {
    let mut out = Vec::new();
    let mut keys = Vec::new();
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
        let mac: Option<Mac> = c
            .parse::<NicMac>(&n.mac, &p("mac"), "a MAC address")
            .map(|m| m.0);
        let mut extra_macs = Vec::new();
        let mut macs: Vec<(MacField, Mac)> = mac.map(|m| (MacField::Mac, m)).into_iter().collect();
        for (j, m) in n.extra_macs.iter().enumerate() {
            if let Some(m) = c
                .parse::<NicMac>(m, &format!("nodes[{i}].extra_macs[{j}]"), "a MAC address")
                .map(|m| m.0)
            {
                extra_macs.push(m);
                macs.push((MacField::Extra(j), m));
            }
        }
        let ip: Option<Ipv4Addr> = c.parse(&n.ip, &p("ip"), "an IPv4 address");
        keys.push(NodeKeys { role, macs, ip });
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
        let mut efi_boot_file = profile.as_ref().and_then(|pr| pr.efi_boot_file);
        let mut installer_kernel_args = profile
            .as_ref()
            .map(|pr| pr.installer_kernel_args.clone())
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
            let path = format!("nodes[{i}].overrides.kernel_args");
            kernel_args.extend(check_kernel_args(c.file, &path, &o.kernel_args, c.d));
            if kernel_args.len() > KERNEL_ARGS_MAX
                && let Some(k) = o.kernel_args.last()
            {
                c.err(k, path, format!("profile and node together have {} kernel arguments (at most {KERNEL_ARGS_MAX})", kernel_args.len()));
            }
            let path = format!("nodes[{i}].overrides.installer_kernel_args");
            installer_kernel_args.extend(check_kernel_args(
                c.file,
                &path,
                &o.installer_kernel_args,
                c.d,
            ));
            if installer_kernel_args.len() > KERNEL_ARGS_MAX
                && let Some(k) = o.installer_kernel_args.last()
            {
                c.err(k, path, format!("profile and node together have {} installer kernel arguments (at most {KERNEL_ARGS_MAX})", installer_kernel_args.len()));
            }
            if let Some(f) = &o.efi_boot_file {
                let fw = profile.as_ref().map_or(Firmware::Uefi, |pr| pr.firmware);
                efi_boot_file = check_efi_boot_file(
                    c.file,
                    &format!("nodes[{i}].overrides.efi_boot_file"),
                    f,
                    fw,
                    c.d,
                )
                .or(efi_boot_file);
            }
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
        let mut profile = profile;
        if let Some(sel) = &n.install_disk {
            let path = p("install_disk");
            let install = check_selector(c.file, &path, sel, c.d);
            if let Some(pr) = profile.as_mut() {
                // The same rule as inside a profile: data disks are never wiped, so the node's
                // own install selector must provably never pick one of them.
                for (j, dd) in pr.data_disks.iter().enumerate() {
                    if install.may_overlap(&dd.selector) {
                        c.err(sel, &path, format!(
                            "this selector could pick data disk `{}` of profile `{}` (data_disks[{j}]): no attribute both set tells them apart; add one that differs (model, serial, wwn, by_path, by_id, rotational or disjoint sizes)",
                            dd.name, pr.name
                        ));
                    }
                }
                pr.install_disk = install;
            }
        }
        let power = match &n.power {
            Some(pw) => check_power(c.file, &p("power"), pw, c.d),
            None => profile.as_ref().and_then(|pr| pr.power.clone()),
        };
        if let (Some(pw), Some(net)) = (&power, net)
            && let Err(m) = wol_reaches(pw, net)
        {
            match &n.power {
                Some(at) => c.err(at, p("power.wol.broadcast"), m),
                None => c.err(
                    &n.profile,
                    p("profile"),
                    format!("the profile's power default: {m}"),
                ),
            }
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
        let secure_boot = n
            .secure_boot
            .as_ref()
            .map_or(profile.secure_boot, |s| s.value);
        if let Some(sb) = &n.secure_boot
            && sb.value
            && profile.firmware == images::bundle::Firmware::Bios
        {
            c.err(
                sb,
                format!("nodes[{i}].secure_boot"),
                "Secure Boot is a UEFI feature: this node's profile boots `bios`",
            );
        }
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
            efi_boot_file,
            installer_kernel_args,
            sysctls,
            k3s_extra,
            power,
            secure_boot,
        });
    }
    (out, keys)
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
