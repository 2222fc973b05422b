//! Harness for tests that run the real `pxe serve` binary on loopback against a bundle rendered
//! by the real builder library: start, wait for READY, talk HTTP, kill (gracefully or -9).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{ensure_service_user, exchange, read_reply};
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
    /// `--artifacts`: holds the published sha256 of the bundle's OS image, which `installed`
    /// must report.
    pub artifacts: PathBuf,
    pub plan: serde_json::Value,
}

/// The sha256 the stand-in OS image of [`lab`] is published with.
pub const IMAGE_SHA256: &str = "5e1b7c2a9d3f4e6b8a0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708";

/// The default inventory moved to 127.0.20.0/24: every node address is a loopback address a
/// test can send from without root, so first-boot reports (accepted only from the node's
/// inventory address) can be tested on loopback.
pub fn loopback_inventory() -> String {
    DEFAULT_INVENTORY.replace("10.0.20.", "127.0.20.")
}

/// Render the default inventory into a fresh bundle; folders readable by the account the
/// server drops to when the test runs as root.
pub fn lab() -> Lab {
    lab_with_joined(&[])
}

/// [`lab`] with some nodes rendered in join form, as `builder rebuild` renders them: the
/// bundle of a cluster that already exists.
pub fn lab_with_joined(joined: &[&str]) -> Lab {
    lab_from(&loopback_inventory(), joined)
}

/// [`lab`] from another inventory text (e.g. the default one moved to a netns test's subnet).
pub fn lab_from(text: &str, joined: &[&str]) -> Lab {
    lab_with_files(text, joined, |_| Vec::new())
}

/// [`lab_from`] with more files in the bundle (listed in its `SHA256SUMS`, mode 0644), made
/// from the rendered plan: e.g. a stand-in `topology.svg`. Empty contents remove the file (a
/// bundle from an older builder).
pub fn lab_with_files(
    text: &str,
    joined: &[&str],
    extra: impl Fn(&serde_json::Value) -> Vec<(String, Vec<u8>)>,
) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let templates = Templates::embedded();
    let mut d = Diagnostics::default();
    let profiles = ProfileSet::load(&[], &mut d);
    let (inv, more) = inventory::load("inv.yaml", text, &profiles, &templates);
    let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
    let secrets = Secrets::generate();
    let opts = RenderOptions {
        joined: joined.iter().map(|s| s.to_string()).collect(),
        ..RenderOptions::default()
    };
    let mut b = render::render(&inv, &secrets, &templates, &opts).unwrap();
    let rendered: serde_json::Value = serde_json::from_slice(&b.files["plan.json"].bytes).unwrap();
    for (path, bytes) in extra(&rendered) {
        if bytes.is_empty() {
            b.files.remove(&path);
            continue;
        }
        b.files
            .insert(path, builder::render::BundleFile { bytes, mode: 0o644 });
    }
    let sums = b.sha256sums().into_bytes();
    b.files.insert(
        builder::render::SUMS.to_string(),
        builder::render::BundleFile {
            bytes: sums,
            mode: 0o644,
        },
    );
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
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("plan.json")).unwrap()).unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(artifacts.join("images")).unwrap();
    let os = plan["os_image"].as_str().unwrap();
    std::fs::write(
        artifacts.join(format!("images/{os}.raw.zst.sha256")),
        format!("{IMAGE_SHA256}  {os}.raw.zst\n"),
    )
    .unwrap();
    Lab {
        state: dir.path().join("state"),
        bundle,
        ipxe,
        artifacts,
        plan,
        dir,
    }
}

impl Lab {
    fn plan_node(&self, host: &str) -> &serde_json::Value {
        self.plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host)
            .unwrap()
    }

    /// The node's first-boot report token, as its seed carries it (read from the bundle as
    /// it is now: a test may have re-rendered it with other secrets).
    pub fn report_token(&self, host: &str) -> String {
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.bundle.join("plan.json")).unwrap()).unwrap();
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == host)
            .unwrap()["report_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn ip(&self, host: &str) -> String {
        self.plan_node(host)["ip"].as_str().unwrap().to_string()
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
    /// The operator API token the server wrote (or was given).
    pub token: String,
    pub token_file: PathBuf,
    /// Where stderr goes, for [`Server::spawn_capturing`].
    log: Option<tempfile::NamedTempFile>,
}

