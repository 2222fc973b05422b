//! The dashboard in a real browser: headless Chromium (Debian `chromium`) driven over the
//! DevTools protocol by `support/cdp.py` (Debian `python3-websocket`), against the real
//! `pxe serve` on loopback. Screenshots go to `target/screenshots/` (CI artifacts). The
//! 1,000-node test prints the time to first render and the update latency (not asserted).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::serve::{
    IMAGE_SHA256, Lab, Server, lab_with_files, loopback_inventory, topology_fixture,
};

const PYTHON: &str = "/usr/bin/python3";

/// Whether the browser and the driver are here; else skip (fail under CI).
fn browser_available() -> bool {
    if !support::require_bin("chromium") {
        return false;
    }
    let ok = Command::new(PYTHON)
        .args(["-c", "import websocket"])
        .status()
        .is_ok_and(|s| s.success());
    support::ci::require(
        ok,
        "python3-websocket not installed (see tests/packages.txt)",
    )
}

struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    chromium: i32,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("dash-chromium-")
            .tempdir()
            .unwrap();
        let mut child = Command::new(PYTHON)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cdp.py"))
            .arg("chromium")
            .arg(profile.path().join("udd"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("cdp.py did not start: {line:?}"));
        Browser {
            chromium: v["chromium_pid"].as_i64().unwrap() as i32,
            child,
            stdin,
            stdout,
            _profile: profile,
        }
    }

    fn cmd(&mut self, c: Value) -> Value {
        writeln!(self.stdin, "{c}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("cdp.py: {line:?} for {c}"));
        assert!(v.get("error").is_none(), "{c}: {v}");
        v
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.cmd(json!({"cmd": "eval", "expr": expr}))["value"].clone()
    }

    /// Seconds until `expr` is truthy; fails after `timeout`.
    fn wait(&mut self, expr: &str, timeout: f64) -> f64 {
        let v = self.cmd(json!({"cmd": "wait", "expr": expr, "timeout": timeout}));
        assert!(v.get("timeout").is_none(), "not within {timeout} s: {expr}");
        v["seconds"].as_f64().unwrap()
    }

    fn errors(&mut self) -> Vec<String> {
        serde_json::from_value(self.cmd(json!({"cmd": "errors"}))["errors"].clone()).unwrap()
    }

    fn screenshot(&mut self, name: &str) {
        let dir = screenshots();
        let path = dir.join(name);
        self.cmd(json!({"cmd": "screenshot", "path": path}));
        eprintln!("screenshot: {}", path.display());
    }

    fn login(&mut self, url: &str, token: &str) {
        self.cmd(json!({"cmd": "navigate", "url": url}));
        self.wait("!document.getElementById('login').hidden", 10.0);
        self.eval(&format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('login-form').requestSubmit(); true",
            json!(token)
        ));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium runs in its own session (cdp.py): its whole group, by its id.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.chromium),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `target/screenshots/`, kept by CI as artifacts.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port of this test's range (restarts must come back on the same one).
fn free_port() -> u16 {
    (19600..19700)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 19600-19699")
}

fn row(host: &str) -> String {
    format!(
        "document.querySelector('tr.node[data-node={}]')",
        json!(host)
    )
}

fn row_state(host: &str, state: &str) -> String {
    format!(
        "({r} && {r}.dataset.state === {s})",
        r = row(host),
        s = json!(state)
    )
}

