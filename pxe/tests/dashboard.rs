//! The dashboard's server side against the real `pxe serve` on loopback: the page's security
//! headers, the event stream (content, secrets, cap, shutdown) and the topology picture. The
//! page itself in a real browser: `dashboard_browser.rs`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::serve::{Lab, Server, lab, lab_with_files, loopback_inventory, topology_fixture};

/// Status, lowercased header lines and body of one GET (no token unless given).
fn get_raw(port: u16, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// An open `/api/v1/events/stream` read as it arrives (chunked body → SSE frames).
struct Stream {
    s: TcpStream,
    raw: Vec<u8>,
    /// Dechunked body bytes not yet split into frames.
    body: String,
    pub status: u16,
    pub head: String,
}

impl Stream {
    fn open(server: &Server) -> Stream {
        let mut s = TcpStream::connect(("127.0.0.1", server.http)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            s,
            "GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\r\n",
            server.http, server.token
        )
        .unwrap();
        let mut st = Stream {
            s,
            raw: Vec::new(),
            body: String::new(),
            status: 0,
            head: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while st.status == 0 {
            assert!(Instant::now() < deadline, "no response head");
            st.fill();
            let text = String::from_utf8_lossy(&st.raw).into_owned();
            if let Some((head, _)) = text.split_once("\r\n\r\n") {
                st.status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                st.head = head.to_ascii_lowercase();
                st.raw.drain(..head.len() + 4);
            }
        }
        st
    }

    /// Read what is there (up to 200 ms); false at end of stream.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 65536];
        match self.s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(_) => false,
        }
    }

    fn dechunk(&mut self) {
        loop {
            let text = &self.raw;
            let Some(eol) = text.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let len = usize::from_str_radix(std::str::from_utf8(&text[..eol]).unwrap().trim(), 16)
                .unwrap();
            if text.len() < eol + 2 + len + 2 {
                return;
            }
            let chunk = String::from_utf8(text[eol + 2..eol + 2 + len].to_vec()).unwrap();
            self.body.push_str(&chunk);
            self.raw.drain(..eol + 2 + len + 2);
        }
    }

    /// The next frame `(event, data)`, comments included as `(":", text)`, within `limit`.
    fn next(&mut self, limit: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + limit;
        loop {
            self.dechunk();
            if let Some(i) = self.body.find("\n\n") {
                let block: String = self.body.drain(..i + 2).collect();
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        return Some((":".into(), c.trim().into()));
                    }
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.into();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d);
                    }
                }
                return Some((event, data.join("\n")));
            }
            if Instant::now() > deadline || !self.fill() {
                return None;
            }
        }
    }

    /// Frames until one satisfies `pred`, within `limit`; every frame read on the way.
    fn until(
        &mut self,
        limit: Duration,
        pred: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> (serde_json::Value, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some((ev, data)) = self.next(deadline - Instant::now()) else {
                break;
            };
            seen.push(format!("{ev} {data}"));
            if ev == ":" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            if pred(&ev, &v) {
                return (v, seen);
            }
        }
        panic!("no matching frame within {limit:?}; seen: {seen:?}");
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

/// Protects the operator's browser: the page and its assets carry a CSP that allows scripts
/// from this server only (no inline script, no eval) and no framing (the arm button cannot be
/// clickjacked), and forbid MIME sniffing. The page itself is open and carries no node data.
#[test]
fn the_page_and_its_assets_carry_the_security_headers() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    for (path, ctype) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let (st, head, body) = get_raw(s.http, path, &[]);
        assert_eq!(st, 200, "{path}: {body}");
        assert!(
            header(&head, "content-type").unwrap().starts_with(ctype),
            "{head}"
        );
        let csp = header(&head, "content-security-policy").unwrap_or_else(|| panic!("{head}"));
        for want in [
            "default-src 'none'",
            "script-src 'self';",
            "frame-ancestors 'none'",
            "connect-src 'self'",
        ] {
            assert!(csp.contains(want), "{path}: {csp} lacks {want}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&head, "x-frame-options"), Some("deny"));
        for host in ["k3s1", "k3s-master1"] {
            assert!(!body.to_lowercase().contains(&lab.mac(host).to_lowercase()));
        }
    }
}

/// Protects against script injection through names, errors, notes and facts (all from the
/// network): the assets have no inline script or handler for the CSP to have to allow, and
/// the script never parses network text as HTML.
#[test]
fn the_page_renders_network_text_as_text_only() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/serve/http/dashboard");
    let html = std::fs::read_to_string(format!("{dir}/index.html")).unwrap();
    let js = std::fs::read_to_string(format!("{dir}/app.js")).unwrap();
    for tag in html.match_indices("<script").map(|(i, _)| &html[i..]) {
        let open = &tag[..tag.find('>').unwrap()];
        assert!(open.contains(" src="), "inline script: {open}");
    }
    let lower = html.to_lowercase();
    for bad in [
        " onclick=",
        " onload=",
        " onsubmit=",
        " onerror=",
        " style=",
        "javascript:",
    ] {
        assert!(!lower.contains(bad), "index.html has {bad}");
    }
    for bad in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "createContextualFragment",
        "localStorage",
    ] {
        assert!(!js.contains(bad), "app.js uses {bad}");
    }
    assert!(js.contains("textContent"));
    // The token travels in a header, never in a URL (it would end up in logs and history).
    assert!(js.contains("Authorization: 'Bearer '"));
    assert!(!js.contains("?token") && !js.contains("EventSource"));
}

