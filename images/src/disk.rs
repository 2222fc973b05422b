//! Disks as the installer sees them, and the pure choice of the install disk: exactly one disk
//! must match the hardware profile's selector, it must not be a data disk (Longhorn tiers, NFS
//! pools are never wiped), and nothing on it may be mounted.

use serde::{Deserialize, Serialize};

/// Identifies a disk by stable attributes; never by kernel name (`/dev/sdX` moves between boots).
/// The same type is the hardware profile's `install_disk`/`data_disks[].selector` in builder and
/// the plan the installer receives, so both sides agree on what matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
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
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        *self == Selector::default()
    }

    /// True when no attribute both selectors set tells the two apart, so one physical disk could
    /// satisfy both. Conservative on purpose: a data disk must be provably not the install disk.
    pub fn may_overlap(&self, other: &Selector) -> bool {
        fn differ<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            matches!((a, b), (Some(x), Some(y)) if x != y)
        }
        if differ(&self.model, &other.model)
            || differ(&self.serial, &other.serial)
            || differ(
                &self.wwn.as_deref().map(wwn_norm),
                &other.wwn.as_deref().map(wwn_norm),
            )
            // Not by_id or by_path: a disk has several of each (ata-…, wwn-…, nvme-eui…; one
            // per path of a multipath disk), so two different links can name the same disk.
            || differ(&self.rotational, &other.rotational)
        {
            return false;
        }
        let (a_lo, a_hi) = (
            self.min_size_gb.unwrap_or(0),
            self.max_size_gb.unwrap_or(u64::MAX),
        );
        let (b_lo, b_hi) = (
            other.min_size_gb.unwrap_or(0),
            other.max_size_gb.unwrap_or(u64::MAX),
        );
        a_lo <= b_hi && b_lo <= a_hi
    }

    /// Whether `d` has every attribute this selector sets. An empty selector matches nothing.
    pub fn matches(&self, d: &Disk) -> bool {
        if self.is_empty() {
            return false;
        }
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref().map(str::trim) == Some(w.trim()),
        };
        let wwn_ok = match &self.wwn {
            None => true,
            Some(w) => d.wwn.as_deref().map(wwn_norm) == Some(wwn_norm(w)),
        };
        let gb = d.size / 1_000_000_000;
        eq(&self.model, &d.model)
            && eq(&self.serial, &d.serial)
            && wwn_ok
            && self.by_path.as_ref().is_none_or(|p| d.by_path.contains(p))
            && self.by_id.as_ref().is_none_or(|p| d.by_id.contains(p))
            && self.min_size_gb.is_none_or(|m| gb >= m)
            && self.max_size_gb.is_none_or(|m| gb <= m)
            && self.rotational.is_none_or(|r| r == d.rotational)
    }
}

/// A WWN as every tool spells it: lsblk and udev say `0x5000c500…`, sysfs (the installer's
/// initramfs, inspection facts) `naa.5000c500…`, others the bare hex, in either case. NVMe's
/// `eui.…` is the same everywhere.
fn wwn_norm(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("naa.")) {
        Some(hex) => hex.to_string(),
        None => s,
    }
}

/// One whole disk (no partitions), with the links udev made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub path: String,
    pub model: Option<String>,
    /// Why `model` may not be the disk's whole model: the installer (no udev) reads a SATA
    /// disk's 40-character model by ATA IDENTIFY (`crate::ata`); when that fails it keeps the
    /// 16 characters sysfs shows, and says so here and in the list of disks it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_note: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub size: u64,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    /// Mount points of the disk and all its partitions.
    pub mounts: Vec<String>,
    /// Names under /dev/disk/by-path and /dev/disk/by-id that point at this disk.
    pub by_path: Vec<String>,
    pub by_id: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no disk matches the install selector {selector}; disks seen: {seen}")]
    NoMatch { selector: String, seen: String },
    #[error("{} disks match the install selector {selector} ({}); refusing to guess", .names.len(), .names.join(", "))]
    Ambiguous {
        selector: String,
        names: Vec<String>,
    },
    #[error(
        "{disk} matches the install selector and also data disk `{data}`, which is never wiped"
    )]
    IsDataDisk { disk: String, data: String },
    #[error("{disk} is in use (mounted at {mounts}); refusing to overwrite it")]
    Mounted { disk: String, mounts: String },
    #[error("{0} is read-only")]
    ReadOnly(String),
}