/// The page against the default inventory: loads clean, shows every node, follows installer
/// events within 2 s, survives a pxe restart, and arms a node from its detail view.
#[test]
fn the_dashboard_follows_an_install_and_arms_a_node() {
    if !browser_available() {
        return;
    }
    let lab = lab_with_files(&loopback_inventory(), &[], topology_fixture);
    let port = free_port();
    let s = Server::start_on(&lab, port, 0, &[]);
    let url = s.url("/");
    let mut b = Browser::start();
    b.cmd(json!({"cmd": "navigate", "url": url}));
    b.wait("!document.getElementById('login').hidden", 10.0);
    assert_eq!(b.errors(), Vec::<String>::new(), "page load");

    b.login(&url, &s.token);
    let hosts: Vec<String> = lab.plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["hostname"].as_str().unwrap().to_string())
        .collect();
    b.wait(
        &format!(
            "document.querySelectorAll('tr.node').length === {}",
            hosts.len()
        ),
        10.0,
    );
    for h in &hosts {
        let state = s.state(h);
        b.wait(&row_state(h, &state), 5.0);
        let text = b.eval(&format!("{}.querySelector('.c-state').textContent", row(h)));
        assert!(text.as_str().unwrap().contains(&state), "{h}: {text}");
    }
    assert_eq!(b.errors(), Vec::<String>::new(), "after the token");
    b.wait("window.ironseed.connected", 5.0);
    b.screenshot("dashboard.png");

    // An install, as the installer reports it.
    let host = "k3s1";
    let secret = s.secret_from_boot(&lab.mac(host));
    b.wait(&row_state(host, "booting"), 2.0);
    let mut latencies = Vec::new();
    assert_eq!(
        s.install_event(
            host,
            &secret,
            r#"{"event":"installing","disk":"/dev/vda","total":1048576000}"#
        ),
        200
    );
    latencies.push(b.wait(&row_state(host, "installing"), 2.0));
    assert_eq!(
        s.install_event(
            host,
            &secret,
            r#"{"event":"progress","written":524288000,"total":1048576000}"#
        ),
        200
    );
    latencies.push(b.wait(
        &format!(
            "{}.querySelector('progress').value === 524288000",
            row(host)
        ),
        2.0,
    ));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        s.install_event(
            host,
            &secret,
            r#"{"event":"progress","written":734003200,"total":1048576000}"#
        ),
        200
    );
    latencies.push(b.wait(
        &format!(
            "{}.querySelector('.plabel').textContent.includes('ETA')",
            row(host)
        ),
        2.0,
    ));
    b.screenshot("dashboard-installing.png");
    let done = format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA256}"}}"#);
    assert_eq!(s.install_event(host, &secret, &done), 200);
    latencies.push(b.wait(&row_state(host, "installed"), 2.0));
    eprintln!("update latency (s): {latencies:?}");

    // pxe restarts: the page reconnects by itself and follows changes again.
    let streams = b.eval("window.ironseed.streams").as_i64().unwrap();
    s.stop();
    b.wait("!window.ironseed.connected", 10.0);
    let s = Server::start_on(&lab, port, 0, &[]);
    b.wait(
        &format!("window.ironseed.streams > {streams} && window.ironseed.connected"),
        20.0,
    );
    let _ = b.errors(); // connection refused while pxe was down
    assert_eq!(s.post("/api/v1/nodes/k3s2/disarm", "").0, 200);
    b.wait(&row_state("k3s2", "disarmed"), 2.0);

    // Arm from the page: the confirmation names the node and what happens to its disk.
    b.eval(&format!(
        "{}.querySelector('button.link').click(); true",
        row(host)
    ));
    b.wait(
        &format!(
            "document.getElementById('d-host').textContent === {}",
            json!(host)
        ),
        5.0,
    );
    let facts = b.eval("document.getElementById('d-facts').textContent");
    assert!(facts.as_str().unwrap().contains(IMAGE_SHA256), "{facts}");
    assert!(facts.as_str().unwrap().contains("/dev/vda"), "{facts}");
    b.eval("document.getElementById('d-arm').click(); true");
    b.wait("document.getElementById('confirm').open", 5.0);
    let text = b.eval("document.getElementById('confirm-text').textContent");
    let text = text.as_str().unwrap();
    assert!(text.contains(host) && text.contains("ERASES"), "{text}");
    b.screenshot("dashboard-arm-confirm.png");
    b.eval("document.getElementById('confirm-ok').click(); true");
    b.wait(&row_state(host, "armed"), 5.0);
    assert_eq!(s.state(host), "armed");

    // A failure reason is network text: shown as text, never as markup.
    let hostile = r#"disk gone <img src=x onerror="document.title='pwned'"><b>bold</b>"#;
    let secret3 = s.secret_from_boot(&lab.mac("k3s3"));
    let failed = json!({"event": "failed", "reason": hostile}).to_string();
    assert_eq!(s.install_event("k3s3", &secret3, &failed), 200);
    b.wait(&row_state("k3s3", "failed"), 2.0);
    let shown = b.eval(&format!(
        "{}.querySelector('.c-error').textContent",
        row("k3s3")
    ));
    assert_eq!(shown, json!(hostile));
    assert_eq!(
        b.eval(&format!(
            "{}.querySelectorAll('img, b').length",
            row("k3s3")
        )),
        json!(0)
    );

    // Discovered machines: one armed for inspection shows up with its MAC.
    assert_eq!(
        s.post("/api/v1/discovered/52:54:00:aa:bb:cc/inspect", "").0,
        200
    );
    b.eval("document.querySelector('.tab[data-tab=discovered]').click(); true");
    b.wait(
        "[...document.querySelectorAll('#disc-rows tr')].some(r => r.textContent.includes('52:54:00:aa:bb:cc') && r.textContent.includes('armed'))",
        5.0,
    );

    // The topology picture, coloured by live state, stripped of anything active.
    b.eval("document.getElementById('d-close').click(); true");
    b.eval("document.querySelector('.tab[data-tab=topology]').click(); true");
    b.wait(
        &format!(
            "document.querySelectorAll('#topology g.node').length === {}",
            hosts.len()
        ),
        10.0,
    );
    b.wait(
        &format!(
            "document.querySelector('#topology g.node[data-node={}]').classList.contains('st-armed')",
            json!(host)
        ),
        2.0,
    );
    b.wait(
        "document.querySelector('#topology g.node[data-node=\"k3s2\"]').classList.contains('st-disarmed')",
        2.0,
    );
    assert_eq!(
        b.eval(
            "document.querySelectorAll('#topology script, #topology style, #topology [style], #topology [onload]').length"
        ),
        json!(0)
    );
    assert_ne!(b.eval("document.title"), json!("pwned"));
    b.screenshot("topology.png");
    let errors: Vec<String> = b
        .errors()
        .into_iter()
        .filter(|e| !e.contains("ERR_CONNECTION_REFUSED"))
        .collect();
    assert_eq!(errors, Vec::<String>::new(), "at the end");
}

