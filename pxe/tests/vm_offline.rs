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
//! In parallel, the same for vm-uefi1 under OVMF, twice: once with the plain firmware and once
//! with Secure Boot enforced (`OVMF_CODE_4M.ms.fd` + a copy of `OVMF_VARS_4M.ms.fd`: Microsoft's
//! keys enrolled). Both boot the stick and then the installed disk through Debian's signed shim
//! (EFI/BOOT/BOOTX64.EFI) and GRUB; the kernel's `secureboot:` line on the console says which
//! firmware it ran under, in the installer and in the installed system. `IRONSEED_VM_UEFI=0`
//! leaves them out (a skip: refused under CI).
//!
//! A second test boots the golden image itself as a VM's disk under the Secure Boot firmware,
//! with a NoCloud seed in its `cidata` slot, and runs what Debian's own upgrade hooks run
//! (`update-grub`, `grub-install --force-extra-removable --no-nvram`) before booting it again.
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
    /// The VM's files (stick, disk, consoles): one node may be installed by two VMs.
    tag: &'static str,
    mac: &'static str,
    ip: &'static str,
    fw: Firmware,
    /// UEFI with Secure Boot enforced ([`OVMF_CODE_MS`]).
    secure_boot: bool,
}

const BIOS: Node = Node {
    host: "vm-bios2",
    tag: "vm-bios2",
    mac: "52:54:00:88:00:12",
    ip: "10.88.0.12",
    fw: Firmware::Bios,
    secure_boot: false,
};
const UEFI: Node = Node {
    host: "vm-uefi1",
    tag: "vm-uefi1",
    mac: "52:54:00:88:00:21",
    ip: "10.88.0.21",
    fw: Firmware::Uefi,
    secure_boot: false,
};
const UEFI_SB: Node = Node {
    tag: "vm-uefi1-sb",
    secure_boot: true,
    ..UEFI
};

/// The boot loaders the stick takes from this machine (the golden image takes its own).
const LOADERS: [(&str, &str); 3] = [
    ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
    ("/usr/lib/shim/mmx64.efi.signed", "shim-signed"),
    (
        "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        "grub-efi-amd64-signed",
    ),
];

/// The firmware's qemu arguments; `vars` is the VM's own copy of the variable store.
fn firmware_args(cmd: &mut Command, fw: Firmware, secure_boot: bool, vars: &Path) {
    if secure_boot {
        secure_boot_machine_args(cmd, vars)
    } else {
        machine_args(cmd, fw, vars)
    }
}

/// The kernel's own verdict (arch/x86/kernel/setup.c → `secureboot: Secure boot enabled`).
fn assert_secure_boot(console: &str, on: bool, what: &str) {
    let want = if on {
        "Secure boot enabled"
    } else {
        "Secure boot disabled"
    };
    assert!(
        console.contains(&format!("secureboot: {want}")),
        "{what}: no \"secureboot: {want}\" in the kernel log"
    );
}

