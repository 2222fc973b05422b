//! The systemd unit `pxe/ironseed-pxe.service`: its hardening is measured by systemd itself,
//! it parses, and the capability bounding set it grants is enough for `pxe serve` to bind a
//! privileged port, read an owner-only bundle that is not root's, reload it and drop to
//! `ironseed`.
//!
//! systemd is not PID 1 where these tests run (containers), so the unit is not started with
//! `systemd-run`; the capability test reproduces its bounding set with setpriv(1) instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::serve::{Server, lab};

fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ironseed-pxe.service"))
        .unwrap()
}

/// The drop-in that runs pxe as `ironseed` with an ambient capability, never as root.
fn unprivileged() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ironseed-pxe-unprivileged.conf"),
    )
    .unwrap()
}

/// The unit (and the drop-in, as systemd would find it next to the unit) in a folder of its
/// own, with the binary path pointed at the pxe under test (/usr/local/bin/pxe is not
/// installed here).
fn installed(with_dropin: bool) -> (tempfile::TempDir, PathBuf) {
    let here = |t: String| t.replace("/usr/local/bin/pxe", env!("CARGO_BIN_EXE_pxe"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ironseed-pxe.service");
    std::fs::write(&path, here(unit())).unwrap();
    if with_dropin {
        let d = dir.path().join("ironseed-pxe.service.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("unprivileged.conf"), here(unprivileged())).unwrap();
    }
    (dir, path)
}

/// A tool a test needs: missing skips loudly, except under CI, where it is installed
/// (tests/packages.txt) and its absence is a failure.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    support::ci::require(
        found,
        &format!("{test}: `{tool}` is not installed (tests/packages.txt)"),
    )
}

fn analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Protects the hardening of the unit, alone and with the unprivileged drop-in:
/// `systemd-analyze security` rates the exposure at 3.0 or less (the threshold is in tenths).
/// Removing sandboxing lines pushes it above and fails.
#[test]
fn the_unit_is_rated_3_0_or_less_by_systemd_analyze_security() {
    if !have("systemd-analyze", "the_unit_is_rated_3_0_or_less") {
        return;
    }
    for with_dropin in [false, true] {
        let (_dir, unit) = installed(with_dropin);
        let (ok, text) = analyze(&["security", "--offline=true", "--threshold=30"], &unit);
        let overall = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("no overall line");
        eprintln!("drop-in {with_dropin}: {overall}");
        assert!(ok, "exposure above 3.0 (drop-in {with_dropin}):\n{text}");
    }
}

/// The unit (alone and with the drop-in) parses and every command in it exists
/// (`systemd-analyze verify`, which works offline).
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze", "the_unit_passes_systemd_analyze_verify") {
        return;
    }
    for with_dropin in [false, true] {
        let (_dir, unit) = installed(with_dropin);
        let (ok, text) = analyze(&["verify"], &unit);
        assert!(ok, "drop-in {with_dropin}: {text}");
    }
}

/// `CapabilityBoundingSet=` of the unit as setpriv's `--bounding-set` argument.
fn bounding_set(unit: &str) -> String {
    caps_arg(unit, "CapabilityBoundingSet=")
}

/// The capabilities a `KEY=` line grants, as a setpriv argument (`-all,+cap,...`). An empty
/// `KEY=` resets the list, as in systemd.
fn caps_arg(unit: &str, key: &str) -> String {
    let mut caps: Vec<String> = Vec::new();
    for v in unit.lines().filter_map(|l| l.strip_prefix(key)) {
        if v.trim().is_empty() {
            caps.clear();
        }
        caps.extend(
            v.split_whitespace()
                .map(|c| format!("+{}", c.to_ascii_lowercase().trim_start_matches("cap_"))),
        );
    }
    assert!(!caps.is_empty(), "the unit sets no {key}");
    format!("-all,{}", caps.join(","))
}

/// A free port below 1024 from `range` (each test its own range: they run in parallel).
fn free_privileged_port(mut range: std::ops::Range<u16>) -> u16 {
    range
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024 on loopback")
}

