//! VM shaping: a hardware profile and a node → the qemu machine that looks like that hardware
//! to the installer and to first boot (firmware, NIC model with the node's MAC, memory, and one
//! sparse disk per selector on the bus the selector implies). Pure: the caller creates the disk
//! files (with whatever content a test or a lab wants) and starts qemu.
//!
//! The disk a selector gets is derived from the selector by fixed rules that follow how Linux
//! reports real devices, not from what would make the selector match:
//! - `by_path` `pci-0000:BB:00.0-nvme-1` → an NVMe controller at that PCI address (q35: `BB`
//!   PCIe root ports, the last one holding the controller). qemu 7.2's `nvme` has no model
//!   property: the guest sees `QEMU NVMe Ctrl`, so an NVMe selector with a model cannot match.
//! - model starting with `PERC ` → a virtual disk of a PERC (`megasas-gen2`, the megaraid_sas
//!   driver of the H730/H330) presented as `scsi-hd` vendor `DELL`.
//! - `QEMU HARDDISK` → virtio-scsi, the Proxmox disk.
//! - any other model, or none → a SATA disk (`ide-hd`, 40-character ATA model) on the chipset's
//!   AHCI controller (q35 for both firmwares: SeaBIOS boots from AHCI, and the installer's
//!   initramfs carries `ahci`, not the `pc` machine's `ata_piix`). Without udev (the installer's initramfs) Linux shows
//!   only the first 16 characters of an ATA model (libata's SCSI INQUIRY product field), with
//!   udev (first boot's lsblk) all of it: a long model matches a data disk but never an install
//!   disk, on real SATA disks and on the shaped VM alike. SATA, not SCSI behind the PERC, also
//!   for SAS models: OVMF has no megaraid driver, so an install disk there could not boot (a
//!   real PERC's UEFI driver can), and the kernel shows a short model the same on both buses.
//!
//! [`Shape::mismatches`] then checks every selector with the installer's own matching
//! (`images::disk::Selector::matches`) against what the guest will see, so a selector that
//! would not match real hardware of that shape fails before any VM starts.

use std::path::Path;

use images::disk::{Disk, Selector};

use crate::inventory::model::{Firmware, Mac, Node, Profile};

const GB: u64 = 1_000_000_000;
/// Sizes when a selector gives no bound (decimal GB, as selectors count).
const DEFAULT_INSTALL_GB: u64 = 8;
const DEFAULT_DATA_GB: u64 = 4;
const DEFAULT_MEMORY_MB: u32 = 1024;
/// SCSI INQUIRY field widths (SPC-4 6.6.2): what a `scsi-hd` can present.
const SCSI_VENDOR_MAX: usize = 8;
const SCSI_PRODUCT_MAX: usize = 16;
/// ATA IDENTIFY model number: 40 characters.
const ATA_MODEL_MAX: usize = 40;
const QEMU_NVME_MODEL: &str = "QEMU NVMe Ctrl";

/// How a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// NVMe controller on PCI bus `pci_bus` (slot 0, function 0, namespace 1).
    Nvme { pci_bus: u8 },
    /// `scsi-hd` on the PERC (`megasas-gen2`).
    Perc,
    /// `scsi-hd` on virtio-scsi.
    VirtioScsi,
    /// `ide-hd` on the chipset's SATA controller (q35 AHCI, BIOS and UEFI), port `port`.
    Sata { port: u8 },
}

/// What a disk is in the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Install,
    Data(String),
}

/// One disk of the shaped machine: a sparse raw file of `size` bytes named `file` in the
/// caller's folder, and the device that presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapedDisk {
    pub role: Role,
    pub selector: Selector,
    pub file: String,
    pub size: u64,
    pub bus: Bus,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: String,
    pub rotational: bool,
    /// The disk as the installer lists it (sysfs, no udev) and as first boot does (lsblk).
    pub installer_view: Disk,
    pub firstboot_view: Disk,
}

/// The machine: everything but the disk contents and the network backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub firmware: Firmware,
    pub memory_mb: u32,
    pub mac: Mac,
    /// qemu NIC model: `e1000e` for the physical shapes (Intel 82574L, the e1000e driver, a
    /// UEFI SNP driver in qemu's option ROM), `virtio-net-pci` for the VM profiles.
    pub nic_model: String,
    pub disks: Vec<ShapedDisk>,
}

/// Shape of a node: its profile, its MAC, its memory.
pub fn shape_node(node: &Node) -> Shape {
    shape(&node.profile, node.mac, node.memory_mb).with_file_prefix(node.hostname.as_str())
}

