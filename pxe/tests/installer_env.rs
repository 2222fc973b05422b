//! The installer environment as `builder images installer` builds it (Debian's kernel package
//! by apt, the firmware packages from non-free-firmware by apt, the static `installer`): its
//! initramfs, read back as the kernel will unpack it, holds the drivers of the named hardware
//! (docs/hardware.md) and the firmware files bnx2x and r8169 load, and `--no-nonfree` holds
//! the drivers but no firmware.
//!
//! Needs apt lists that know `linux-image-amd64` and Debian's archive (network); the build's
//! scratch and output go under `IRONSEED_E2E_CACHE` (default /var/cache/ironseed-e2e).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use images::initramfs::cpio;
use support::vm::{builder_bin, cache_dir, static_installer};

fn can_fetch_the_kernel() -> bool {
    Command::new("apt-cache")
        .args(["show", "linux-image-amd64"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// `builder images installer [extra]` into `art`; the initramfs entries and builder's stderr.
fn build(art: &Path, extra: &[&str]) -> (Vec<cpio::ReadEntry>, String) {
    let out = Command::new(builder_bin())
        .args(["images", "installer", "--artifacts"])
        .arg(art)
        .arg("--installer-bin")
        .arg(static_installer())
        .arg("--work")
        .arg(cache_dir().join("work-installer-env"))
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "builder images installer: {err}");
    let initrd = std::fs::read(art.join("installer/initrd.img")).unwrap();
    let cpio_bytes = zstd::decode_all(&initrd[..]).unwrap();
    (cpio::read(&cpio_bytes).unwrap(), err)
}

fn files(entries: &[cpio::ReadEntry]) -> BTreeSet<&str> {
    entries
        .iter()
        .filter(|e| e.is_file())
        .map(|e| e.path.as_str())
        .collect()
}

#[test]
fn the_initramfs_has_the_named_hardwares_drivers_and_their_firmware() {
    if !support::ci::require(
        can_fetch_the_kernel(),
        "apt knows no linux-image-amd64 here (apt-get update, and Debian's archive reachable)",
    ) {
        return;
    }
    std::fs::create_dir_all(cache_dir()).unwrap();
    let dir = tempfile::tempdir_in(cache_dir()).unwrap();
    let art = dir.path().join("with");
    let (entries, log) = build(&art, &[]);
    let f = files(&entries);
    for m in [
        "mpt3sas",
        "i40e",
        "bnxt_en",
        "r8169",
        "realtek",
        "bnx2x",
        "tg3",
        "megaraid_sas",
        "e1000e",
        "nvme",
    ] {
        assert!(
            f.contains(format!("lib/modules/{m}.ko").as_str()),
            "module {m} missing; have: {f:?}"
        );
    }
    let order = entries
        .iter()
        .find(|e| e.path == "etc/modules.order")
        .map(|e| String::from_utf8_lossy(&e.data).into_owned())
        .unwrap();
    let pos = |m: &str| order.lines().position(|l| l == format!("{m}.ko")).unwrap();
    assert!(
        pos("realtek") < pos("r8169"),
        "the PHY driver loads first:\n{order}"
    );
    let fw: Vec<&str> = f
        .iter()
        .copied()
        .filter(|p| p.starts_with("lib/firmware/"))
        .collect();
    // bookworm's 6.1 bnx2x asks for e1, e1h and e2 firmware of one version; r8169 for rtl_nic/.
    for prefix in [
        "lib/firmware/bnx2x/bnx2x-e1-",
        "lib/firmware/bnx2x/bnx2x-e1h-",
        "lib/firmware/bnx2x/bnx2x-e2-",
        "lib/firmware/rtl_nic/rtl8168h-2",
        "lib/firmware/rtl_nic/rtl8125",
    ] {
        assert!(
            fw.iter().any(|p| p.starts_with(prefix)),
            "no {prefix}* in {fw:?}"
        );
    }
    // Firmware of modules not packed (a whole firmware-realtek would carry rtlwifi/ too) stays out.
    assert!(
        !fw.iter().any(|p| p.starts_with("lib/firmware/rtlwifi/")),
        "{fw:?}"
    );
    let with_size = std::fs::metadata(art.join("installer/initrd.img"))
        .unwrap()
        .len();
    eprintln!("{log}");

    let bare = dir.path().join("without");
    let (entries, log) = build(&bare, &["--no-nonfree"]);
    let f = files(&entries);
    assert!(f.contains("lib/modules/bnx2x.ko"), "drivers still packed");
    assert!(
        !f.iter().any(|p| p.starts_with("lib/firmware/")),
        "--no-nonfree packs no firmware"
    );
    assert!(
        log.contains("bnx2x"),
        "--no-nonfree says what will not work: {log}"
    );
    let without_size = std::fs::metadata(bare.join("installer/initrd.img"))
        .unwrap()
        .len();
    eprintln!("initrd.img: {with_size} bytes with firmware, {without_size} without");
}
