//! End to end, issue 13: a machine nobody typed in tells ironseed what it is, and is adopted
//! and installed without anyone writing its MAC or a disk selector. Real firmware (SeaBIOS and
//! the iPXE NIC ROM), the real `pxe serve --inspect unknown`, the real installer environment in
//! inspect mode, `builder adopt` against the live API, `render`, reload, `pxe arm`, install.
//!
//! The VM has three disks of different shapes, each with random bytes at its head and tail:
//! - a 1 GiB virtio-blk disk (no model, no serial): the profile's "scratch" data disk (by size);
//! - a 4 GiB NVMe disk (`QEMU NVMe Ctrl`, serial `IRONSEED-NVME1`): the only disk left for the OS;
//! - a 2 GiB SCSI disk on a `megasas-gen2` controller (the PERC H730's driver, `megaraid_sas`),
//!   `DELL PERC H730 Mini`: the profile's "raid" data disk (by model).
//!
//! The test profile's `install_disk` names an NVMe model this VM does not have (it matches none
//! of its disks), so `adopt` must derive the node's own selector from the facts. Asserted: the facts list the three disks with their
//! models and sizes and the NIC's MAC; the inspection powers the VM off and changes no byte of
//! any disk; adopt names the NVMe disk; the install lands on it (GPT at its head, the installer's
//! "installed ... on /dev/nvme0n1"); the two data disks stay byte-for-byte unchanged.
//!
//! Then the node's first boot, from the NVMe disk: `booted`, phone_home from the address adopt
//! chose, and the first-boot script reports the PERC data disk as not blank (it holds data) and
//! leaves both data disks byte-for-byte as they were.
//!
//! Needs what vm_install needs (root, the vm_pxe packages, the image tools, Debian's archive on
//! the first run; the golden image is cached in `IRONSEED_E2E_CACHE`).

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use support::vm::*;

/// Not in pxe/tests/fixtures/vmlab.yaml.
const MAC: &str = "52:54:00:88:00:77";
const HOST: &str = "vm-adopted";
const NVME_SERIAL: &str = "IRONSEED-NVME1";
const PERC_MODEL: &str = "PERC H730 Mini";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A profile written for other hardware: its install selector names an NVMe model this VM does
/// not have (it matches none of its disks, so `adopt` must derive the node's own), and its data
/// disks claim the virtio disk (by size) and the PERC disk (by model and size). The selectors are
/// provably disjoint, as the inventory's own rule demands.
const PROFILE: &str = "\
# vm_discover: three disks; the profile's install disk is a model this VM does not have.
name: qemu-inspect
description: qemu test VM with a virtio, an NVMe and a megasas disk
firmware: bios
dhcp_arch: 0
boot_nic:
  name: eth0
install_disk:
  model: Samsung SSD 980 PRO 1TB
  min_size_gb: 3
data_disks:
  - name: raid
    purpose: longhorn
    selector:
      model: PERC H730 Mini
      min_size_gb: 2
      max_size_gb: 2
  - name: scratch
    purpose: longhorn
    selector:
      min_size_gb: 1
      max_size_gb: 1
packages: []
kernel_args:
  - console=ttyS0,115200
sysctls: {}
labels:
  homelab/class: vm
taints: []
";

/// The lab inventory's writable copy with this test's profile beside the others.
fn inventory_copy(dir: &Path) -> PathBuf {
    let inv = support::vm::inventory_copy(dir);
    std::fs::write(inv.join("hardware/qemu-inspect.yaml"), PROFILE).unwrap();
    inv
}

/// A sparse raw disk of `size` bytes with 1 MiB of random bytes at its head and its tail.
fn make_disk(path: &Path, size: u64) {
    let mut rnd = vec![0u8; MIB as usize];
    let mut f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for off in [0, size - MIB] {
        getrandom(&mut rnd);
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&rnd).unwrap();
    }
    f.sync_all().unwrap();
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

