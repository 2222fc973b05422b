//! The real machine under the installer: disks from `lsblk` and udev's `/dev/disk/by-*` links
//! (or, in the installer's initramfs, which has neither lsblk nor udev, straight from sysfs),
//! and an exclusive open of the chosen block device (fails if anything holds it).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::disk::{self, Disk};
use crate::install::Machine;

pub struct System;

/// Every `/dev/disk/by-path/*` and `/dev/disk/by-id/*` link with the device it resolves to.
pub fn disk_links() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["/dev/disk/by-path", "/dev/disk/by-id"] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(target) = std::fs::canonicalize(e.path()) {
                out.push((e.path().display().to_string(), target.display().to_string()));
            }
        }
    }
    out
}

impl Machine for System {
    fn disks(&self) -> io::Result<Vec<Disk>> {
        let out = match Command::new("lsblk")
            .args([
                "-J",
                "-b",
                "-o",
                "NAME,PATH,MODEL,SERIAL,WWN,SIZE,ROTA,RM,RO,TYPE,MOUNTPOINTS",
            ])
            .output()
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                return Ok(sysfs_disks(Path::new("/sys"), &mountinfo));
            }
            r => r?,
        };
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "lsblk: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        disk::parse_lsblk(&String::from_utf8_lossy(&out.stdout), &disk_links())
            .map_err(io::Error::other)
    }

    fn open(&self, d: &Disk) -> io::Result<File> {
        let mut o = File::options();
        o.read(true).write(true);
        // O_EXCL on a block device: refuse if it is mounted or otherwise claimed (Linux semantics).
        if Path::new(&d.path).starts_with("/dev") {
            o.custom_flags(nix::libc::O_EXCL);
        }
        o.open(&d.path)
    }
}

/// Disks as the kernel lists them under `SYS/block`, without udev: size, flags, model, serial
/// and WWN from the device's attributes, mounts from `/proc/self/mountinfo` by major:minor
/// (the disk's own and its partitions'). by-path/by-id stay empty: udev makes those names.
pub fn sysfs_disks(sys: &Path, mountinfo: &str) -> Vec<Disk> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys.join("block")) else {
        return out;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        // Not disks to install on: loop, RAM and zram devices, optical drives, device-mapper.
        if ["loop", "ram", "zram", "sr", "dm-", "md", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let dir = sys.join("block").join(&name);
        let size = read(&dir.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        if size == 0 {
            continue;
        }
        let flag = |f: &str| read(&dir.join(f)).is_some_and(|v| v == "1");
        // The disk's own dev number and its partitions' (children named <disk>…/dev).
        let mut devs: Vec<String> = read(&dir.join("dev")).into_iter().collect();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.file_name().to_string_lossy().starts_with(&name) {
                    devs.extend(read(&c.path().join("dev")));
                }
            }
        }
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() > 4 && devs.iter().any(|d| d == f[2])).then(|| f[4].to_string())
            })
            .collect();
        mounts.sort();
        mounts.dedup();
        out.push(Disk {
            path: format!("/dev/{name}"),
            model: read(&dir.join("device/model")),
            // virtio-blk exposes its serial on the disk, SCSI/NVMe on the device.
            serial: read(&dir.join("serial")).or_else(|| read(&dir.join("device/serial"))),
            wwn: read(&dir.join("wwid")).or_else(|| read(&dir.join("device/wwid"))),
            size,
            rotational: flag("queue/rotational"),
            removable: flag("removable"),
            read_only: flag("ro"),
            mounts,
            by_path: Vec::new(),
            by_id: Vec::new(),
            name,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs as the installer's VM shows it: a virtio-scsi disk with a mounted partition,
    /// a virtio-blk disk with a serial, and devices that are never install targets.
    #[test]
    fn sysfs_disks_read_the_kernels_attributes_and_mounts_by_dev_number() {
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w("block/sda/size", "33554432\n");
        w("block/sda/dev", "8:0\n");
        w("block/sda/removable", "0\n");
        w("block/sda/ro", "0\n");
        w("block/sda/queue/rotational", "1\n");
        w("block/sda/device/model", "QEMU HARDDISK   \n");
        w("block/sda/sda1/dev", "8:1\n");
        w("block/vdb/size", "2048\n");
        w("block/vdb/dev", "254:16\n");
        w("block/vdb/serial", "seed-disk\n");
        w("block/vdb/removable", "1\n");
        w("block/vdb/queue/rotational", "0\n");
        w("block/loop0/size", "100\n");
        w("block/sr0/size", "100\n");
        w("block/vdc/size", "0\n");
        let mi = "22 1 8:1 / /mnt rw - ext4 /dev/sda1 rw\n23 1 0:5 / /dev rw - devtmpfs dev rw\n";
        let d = sysfs_disks(t.path(), mi);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].path, "/dev/sda");
        assert_eq!(d[0].model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(d[0].size, 16 << 30);
        assert!(d[0].rotational && !d[0].removable);
        assert_eq!(
            d[0].mounts,
            vec!["/mnt".to_string()],
            "partition mount counts"
        );
        assert_eq!(d[1].serial.as_deref(), Some("seed-disk"));
        assert!(d[1].removable && d[1].mounts.is_empty());
        assert_eq!(d[1].size, 1 << 20);
    }

    #[test]
    fn this_machines_disks_are_listed_and_its_root_disk_is_never_a_target() {
        if Command::new("lsblk").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "lsblk missing in CI");
            eprintln!("SKIP: no lsblk");
            return;
        }
        let disks = System.disks().unwrap();
        let root = disks.iter().find(|d| d.mounts.iter().any(|m| m == "/"));
        if let Some(root) = root {
            let s = disk::Selector {
                min_size_gb: Some(0),
                ..Default::default()
            };
            // Whatever else matches, the mounted root disk is either ambiguous or refused.
            if let Ok(d) = disk::select(std::slice::from_ref(root), &s, &[]) {
                panic!("selected the mounted root disk {}", d.path);
            }
        }
    }
}
