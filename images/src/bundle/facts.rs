//! What a machine reports about itself from an inspection boot (`ironseed.mode=inspect`): one
//! JSON document, versioned, posted by the installer environment and read by `pxe` (stored with
//! the discovered machine) and `builder` (`discover`, `adopt`, `validate --facts`). One type for
//! every side, like the plan.

use serde::{Deserialize, Serialize};

use super::{Firmware, Mac};

/// The version of the facts document this release writes and reads.
pub const FACTS_VERSION: u32 = 1;

/// Longest facts document `pxe` accepts (bytes). A large server with many disks and NICs
/// reports a few tens of KiB; the installer trims its lists to fit.
pub const FACTS_MAX: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// [`FACTS_VERSION`].
    pub version: u32,
    /// The MAC the machine network-booted from (`ironseed.mac=` from iPXE).
    pub boot_mac: Option<Mac>,
    pub dmi: Dmi,
    /// How the firmware booted the inspection kernel.
    pub firmware: Option<Firmware>,
    /// UEFI Secure Boot state from efivars; `None` under BIOS or when unreadable.
    pub secure_boot: Option<bool>,
    pub cpu: Cpu,
    pub memory_bytes: u64,
    pub nics: Vec<Nic>,
    pub disks: Vec<DiskFacts>,
    /// PCI devices of interest: display controllers (GPUs), storage controllers (RAID/HBA),
    /// network controllers.
    pub pci: Vec<PciDevice>,
    /// Firmware files the kernel failed to load (`firmware: failed to load <file>` lines).
    pub missing_firmware: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub product_serial: Option<String>,
    pub product_uuid: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    pub bios_date: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub model: Option<String>,
    /// Logical CPUs.
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    pub mac: Mac,
    pub driver: Option<String>,
    /// PCI `vendor:device`, lower-case hex (`8086:10d3`).
    pub pci_id: Option<String>,
    /// `/sys/class/net/<nic>/carrier` is 1.
    pub carrier: bool,
    /// Mb/s, when the link is up and the driver says.
    pub speed_mbps: Option<u32>,
}

/// A disk as `images::disk` sees it (the same attributes its selectors match), plus what is on
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFacts {
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub size: u64,
    pub rotational: bool,
    pub removable: bool,
    /// `nvme`, `sata`, `sas`, `virtio`, `usb`, ... from the sysfs device path, when known.
    pub transport: Option<String>,
    pub by_id: Vec<String>,
    pub by_path: Vec<String>,
    /// The partition table type found on it (`gpt`, `dos`), if any.
    pub partition_table: Option<String>,
    /// Filesystem or other signatures found on it or its partitions (`xfs`, `ext4`,
    /// `linux_raid_member`, ...).
    pub signatures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciDevice {
    /// `0000:03:00.0`.
    pub address: String,
    /// PCI class, e.g. `0x030000` (VGA), `0x010400` (RAID), `0x020000` (Ethernet).
    pub class: String,
    /// `vendor:device`, lower-case hex.
    pub id: String,
    pub driver: Option<String>,
}

impl DiskFacts {
    /// The disk as `images::disk` selectors see it.
    pub fn as_disk(&self) -> crate::disk::Disk {
        crate::disk::Disk {
            name: self.name.clone(),
            path: format!("/dev/{}", self.name),
            model: self.model.clone(),
            model_note: None,
            serial: self.serial.clone(),
            wwn: self.wwn.clone(),
            size: self.size,
            rotational: self.rotational,
            removable: self.removable,
            read_only: false,
            mounts: Vec::new(),
            by_path: self.by_path.clone(),
            by_id: self.by_id.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("facts version {found} (this release reads version {want})")]
    Version { found: u32, want: u32 },
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("facts document of {0} bytes; at most {FACTS_MAX}")]
    TooLarge(usize),
}

impl Facts {
    pub fn from_json(bytes: &[u8]) -> Result<Facts, FactsError> {
        if bytes.len() > FACTS_MAX {
            return Err(FactsError::TooLarge(bytes.len()));
        }
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes)?;
        if v.version != FACTS_VERSION {
            return Err(FactsError::Version {
                found: v.version,
                want: FACTS_VERSION,
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_and_check_their_version() {
        let f = Facts {
            version: FACTS_VERSION,
            boot_mac: Some("52:54:00:aa:bb:cc".parse().unwrap()),
            memory_bytes: 8 << 30,
            disks: vec![DiskFacts {
                name: "sda".into(),
                model: Some("PERC H730 Mini".into()),
                serial: None,
                wwn: Some("0x6d0946606f1b".into()),
                size: 4 << 40,
                rotational: true,
                removable: false,
                transport: Some("sas".into()),
                by_id: vec![],
                by_path: vec!["pci-0000:03:00.0-scsi-0:2:0:0".into()],
                partition_table: None,
                signatures: vec!["xfs".into()],
            }],
            ..Facts::default()
        };
        let json = serde_json::to_vec(&f).unwrap();
        assert_eq!(Facts::from_json(&json).unwrap(), f);
        let old = String::from_utf8(json)
            .unwrap()
            .replace(r#""version":1"#, r#""version":9"#);
        assert!(matches!(
            Facts::from_json(old.as_bytes()),
            Err(FactsError::Version { found: 9, .. })
        ));
        assert!(matches!(
            Facts::from_json(&vec![b' '; FACTS_MAX + 1]),
            Err(FactsError::TooLarge(_))
        ));
        let d = f.disks[0].as_disk();
        assert_eq!(d.path, "/dev/sda");
        assert!(
            crate::disk::Selector {
                model: Some("PERC H730 Mini".into()),
                ..Default::default()
            }
            .matches(&d)
        );
    }
}
