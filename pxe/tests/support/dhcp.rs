//! The DHCP integration tests' harness: spawning the example server and building client
//! datagrams.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use super::{Proc, rand_suffix, wait_until};
use pxe::proto::dhcp::{Architecture, DhcpOption, MacAddr, MessageType, client_message, encode};

/// Path of the `dhcp_serve` example (examples are not built for a single test target).
pub fn dhcp_serve_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        super::workspace_bin(
            &["-p", "pxe", "--example", "dhcp_serve"],
            "examples/dhcp_serve",
        )
    })
}

/// A running `dhcp_serve`; SIGTERM + wait on drop.
pub struct Server {
    child: Proc,
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
            child: Proc::new("dhcp_serve", child),
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
