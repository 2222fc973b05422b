//! Inspection (`ironseed.mode=inspect`): the installer environment reports what the machine is
//! instead of installing. Every fact comes from a root folder (`/` on the node, a fixture tree
//! in tests) through sysfs and procfs, and the disks through [`crate::system::sysfs_disks`] —
//! exactly the disks and attributes the installer's selectors will see at install time. Disks
//! are read, never written: [`probe::open_read_only`] is the only open.

pub mod probe;

use std::path::{Path, PathBuf};

use crate::bundle::facts::{Cpu, DiskFacts, Dmi, FACTS_MAX, FACTS_VERSION, Facts, Nic, PciDevice};
use crate::bundle::{Firmware, Mac, printable};

/// Longest string kept from sysfs/procfs/the kernel log: firmware and device strings are short;
/// a longer one is garbage or hostile, and the facts document has a size limit
/// ([`crate::bundle::facts::FACTS_MAX`]).
const STR_MAX: usize = 256;
/// At most this many of each list, so a pathological machine still fits `FACTS_MAX`.
const DISKS_MAX: usize = 256;
const NICS_MAX: usize = 128;
const PCI_MAX: usize = 256;
const FIRMWARE_MAX: usize = 64;
/// Links kept per disk and folder, and read per folder.
const LINKS_MAX: usize = 16;
const LINKS_READ_MAX: usize = 16384;
/// Most of the kernel log read from /dev/kmsg.
pub const KMSG_MAX: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{0}")]
    Http(#[from] crate::http::HttpError),
    #[error("{url}: HTTP {status} for the facts")]
    Rejected { url: String, status: u16 },
}

/// Trimmed, without control characters (garbage in a device string, and six bytes each once
/// JSON-escaped), at most [`STR_MAX`] bytes.
fn clip(s: &str) -> String {
    printable(s.trim(), STR_MAX)
}

fn read(p: &Path) -> Option<String> {
    let s = std::fs::read(p).ok()?;
    let s = clip(&String::from_utf8_lossy(&s[..s.len().min(64 << 10)]));
    (!s.is_empty()).then_some(s)
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()
        .map(|n| clip(&n.to_string_lossy()))
}

fn sorted_dir(p: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}

/// All facts of the machine under `root`. `kernel_log` is the kernel's log (for missing
/// firmware); `boot_mac` the NIC iPXE booted from.
pub fn collect(root: &Path, kernel_log: &str, boot_mac: Option<Mac>) -> Facts {
    let sys = root.join("sys");
    let firmware = Some(if sys.join("firmware/efi").exists() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    });
    let mut facts = Facts {
        version: FACTS_VERSION,
        boot_mac,
        dmi: dmi(&sys),
        secure_boot: if firmware == Some(Firmware::Uefi) {
            secure_boot(&sys).or_else(|| secure_boot_from_log(kernel_log))
        } else {
            None
        },
        firmware,
        cpu: cpu(&std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default()),
        memory_bytes: memory(
            &std::fs::read_to_string(root.join("proc/meminfo")).unwrap_or_default(),
        ),
        nics: nics(&sys),
        disks: disks(root),
        pci: pci(&sys),
        missing_firmware: missing_firmware(kernel_log),
    };
    fit(&mut facts);
    facts
}

/// Drop entries from the end of the longest list until the document fits the size the
/// appliance accepts: every list and string has a cap, but all of them at once would not fit.
/// A machine that big still reports most of itself rather than being refused.
pub fn fit(f: &mut Facts) {
    let size = |f: &Facts| serde_json::to_vec(f).map_or(usize::MAX, |v| v.len());
    let mut n = size(f);
    while n > FACTS_MAX {
        let (d, i, p) = (f.disks.len(), f.nics.len(), f.pci.len());
        // Each pass drops about as many bytes as the document is over, at least one entry.
        let cut = |len: usize| len.saturating_sub(((n - FACTS_MAX) * len / n).max(1));
        if d >= i && d >= p && d > 0 {
            f.disks.truncate(cut(d));
        } else if i >= p && i > 0 {
            f.nics.truncate(cut(i));
        } else if p > 0 {
            f.pci.truncate(cut(p));
        } else {
            f.missing_firmware.clear();
            f.dmi = Dmi::default();
            break;
        }
        n = size(f);
    }
}

