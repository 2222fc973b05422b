//! End to end, issue 18 item 1: `builder lab up` on a 3-node inventory
//! (pxe/tests/fixtures/lab/lab.yaml: a BIOS server, a UEFI agent, an R730-shaped NFS host), all
//! under TCG with `-smp 1`: every node reaches `booted` (the bootstrap server first, then the
//! agent and the NFS host in parallel: cluster order). The R730's media pool file is put into
//! the lab folder BEFORE `lab up`, holding an XFS filesystem with files (as vm_shapes makes
//! one): `lab up` uses it as it is, first boot keeps it (its `data-disk` note), and after
//! `lab down --keep` the files are still on it. `lab status` shows the nodes; `lab console`
//! shows a node's serial log; `lab down` leaves no namespace, no process (the recorded PIDs)
//! and no file of the lab behind (each checked), but keeps the pool the user put there.
//! Item 2 in the middle: `builder lab drill lab-agent --disk` wipes the agent's install disk,
//! recovers it through `builder rebuild --power --lab`, and the record in drills.jsonl has
//! every phase in order; `lab drill --history` shows it, and the history outlives `lab down`.
//!
//! Alone on this 2-core machine: see docs/lab.md ("Timings"). Needs what vm_shapes needs.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use builder::lab::state::LabState;
use builder::vmshape::{self, Role};
use support::vm::*;

const NAS: &str = "lab-nas";
const NODES: [&str; 3] = ["lab-server", "lab-agent", NAS];

fn builder(args: &[&str], dir: &Path) -> Output {
    let t = Instant::now();
    let o = Command::new(builder_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    eprintln!(
        "timing: builder {} {:>6.1} s",
        args.join(" "),
        t.elapsed().as_secs_f64()
    );
    o
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `lab down` whatever happens to the test (a failed assert must not leave VMs running).
struct Down(PathBuf);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(builder_bin())
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .output();
    }
}

/// The table line of `node`.
fn row<'a>(table: &'a str, node: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{node} ")))
        .unwrap_or_else(|| panic!("no row for {node} in:\n{table}"))
}

