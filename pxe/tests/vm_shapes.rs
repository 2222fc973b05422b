//! End to end, issue 15 item 4: VMs shaped like the rack's hardware (`builder::vmshape`), each
//! installed through the real `pxe serve` with the built-in profile as shipped
//! (pxe/tests/fixtures/shapes.yaml), under OVMF. The R730 and R630 (`efi_boot_file:
//! snponly.efi`) get a NIC with no option ROM that OVMF drives itself (virtio-net, OVMF's
//! VirtioNetDxe), as a Dell's NIC has its UEFI driver: the firmware's own PXE client loads
//! `snponly.efi`, which runs on the firmware's SNP and chains the node's iPXE script (asserted
//! on the R730's console and in pxe's TFTP log). The OptiPlex (`ipxe.efi`) keeps an e1000e
//! whose iPXE ROM boots. Agent nodes report the golden image's NFS server masked.
//!
//! - **R730** (`r730`): the OS disk a small non-rotational SATA disk, the media pool a 2 TB
//!   sparse `scsi-hd` `DELL PERC H730 Mini` on a `megasas-gen2` (megaraid_sas). Installed once;
//!   qemu stops at the installer's reboot. The installed OS disk then boots three times, each
//!   from its own qcow2 overlay and with its own pool (one after the other: the three share
//!   the node's MAC and address):
//!   1. the pool holds an XFS filesystem with files (made on the host with `mkfs.xfs -p
//!      PROTOFILE`, which populates it without mounting): kept, same UUID, mounted at
//!      /srv/media (the `data-disk` note), its files still listed by `xfs_db -r`, and
//!      exported: the `nfs-exports` note (`exportfs -v` on the node) names /srv/media and the
//!      cluster subnet;
//!   2. the pool holds random bytes in its first and last MiB (no signature): left alone and
//!      reported (`first-boot-failed`), its content byte-for-byte the same (sparse-aware
//!      digest);
//!   3. the pool is all zeroes: formatted as XFS (label `media`), mounted and exported.
//! - **R630** (`r630`): the boot SSD and the three tiers as SATA disks with the profile's model
//!   strings (qemu 7.2's NVMe controller cannot present a model, and OVMF cannot boot from a
//!   disk behind the emulated PERC: docs/development.md). The boot SSD's model is the
//!   19-character `INTEL SSDSC2KB240G8`, longer than the 16 sysfs shows: the installer picks it
//!   by its IDENTIFY data (images::ata), or the install fails with no matching disk. The
//!   optane and nvme tiers are blank: formatted ext4 and mounted at their tier paths; the SAS
//!   SSD tier holds data: left untouched and reported. It is the last tier on purpose: first
//!   boot stops at the first disk it refuses.
//! - **OptiPlex** (`optiplex`): the install disk an NVMe controller at the PCI address its
//!   `by_path` names (`pci-0000:02:00.0-nvme-1`): installed there and booted.
//!
//! Needs what vm_install needs, plus xfsprogs and qemu-utils (tests/packages.txt).

mod support;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use builder::vmshape::{self, Role, Shape};
use serde_json::Value;
use support::vm::*;

const R730: &str = "hw-r730";
const R730_MAC: &str = "52:54:00:88:07:30";
const R630: &str = "hw-r630";
const R630_MAC: &str = "52:54:00:88:06:30";
const OPTIPLEX: &str = "hw-optiplex";
const OPTIPLEX_MAC: &str = "52:54:00:88:07:70";
const MIB: u64 = 1 << 20;

