//! The install plan: what `pxe` tells the installer about one node (`GET /plan/<node>/<token>`),
//! and what an offline installer stick carries in `/ironseed/plan.json`. One type on every side,
//! and one function ([`crate::bundle::Plan::install_plan`]) that makes it from a rendered
//! bundle's `plan.json`, so the server, the stick builder and the installer cannot drift apart.

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
    /// Length in bytes of the file at `url`. Required offline: the image partition of a stick is
    /// rounded up to whole MiB, so the installer reads exactly this much of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The GPT partition name of an offline stick's image partition: the compressed golden image,
/// raw from the partition's first byte. The installer finds the stick by it.
pub const IMAGE_PARTITION: &str = "ironseed-image";
/// The GPT partition name of an offline stick's ESP (installer kernel, plan, seed).
pub const ESP_PARTITION: &str = "ironseed-esp";
/// Folder on the stick's ESP holding `plan.json` and the seed files.
pub const STICK_DIR: &str = "ironseed";
/// `ImageRef::url` of an image that sits on the stick: the partition, then the file name it
/// was published under (its extension says how it is compressed).
pub fn stick_image_url(file_name: &str) -> String {
    format!("partition:{IMAGE_PARTITION}/{file_name}")
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
    /// Where to POST progress events (`installing`, `progress`, `installed`, `failed`). Empty
    /// on an offline stick: there is no appliance, progress goes to the console only.
    pub report: String,
}

/// Where the installer gets the image and the seed, and where it reports: the appliance's URLs
/// for a network install, the stick for an offline one.
#[derive(Debug, Clone)]
pub struct Sources {
    pub image: ImageRef,
    pub seed: SeedUrls,
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

/// Where the installer's plan comes from, by the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmdline {
    /// `ironseed.plan=URL` from iPXE's install script, with `ironseed.mac=MAC` (the NIC iPXE
    /// booted from, for logs and reports).
    Network {
        plan_url: String,
        mac: Option<String>,
    },
    /// `ironseed.offline=1` from an offline stick's boot loader: plan, seed and image are on the
    /// stick, there is no network and no appliance.
    Offline,
    /// `ironseed.mode=inspect` from pxe's inspect script: collect facts, POST them to
    /// `facts_url` (`ironseed.facts=`), then power off or reboot. Never writes a disk.
    Inspect {
        facts_url: String,
        mac: Option<String>,
        after: After,
    },
}

/// What an inspection boot does once its facts are posted (`ironseed.after=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum After {
    /// The default: the machine waits, off, until the operator adopts and arms it.
    #[default]
    Poweroff,
    Reboot,
}