/// sha256 over a sparse disk file's size and its data extents (offset, length, bytes), found
/// with `SEEK_DATA`/`SEEK_HOLE`. Holes read as zeroes, so equal digests mean equal bytes; and a
/// write into a hole (even of zeroes) allocates it and changes the digest, so nothing written
/// goes unseen. A plain sha256sum of the 7 GiB of mostly-hole files cost ~38 s per pass.
fn content_digest(p: &Path) -> String {
    use nix::unistd::{Whence, lseek};
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let mut h = sha2::Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; 8 * MIB as usize];
    let mut off = 0i64;
    while off < size {
        let Ok(start) = lseek(&f, off, Whence::SeekData) else {
            break; // ENXIO: no data after `off`
        };
        let end = lseek(&f, start, Whence::SeekHole).unwrap();
        h.update(start.to_le_bytes());
        h.update(end.to_le_bytes());
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at as u64).unwrap();
            h.update(&buf[..n]);
            at += n as i64;
        }
        off = end;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn head(p: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open(p).unwrap().read_exact(&mut b).unwrap();
    b
}

fn discovered(ns: &str) -> Value {
    let (st, body) = http(ns, "GET", "/api/v1/discovered", None);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == MAC)
        .unwrap_or_else(|| panic!("{MAC} not discovered: {body}"))
        .clone()
}

/// One process in the lab's pxe namespace, as the operator (token in the environment).
fn in_lab(ns: &str, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(bin)
        .env("IRONSEED_API_TOKEN", API_TOKEN);
    c
}