/// The install disk, or why none may be used. Pure: the caller lists the disks.
pub fn select<'a>(
    disks: &'a [Disk],
    install: &Selector,
    data: &[(String, Selector)],
) -> Result<&'a Disk, SelectError> {
    let shown = serde_json::to_string(install).unwrap_or_default();
    let hits: Vec<&Disk> = disks.iter().filter(|d| install.matches(d)).collect();
    let disk = match hits.as_slice() {
        [] => {
            return Err(SelectError::NoMatch {
                selector: shown,
                seen: disks.iter().map(describe).collect::<Vec<_>>().join("; "),
            });
        }
        [one] => *one,
        many => {
            return Err(SelectError::Ambiguous {
                selector: shown,
                names: many.iter().map(|d| d.path.clone()).collect(),
            });
        }
    };
    if let Some((name, _)) = data.iter().find(|(_, s)| s.matches(disk)) {
        return Err(SelectError::IsDataDisk {
            disk: disk.path.clone(),
            data: name.clone(),
        });
    }
    if !disk.mounts.is_empty() {
        return Err(SelectError::Mounted {
            disk: disk.path.clone(),
            mounts: disk.mounts.join(", "),
        });
    }
    if disk.read_only {
        return Err(SelectError::ReadOnly(disk.path.clone()));
    }
    Ok(disk)
}

fn describe(d: &Disk) -> String {
    format!(
        "{} model={}{} serial={} size={}GB rotational={}",
        d.path,
        d.model.as_deref().unwrap_or("-"),
        d.model_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        d.serial.as_deref().unwrap_or("-"),
        d.size / 1_000_000_000,
        d.rotational
    )
}

#[derive(Deserialize)]
struct LsblkDoc {
    blockdevices: Vec<LsblkDev>,
}

#[derive(Deserialize)]
struct LsblkDev {
    name: String,
    path: String,
    model: Option<String>,
    serial: Option<String>,
    wwn: Option<String>,
    size: u64,
    rota: bool,
    rm: bool,
    ro: bool,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    mountpoints: Vec<Option<String>>,
    #[serde(default)]
    children: Vec<LsblkDev>,
}

fn mounts(d: &LsblkDev, out: &mut Vec<String>) {
    out.extend(d.mountpoints.iter().flatten().cloned());
    for c in &d.children {
        mounts(c, out);
    }
}

