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
use crate::usb::{Device, DeviceFacts};
use crate::write::Target;

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
    fn secure_boot(&self) -> Option<bool> {
        let sys = std::path::Path::new("/sys");
        if !sys.join("firmware/efi").exists() {
            return None;
        }
        crate::inspect::secure_boot(sys)
            .or_else(|| crate::inspect::secure_boot_from_log(&crate::inspect::read_kmsg()))
    }

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
    fn kernel_log(&self) -> String {
        crate::inspect::read_kmsg()
    }
}

/// Disks as the kernel lists them under `SYS/block`, without udev: size, flags, model, serial
/// and WWN from the device's attributes, mounts from `/proc/self/mountinfo` by major:minor
/// (the disk's own and its partitions'). by-path/by-id stay empty: udev makes those names.
///
/// A disk whose sysfs vendor is `ATA` (SATA through libata) shows only the first 16 characters
/// of its model there; its IDENTIFY data ([`crate::ata::sysfs_model`]) has all 40, as udev's
/// `ata_id` reads them, so the installer and first boot's lsblk agree on a selector's model.
/// When that fails, the sysfs model stays and `model_note` says so.
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
        let mut model = read(&dir.join("device/model"));
        let mut model_note = None;
        if read(&dir.join("device/vendor")).as_deref() == Some("ATA") {
            match crate::ata::sysfs_model(sys, &name) {
                Ok(m) => model = Some(m),
                Err(e) => {
                    model_note = Some(format!(
                        "no ATA IDENTIFY data ({e}): the first 16 characters of the model, from sysfs"
                    ))
                }
            }
        }
        out.push(Disk {
            path: format!("/dev/{name}"),
            model,
            model_note,
            // virtio-blk exposes its serial on the disk, NVMe on the device, SCSI (SATA through
            // libata, SAS, RAID volumes) in the Unit Serial Number VPD page the kernel caches.
            serial: read(&dir.join("serial"))
                .or_else(|| read(&dir.join("device/serial")))
                .or_else(|| {
                    vpd_serial(&std::fs::read(dir.join("device/vpd_pg80")).unwrap_or_default())
                }),
            wwn: read(&dir.join("wwid")).or_else(|| read(&dir.join("device/wwid"))),
            size,
            rotational: flag("queue/rotational"),
            removable: flag("removable"),
            read_only: flag("ro"),
            mounts,
            by_path: sysfs_nvme_by_path(sys, &name, read(&dir.join("nsid")))
                .into_iter()
                .collect(),
            by_id: Vec::new(),
            name,
        });
    }
    out
}

/// udev's by-path name of an NVMe namespace (systemd's path_id: the controller's PCI device,
/// then `nvme-NSID`): `pci-0000:02:00.0-nvme-1`. The installer has no udev, and a profile may
/// select the install disk by this name (the OptiPlex's single M.2 slot). `ctrl` is the resolved
/// sysfs path of the controller (`/sys/class/nvme/nvme0` →
/// `/sys/devices/pci0000:00/0000:00:11.0/0000:02:00.0/nvme/nvme0`): with native NVMe
/// multipath (Debian's kernel) the namespace itself lives under
/// `/sys/devices/virtual/nvme-subsystem`, away from the PCI tree. `None` when not on PCI.
pub fn nvme_by_path(ctrl: &Path, nsid: &str) -> Option<String> {
    let parts: Vec<String> = ctrl
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let pci = parts.iter().rev().find(|p| is_pci_address(p))?;
    Some(format!("pci-{pci}-nvme-{nsid}"))
}

/// `nvme0n1` → (`nvme0`, `1`): the controller and the namespace number of a namespace's name
/// (`nvme0c1n1`, a multipath path, is not a disk of its own and gets `None`).
fn nvme_parts(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("nvme")?;
    let (ctrl, ns) = rest.split_once('n')?;
    (!ctrl.is_empty()
        && ctrl.chars().all(|c| c.is_ascii_digit())
        && !ns.is_empty()
        && ns.chars().all(|c| c.is_ascii_digit()))
    .then(|| (&name[..4 + ctrl.len()], ns))
}

