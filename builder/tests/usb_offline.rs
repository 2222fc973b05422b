//! The offline installer stick without a VM: `builder usb image` on a stand-in golden image
//! (the real layout, written by sfdisk: ESP, `cidata` slot, patterned root), then the installer's offline
//! flow (`images::install::run_offline`) with regular files standing in for the stick and the
//! node's disk. Both "disks" match the profile's install selector: the stick must be excluded
//! all the same. The VM proof (real firmware, real installer, real cloud-init) is
//! pxe/tests/vm_offline.rs.

mod common;
#[path = "../../images/tests/support/golden.rs"]
mod golden;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use images::disk::{Disk, Selector};
use sha2::Digest;

const MIB: usize = 1 << 20;
const NODE: &str = "k3s2";

fn tools_present() -> bool {
    let ok = ["sfdisk", "mkfs.vfat", "mcopy", "syslinux"]
        .iter()
        .all(|t| {
            Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        && [
            "/usr/lib/syslinux/mbr/gptmbr.bin",
            "/usr/lib/shim/shimx64.efi.signed",
            "/usr/lib/shim/mmx64.efi.signed",
            "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
        ]
        .iter()
        .all(|f| Path::new(f).exists());
    common::ci::require(
        ok,
        "needs sfdisk, mkfs.vfat, mtools, syslinux, syslinux-common, shim-signed, \
         grub-efi-amd64-signed (tests/packages.txt)",
    )
}

use images::bundle::hex;

fn builder(args: &[&str], cwd: &Path) {
    let o = common::builder_cmd(args).current_dir(cwd).output().unwrap();
    assert!(
        o.status.success(),
        "builder {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A disk that `sel` matches (every attribute it sets, the smallest size it allows).
fn matching(path: &Path, sel: &Selector) -> Disk {
    Disk {
        name: path.file_name().unwrap().to_string_lossy().into(),
        path: path.display().to_string(),
        model: sel.model.clone(),
        model_note: None,
        serial: sel.serial.clone(),
        wwn: sel.wwn.clone(),
        size: sel.min_size_gb.unwrap_or(1).max(1) * 1_000_000_000,
        rotational: sel.rotational.unwrap_or(false),
        removable: false,
        read_only: false,
        mounts: vec![],
        by_path: sel.by_path.iter().cloned().collect(),
        by_id: sel.by_id.iter().cloned().collect(),
    }
}

struct Files {
    disks: Vec<Disk>,
}

impl images::install::Machine for Files {
    fn disks(&self) -> io::Result<Vec<Disk>> {
        Ok(self.disks.clone())
    }
    fn open(&self, d: &Disk) -> io::Result<File> {
        File::options().read(true).write(true).open(&d.path)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    stick: PathBuf,
    target: PathBuf,
    img: golden::Golden,
    packed_sha: String,
    machine: Files,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let art = d.join("artifacts");
    std::fs::create_dir_all(art.join("images")).unwrap();
    std::fs::create_dir_all(art.join("installer")).unwrap();
    let img = golden::golden_image(d, true);
    let packed = zstd::encode_all(&img.bytes[..], 3).unwrap();
    let packed_sha = hex(&sha2::Sha256::digest(&packed));
    std::fs::write(art.join("images/debian-12.raw.zst"), &packed).unwrap();
    std::fs::write(
        art.join("images/debian-12.raw.zst.sha256"),
        format!("{packed_sha}  debian-12.raw.zst\n"),
    )
    .unwrap();
    // Boot files are only carried, never run, here.
    std::fs::write(art.join("installer/vmlinuz"), vec![0x4b; 300_000]).unwrap();
    std::fs::write(art.join("installer/initrd.img"), vec![0x1d; 200_000]).unwrap();
    let bundle = d.join("bundle");
    let secrets = d.join("s.yaml");
    let (b, s) = (bundle.to_str().unwrap(), secrets.to_str().unwrap());
    builder(&["render", "-o", b, "--secrets", s], d);
    let stick = d.join("stick.img");
    let a = art.to_str().unwrap();
    let st = stick.to_str().unwrap();
    builder(
        &[
            "usb",
            "image",
            NODE,
            "--out",
            st,
            "--artifacts",
            a,
            "--bundle",
            b,
        ],
        d,
    );
    // The same image when rendered in memory from the inventory and the same secrets.
    let again = d.join("again.img");
    let ag = again.to_str().unwrap();
    builder(
        &[
            "usb",
            "image",
            NODE,
            "-o",
            ag,
            "--artifacts",
            a,
            "--secrets",
            s,
        ],
        d,
    );
    assert!(
        std::fs::read(&stick).unwrap() == std::fs::read(&again).unwrap(),
        "byte-identical: --bundle and a render in memory, and run to run"
    );
    std::fs::remove_file(&again).unwrap();

    let plan = images::install::find_stick(&Files {
        disks: vec![matching(&stick, &Selector::default())],
    })
    .unwrap()
    .plan()
    .unwrap();
    assert_eq!(plan.hostname, NODE);
    assert!(plan.report.is_empty(), "no appliance offline");
    assert_eq!(plan.image.sha256.as_deref(), Some(packed_sha.as_str()));
    assert_eq!(plan.image.size, Some(packed.len() as u64));
    // A node disk with an old system on it.
    let target = d.join("sda");
    std::fs::write(&target, vec![0xAAu8; 12 * MIB]).unwrap();
    // Both match the selector: only the explicit exclusion keeps the stick safe.
    let machine = Files {
        disks: vec![
            matching(&stick, &plan.install_disk),
            matching(&target, &plan.install_disk),
        ],
    };
    Setup {
        _dir: dir,
        bundle,
        stick,
        target,
        img,
        packed_sha,
        machine,
    }
}

#[test]
fn the_stick_installs_its_node_offline_and_is_never_a_target() {
    if !tools_present() {
        return;
    }
    let s = setup();
    let stick_before = std::fs::read(&s.stick).unwrap();
    let mut lines = Vec::new();
    let done = images::install::run_offline(&s.machine, Duration::ZERO, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lines.join("\n")));
    let log = lines.join("\n");
    assert_eq!(done.disk, s.target.display().to_string(), "{log}");
    assert_eq!(done.sha256, s.packed_sha);
    assert!(
        log.contains(&format!("ironseed: installed {NODE} on")),
        "{log}"
    );
    assert!(
        std::fs::read(&s.stick).unwrap() == stick_before,
        "the stick is unchanged"
    );

    let got = std::fs::read(&s.target).unwrap();
    // The golden image's real layout: ESP p1 at 1 MiB, the seed slot p2 at 2 MiB, root p3 last,
    // grown over the 12 MiB disk up to its backup GPT (33 sectors).
    let mut f = File::open(&s.target).unwrap();
    let parts = images::gpt::partitions(&mut f).unwrap();
    let at: Vec<(usize, &str, usize, usize)> = parts
        .iter()
        .map(|p| {
            let (first, len) = (p.first_byte as usize, p.len as usize);
            (p.index, p.name.as_str(), first, len)
        })
        .collect();
    assert_eq!(
        at,
        [
            (1, "esp", MIB, MIB),
            (2, "cidata", 2 * MIB, MIB),
            (3, "root", 3 * MIB, 12 * MIB - 3 * MIB - 33 * 512),
        ]
    );
    let slot = s.img.cidata();
    assert_eq!(slot, 2 * MIB..3 * MIB);
    // The ESP and the root partition as in the image, the root up to the old backup GPT (zeroed
    // when the partition grew to the disk).
    let img = &s.img.bytes;
    assert!(
        got[34 * 512..slot.start] == img[34 * 512..slot.start],
        "ESP"
    );
    let end = img.len() - 33 * 512;
    assert!(got[slot.end..end] == img[slot.end..end], "root partition");
    let (label, files) = images::cidata::read(&got[slot]).unwrap();
    assert_eq!(label, "CIDATA");
    assert_eq!(files.len(), 3, "user-data, meta-data, network-config");
    for (name, b) in files {
        let want = std::fs::read(s.bundle.join(format!("nodes/{NODE}/{name}"))).unwrap();
        assert!(b == want, "{name} is the bundle's");
    }
}

#[test]
fn a_corrupt_image_on_the_stick_fails_and_leaves_the_disk_unbootable() {
    if !tools_present() {
        return;
    }
    let s = setup();
    // Flip one byte of the image partition (p2 starts after the ESP).
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(&s.stick)
        .unwrap();
    let p = images::gpt::partitions(&mut f).unwrap();
    let image = p.iter().find(|p| p.name == "ironseed-image").unwrap();
    let at = image.first_byte + 4096;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
    drop(f);
    let mut lines = Vec::new();
    let e = images::install::run_offline(&s.machine, Duration::ZERO, &mut |l| {
        lines.push(l.to_string())
    })
    .err()
    .expect("must fail");
    assert!(
        e.to_string().contains("checksum mismatch") || e.to_string().contains("reading the image"),
        "{e}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("ironseed: FAILED:")),
        "{lines:?}"
    );
    let got = std::fs::read(&s.target).unwrap();
    assert!(got[..MIB].iter().all(|b| *b == 0), "first MiB zeroed");
}

#[test]
fn without_a_stick_the_offline_installer_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("sda");
    std::fs::write(&disk, vec![0u8; MIB]).unwrap();
    let m = Files {
        disks: vec![matching(&disk, &Selector::default())],
    };
    let e = images::install::run_offline(&m, Duration::ZERO, &mut |_| {})
        .err()
        .expect("no stick");
    assert!(e.to_string().contains("no installer stick"), "{e}");
}