/// Parse `lsblk -J -b -o NAME,PATH,MODEL,SERIAL,WWN,SIZE,ROTA,RM,RO,TYPE,MOUNTPOINTS` output.
/// `links` maps `/dev/disk/by-{path,id}/NAME` link names to the device path they resolve to.
pub fn parse_lsblk(json: &str, links: &[(String, String)]) -> Result<Vec<Disk>, serde_json::Error> {
    let doc: LsblkDoc = serde_json::from_str(json)?;
    Ok(doc
        .blockdevices
        .into_iter()
        // zram and loop devices are not disks to install on; empty ones cannot hold an image.
        .filter(|d| d.kind == "disk" && d.size > 0 && !d.name.starts_with("zram"))
        .map(|d| {
            let mut m = Vec::new();
            mounts(&d, &mut m);
            let linked = |prefix: &str| {
                links
                    .iter()
                    .filter(|(l, target)| l.starts_with(prefix) && *target == d.path)
                    .map(|(l, _)| l[prefix.len()..].to_string())
                    .collect::<Vec<_>>()
            };
            Disk {
                by_path: linked("/dev/disk/by-path/"),
                by_id: linked("/dev/disk/by-id/"),
                name: d.name,
                path: d.path,
                model: d.model.map(|s| s.trim().to_string()),
                model_note: None,
                serial: d.serial,
                wwn: d.wwn,
                size: d.size,
                rotational: d.rota,
                removable: d.rm,
                read_only: d.ro,
                mounts: m,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, model: &str, gb: u64) -> Disk {
        Disk {
            name: path.trim_start_matches("/dev/").into(),
            path: path.into(),
            model: Some(model.into()),
            model_note: None,
            serial: Some(format!("S-{model}")),
            wwn: None,
            size: gb * 1_000_000_000,
            rotational: false,
            removable: false,
            read_only: false,
            mounts: vec![],
            by_path: vec![],
            by_id: vec![],
        }
    }

    fn sel(model: &str) -> Selector {
        Selector {
            model: Some(model.into()),
            ..Default::default()
        }
    }

    #[test]
    fn exactly_one_match_is_chosen() {
        let d = [
            disk("/dev/sda", "SSDSC2KB240G8", 240),
            disk("/dev/nvme0n1", "Samsung 970", 1000),
        ];
        assert_eq!(
            select(&d, &sel("SSDSC2KB240G8"), &[]).unwrap().path,
            "/dev/sda"
        );
    }

    #[test]
    fn zero_or_several_matches_are_refused() {
        let d = [disk("/dev/sda", "X", 240), disk("/dev/sdb", "X", 240)];
        assert!(matches!(
            select(&d, &sel("Y"), &[]),
            Err(SelectError::NoMatch { .. })
        ));
        let e = select(&d, &sel("X"), &[]).unwrap_err();
        assert!(
            matches!(e, SelectError::Ambiguous { ref names, .. } if names.len() == 2),
            "{e}"
        );
        let by_size = Selector {
            max_size_gb: Some(500),
            ..Default::default()
        };
        assert!(matches!(
            select(&d, &by_size, &[]),
            Err(SelectError::Ambiguous { .. })
        ));
    }

    #[test]
    fn a_data_disk_is_never_the_install_disk() {
        let d = [disk("/dev/sda", "X", 240)];
        let e = select(&d, &sel("X"), &[("optane".into(), sel("X"))]).unwrap_err();
        assert_eq!(
            e,
            SelectError::IsDataDisk {
                disk: "/dev/sda".into(),
                data: "optane".into()
            }
        );
    }

    #[test]
    fn mounted_or_read_only_disks_are_refused() {
        let mut d = disk("/dev/sda", "X", 240);
        d.mounts = vec!["/".into()];
        assert!(matches!(
            select(std::slice::from_ref(&d), &sel("X"), &[]),
            Err(SelectError::Mounted { .. })
        ));
        d.mounts.clear();
        d.read_only = true;
        assert!(matches!(
            select(&[d], &sel("X"), &[]),
            Err(SelectError::ReadOnly(_))
        ));
    }

    #[test]
    fn empty_selector_matches_nothing_and_wwn_is_normalised() {
        let mut d = disk("/dev/sda", "X", 240);
        assert!(!Selector::default().matches(&d));
        d.wwn = Some("0x5002538E40A1B2C3".into());
        let s = Selector {
            wwn: Some("5002538e40a1b2c3".into()),
            ..Default::default()
        };
        assert!(s.matches(&d));
    }

    /// Protects: a selector written from lsblk (`0x…`) matches the disk the installer's
    /// initramfs reads from sysfs (`naa.…`), and the overlap check between an install and a data
    /// selector sees them as the same disk (else a data disk could pass as "provably not the
    /// install disk").
    #[test]
    fn sysfs_and_lsblk_spellings_of_a_wwn_are_one_disk() {
        let mut d = disk("/dev/sda", "X", 240);
        d.wwn = Some("naa.5000c500a1b2c3d4".into());
        let lsblk = Selector {
            wwn: Some("0x5000C500A1B2C3D4".into()),
            ..Default::default()
        };
        assert!(lsblk.matches(&d));
        let sysfs = Selector {
            wwn: Some("naa.5000c500a1b2c3d4".into()),
            ..Default::default()
        };
        assert!(lsblk.may_overlap(&sysfs));
        let nvme = Selector {
            wwn: Some("eui.0025385891b12345".into()),
            ..Default::default()
        };
        assert!(!nvme.may_overlap(&sysfs));
        d.wwn = Some("eui.0025385891b12345".into());
        assert!(nvme.matches(&d) && !lsblk.matches(&d));
    }

    #[test]
    fn lsblk_output_of_this_machine_parses_and_its_root_disk_is_refused() {
        let json = include_str!("../testdata/lsblk-vm-host.json");
        let links = vec![(
            "/dev/disk/by-path/virtio-pci-0000:00:05.0".to_string(),
            "/dev/vda".to_string(),
        )];
        let disks = parse_lsblk(json, &links).unwrap();
        let vda = disks.iter().find(|d| d.path == "/dev/vda").expect("vda");
        assert_eq!(vda.by_path, ["virtio-pci-0000:00:05.0"]);
        assert!(vda.mounts.contains(&"/".to_string()));
        assert!(disks.iter().all(|d| !d.name.starts_with("zram")));
        let s = Selector {
            by_path: Some("virtio-pci-0000:00:05.0".into()),
            ..Default::default()
        };
        assert!(matches!(
            select(&disks, &s, &[]),
            Err(SelectError::Mounted { .. })
        ));
    }

    #[test]
    fn selectors_overlap_unless_an_attribute_differs() {
        assert!(!sel("X").may_overlap(&sel("Y")));
        assert!(sel("X").may_overlap(&sel("X")));
        let small = Selector {
            max_size_gb: Some(300),
            ..Default::default()
        };
        let big = Selector {
            min_size_gb: Some(400),
            ..Default::default()
        };
        assert!(!small.may_overlap(&big));
        let serial = Selector {
            serial: Some("S1".into()),
            ..Default::default()
        };
        assert!(
            serial.may_overlap(&sel("X")),
            "nothing shared tells them apart"
        );
        // One disk has several by-id links (ata-…, wwn-…): two different ones prove nothing.
        let by_id = |l: &str| Selector {
            by_id: Some(l.into()),
            ..Default::default()
        };
        assert!(by_id("ata-SSD_123").may_overlap(&by_id("wwn-0x5000c500a1b2c3d4")));
    }
}