#[test]
fn lab_up_boots_three_shaped_nodes_keeps_the_pool_and_down_leaves_nothing() {
    let name = "lab_up_boots_three_shaped_nodes_keeps_the_pool_and_down_leaves_nothing";
    if !capable(name) || !uefi_wanted(name) {
        return;
    }
    if !Path::new("/usr/sbin/debootstrap").exists() {
        support::ci::skip(&format!(
            "{name}: missing debootstrap (and the image tools of tests/packages.txt)"
        ));
        return;
    }
    for bin in ["mkfs.xfs", "xfs_db"] {
        if !support::require_bin(bin) {
            return;
        }
    }
    let t0 = Instant::now();
    let artifacts = artifacts();
    support::ensure_service_user();
    let (dir, _guard) = lab_dir(
        tempfile::Builder::new()
            .prefix("vm_lab-")
            .tempdir()
            .unwrap(),
    );
    // The inventory with its hardware profiles and secrets, as an operator keeps them.
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let inv = dir.join("inv");
    std::fs::create_dir_all(inv.join("hardware")).unwrap();
    std::fs::copy(fx.join("lab/lab.yaml"), inv.join("lab.yaml")).unwrap();
    for p in ["qemu-bios.yaml", "qemu-uefi.yaml"] {
        std::fs::copy(fx.join("hardware").join(p), inv.join("hardware").join(p)).unwrap();
    }
    std::fs::copy(fx.join("vmlab.secrets.yaml"), inv.join("lab.secrets.yaml")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        inv.join("lab.secrets.yaml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // The NFS host's pool, put into the lab folder before `lab up`, holding data.
    let lab = dir.join("lab");
    std::fs::create_dir_all(&lab).unwrap();
    let mut d = builder::diag::Diagnostics::default();
    let set = builder::inventory::ProfileSet::load(&[], &mut d);
    let shape = vmshape::shape(
        set.get("r730").unwrap(),
        images::bundle::Mac::parse_nic("52:54:00:87:07:30").unwrap(),
        Some(1024),
    )
    .with_file_prefix(NAS);
    let pool_disk = shape.disk(&Role::Data("media".into())).unwrap().clone();
    let pool = lab.join(&pool_disk.file);
    let uuid = make_xfs_pool(&dir, &pool, pool_disk.size);

    let _down = Down(lab.clone());
    let art = artifacts.display().to_string();
    let labs = lab.display().to_string();
    let t = Instant::now();
    let up = builder(
        &[
            "lab",
            "up",
            "-i",
            "inv/lab.yaml",
            "--dir",
            &labs,
            "--accel",
            "tcg",
            "--images",
            &art,
            "--pxe",
            env!("CARGO_BIN_EXE_pxe"),
            "--timeout",
            "40",
        ],
        &dir,
    );
    let up_text = text(&up);
    eprintln!("{up_text}");
    eprintln!("timing: lab up {:>6.1} s", t.elapsed().as_secs_f64());
    assert!(up.status.success(), "lab up failed:\n{up_text}");
    assert!(
        up_text.contains(&format!("{NAS}: using {} as it is", pool.display())),
        "lab up says it uses the pool as it is"
    );
    for n in NODES {
        let r = row(&up_text, n);
        assert!(r.contains(" running ") && r.contains(" booted "), "{r}");
    }
    // Cluster order: the bootstrap server booted before the others were powered on.
    let booted = up_text.find("lab-server: booted after").unwrap();
    let agents = up_text.find("== agents and nfs ==").unwrap();
    assert!(booted < agents, "bootstrap server first:\n{up_text}");

    let state = LabState::load(&lab).unwrap();
    let mut procs = vec![state.pxe.clone().unwrap()];
    procs.extend(state.nodes.values().map(|v| v.qemu.clone().unwrap()));
    assert!(procs.iter().all(|p| p.alive()));

    // The first-boot reports arrive a moment after `booted`.
    let until = Instant::now() + std::time::Duration::from_secs(120);
    let kept = format!("kept (xfs UUID={uuid})");
    let (st, st_text) = loop {
        let st = builder(&["lab", "status", "--dir", &labs], &dir);
        let t = text(&st);
        if t.contains(&kept) || Instant::now() > until {
            break (st, t);
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    };
    assert!(st.status.success(), "{st_text}");
    for n in NODES {
        let r = row(&st_text, n);
        assert!(r.contains(" running ") && r.contains(" booted "), "{r}");
    }
    // First boot found the pool's XFS and kept it (the data-disk note, through pxe's API).
    assert!(
        st_text.contains("data-disk: media: ") && st_text.contains(&kept),
        "the pool was kept:\n{st_text}"
    );

    let con = builder(&["lab", "console", "lab-server", "--dir", &labs], &dir);
    assert!(con.status.success());
    assert!(
        String::from_utf8_lossy(&con.stdout).contains("ironseed: lab-server finished first boot"),
        "the serial log"
    );

    // Issue 18 item 2: the agent's disk dies; the normal recovery path brings it back, and
    // the drill measures it from pxe's timeline.
    let drill = builder(
        &[
            "lab",
            "drill",
            "lab-agent",
            "--disk",
            "--dir",
            &labs,
            "--timeout",
            "40",
        ],
        &dir,
    );
    let drill_text = text(&drill);
    eprintln!("{drill_text}");
    assert!(drill.status.success(), "lab drill failed:\n{drill_text}");
    assert!(
        drill_text.contains("lab-agent: back (booted)"),
        "{drill_text}"
    );
    let h = builder::lab::drill::read_history(&lab.join(builder::lab::drill::DRILLS_FILE)).unwrap();
    assert!(h.warnings.is_empty(), "{:?}", h.warnings);
    assert_eq!(h.records.len(), 1);
    let rec = &h.records[0];
    assert_eq!(rec.node, "lab-agent");
    assert_eq!(rec.outcome, builder::lab::drill::Outcome::Booted);
    // Every phase reached, none before the one it follows, none before the failure.
    let mut last = rec.started_at_ms;
    for (name, t) in rec.phases.steps() {
        let t = t.unwrap_or_else(|| panic!("phase {name} missing: {rec:?}"));
        assert!(t >= last, "phase {name} before the previous one: {rec:?}");
        last = t;
    }
    let secs = rec.recovery_s.unwrap();
    assert!(secs > 10.0 && secs < 40.0 * 60.0, "recovery {secs} s");
    eprintln!("timing: drill lab-agent --disk: recovery {secs:.0} s (fail → booted)");
    let hist = builder(&["lab", "drill", "--history", "--dir", &labs], &dir);
    let hist_text = text(&hist);
    assert!(hist.status.success(), "{hist_text}");
    let r = row(&hist_text, "lab-agent");
    assert!(r.contains(" disk ") && r.contains(" tcg "), "{hist_text}");
    // The agent's new qemu is the lab's too: down must stop it.
    let state = LabState::load(&lab).unwrap();
    procs.push(state.nodes["lab-agent"].qemu.clone().unwrap());

    let down = builder(&["lab", "down", "--keep", "--dir", &labs], &dir);
    assert!(down.status.success(), "{}", text(&down));
    assert!(
        !String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .any(|l| l.split_whitespace().next() == Some(state.netns.as_str())),
        "namespace {} left behind",
        state.netns
    );
    for p in &procs {
        assert!(!p.alive(), "process {} left running", p.pid);
    }
    // The pool's files are still there, same filesystem.
    assert_eq!(
        xfs_db(&pool, "uuid").trim(),
        format!("UUID = {uuid}"),
        "same pool"
    );
    let ls = xfs_db(&pool, "ls /");
    assert!(ls.contains("movie.txt") && ls.contains("music"), "{ls}");

    // Then without --keep: every lab file goes, the user's pool stays.
    let mut files: Vec<PathBuf> = vec![
        lab.join("lab.json"),
        lab.join("bundle"),
        lab.join("pxe-state"),
        lab.join("api-token"),
        lab.join("pxe.log"),
        lab.join("pxe.out"),
    ];
    for (n, v) in &state.nodes {
        files.extend(v.disks.iter().filter(|d| **d != pool).cloned());
        files.push(v.serial.clone());
        files.push(lab.join(format!("{n}.qemu.log")));
    }
    for f in &files {
        assert!(f.exists(), "{} should exist before down", f.display());
    }
    let down = builder(&["lab", "down", "--dir", &labs], &dir);
    assert!(down.status.success(), "{}", text(&down));
    for f in &files {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    let left: Vec<_> = std::fs::read_dir(&lab)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut left: Vec<String> = left
        .iter()
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    left.sort();
    // The drill history outlives the lab (the RTO numbers are its point).
    let mut want = vec![
        pool_disk.file.clone(),
        "drills.jsonl".to_string(),
        "failures.jsonl".to_string(),
    ];
    want.sort();
    assert_eq!(left, want, "only the pool and the drill history");
    // Idempotent.
    let again = builder(&["lab", "down", "--dir", &labs], &dir);
    assert!(again.status.success(), "{}", text(&again));
    eprintln!("timing: whole test {:>6.1} s", t0.elapsed().as_secs_f64());
}