/// The stream starts with every node, then pushes each change; install secrets never appear
/// in it (the API shows only whether one is live).
#[test]
fn the_event_stream_pushes_snapshot_then_changes_and_no_secret() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let mut st = Stream::open(&s);
    assert_eq!(st.status, 200, "{}", st.head);
    assert_eq!(header(&st.head, "content-type"), Some("text/event-stream"));
    let (snap, _) = st.until(Duration::from_secs(10), |ev, _| ev == "snapshot");
    let nodes = snap["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), lab.plan["nodes"].as_array().unwrap().len());
    for n in nodes {
        assert_eq!(n["state"], "armed", "{n}");
        assert!(n["profile"].is_string() && n["mac"].is_string(), "{n}");
        assert!(
            n.get("timeline").is_none(),
            "the stream leaves timelines out"
        );
    }
    // The boot script carries the install secret; the stream must not.
    let secret = s.secret_from_boot(&lab.mac("k3s1"));
    let (v, mut seen) = st.until(Duration::from_secs(10), |ev, v| {
        ev == "node" && v["hostname"] == "k3s1" && v["state"] == "booting"
    });
    assert_eq!(v["install_secret"], true);
    assert_eq!(
        s.install_event(
            "k3s1",
            &secret,
            r#"{"event":"installing","disk":"/dev/vda","total":1000}"#
        ),
        200
    );
    assert_eq!(
        s.install_event(
            "k3s1",
            &secret,
            r#"{"event":"progress","written":400,"total":1000}"#
        ),
        200
    );
    let (v, more) = st.until(Duration::from_secs(10), |ev, v| {
        ev == "node" && v["hostname"] == "k3s1" && v["bytes_written"] == 400
    });
    seen.extend(more);
    assert_eq!(v["state"], "installing");
    assert_eq!(s.post("/api/v1/nodes/k3s2/disarm", "").0, 200);
    let (_, more) = st.until(Duration::from_secs(10), |ev, v| {
        ev == "node" && v["hostname"] == "k3s2" && v["state"] == "disarmed"
    });
    seen.extend(more);
    let all = seen.join("\n");
    assert!(!all.contains(&secret), "install secret in the stream");
    assert!(!all.contains(&s.token));
}

/// Protects the server from a tab (or a script) opening streams without end: at most 16 at
/// once, the next gets 503 with Retry-After, and a closed stream gives its place back.
#[test]
fn event_streams_are_capped() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let mut open: Vec<Stream> = (0..16).map(|_| Stream::open(&s)).collect();
    assert!(open.iter().all(|st| st.status == 200));
    let refused = Stream::open(&s);
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(header(&refused.head, "retry-after"), Some("5"));
    let (_, metrics) = s.anon_get("/metrics");
    assert!(
        metrics.contains("ironseed_event_streams_open 16\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ironseed_event_streams_refused_total 1\n"),
        "{metrics}"
    );
    drop(open.pop());
    // The pump notices the closed socket at once (its queue's receiver is dropped).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = Stream::open(&s);
        if again.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place of a closed stream never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Protects shutdown: open streams end when pxe stops; they never hold it for the drain time.
#[test]
fn open_streams_do_not_hold_shutdown() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let mut st = Stream::open(&s);
    st.until(Duration::from_secs(10), |ev, _| ev == "snapshot");
    let t = Instant::now();
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.fill() {
        assert!(
            Instant::now() < deadline,
            "the stream stayed open after shutdown"
        );
    }
}

fn lab_with_topology() -> Lab {
    lab_with_files(&loopback_inventory(), &[], topology_fixture)
}

/// The picture names hosts and addresses: operator-only, served with a policy that keeps any
/// script in it from running when opened on its own; 404 when the bundle has none.
#[test]
fn the_topology_picture_is_for_the_operator_and_inert() {
    let lab = lab_with_files(&loopback_inventory(), &[], |_| {
        vec![("topology.svg".to_string(), Vec::new())]
    });
    let s = Server::start(&lab, &[]);
    let auth = format!("Authorization: Bearer {}", s.token);
    let (st, _, body) = get_raw(s.http, "/api/v1/topology.svg", &[&auth]);
    assert_eq!(st, 404, "{body}");
    drop(s);

    let lab = lab_with_topology();
    let s = Server::start(&lab, &[]);
    let auth = format!("Authorization: Bearer {}", s.token);
    assert_eq!(get_raw(s.http, "/api/v1/topology.svg", &[]).0, 401);
    let (st, head, body) = get_raw(s.http, "/api/v1/topology.svg", &[&auth]);
    assert_eq!(st, 200, "{body}");
    assert_eq!(header(&head, "content-type"), Some("image/svg+xml"));
    let csp = header(&head, "content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"), "{csp}");
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    assert!(body.contains("data-node=\"k3s-master1\""));
}
