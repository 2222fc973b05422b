//! End to end, offline: `builder usb image vm-bios2` makes an installer stick; a VM with a blank
//! disk and that stick (and no appliance, no PXE, no route anywhere) boots the stick, installs
//! itself, reboots into its own disk, and real cloud-init applies the node's seed from the
//! installed `cidata` partition. The same golden image, installer environment and first-boot
//! assertions as vm_install.rs (the network path).
//!
//! The VM: SeaBIOS, a blank 4 GiB virtio disk and the stick (read-only), in two runs as an
//! operator does it: first the stick is the boot device (a one-time boot menu choice on real
//! hardware) and qemu ends at the installer's reboot (`-no-reboot`); then the same VM starts
//! with its disk first and the stick still attached second, and must boot the installed system,
//! not the installer again. (SeaBIOS tries only the first hard disk of its boot order — its one
//! "Hard Disk" entry — so a blank first disk does not fall through to a second one.) Its only
//! NIC has the node's MAC (cloud-init's network-config matches by MAC, which is what the static
//! address assertion needs) on a `restrict=on` user-mode network: no option ROM (`romfile=`),
//! no boot index, nothing reachable — so it never network-boots and the install is provably
//! offline.
//!
//! In parallel, the same for vm-uefi1 under OVMF: the stick boots through its systemd-boot
//! (EFI/BOOT/BOOTX64.EFI), the installed disk through the image's. `IRONSEED_VM_UEFI=0` leaves
//! it out (a skip: refused under CI).
//! Needs root (the golden image build), qemu and the image tools of tests/packages.txt;
//! skipped loudly without them, failing under CI.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::vm::*;

struct Node {
    host: &'static str,
    mac: &'static str,
    ip: &'static str,
    fw: Firmware,
}

const BIOS: Node = Node {
    host: "vm-bios2",
    mac: "52:54:00:88:00:12",
    ip: "10.88.0.12",
    fw: Firmware::Bios,
};
const UEFI: Node = Node {
    host: "vm-uefi1",
    mac: "52:54:00:88:00:21",
    ip: "10.88.0.21",
    fw: Firmware::Uefi,
};

