//! Harness for tests that run the real `pxe serve` binary on loopback against a bundle rendered
//! by the real builder library: start, wait for READY, talk HTTP, kill (gracefully or -9).
#![allow(dead_code)]

pub mod builder_exe;
pub mod service_user;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::render::{self, RenderOptions};
use builder::secrets::Secrets;
use builder::templates::Templates;

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub state: PathBuf,
    pub ipxe: PathBuf,
    pub plan: serde_json::Value,
}

/// Render the default inventory into a fresh bundle; folders readable by the account the
/// server drops to when the test runs as root.
pub fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let templates = Templates::embedded();
    let mut d = Diagnostics::default();
    let profiles = ProfileSet::load(&[], &mut d);
    let (inv, more) = inventory::load("inv.yaml", DEFAULT_INVENTORY, &profiles, &templates);
    let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
    let secrets = Secrets::generate();
    let b = render::render(&inv, &secrets, &templates, &RenderOptions::default()).unwrap();
    let bundle = dir.path().join("bundle");
    builder::bundle::write(&bundle, &b).unwrap();
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir(&ipxe).unwrap();
    // Deterministic stand-ins for the iPXE binaries (content is what TFTP must deliver exactly).
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(ipxe.join("undionly.kpxe"), &big).unwrap();
    std::fs::write(ipxe.join("ipxe.efi"), &big[..100_000]).unwrap();
    let plan = serde_json::from_slice(&std::fs::read(bundle.join("plan.json")).unwrap()).unwrap();
    Lab {
        state: dir.path().join("state"),
        bundle,
        ipxe,
        plan,
        dir,
    }
}

impl Lab {
    pub fn token(&self, host: &str) -> String {
        self.plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host)
            .unwrap()["seed_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn mac(&self, host: &str) -> String {
        self.plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host)
            .unwrap()["mac"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub struct Server {
    pub child: Child,
    pub http: u16,
    pub tftp: u16,
}

impl Server {
    /// The `pxe serve` command line every test uses: loopback, DHCP off, free ports.
    pub fn command(lab: &Lab, extra: &[&str]) -> Command {
        Self::command_on(lab, 0, 0, extra)
    }

    /// The same on fixed ports (tests that hand the URL to another program before starting).
    pub fn command_on(lab: &Lab, http: u16, tftp: u16, extra: &[&str]) -> Command {
        service_user::ensure_service_user();
        let mut c = Command::new(env!("CARGO_BIN_EXE_pxe"));
        c.args(["serve", "--listen", "127.0.0.1", "--dhcp", "off"])
            .args(["--http-port", &http.to_string()])
            .args(["--tftp-port", &tftp.to_string()])
            .arg("--bundle")
            .arg(&lab.bundle)
            .arg("--state")
            .arg(&lab.state)
            .arg("--ipxe-dir")
            .arg(&lab.ipxe)
            .args(extra);
        c
    }

    pub fn start(lab: &Lab, extra: &[&str]) -> Server {
        Self::spawn(Self::command(lab, extra))
    }

    pub fn start_on(lab: &Lab, http: u16, tftp: u16, extra: &[&str]) -> Server {
        Self::spawn(Self::command_on(lab, http, tftp, extra))
    }

    /// Start a `pxe serve` command line and wait for its READY line.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pxe");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let json = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("pxe did not become ready: {line:?}"));
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        Server {
            child,
            http: v["http_port"].as_u64().unwrap() as u16,
            tftp: v["tftp_port"].as_u64().unwrap() as u16,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.http, "POST", path, body)
    }

    /// POST one node event (`{"event":...}`) as the installer or first boot would; the status.
    pub fn event(&self, host: &str, json: &str) -> u16 {
        self.post(&format!("/api/v1/nodes/{host}/events"), json).0
    }

    /// The iPXE script this MAC gets, as the firmware fetches it.
    pub fn boot_script(&self, mac: &str) -> String {
        self.get(&format!("/boot/{mac}.ipxe")).1
    }

    pub fn state(&self, host: &str) -> String {
        let (s, b) = self.get(&format!("/api/v1/nodes/{host}"));
        assert_eq!(s, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        v["state"].as_str().unwrap().to_string()
    }

    pub fn node(&self, host: &str) -> serde_json::Value {
        serde_json::from_str(&self.get(&format!("/api/v1/nodes/{host}")).1).unwrap()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
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

/// Fetch a file over TFTP with curl (octet mode, blksize 1468).
pub fn tftp_get(port: u16, file: &str, out: &Path) -> bool {
    Command::new("curl")
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(out)
        .arg(format!("tftp://127.0.0.1:{port}/{file}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