fn output(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn an_unknown_vm_is_inspected_adopted_and_installed_on_the_derived_disk() {
    let name = "an_unknown_vm_is_inspected_adopted_and_installed_on_the_derived_disk";
    if !capable(name) {
        return;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        support::ci::skip(&format!(
            "{name}: missing debootstrap (and the image tools of tests/packages.txt)"
        ));
        return;
    }
    let t0 = Instant::now();
    let (dir, _guard) = lab_dir(
        tempfile::Builder::new()
            .prefix("vm_discover-")
            .tempdir()
            .unwrap(),
    );
    let artifacts = artifacts();
    let bundle = dir.join("bundle");
    let inv = inventory_copy(&dir);
    let source = |cmd: &mut Command| {
        cmd.arg("-i")
            .arg(inv.join("vmlab.yaml"))
            .arg("--secrets")
            .arg(inv.join("vmlab.secrets.yaml"))
            .arg("-o")
            .arg(&bundle);
    };
    let mut render = Command::new(builder_bin());
    render.arg("render");
    source(&mut render);
    run(&mut render);

    // The three disks, with known content.
    let virtio = dir.join(format!("{}.img", MAC.replace(':', "")));
    let nvme = dir.join("nvme.img");
    let perc = dir.join("perc.img");
    make_disk(&virtio, GIB);
    make_disk(&nvme, 4 * GIB);
    make_disk(&perc, 2 * GIB);
    let t = Instant::now();
    let before: Vec<String> = [&virtio, &nvme, &perc]
        .iter()
        .map(|p| content_digest(p))
        .collect();
    eprintln!("timing: disk hashes {:>6.1} s", t.elapsed().as_secs_f64());
    let mut o = VmOpts::new(Firmware::Bios, "vmttap0", MAC);
    o.reuse_disk = true;
    o.mem_mb = 1024;
    o.smp = 2;
    o.disk_bootindex = 3;
    o.extra_disks = vec![
        ExtraDisk {
            file: nvme.clone(),
            controller: None,
            // The operator's boot order: the NIC, then the OS disk.
            device: format!("nvme,serial={NVME_SERIAL},bootindex=2"),
        },
        ExtraDisk {
            file: perc.clone(),
            controller: Some("megasas-gen2,id=raid".into()),
            device: format!("scsi-hd,bus=raid.0,vendor=DELL,product={PERC_MODEL},serial=PERC0001"),
        },
    ];

    let lab = Lab::new(1);
    let ns = lab.pxe.0.clone();
    let _router = start_router(&lab, &dir);
    let art = artifacts.display().to_string();
    let (mut pxe, _log) = start_pxe_with(
        &lab,
        &bundle,
        &dir,
        "snponly.efi",
        &["--artifacts", &art, "--inspect", "unknown"],
    );
    eprintln!("timing: lab up {:>6.1} s", t0.elapsed().as_secs_f64());

    // 1. Inspection: network boot, facts posted, power off.
    let p1 = Instant::now();
    let mut vm = Vm::start_with(&lab, &dir, "inspect", &o);
    vm.wait("ironseed inspect: facts posted");
    vm.wait_exit();
    eprintln!("timing: inspection {:>6.1} s", p1.elapsed().as_secs_f64());
    let serial = vm.serial_text();
    assert!(
        !serial.contains("ironseed: installing"),
        "an inspection never installs"
    );
    drop(vm);

    let m = discovered(&ns);
    let facts = &m["facts"];
    assert!(facts.is_object(), "no facts for {MAC}: {m:#}");
    assert_eq!(facts["boot_mac"], MAC, "{facts:#}");
    assert_eq!(facts["firmware"], "bios", "{facts:#}");
    assert!(
        facts["nics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mac"] == MAC && n["driver"] == "virtio_net"),
        "the boot NIC with its driver: {:#}",
        facts["nics"]
    );
    let disks = facts["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3, "three disks: {disks:#?}");
    let disk = |pred: &dyn Fn(&Value) -> bool, what: &str| {
        disks
            .iter()
            .find(|d| pred(d))
            .unwrap_or_else(|| panic!("no {what} among {disks:#?}"))
            .clone()
    };
    let d_virtio = disk(&|d| d["name"] == "vda", "vda");
    assert_eq!(d_virtio["size"], GIB, "{d_virtio}");
    assert_eq!(d_virtio["transport"], "virtio", "{d_virtio}");
    let d_nvme = disk(&|d| d["name"] == "nvme0n1", "nvme0n1");
    assert_eq!(d_nvme["size"], 4 * GIB, "{d_nvme}");
    assert_eq!(d_nvme["model"], "QEMU NVMe Ctrl", "{d_nvme}");
    assert_eq!(d_nvme["serial"], NVME_SERIAL, "{d_nvme}");
    assert_eq!(d_nvme["transport"], "nvme", "{d_nvme}");
    let d_perc = disk(&|d| d["model"] == PERC_MODEL, "the PERC disk");
    assert_eq!(d_perc["size"], 2 * GIB, "{d_perc}");
    assert!(
        facts["pci"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["driver"] == "megaraid_sas"),
        "the RAID controller with its driver: {:#}",
        facts["pci"]
    );
    // Random bytes at each head: something is there, whatever it is.
    for d in [&d_virtio, &d_nvme, &d_perc] {
        assert!(
            !d["signatures"].as_array().unwrap().is_empty(),
            "a disk with data is not reported empty: {d}"
        );
    }
    let after: Vec<String> = [&virtio, &nvme, &perc]
        .iter()
        .map(|p| content_digest(p))
        .collect();
    assert_eq!(before, after, "inspection changed no byte of any disk");

    // `builder discover` shows it (from the same API, through the CLI).
    let mut discover = in_lab(&ns, &builder_bin());
    discover
        .args(["discover", "--server"])
        .arg(format!("http://{SERVER}:{HTTP_PORT}"));
    let table = output(&mut discover, "builder discover");
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(MAC) && l.contains("3 disks")),
        "{table}"
    );

    // 2. Adopt: the profile's selector matches all three disks; adopt derives one.
    let mut adopt = in_lab(&ns, &builder_bin());
    adopt
        .args(["adopt", MAC, "--hostname", HOST, "--role", "agent"])
        .args(["--profile", "qemu-inspect", "--server"])
        .arg(format!("http://{SERVER}:{HTTP_PORT}"))
        .arg("-i")
        .arg(inv.join("vmlab.yaml"));
    let said = output(&mut adopt, "builder adopt");
    eprintln!("{said}");
    assert!(
        said.contains("install disk: nvme0n1 (QEMU NVMe Ctrl"),
        "adopt picks the one disk that is no data disk: {said}"
    );
    let inv_text = std::fs::read_to_string(inv.join("vmlab.yaml")).unwrap();
    assert!(
        inv_text.contains(&format!("hostname: {HOST}")) && inv_text.contains("install_disk"),
        "the node with its own install_disk: {inv_text}"
    );

    // 3. Render, reload, arm, install.
    let mut render = Command::new(builder_bin());
    render.arg("render");
    source(&mut render);
    run(&mut render);
    let (st, body) = http(&ns, "POST", "/api/v1/reload", None);
    assert_eq!(st, 200, "reload: {body}");
    let mut arm = in_lab(&ns, Path::new(env!("CARGO_BIN_EXE_pxe")));
    arm.args(["arm", HOST, "--server"])
        .arg(format!("http://{SERVER}:{HTTP_PORT}"));
    output(&mut arm, "pxe arm");
    assert_eq!(states(&ns)[HOST], "armed");

    let p2 = Instant::now();
    // no_reboot: qemu ends at the installer's reboot, before the first boot.
    let mut vm = Vm::start_with(&lab, &dir, "install", &o);
    vm.wait(&format!("ironseed: installing {HOST}"));
    vm.wait(&format!("ironseed: installed {HOST} on /dev/nvme0n1"));
    vm.wait_exit();
    eprintln!("timing: install {:>6.1} s", p2.elapsed().as_secs_f64());
    drop(vm);

    let n = nodes(&ns)
        .into_iter()
        .find(|n| n["hostname"] == HOST)
        .unwrap();
    assert_eq!(n["state"], "installed", "{n:#}");
    // The image's GPT is on the NVMe disk now; the data disks are untouched.
    let h = head(&nvme, 1024);
    assert_eq!(&h[512..520], b"EFI PART", "a GPT on the install disk");
    assert_eq!(
        content_digest(&virtio),
        before[0],
        "the virtio data disk is unchanged"
    );
    assert_eq!(
        content_digest(&perc),
        before[2],
        "the PERC data disk is unchanged"
    );

    // 4. First boot from the NVMe disk: pxe sends the installed node to its disk, cloud-init
    // applies the seed, and the first-boot script finds the data disks holding data it cannot
    // name: it reports them and leaves them alone (data disks are never wiped).
    let p3 = Instant::now();
    let mut vm = Vm::start_with(&lab, &dir, "firstboot", &o);
    vm.wait("ironseed: booting from local disk");
    vm.wait(&format!("ironseed: {HOST} finished first boot"));
    eprintln!("timing: first boot {:>6.1} s", p3.elapsed().as_secs_f64());
    let until = Instant::now() + std::time::Duration::from_secs(120);
    let n = loop {
        let n = nodes(&ns)
            .into_iter()
            .find(|n| n["hostname"] == HOST)
            .unwrap();
        if n["state"] == "booted" {
            break n;
        }
        assert!(Instant::now() < until, "{HOST} never reached booted: {n:#}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let notes: Vec<String> = n["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["event"] == "note")
        .map(|t| t["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        notes.iter().any(|d| d.contains("phone-home")
            && d.contains(&format!("hostname={HOST} "))
            && d.ends_with("address=10.88.0.22")),
        "phone_home from the address adopt chose: {notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|d| d.starts_with("first-boot-failed: data disk raid: ")
                && d.contains("is not blank")
                && d.contains("left untouched")),
        "the PERC disk with data is reported, not formatted: {notes:?}"
    );
    vm.proc.stop();
    drop(vm);
    assert_eq!(
        content_digest(&virtio),
        before[0],
        "the virtio data disk is unchanged after the first boot"
    );
    assert_eq!(
        content_digest(&perc),
        before[2],
        "the PERC data disk is unchanged after the first boot"
    );

    assert!(pxe.alive(), "pxe serve died");
    pxe.stop();
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}

/// The "unchanged" check above is not vacuous: a byte written into a hole, zeroes written over
/// a hole, and a byte changed in a data extent each change the digest.
#[test]
fn content_digest_sees_every_kind_of_write() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img");
    make_disk(&p, 64 * MIB);
    let base = content_digest(&p);
    assert_eq!(content_digest(&p), base, "stable");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    use std::os::unix::fs::FileExt;
    for (off, bytes) in [
        (32 * MIB, &[0u8; 4096][..]),
        (40 * MIB, &[1u8][..]),
        (10, &[0u8, 1, 2][..]),
    ] {
        let d = content_digest(&p);
        f.write_all_at(bytes, off).unwrap();
        f.sync_all().unwrap();
        assert_ne!(
            content_digest(&p),
            d,
            "a write of {} bytes at {off}",
            bytes.len()
        );
    }
}