/// The picture `builder render` really writes (not the stand-in): every node of the bundle gets
/// its coloured group, and the page stays free of console errors (its `<style>` is not loaded).
#[test]
fn the_rendered_topology_is_shown_in_live_colours() {
    if !browser_available() {
        return;
    }
    let lab = support::serve::lab();
    assert!(
        lab.bundle.join("topology.svg").is_file(),
        "builder render writes topology.svg"
    );
    let s = Server::start(&lab, &[]);
    let mut b = Browser::start();
    b.login(&s.url("/"), &s.token);
    b.wait("window.ironseed.connected", 10.0);
    b.eval("document.querySelector('.tab[data-tab=topology]').click(); true");
    let hosts = lab.plan["nodes"].as_array().unwrap();
    for n in hosts {
        let h = n["hostname"].as_str().unwrap();
        b.wait(
            &format!(
                "(() => {{ const g = document.querySelector('#topology g.node[data-node={}]'); \
                 return g && g.classList.contains('st-armed'); }})()",
                json!(h)
            ),
            10.0,
        );
    }
    assert_eq!(s.post("/api/v1/nodes/nfs1/disarm", "").0, 200);
    b.wait(
        "document.querySelector('#topology g.node[data-node=\"nfs1\"]').classList.contains('st-disarmed')",
        2.0,
    );
    b.screenshot("topology-rendered.png");
    assert_eq!(b.errors(), Vec::<String>::new());
}