pub fn dmi(sys: &Path) -> Dmi {
    let d = sys.join("class/dmi/id");
    let f = |n: &str| read(&d.join(n));
    Dmi {
        sys_vendor: f("sys_vendor"),
        product_name: f("product_name"),
        product_serial: f("product_serial"),
        product_uuid: f("product_uuid"),
        bios_vendor: f("bios_vendor"),
        bios_version: f("bios_version"),
        bios_date: f("bios_date"),
        board_vendor: f("board_vendor"),
        board_name: f("board_name"),
    }
}

/// The `SecureBoot` EFI variable (global GUID): 4 attribute bytes, then 1 when enforcing.
pub fn secure_boot(sys: &Path) -> Option<bool> {
    let v = std::fs::read(
        sys.join("firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
    )
    .ok()?;
    (v.len() == 5).then(|| v[4] == 1)
}

/// Debian's kernels say `secureboot: Secure boot enabled|disabled` at boot: the answer when
/// efivarfs could not be mounted.
pub fn secure_boot_from_log(log: &str) -> Option<bool> {
    log.lines().find_map(|l| {
        let (_, r) = l.split_once("Secure boot ")?;
        match r.trim() {
            "enabled" => Some(true),
            "disabled" => Some(false),
            _ => None,
        }
    })
}

/// Model (the first `model name`) and logical CPUs (`processor` lines) from /proc/cpuinfo.
/// arm64 kernels have no `model name`; `Hardware` or `CPU part` is what there is.
pub fn cpu(cpuinfo: &str) -> Cpu {
    let mut c = Cpu::default();
    for l in cpuinfo.lines() {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => c.count += 1,
            "model name" | "Hardware" if c.model.is_none() => {
                c.model = Some(clip(v)).filter(|s| !s.is_empty())
            }
            _ => {}
        }
    }
    c
}

/// `MemTotal` from /proc/meminfo, in bytes (the file says kB, meaning KiB).
pub fn memory(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        .saturating_mul(1024)
}

/// NICs with a device behind them: `lo`, bridges, bonds, veths and tunnels have no `device`.
pub fn nics(sys: &Path) -> Vec<Nic> {
    let mut out = Vec::new();
    for (name, dir) in sorted_dir(&sys.join("class/net")) {
        if name == "lo" || !dir.join("device").exists() {
            continue;
        }
        let Some(mac) = read(&dir.join("address")).and_then(|a| a.parse::<Mac>().ok()) else {
            continue;
        };
        let dev = dir.join("device");
        // A virtio NIC's device is the virtio device (vendor 0x1af4, device = the virtio type);
        // the PCI function, the one with a `class`, is its parent.
        let pci_dev = if dev.join("class").exists() {
            dev.clone()
        } else {
            dev.join("..")
        };
        let pci_dev = pci_dev.join("class").exists().then_some(pci_dev);
        let id = |f: &str| {
            read(&pci_dev.as_ref()?.join(f)).map(|v| v.trim_start_matches("0x").to_string())
        };
        let pci_id = match (id("vendor"), id("device")) {
            (Some(v), Some(d)) => Some(format!("{v}:{d}")),
            _ => None,
        };
        let carrier = read(&dir.join("carrier")).as_deref() == Some("1");
        out.push(Nic {
            name: clip(&name),
            mac,
            driver: link_name(&dev.join("driver")),
            pci_id,
            carrier,
            // Reading `speed` with the link down is EINVAL; some drivers say -1 or 65535.
            speed_mbps: carrier
                .then(|| read(&dir.join("speed"))?.parse::<i64>().ok())
                .flatten()
                .filter(|s| *s > 0 && *s < 65535)
                .map(|s| s as u32),
        });
        if out.len() == NICS_MAX {
            break;
        }
    }
    out
}

/// PCI devices of interest by class: display (0x03), RAID/SAS/SCSI storage (0x0104, 0x0107,
/// 0x0100), Ethernet (0x0200).
pub fn pci(sys: &Path) -> Vec<PciDevice> {
    let mut out = Vec::new();
    for (addr, dir) in sorted_dir(&sys.join("bus/pci/devices")) {
        let Some(class) = read(&dir.join("class")) else {
            continue;
        };
        let c = u32::from_str_radix(class.trim_start_matches("0x"), 16).unwrap_or(0);
        let wanted = c >> 16 == 0x03 || [0x0104, 0x0107, 0x0100, 0x0200].contains(&(c >> 8));
        if !wanted {
            continue;
        }
        let id = |f: &str| read(&dir.join(f)).map(|v| v.trim_start_matches("0x").to_string());
        out.push(PciDevice {
            address: clip(&addr),
            class: format!("0x{c:06x}"),
            id: format!(
                "{}:{}",
                id("vendor").unwrap_or_default(),
                id("device").unwrap_or_default()
            ),
            driver: link_name(&dir.join("driver")),
        });
        if out.len() == PCI_MAX {
            break;
        }
    }
    out
}

