//! `builder lab fail`, `lab drill --history` and `lab apply` as an operator runs them, on a lab
//! folder without VMs (a lab.json whose VMs are not running). The whole drill against real VMs:
//! pxe/tests/vm_lab.rs.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use builder::inventory::DEFAULT_INVENTORY;
use builder::lab::drill::{self, DrillRecord, FailureKind, Measured, Outcome, Phases};
use builder::lab::state::{Accel, LAB_STATE_VERSION, LabState, LabVm};
use common::{builder_cmd, ci, stderr as err, stdout as out};

fn builder(args: &[&str], cwd: &Path) -> Output {
    builder_cmd(args).current_dir(cwd).output().unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A lab folder as `lab up` leaves it, minus the processes: lab.yaml (the seed homelab),
/// its bundle, and lab.json naming `k3s1`'s install disk `disk`.
fn lab(disk: Option<PathBuf>) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::write(dir.join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    let o = builder(&["render", "-i", "lab.yaml", "-o", "bundle"], dir);
    assert!(o.status.success(), "{}", err(&o));
    let disk = disk.unwrap_or_else(|| dir.join("k3s1-install.raw"));
    let mut nodes = BTreeMap::new();
    nodes.insert(
        "k3s1".to_string(),
        LabVm {
            mac: "52:54:00:20:00:21".into(),
            tap: "isltap0".into(),
            disks: vec![disk],
            serial: dir.join("k3s1.serial"),
            qmp: dir.join("k3s1.qmp"),
            argv: vec![
                "-device".into(),
                "e1000e,netdev=n0,mac=52:54:00:20:00:21,bootindex=2".into(),
            ],
            pxe_once: false,
            qemu: None,
            user_disks: vec![],
        },
    );
    LabState {
        version: LAB_STATE_VERSION,
        inventory: dir.join("lab.yaml"),
        bundle: dir.join("bundle"),
        netns: "isldrilltest".into(),
        bridge: "islbr0".into(),
        server_ip: Ipv4Addr::new(10, 0, 20, 5),
        http_port: 8080,
        api_token_file: dir.join("api-token"),
        accel: Accel::Tcg,
        pxe: None,
        helpers: BTreeMap::new(),
        nodes,
    }
    .save(dir)
    .unwrap();
    d
}

/// A disk that already holds data.
fn disk_with_data(p: &Path) {
    std::fs::write(p, vec![0xa5u8; 3 << 20]).unwrap();
}

/// Protects the wipe's bounds end to end: the listed install disk inside the folder becomes a
/// blank disk of the same size, the failure is logged owner-only; a lab.json pointing outside
/// the folder is refused and that file keeps its data.
#[test]
fn lab_fail_disk_wipes_the_listed_install_disk_only() {
    if !is_root() && !ci::skip("builder lab fail needs root") {
        return;
    }
    let d = lab(None);
    let disk = d.path().join("k3s1-install.raw");
    disk_with_data(&disk);
    let o = builder(&["lab", "fail", "k3s1", "--disk", "--dir", "."], d.path());
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("install disk wiped"), "{}", out(&o));
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(back.len(), 3 << 20);
    assert!(back.iter().all(|b| *b == 0));
    let log = d.path().join("failures.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"kind\":\"disk\""), "{text}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("precious.raw");
    disk_with_data(&victim);
    let d = lab(Some(victim.clone()));
    let o = builder(&["lab", "fail", "k3s1", "--disk", "--dir", "."], d.path());
    assert!(!o.status.success());
    assert!(err(&o).contains("not inside the lab folder"), "{}", err(&o));
    assert!(std::fs::read(&victim).unwrap().iter().all(|b| *b == 0xa5));
    assert!(!d.path().join("failures.jsonl").exists());
}

