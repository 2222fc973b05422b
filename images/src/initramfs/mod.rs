//! The installer environment that `pxe` boots: Debian's kernel and an initramfs holding
//! busybox (static), the drivers of the supported hardware, a small `/init` that takes an
//! address by DHCP, and the static `installer` binary. Published as
//! `<artifacts>/installer/{vmlinuz,initrd.img}`, which the rendered iPXE install scripts boot.

pub mod cpio;
pub mod firmware;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::Command;

use cpio::Archive;

/// Drivers for the rack: qemu/Proxmox (virtio, e1000), OptiPlex (e1000e, some r8169, ahci,
/// nvme), Dell R630/R730 (igb, ixgbe, tg3, bnx2x NICs, i40e and bnxt_en add-in cards; PERC
/// megaraid_sas, HBA330 mpt3sas; ahci), and USB sticks for the offline installer (xhci/ehci host
/// controllers, usb-storage and UAS). Their dependencies come from the kernel's modules.dep;
/// `realtek` is r8169's PHY driver, a soft dependency modules.dep does not list (without it
/// some RTL8111 revisions run on the generic PHY driver and never get a link). Which hardware
/// each serves: docs/hardware.md.
pub const DRIVERS: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "tg3",
    "bnx2x",
    "i40e",
    "bnxt_en",
    "realtek",
    "r8169",
    "ahci",
    "nvme",
    "megaraid_sas",
    "mpt3sas",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
];

const INIT: &str = include_str!("../../initramfs/init.sh");
const UDHCPC_SCRIPT: &str = include_str!("../../initramfs/udhcpc.script");

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("{0} failed: {1}")]
    Tool(String, String),
    #[error("the kernel has no module (nor built-in driver) named: {0}")]
    UnknownModules(String),
    #[error(
        "{0} is dynamically linked and cannot run in the initramfs; build it static:\n  \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p images --bin installer\n\
         and pass --installer-bin target/x86_64-unknown-linux-gnu/release/installer"
    )]
    Dynamic(String),
    #[error("{0}: compressed kernel modules are not supported (busybox insmod loads plain .ko)")]
    CompressedModule(String),
    #[error("the kernel {0} cannot unpack a zstd initramfs (CONFIG_RD_ZSTD is not y)")]
    NoZstd(String),
    #[error("unexpected kernel package: {0}")]
    Kernel(String),
    #[error("firmware: {0}")]
    Firmware(String),
}

fn io_ctx(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> InitramfsError {
    let ctx = ctx.into();
    move |e| InitramfsError::Io(ctx, e)
}

fn norm(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.trim_end_matches(".ko").replace('-', "_")
}

/// Loaded when the kernel has them as modules, skipped when built in (or absent): efivarfs, so
/// an inspection boot can read the Secure Boot variable (a module or built in, by kernel config).
pub const OPTIONAL_DRIVERS: &[&str] = &["efivarfs"];

/// The `optional` drivers `dep` (`modules.dep`) has as loadable modules.
pub fn present<'a>(dep: &str, optional: &[&'a str]) -> Vec<&'a str> {
    optional
        .iter()
        .filter(|o| {
            dep.lines()
                .any(|l| l.split_once(':').is_some_and(|(p, _)| norm(p) == norm(o)))
        })
        .copied()
        .collect()
}

/// The modules to load, dependencies first, for `wanted` driver names. `dep` is the kernel's
/// `modules.dep` (`path: dep-path …`), `builtin` its `modules.builtin` (drivers compiled in:
/// nothing to load).
pub fn resolve(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, InitramfsError> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let ds = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(norm(path), (path.trim().to_string(), ds));
    }
    let builtin: BTreeSet<String> = builtin.lines().map(norm).collect();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut unknown = Vec::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        if let Some((path, ds)) = deps.get(name) {
            for d in ds {
                visit(&norm(d), deps, seen, out);
            }
            out.push(path.clone());
        }
    }
    for w in wanted {
        let n = norm(w);
        if deps.contains_key(&n) {
            visit(&n, &deps, &mut seen, &mut out);
        } else if !builtin.contains(&n) {
            unknown.push(n);
        }
    }
    if !unknown.is_empty() {
        return Err(InitramfsError::UnknownModules(unknown.join(", ")));
    }
    Ok(out)
}