impl Server {
    /// The `pxe serve` command line every test uses: loopback, DHCP off, free ports, the lab's
    /// artifacts (unless `extra` names others) and `--arm-new` (a first deployment).
    pub fn command(lab: &Lab, extra: &[&str]) -> Command {
        Self::command_on(lab, 0, 0, extra)
    }

    /// The same on fixed ports (tests that hand the URL to another program before starting).
    pub fn command_on(lab: &Lab, http: u16, tftp: u16, extra: &[&str]) -> Command {
        let mut c = Self::base_command(lab, http, tftp, extra);
        c.arg("--arm-new").args(extra);
        c
    }

    /// The same without `--arm-new`: what an operator gets by default.
    pub fn command_default_arming(lab: &Lab, extra: &[&str]) -> Command {
        let mut c = Self::base_command(lab, 0, 0, extra);
        c.args(extra);
        c
    }

    fn base_command(lab: &Lab, http: u16, tftp: u16, extra: &[&str]) -> Command {
        ensure_service_user();
        let mut c = Command::new(env!("CARGO_BIN_EXE_pxe"));
        c.args(["serve", "--listen", "127.0.0.1", "--dhcp", "off"])
            .args(["--http-port", &http.to_string()])
            .args(["--tftp-port", &tftp.to_string()])
            .arg("--bundle")
            .arg(&lab.bundle)
            .arg("--state")
            .arg(&lab.state)
            .arg("--ipxe-dir")
            .arg(&lab.ipxe);
        if !extra.contains(&"--artifacts") {
            c.arg("--artifacts").arg(&lab.artifacts);
        }
        c
    }

    pub fn start(lab: &Lab, extra: &[&str]) -> Server {
        Self::spawn(Self::command(lab, extra))
    }

    pub fn start_on(lab: &Lab, http: u16, tftp: u16, extra: &[&str]) -> Server {
        Self::spawn(Self::command_on(lab, http, tftp, extra))
    }

    /// Start a `pxe serve` command line and wait for its READY line.
    pub fn spawn(cmd: Command) -> Server {
        Self::spawn_logged(cmd, None)
    }

    /// [`Server::spawn`] with stderr kept for [`Server::stop_and_log`].
    pub fn spawn_capturing(cmd: Command) -> Server {
        Self::spawn_logged(cmd, Some(tempfile::NamedTempFile::new().unwrap()))
    }

    /// SIGTERM, wait, and what the server wrote on stderr.
    pub fn stop_and_log(mut self) -> String {
        let log = self.log.take().expect("spawned with spawn_capturing");
        self.stop_ref();
        std::fs::read_to_string(log.path()).unwrap()
    }

    fn spawn_logged(mut cmd: Command, log: Option<tempfile::NamedTempFile>) -> Server {
        let stderr = match &log {
            Some(f) => Stdio::from(f.reopen().unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
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
        let token_file = PathBuf::from(v["api_token_file"].as_str().unwrap());
        let token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            http: v["http_port"].as_u64().unwrap() as u16,
            tftp: v["tftp_port"].as_u64().unwrap() as u16,
            token,
            token_file,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// GET as the operator (with the API token).
    pub fn get(&self, path: &str) -> (u16, String) {
        request(self.http, "GET", path, "", &[&self.auth()])
    }

    /// POST as the operator (with the API token).
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        request(self.http, "POST", path, body, &[&self.auth()])
    }

    /// An operator request with any method.
    pub fn post_or_get(&self, method: &str, path: &str) -> (u16, String) {
        request(self.http, method, path, "", &[&self.auth()])
    }

    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    /// GET as anyone on the LAN: no token.
    pub fn anon_get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path, "")
    }