fn shape_of(profile: &str, mac: &str, host: &str) -> Shape {
    let mut d = builder::diag::Diagnostics::default();
    let set = builder::inventory::ProfileSet::load(&[], &mut d);
    let p = set
        .get(profile)
        .unwrap_or_else(|| panic!("no profile {profile}"));
    let s = vmshape::shape(p, images::bundle::Mac::parse_nic(mac).unwrap(), Some(1024))
        .with_file_prefix(host);
    let m = s.mismatches();
    assert!(
        m.is_empty(),
        "{profile}: the shipped selectors do not match the shape: {}",
        m.iter()
            .map(|m| m.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    s
}

/// The node's timeline as (event, detail).
fn timeline(ns: &str, host: &str) -> Vec<(String, String)> {
    let n = nodes(ns)
        .into_iter()
        .find(|n| n["hostname"] == host)
        .unwrap_or_else(|| panic!("{host} not in the API's node list"));
    n["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["event"].as_str().unwrap().to_string(),
                t["detail"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn state(ns: &str, host: &str) -> String {
    nodes(ns)
        .into_iter()
        .find(|n| n["hostname"] == host)
        .map(|n: Value| n["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Notes of `kind` from entry `from` on, waited for: the reports arrive over the network a
/// moment after the console shows the end of the first boot.
fn notes_after(ns: &str, host: &str, from: usize, kind: &str, want: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let t = timeline(ns, host);
        let found: Vec<String> = t
            .iter()
            .skip(from)
            .filter(|(e, d)| e == "note" && d.starts_with(&format!("{kind}: ")))
            .map(|(_, d)| d[kind.len() + 2..].to_string())
            .collect();
        if found.len() >= want {
            return found;
        }
        assert!(
            Instant::now() < until,
            "{host}: {want} {kind} note(s) expected after entry {from}: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A digest of a (sparse) file's logical content: holes and all-zero MiBs read as zeroes, so
/// it does not change when the guest writes zeroes into a hole, and it reads only allocated
/// extents (a 2 TB pool holds a few MiB).
fn content_digest(path: &Path) -> String {
    use nix::unistd::{Whence, lseek};
    let mut f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut h = Vec::new();
    let mut pos = 0i64;
    // The last MiB hashed: several extents can share one MiB, and how a file is split into
    // extents changes with the host's writeback (seen: 7 extents right after mkfs, 6 later).
    let mut last = -1i64;
    let mut buf = vec![0u8; MIB as usize];
    while pos < len {
        let data = match lseek(f.as_fd(), pos, Whence::SeekData) {
            Ok(o) => o,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA {}: {e}", path.display()),
        };
        let hole = lseek(f.as_fd(), data, Whence::SeekHole).unwrap();
        // Whole MiBs, aligned, so the same bytes give the same chunks however allocated.
        let mut at = data - data % MIB as i64;
        while at < hole {
            if at <= last {
                at += MIB as i64;
                continue;
            }
            last = at;
            f.seek(SeekFrom::Start(at as u64)).unwrap();
            let n = ((len - at) as usize).min(buf.len());
            f.read_exact(&mut buf[..n]).unwrap();
            if buf[..n].iter().any(|b| *b != 0) {
                h.extend_from_slice(&at.to_le_bytes());
                h.extend_from_slice(sha256_hex(&buf[..n]).as_bytes());
            }
            at += MIB as i64;
        }
        pos = hole;
    }
    sha256_hex(&h)
}

/// Random bytes (no signature) in the first and last MiB of a sparse file of `size`.
fn fill_head_and_tail(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut noise = vec![0u8; MIB as usize];
    rand_bytes(&mut noise);
    f.write_all(&noise).unwrap();
    f.seek(SeekFrom::Start(size - MIB)).unwrap();
    f.write_all(&noise).unwrap();
}

fn rand_bytes(b: &mut [u8]) {
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(b)
        .unwrap();
}

/// `blkid -p -o value -s TAG FILE`.
fn probe(file: &Path, tag: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", tag])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn has_gpt(file: &Path) -> bool {
    let mut f = std::fs::File::open(file).unwrap();
    let mut b = [0u8; 8];
    f.seek(SeekFrom::Start(512)).unwrap();
    f.read_exact(&mut b).unwrap();
    &b == b"EFI PART"
}

/// Install + first boot in one qemu process.
fn install_and_boot(vm: &mut Vm, host: &str) {
    vm.wait(&format!("ironseed: installing {host}"));
    vm.wait(&format!("ironseed: installed {host}"));
    vm.wait_after(
        &format!("ironseed: installed {host}"),
        "ironseed: booting from local disk",
    );
    vm.wait(&format!("ironseed: {host} finished first boot"));
}

#[test]
fn hardware_shaped_vms_install_and_treat_their_data_disks_right() {
    let name = "hardware_shaped_vms_install_and_treat_their_data_disks_right";
    if !capable(name) || !uefi_wanted(name) {
        return;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        support::ci::skip(&format!(
            "{name}: missing debootstrap (and the image tools of tests/packages.txt)"
        ));
        return;
    }
    for bin in ["mkfs.xfs", "xfs_db", "qemu-img", "blkid"] {
        if !support::require_bin(bin) {
            return;
        }
    }
    let t0 = Instant::now();
    let r730 = shape_of("r730", R730_MAC, R730);
    let r630 = shape_of("r630", R630_MAC, R630);
    let optiplex = shape_of("optiplex", OPTIPLEX_MAC, OPTIPLEX);
    let (dir, _guard) = lab_dir(
        tempfile::Builder::new()
            .prefix("vm_shapes-")
            .tempdir()
            .unwrap(),
    );
    let artifacts = artifacts();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bundle = dir.join("bundle");
    run(Command::new(builder_bin())
        .arg("render")
        .arg("-i")
        .arg(fx.join("shapes.yaml"))
        .arg("--secrets")
        .arg(fx.join("vmlab.secrets.yaml"))
        .arg("-o")
        .arg(&bundle));

    let lab = Lab::new(3);
    let ns = lab.pxe.0.clone();
    let _router = start_router(&lab, &dir);
    let art = artifacts.display().to_string();
    let efi = std::env::var("IRONSEED_SHAPES_EFI").unwrap_or_else(|_| "snponly.efi".into());
    let (mut pxe, pxe_log_file) = start_pxe_with(&lab, &bundle, &dir, &efi, &["--artifacts", &art]);
    eprintln!(
        "timing: lab up {:>6.1} s (EFI boot file {efi})",
        t0.elapsed().as_secs_f64()
    );

    // The R730's media pool, run 1: XFS with files.
    let pool = r730.disk(&Role::Data("media".into())).unwrap().clone();
    let xfs_pool = dir.join("pool-xfs.img");
    let xfs_uuid = make_xfs_pool(&dir, &xfs_pool, pool.size);
    let xfs_digest = content_digest(&xfs_pool);
    // The R630's SAS SSD tier holds data.
    let sas = r630.disk(&Role::Data("sas-ssd".into())).unwrap().clone();
    fill_head_and_tail(&dir.join(&sas.file), sas.size);
    let sas_digest = content_digest(&dir.join(&sas.file));

    let d = dir.as_path();
    let labr = &lab;
    let mut r730_install = r730.clone();
    r730_install.disks[1].file = "pool-xfs.img".into();
    let p1 = Instant::now();
    let jobs: Vec<Box<dyn FnOnce() -> Vm + Send + '_>> = vec![
        Box::new(move || {
            // Installed once; qemu ends at the installer's reboot, the OS disk is then the
            // base of the three first boots.
            let mut o = VmOpts::new(Firmware::Uefi, "vmttap0", R730_MAC);
            o.shape = Some(r730_install);
            let mut vm = Vm::start_with(labr, d, "r730-install", &o);
            vm.wait(&format!("ironseed: installing {R730}"));
            vm.wait(&format!("ironseed: installed {R730}"));
            vm.wait_exit();
            vm
        }),
        Box::new(move || {
            let mut o = VmOpts::new(Firmware::Uefi, "vmttap1", R630_MAC);
            o.shape = Some(r630);
            o.no_reboot = false;
            let mut vm = Vm::start_with(labr, d, "r630", &o);
            install_and_boot(&mut vm, R630);
            vm
        }),
        Box::new(move || {
            let mut o = VmOpts::new(Firmware::Uefi, "vmttap2", OPTIPLEX_MAC);
            o.shape = Some(optiplex);
            o.no_reboot = false;
            let mut vm = Vm::start_with(labr, d, "optiplex", &o);
            install_and_boot(&mut vm, OPTIPLEX);
            vm
        }),
    ];
    let mut vms = parallel(jobs);
    eprintln!(
        "timing: installs (+ R630/OptiPlex first boots) {:>6.1} s",
        p1.elapsed().as_secs_f64()
    );
    for vm in &mut vms {
        vm.proc.stop();
    }

    // The R730 netbooted through the firmware's own PXE: EDK2 loaded snponly.efi over TFTP,
    // iPXE started on the firmware's SNP and fetched the node's script, which started the
    // installer — in that order on the console.
    let s730 = vms[0].serial_text();
    let at = |m: &str| {
        s730.find(m)
            .unwrap_or_else(|| panic!("R730 console: no {m:?}"))
    };
    let (nbp, ipxe, snp, install) = (
        at("NBP filename is snponly.efi"),
        at("iPXE initialising devices"),
        // snponly.efi's iPXE drives the NIC through the firmware's SNP, no driver of its own.
        at(&format!("net0: {R730_MAC} using SNP on SNP-")),
        at(&format!("ironseed: installing {R730}")),
    );
    assert!(
        nbp < ipxe && ipxe < snp && snp < install,
        "R730 boot order: {nbp} {ipxe} {snp} {install}"
    );
    assert!(
        !s730[..nbp].contains("iPXE initialising devices"),
        "R730: no option ROM iPXE ran before the firmware's PXE"
    );
    let pxe_log = clean(&std::fs::read(&pxe_log_file).unwrap());
    assert!(
        pxe_log
            .lines()
            .any(|l| l.contains("tftp: transfer done") && l.contains("snponly.efi")),
        "pxe served snponly.efi over TFTP; pxe log:\n{pxe_log}"
    );

    // The R730: the OS went to the SSD, the pool was not touched by the installer.
    let r730_os = dir.join(&r730.disks[0].file);
    assert!(has_gpt(&r730_os), "R730: the OS is on the SATA SSD");
    assert_eq!(
        content_digest(&xfs_pool),
        xfs_digest,
        "R730: the installer left the pool alone"
    );

    // The R630: two blank tiers formatted and mounted, the SAS SSD reported and untouched.
    let got = notes_after(&ns, R630, 0, "data-disk", 2);
    for (tier, mnt) in [
        ("optane", "/var/lib/longhorn-optane"),
        ("nvme", "/var/lib/longhorn-nvme"),
    ] {
        assert!(
            got.iter().any(|n| n.starts_with(&format!("{tier}: "))
                && n.contains(" formatted (ext4 UUID=")
                && n.ends_with(&format!("mounted at {mnt}"))),
            "R630 {tier}: {got:?}"
        );
        let f = dir.join(format!("{R630}-data-{tier}.img"));
        assert_eq!(probe(&f, "TYPE"), "ext4", "R630 {tier} formatted");
        assert_eq!(probe(&f, "LABEL"), tier);
    }
    let failed = notes_after(&ns, R630, 0, "first-boot-failed", 1);
    assert!(
        failed.iter().any(|n| n.starts_with("data disk sas-ssd: ")
            && n.contains("is not blank (first MiB is not all zeros; last MiB is not all zeros)")
            && n.contains("left untouched")),
        "R630 sas-ssd: {failed:?}"
    );
    assert_eq!(
        content_digest(&dir.join(&sas.file)),
        sas_digest,
        "R630: the SAS SSD tier is byte-for-byte as it was"
    );
    assert!(has_gpt(&vms[1].disk), "R630: OS on its boot SSD");
    let s630 = vms[1].serial_text();
    assert!(
        !s630.contains("no ATA IDENTIFY data"),
        "R630: the installer read every SATA model from IDENTIFY"
    );
    assert_eq!(state(&ns, R630), "booted");
    // Agent nodes: the NFS server and the portmapper the image ships stay masked.
    for host in [R630, OPTIPLEX] {
        let nfs = notes_after(&ns, host, 0, "nfs-server", 1);
        assert_eq!(
            nfs,
            ["nfs-server.service masked inactive, rpcbind.socket masked inactive"],
            "{host}"
        );
    }

    // The OptiPlex: installed on the NVMe disk its by_path names, booted.
    let s = vms[2].serial_text();
    assert!(
        s.contains(&format!("ironseed: installed {OPTIPLEX} on /dev/nvme0n1")),
        "OptiPlex: install on the NVMe disk"
    );
    assert!(has_gpt(&vms[2].disk));
    assert_eq!(state(&ns, OPTIPLEX), "booted");
    drop(vms);

    // The R730's three first boots, each from an overlay of the installed OS disk.
    let unknown_pool = dir.join("pool-unknown.img");
    fill_head_and_tail(&unknown_pool, pool.size);
    let unknown_digest = content_digest(&unknown_pool);
    let zero_pool = dir.join("pool-zero.img");
    std::fs::File::create(&zero_pool)
        .unwrap()
        .set_len(pool.size)
        .unwrap();
    let p2 = Instant::now();
    for variant in ["xfs", "unknown", "zero"] {
        let overlay = format!("os-{variant}.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&r730_os)
            .arg(dir.join(&overlay)));
        let mut s = r730.clone();
        s.disks[0].file = overlay;
        s.disks[1].file = format!("pool-{variant}.img");
        let from = timeline(&ns, R730).len();
        let mut o = VmOpts::new(Firmware::Uefi, "vmttap0", R730_MAC);
        o.shape = Some(s);
        o.no_reboot = false;
        let mut vm = Vm::start_with(&lab, &dir, &format!("r730-{variant}"), &o);
        vm.wait("ironseed: booting from local disk");
        vm.wait(&format!("ironseed: {R730} finished first boot"));
        vm.proc.stop();
        // The pool kept or formatted: mounted, then exported to the cluster subnet.
        let exported = |what: &str| {
            let e = notes_after(&ns, R730, from, "nfs-exports", 1);
            assert!(
                e[0].starts_with("/srv/media ") && e[0].contains(" 10.88.0.0/24("),
                "R730 {what} pool exported: {e:?}"
            );
            let t = timeline(&ns, R730);
            assert!(
                !t.iter()
                    .skip(from)
                    .any(|(e, d)| e == "note" && d.starts_with("first-boot-failed: ")),
                "R730 {what}: {t:?}"
            );
        };
        match variant {
            "xfs" => {
                let kept = notes_after(&ns, R730, from, "data-disk", 1);
                assert!(
                    kept[0].starts_with("media: ")
                        && kept[0].contains(&format!(" kept (xfs UUID={xfs_uuid}), "))
                        && kept[0].ends_with("mounted at /srv/media"),
                    "R730 XFS pool: {kept:?}"
                );
                let ls = xfs_db(&xfs_pool, "ls /");
                assert!(
                    ls.contains("movie.txt") && ls.contains("music"),
                    "R730 XFS pool's files: {ls}"
                );
                exported("XFS");
            }
            "unknown" => {
                let disk = notes_after(&ns, R730, from, "first-boot-failed", 1);
                assert!(
                    disk.iter().any(|n| n.starts_with("data disk media: ")
                        && n.contains(
                            "is not blank (first MiB is not all zeros; last MiB is not all zeros)"
                        )),
                    "R730 unknown pool: {disk:?}"
                );
                assert_eq!(
                    content_digest(&unknown_pool),
                    unknown_digest,
                    "R730: the unrecognised pool is byte-for-byte as it was"
                );
            }
            _ => {
                let made = notes_after(&ns, R730, from, "data-disk", 1);
                assert!(
                    made[0].starts_with("media: ")
                        && made[0].contains(" formatted (xfs UUID=")
                        && made[0].ends_with("mounted at /srv/media"),
                    "R730 blank pool: {made:?}"
                );
                assert_eq!(probe(&zero_pool, "TYPE"), "xfs");
                assert_eq!(probe(&zero_pool, "LABEL"), "media");
                exported("blank");
            }
        }
        let _ = std::fs::remove_file(dir.join(format!("os-{variant}.qcow2")));
    }
    eprintln!(
        "timing: R730 first boots {:>6.1} s",
        p2.elapsed().as_secs_f64()
    );
    assert_eq!(state(&ns, R730), "booted");
    assert!(pxe.alive(), "pxe serve died");
    pxe.stop();
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}
