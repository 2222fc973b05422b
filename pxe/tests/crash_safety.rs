//! `kill -9` at the worst moments: the restarted server resumes from a consistent state, every
//! event it acknowledged survives, and no node is installed twice.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use support::serve::{self, Server, http, lab, request};

#[test]
fn sigkill_mid_install_resumes_and_never_installs_twice() {
    let lab = lab();
    let mac = lab.mac("k3s2");
    let s = Server::start(&lab, &[]);
    let secret = s.secret_from_boot(&mac);
    assert_eq!(
        s.install_event(
            "k3s2",
            &secret,
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":5000}"#
        ),
        200
    );
    assert_eq!(
        s.install_event(
            "k3s2",
            &secret,
            r#"{"event":"progress","written":2500,"total":5000}"#
        ),
        200
    );
    s.kill9();

    let s = Server::start(&lab, &[]);
    let n = s.node("k3s2");
    assert_eq!(n["state"], "installing", "resumed mid-install");
    assert_eq!(n["bytes_written"], 2500, "acknowledged progress survived");
    // The node was interrupted too: it PXE-boots again and gets the installer again (its disk
    // is not bootable, the first MiB is written last), then finishes.
    // The install secret survived the restart with the state.
    assert_eq!(s.secret_from_boot(&mac), secret);
    assert_eq!(
        s.install_event(
            "k3s2",
            &secret,
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":5000}"#
        ),
        200
    );
    let installed = format!(
        r#"{{"event":"installed","sha256":"{}"}}"#,
        serve::IMAGE_SHA256
    );
    assert_eq!(s.install_event("k3s2", &secret, &installed), 200);
    s.kill9();

    let s = Server::start(&lab, &[]);
    assert_eq!(s.state("k3s2"), "installed");
    for _ in 0..3 {
        let body = s.boot_script(&mac);
        assert!(
            body.contains("booting from local disk"),
            "installed node must not be reinstalled: {body}"
        );
    }
    assert_eq!(s.node("k3s2")["installs"], 1);
    // An installed report replayed after the restart finds the secret dead: not a second
    // install.
    assert_eq!(s.install_event("k3s2", &secret, &installed), 404);
    assert_eq!(s.node("k3s2")["installs"], 1);
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_event() {
    let lab = lab();
    let mac = lab.mac("k3s-master2");
    // Installs whose `installed` report got a 200 before the kill: they must all be on disk.
    let acked = Arc::new(AtomicU32::new(0));
    let mut rng = 0x9e3779b97f4a7c15u64;
    for round in 0..12 {
        let s = Server::start(&lab, &[]);
        let persisted = s.node("k3s-master2")["installs"].as_u64().unwrap() as u32;
        assert!(
            persisted >= acked.load(Ordering::SeqCst),
            "round {round}: {persisted} installs on disk, {} acknowledged",
            acked.load(Ordering::SeqCst)
        );
        acked.store(persisted, Ordering::SeqCst);
        let state = s.state("k3s-master2");
        assert!(
            ["armed", "booting", "installing", "installed"].contains(&state.as_str()),
            "{state}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let port = s.http;
        let auth = format!("Authorization: Bearer {}", s.token);
        let worker = {
            let (stop, acked, mac) = (stop.clone(), acked.clone(), mac.clone());
            std::thread::spawn(move || {
                // Each request may die with the server; only a complete 200 counts.
                let try_http = |m: &str, p: &str, b: &str| {
                    std::panic::catch_unwind(|| http(port, m, p, b)).unwrap_or((0, String::new()))
                };
                let installed = format!(
                    r#"{{"event":"installed","sha256":"{}"}}"#,
                    serve::IMAGE_SHA256
                );
                while !stop.load(Ordering::SeqCst) {
                    let _ = std::panic::catch_unwind(|| {
                        request(port, "POST", "/api/v1/nodes/k3s-master2/arm", "", &[&auth])
                    });
                    let (_, script) = try_http("GET", &format!("/boot/{mac}.ipxe"), "");
                    let Some(secret) = serve::secret_in(&script) else {
                        continue;
                    };
                    let events = format!("/install/k3s-master2/{secret}/events");
                    try_http(
                        "POST",
                        &events,
                        r#"{"event":"installing","disk":"/dev/sda","total":10}"#,
                    );
                    try_http(
                        "POST",
                        &events,
                        r#"{"event":"progress","written":5,"total":10}"#,
                    );
                    if try_http("POST", &events, &installed).0 == 200 {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(30 + rng % 250));
        s.kill9();
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
    }
    let s = Server::start(&lab, &[]);
    assert!(
        s.node("k3s-master2")["installs"].as_u64().unwrap() as u32 >= acked.load(Ordering::SeqCst)
    );
    assert!(
        acked.load(Ordering::SeqCst) > 0,
        "the loop never completed an install: test proves nothing"
    );
}

#[test]
fn sigkill_mid_tftp_transfer_then_a_fresh_transfer_is_byte_exact() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let out = lab.dir.path().join("partial");
    // 512-byte blocks in lock-step: slow enough to be killed mid-way.
    let mut client = std::process::Command::new("curl")
        .args(["-sS", "--tftp-blksize", "512", "-o"])
        .arg(&out)
        .arg(format!("tftp://127.0.0.1:{}/undionly.kpxe", s.tftp))
        .spawn()
        .expect("curl");
    let want = std::fs::read(lab.ipxe.join("undionly.kpxe")).unwrap();
    for _ in 0..2000 {
        if std::fs::metadata(&out)
            .map(|m| m.len() > 100_000)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    s.kill9();
    // The client would retry for minutes against a dead server.
    let _ = client.kill();
    let _ = client.wait();
    let got = std::fs::read(&out).unwrap_or_default();
    assert!(
        got.len() < want.len(),
        "transfer finished before the kill: test proves nothing"
    );
    let s = Server::start(&lab, &[]);
    let again = lab.dir.path().join("full");
    assert!(serve::tftp_get(s.tftp, "undionly.kpxe", &again));
    assert_eq!(std::fs::read(&again).unwrap(), want);
}