/// The node generator of builder/benches/render.rs, moved to 127.0.0.0/16: `--arm-new` probes
/// the servers' API port, which must stay on loopback.
fn big_inventory(nodes: usize) -> String {
    let base = builder::inventory::DEFAULT_INVENTORY;
    let head = base.split("\nnodes:\n").next().unwrap();
    let head = head
        .replace("subnet: 10.0.20.0/24", "subnet: 10.0.0.0/16")
        .replace("start: 10.0.20.200", "start: 10.0.250.1")
        .replace("end: 10.0.20.249", "end: 10.0.250.200");
    let mut s = format!("{head}\nnodes:\n");
    for i in 0..nodes {
        let (role, profile) = match i {
            0..=2 => ("server", "vm"),
            _ if i % 10 == 0 => ("agent", "r630"),
            _ => ("agent", "optiplex"),
        };
        s.push_str(&format!(
            "  - hostname: node{i}\n    role: {role}\n    profile: {profile}\n    mac: 52:54:00:{:02x}:{:02x}:{:02x}\n    ip: 10.0.{}.{}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            1 + i / 200,
            10 + i % 200
        ));
    }
    s.replace("10.0.", "127.0.")
}

/// 1,000 nodes: the page renders (one page of 100 rows, the rest paged) and follows updates.
/// Prints the time to first render and the update latency; asserts only that they happen.
#[test]
fn a_thousand_nodes_render_and_update() {
    if !browser_available() {
        return;
    }
    let lab: Lab = lab_with_files(&big_inventory(1000), &[], |_| Vec::new());
    let s = Server::start(&lab, &[]);
    let url = s.url("/");
    let mut b = Browser::start();
    b.login(&url, &s.token);
    b.wait("document.body.dataset.nodes === '1000'", 30.0);
    b.wait("document.querySelectorAll('tr.node').length === 100", 10.0);
    let first = b.eval("window.ironseed.firstRenderMs");
    eprintln!("1000 nodes: time to first render {first} ms (token given → first page drawn)");
    b.screenshot("dashboard-1000.png");
    // node0 is a server: on the first page.
    let secret = s.secret_from_boot(&lab.mac("node0"));
    let t = Instant::now();
    b.wait(&row_state("node0", "booting"), 5.0);
    let mut lat = vec![t.elapsed().as_secs_f64()];
    assert_eq!(
        s.install_event(
            "node0",
            &secret,
            r#"{"event":"installing","disk":"/dev/sda","total":1000000}"#
        ),
        200
    );
    lat.push(b.wait(&row_state("node0", "installing"), 5.0));
    for w in [250000, 500000, 750000] {
        let ev = format!(r#"{{"event":"progress","written":{w},"total":1000000}}"#);
        assert_eq!(s.install_event("node0", &secret, &ev), 200);
        lat.push(b.wait(
            &format!("{}.querySelector('progress').value === {w}", row("node0")),
            5.0,
        ));
    }
    // A node on another page changes the model, not the DOM; paging shows it.
    assert_eq!(s.post("/api/v1/nodes/node999/disarm", "").0, 200);
    b.wait(
        "document.getElementById('summary').textContent.includes('disarmed 1')",
        5.0,
    );
    eprintln!("1000 nodes: update latency (s, event posted → row changed): {lat:?}");
    let flip = b.eval(
        "(() => { const t = performance.now(); document.getElementById('next').click(); \
         return performance.now() - t; })()",
    );
    let search = b.eval(
        "(() => { const t = performance.now(); const f = document.getElementById('filter'); \
         f.value = 'node99'; f.dispatchEvent(new Event('input')); return performance.now() - t; })()",
    );
    b.wait("document.querySelectorAll('tr.node').length === 11", 5.0);
    eprintln!("1000 nodes: next page drawn in {flip} ms, filter applied in {search} ms");
    let errors = b.errors();
    assert_eq!(errors, Vec::<String>::new());
}