fn sysfs_nvme_by_path(sys: &Path, name: &str, nsid: Option<String>) -> Option<String> {
    let (ctrl, n) = nvme_parts(name)?;
    let path = std::fs::canonicalize(sys.join("class/nvme").join(ctrl)).ok()?;
    nvme_by_path(&path, nsid.as_deref().unwrap_or(n))
}

/// `dddd:bb:ss.f`, lowercase hex.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// The network interfaces the installer takes down before reboot(2): every one under
/// `<sys>/class/net` but loopback, sorted. Debian 12's kernel can spin forever in virtio_net's
/// `free_old_xmit_skbs` when IPv6 MLD work transmits while `device_shutdown()` resets the NIC
/// (seen in vm_discover: a soft lockup, the VM never powered off); a downed link sends nothing.
pub fn interfaces_to_down(sys: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The serial in a SCSI Unit Serial Number VPD page (0x80; SPC-4 7.8.15): a 4-byte header
/// with the length at bytes 2-3, then the serial in ASCII, space-padded. This is what udev's
/// `ID_SCSI_SERIAL` (and so lsblk's SERIAL) reads for SCSI and SATA disks.
pub fn vpd_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let s = page.get(4..4 + len).unwrap_or(&page[4..]);
    let s: String = String::from_utf8_lossy(s)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// One line of /proc/self/mountinfo: the device number of the mounted filesystem (`0:N` for
/// btrfs subvolumes, overlay, tmpfs), its mount point and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: (u64, u64),
    pub mount_point: String,
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` is a space in a mount point).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse /proc/self/mountinfo (proc(5)): `id parent major:minor root mountpoint opts
/// [optional fields...] - fstype source superopts`. Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let sep = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: unescape(f.get(4)?),
                source: unescape(f.get(sep + 2)?),
            })
        })
        .collect()
}

fn sys_read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn parse_dev(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The sysfs folder of a block device number (`/sys/dev/block/M:m`, resolved).
fn sys_dir(dev: (u64, u64)) -> Option<std::path::PathBuf> {
    std::fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1)).ok()
}

/// The device number a mount sits on: its own, or (btrfs, `0:N`) its source's.
fn mount_dev(m: &Mount) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    if m.dev.0 != 0 {
        return Some(m.dev);
    }
    if !m.source.starts_with("/dev/") {
        return None;
    }
    let rdev = std::fs::metadata(&m.source).ok()?.rdev();
    Some((nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)))
}

