//! Shared harness for the DHCP integration tests: spawning the example
//! server, building client datagrams, and cleanup guards.
#![allow(dead_code)] // each test binary uses a different subset

pub mod netns;

/// The workspace's rule for skips and golden files (CI set to any value: no skip).
#[path = "../../../images/tests/support/ci.rs"]
pub mod ci;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pxe::proto::dhcp::{Architecture, DhcpOption, MacAddr, MessageType, client_message, encode};

/// Path of the `dhcp_serve` example, building it if `cargo test` was asked
/// for this test target only (then examples are not built).
pub fn dhcp_serve_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("examples").join("dhcp_serve");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "pxe", "--example", "dhcp_serve"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build for dhcp_serve");
            assert!(st.success(), "building the dhcp_serve example failed");
        }
        bin
    })
}

/// A running `dhcp_serve`; SIGTERM + wait on drop.
pub struct Server {
    child: Reaped,
    stdout: BufReader<ChildStdout>,
    pub ready: serde_json::Value,
    pub log: PathBuf,
}

impl Server {
    /// Spawn `prefix... dhcp_serve config` and wait for its READY line.
    pub fn spawn(prefix: &[&str], config: &serde_json::Value, dir: &Path) -> Server {
        let cfg_path = dir.join(format!("dhcp-{}.json", rand_suffix()));
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let log = cfg_path.with_extension("log");
        let (prog, args) = match prefix.split_first() {
            Some((p, rest)) => (p.to_string(), rest.iter().map(|s| s.to_string()).collect()),
            None => (dhcp_serve_bin().display().to_string(), Vec::<String>::new()),
        };
        let mut cmd = Command::new(prog);
        cmd.args(args);
        if !prefix.is_empty() {
            cmd.arg(dhcp_serve_bin());
        }
        cmd.arg(&cfg_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("spawning dhcp_serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let mut s = Server {
            child: Reaped::new(child),
            stdout,
            ready: serde_json::Value::Null,
            log,
        };
        let Some(json) = line.strip_prefix("READY ") else {
            panic!(
                "dhcp_serve did not become ready (got {line:?}); its log:\n{}",
                s.log_text()
            );
        };
        s.ready = serde_json::from_str(json).unwrap();
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll the server's log until a line contains every one of `parts`
    /// (the readiness signal of an exchange with a slow client such as a VM
    /// under TCG); see [`wait_until`].
    pub fn wait_for_log(&self, parts: &[&str], alive: impl FnMut() -> bool) -> String {
        let find = || {
            self.log_text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        };
        wait_until(
            &format!("a server log line with {parts:?}"),
            || find().is_some(),
            alive,
        );
        find().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.alive()
    }

    /// SIGTERM, wait, and return the COUNTERS json it printed.
    pub fn stop(mut self) -> serde_json::Value {
        let mut child = self.child.stop().expect("server already stopped");
        let status = child.wait().unwrap(); // the status cached by stop()
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(
            status.success(),
            "dhcp_serve exited with {status}; log:\n{}",
            self.log_text()
        );
        let json = line
            .strip_prefix("COUNTERS ")
            .unwrap_or_else(|| panic!("no COUNTERS line, got {line:?}"));
        serde_json::from_str(json).unwrap()
    }
}

/// Poll `cond` every 100 ms. `alive` is checked between polls so a dead
/// client fails the test at once; the 10-minute deadline only guards
/// against a hung test on a loaded machine (no timing is asserted).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool, mut alive: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !cond() {
        assert!(alive(), "gave up waiting for {what}: a process exited");
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} after 10 min"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A child process (VM, router, capture) killed with SIGTERM and reaped on drop.
pub struct Reaped(Option<Child>);

impl Reaped {
    pub fn new(child: Child) -> Reaped {
        Reaped(Some(child))
    }

    pub fn alive(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM and wait now; returns the child for callers that read its output.
    pub fn stop(&mut self) -> Option<Child> {
        let mut c = self.0.take()?;
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        let _ = c.wait();
        Some(c)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, last])
}

/// A PXE DISCOVER as firmware sends it (vendor class, option 93, 94, 97).
pub fn pxe_discover(m: MacAddr, xid: u32, arch: u16, ipxe: bool) -> Vec<u8> {
    let mut opts = vec![
        DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes()),
        DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
        DhcpOption::ClientNetworkInterface(1, 2, 1),
        DhcpOption::ClientMachineIdentifier([0u8].iter().chain(&[0x11; 16]).copied().collect()),
    ];
    if ipxe {
        opts.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    encode(&client_message(m, xid, MessageType::Discover, opts)).unwrap()
}

pub fn plain_discover(m: MacAddr, xid: u32) -> Vec<u8> {
    encode(&client_message(m, xid, MessageType::Discover, vec![])).unwrap()
}
