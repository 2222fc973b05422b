//! The one harness of pxe's integration tests, included by each with `mod support;`:
//!
//! - [`tftp`]: the TFTP server on loopback and a small blocking client;
//! - [`dhcp`]: the `dhcp_serve` example server and client datagrams;
//! - [`netns`]: network namespaces, veth labs, tcpdump captures, udhcpc;
//! - [`serve`]: the real `pxe serve` on loopback against a rendered bundle;
//! - [`vm`]: the qemu lab of the real-firmware tests.
//!
//! Here: what they all use — the skip rule, process guards, the workspace binaries, the
//! service account and a minimal HTTP/1.1 client.
// Each test binary uses a different subset.
#![allow(dead_code)]

pub mod dhcp;
pub mod netns;
pub mod serve;
pub mod tftp;
pub mod vm;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The workspace's rule for skips and golden files (`CI` set to any value: no skip).
#[path = "../../../images/tests/support/ci.rs"]
pub mod ci;

/// A test that cannot run here: with `CI` set a failure, otherwise `SKIPPED: why` on stderr
/// and `false` (callers return early on it).
pub fn skip(why: &str) -> bool {
    ci::skip(why)
}

/// `tests/run` runs the VM tests (`pxe/tests/vm_*.rs`) after the rest of the suite, two test
/// binaries at a time (each keeps about one core busy with TCG, and `cargo test` runs binaries
/// one after another): in its first pass it sets `IRONSEED_VM_DEFERRED=1` and every VM test
/// returns at once, then it runs each `vm_*` binary with the variable unset. Not a skip: the
/// second pass runs them all, under CI too.
pub fn vm_deferred(test: &str) -> bool {
    let deferred = std::env::var_os("IRONSEED_VM_DEFERRED").is_some_and(|v| v == "1");
    if deferred {
        eprintln!("DEFERRED: {test}: tests/run runs it in its VM pass");
    }
    deferred
}

/// True if `bin` is on PATH, else [`skip`].
pub fn require_bin(bin: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false);
    ci::require(
        found,
        &format!("{bin} not installed (see tests/packages.txt)"),
    )
}

/// Run a command to success, or fail the test with its stderr.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process (server, VM, router, capture), SIGTERMed (then SIGKILLed after 10 s) and
/// reaped on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Option<Child>,
}

impl Proc {
    pub fn new(name: &'static str, child: Child) -> Proc {
        Proc {
            name,
            child: Some(child),
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM and reap now; returns the child (its exit status cached) for callers that
    /// read its output.
    pub fn stop(&mut self) -> Option<Child> {
        let mut c = self.child.take()?;
        // `ip netns exec` execs its command, so this pid is the program itself.
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if c.try_wait().ok().flatten().is_some() {
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{}: no exit 10 s after SIGTERM, killing", self.name);
        let _ = c.kill();
        let _ = c.wait();
        Some(c)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Poll `cond` every 100 ms. `alive` is checked between polls so a dead
/// client fails the test at once; the 10-minute deadline only guards
/// against a hung test on a loaded machine (no timing is asserted).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool, mut alive: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !cond() {
        assert!(alive(), "gave up waiting for {what}: a process exited");
        assert!(Instant::now() < deadline, "no {what} after 10 min");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unique within this machine's running tests: pid and a counter.
pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A binary of this workspace that the test gets no `CARGO_BIN_EXE_` for (another package's
/// binary, an example): `cargo build -q ARGS` (a no-op when it is up to date), then `rel` in
/// this test's profile folder (target/<profile>/deps/<test-binary>).
pub fn workspace_bin(args: &[&str], rel: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q"]).args(args);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(st.success(), "cargo build {args:?} failed");
    profile_dir.join(rel)
}

/// The `builder` binary.
pub fn builder_bin() -> PathBuf {
    workspace_bin(&["-p", "builder"], "builder")
}

const SERVICE_USER: &str = "ironseed";

/// `pxe serve` started as root drops to the `ironseed` system account by default. Tests that
/// start it as root create that account once, the way the documented install steps do, so
/// they run the default path rather than passing `--user nobody`. Only as root; idempotent.
pub fn ensure_service_user() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    ONCE.call_once(|| {
        let exists = || {
            nix::unistd::User::from_name(SERVICE_USER)
                .ok()
                .flatten()
                .is_some()
        };
        if exists() {
            return;
        }
        // Another test binary may create it at the same moment (useradd then exits 9): what
        // counts is that the account exists afterwards.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ])
            .status();
        assert!(
            exists(),
            "could not create the `{SERVICE_USER}` system account"
        );
    });
}

/// One HTTP/1.1 request on `s` (`Connection: close`, a JSON content type, `headers` as extra
/// `Name: value` lines), read to the end: status and body (de-chunked).
pub fn exchange(
    mut s: TcpStream,
    host: &str,
    method: &str,
    path: &str,
    body: &str,
    headers: &[&str],
) -> (u16, String) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    read_reply(s)
}

/// Status and body of the reply on `s`, read to the end.
pub fn read_reply(mut s: TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response {text:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = b.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        b = &rest[n + 2..];
    }
    out
}
