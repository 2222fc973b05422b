//! `builder provision` and `builder power` against the real `pxe serve` on loopback, with the
//! `manual` driver (every node of the loopback inventory set to `manual`): the test plays the operator
//! and the machines, driving each node's install through the same routes iPXE, the installer
//! and cloud-init use, and checks the order provision asks for them, the skips and the summary.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::builder_bin;
use support::serve::{self, Lab, Server};

/// The loopback inventory with every node on `manual` (the optiplex profile's default is
/// wake-on-LAN; here the test plays the operator for every machine).
fn manual_inventory() -> String {
    serve::loopback_inventory().replace(
        "    profile: optiplex\n",
        "    profile: optiplex\n    power:\n      manual: {}\n",
    )
}

fn lab_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), manual_inventory()).unwrap();
    d
}

fn builder(dir: &Path, s: &Server, args: &[&str]) -> Command {
    let mut c = Command::new(builder_bin());
    c.args(args)
        .args(["-i", "lab.yaml", "--server", &s.url("")])
        .current_dir(dir)
        .env_remove("IRONSEED_INVENTORY")
        .env_remove("IRONSEED_SECRETS")
        .env_remove("IRONSEED_PXE")
        .env("IRONSEED_API_TOKEN", &s.token)
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, s: &Server, args: &[&str]) -> Output {
    builder(dir, s, args).output().unwrap()
}

/// The next line of provision's stdout that contains `want`; every line read is kept in `seen`.
fn expect(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, want: &str) {
    let t = Instant::now();
    loop {
        let left = Duration::from_secs(60).saturating_sub(t.elapsed());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(want);
                seen.push(l);
                if hit {
                    return;
                }
            }
            Err(_) => panic!("no line with `{want}`; output so far:\n{}", seen.join("\n")),
        }
    }
}

fn ask(host: &str) -> String {
    format!("{host}: no power control: power it on now")
}