fn capable(test: &str, uefi: bool) -> bool {
    if support::vm_deferred(test) {
        return false;
    }
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
    let mut files = vec![("/usr/lib/syslinux/mbr/gptmbr.bin", "syslinux-common")];
    files.extend(LOADERS);
    if uefi {
        files.extend([
            (OVMF_CODE, "ovmf"),
            (OVMF_VARS, "ovmf"),
            (OVMF_CODE_MS, "ovmf"),
            (OVMF_VARS_MS, "ovmf"),
        ]);
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
    let disk = dir.join(format!("{}-disk.img", n.tag));
    if install {
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
    }
    let phase = if install { "install" } else { "boot" };
    let serial = dir.join(format!("{}-{phase}.serial", n.tag));
    let (disk_idx, stick_idx) = if install { (2, 1) } else { (1, 2) };
    let mut cmd = Command::new("qemu-system-x86_64");
    // One NVRAM across both runs, as one machine has.
    let vars = dir.join(format!("{}.vars.fd", n.tag));
    if n.fw == Firmware::Uefi && install {
        let template = if n.secure_boot {
            OVMF_VARS_MS
        } else {
            OVMF_VARS
        };
        std::fs::copy(template, &vars).unwrap();
    }
    firmware_args(&mut cmd, n.fw, n.secure_boot, &vars);
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
        .stdout(std::fs::File::create(dir.join(format!("{}-{phase}.out", n.tag))).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("{}-{phase}.err", n.tag))).unwrap());
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
    let (dir, _tmp_guard) = lab_dir(tmp);
    let artifacts = shared_artifacts();
    let bundle = dir.join("bundle");
    render_bundle(&bundle);
    let nodes: Vec<&Node> = if uefi {
        vec![&BIOS, &UEFI, &UEFI_SB]
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
    let stick = dir.join(format!("{}-stick.img", node.tag));
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
        node.tag,
        t.elapsed().as_secs_f64()
    );
    let n = node.host;
    let tag = node.tag;
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&stick).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{tag}: the stick carries the token"
    );
    let golden = artifacts.join("images/debian-12.raw.zst");
    assert_stick_layout(&stick, std::fs::metadata(&golden).unwrap().len());
    let stick_sha = sha256_hex(&std::fs::read(&stick).unwrap());

    let started = Instant::now();
    let (mut vm, serial, disk) = start_vm(dir, node, &stick, true);
    wait(
        &mut vm,
        &serial,
        tag,
        started,
        "ironseed-installer: offline install",
    );
    wait(
        &mut vm,
        &serial,
        tag,
        started,
        &format!("ironseed: installing {n}"),
    );
    wait(
        &mut vm,
        &serial,
        tag,
        started,
        &format!("ironseed: installed {n}"),
    );
    // The installer syncs and reboots; -no-reboot turns that into qemu's exit.
    wait_exit(&mut vm, &serial, tag, started);
    let install = clean(&std::fs::read(&serial).unwrap());
    // Offline for real: the installer never configured a network.
    assert!(
        !install.contains("ironseed-installer: DHCP"),
        "{tag}: no DHCP offline"
    );
    // The stick is excluded even though `min_size_gb: 0` matches it: the blank disk was chosen.
    assert!(
        install.contains("ironseed: install disk /dev/vda"),
        "{tag}: the blank disk is the target"
    );
    if node.fw == Firmware::Uefi {
        // The stick's shim → GRUB → the installer's signed kernel.
        assert_secure_boot(&install, node.secure_boot, &format!("{tag}: installer"));
    }

    let (mut vm, serial, _) = start_vm(dir, node, &stick, false);
    wait(
        &mut vm,
        &serial,
        tag,
        started,
        &format!("ironseed: {n} finished first boot"),
    );
    vm.stop();
    eprintln!(
        "timing: {tag:<10} {:>6.1} s  install + first boot",
        started.elapsed().as_secs_f64()
    );
    let text = clean(&std::fs::read(&serial).unwrap());
    assert!(
        !text.contains("ironseed-installer"),
        "{tag}: the installed disk boots, the stick left in second is not booted again"
    );
    if node.fw == Firmware::Uefi {
        // The installed disk's shim → GRUB → Debian's signed kernel.
        assert_secure_boot(&text, node.secure_boot, &format!("{tag}: installed system"));
    }
    let image_sha = std::fs::read_to_string(artifacts.join("images/debian-12.raw.zst.sha256"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        install.contains(&format!("sha256 {image_sha}")),
        "{tag}: installed with the verified sha256"
    );
    let s = summary(&text, n);
    let cfg = std::fs::read(bundle.join(format!("nodes/{n}/k3s/config.yaml"))).unwrap();
    assert_eq!(s["hostname"], n, "{s:?}");
    assert!(
        s["addresses"]
            .split(' ')
            .any(|a| a == format!("{}/24", node.ip)),
        "{tag}: static address from network-config: {s:?}"
    );
    assert_eq!(
        s["k3s-config-sha256"],
        sha256_hex(&cfg),
        "{tag}: k3s config in place"
    );
    assert_seed_on_disk(&disk, bundle, n);
    assert_eq!(
        sha256_hex(&std::fs::read(&stick).unwrap()),
        stick_sha,
        "{tag}: the stick is never written"
    );
}

/// Golden image and installer environment, built once for both tests of this file (they run on
/// parallel threads and share one cache folder).
fn shared_artifacts() -> PathBuf {
    static ARTIFACTS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ARTIFACTS.get_or_init(artifacts).clone()
}

