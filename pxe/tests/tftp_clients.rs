//! The TFTP server against real clients from Debian (tests/packages.txt):
//! `tftp` (tftp-hpa, 512-byte blocks), `curl tftp://` (blksize 1468 and 65464)
//! and `atftp` (windowsize 16), path traversal through real clients, and 50
//! concurrent transfers. Every transfer is compared byte for byte.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;

use pxe::serve::tftp::TftpConfig;
use support::require_bin;
use support::tftp::{TestServer, pattern};

/// The three clients, as the command line that downloads `remote` to `local`.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// tftp-hpa: RFC 1350 only, 512-byte lock-step.
    TftpHpa,
    /// curl with `--tftp-blksize N` (curl also asks for tsize).
    Curl(u16),
    /// atftp with blksize 1468 and the given windowsize.
    Atftp(u16),
}

impl Client {
    fn bin(self) -> &'static str {
        match self {
            Client::TftpHpa => "tftp",
            Client::Curl(_) => "curl",
            Client::Atftp(_) => "atftp",
        }
    }

    fn command(self, port: u16, remote: &str, local: &Path) -> Command {
        let mut cmd = match self {
            Client::TftpHpa => {
                let mut c = Command::new("tftp");
                c.args(["-m", "binary", "127.0.0.1", &port.to_string(), "-c", "get"])
                    .arg(remote)
                    .arg(local);
                c
            }
            Client::Curl(blksize) => {
                let mut c = Command::new("curl");
                // --path-as-is: send "../x" as written, not normalised away.
                c.args(["-sS", "--path-as-is", "--max-time", "300"])
                    .args(["--tftp-blksize", &blksize.to_string()])
                    .arg("-o")
                    .arg(local)
                    .arg(format!("tftp://127.0.0.1:{port}/{remote}"));
                c
            }
            Client::Atftp(window) => {
                let mut c = Command::new("atftp");
                c.args(["--get", "-r", remote, "-l"])
                    .arg(local)
                    .args(["--option", "blksize 1468"])
                    .args(["--option", &format!("windowsize {window}")])
                    .args(["127.0.0.1", &port.to_string()]);
                c
            }
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn spawn(self, port: u16, remote: &str, local: &Path) -> Child {
        self.command(port, remote, local)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin()))
    }

    fn run(self, port: u16, remote: &str, local: &Path) -> Output {
        self.spawn(port, remote, local).wait_with_output().unwrap()
    }
}

fn have(clients: &[Client]) -> bool {
    clients.iter().all(|c| require_bin(c.bin()))
}