pub fn shape(profile: &Profile, mac: Mac, memory_mb: Option<u32>) -> Shape {
    let physical = !(profile.name == "vm"
        || profile.name.starts_with("qemu")
        || profile.boot_nic.name.starts_with("eth"));
    let mut sata_port = 0u8;
    let mut disks = vec![shape_disk(
        Role::Install,
        &profile.install_disk,
        &mut sata_port,
    )];
    for d in &profile.data_disks {
        disks.push(shape_disk(
            Role::Data(d.name.clone()),
            &d.selector,
            &mut sata_port,
        ));
    }
    Shape {
        firmware: profile.firmware,
        memory_mb: memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        mac,
        nic_model: if physical { "e1000e" } else { "virtio-net-pci" }.into(),
        disks,
    }
}

fn size_for(sel: &Selector, default_gb: u64) -> u64 {
    let lo = sel.min_size_gb.unwrap_or(0);
    let hi = sel.max_size_gb.unwrap_or(u64::MAX);
    default_gb.clamp(lo.max(1), hi.max(lo.max(1))) * GB
}

/// `pci-0000:BB:00.0-nvme-1` → `BB` (1..=16), the only NVMe place the shape can build.
fn nvme_bus(by_path: &str) -> Option<u8> {
    let rest = by_path.strip_prefix("pci-0000:")?;
    let (bus, tail) = rest.split_once(':')?;
    if tail != "00.0-nvme-1" {
        return None;
    }
    u8::from_str_radix(bus, 16)
        .ok()
        .filter(|b| (1..=16).contains(b))
}

fn shape_disk(role: Role, sel: &Selector, sata_port: &mut u8) -> ShapedDisk {
    let tag = match &role {
        Role::Install => "install".to_string(),
        Role::Data(n) => format!("data-{n}"),
    };
    let serial = sel
        .serial
        .clone()
        .unwrap_or_else(|| format!("IRONSEED-{}", tag.to_ascii_uppercase()));
    let size = size_for(
        sel,
        if role == Role::Install {
            DEFAULT_INSTALL_GB
        } else {
            DEFAULT_DATA_GB
        },
    );
    let nvme = sel.by_path.as_deref().and_then(nvme_bus);
    let (bus, vendor, model): (Bus, Option<String>, Option<String>) = if let Some(b) = nvme {
        (Bus::Nvme { pci_bus: b }, None, None)
    } else {
        match sel.model.as_deref() {
            Some(m) if m.starts_with("PERC ") => (Bus::Perc, Some("DELL".into()), Some(m.into())),
            Some("QEMU HARDDISK") => (Bus::VirtioScsi, None, Some("QEMU HARDDISK".into())),
            Some(m) => {
                let p = *sata_port;
                *sata_port += 1;
                (
                    Bus::Sata { port: p },
                    None,
                    Some(m.chars().take(ATA_MODEL_MAX).collect()),
                )
            }
            None => {
                let p = *sata_port;
                *sata_port += 1;
                (Bus::Sata { port: p }, None, None)
            }
        }
    };
    // NVMe is solid state; a PERC virtual disk is what the selector says it is (RAID over SSDs
    // or spinning disks) and so is any other disk, rotational unless it says otherwise.
    let rotational = match bus {
        Bus::Nvme { .. } => false,
        _ => sel.rotational.unwrap_or(role != Role::Install),
    };
    let name = match bus {
        Bus::Nvme { .. } => "nvme0n1".to_string(),
        _ => "sdX".to_string(),
    };
    // What Linux reports. qemu's defaults: model `QEMU HARDDISK` for scsi-hd and ide-hd.
    let (installer_model, firstboot_model) = match (&bus, &model) {
        (Bus::Nvme { .. }, _) => (QEMU_NVME_MODEL.to_string(), QEMU_NVME_MODEL.to_string()),
        (Bus::Sata { .. }, Some(m)) => (
            m.chars().take(SCSI_PRODUCT_MAX).collect::<String>(),
            m.clone(),
        ),
        (_, Some(m)) => (m.clone(), m.clone()),
        (_, None) => ("QEMU HARDDISK".into(), "QEMU HARDDISK".into()),
    };
    let by_path = match bus {
        Bus::Nvme { pci_bus } => vec![format!("pci-0000:{pci_bus:02x}:00.0-nvme-1")],
        // Not modelled: a selector naming one fails the check instead of guessing.
        _ => Vec::new(),
    };
    let view = |model: String, by_path: Vec<String>| Disk {
        name: name.clone(),
        path: format!("/dev/{name}"),
        model: Some(model.trim().to_string()),
        serial: Some(serial.clone()),
        wwn: None,
        size,
        rotational,
        removable: false,
        read_only: false,
        mounts: Vec::new(),
        by_path,
        by_id: Vec::new(),
    };
    ShapedDisk {
        file: format!("{tag}.img"),
        selector: sel.clone(),
        installer_view: view(installer_model, installer_by_path(&by_path)),
        firstboot_view: view(firstboot_model, by_path),
        role,
        size,
        bus,
        model,
        vendor,
        serial,
        rotational,
    }
}

