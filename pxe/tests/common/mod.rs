//! Shared harness for the TFTP integration tests: a server on 127.0.0.1 with an
//! ephemeral port in its own runtime thread, a small blocking TFTP client built on
//! the crate's codec, deterministic test data and the client-binary check.
// Each test file uses a different subset of this module.
#![allow(dead_code)]

/// The workspace's rule for skips and golden files (CI set to any value: no skip).
#[path = "../../../images/tests/support/ci.rs"]
pub mod ci;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pxe::proto::tftp::{ErrorCode, Mode, Packet, Request, decode, encode};
use pxe::serve::tftp::{FsProvider, Provider, TftpConfig, TftpStats, run};

/// Generous per-packet wait: a failure detector for hung tests, never asserted on.
pub const RECV_WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<TftpStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(provider: Arc<dyn Provider>, cfg: TftpConfig) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind test server");
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = cfg.stats.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
                run(socket, provider, cfg, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        init_tracing();
        TestServer {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn start_fs(root: &Path, cfg: TftpConfig) -> Self {
        Self::start(Arc::new(FsProvider::new(root).unwrap()), cfg)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Polls a counter until it reaches `want` (the server updates stats after
    /// its last packet, so a client can finish first). Panics after a long wait.
    pub fn wait_stat(&self, counter: impl Fn(&TftpStats) -> u64, want: u64) {
        for _ in 0..2000 {
            if counter(&self.stats) >= want {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("stat did not reach {want}: {:?}", self.stats);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // Do not turn a failing test into a double panic.
            if !std::thread::panicking() {
                t.join().expect("server thread panicked");
            }
        }
    }
}

fn init_tracing() {
    // RUST_LOG=pxe=debug shows the server's log lines in failing tests.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Deterministic pseudo-random bytes (xorshift64*), so a misplaced block is
/// always detected, unlike with constant or repeating data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// True if `bin` is on PATH. Missing under CI is a failure; locally the test
/// prints SKIPPED and passes.
pub fn require_bin(bin: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false);
    ci::require(found, &format!("{bin} not installed (tests/packages.txt)"))
}

/// A raw client socket: send packets, receive decoded packets with their source.
pub struct Raw {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Raw {
    pub fn new(server: SocketAddr) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(RECV_WAIT)).unwrap();
        Raw { sock, server }
    }

    pub fn send_to(&self, p: &Packet, to: SocketAddr) {
        self.sock.send_to(&encode(p), to).unwrap();
    }

    pub fn rrq(&self, file: &str, options: &[(&str, &str)]) {
        self.send_to(&rrq(file, options), self.server);
    }

    pub fn recv(&self) -> (Packet, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self
            .sock
            .recv_from(&mut buf)
            .expect("no packet from the server");
        (
            decode(&buf[..n]).expect("server sent an undecodable packet"),
            from,
        )
    }

    pub fn expect_error(&self) -> (ErrorCode, String) {
        match self.recv().0 {
            Packet::Error { code, msg } => (code, msg),
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

pub fn rrq(file: &str, options: &[(&str, &str)]) -> Packet {
    Packet::Rrq(Request {
        filename: file.into(),
        mode: Mode::Octet,
        options: options
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    })
}

/// Result of [`get`]: the file, the OACK options (if any) and the server's TID.
pub struct Got {
    pub data: Vec<u8>,
    pub oack: Option<Vec<(String, String)>>,
    pub tid: SocketAddr,
}

/// Downloads `file` with RFC 7440 receiver behaviour: ACK at the end of each
/// window and at the last block. Returns the server's ERROR if it sends one.
pub fn get(
    server: SocketAddr,
    file: &str,
    options: &[(&str, &str)],
) -> Result<Got, (ErrorCode, String)> {
    let raw = Raw::new(server);
    raw.rrq(file, options);
    receive(&raw)
}

pub fn receive(raw: &Raw) -> Result<Got, (ErrorCode, String)> {
    let mut blksize = 512usize;
    let mut window = 1u64;
    let mut data = Vec::new();
    let mut oack = None;
    let mut tid: Option<SocketAddr> = None;
    let mut next: u16 = 1;
    let mut in_window = 0u64;
    loop {
        let (p, from) = raw.recv();
        match tid {
            None => tid = Some(from),
            Some(t) => assert_eq!(t, from, "server changed its TID"),
        }
        let tid = tid.unwrap();
        match p {
            Packet::Oack { options } => {
                assert!(data.is_empty(), "OACK in the middle of a transfer");
                for (k, v) in &options {
                    match k.as_str() {
                        "blksize" => blksize = v.parse().unwrap(),
                        "windowsize" => window = v.parse().unwrap(),
                        _ => {}
                    }
                }
                if oack.is_none() {
                    oack = Some(options);
                }
                raw.send_to(&Packet::Ack { block: 0 }, tid);
            }
            Packet::Data { block, data: d } => {
                assert!(d.len() <= blksize, "DATA longer than blksize");
                if block != next {
                    // Out of order (a resend after our ACK was late): re-ACK the
                    // last good block, as RFC 7440 receivers do.
                    raw.send_to(
                        &Packet::Ack {
                            block: next.wrapping_sub(1),
                        },
                        tid,
                    );
                    in_window = 0;
                    continue;
                }
                data.extend_from_slice(&d);
                next = next.wrapping_add(1);
                in_window += 1;
                let last = d.len() < blksize;
                if last || in_window == window {
                    raw.send_to(&Packet::Ack { block }, tid);
                    in_window = 0;
                }
                if last {
                    return Ok(Got { data, oack, tid });
                }
            }
            Packet::Error { code, msg } => return Err((code, msg)),
            other => panic!("unexpected packet {other:?}"),
        }
    }
}