/// Firmware files the kernel could not load, from its log: `firmware: failed to load X (-2)`
/// (the firmware loader) and `Direct firmware load for X failed with error -2`. Once each, in
/// order of first appearance.
pub fn missing_firmware(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in log.lines() {
        let name = if let Some((_, r)) = l.split_once("firmware: failed to load ") {
            r.split_whitespace().next()
        } else if let Some((_, r)) = l.split_once("Direct firmware load for ") {
            r.split_once(" failed").map(|(n, _)| n.trim())
        } else {
            None
        };
        // A firmware path is printable ASCII; anything else is not one (and must not reach a
        // terminal later).
        let Some(name) = name.filter(|n| {
            !n.is_empty() && n.len() <= STR_MAX && n.bytes().all(|b| b.is_ascii_graphic())
        }) else {
            continue;
        };
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
            if out.len() == FIRMWARE_MAX {
                break;
            }
        }
    }
    out
}

/// How the disk hangs off the machine, from its sysfs device path.
pub fn transport(devpath: &Path) -> Option<String> {
    let comps: Vec<String> = devpath
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let numbered = |c: &str, p: &str| {
        c.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if comps.iter().any(|c| numbered(c, "usb")) {
        return Some("usb".into());
    }
    if comps.iter().any(|c| c == "nvme" || c == "nvme-subsystem") {
        return Some("nvme".into());
    }
    if comps.iter().any(|c| numbered(c, "ata")) {
        return Some("sata".into());
    }
    if comps
        .iter()
        .any(|c| c.starts_with("end_device-") || c.starts_with("expander-"))
    {
        return Some("sas".into());
    }
    let host = comps.iter().position(|c| numbered(c, "host"));
    if comps.iter().any(|c| numbered(c, "virtio")) {
        // virtio-blk, or SCSI behind virtio-scsi.
        return Some(if host.is_some() { "scsi" } else { "virtio" }.into());
    }
    let host = host?;
    // A SCSI host: a SAS HBA or RAID controller (megaraid_sas, mpt3sas) by its PCI driver.
    let pci_dev: PathBuf = comps[..host].iter().collect();
    let driver = link_name(&pci_dev.join("driver")).unwrap_or_default();
    Some(
        if driver.contains("sas") {
            "sas"
        } else {
            "scsi"
        }
        .into(),
    )
}

/// Every `/dev/disk/by-{id,path}` link under `root` as (folder, name, resolved device). In the
/// installer's initramfs there is no udev, so there are none, exactly as in the installer's own
/// disk list.
fn all_links(root: &Path) -> Vec<(&'static str, String, PathBuf)> {
    let mut out = Vec::new();
    for kind in ["by-id", "by-path"] {
        for (n, p) in sorted_dir(&root.join("dev/disk").join(kind))
            .into_iter()
            .take(LINKS_READ_MAX)
        {
            if let Ok(t) = std::fs::canonicalize(&p) {
                out.push((kind, clip(&n), t));
            }
        }
    }
    out
}

fn links_to(all: &[(&str, String, PathBuf)], kind: &str, dev: &Option<PathBuf>) -> Vec<String> {
    all.iter()
        .filter(|(k, _, t)| *k == kind && dev.as_ref() == Some(t))
        .map(|(_, n, _)| n.clone())
        .take(LINKS_MAX)
        .collect()
}

/// Disks as the installer sees them (see [`crate::system::sysfs_disks`]), with their transport
/// and what is on them. Each is opened read-only to probe its first and last MiB (and each
/// partition's).
pub fn disks(root: &Path) -> Vec<DiskFacts> {
    let sys = root.join("sys");
    let links = all_links(root);
    let mut out = Vec::new();
    for d in crate::system::sysfs_disks(&sys, "")
        .into_iter()
        .take(DISKS_MAX)
    {
        let block = sys.join("block").join(&d.name);
        let devpath = std::fs::canonicalize(&block).unwrap_or(block.clone());
        let parts: Vec<probe::Part> = sorted_dir(&block)
            .into_iter()
            .filter(|(n, p)| n.starts_with(&d.name) && p.join("partition").exists())
            .filter_map(|(_, p)| {
                Some(probe::Part {
                    start: read(&p.join("start"))?.parse().ok()?,
                    sectors: read(&p.join("size"))?.parse().ok()?,
                })
            })
            .collect();
        let dev = std::fs::canonicalize(root.join("dev").join(&d.name)).ok();
        let (partition_table, signatures) =
            match probe::open_read_only(&root.join("dev").join(&d.name)) {
                Ok(f) => probe::probe(&f, &parts),
                Err(_) => (None, vec!["unreadable".into()]),
            };
        out.push(DiskFacts {
            transport: transport(&devpath),
            by_id: links_to(&links, "by-id", &dev),
            by_path: links_to(&links, "by-path", &dev),
            name: clip(&d.name),
            model: d.model.as_deref().map(clip),
            serial: d.serial.as_deref().map(clip),
            wwn: d.wwn.as_deref().map(clip),
            size: d.size,
            rotational: d.rotational,
            removable: d.removable,
            partition_table,
            signatures,
        });
    }
    out
}

/// The kernel log so far from /dev/kmsg, read non-blocking (EAGAIN is the end), at most
/// [`KMSG_MAX`] bytes. Records are `prio,seq,time,flags;message`; only the messages are kept.
pub fn read_kmsg() -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return String::new();
    };
    let mut out = String::new();
    // One read returns one record, and fails with EINVAL if the buffer is smaller than the
    // record; records are at most 8 KiB (the kernel's CONSOLE_EXT_LOG_MAX).
    let mut buf = vec![0u8; 16 << 10];
    while out.len() < KMSG_MAX {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                // Continuation lines of the dictionary start with a space.
                if let Some(first) = rec.lines().next() {
                    out.push_str(first.split_once(';').map_or(first, |(_, m)| m));
                    out.push('\n');
                }
            }
            // EPIPE: a record was overwritten while reading; the next read goes on.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Collect this machine's facts and POST them to `facts_url`.
