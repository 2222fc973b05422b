//! Layer two: the validated inventory. Everything here has been checked; render takes it as truth.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

/// The plan contract's types (`images::bundle`): the inventory model uses them as they are.
pub use images::bundle::{Appliance, EfiBootFile, Firmware, Network, Pool, Role};

pub use super::types::{Hostname, Mac, SshKey, Taint};

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub cluster: Cluster,
    pub network: Network,
    pub appliance: Appliance,
    pub ssh: Ssh,
    pub os: Os,
    pub nodes: Vec<Node>,
    pub nfs: Option<Nfs>,
}

impl Inventory {
    pub fn node(&self, hostname: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.hostname.as_str() == hostname)
    }
    pub fn servers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Server)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    pub name: String,
    pub domain: String,
    pub api: Api,
    pub k3s: K3s,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub cluster_dns: Ipv4Addr,
    pub cni: String,
    pub cilium: Cilium,
    pub disable: Vec<String>,
    pub secrets_encryption: bool,
    pub servers_schedulable: bool,
    pub snapshots: Snapshots,
    pub pod_security: PodSecurity,
    pub flux: Option<Flux>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Api {
    pub vip: Ipv4Addr,
    pub dns_name: String,
    pub kube_vip_version: String,
    /// Interface kube-vip announces the VIP on; `None` means "each server's boot NIC".
    pub kube_vip_interface: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct K3s {
    /// A pinned release (`v1.31.4+k3s1`); `None` when the inventory follows a channel.
    pub version: Option<String>,
    /// Install channel (`stable`, `latest`, `v1.31`), used only without a pinned version.
    pub channel: Option<String>,
    pub airgap: Option<Airgap>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Airgap {
    pub binary: PathBuf,
    pub images: PathBuf,
    pub install_script: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cilium {
    pub version: String,
    pub kube_proxy_replacement: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshots {
    pub schedule: String,
    pub retention: u32,
    pub s3: Option<S3>,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub folder: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodSecurity {
    pub enforce: String,
    pub exempt_namespaces: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flux {
    pub url: String,
    pub branch: String,
    pub path: String,
    pub sops_age: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ssh {
    pub user: String,
    pub authorized_keys: Vec<SshKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Os {
    pub image: String,
    pub mirror: String,
    pub suite: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub hostname: Hostname,
    pub fqdn: String,
    pub role: Role,
    /// The first server of the inventory bootstraps the cluster (`cluster-init`); every other
    /// server, and any rebuilt one, joins through the VIP.
    pub bootstrap: bool,
    pub profile: Profile,
    pub mac: Mac,
    pub extra_macs: Vec<Mac>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub memory_mb: Option<u32>,
    pub gpu: Option<NodeGpu>,
    pub template: String,
    pub packages: Vec<String>,
    pub kernel_args: Vec<String>,
    /// The profile's, or the node override's.
    pub efi_boot_file: Option<EfiBootFile>,
    /// The profile's plus the node override's: only on the installer's kernel line.
    pub installer_kernel_args: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub k3s_extra: BTreeMap<String, serde_json::Value>,
    /// The profile's `secure_boot`, or the node's own.
    pub secure_boot: bool,
    /// Builder's own business: never rendered into the bundle or the plan.
    #[serde(skip)]
    pub power: Option<Power>,
}

/// How builder controls a machine's power. `None` on a node means "no power control": the
/// operator powers it on by hand, as with `Manual`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    Redfish(Redfish),
    Wol {
        /// Where the magic packet goes; `None`: the broadcast address of the served subnet.
        broadcast: Option<Ipv4Addr>,
        /// Send through this interface (SO_BINDTODEVICE); `None`: the route decides.
        interface: Option<String>,
    },
    Ipmi {
        address: String,
    },
    Manual,
}

impl Power {
    pub fn method(&self) -> &'static str {
        match self {
            Power::Redfish(_) => "redfish",
            Power::Wol { .. } => "wol",
            Power::Ipmi { .. } => "ipmi",
            Power::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redfish {
    pub address: String,
    pub insecure_tls: bool,
    pub ca: Option<PathBuf>,
    /// SHA-256 of the BMC's certificate, lowercase hex without separators.
    pub fingerprint: Option<String>,
    pub system: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeGpu {
    pub vendor: String,
    pub default_runtime: bool,
    pub driver_packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub description: String,
    pub firmware: Firmware,
    pub dhcp_arch: u16,
    pub boot_nic: BootNic,
    pub install_disk: Selector,
    pub data_disks: Vec<DataDisk>,
    pub gpu: Option<Gpu>,
    pub packages: Vec<String>,
    pub kernel_args: Vec<String>,
    /// UEFI boot file for DHCP; `None`: pxe's `--efi-file`.
    pub efi_boot_file: Option<EfiBootFile>,
    pub installer_kernel_args: Vec<String>,
    /// The NIC and storage drivers the machine needs (kernel module names).
    pub drivers: Vec<String>,
    pub sysctls: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    #[serde(skip)]
    pub power: Option<Power>,
    /// UEFI Secure Boot stays on: the netboot goes through signed shim + GRUB (default off).
    pub secure_boot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootNic {
    pub name: String,
    pub port: Option<String>,
}

/// Disk selectors are the installer's type: builder and the node agree on what matches.
pub use images::disk::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskPurpose {
    Longhorn,
    NfsPool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataDisk {
    pub name: String,
    pub purpose: DiskPurpose,
    pub selector: Selector,
    pub filesystem: String,
    pub mount: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub vendor: String,
    pub driver_packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nfs {
    pub exports: Vec<Export>,
    pub secondary: Option<Secondary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub path: String,
    pub pool: String,
    pub clients: String,
    pub options: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Secondary {
    pub target: String,
    pub schedule: String,
}