/// Protects the unit from granting too little to work: with only the unit's bounding set (and
/// no new privileges), root `pxe serve` binds a port below 1024, loads a bundle owned by
/// another account with owner-only files, reloads it through the bundle reader, and serves as
/// `ironseed` with an owner-only state folder it owns.
#[test]
fn the_units_capabilities_are_enough_to_bind_read_reload_and_drop() {
    let name = "the_units_capabilities_are_enough_to_bind_read_reload_and_drop";
    if !nix::unistd::geteuid().is_root() {
        support::ci::skip(&format!("{name}: needs root"));
        return;
    }
    if !have("setpriv", name) {
        return;
    }
    let lab = lab();
    // The operator rendered the bundle: not root's, its secrets 0600.
    let st = Command::new("chown")
        .args(["-R", "4242:4242"])
        .arg(&lab.bundle)
        .status()
        .unwrap();
    assert!(st.success());
    let port = free_privileged_port(600..800);
    let inner = Server::command_on(&lab, port, 0, &[]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", &bounding_set(&unit())])
        .args(["--inh-caps", "-all", "--no-new-privs"])
        .arg(inner.get_program())
        .args(inner.get_args());
    let s = Server::spawn(cmd);
    assert_eq!(s.http, port);
    let (code, body) = s.post("/api/v1/reload", "");
    assert_eq!(code, 200, "{body}");

    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let user = nix::unistd::User::from_name("ironseed").unwrap().unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace()
            .skip(1)
            .all(|i| i == user.uid.to_string()),
        "{uid}"
    );
    let cap_bnd = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(cap_bnd.ends_with("0000000000000000"), "{cap_bnd}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&lab.state).unwrap();
    assert_eq!(meta.uid(), user.uid.as_raw());
    assert_eq!(meta.mode() & 0o7777, 0o700);
}

/// `ExecStart=` of the drop-in: the flags pxe needs when it never was root.
fn dropin_flags(dropin: &str) -> Vec<String> {
    let line = dropin
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart="))
        .rfind(|v| !v.is_empty())
        .expect("the drop-in sets ExecStart");
    let words: Vec<&str> = line.split_whitespace().collect();
    let flag = |f: &str| {
        let i = words
            .iter()
            .position(|w| *w == f)
            .unwrap_or_else(|| panic!("{f} missing"));
        words[i + 1].to_string()
    };
    // The port is the bundle's (appliance.http_port): every URL the nodes get names it.
    assert!(
        !words.contains(&"--http-port"),
        "a fixed port here would differ from the bundle's URLs"
    );
    assert_eq!(flag("--state"), "/var/lib/ironseed/pxe");
    assert_eq!(flag("--artifacts"), "/var/lib/ironseed/artifacts");
    assert!(
        !words.contains(&"--user"),
        "--user means nothing to a non-root start"
    );
    words.iter().map(|w| w.to_string()).collect()
}

/// Protects the stricter mode from needing more than it grants: as `ironseed` with only the
/// drop-in's capabilities (bounding and ambient), `pxe serve` binds a port below 1024, serves
/// and reloads a bundle ironseed owns, and starts no bundle reader (nothing runs as root).
#[test]
fn the_unprivileged_drop_in_is_enough_to_bind_and_reload_without_root() {
    let name = "the_unprivileged_drop_in_is_enough_to_bind_and_reload_without_root";
    if !nix::unistd::geteuid().is_root() {
        support::ci::skip(&format!("{name}: needs root to become ironseed"));
        return;
    }
    if !have("setpriv", name) {
        return;
    }
    let dropin = unprivileged();
    dropin_flags(&dropin);
    support::ensure_service_user();
    let user = nix::unistd::User::from_name("ironseed").unwrap().unwrap();
    let lab = lab();
    // What the install steps do for this mode: the bundle and (StateDirectory=) the state
    // folder belong to ironseed.
    let own = format!("{}:{}", user.uid, user.gid);
    std::fs::create_dir(&lab.state).unwrap();
    for p in [&lab.bundle, &lab.state] {
        assert!(
            Command::new("chown")
                .args(["-R", &own])
                .arg(p)
                .status()
                .unwrap()
                .success()
        );
    }
    let port = free_privileged_port(800..1000);
    let inner = Server::command_on(&lab, port, 0, &[]);
    let mut cmd = Command::new("setpriv");
    let ambient = caps_arg(&dropin, "AmbientCapabilities=");
    cmd.args([
        "--reuid",
        &user.uid.to_string(),
        "--regid",
        &user.gid.to_string(),
    ])
    .args(["--clear-groups", "--no-new-privs"])
    .args([
        "--bounding-set",
        &caps_arg(&dropin, "CapabilityBoundingSet="),
    ])
    .args(["--inh-caps", &ambient, "--ambient-caps", &ambient])
    .arg(inner.get_program())
    .args(inner.get_args());
    let s = Server::spawn(cmd);
    assert_eq!(s.http, port);
    let (code, body) = s.post("/api/v1/reload", "");
    assert_eq!(code, 200, "{body}");
    let pid = s.child.id();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for t in tasks {
        let children = std::fs::read_to_string(t.unwrap().path().join("children")).unwrap();
        assert!(children.trim().is_empty(), "a child process: {children}");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace()
            .skip(1)
            .all(|i| i == user.uid.to_string()),
        "{uid}"
    );
}
