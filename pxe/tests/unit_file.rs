//! The systemd unit `pxe/ironseed-pxe.service`: its hardening is measured by systemd itself,
//! it parses, and the capability bounding set it grants is enough for `pxe serve` to bind a
//! privileged port, read an owner-only bundle that is not root's, reload it and drop to
//! `ironseed`.
//!
//! systemd is not PID 1 where these tests run (containers), so the unit is not started with
//! `systemd-run`; the capability test reproduces its bounding set with setpriv(1) instead.

#[path = "servecommon/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, lab};

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ironseed-pxe.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).unwrap()
}

/// A tool a test needs: missing skips loudly, except under CI, where it is installed
/// (tests/packages.txt) and its absence is a failure.
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: `{tool}` is missing (tests/packages.txt installs it under CI)"
        );
        eprintln!("SKIP {test}: `{tool}` is not installed");
    }
    found
}

/// Protects the hardening of the unit: `systemd-analyze security` rates its exposure at 3.0 or
/// less (the threshold is in tenths). Removing sandboxing lines pushes it above and fails.
#[test]
fn the_unit_is_rated_3_0_or_less_by_systemd_analyze_security() {
    if !have("systemd-analyze", "the_unit_is_rated_3_0_or_less") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=30"])
        .arg(unit_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let overall = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no overall line");
    eprintln!("{overall}");
    assert!(
        out.status.success(),
        "exposure above 3.0:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit parses and every command in it exists (`systemd-analyze verify`, offline). The
/// binary path is pointed at the pxe under test, as /usr/local/bin/pxe is not installed here.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze", "the_unit_passes_systemd_analyze_verify") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ironseed-pxe.service");
    std::fs::write(
        &copy,
        unit().replace("/usr/local/bin/pxe", env!("CARGO_BIN_EXE_pxe")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `CapabilityBoundingSet=` of the unit as setpriv's `--bounding-set` argument.
fn bounding_set(unit: &str) -> String {
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace())
        .map(|c| format!("+{}", c.to_ascii_lowercase().trim_start_matches("cap_")))
        .collect();
    assert!(!caps.is_empty(), "the unit sets no CapabilityBoundingSet");
    format!("-all,{}", caps.join(","))
}

fn free_privileged_port() -> u16 {
    (600..1000)
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
        assert!(
            std::env::var_os("CI").is_none(),
            "{name}: CI runs as root; this test must run there"
        );
        eprintln!("SKIP {name}: needs root");
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
    let port = free_privileged_port();
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
