//! Layer one: the inventory and hardware profiles exactly as written, with every value's location.
//! Nothing here interprets values; `validate` turns these into the model.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub cluster: RawCluster,
    pub network: RawNetwork,
    pub appliance: RawAppliance,
    pub ssh: RawSsh,
    #[serde(default)]
    pub os: Option<RawOs>,
    pub nodes: Vec<S<RawNode>>,
    #[serde(default)]
    pub nfs: Option<RawNfs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: S<String>,
    pub domain: S<String>,
    pub api: RawApi,
    pub k3s: RawK3s,
    pub pod_cidr: S<String>,
    pub service_cidr: S<String>,
    #[serde(default)]
    pub cluster_dns: Option<S<String>>,
    pub cni: S<String>,
    #[serde(default)]
    pub cilium: Option<RawCilium>,
    #[serde(default)]
    pub disable: Option<Vec<S<String>>>,
    #[serde(default)]
    pub secrets_encryption: Option<S<bool>>,
    #[serde(default)]
    pub servers_schedulable: Option<S<bool>>,
    #[serde(default)]
    pub etcd_snapshots: Option<RawSnapshots>,
    #[serde(default)]
    pub pod_security: Option<RawPodSecurity>,
    #[serde(default)]
    pub flux: Option<RawFlux>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub vip: S<String>,
    pub dns_name: S<String>,
    #[serde(default)]
    pub kube_vip_version: Option<S<String>>,
    #[serde(default)]
    pub kube_vip_interface: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawK3s {
    #[serde(default)]
    pub version: Option<S<String>>,
    #[serde(default)]
    pub channel: Option<S<String>>,
    #[serde(default)]
    pub airgap: Option<RawAirgap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAirgap {
    pub binary: S<String>,
    pub images: S<String>,
    pub install_script: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCilium {
    #[serde(default)]
    pub version: Option<S<String>>,
    #[serde(default)]
    pub kube_proxy_replacement: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshots {
    #[serde(default)]
    pub schedule: Option<S<String>>,
    #[serde(default)]
    pub retention: Option<S<u32>>,
    #[serde(default)]
    pub s3: Option<RawS3>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub endpoint: S<String>,
    pub bucket: S<String>,
    #[serde(default)]
    pub folder: Option<S<String>>,
    #[serde(default)]
    pub region: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPodSecurity {
    #[serde(default)]
    pub enforce: Option<S<String>>,
    #[serde(default)]
    pub exempt_namespaces: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlux {
    pub url: S<String>,
    #[serde(default)]
    pub branch: Option<S<String>>,
    #[serde(default)]
    pub path: Option<S<String>>,
    #[serde(default)]
    pub sops_age: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub subnet: S<String>,
    pub gateway: S<String>,
    pub dns: Vec<S<String>>,
    #[serde(default)]
    pub search: Vec<S<String>>,
    #[serde(default)]
    pub ntp: Vec<S<String>>,
    #[serde(default)]
    pub dhcp_pool: Option<RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub start: S<String>,
    pub end: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAppliance {
    pub ip: S<String>,
    #[serde(default)]
    pub http_port: Option<S<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub user: S<String>,
    pub authorized_keys: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOs {
    #[serde(default)]
    pub image: Option<S<String>>,
    #[serde(default)]
    pub mirror: Option<S<String>>,
    #[serde(default)]
    pub suite: Option<S<String>>,
    #[serde(default)]
    pub timezone: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub hostname: S<String>,
    pub role: S<String>,
    pub profile: S<String>,
    pub mac: S<String>,
    #[serde(default)]
    pub extra_macs: Vec<S<String>>,
    pub ip: S<String>,
    #[serde(default)]
    pub labels: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    pub taints: Vec<S<String>>,
    #[serde(default)]
    pub memory_mb: Option<S<u32>>,
    #[serde(default)]
    pub gpu: Option<S<RawNodeGpu>>,
    #[serde(default)]
    pub template: Option<S<String>>,
    /// This machine's own install-disk selector, replacing its profile's (written by
    /// `builder adopt` when the profile's selector does not pick exactly one of its disks).
    #[serde(default)]
    pub install_disk: Option<S<RawSelector>>,
    #[serde(default)]
    pub overrides: Option<RawOverrides>,
    /// How builder powers this machine on and off; replaces its profile's `power:` default.
    #[serde(default)]
    pub power: Option<S<RawPower>>,
    /// Replaces its profile's `secure_boot` (e.g. one machine whose Secure Boot is off).
    #[serde(default)]
    pub secure_boot: Option<S<bool>>,
}

/// Exactly one of the drivers; credentials never live here (they are in the secrets file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPower {
    #[serde(default)]
    pub redfish: Option<S<RawRedfish>>,
    #[serde(default)]
    pub wol: Option<S<RawWol>>,
    #[serde(default)]
    pub ipmi: Option<S<RawIpmi>>,
    #[serde(default)]
    pub manual: Option<S<RawManual>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedfish {
    #[serde(default)]
    pub address: Option<S<String>>,
    #[serde(default)]
    pub insecure_tls: Option<S<bool>>,
    #[serde(default)]
    pub ca: Option<S<String>>,
    #[serde(default)]
    pub fingerprint: Option<S<String>>,
    #[serde(default)]
    pub system: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawWol {
    #[serde(default)]
    pub broadcast: Option<S<String>>,
    #[serde(default)]
    pub interface: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpmi {
    #[serde(default)]
    pub address: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawManual {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeGpu {
    #[serde(default)]
    pub default_runtime: Option<bool>,
    #[serde(default)]
    pub driver_packages: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrides {
    #[serde(default)]
    pub packages: Vec<S<String>>,
    #[serde(default)]
    pub kernel_args: Vec<S<String>>,
    /// Replaces the profile's `efi_boot_file` for this node.
    #[serde(default)]
    pub efi_boot_file: Option<S<String>>,
    /// Added to the profile's `installer_kernel_args`.
    #[serde(default)]
    pub installer_kernel_args: Vec<S<String>>,
    #[serde(default)]
    pub sysctls: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    pub k3s: Option<S<BTreeMap<String, serde_json::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNfs {
    pub exports: Vec<S<RawExport>>,
    #[serde(default)]
    pub secondary: Option<RawSecondary>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    pub path: S<String>,
    /// Name of the profile data disk (purpose `nfs-pool`) that backs this export.
    pub pool: S<String>,
    #[serde(default)]
    pub clients: Option<S<String>>,
    #[serde(default)]
    pub options: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecondary {
    pub target: S<String>,
    #[serde(default)]
    pub schedule: Option<S<String>>,
}

// ---- hardware profiles (hardware/*.yaml) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub name: S<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub firmware: S<String>,
    pub dhcp_arch: S<u16>,
    pub boot_nic: RawBootNic,
    pub install_disk: S<RawSelector>,
    #[serde(default)]
    pub data_disks: Vec<S<RawDataDisk>>,
    #[serde(default)]
    pub gpu: Option<S<RawGpu>>,
    #[serde(default)]
    pub packages: Vec<S<String>>,
    #[serde(default)]
    pub kernel_args: Vec<S<String>>,
    /// `ipxe.efi` or `snponly.efi`: the UEFI boot file DHCP gives this profile's machines.
    #[serde(default)]
    pub efi_boot_file: Option<S<String>>,
    /// Only on the installer's kernel line (the iPXE install script), not the installed system.
    #[serde(default)]
    pub installer_kernel_args: Vec<S<String>>,
    /// Kernel modules of the machine's NICs and storage controllers: `builder validate` warns
    /// about any the installer environment does not carry.
    #[serde(default)]
    pub drivers: Vec<S<String>>,
    #[serde(default)]
    pub sysctls: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    pub labels: Option<S<BTreeMap<String, String>>>,
    #[serde(default)]
    pub taints: Vec<S<String>>,
    /// The default `power:` block of every node of this profile.
    #[serde(default)]
    pub power: Option<S<RawPower>>,
    /// UEFI Secure Boot stays on in the firmware: netboot through Debian's signed shim + GRUB.
    #[serde(default)]
    pub secure_boot: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBootNic {
    pub name: S<String>,
    #[serde(default)]
    pub port: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub wwn: Option<String>,
    #[serde(default)]
    pub by_path: Option<String>,
    #[serde(default)]
    pub by_id: Option<String>,
    #[serde(default)]
    pub min_size_gb: Option<u64>,
    #[serde(default)]
    pub max_size_gb: Option<u64>,
    #[serde(default)]
    pub rotational: Option<bool>,
    /// Accepted only to be refused with a clear message: kernel names move between boots.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDataDisk {
    pub name: S<String>,
    pub purpose: S<String>,
    pub selector: S<RawSelector>,
    #[serde(default)]
    pub filesystem: Option<S<String>>,
    #[serde(default)]
    pub mount: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    pub vendor: S<String>,
    #[serde(default)]
    pub driver_packages: Vec<String>,
}
