//! The installer's flow (images::install) against the real `pxe serve` on loopback, with a
//! regular file standing in for the node's disk: plan, disk selection, verified image stream,
//! progress reports, the seed dropped into the image's `cidata` partition, and `installed`.

mod support;

#[path = "../../images/tests/support/golden.rs"]
mod golden;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::Command;

use images::disk::Disk;
use support::serve::{self, Server, lab};

const MIB: u64 = 1 << 20;

struct FileDisk {
    path: PathBuf,
    by_path: String,
    kernel_log: String,
}

impl images::install::Machine for FileDisk {
    fn disks(&self) -> io::Result<Vec<Disk>> {
        Ok(vec![Disk {
            name: "nvme0n1".into(),
            path: self.path.display().to_string(),
            model: Some("Samsung SSD 980".into()),
            model_note: None,
            serial: Some("S1".into()),
            wwn: None,
            size: 256_000_000_000,
            rotational: false,
            removable: false,
            read_only: false,
            mounts: vec![],
            by_path: vec![self.by_path.clone()],
            by_id: vec![],
        }])
    }
    fn open(&self, _: &Disk) -> io::Result<File> {
        File::options().read(true).write(true).open(&self.path)
    }
    fn kernel_log(&self) -> String {
        self.kernel_log.clone()
    }
}

fn setup(sidecar_ok: bool) -> (serve::Lab, Server, golden::Golden, PathBuf) {
    let lab = lab();
    let art = lab.dir.path().join("artifacts");
    std::fs::create_dir_all(art.join("images")).unwrap();
    // The seed slot holds junk: the installer must replace all of it.
    let img = golden::golden_image(lab.dir.path(), false);
    let packed = zstd::encode_all(&img.bytes[..], 3).unwrap();
    std::fs::write(art.join("images/debian-12.raw.zst"), &packed).unwrap();
    let sha = if sidecar_ok {
        images::bundle::files::digest(&packed)
    } else {
        "0".repeat(64)
    };
    std::fs::write(
        art.join("images/debian-12.raw.zst.sha256"),
        format!("{sha}  debian-12.raw.zst\n"),
    )
    .unwrap();
    let s = Server::start(&lab, &["--artifacts", art.to_str().unwrap()]);
    // A disk with an old system on it: nothing of it may survive.
    let disk = lab.dir.path().join("nvme0n1");
    std::fs::write(&disk, vec![0xAAu8; 10 * MIB as usize]).unwrap();
    (lab, s, img, disk)
}

/// The plan URL as the install script gives it to the installer kernel, with the appliance
/// address rewritten to this test server.
fn plan_url(lab: &serve::Lab, s: &Server, host: &str) -> String {
    // The node first PXE-boots (booting), as in real life; its script carries the secret.
    let secret = s.secret_from_boot(&lab.mac(host));
    s.url(&format!("/plan/{host}/{secret}"))
}