pub fn parse_cmdline(cmdline: &str) -> Option<Cmdline> {
    let mut plan_url = None;
    let mut mac = None;
    let mut offline = false;
    let (mut inspect, mut facts_url, mut after) = (false, None, After::default());
    for word in cmdline.split_whitespace() {
        if word == "ironseed.mode=inspect" {
            inspect = true;
        } else if let Some(v) = word.strip_prefix("ironseed.facts=") {
            facts_url = Some(v.to_string());
        } else if word == "ironseed.after=reboot" {
            after = After::Reboot;
        } else if let Some(v) = word.strip_prefix("ironseed.plan=") {
            plan_url = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("ironseed.mac=") {
            mac = Some(v.to_string());
        } else if word == "ironseed.offline=1" {
            offline = true;
        }
    }
    // Inspection wins over everything: a command line that asks to inspect must never install,
    // whatever else it carries. Without a facts URL there is nowhere to report: no mode.
    if inspect {
        return facts_url.map(|facts_url| Cmdline::Inspect {
            facts_url,
            mac,
            after,
        });
    }
    // A plan URL wins: a network boot never reads a stick that happens to be plugged in.
    match (plan_url, offline) {
        (Some(plan_url), _) => Some(Cmdline::Network { plan_url, mac }),
        (None, true) => Some(Cmdline::Offline),
        (None, false) => None,
    }
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
        assert_eq!(
            c,
            Cmdline::Network {
                plan_url: "http://10.0.20.5:8080/plan/k3s1/abc".into(),
                mac: Some("52:54:00:aa:bb:cc".into())
            }
        );
        assert_eq!(parse_cmdline("console=ttyS0 quiet"), None);
    }

    /// Protects: a command line that asks for inspection never installs, even with a plan URL
    /// or `ironseed.offline=1` beside it.
    #[test]
    fn cmdline_as_the_inspect_script_writes_it() {
        let url = "http://10.0.20.5:8080/inspect/52-54-00-aa-bb-cc/s3cret/facts";
        let c = parse_cmdline(&format!(
            "initrd=initrd.img ironseed.mode=inspect ironseed.facts={url} ironseed.mac=52:54:00:aa:bb:cc ironseed.after=poweroff"
        ));
        assert_eq!(
            c,
            Some(Cmdline::Inspect {
                facts_url: url.into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                after: After::Poweroff
            })
        );
        let c = parse_cmdline(&format!(
            "ironseed.plan=http://x/plan/a/b ironseed.offline=1 ironseed.mode=inspect ironseed.facts={url} ironseed.after=reboot"
        ));
        assert!(matches!(
            c,
            Some(Cmdline::Inspect {
                after: After::Reboot,
                mac: None,
                ..
            })
        ));
        // No facts URL: nothing to do, and certainly not an install.
        assert_eq!(
            parse_cmdline("ironseed.mode=inspect ironseed.plan=http://x/plan/a/b"),
            None
        );
        // Anything but `reboot` powers off.
        assert!(matches!(
            parse_cmdline(&format!(
                "ironseed.mode=inspect ironseed.facts={url} ironseed.after=x"
            )),
            Some(Cmdline::Inspect {
                after: After::Poweroff,
                ..
            })
        ));
    }

    #[test]
    fn cmdline_as_an_offline_stick_writes_it() {
        assert_eq!(
            parse_cmdline("console=tty0 console=ttyS0,115200 ironseed.offline=1 quiet"),
            Some(Cmdline::Offline)
        );
        assert_eq!(parse_cmdline("ironseed.offline=0"), None);
    }

    #[test]
    fn a_bundle_plan_makes_the_install_plan_of_its_node() {
        let plan = crate::bundle::Plan::from_json(
            br#"{"version":3,"cluster":"c","domain":"lab","api_vip":"10.0.20.10",
                "appliance":{"ip":"10.0.20.5","http_port":8080,"url":"http://10.0.20.5:8080"},
                "os_image":"debian-12","local_boot_script":"ipxe/local.ipxe","unknown_script":"ipxe/unknown.ipxe",
                "network":{"gateway":"10.0.20.1","dns":["10.0.20.1"],"subnet":"10.0.20.0/24","dhcp_pool":null},
                "nodes":[{"hostname":"k3s1","fqdn":"k3s1.lab","role":"server","bootstrap":true,"mac":"52:54:00:AA:BB:CC",
                  "ip":"10.0.20.11","prefix_len":24,"profile":"vm","boot_nic":"eno1","firmware":"uefi","dhcp_arch":7,
                  "install_disk":{"model":"X"},"data_disks":[],"seed_dir":"nodes/k3s1","report_token":"t",
                  "install_script":"ipxe/k3s1.ipxe"}]}"#,
        )
        .unwrap();
        let src = Sources {
            image: ImageRef {
                name: "debian-12".into(),
                url: stick_image_url("debian-12.raw.zst"),
                sha256: Some("ab".into()),
                size: Some(7),
            },
            seed: SeedUrls {
                user_data: "u".into(),
                meta_data: "m".into(),
                network_config: "n".into(),
            },
            report: String::new(),
        };
        assert!(plan.install_plan("k3s9", src.clone()).is_none());
        let p = plan.install_plan("k3s1", src).unwrap();
        assert_eq!(p.mac, "52:54:00:aa:bb:cc");
        assert_eq!(p.gateway, Ipv4Addr::new(10, 0, 20, 1));
        assert_eq!(p.image.url, "partition:ironseed-image/debian-12.raw.zst");
        assert!(p.kernel_args.is_empty() && p.report.is_empty());
        // The plan goes through JSON (the stick, HTTP) and back unchanged.
        let back: InstallPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