/// The installer (no udev) derives NVMe by-path names from sysfs itself (images::system); for
/// other buses it has none.
fn installer_by_path(by_path: &[String]) -> Vec<String> {
    by_path
        .iter()
        .filter(|p| p.contains("-nvme-"))
        .cloned()
        .collect()
}

/// One selector that does not pick its disk on the shaped machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub role: Role,
    pub seen_by: &'static str,
    pub matched: usize,
    pub disk: Disk,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.role {
            Role::Install => "install disk".to_string(),
            Role::Data(n) => format!("data disk {n}"),
        };
        write!(
            f,
            "{what}: the selector matches {} disk(s) as {} sees them, not exactly its own (it sees model {:?}, serial {:?}, {} GB, rotational {})",
            self.matched,
            self.seen_by,
            self.disk.model.as_deref().unwrap_or(""),
            self.disk.serial.as_deref().unwrap_or(""),
            self.disk.size / GB,
            self.disk.rotational
        )
    }
}

impl Shape {
    /// Every selector that would not pick exactly its own disk: the install selector as the
    /// installer sees the disks, data disk selectors as first boot does.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        let mut out = Vec::new();
        for d in &self.disks {
            let (seen_by, views): (&'static str, Vec<&Disk>) = match d.role {
                Role::Install => (
                    "the installer",
                    self.disks.iter().map(|x| &x.installer_view).collect(),
                ),
                Role::Data(_) => (
                    "first boot",
                    self.disks.iter().map(|x| &x.firstboot_view).collect(),
                ),
            };
            let own = match d.role {
                Role::Install => &d.installer_view,
                Role::Data(_) => &d.firstboot_view,
            };
            let matched = views.iter().filter(|v| d.selector.matches(v)).count();
            if matched != 1 || !d.selector.matches(own) {
                out.push(Mismatch {
                    role: d.role.clone(),
                    seen_by,
                    matched,
                    disk: own.clone(),
                });
            }
        }
        out
    }

    /// Disk files named `PREFIX-install.img`, `PREFIX-data-NAME.img`: several machines in one
    /// folder (a lab names them after their nodes).
    pub fn with_file_prefix(mut self, prefix: &str) -> Shape {
        for d in &mut self.disks {
            d.file = format!("{prefix}-{}", d.file);
        }
        self
    }

    /// The disk of `role`.
    pub fn disk(&self, role: &Role) -> Option<&ShapedDisk> {
        self.disks.iter().find(|d| &d.role == role)
    }

    /// qemu arguments for the machine, its NIC (on netdev `netdev`, boot index 1) and its disks
    /// (files in `dir`; the install disk boots second). Not included: `-machine`/firmware
    /// (pflash files are per VM), `-netdev`, serial and display.
    pub fn qemu_args(&self, dir: &Path, netdev: &str) -> Vec<String> {
        let mut a: Vec<String> = vec!["-m".into(), self.memory_mb.to_string()];
        let dev = |a: &mut Vec<String>, s: String| {
            a.push("-device".into());
            a.push(s);
        };
        dev(
            &mut a,
            format!(
                "{},netdev={netdev},mac={},bootindex=1",
                self.nic_model, self.mac
            ),
        );
        if self.disks.iter().any(|d| d.bus == Bus::Perc) {
            dev(&mut a, "megasas-gen2,id=perc".into());
        }
        if self.disks.iter().any(|d| d.bus == Bus::VirtioScsi) {
            dev(&mut a, "virtio-scsi-pci,id=vscsi".into());
        }
        // PCIe root ports for NVMe: Linux and OVMF number buses depth first in slot order, so
        // the n-th port (slots 0x10…) gets bus n.
        let ports = self
            .disks
            .iter()
            .filter_map(|d| match d.bus {
                Bus::Nvme { pci_bus } => Some(pci_bus),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        for i in 1..=ports {
            dev(
                &mut a,
                format!(
                    "pcie-root-port,id=rp{i},bus=pcie.0,chassis={i},addr=0x{:x}",
                    0x0f + u32::from(i)
                ),
            );
        }
        let mut scsi_lun = 0u32;
        for (i, d) in self.disks.iter().enumerate() {
            let id = format!("disk{i}");
            a.push("-drive".into());
            // Sparse files stay sparse: zeroes the guest writes (mkfs.xfs zeroes its log) and
            // discards become holes.
            // A `.qcow2` file is an overlay (a test boots one installed disk several times).
            let format = if d.file.ends_with(".qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            a.push(format!(
                "file={},format={format},if=none,id={id},cache=unsafe,discard=unmap,detect-zeroes=unmap",
                dir.join(&d.file).display()
            ));
            let boot = if d.role == Role::Install {
                ",bootindex=2"
            } else {
                ""
            };
            let mut props = String::new();
            if let Some(v) = &d.vendor {
                props.push_str(&format!(",vendor={}", qemu_str(v, SCSI_VENDOR_MAX)));
            }
            let rate = if d.rotational { "" } else { ",rotation_rate=1" };
            let s = match &d.bus {
                Bus::Nvme { pci_bus } => format!(
                    "nvme,bus=rp{pci_bus},addr=0x0,drive={id},serial={}{boot}",
                    qemu_str(&d.serial, 20)
                ),
                Bus::Perc | Bus::VirtioScsi => {
                    let ctl = if d.bus == Bus::Perc { "perc" } else { "vscsi" };
                    if let Some(m) = &d.model {
                        props.push_str(&format!(",product={}", qemu_str(m, SCSI_PRODUCT_MAX)));
                    }
                    let s = format!(
                        "scsi-hd,bus={ctl}.0,scsi-id={scsi_lun},drive={id},serial={}{props}{rate}{boot}",
                        qemu_str(&d.serial, 20)
                    );
                    scsi_lun += 1;
                    s
                }
                Bus::Sata { port } => {
                    let bus = format!("ide.{port}");
                    if let Some(m) = &d.model {
                        props.push_str(&format!(",model={}", qemu_str(m, ATA_MODEL_MAX)));
                    }
                    format!(
                        "ide-hd,bus={bus},drive={id},serial={}{props}{rate}{boot}",
                        qemu_str(&d.serial, 20)
                    )
                }
            };
            dev(&mut a, s);
        }
        a
    }
}