/// True for an ELF executable without a program interpreter (PT_INTERP): it runs with no
/// dynamic loader, as it must in the initramfs.
pub fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false; // not a 64-bit ELF
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

#[derive(Debug, Clone)]
pub struct InstallerOptions {
    pub artifacts: PathBuf,
    pub work: PathBuf,
    /// A `linux-image-*.deb`; default: Debian's current `linux-image-amd64` via apt-get download.
    pub kernel_deb: Option<PathBuf>,
    pub installer_bin: PathBuf,
    pub busybox: PathBuf,
    pub drivers: Vec<String>,
    /// Pack the drivers' firmware from Debian's non-free-firmware ([`firmware`]); `false` is
    /// `--no-nonfree`.
    pub nonfree: bool,
    /// Where the firmware packages come from: the Debian mirror and suite (the kernel's).
    pub mirror: String,
    pub suite: String,
    /// Firmware packages already at hand (`.deb`), instead of downloading
    /// [`firmware::FIRMWARE_PACKAGES`].
    pub firmware_debs: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct InstallerBuilt {
    pub kernel_version: String,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub initrd_size: u64,
    pub modules: Vec<String>,
    /// Firmware files packed under `lib/firmware`.
    pub firmware: Vec<String>,
    /// (module, file) declared by a packed module that no firmware package ships.
    pub firmware_missing: Vec<(String, String)>,
}

fn run(cmd: &mut Command) -> Result<String, InitramfsError> {
    let shown = format!("{:?}", cmd);
    let out = cmd.output().map_err(io_ctx(format!(
        "starting {}",
        cmd.get_program().to_string_lossy()
    )))?;
    if !out.status.success() {
        return Err(InitramfsError::Tool(
            shown,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package name of Debian's current default kernel, from apt's lists.
fn default_kernel_package() -> Result<String, InitramfsError> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| {
            InitramfsError::Kernel(
                "apt-cache names no linux-image-*-amd64 (apt-get update?)".into(),
            )
        })
}

pub fn build_installer(
    o: &InstallerOptions,
    log: &mut dyn FnMut(&str),
) -> Result<InstallerBuilt, InitramfsError> {
    let installer = fs::read(&o.installer_bin)
        .map_err(io_ctx(format!("reading {}", o.installer_bin.display())))?;
    if !is_static_elf(&installer) {
        return Err(InitramfsError::Dynamic(
            o.installer_bin.display().to_string(),
        ));
    }
    let busybox =
        fs::read(&o.busybox).map_err(io_ctx(format!("reading {}", o.busybox.display())))?;
    if !is_static_elf(&busybox) {
        return Err(InitramfsError::Dynamic(format!(
            "{} (install busybox-static)",
            o.busybox.display()
        )));
    }
    if o.work.exists() {
        fs::remove_dir_all(&o.work).map_err(io_ctx(format!("clearing {}", o.work.display())))?;
    }
    fs::create_dir_all(&o.work).map_err(io_ctx(format!("creating {}", o.work.display())))?;
    let deb = match &o.kernel_deb {
        Some(d) => d.clone(),
        None => {
            let pkg = default_kernel_package()?;
            log(&format!("downloading {pkg} from Debian's archive"));
            run(Command::new("apt-get")
                .args(["download", "-q", &pkg])
                .current_dir(&o.work))?;
            fs::read_dir(&o.work)
                .map_err(io_ctx("listing the download"))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| {
                    InitramfsError::Kernel(format!("apt-get download {pkg} left no .deb"))
                })?
        }
    };
    let kx = o.work.join("kernel");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kx))?;
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| kx.join(d))
        .find(|d| d.is_dir())
        .ok_or_else(|| InitramfsError::Kernel(format!("{} has no lib/modules", deb.display())))?;
    let kver = fs::read_dir(&moddir)
        .map_err(io_ctx("reading lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| InitramfsError::Kernel("empty lib/modules".into()))?;
    let config = fs::read_to_string(kx.join(format!("boot/config-{kver}"))).unwrap_or_default();
    if !config.lines().any(|l| l == "CONFIG_RD_ZSTD=y") {
        return Err(InitramfsError::NoZstd(kver));
    }
    // modules.dep is made by depmod in the package's postinst, so it is not in the .deb.
    run(Command::new("depmod").arg("-b").arg(&kx).arg(&kver))?;
    let kdir = moddir.join(&kver);
    let read = |n: &str| fs::read_to_string(kdir.join(n)).unwrap_or_default();
    let dep = read("modules.dep");
    let mut wanted: Vec<&str> = o.drivers.iter().map(String::as_str).collect();
    wanted.extend(present(&dep, OPTIONAL_DRIVERS));
    let modules = resolve(&dep, &read("modules.builtin"), &wanted)?;

    let mut a = Archive::default();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "mnt",
        "proc",
        "run",
        "sys",
        "tmp",
    ] {
        a.dir(d);
    }
    a.console();
    a.file("init", 0o755, INIT.as_bytes().to_vec());
    a.file(
        "etc/udhcpc.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    );
    a.file("bin/busybox", 0o755, busybox);
    let applets = run(Command::new(&o.busybox).arg("--list"))?;
    for ap in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // `busybox --list` names busybox itself: a symlink there would replace the binary.
        if ap != "busybox" && ap != "installer" {
            a.symlink(&format!("bin/{ap}"), "busybox");
        }
    }
    a.file("bin/installer", 0o755, installer);
    let mut order = String::new();
    let mut names = Vec::new();
    for m in &modules {
        if !m.ends_with(".ko") {
            return Err(InitramfsError::CompressedModule(m.clone()));
        }
        let base = m.rsplit('/').next().unwrap_or(m).to_string();
        let data = fs::read(kdir.join(m)).map_err(io_ctx(format!("reading {m}")))?;
        a.file(&format!("lib/modules/{base}"), 0o644, data);
        order.push_str(&base);
        order.push('\n');
        names.push(base.trim_end_matches(".ko").to_string());
    }
    a.file("etc/modules.order", 0o644, order.into_bytes());
    let (fw_names, fw_missing) = if o.nonfree {
        let mut declared = BTreeMap::new();
        for m in &modules {
            let names = firmware::declared(&kdir.join(m))?;
            if !names.is_empty() {
                declared.insert(norm(m), names);
            }
        }
        let debs = if o.firmware_debs.is_empty() {
            firmware::download(
                &o.work.join("apt"),
                &o.mirror,
                &o.suite,
                firmware::FIRMWARE_PACKAGES,
                log,
            )?
        } else {
            o.firmware_debs.clone()
        };
        let fx = o.work.join("firmware");
        for d in &debs {
            run(Command::new("dpkg-deb").arg("-x").arg(d).arg(&fx))?;
        }
        let picked = firmware::pick(&declared, &firmware::shipped_files(&fx));
        let mut dirs = BTreeSet::new();
        for name in picked.files.keys() {
            let mut at = String::from("lib/firmware");
            dirs.insert(at.clone());
            let parts: Vec<&str> = name.split('/').collect();
            for p in &parts[..parts.len() - 1] {
                at = format!("{at}/{p}");
                dirs.insert(at.clone());
            }
        }
        // BTreeSet order puts every parent before its children, as the archive needs.
        for d in &dirs {
            a.dir(d);
        }
        for (name, f) in &picked.files {
            let data = fs::read(f).map_err(io_ctx(format!("reading firmware {name}")))?;
            a.file(&format!("lib/firmware/{name}"), 0o644, data);
        }
        for (m, n) in &picked.missing {
            log(&format!(
                "firmware: {m} declares {n}, which no package of {} ships (not packed)",
                firmware::FIRMWARE_PACKAGES.join(", ")
            ));
        }
        (picked.files.into_keys().collect(), picked.missing)
    } else {
        (Vec::new(), Vec::new())
    };
    log(&format!(
        "initramfs: {} entries, {} modules, {} firmware files",
        a.len(),
        modules.len(),
        fw_names.len()
    ));
    let cpio = a.encode();
    // The kernel's zstd unpacker handles the default window of level 3 (initramfs-tools'
    // bookworm default is zstd as well).
    let initrd = zstd::encode_all(&cpio[..], 3).map_err(io_ctx("compressing the initramfs"))?;
    let vmlinuz = fs::read(kx.join(format!("boot/vmlinuz-{kver}")))
        .map_err(io_ctx(format!("reading boot/vmlinuz-{kver}")))?;

    let dir = o.artifacts.join("installer");
    fs::create_dir_all(&dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
    let put = |name: &str, data: &[u8]| -> Result<PathBuf, InitramfsError> {
        let p = dir.join(name);
        crate::fsutil::write_atomic(&p, data, 0o644)
            .map_err(io_ctx(format!("writing {}", p.display())))?;
        Ok(p)
    };
    let vm = put("vmlinuz", &vmlinuz)?;
    let ir = put("initrd.img", &initrd)?;
    put("kernel-version", format!("{kver}\n").as_bytes())?;
    let _ = fs::remove_dir_all(&o.work);
    Ok(InstallerBuilt {
        kernel_version: kver,
        vmlinuz: vm,
        initrd: ir,
        initrd_size: initrd.len() as u64,
        modules: names,
        firmware: fw_names,
        firmware_missing: fw_missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/megaraid/megaraid_sas.ko:
";

    #[test]
    fn dependencies_come_first_once_and_builtins_need_nothing() {
        let m = resolve(
            DEP,
            "kernel/drivers/ata/ahci.ko\n",
            &["virtio-net", "virtio_pci", "ahci"],
        )
        .unwrap();
        let pos = |n: &str| {
            m.iter()
                .position(|p| p.ends_with(&format!("/{n}.ko")))
                .unwrap()
        };
        assert_eq!(m.len(), 7, "{m:?}");
        assert!(pos("virtio_ring") < pos("virtio"));
        assert!(pos("failover") < pos("net_failover"));
        assert!(pos("net_failover") < pos("virtio_net"));
        assert!(
            pos("virtio") < pos("virtio_pci") && pos("virtio_pci_modern_dev") < pos("virtio_pci")
        );
    }

    #[test]
    fn optional_drivers_are_taken_only_when_they_are_modules() {
        let dep = "kernel/fs/efivarfs/efivarfs.ko:\nkernel/drivers/nvme/host/nvme.ko: x.ko\n";
        assert_eq!(present(dep, &["efivarfs", "zram"]), ["efivarfs"]);
        assert!(present("kernel/drivers/nvme/host/nvme.ko:\n", OPTIONAL_DRIVERS).is_empty());
    }

    #[test]
    fn an_unknown_driver_is_named() {
        let e = resolve(DEP, "", &["megaraid_sas", "no_such_nic", "bnx9"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the kernel has no module (nor built-in driver) named: no_such_nic, bnx9"
        );
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me), "the test binary is dynamically linked");
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        if let Ok(bb) = fs::read("/bin/busybox")
            && Command::new("/bin/busybox").arg("true").status().is_ok()
        {
            // Debian's busybox-static (the package list installs it for the DHCP tests).
            let dynamic = Command::new("ldd")
                .arg("/bin/busybox")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("=>"));
            assert_eq!(is_static_elf(&bb), !dynamic);
        }
    }
}
