//! The bundle `builder render` wrote, as `pxe` reads it: `plan.json` plus the files it names.
//! Every file is checked against `SHA256SUMS` at load, so a half-copied or edited bundle is
//! refused before anything boots from it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::dhcp::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a plan this pxe understands: {message}")]
    Plan { path: PathBuf, message: String },
    #[error(
        "{0}: checksum mismatch with SHA256SUMS (a partial copy or an edited file?); re-render the bundle"
    )]
    Checksum(String),
    #[error("{0}: listed in SHA256SUMS but missing")]
    Missing(String),
    #[error("{0}: a path in SHA256SUMS leaves the bundle")]
    Escape(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Appliance {
    pub ip: Ipv4Addr,
    pub http_port: u16,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanNode {
    pub hostname: String,
    pub fqdn: String,
    pub role: String,
    pub bootstrap: bool,
    pub mac: MacAddr,
    #[serde(default)]
    pub extra_macs: Vec<MacAddr>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub profile: String,
    pub firmware: String,
    pub dhcp_arch: u16,
    pub boot_nic: String,
    /// Parsed here, so a bundle whose selectors the installer could not read is refused at start.
    pub install_disk: images::disk::Selector,
    pub data_disks: Vec<images::plan::DataDisk>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    pub seed_dir: String,
    pub seed_token: String,
    pub install_script: String,
}

impl PlanNode {
    pub fn macs(&self) -> impl Iterator<Item = &MacAddr> {
        std::iter::once(&self.mac).chain(self.extra_macs.iter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
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
    #[serde(default)]
    pub joined: Vec<String>,
    pub nodes: Vec<PlanNode>,
}

/// A loaded, verified bundle. Its files are kept in memory (they are small), so the server
/// can serve the owner-only seeds after it has dropped root.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub plan: Plan,
    /// sha256 of `plan.json`: identifies this render.
    pub id: String,
    /// The same `plan.json` as the installer's plans are made from (`images::plan`, shared with
    /// `builder usb image`).
    pub install: images::plan::BundlePlan,
    files: BTreeMap<String, std::sync::Arc<[u8]>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let io = |path: PathBuf| move |source| BundleError::Io { path, source };
        let sums_path = dir.join("SHA256SUMS");
        let sums = std::fs::read_to_string(&sums_path).map_err(io(sums_path.clone()))?;
        let mut files: BTreeMap<String, std::sync::Arc<[u8]>> = BTreeMap::new();
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (want, rel) = line
                .split_once("  ")
                .ok_or_else(|| BundleError::Checksum(format!("SHA256SUMS line `{line}`")))?;
            if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                return Err(BundleError::Escape(rel.into()));
            }
            let bytes = std::fs::read(dir.join(rel)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    BundleError::Missing(rel.into())
                } else {
                    BundleError::Io {
                        path: dir.join(rel),
                        source: e,
                    }
                }
            })?;
            if hex(&Sha256::digest(&bytes)) != want {
                return Err(BundleError::Checksum(rel.into()));
            }
            files.insert(rel.to_string(), bytes.into());
        }
        let plan_path = dir.join("plan.json");
        let bytes = files
            .get("plan.json")
            .map(|b| b.to_vec())
            .ok_or_else(|| BundleError::Missing("plan.json (not in SHA256SUMS)".into()))?;
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| BundleError::Plan {
            path: plan_path.clone(),
            message: e.to_string(),
        })?;
        let install = serde_json::from_slice(&bytes).map_err(|e| BundleError::Plan {
            path: plan_path.clone(),
            message: e.to_string(),
        })?;
        if plan.version != 1 {
            return Err(BundleError::Plan {
                path: plan_path,
                message: format!("plan version {} (this pxe reads version 1)", plan.version),
            });
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            id: hex(&Sha256::digest(&bytes)),
            plan,
            install,
            files,
        })
    }

    pub fn node(&self, hostname: &str) -> Option<&PlanNode> {
        self.plan.nodes.iter().find(|n| n.hostname == hostname)
    }

    pub fn node_by_mac(&self, mac: &MacAddr) -> Option<&PlanNode> {
        self.plan.nodes.iter().find(|n| n.macs().any(|m| m == mac))
    }

    /// A verified file of the bundle (paths come from the plan, never from a request).
    pub fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        self.files.get(rel).map(|b| b.to_vec()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{rel} is not in the bundle's SHA256SUMS"),
            )
        })
    }
}