/// The first boot runs, from the image's own packages, what a kernel or boot loader upgrade
/// runs: grub2-common's kernel hook (`update-grub`) and grub-efi-amd64's and shim-signed's
/// postinst (`grub-install --force-extra-removable --no-nvram`, the image's debconf answers),
/// then reboots into what they wrote. `bootcmd` runs on every boot, `runcmd` on the first.
const SB_USER_DATA: &str = r#"#cloud-config
bootcmd:
  - [sh, -c, 'echo "sbi-boot: $(mokutil --sb-state)" > /dev/ttyS0']
runcmd:
  - [sh, -c, 'echo "sbi-esp: $(findmnt -no FSTYPE /boot/efi)" > /dev/ttyS0']
  - [sh, -c, 'update-grub > /dev/ttyS0 2>&1; echo "sbi-hook: update-grub=$?" > /dev/ttyS0']
  - [sh, -c, 'grub-install --target=x86_64-efi --force-extra-removable --no-nvram > /dev/ttyS0 2>&1; echo "sbi-hook: grub-install=$?" > /dev/ttyS0']
  - [sh, -c, 'grep -q "^### BEGIN /etc/grub.d/10_linux" /boot/grub/grub.cfg && echo "sbi-hook: grub.cfg regenerated" > /dev/ttyS0']
power_state:
  mode: reboot
"#;