fn capable(test: &str, uefi: bool) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("syslinux", "syslinux"),
        ("debootstrap", "debootstrap"),
    ];
    for (t, pkg) in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            missing.push(format!("{t} ({pkg})"));
        }
    }
    let mut files = vec![
        ("/usr/lib/syslinux/mbr/gptmbr.bin", "syslinux-common"),
        (
            "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            "systemd-boot-efi",
        ),
    ];
    if uefi {
        files.extend([(OVMF_CODE, "ovmf"), (OVMF_VARS, "ovmf")]);
    }
    for (f, pkg) in files {
        if !Path::new(f).exists() {
            missing.push(format!("{f} ({pkg})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    support::ci::skip(&format!("{test}: missing {}", missing.join(", ")))
}

fn sfdisk_dump(img: &Path) -> String {
    let o = Command::new("sfdisk").arg("-d").arg(img).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The stick's layout as `sfdisk -d` shows it: GPT, the BIOS-bootable ESP at 1 MiB, the image
/// partition right after it and big enough for the compressed golden image.
fn assert_stick_layout(img: &Path, image_len: u64) {
    let d = sfdisk_dump(img);
    let parts: Vec<&str> = d.lines().filter(|l| l.contains(" : start=")).collect();
    assert!(d.contains("label: gpt"), "{d}");
    assert!(d.contains("first-lba: 2048"), "{d}");
    assert_eq!(parts.len(), 2, "{d}");
    let field = |l: &str, k: &str| -> u64 {
        l.split(',')
            .find_map(|f| f.trim().split(" : ").last()?.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k} in {l}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (esp, image) = (parts[0], parts[1]);
    assert!(
        esp.contains("type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
            && esp.contains("name=\"ironseed-esp\"")
            && esp.contains("attrs=\"LegacyBIOSBootable\""),
        "{esp}"
    );
    assert_eq!(field(esp, "start"), 2048, "{esp}");
    assert!(
        image.contains("type=0FC63DAF-8483-4772-8E79-3D69D8477DE4")
            && image.contains("name=\"ironseed-image\""),
        "{image}"
    );
    assert_eq!(
        field(image, "start"),
        field(esp, "start") + field(esp, "size"),
        "{d}"
    );
    assert!(field(image, "size") * 512 >= image_len, "{d}");
    // gptmbr.bin in the boot code area, the protective MBR's signature intact.
    let mut mbr = [0u8; 512];
    std::fs::File::open(img)
        .unwrap()
        .read_exact(&mut mbr)
        .unwrap();
    let gptmbr = std::fs::read("/usr/lib/syslinux/mbr/gptmbr.bin").unwrap();
    assert_eq!(&mbr[..440], &gptmbr[..440]);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
}

/// The node's seed in the installed disk's `cidata` slot, byte for byte the bundle's.
fn assert_seed_on_disk(disk: &Path, bundle: &Path, host: &str) {
    let mut f = std::fs::File::open(disk).unwrap();
    let parts = images::gpt::partitions(&mut f).unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["esp", "cidata", "root"],
        "the golden image's layout"
    );
    let slot = parts.iter().find(|p| p.name == "cidata").unwrap();
    let mut vol = vec![0u8; slot.len as usize];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(slot.first_byte)).unwrap();
    f.read_exact(&mut vol).unwrap();
    let (label, files) = images::cidata::read(&vol).unwrap();
    assert_eq!(label, "CIDATA");
    assert_eq!(files.len(), 3, "user-data, meta-data, network-config");
    for (name, b) in files {
        let want = std::fs::read(bundle.join(format!("nodes/{host}/{name}"))).unwrap();
        assert!(b == want, "{host}: {name} on the disk is the bundle's");
    }
}

/// The node's VM; `install`: blank disk, the stick boots first, qemu exits at the reboot.
/// Otherwise: the same disk first, the stick second, the VM keeps running.
fn start_vm(dir: &Path, n: &Node, stick: &Path, install: bool) -> (Proc, PathBuf, PathBuf) {
    let disk = dir.join(format!("{}-disk.img", n.host));
    if install {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
    }
    let phase = if install { "install" } else { "boot" };
    let serial = dir.join(format!("{}-{phase}.serial", n.host));
    let (disk_idx, stick_idx) = if install { (2, 1) } else { (1, 2) };
    let mut cmd = Command::new("qemu-system-x86_64");
    // One NVRAM across both runs, as one machine has.
    let vars = dir.join(format!("{}.vars.fd", n.host));
    if n.fw == Firmware::Uefi && install {
        std::fs::copy(OVMF_VARS, &vars).unwrap();
    }
    machine_args(&mut cmd, n.fw, &vars);
    if install {
        cmd.arg("-no-reboot");
    }
    cmd.args(["-m", "1024", "-smp", "2", "-nographic", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        // The node's MAC for cloud-init's network-config; restrict=on: nothing is reachable,
        // no host interface is touched; no ROM and no bootindex: never a network boot.
        .args(["-netdev", "user,id=n0,restrict=on"])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,mac={},romfile=", n.mac))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d0,cache=unsafe",
            disk.display()
        ))
        .arg("-device")
        .arg(format!("virtio-blk-pci,drive=d0,bootindex={disk_idx}"))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d1,readonly=on",
            stick.display()
        ))
        .arg("-device")
        .arg(format!("virtio-blk-pci,drive=d1,bootindex={stick_idx}"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join(format!("{}-{phase}.out", n.host))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{}-{phase}.err", n.host))).unwrap());
    let child = cmd.spawn().expect("spawning qemu-system-x86_64");
    (Proc::new("qemu", child), serial, disk)
}

fn wait(p: &mut Proc, serial: &Path, name: &str, t0: Instant, marker: &str) {
    wait_file(
        serial,
        &format!("{name}: serial marker {marker:?}"),
        |t| t.contains(marker),
        || p.alive(),
    );
    eprintln!(
        "timing: {name:<10} {:>6.1} s  {marker}",
        t0.elapsed().as_secs_f64()
    );
}

/// Wait for qemu to exit by itself (the guest's reboot under -no-reboot).
fn wait_exit(p: &mut Proc, serial: &Path, name: &str, t0: Instant) {
    wait_file(
        serial,
        &format!("{name}: qemu exit"),
        |_| !p.alive(),
        || true,
    );
    eprintln!(
        "timing: {name:<10} {:>6.1} s  (rebooted: qemu exited)",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn blank_vms_install_themselves_from_their_offline_sticks_and_boot_as_their_nodes() {
    let name = "blank_vms_install_themselves_from_their_offline_sticks_and_boot_as_their_nodes";
    let uefi = uefi_wanted(name);
    if !capable(name, uefi) {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("vm_offline-")
        .tempdir()
        .unwrap();
    let dir = if std::env::var_os("IRONSEED_VM_KEEP").is_some() {
        let p = tmp.keep();
        eprintln!("keeping {}", p.display());
        p
    } else {
        tmp.path().to_owned()
    };
    let artifacts = artifacts();
    let bundle = dir.join("bundle");
    render_bundle(&bundle);
    let nodes: Vec<&Node> = if uefi {
        vec![&BIOS, &UEFI]
    } else {
        vec![&BIOS]
    };
    let (dir, artifacts, bundle) = (&dir, &artifacts, &bundle);
    // Both machines at once, as vm_install.rs does: they share nothing but the read-only
    // artifacts and bundle, and most of a TCG boot is waiting, so this takes little longer
    // than one of them.
    parallel(
        nodes
            .into_iter()
            .map(|node| {
                Box::new(move || install_offline(dir, artifacts, bundle, node))
                    as Box<dyn FnOnce() + Send + '_>
            })
            .collect(),
    );
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}

/// `builder usb image` for `node`, then its VM: install from the stick, reboot into the disk,
/// first boot with the seed from the installed `cidata` slot.
fn install_offline(dir: &Path, artifacts: &Path, bundle: &Path, node: &Node) {
    let stick = dir.join(format!("{}-stick.img", node.host));
    let t = Instant::now();
    run(Command::new(builder_bin())
        .args(["usb", "image", node.host, "--out"])
        .arg(&stick)
        .arg("--artifacts")
        .arg(artifacts)
        .arg("--bundle")
        .arg(bundle));
    eprintln!(
        "timing: {:<10} {:>6.1} s  usb image",
        node.host,
        t.elapsed().as_secs_f64()
    );
    let n = node.host;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&stick).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{n}: the stick carries the token"
    );
    let golden = artifacts.join("images/debian-12.raw.zst");
    assert_stick_layout(&stick, std::fs::metadata(&golden).unwrap().len());
    let stick_sha = sha256_hex(&std::fs::read(&stick).unwrap());

    let started = Instant::now();
    let (mut vm, serial, disk) = start_vm(dir, node, &stick, true);
    wait(
        &mut vm,
        &serial,
        n,
        started,
        "ironseed-installer: offline install",
    );
    wait(
        &mut vm,
        &serial,
        n,
        started,
        &format!("ironseed: installing {n}"),
    );
    wait(
        &mut vm,
        &serial,
        n,
        started,
        &format!("ironseed: installed {n}"),
    );
    // The installer syncs and reboots; -no-reboot turns that into qemu's exit.
    wait_exit(&mut vm, &serial, n, started);
    let install = clean(&std::fs::read(&serial).unwrap());
    // Offline for real: the installer never configured a network.
    assert!(
        !install.contains("ironseed-installer: DHCP"),
        "{n}: no DHCP offline"
    );
    // The stick is excluded even though `min_size_gb: 0` matches it: the blank disk was chosen.
    assert!(
        install.contains("ironseed: install disk /dev/vda"),
        "{n}: the blank disk is the target"
    );

    let (mut vm, serial, _) = start_vm(dir, node, &stick, false);
    wait(
        &mut vm,
        &serial,
        n,
        started,
        &format!("ironseed: {n} finished first boot"),
    );
    vm.stop();
    eprintln!(
        "timing: {n:<10} {:>6.1} s  install + first boot",
        started.elapsed().as_secs_f64()
    );
    let text = clean(&std::fs::read(&serial).unwrap());
    assert!(
        !text.contains("ironseed-installer"),
        "{n}: the installed disk boots, the stick left in second is not booted again"
    );
    let image_sha = std::fs::read_to_string(artifacts.join("images/debian-12.raw.zst.sha256"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        install.contains(&format!("sha256 {image_sha}")),
        "{n}: installed with the verified sha256"
    );
    let s = summary(&text, n);
    let cfg = std::fs::read(bundle.join(format!("nodes/{n}/k3s/config.yaml"))).unwrap();
    assert_eq!(s["hostname"], n, "{s:?}");
    assert!(
        s["addresses"]
            .split(' ')
            .any(|a| a == format!("{}/24", node.ip)),
        "{n}: static address from network-config: {s:?}"
    );
    assert_eq!(
        s["k3s-config-sha256"],
        sha256_hex(&cfg),
        "{n}: k3s config in place"
    );
    assert_seed_on_disk(&disk, bundle, n);
    assert_eq!(
        sha256_hex(&std::fs::read(&stick).unwrap()),
        stick_sha,
        "{n}: the stick is never written"
    );
}