/// Protects the operator's real inventory: a --nic drill ends in `rebuild --mac`, which edits
/// the inventory in place, so a lab running an inventory outside its folder is refused, before
/// the plug is pulled.
#[test]
fn lab_fail_nic_refuses_an_inventory_outside_the_lab_and_swaps_the_mac_inside() {
    if !is_root() && !ci::skip("builder lab fail needs root") {
        return;
    }
    let d = lab(None);
    let mut s = LabState::load(d.path()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    s.inventory = elsewhere.path().join("rack.yaml");
    std::fs::write(&s.inventory, DEFAULT_INVENTORY).unwrap();
    s.save(d.path()).unwrap();
    let o = builder(&["lab", "fail", "k3s1", "--nic", "--dir", "."], d.path());
    assert!(!o.status.success());
    assert!(err(&o).contains("made-up MAC"), "{}", err(&o));
    assert_eq!(
        LabState::load(d.path()).unwrap().nodes["k3s1"].mac,
        "52:54:00:20:00:21"
    );

    let d = lab(None);
    let o = builder(&["lab", "fail", "k3s1", "--nic", "--dir", "."], d.path());
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let vm = LabState::load(d.path()).unwrap().nodes["k3s1"].clone();
    assert_ne!(vm.mac, "52:54:00:20:00:21");
    assert!(vm.mac.starts_with("52:54:00:"));
    assert!(
        vm.argv[1].contains(&format!("mac={}", vm.mac)),
        "{:?}",
        vm.argv
    );
    assert!(
        out(&o).contains(&format!("builder rebuild k3s1 --mac {}", vm.mac)),
        "{}",
        out(&o)
    );
}

#[test]
fn lab_fail_wants_exactly_one_failure() {
    let d = tempfile::tempdir().unwrap();
    let o = builder(&["lab", "fail", "k3s1", "--disk", "--power"], d.path());
    assert!(!o.status.success());
}

fn record(node: &str, start: u64, secs: u64) -> DrillRecord {
    let m = Measured {
        phases: Phases {
            armed_ms: Some(start + 2_000),
            netboot_ms: Some(start + 30_000),
            installing_ms: Some(start + 60_000),
            installed_ms: Some(start + 200_000),
            booted_ms: Some(start + secs * 1000),
        },
        outcome: Some(Outcome::Booted),
        detail: None,
    };
    DrillRecord::new(node, FailureKind::Disk, start, &m, false, Accel::Tcg)
}

/// A drill killed while writing leaves half a line: --history shows the rest and warns.
#[test]
fn drill_history_prints_the_table_and_survives_a_truncated_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(drill::DRILLS_FILE);
    drill::append(&p, &record("lab-agent", 1_000, 400)).unwrap();
    drill::append(&p, &record("lab-agent", 9_000_000, 600)).unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"node\":\"lab-ag").unwrap();
    let o = builder(&["lab", "drill", "--history", "--dir", "."], d.path());
    assert!(o.status.success(), "{}", err(&o));
    let t = out(&o);
    let row = t.lines().find(|l| l.starts_with("lab-agent")).unwrap();
    assert!(row.contains("disk") && row.contains("tcg"), "{t}");
    assert!(row.contains("8m20s"), "median of 400 s and 600 s: {t}");
    assert!(row.contains("10m00s"), "max: {t}");
    assert!(err(&o).contains("truncated last record"), "{}", err(&o));
    // No history yet.
    let e = tempfile::tempdir().unwrap();
    let o = builder(&["lab", "drill", "--history", "--dir", "."], e.path());
    assert!(o.status.success());
    assert!(out(&o).contains("no drills recorded"));
}

/// `lab apply` without --yes: the plan (dangers, nodes in cluster order with why), nothing
/// written.
#[test]
fn lab_apply_shows_the_plan_and_changes_nothing_without_yes() {
    let d = lab(None);
    let changed = DEFAULT_INVENTORY.replace("10.42.0.0/16", "10.44.0.0/16");
    assert_ne!(changed, DEFAULT_INVENTORY, "the seed names its pod CIDR");
    std::fs::write(d.path().join("changed.yaml"), &changed).unwrap();
    // The lab was rendered with lab.secrets.yaml; the changed inventory keeps that token.
    let before = builder::bundle::read(&d.path().join("bundle")).unwrap();
    let o = builder(
        &["lab", "apply", "-i", "changed.yaml", "--dir", "."],
        d.path(),
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let t = out(&o);
    assert!(t.contains("DANGEROUS"), "{t}");
    assert!(
        t.contains("cluster-cidr changes from 10.42.0.0/16 to 10.44.0.0/16"),
        "{t}"
    );
    assert!(t.contains("1. k3s-master1 (dangerous"), "{t}");
    assert!(t.contains("run again with --yes"), "{t}");
    assert_eq!(
        builder::bundle::read(&d.path().join("bundle")).unwrap(),
        before
    );
    assert_eq!(
        LabState::load(d.path()).unwrap().inventory,
        d.path().join("lab.yaml"),
        "the lab still runs its old inventory"
    );
    // The same inventory: nothing to apply.
    let o = builder(&["lab", "apply", "--dir", "."], d.path());
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("nothing to apply"), "{}", out(&o));
}