/// Item 2 of issue 16: the golden image, as the VM's disk with a NoCloud seed in its `cidata`
/// slot, boots under Secure Boot enforced by the firmware (Microsoft's keys only): shim (signed
/// by Microsoft) → Debian's signed GRUB → Debian's signed kernel, which reports Secure Boot on.
/// An unsigned loader or kernel anywhere in the chain stops the boot before any marker. Then
/// Debian's hooks rewrite /boot/grub/grub.cfg and the ESP's loaders, and the node boots again
/// through them with Secure Boot on: kernel upgrades keep the node bootable.
#[test]
fn the_golden_image_boots_with_secure_boot_on_before_and_after_debians_boot_loader_hooks() {
    let name =
        "the_golden_image_boots_with_secure_boot_on_before_and_after_debians_boot_loader_hooks";
    if !uefi_wanted(name) || !capable(name, true) {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("vm_offline-sbi-")
        .tempdir()
        .unwrap();
    let (dir, _tmp_guard) = lab_dir(tmp);
    let artifacts = shared_artifacts();
    let disk = dir.join("golden.raw");
    run(Command::new("zstd")
        .args(["-d", "-q", "-f", "--sparse"])
        .arg(artifacts.join("images/debian-12.raw.zst"))
        .arg("-o")
        .arg(&disk));
    let seed = images::cidata::build(
        &[
            ("user-data", SB_USER_DATA.as_bytes()),
            (
                "meta-data",
                b"instance-id: sbi-golden-1\nlocal-hostname: sbi-golden\n",
            ),
            ("network-config", b"version: 2\nethernets: {}\n"),
        ],
        0x5b10_0001,
        images::cidata::DEFAULT_SIZE,
    )
    .unwrap();
    let esp = {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let parts = images::gpt::partitions(&mut f).unwrap();
        let slot = parts.iter().find(|p| p.name == "cidata").unwrap();
        assert!(seed.len() as u64 <= slot.len);
        f.seek(SeekFrom::Start(slot.first_byte)).unwrap();
        f.write_all(&seed).unwrap();
        f.sync_all().unwrap();
        parts.into_iter().find(|p| p.name == "esp").unwrap()
    };
    let before = esp_files(&disk, &esp);
    for f in [
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/GRUBX64.EFI",
        "EFI/BOOT/MMX64.EFI",
        "EFI/DEBIAN/GRUB.CFG",
    ] {
        assert!(
            before.contains_key(f),
            "{f} on the image's ESP: {:?}",
            before.keys()
        );
    }
    assert!(
        !before.contains_key("EFI/BOOT/FBX64.EFI"),
        "no fallback: shim would write NVRAM entries"
    );

    let vars = dir.join("sbi.vars.fd");
    std::fs::copy(OVMF_VARS_MS, &vars).unwrap();
    // One qemu per boot, the same disk and NVRAM: the guest's reboot ends the first
    // (`-no-reboot`) and the second starts cold, as vm_offline's two runs do (a warm reset of
    // the SMM Secure Boot firmware under TCG hung here after BdsDxe, before shim printed anything).
    let boot = |phase: &str| -> (Proc, PathBuf) {
        let serial = dir.join(format!("sbi-{phase}.serial"));
        let mut cmd = Command::new("qemu-system-x86_64");
        firmware_args(&mut cmd, Firmware::Uefi, true, &vars);
        cmd.args(["-m", "1024", "-smp", "2", "-nographic", "-monitor", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-nic", "none"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0,cache=unsafe",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("sbi-{phase}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("sbi-{phase}.err"))).unwrap());
        let vm = Proc::new("qemu", cmd.spawn().expect("spawning qemu-system-x86_64"));
        (vm, serial)
    };
    let started = Instant::now();
    let (mut vm, serial) = boot("first");
    for marker in [
        "secureboot: Secure boot enabled",
        "sbi-boot: SecureBoot enabled",
        "sbi-hook: grub.cfg regenerated",
    ] {
        wait(&mut vm, &serial, "sbi-golden", started, marker);
    }
    // cloud-init's power_state reboot, after the first boot's final stage.
    wait_exit(&mut vm, &serial, "sbi-golden", started);
    let text = clean(&std::fs::read(&serial).unwrap());
    // The second boot, through the regenerated grub.cfg and the reinstalled loaders.
    let (mut vm, serial2) = boot("second");
    for marker in [
        "secureboot: Secure boot enabled",
        "sbi-boot: SecureBoot enabled",
    ] {
        wait(&mut vm, &serial2, "sbi-golden", started, marker);
    }
    vm.stop();
    for want in [
        "sbi-esp: vfat",
        "sbi-hook: update-grub=0",
        "sbi-hook: grub-install=0",
        "Found linux image: /boot/vmlinuz-",
    ] {
        assert!(
            text.contains(want),
            "sbi-golden: no {want:?} on the console"
        );
    }
    let after = esp_files(&disk, &esp);
    let names: Vec<&String> = after.keys().collect();
    eprintln!("sbi-golden: ESP after grub-install: {names:?}");
    // grub-install wrote Debian's own folder, and the removable path the firmware boots got
    // the same shim and GRUB (--force-extra-removable from the image's debconf answers).
    for (debian, removable) in [
        ("EFI/DEBIAN/SHIMX64.EFI", "EFI/BOOT/BOOTX64.EFI"),
        ("EFI/DEBIAN/GRUBX64.EFI", "EFI/BOOT/GRUBX64.EFI"),
    ] {
        let (Some(d), Some(r)) = (after.get(debian), after.get(removable)) else {
            panic!("{debian} and {removable} on the ESP after grub-install: {names:?}");
        };
        assert!(d == r, "{removable} is grub-install's {debian}");
    }
    let chain = String::from_utf8_lossy(&after["EFI/DEBIAN/GRUB.CFG"]).into_owned();
    assert!(
        chain.contains(images::golden::layout::IDS.root_fs_uuid),
        "grub-install's EFI/debian/grub.cfg finds the image's root: {chain}"
    );
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}

/// Every file on the ESP (partition `esp` of the raw disk `disk`), upper-case path → bytes.
fn esp_files(
    disk: &Path,
    esp: &images::gpt::Partition,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(esp.first_byte)).unwrap();
    let mut vol = vec![0u8; esp.len as usize];
    f.read_exact(&mut vol).unwrap();
    let fs = fatfs::FileSystem::new(std::io::Cursor::new(vol), fatfs::FsOptions::new()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![(fs.root_dir(), String::new())];
    while let Some((d, at)) = stack.pop() {
        for e in d.iter() {
            let e = e.unwrap();
            // FAT names are case-insensitive, and mtools and the kernel store case differently.
            let name = e.file_name().to_ascii_uppercase();
            if name == "." || name == ".." {
                continue;
            }
            let path = if at.is_empty() {
                name
            } else {
                format!("{at}/{name}")
            };
            if e.is_dir() {
                stack.push((e.to_dir(), path));
            } else {
                let mut b = Vec::new();
                e.to_file().read_to_end(&mut b).unwrap();
                out.insert(path, b);
            }
        }
    }
    out
}