/// The whole disks under a block device: a partition's disk, a dm/md device's slaves (walked
/// down to the disks), or the disk itself.
fn base_disks(dev: (u64, u64), out: &mut Vec<(u64, u64)>, depth: usize) {
    let Some(sys) = sys_dir(dev) else { return };
    if depth > 8 {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(sys.join("slaves")) {
        let slaves: Vec<_> = rd.flatten().collect();
        if !slaves.is_empty() {
            for s in slaves {
                if let Some(d) = sys_read(&s.path().join("dev")).and_then(|d| parse_dev(&d)) {
                    base_disks(d, out, depth + 1);
                }
            }
            return;
        }
    }
    if sys.join("partition").exists() {
        if let Some(d) = sys
            .parent()
            .and_then(|p| sys_read(&p.join("dev")))
            .and_then(|d| parse_dev(&d))
        {
            out.push(d);
        }
    } else {
        out.push(dev);
    }
}

/// Everything `usb::check` needs to know about a write target, from sysfs, mountinfo and lsblk.
pub fn device_facts(path: &Path) -> io::Result<DeviceFacts> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let resolved = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&resolved)?;
    let mut f = DeviceFacts {
        path: path.display().to_string(),
        resolved: resolved.display().to_string(),
        ..Default::default()
    };
    if !meta.file_type().is_block_device() {
        f.size = (!meta.is_file()).then_some(0);
        return Ok(f);
    }
    f.is_block = true;
    let dev = (
        nix::sys::stat::major(meta.rdev()),
        nix::sys::stat::minor(meta.rdev()),
    );
    let sys = sys_dir(dev)
        .ok_or_else(|| io::Error::other(format!("no sysfs entry for {}", resolved.display())))?;
    f.is_partition = sys.join("partition").exists();
    let disk = if f.is_partition {
        sys.parent().map(Path::to_path_buf).unwrap_or(sys.clone())
    } else {
        sys.clone()
    };
    // sysfs sizes are in 512-byte sectors whatever the device's block size.
    f.size = sys_read(&sys.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 512);
    f.removable = sys_read(&disk.join("removable")).as_deref() == Some("1");
    f.read_only = sys_read(&sys.join("ro")).as_deref() == Some("1");
    // USB mass storage sits under .../usbN/N-P/...; the removable bit alone misses card
    // readers and USB SSDs that report 0.
    f.usb = disk.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s.starts_with("usb") && s[3..].chars().all(|c| c.is_ascii_digit()))
    });
    f.vendor = sys_read(&disk.join("device/vendor"));
    f.model = sys_read(&disk.join("device/model"));
    // USB serials come from udev, not sysfs; lsblk asks udev.
    f.serial = Command::new("lsblk")
        .args(["-dno", "SERIAL"])
        .arg(&resolved)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| Some(String::from_utf8(o.stdout).ok()?.trim().to_string()))
        .filter(|s| !s.is_empty());

    // The device and its partitions, by device number.
    let mut devs = vec![dev];
    let mut holders = Vec::new();
    let mut scan = vec![sys.clone()];
    if !f.is_partition {
        for e in std::fs::read_dir(&disk)?.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = sys_read(&p.join("dev")).and_then(|d| parse_dev(&d)) {
                    devs.push(d);
                }
                scan.push(p);
            }
        }
    }
    for s in &scan {
        if let Ok(rd) = std::fs::read_dir(s.join("holders")) {
            holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    f.holders = holders;
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
    let mut system = Vec::new();
    for m in &mounts {
        let Some(d) = mount_dev(m) else { continue };
        if devs.contains(&d) {
            f.mounts.push(m.mount_point.clone());
        }
        if m.mount_point == "/" || m.mount_point == "/boot" || m.mount_point == "/boot/efi" {
            base_disks(d, &mut system, 0);
        }
    }
    let mut mine = Vec::new();
    base_disks(dev, &mut mine, 0);
    f.holds_system = mine.iter().any(|d| system.contains(d));
    Ok(f)
}

/// The file a USB image is written to: the stick, or in tests a regular file.
pub struct DeviceFile(pub File);

impl DeviceFile {
    /// Open for writing. A block device is opened `O_EXCL`: Linux refuses it while anything
    /// (a mount, dm, md) holds it, closing the gap between the checks and the write.
    pub fn open(path: &Path, is_block: bool) -> io::Result<DeviceFile> {
        let mut o = File::options();
        o.read(true).write(true);
        if is_block {
            o.custom_flags(nix::libc::O_EXCL);
        }
        o.open(path).map(DeviceFile)
    }
}

impl io::Read for DeviceFile {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl io::Write for DeviceFile {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
impl io::Seek for DeviceFile {
    fn seek(&mut self, p: io::SeekFrom) -> io::Result<u64> {
        self.0.seek(p)
    }
}
impl Target for DeviceFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}
impl Device for DeviceFile {
    fn drop_cache(&mut self) -> io::Result<()> {
        // Written pages are clean after the sync; DONTNEED evicts them so the read-back goes to
        // the stick (a stick that silently drops writes is the case this catches).
        self.0.sync_all()?;
        nix::fcntl::posix_fadvise(
            &self.0,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_but_loopback_goes_down_before_reboot() {
        let t = tempfile::tempdir().unwrap();
        for n in ["lo", "eth1", "eth0", "bond0"] {
            std::fs::create_dir_all(t.path().join("class/net").join(n)).unwrap();
        }
        assert_eq!(interfaces_to_down(t.path()), ["bond0", "eth0", "eth1"]);
        assert!(interfaces_to_down(&t.path().join("nothing")).is_empty());
    }

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

    /// A SATA disk (sysfs vendor `ATA`) gets its whole model from libata's IDENTIFY data, so
    /// a selector longer than the 16-character INQUIRY product (the R630's `INTEL
    /// SSDSC2KB240G8`) matches in the installer as it does in first boot's lsblk; without that
    /// data the sysfs model stays, with a note the installer's list of disks shows. Fails if
    /// the IDENTIFY step or its fallback goes.
    #[test]
    fn sata_models_come_from_ata_identify_with_the_sysfs_model_as_fallback() {
        let t = tempfile::tempdir().unwrap();
        let w = |p: &str, v: &str| {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        let ahci = "devices/pci0000:00/0000:00:1f.2";
        let perc = "devices/pci0000:00/0000:00:03.0/host6/target6:2:0/6:2:0:0";
        let devs = [
            ("sda", format!("{ahci}/ata1/host0/target0:0:0/0:0:0:0")),
            ("sdb", format!("{ahci}/ata2/host1/target1:0:0/1:0:0:0")),
            ("sdc", perc.to_string()),
        ];
        std::fs::create_dir_all(t.path().join("block")).unwrap();
        for (n, d) in &devs {
            w(&format!("{d}/block/{n}/size"), "468862128\n");
            std::os::unix::fs::symlink(
                t.path().join(d).join("block").join(n),
                t.path().join("block").join(n),
            )
            .unwrap();
        }
        w(
            &format!("{}/block/sda/device/vendor", devs[0].1),
            "ATA     \n",
        );
        w(
            &format!("{}/block/sda/device/model", devs[0].1),
            "INTEL SSDSC2KB24\n",
        );
        w(
            &format!("{ahci}/ata1/link1/dev1.0/ata_device/dev1.0/id"),
            include_str!("../tests/fixtures/ata/qemu-ide-hd-sysfs-id.txt"),
        );
        // No IDENTIFY data for sdb (its id file missing).
        w(
            &format!("{}/block/sdb/device/vendor", devs[1].1),
            "ATA     \n",
        );
        w(
            &format!("{}/block/sdb/device/model", devs[1].1),
            "INTEL SSDSC2KB24\n",
        );
        w(&format!("{perc}/block/sdc/device/vendor"), "DELL    \n");
        w(
            &format!("{perc}/block/sdc/device/model"),
            "PERC H730 Mini  \n",
        );
        let d = sysfs_disks(t.path(), "");
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0].model.as_deref(), Some("INTEL SSDSC2KB240G8"));
        assert_eq!(d[0].model_note, None);
        assert_eq!(d[1].model.as_deref(), Some("INTEL SSDSC2KB24"));
        let note = d[1].model_note.as_deref().unwrap();
        assert!(note.starts_with("no ATA IDENTIFY data ("), "{note}");
        assert_eq!(d[2].model.as_deref(), Some("PERC H730 Mini"));
        assert_eq!(d[2].model_note, None);
        let sel = crate::disk::Selector {
            model: Some("INTEL SSDSC2KB240G8".into()),
            ..Default::default()
        };
        assert_eq!(crate::disk::select(&d, &sel, &[]).unwrap().path, "/dev/sda");
        // The fallback shows in the list of disks a refused selector prints.
        let e = crate::disk::select(&d[1..], &sel, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model=INTEL SSDSC2KB24 (no ATA IDENTIFY data ("),
            "{e}"
        );
    }

    /// The OptiPlex profile selects its install disk by `by_path`; without this the installer
    /// (no udev) would see no by-path name and refuse every disk.
    #[test]
    fn nvme_namespaces_get_udevs_by_path_name_without_udev() {
        let ctrl = Path::new("/sys/devices/pci0000:00/0000:00:11.0/0000:02:00.0/nvme/nvme0");
        assert_eq!(
            nvme_by_path(ctrl, "1").as_deref(),
            Some("pci-0000:02:00.0-nvme-1")
        );
        assert_eq!(nvme_parts("nvme0n1"), Some(("nvme0", "1")));
        assert_eq!(nvme_parts("nvme12n3"), Some(("nvme12", "3")));
        assert_eq!(nvme_parts("nvme0c1n1"), None);
        assert_eq!(nvme_parts("sda"), None);
        // A fake sysfs with native multipath: the namespace under nvme-subsystem, the
        // controller under its PCI device.
        let t = tempfile::tempdir().unwrap();
        let ns = t
            .path()
            .join("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1");
        let ctl = t
            .path()
            .join("devices/pci0000:00/0000:00:1c.0/0000:01:00.0/nvme/nvme0");
        std::fs::create_dir_all(&ns).unwrap();
        std::fs::create_dir_all(&ctl).unwrap();
        std::fs::write(ns.join("size"), "8\n").unwrap();
        std::fs::write(ns.join("nsid"), "1\n").unwrap();
        std::fs::create_dir_all(t.path().join("block")).unwrap();
        std::fs::create_dir_all(t.path().join("class/nvme")).unwrap();
        std::os::unix::fs::symlink(&ns, t.path().join("block/nvme0n1")).unwrap();
        std::os::unix::fs::symlink(&ctl, t.path().join("class/nvme/nvme0")).unwrap();
        let d = sysfs_disks(t.path(), "");
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].by_path, vec!["pci-0000:01:00.0-nvme-1".to_string()]);
    }

    #[test]
    fn scsi_serials_come_from_the_unit_serial_number_page() {
        let mut p = vec![0x00, 0x80, 0x00, 0x14];
        p.extend_from_slice(b"  PHYF812300AB480BGN");
        assert_eq!(vpd_serial(&p).as_deref(), Some("PHYF812300AB480BGN"));
        assert_eq!(vpd_serial(&[0, 0x80, 0, 0]), None, "empty");
        assert_eq!(vpd_serial(&[0, 0x83, 0, 1, b'x']), None, "another page");
        assert_eq!(
            vpd_serial(&[0, 0x80, 0, 9, b'a', b'b']).as_deref(),
            Some("ab"),
            "short"
        );
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 27 0:45 /@home /home rw master:2 unbindable - btrfs /dev/sda2 rw\n\
                    91 27 8:17 / /media/my\\040stick rw - vfat /dev/sdb1 rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, (254, 0));
        assert_eq!(m[1].source, "/dev/sda2");
        assert_eq!(m[1].dev, (0, 45));
        assert_eq!(m[2].mount_point, "/media/my stick");
    }

    /// This machine's root disk, through the real system layer: mounted and holding the
    /// system, so `usb write` refuses it even with --force. Needs `/` on a visible `/dev` block
    /// device (CI's VM has it: /dev/vda); elsewhere a loud skip, under CI a failure.
    #[test]
    fn the_root_disk_of_this_machine_is_refused() {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
        let Some(root) = mounts
            .iter()
            .find(|m| m.mount_point == "/" && m.source.starts_with("/dev/"))
        else {
            crate::ci::skip("/ is not on a /dev block device here; the root disk NOT checked");
            return;
        };
        let Ok(f) = device_facts(Path::new(&root.source)) else {
            crate::ci::skip(&format!(
                "{} (under /) is not visible here; the root disk NOT checked",
                root.source
            ));
            return;
        };
        assert!(f.is_block, "{f:?}");
        assert!(f.holds_system, "{f:?}");
        let force = crate::usb::Policy {
            force: true,
            allow_regular_file: false,
        };
        assert!(crate::usb::check(&f, 1, force).is_err());
    }

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stick.img");
        std::fs::write(&p, b"").unwrap();
        let f = device_facts(&p).unwrap();
        assert!(!f.is_block && f.size.is_none() && !f.holds_system);
    }

    #[test]
    fn this_machines_disks_are_listed_and_its_root_disk_is_never_a_target() {
        if !crate::testutil::have("lsblk", "util-linux") {
            return;
        }
        let disks = System.disks().unwrap();
        let Some(root) = disks.iter().find(|d| d.mounts.iter().any(|m| m == "/")) else {
            // A container or a network root: no disk to refuse, nothing proved.
            crate::ci::skip(&format!(
                "no disk lsblk lists here holds / ({} disks); the root disk NOT checked",
                disks.len()
            ));
            return;
        };
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