#[test]
fn provision_powers_in_cluster_order_waits_for_each_stage_and_skips_booted_nodes() {
    let lab: Lab = serve::lab();
    let s = Server::start(&lab, &[]);
    let dir = lab_dir();
    // Installed and booted before: provision must skip it, not ask for it.
    s.install_node(&lab, "k3s2", &lab.mac("k3s2"));

    let mut child = builder(dir.path(), &s, &["provision", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    expect(&rx, &mut seen, &ask("k3s-master1"));
    // While the bootstrap server is not booted, nobody else is asked for.
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(l) = rx.try_recv() {
        assert!(
            !l.contains("power it on now"),
            "asked before bootstrap booted: {l}"
        );
        seen.push(l);
    }
    s.install_node(&lab, "k3s-master1", &lab.mac("k3s-master1"));
    expect(&rx, &mut seen, "k3s-master1: booted");
    expect(&rx, &mut seen, &ask("k3s-master2"));
    expect(&rx, &mut seen, &ask("k3s-master3"));
    std::thread::sleep(Duration::from_millis(1000));
    while let Ok(l) = rx.try_recv() {
        assert!(
            !l.contains("power it on now"),
            "agents asked before the servers booted: {l}"
        );
        seen.push(l);
    }
    for h in ["k3s-master2", "k3s-master3"] {
        s.install_node(&lab, h, &lab.mac(h));
    }
    for h in ["k3s1", "k3s3", "nfs1"] {
        expect(&rx, &mut seen, &ask(h));
    }
    for h in ["k3s1", "k3s3", "nfs1"] {
        s.install_node(&lab, h, &lab.mac(h));
    }
    let status = child.wait().unwrap();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(l);
    }
    let all = seen.join("\n");
    assert!(status.success(), "{all}");
    assert!(all.contains("k3s2: already booted, skipped"), "{all}");
    assert!(!all.contains(&ask("k3s2")), "{all}");
    let summary = &all[all.find("summary:").expect("a summary")..];
    for h in [
        "k3s-master1",
        "k3s-master2",
        "k3s-master3",
        "k3s1",
        "k3s3",
        "nfs1",
    ] {
        let line = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(h))
            .unwrap_or_else(|| panic!("{h} missing from the summary:\n{summary}"));
        assert!(
            line.contains("by hand") && line.contains("booted after"),
            "{line}"
        );
    }
    assert!(summary.contains("already booted"), "{summary}");

    // Re-running it is a no-op: everything is booted.
    let o = run(dir.path(), &s, &["provision", "--all"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("power it on now"), "{text}");
}

/// Protects install-once: provision never re-arms (and so never reinstalls) a node that was
/// installed before; it refuses and powers nothing.
#[test]
fn provision_refuses_nodes_that_are_not_armed() {
    let lab: Lab = serve::lab();
    let s = Server::start(&lab, &[]);
    let dir = lab_dir();
    s.install_node(&lab, "k3s1", &lab.mac("k3s1"));
    assert_eq!(s.post("/api/v1/nodes/k3s1/disarm", "").0, 200);
    let o = run(dir.path(), &s, &["provision", "k3s1", "k3s3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("not armed") && err.contains("k3s1"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("power it on now"), "{out}");
    assert_eq!(s.state("k3s1"), "disarmed");
}

/// Protects running cluster members and unattended runs: off/cycle of a booted node needs
/// --force, and without a terminal nothing happens without --yes.
#[test]
fn builder_power_refuses_booted_nodes_and_unconfirmed_runs_and_records_what_it_did() {
    let lab: Lab = serve::lab();
    let s = Server::start(&lab, &[]);
    let dir = lab_dir();
    s.install_node(&lab, "k3s1", &lab.mac("k3s1"));
    let o = run(dir.path(), &s, &["power", "k3s1", "off", "--yes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("is booted") && err.contains("--force"),
        "{err}"
    );

    let o = run(dir.path(), &s, &["power", "k3s3", "on"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("--yes"), "{err}");
    assert!(s.node("k3s3")["last_power"].is_null(), "nothing recorded");

    let o = run(
        dir.path(),
        &s,
        &["power", "k3s3", "on", "--pxe-once", "--yes"],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("k3s3: power on after setting a one-time network boot"),
        "{out}"
    );
    assert!(err.contains("power on k3s3 now"), "{err}");
    let n = s.node("k3s3");
    assert_eq!(n["last_power"]["action"], "on");
    assert_eq!(n["last_power"]["result"], "ok");
    let t = n["timeline"].to_string();
    assert!(t.contains("pxe-once: ok (by builder power)"), "{t}");
    assert!(t.contains("on: ok (by builder power)"), "{t}");
}

/// A driver provision cannot use (here: a Redfish node without a BMC account in the secrets
/// file) is found before anything is powered, not halfway through the cluster.
#[test]
fn provision_checks_every_driver_before_powering_anything() {
    let lab: Lab = serve::lab();
    let s = Server::start(&lab, &[]);
    let dir = lab_dir();
    let inv = serve::loopback_inventory().replacen(
        "    profile: r630\n",
        "    profile: r630\n    power:\n      redfish: {address: idrac-k3s3, insecure_tls: true}\n",
        1,
    );
    std::fs::write(dir.path().join("lab.yaml"), inv).unwrap();
    let o = run(dir.path(), &s, &["provision", "--all"]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success(), "{out}");
    assert!(
        err.contains("k3s3: no BMC account for k3s3 in the secrets file"),
        "{err}"
    );
    assert!(!out.contains("power it on now"), "{out}");
    assert!(s.node("k3s-master1")["last_power"].is_null());
}

/// `builder rebuild NODE --power`: after arming, the one-time boot and power-on through the
/// node's driver (wake-on-LAN, whose packet stays on loopback here: the loopback inventory's
/// subnet is 127.0.20.0/24), both recorded in pxe with who did it.
#[test]
fn rebuild_power_boots_the_armed_node_through_its_driver() {
    let lab: Lab = serve::lab();
    let dir = lab.dir.path();
    let inv = serve::loopback_inventory().replacen(
        "    profile: optiplex\n",
        "    profile: optiplex\n    power:\n      wol: {}\n",
        1,
    );
    std::fs::write(dir.join("lab.yaml"), &inv).unwrap();
    std::fs::remove_dir_all(&lab.bundle).unwrap();
    let s0 = Command::new(builder_bin())
        .args(["render", "-i", "lab.yaml", "-o", "bundle"])
        .current_dir(dir)
        .env_remove("IRONSEED_INVENTORY")
        .env_remove("IRONSEED_SECRETS")
        .output()
        .unwrap();
    assert!(
        s0.status.success(),
        "{}",
        String::from_utf8_lossy(&s0.stderr)
    );
    let s = Server::start(&lab, &[]);
    s.install_node(&lab, "k3s1", &lab.mac("k3s1"));
    let o = builder(dir, &s, &["rebuild", "k3s1", "-o", "bundle", "--power"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("k3s1: power on (wol)"), "{out}");
    assert!(out.contains("LAN with PXE Boot"), "{out}");
    let n = s.node("k3s1");
    assert_eq!(n["state"], "armed");
    let t = n["timeline"].to_string();
    assert!(t.contains("pxe-once: ok (by builder rebuild)"), "{t}");
    assert!(t.contains("on: ok (by builder rebuild)"), "{t}");
}

/// `builder power NODE status` for a driver that cannot read the state (k3s1: the optiplex
/// profile's default wake-on-LAN) says so and shows what pxe knows instead.
#[test]
fn status_without_a_readable_driver_shows_pxes_view() {
    let lab: Lab = serve::lab();
    let s = Server::start(&lab, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lab.yaml"), serve::loopback_inventory()).unwrap();
    let o = run(dir.path(), &s, &["power", "k3s1", "status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("k3s1: wake-on-LAN cannot read the power state"),
        "{out}"
    );
    assert!(out.contains("says: state "), "{out}");
    assert!(out.contains("no power action recorded"), "{out}");
}
