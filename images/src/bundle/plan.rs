//! `plan.json`, the bundle's index: written by `builder render`, read by `pxe` at start and
//! reload and by `builder usb image`. One type for every side; its version says which.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Mac;
use crate::disk::Selector;
use crate::plan::{DataDisk, InstallPlan, Sources};

/// A host name: one RFC 1123 label (lowercase letters, digits, `-`; 1–63 chars; no leading or
/// trailing `-`). Lowercase only, because k3s node names and cloud-init hostnames are compared
/// case-sensitively. Parsed on every side, so a plan with a name that could not reach a URL
/// path or a file name safely is refused when read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Hostname {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Hostname {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Hostname {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_label(s).map(|_| Hostname(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One RFC 1123 label, lowercase.
pub fn check_label(s: &str) -> Result<(), String> {
    let shown = super::printable(s, 80);
    if s.is_empty() {
        return Err("host name is empty".into());
    }
    if s.len() > 63 {
        return Err(format!(
            "`{shown}` is {} characters long; RFC 1123 allows 63",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{shown}` is not an RFC 1123 host name: `{}` is not allowed (use lowercase letters, digits and `-`)",
            c.escape_default()
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "`{shown}` is not an RFC 1123 host name: it must not start or end with `-`"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
    Nfs,
}

impl Role {
    pub fn runs_k3s(self) -> bool {
        self != Role::Nfs
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Nfs => "nfs",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the node's firmware boots: the profile's, the plan's, the DHCP answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

/// The UEFI network boot program a node's firmware gets from DHCP (arch 7, 9 and 16), one of
/// the iPXE builds Debian's `ipxe` package ships in `/usr/lib/ipxe`.
///
/// `snponly.efi` drives the NIC through the firmware's own UEFI network driver (SNP) instead of
/// iPXE's native one: 13th-gen PowerEdge (R630/R730) UEFI PXE with iPXE's native drivers hangs
/// or loses the link on several NICs (Broadcom 57800 among them), and `snponly.efi` is the known
/// fix. `ipxe.efi` carries its own drivers and suits firmware whose SNP is poor (OptiPlex, VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EfiBootFile {
    #[serde(rename = "ipxe.efi")]
    Ipxe,
    #[serde(rename = "snponly.efi")]
    SnpOnly,
}

impl EfiBootFile {
    pub const ALL: [EfiBootFile; 2] = [EfiBootFile::Ipxe, EfiBootFile::SnpOnly];

    /// The file name, as served over TFTP and HTTP.
    pub fn file_name(self) -> &'static str {
        match self {
            EfiBootFile::Ipxe => "ipxe.efi",
            EfiBootFile::SnpOnly => "snponly.efi",
        }
    }
}

impl fmt::Display for EfiBootFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

impl FromStr for EfiBootFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EfiBootFile::ALL
            .into_iter()
            .find(|f| f.file_name() == s)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a UEFI boot file ironseed serves (ipxe.efi or snponly.efi)",
                    super::printable(s, 80)
                )
            })
    }
}

/// Most kernel arguments one node may add (profile plus overrides), and longest one (bytes).
pub const KERNEL_ARGS_MAX: usize = 32;
pub const KERNEL_ARG_MAX_LEN: usize = 256;

/// One kernel command-line argument as it may appear in an iPXE `kernel` line and a GRUB
/// command line: printable ASCII without whitespace, quotes, `\`, `$`, `{`, `}`, `;`, `#`, `&`,
/// `|`, `<`, `>` or backquote. A space would split it into two arguments, a newline would start a
/// new iPXE command, `${…}` is iPXE settings expansion, and quotes and `\` change GRUB's parsing.
pub fn check_kernel_arg(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("kernel argument is empty".into());
    }
    if s.len() > KERNEL_ARG_MAX_LEN {
        return Err(format!(
            "kernel argument `{}` is {} bytes long (at most {KERNEL_ARG_MAX_LEN})",
            super::printable(s, 60),
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| {
        !c.is_ascii_graphic()
            || matches!(
                c,
                '"' | '\'' | '`' | '\\' | '$' | '{' | '}' | ';' | '#' | '&' | '|' | '<' | '>'
            )
    }) {
        return Err(format!(
            "kernel argument `{}` contains `{}`, which would break the iPXE boot script or the GRUB command line (one argument: no spaces, quotes, `$`, braces or `#`)",
            super::printable(s, 80),
            c.escape_default()
        ));
    }
    Ok(())
}

/// Where the nodes reach the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    pub ip: Ipv4Addr,
    pub http_port: u16,
    /// Base URL nodes reach the appliance at, without a trailing slash.
    pub url: String,
}

/// An inclusive address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
    pub dhcp_pool: Option<Pool>,
}

/// An air-gap file served at `/artifacts/k3s/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanNode {
    pub hostname: Hostname,
    pub fqdn: String,
    pub role: Role,
    /// Renders `cluster-init` (the first server of a new cluster).
    pub bootstrap: bool,
    pub mac: Mac,
    #[serde(default)]
    pub extra_macs: Vec<Mac>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub profile: String,
    pub firmware: Firmware,
    /// RFC 4578 option 93 the profile's firmware sends.
    pub dhcp_arch: u16,
    /// The UEFI boot file DHCP hands this node (profile `efi_boot_file`, node override);
    /// `None`: pxe's `--efi-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_boot_file: Option<EfiBootFile>,
    pub boot_nic: String,
    pub install_disk: Selector,
    pub data_disks: Vec<DataDisk>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// The node's seed folder in the bundle (`nodes/<hostname>`).
    pub seed_dir: String,
    /// The node's first-boot report token (also in its seed).
    pub report_token: String,
    /// The node's install script in the bundle (`ipxe/<hostname>.ipxe`), with the install
    /// secret placeholder.
    pub install_script: String,
    /// UEFI Secure Boot stays on: pxe hands this node Debian's signed shim + GRUB instead of
    /// iPXE (docs/secure-boot.md). Absent in plans rendered before it existed: off.
    #[serde(default)]
    pub secure_boot: bool,
}

impl PlanNode {
    pub fn macs(&self) -> impl Iterator<Item = &Mac> {
        std::iter::once(&self.mac).chain(self.extra_macs.iter())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// [`super::PLAN_VERSION`].
    pub version: u32,
    pub cluster: String,
    pub domain: String,
    pub api_vip: Ipv4Addr,
    pub appliance: Appliance,
    pub network: Network,
    pub os_image: String,
    pub local_boot_script: String,
    pub unknown_script: String,
    #[serde(default)]
    pub airgap: Option<BTreeMap<String, Artifact>>,
    /// Nodes rendered in join form (`builder rebuild`): the cluster already exists.
    #[serde(default)]
    pub joined: Vec<String>,
    pub nodes: Vec<PlanNode>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "plan version {found} (this release reads version {want}); re-render the bundle with the builder of this release"
    )]
    Version { found: u32, want: u32 },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl Plan {
    /// Parse `plan.json`: its version first, so an older or newer bundle gets that message
    /// rather than a missing-field error.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, PlanError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes)?;
        if v.version != super::PLAN_VERSION {
            return Err(PlanError::Version {
                found: v.version,
                want: super::PLAN_VERSION,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Only `joined` of a `plan.json` of any version: a re-render after an upgrade must keep
    /// rebuilt servers in join form (a first server rendered again with `cluster-init` would
    /// start a second cluster), even when the rest of the old plan no longer parses.
    pub fn joined_of(bytes: &[u8]) -> Vec<String> {
        #[derive(Deserialize)]
        struct Joined {
            #[serde(default)]
            joined: Vec<String>,
        }
        serde_json::from_slice::<Joined>(bytes)
            .map(|j| j.joined)
            .unwrap_or_default()
    }

    /// `plan.json` as builder writes it: pretty, with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a plan serialises");
        s.push('\n');
        s
    }

    pub fn node(&self, hostname: &str) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.hostname == hostname)
    }

    pub fn node_by_mac(&self, mac: &Mac) -> Option<&PlanNode> {
        self.nodes.iter().find(|n| n.macs().any(|m| m == mac))
    }

    /// The install plan of `hostname` with the image, seed and report locations of `sources`
    /// (the appliance's URLs, or a stick's), or `None` if the plan has no such node.
    pub fn install_plan(&self, hostname: &str, sources: Sources) -> Option<InstallPlan> {
        let n = self.node(hostname)?;
        Some(InstallPlan {
            hostname: n.hostname.to_string(),
            fqdn: n.fqdn.clone(),
            role: n.role.to_string(),
            mac: n.mac.to_string(),
            ip: n.ip,
            prefix_len: n.prefix_len,
            gateway: self.network.gateway,
            dns: self.network.dns.clone(),
            boot_nic: n.boot_nic.clone(),
            firmware: n.firmware.to_string(),
            install_disk: n.install_disk.clone(),
            data_disks: n.data_disks.clone(),
            kernel_args: n.kernel_args.clone(),
            image: sources.image,
            seed: sources.seed,
            report: sources.report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(version: u32) -> String {
        format!(
            r#"{{"version":{version},"cluster":"c","domain":"lab","api_vip":"10.0.20.10",
            "appliance":{{"ip":"10.0.20.5","http_port":8080,"url":"http://10.0.20.5:8080"}},
            "os_image":"debian-12","local_boot_script":"ipxe/local.ipxe","unknown_script":"ipxe/unknown.ipxe",
            "network":{{"gateway":"10.0.20.1","dns":[],"subnet":"10.0.20.0/24","dhcp_pool":null}},
            "nodes":[]}}"#
        )
    }

    #[test]
    fn a_plan_of_another_version_is_refused_with_a_clear_message() {
        assert!(Plan::from_json(minimal(super::super::PLAN_VERSION).as_bytes()).is_ok());
        let now = super::super::PLAN_VERSION;
        for v in [1, now - 1, now + 1] {
            let e = Plan::from_json(minimal(v).as_bytes()).unwrap_err();
            assert!(matches!(e, PlanError::Version { found, .. } if found == v));
            assert!(e.to_string().contains("re-render the bundle"), "{e}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_names_are_refused() {
        let extra = minimal(super::super::PLAN_VERSION)
            .replace(r#""cluster":"c""#, r#""cluster":"c","seed_token":"x""#);
        assert!(Plan::from_json(extra.as_bytes()).is_err());
        for bad in ["K3S", "a/b", "../x", "", "-a"] {
            assert!(
                serde_json::from_value::<Hostname>(serde_json::json!(bad)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            serde_json::from_value::<Hostname>(serde_json::json!("k3s-1"))
                .unwrap()
                .as_str(),
            "k3s-1"
        );
    }

    #[test]
    fn joined_is_read_from_plans_of_any_version() {
        let old = minimal(1).replace(r#""nodes":[]"#, r#""nodes":[],"joined":["k3s-master1"]"#);
        assert_eq!(Plan::joined_of(old.as_bytes()), ["k3s-master1"]);
        assert!(Plan::joined_of(b"not json").is_empty());
    }

    #[test]
    fn efi_boot_files_are_named_as_served_and_others_refused() {
        for f in EfiBootFile::ALL {
            assert_eq!(f.file_name().parse::<EfiBootFile>(), Ok(f));
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.file_name()));
        }
        for bad in ["grubx64.efi", "../ipxe.efi", "IPXE.EFI", ""] {
            assert!(bad.parse::<EfiBootFile>().is_err(), "{bad}");
            assert!(serde_json::from_str::<EfiBootFile>(&format!("\"{bad}\"")).is_err());
        }
    }

    /// Protects the iPXE install script and GRUB line from a kernel argument that splits or
    /// injects: each rejected character is one that would.
    #[test]
    fn kernel_arguments_are_one_token_without_script_syntax() {
        for ok in [
            "console=ttyS1,115200n8",
            "pci=realloc",
            "quiet",
            "modprobe.blacklist=nouveau",
        ] {
            assert_eq!(check_kernel_arg(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\tb",
            "a\nchain x",
            "x=${net0/ip}",
            "x=\"y\"",
            "x='y'",
            "a\\b",
            "a;b",
            "a#b",
            "a|b",
            "a`b`",
            "é",
        ] {
            assert!(check_kernel_arg(bad).is_err(), "{bad:?}");
        }
        assert!(check_kernel_arg(&"a".repeat(KERNEL_ARG_MAX_LEN)).is_ok());
        assert!(check_kernel_arg(&"a".repeat(KERNEL_ARG_MAX_LEN + 1)).is_err());
    }

    #[test]
    fn a_plan_survives_its_own_json() {
        let p = Plan::from_json(minimal(super::super::PLAN_VERSION).as_bytes()).unwrap();
        assert_eq!(Plan::from_json(p.to_json().as_bytes()).unwrap(), p);
    }
}