/// A qemu property value: commas doubled (qemu's escape), cut to the field's width.
fn qemu_str(s: &str, max: usize) -> String {
    s.chars().take(max).collect::<String>().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diagnostics;
    use crate::inventory::ProfileSet;

    fn builtin(name: &str) -> Profile {
        let mut d = Diagnostics::default();
        let set = ProfileSet::load(&[], &mut d);
        set.get(name).unwrap().clone()
    }

    fn mac() -> Mac {
        Mac::parse_nic("52:54:00:88:07:30").unwrap()
    }

    fn arg_with<'a>(args: &'a [String], prefix: &str) -> Vec<&'a str> {
        args.iter()
            .filter(|a| a.starts_with(prefix))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn r730_is_uefi_e1000e_perc_pool_and_an_ssd() {
        let s = shape(&builtin("r730"), mac(), Some(2048));
        assert_eq!(s.firmware, Firmware::Uefi);
        assert!(s.mismatches().is_empty(), "{:?}", s.mismatches());
        let a = s.qemu_args(Path::new("/lab"), "n0");
        assert_eq!(&a[..2], ["-m", "2048"]);
        assert_eq!(
            arg_with(&a, "e1000e"),
            ["e1000e,netdev=n0,mac=52:54:00:88:07:30,bootindex=1"]
        );
        assert_eq!(arg_with(&a, "megasas-gen2"), ["megasas-gen2,id=perc"]);
        let pool = s.disk(&Role::Data("media".into())).unwrap();
        assert_eq!(pool.size, 2000 * GB, "the smallest size the selector takes");
        assert!(pool.rotational);
        assert_eq!(
            arg_with(&a, "scsi-hd"),
            [
                "scsi-hd,bus=perc.0,scsi-id=0,drive=disk1,serial=IRONSEED-DATA-MEDIA,vendor=DELL,product=PERC H730 Mini"
            ]
        );
        let os = s.disk(&Role::Install).unwrap();
        assert!(!os.rotational && os.size <= 512 * GB);
        assert_eq!(
            arg_with(&a, "ide-hd"),
            ["ide-hd,bus=ide.0,drive=disk0,serial=IRONSEED-INSTALL,rotation_rate=1,bootindex=2"]
        );
        assert!(
            arg_with(&a, "file=/lab/data-media.img,format=raw")[0].contains("detect-zeroes=unmap")
        );
        let a = s
            .with_file_prefix("nfs1")
            .qemu_args(Path::new("/lab"), "n0");
        assert_eq!(arg_with(&a, "file=/lab/nfs1-install.img,").len(), 1);
    }

    #[test]
    fn optiplex_nvme_sits_where_its_by_path_says() {
        let s = shape(&builtin("optiplex"), mac(), None);
        assert!(s.mismatches().is_empty(), "{:?}", s.mismatches());
        let a = s.qemu_args(Path::new("/lab"), "n0");
        assert_eq!(
            arg_with(&a, "pcie-root-port"),
            [
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x10",
                "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x11"
            ]
        );
        assert_eq!(
            arg_with(&a, "nvme,"),
            ["nvme,bus=rp2,addr=0x0,drive=disk0,serial=IRONSEED-INSTALL,bootindex=2"]
        );
        assert_eq!(arg_with(&a, "e1000e").len(), 1);
        assert_eq!(&a[..2], ["-m", "1024"]);
    }

    #[test]
    fn the_vm_profile_gets_virtio_and_a_proxmox_disk() {
        let s = shape(&builtin("vm"), mac(), None);
        assert_eq!(s.firmware, Firmware::Bios);
        assert!(s.mismatches().is_empty(), "{:?}", s.mismatches());
        let a = s.qemu_args(Path::new("/lab"), "n0");
        assert_eq!(arg_with(&a, "virtio-net-pci").len(), 1);
        assert_eq!(arg_with(&a, "virtio-scsi-pci").len(), 1);
        assert_eq!(s.disks[0].size, 16 * GB);
    }

    /// The shipped R630 profile selects its boot SSD by `model: SSDSC2KB240G8`. That drive is a
    /// SATA Intel S4500 whose ATA model is `INTEL SSDSC2KB240G8`; the installer (no udev) sees
    /// its first 16 characters, `INTEL SSDSC2KB24`. Neither equals the selector, on the real
    /// machine or on the shaped one.
    #[test]
    fn a_selector_real_hardware_would_not_match_fails_on_the_shape_too() {
        let mut p = builtin("r630");
        // As the real disk reports itself.
        p.install_disk.model = Some("INTEL SSDSC2KB240G8".into());
        let s = shape(&p, mac(), None);
        let m = s.mismatches();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].role, Role::Install);
        assert_eq!(m[0].disk.model.as_deref(), Some("INTEL SSDSC2KB24"));
        assert!(m[0].to_string().contains("the installer"), "{}", m[0]);
        // The same long model is fine for a data disk: first boot's lsblk shows all of it.
        let os = s.disk(&Role::Install).unwrap();
        assert_eq!(
            os.firstboot_view.model.as_deref(),
            Some("INTEL SSDSC2KB240G8")
        );
    }

    /// NVMe by model: qemu's controller always says `QEMU NVMe Ctrl` (no model property), so a
    /// selector of an NVMe disk by model and PCI place cannot match; the shape says so rather
    /// than presenting the disk on another bus.
    #[test]
    fn an_nvme_model_the_emulation_cannot_present_is_reported() {
        let mut p = builtin("optiplex");
        p.install_disk.model = Some("Samsung SSD 970 EVO Plus 1TB".into());
        let s = shape(&p, mac(), None);
        let m = s.mismatches();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].disk.model.as_deref(), Some(QEMU_NVME_MODEL));
    }

    #[test]
    fn a_perc_virtual_disk_keeps_what_the_selector_says_about_rotation() {
        let mut p = builtin("r730");
        p.data_disks[0].selector.rotational = Some(false);
        let s = shape(&p, mac(), None);
        let pool = s.disk(&Role::Data("media".into())).unwrap();
        assert!(!pool.rotational);
        let a = s.qemu_args(Path::new("/lab"), "n0");
        assert!(arg_with(&a, "scsi-hd")[0].ends_with(",rotation_rate=1"));
    }

    /// A size selector and an SSD selector that both fit one disk: the install selector then
    /// matches two disks of the shape, as it would on the machine.
    #[test]
    fn an_ambiguous_install_selector_is_reported() {
        let mut p = builtin("r730");
        p.data_disks[0].selector = Selector {
            min_size_gb: Some(100),
            max_size_gb: Some(200),
            rotational: Some(false),
            ..Default::default()
        };
        let s = shape(&p, mac(), None);
        let m = s.mismatches();
        assert!(
            m.iter().any(|x| x.role == Role::Install && x.matched == 2),
            "{m:?}"
        );
    }

    #[test]
    fn commas_in_values_are_escaped_for_qemu() {
        assert_eq!(qemu_str("a,b", 16), "a,,b");
        assert_eq!(qemu_str("PERC H730 Mini and more", 16), "PERC H730 Mini a");
    }
}