struct Fixture {
    dir: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Fixture {
    fn new(files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        Fixture {
            dir,
            out: tempfile::tempdir().unwrap(),
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }
}

/// Downloads `remote` with `client` and asserts the bytes equal `want`.
fn fetch_exact(client: Client, srv: &TestServer, fx: &Fixture, remote: &str, want: &[u8]) {
    let local = fx.out(&format!("{}-{remote}", client.bin()));
    let out = client.run(srv.port(), remote, &local);
    let got = std::fs::read(&local).unwrap_or_default();
    assert!(
        got.len() == want.len() && got == want,
        "{client:?} {remote}: got {} bytes, want {} (exit {:?}, stderr {})",
        got.len(),
        want.len(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tftp_hpa_512_past_block_rollover() {
    if !have(&[Client::TftpHpa]) {
        return;
    }
    // > 65535 × 512 bytes: the block number must wrap (tftp_server 0.0.3 stalled
    // at exactly 33,553,408 bytes here).
    let data = pattern(65_536 * 512 + 12_345, 21);
    let fx = Fixture::new(&[("big.bin", &data)]);
    let srv = TestServer::start_fs(fx.dir.path(), TftpConfig::default());
    fetch_exact(Client::TftpHpa, &srv, &fx, "big.bin", &data);
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 1);
}

#[test]
fn curl_blksize_1468_and_65464() {
    if !have(&[Client::Curl(0)]) {
        return;
    }
    let data = pattern(3 * 1024 * 1024 + 77, 22);
    let fx = Fixture::new(&[("initrd.img", &data)]);
    let srv = TestServer::start_fs(fx.dir.path(), TftpConfig::default());
    fetch_exact(Client::Curl(1468), &srv, &fx, "initrd.img", &data);
    std::fs::remove_file(fx.out("curl-initrd.img")).unwrap();
    fetch_exact(Client::Curl(65464), &srv, &fx, "initrd.img", &data);
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 2);
}

#[test]
fn atftp_windowsize_16() {
    if !have(&[Client::Atftp(16)]) {
        return;
    }
    let data = pattern(4 * 1024 * 1024 + 3, 23);
    let fx = Fixture::new(&[("vmlinuz", &data)]);
    let srv = TestServer::start_fs(fx.dir.path(), TftpConfig::default());
    fetch_exact(Client::Atftp(16), &srv, &fx, "vmlinuz", &data);
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 1);
}

#[test]
fn traversal_attempts_are_refused() {
    let clients = [Client::TftpHpa, Client::Curl(1468), Client::Atftp(4)];
    if !have(&clients) {
        return;
    }
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, b"top secret bytes").unwrap();
    let fx = Fixture::new(&[("ok.bin", b"fine")]);
    std::os::unix::fs::symlink(&secret, fx.dir.path().join("escape")).unwrap();
    let srv = TestServer::start_fs(fx.dir.path(), TftpConfig::default());
    let depth = fx.dir.path().components().count();
    let dotdot = format!(
        "{}{}",
        "../".repeat(depth),
        secret.strip_prefix("/").unwrap().display()
    );
    let attempts = [
        dotdot.as_str(),
        "../secret.txt",
        "escape",
        "/escape",
        secret.to_str().unwrap(),
    ];
    let mut n = 0;
    for client in clients {
        for remote in attempts {
            n += 1;
            let local = fx.out(&format!("attempt-{n}"));
            let out = client.run(srv.port(), remote, &local);
            let got = std::fs::read(&local).unwrap_or_default();
            assert!(
                got.is_empty(),
                "{client:?} {remote:?} got {} bytes: {:?}",
                got.len(),
                String::from_utf8_lossy(&got)
            );
            // tftp-hpa exits 0 on a server error; curl and atftp must not.
            if !matches!(client, Client::TftpHpa) {
                assert!(!out.status.success(), "{client:?} {remote:?} succeeded");
            }
        }
    }
    // Nothing was served, and the server still works.
    assert_eq!(srv.stats.finished.load(Ordering::Relaxed), 0);
    fetch_exact(Client::Curl(1468), &srv, &fx, "ok.bin", b"fine");
}

#[test]
fn fifty_concurrent_transfers_byte_exact() {
    let kinds = [Client::Curl(1468), Client::Atftp(16), Client::TftpHpa];
    if !have(&kinds) {
        return;
    }
    // Five distinct files so a mix-up between transfers is detected.
    let files: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pattern(1024 * 1024 + i * 1000, 30 + i as u64),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let fx = Fixture::new(&refs);
    // 50 clients on one host stand for a boot storm of 50 machines: lift the per-address
    // share, which would otherwise (rightly) refuse all but four of them.
    let srv = TestServer::start_fs(
        fx.dir.path(),
        TftpConfig {
            max_per_address: 50,
            ..TftpConfig::default()
        },
    );
    let mut running = Vec::new();
    for i in 0..50 {
        let client = kinds[i % kinds.len()];
        let (name, data) = &files[i % files.len()];
        let local = fx.out(&format!("c{i}"));
        running.push((
            client,
            data,
            local.clone(),
            client.spawn(srv.port(), name, &local),
        ));
    }
    for (client, want, local, child) in running {
        let out = child.wait_with_output().unwrap();
        let got = std::fs::read(&local).unwrap_or_default();
        assert!(
            got == *want,
            "{client:?} -> {}: {} bytes, want {} (stderr {})",
            local.display(),
            got.len(),
            want.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 50);
    assert_eq!(srv.stats.started.load(Ordering::Relaxed), 50);
}