pub fn run(
    facts_url: &str,
    mac: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<Facts, InspectError> {
    post(Path::new("/"), &read_kmsg(), facts_url, mac, log)
}

/// Collect the facts of the machine under `root` and POST them to `facts_url`.
pub fn post(
    root: &Path,
    kernel_log: &str,
    facts_url: &str,
    mac: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<Facts, InspectError> {
    let boot_mac = mac.and_then(|m| m.parse().ok());
    let facts = collect(root, kernel_log, boot_mac);
    log(&format!(
        "ironseed inspect: {} {}, {} disks, {} NICs, {} firmware files missing",
        printable(facts.dmi.sys_vendor.as_deref().unwrap_or("?"), 64),
        printable(facts.dmi.product_name.as_deref().unwrap_or("?"), 64),
        facts.disks.len(),
        facts.nics.len(),
        facts.missing_firmware.len()
    ));
    let body = serde_json::to_value(&facts).expect("facts serialize");
    // The appliance may be restarting: a few tries on network errors. An HTTP error status is
    // an answer (a wrong secret, a disarmed machine) and is not retried.
    let mut tries = 0;
    let status = loop {
        match crate::http::post_json(facts_url, &body) {
            Ok(s) => break s,
            Err(e) if tries < POST_TRIES => {
                log(&format!("ironseed inspect: {e}; retrying"));
                tries += 1;
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
            Err(e) => return Err(e.into()),
        }
    };
    if !(200..300).contains(&status) {
        return Err(InspectError::Rejected {
            url: facts_url.into(),
            status,
        });
    }
    log("ironseed inspect: facts posted");
    Ok(facts)
}

/// Retries of the facts POST after a network error.
const POST_TRIES: u32 = 5;

/// The reboot(2) command that ends an inspection boot.
pub fn reboot_mode(after: crate::plan::After) -> nix::sys::reboot::RebootMode {
    use nix::sys::reboot::RebootMode;
    match after {
        crate::plan::After::Poweroff => RebootMode::RB_POWER_OFF,
        crate::plan::After::Reboot => RebootMode::RB_AUTOBOOT,
    }
}

#[cfg(test)]
mod tests;
