//! The Redfish client's certificate pinning against a real TLS server (`openssl s_server` on
//! loopback, a self-signed certificate made here), which prints whatever HTTP bytes reach it.
//! A wrong pinned fingerprint must fail the handshake with both fingerprints named and with
//! no byte of the request — so no credential — reaching the server; the right one must get
//! the request through (which proves the server would have shown it). Ports 19443–19499.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use builder::power::redfish::client::{Client, Http, Trust, sha256_hex};
use common::ci;

struct Server {
    child: Child,
    out: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each test has its own range (they run in parallel).
fn free_port(from: u16) -> u16 {
    (from..from + 28)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 19443..19500")
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A self-signed certificate and an `s_server` that echoes what it receives.
fn server(dir: &Path, ports_from: u16) -> (Server, u16, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=idrac-RFTEST",
            "-days",
            "2",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ],
    );
    let fp = sha256_hex(&std::fs::read(dir.join("cert.der")).unwrap());
    let port = free_port(ports_from);
    let out = dir.join("s_server.out");
    let child = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "cert.pem", "-key", "key.pem", "-ign_eof"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let s = Server { child, out };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&s.out)
        .unwrap_or_default()
        .contains("ACCEPT")
    {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (s, port, fp)
}

/// Protects the BMC credentials from an impostor: with the wrong pinned fingerprint the
/// handshake fails before the request (and its Authorization header) is written.
#[test]
fn a_wrong_fingerprint_is_refused_before_any_credential_is_sent() {
    if Command::new("openssl").arg("version").output().is_err() {
        ci::skip("openssl is not installed (apt install openssl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, port, fp) = server(dir.path(), 19443);
    let address = format!("127.0.0.1:{port}");
    let secret = [("Authorization", "Basic c2VjcmV0LWNyZWRlbnRpYWw=")];

    let wrong = "00".repeat(32);
    let mut c = Client::new(
        &address,
        &Trust::Fingerprint(wrong),
        Duration::from_secs(10),
    )
    .unwrap();
    let e = c
        .send("GET", "/redfish/v1/Systems", &secret, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the pinned one"), "{e}");
    assert!(e.contains("expected SHA-256 00:00:00"), "{e}");
    let seen = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(e.contains(&format!("seen {seen}")), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(&s.out).unwrap();
    assert!(
        !log.contains("GET /redfish"),
        "a request got through: {log}"
    );
    assert!(
        !log.contains("c2VjcmV0"),
        "the credential got through: {log}"
    );

    // The right pin: the handshake succeeds and the request (with its header) arrives; the
    // echo server never answers HTTP, so the client times out.
    let mut c = Client::new(&address, &Trust::Fingerprint(fp), Duration::from_secs(3)).unwrap();
    let e = c
        .send("GET", "/redfish/v1/Systems", &secret, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timed out"), "{e}");
    let log = std::fs::read_to_string(&s.out).unwrap();
    assert!(log.contains("GET /redfish/v1/Systems"), "{log}");
    assert!(log.contains("c2VjcmV0"), "{log}");
}

/// `ca:` is the only root: the self-signed certificate is refused by name (the server is
/// `idrac-RFTEST`, the client asks for 127.0.0.1) — a CA-checked BMC must carry its address.
#[test]
fn a_ca_that_does_not_vouch_for_the_address_is_refused() {
    if Command::new("openssl").arg("version").output().is_err() {
        ci::skip("openssl is not installed (apt install openssl)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (s, port, _) = server(dir.path(), 19471);
    let mut c = Client::new(
        &format!("127.0.0.1:{port}"),
        &Trust::Ca(dir.path().join("cert.pem")),
        Duration::from_secs(10),
    )
    .unwrap();
    let e = c
        .send("GET", "/redfish/v1/", &[], None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("TLS: "), "{e}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!std::fs::read_to_string(&s.out).unwrap().contains("GET /"));
}