    /// POST as anyone on the LAN: no token.
    pub fn anon_post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.http, "POST", path, body)
    }

    /// The install secret in the boot script a MAC gets (fetching it is the firmware's step
    /// that moves an armed node to booting), as the installer finds it on its command line.
    pub fn secret_from_boot(&self, mac: &str) -> String {
        let script = self.boot_script(mac);
        secret_in(&script).unwrap_or_else(|| panic!("no install secret in {script}"))
    }

    /// POST one installer event (`{"event":...}`) with an install secret, as the installer
    /// would; the status.
    pub fn install_event(&self, host: &str, secret: &str, json: &str) -> u16 {
        self.anon_post(&format!("/install/{host}/{secret}/events"), json)
            .0
    }

    /// POST a first-boot report (`events` or `phone-home`) as the node would: from its
    /// inventory address, with its report token.
    pub fn report(&self, lab: &Lab, host: &str, what: &str, body: &str) -> u16 {
        let ip: std::net::Ipv4Addr = lab.ip(host).parse().unwrap();
        let token = lab.report_token(host);
        request_from(
            ip,
            self.http,
            "POST",
            &format!("/report/{host}/{token}/{what}"),
            body,
            &[],
        )
        .0
    }

    /// The node's install, as iPXE, the installer and cloud-init drive it: boot script (with
    /// the secret), installing, progress, installed (the published image), booted.
    pub fn install_node(&self, lab: &Lab, host: &str, mac: &str) {
        let secret = self.secret_from_boot(mac);
        for ev in [
            r#"{"event":"installing","disk":"/dev/vda","total":100}"#.to_string(),
            r#"{"event":"progress","written":50,"total":100}"#.to_string(),
            format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA256}"}}"#),
        ] {
            assert_eq!(self.install_event(host, &secret, &ev), 200, "{host}: {ev}");
        }
        assert_eq!(self.report(lab, host, "phone-home", "hostname=x"), 200);
        assert_eq!(self.state(host), "booted");
    }

    /// The iPXE script this MAC gets, as the firmware fetches it (no token).
    pub fn boot_script(&self, mac: &str) -> String {
        self.anon_get(&format!("/boot/{mac}.ipxe")).1
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
        self.stop_ref()
    }

    fn stop_ref(&mut self) -> std::process::ExitStatus {
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

/// The install secret in an install script's `ironseed.plan=.../plan/<host>/<secret>`.
pub fn secret_in(script: &str) -> Option<String> {
    let plan = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ironseed.plan="))?;
    Some(plan.rsplit('/').next()?.to_string())
}

/// One request without credentials.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    request(port, method, path, body, &[])
}

/// One request with extra header lines (`Name: value`).
pub fn request(port: u16, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    exchange(s, "t", method, path, body, headers)
}

/// A request whose header lines are all given (no default `Host`).
pub fn request_raw(port: u16, method: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    read_reply(s)
}

/// [`request`] from a given loopback source address (127.0.0.0/8 is all on `lo`).
pub fn request_from(
    src: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &[&str],
) -> (u16, String) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((src, 0)).into())
        .unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    exchange(s, "t", method, path, body, headers)
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

/// A stand-in `topology.svg` shaped like `builder render`'s: one `<style>` element, classes,
/// and every node a group `<g id="node-HOST" class="node role-ROLE" data-node="HOST">` holding
/// a `rect`. It also carries a script, which must never run in the dashboard.
pub fn topology_fixture(plan: &serde_json::Value) -> Vec<(String, Vec<u8>)> {
    let nodes = plan["nodes"].as_array().unwrap();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"ironseed-topology\" viewBox=\"0 0 {} 200\">\n\
         <style>\n.ironseed-topology .box {{ stroke-width: 1.5; }}\n</style>\n\
         <script>document.title='pwned'</script>\n",
        20 + 170 * nodes.len()
    );
    for (i, n) in nodes.iter().enumerate() {
        let h = n["hostname"].as_str().unwrap();
        let role = n["role"].as_str().unwrap();
        let x = 20 + 170 * i;
        svg.push_str(&format!(
            "<g id=\"node-{h}\" class=\"node role-{role}\" data-node=\"{h}\">\
             <rect class=\"box\" x=\"{x}\" y=\"40\" width=\"150\" height=\"80\" rx=\"6\"/>\
             <text x=\"{}\" y=\"75\" class=\"head\">{h}</text>\
             <text x=\"{}\" y=\"98\">{}</text></g>\n",
            x + 10,
            x + 10,
            n["ip"].as_str().unwrap()
        ));
    }
    svg.push_str("</svg>\n");
    vec![("topology.svg".to_string(), svg.into_bytes())]
}