#[test]
fn installs_a_verified_image_with_the_seed_and_reports_installed() {
    let (lab, s, golden, disk) = setup(true);
    let img = &golden.bytes;
    // The bundle's appliance URL is the inventory.s (127.0.20.5:8080); point the node at us.
    let url = plan_url(&lab, &s, "k3s1");
    let mut plan: images::plan::InstallPlan =
        serde_json::from_str(&s.anon_get(url.trim_start_matches(&s.url(""))).1).unwrap();
    let fix = |u: &str| u.replace("http://127.0.20.5:8080", &s.url(""));
    plan.image.url = fix(&plan.image.url);
    plan.report = fix(&plan.report);
    plan.seed.user_data = fix(&plan.seed.user_data);
    plan.seed.meta_data = fix(&plan.seed.meta_data);
    plan.seed.network_config = fix(&plan.seed.network_config);
    let machine = FileDisk {
        path: disk.clone(),
        by_path: "pci-0000:02:00.0-nvme-1".into(),
        // A NIC whose firmware blob is missing, once with a terminal escape in the line.
        kernel_log: "e1000e: Intel(R) PRO/1000 Network Driver\n\
            bnx2x 0000:01:00.0: firmware: failed to load bnx2x/bnx2x-e2-7.13.21.0.fw (-2)\n\
            r8169 0000:02:00.0: firmware: failed to load \x1b[2Jrtl_nic/rtl8168h-2.fw (-2)\n"
            .into(),
    };
    let mut lines = Vec::new();
    let done = images::install::install(&plan, &machine, &mut |l| lines.push(l.to_string()))
        .expect("install");
    assert_eq!(done.written, img.len() as u64);
    // The appliance hears `installed` from run(); install() leaves that to its caller.
    assert_eq!(
        s.anon_post(
            plan.report.trim_start_matches(&s.url("")),
            &format!(r#"{{"event":"installed","sha256":"{}"}}"#, done.sha256)
        )
        .0,
        200
    );
    let n = s.node("k3s1");
    assert_eq!(n["state"], "installed");
    assert_eq!(n["installed_sha256"], done.sha256.as_str());
    let timeline: Vec<&str> = n["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert!(timeline.contains(&"installing"), "{timeline:?}");
    // The kernel's firmware load failures reach the timeline as notes, printable.
    let notes: Vec<&str> = n["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["event"] == "note")
        .map(|t| t["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        [
            "firmware: bnx2x 0000:01:00.0: firmware: failed to load bnx2x/bnx2x-e2-7.13.21.0.fw (-2)",
            "firmware: r8169 0000:02:00.0: firmware: failed to load [2Jrtl_nic/rtl8168h-2.fw (-2)",
        ]
    );

    // Disk = image everywhere but the cidata slot and the partition table, which now gives the
    // root partition the whole disk (a real disk is larger than the image; cloud-init grows the
    // filesystem on first boot). The image's own backup GPT header (its last sector) is zeroed
    // so no tool takes it for the real one; the old system's bytes beyond the image stay,
    // except the last 33 sectors: the new backup GPT.
    let got = std::fs::read(&disk).unwrap();
    // The golden image's real layout: ESP p1 at 1 MiB, the seed slot p2 at 2 MiB, root p3 last.
    let parts = images::gpt::partitions(&mut io::Cursor::new(&got)).unwrap();
    let at: Vec<(usize, &str, u64)> = parts
        .iter()
        .map(|p| (p.index, p.name.as_str(), p.first_byte))
        .collect();
    assert_eq!(
        at,
        [
            (1, "esp", MIB),
            (2, "cidata", 2 * MIB),
            (3, "root", 3 * MIB)
        ],
        "{parts:?}"
    );
    let slot = golden.cidata();
    assert_eq!(slot, (2 * MIB as usize)..(3 * MIB as usize));
    let gpt_end = 34 * 512;
    assert!(
        got[gpt_end..slot.start] == img[gpt_end..slot.start],
        "boot area and ESP"
    );
    let end = img.len() - 512;
    assert!(got[slot.end..end] == img[slot.end..end], "root partition");
    assert!(
        got[end..img.len()].iter().all(|b| *b == 0),
        "stale backup header"
    );
    assert_eq!(
        parts[2].first_byte + parts[2].len,
        got.len() as u64 - 33 * 512,
        "root grown to the end of the disk: {parts:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("partition 3 grown")),
        "the last partition, root: {lines:?}"
    );
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // The seed in the slot is the node's, readable as FAT labelled CIDATA.
    let (label, files) = images::cidata::read(&got[slot]).unwrap();
    assert_eq!(label, "CIDATA");
    assert_eq!(files.len(), 3, "user-data, meta-data, network-config");
    for (f, b) in files {
        assert_eq!(
            b,
            std::fs::read(lab.bundle.join("nodes/k3s1").join(&f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn a_bad_checksum_fails_the_install_and_leaves_the_disk_unbootable() {
    let (lab, s, _golden, disk) = setup(false);
    let url = plan_url(&lab, &s, "k3s2");
    let mut plan: images::plan::InstallPlan =
        serde_json::from_str(&s.anon_get(url.trim_start_matches(&s.url(""))).1).unwrap();
    let fix = |u: &str| u.replace("http://127.0.20.5:8080", &s.url(""));
    plan.image.url = fix(&plan.image.url);
    plan.report = fix(&plan.report);
    let machine = FileDisk {
        path: disk.clone(),
        by_path: "pci-0000:02:00.0-nvme-1".into(),
        kernel_log: String::new(),
    };
    let e = images::install::install(&plan, &machine, &mut |_| {})
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    let got = std::fs::read(&disk).unwrap();
    assert!(
        got[..MIB as usize].iter().all(|b| *b == 0),
        "first MiB zeroed: no old or new system boots"
    );
    assert_eq!(s.state("k3s2"), "installing");
}

#[test]
fn a_disk_that_matches_nothing_is_never_written() {
    let (lab, s, _img, disk) = setup(true);
    let url = plan_url(&lab, &s, "k3s1");
    let plan: images::plan::InstallPlan =
        serde_json::from_str(&s.anon_get(url.trim_start_matches(&s.url(""))).1).unwrap();
    let machine = FileDisk {
        path: disk.clone(),
        by_path: "pci-0000:03:00.0-nvme-1".into(),
        kernel_log: String::new(),
    };
    let e = images::install::install(&plan, &machine, &mut |_| {})
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("no disk matches"), "{e}");
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|b| *b == 0xAA),
        "untouched"
    );
}
