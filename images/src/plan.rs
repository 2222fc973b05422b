//! The install plan: what `pxe` tells the installer about one node (`GET /plan/<node>/<token>`).
//! One type on both sides, so the server and the installer cannot drift apart.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::disk::Selector;

/// A data disk of the node's hardware profile: never wiped, never chosen as the install disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDisk {
    pub name: String,
    /// `longhorn` or `nfs-pool`.
    pub purpose: String,
    pub selector: Selector,
    pub filesystem: String,
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    pub name: String,
    pub url: String,
    /// sha256 of the file at `url`; `None` until the image catalog names it.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUrls {
    #[serde(rename = "user-data")]
    pub user_data: String,
    #[serde(rename = "meta-data")]
    pub meta_data: String,
    #[serde(rename = "network-config")]
    pub network_config: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallPlan {
    pub hostname: String,
    pub fqdn: String,
    pub role: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub boot_nic: String,
    pub firmware: String,
    pub install_disk: Selector,
    pub data_disks: Vec<DataDisk>,
    pub kernel_args: Vec<String>,
    pub image: ImageRef,
    pub seed: SeedUrls,
    /// Where to POST progress events (`installing`, `progress`, `installed`, `failed`).
    pub report: String,
}

impl InstallPlan {
    /// Data disks as (name, selector) pairs, the form `disk::select` takes.
    pub fn data_selectors(&self) -> Vec<(String, Selector)> {
        self.data_disks
            .iter()
            .map(|d| (d.name.clone(), d.selector.clone()))
            .collect()
    }
}

/// The installer's parameters from the kernel command line: `ironseed.plan=URL` (required) and
/// `ironseed.mac=MAC` (the NIC iPXE booted from, for logs and reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub plan_url: String,
    pub mac: Option<String>,
}

pub fn parse_cmdline(cmdline: &str) -> Option<Cmdline> {
    let mut plan_url = None;
    let mut mac = None;
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("ironseed.plan=") {
            plan_url = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("ironseed.mac=") {
            mac = Some(v.to_string());
        }
    }
    Some(Cmdline {
        plan_url: plan_url?,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_as_ipxe_writes_it() {
        let c = parse_cmdline(
            "initrd=initrd.img console=ttyS0,115200 ironseed.plan=http://10.0.20.5:8080/plan/k3s1/abc ironseed.mac=52:54:00:aa:bb:cc quiet",
        )
        .unwrap();
        assert_eq!(c.plan_url, "http://10.0.20.5:8080/plan/k3s1/abc");
        assert_eq!(c.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert_eq!(parse_cmdline("console=ttyS0 quiet"), None);
    }
}
