//! `/artifacts/` downloads as the installer, curl and iPXE make them, through the sendfile
//! fast path and, on the same connections, the router behind it: byte-exact bodies, ranges and
//! resume, HEAD, If-Range, keep-alive and pipelining across the hand-off, and the metrics.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::serve::{self, Server, lab};

/// 9 MiB + 123 bytes: several sendfile chunks and socket-buffer refills, and no round size.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Read one response off a keep-alive connection; bodies are framed by content-length, or
/// chunked (the router's own answers).
fn reply(r: &mut BufReader<TcpStream>, head_request: bool) -> Reply {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line: {line:?}"))
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        let (k, v) = line.split_once(':').expect("header line");
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut body = Vec::new();
    if head_request {
    } else if let Some(n) = headers.get("content-length") {
        body.resize(n.parse().unwrap(), 0);
        r.read_exact(&mut body).unwrap();
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn connect(s: &Server) -> (TcpStream, BufReader<TcpStream>) {
    let tcp = TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(tcp.try_clone().unwrap());
    (tcp, r)
}

fn setup() -> (serve::Lab, Vec<u8>, Server) {
    let lab = lab();
    let art = lab.dir.path().join("artifacts");
    std::fs::create_dir_all(art.join("images")).unwrap();
    let data = pattern((9 << 20) + 123);
    std::fs::write(art.join("images/test.raw.zst"), &data).unwrap();
    std::fs::write(
        art.join("images/test.raw.zst.sha256"),
        "abc  test.raw.zst\n",
    )
    .unwrap();
    std::fs::write(art.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", art.join("escape")).unwrap();
    let s = Server::start(&lab, &["--artifacts", art.to_str().unwrap()]);
    (lab, data, s)
}

fn curl(args: &[&str], out: &Path) -> bool {
    Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(out)
        .args(args)
        .status()
        .expect("curl")
        .success()
}

#[test]
fn images_download_byte_exact_with_the_installer_client_and_curl_and_resume() {
    let (lab, data, s) = setup();
    let url = s.url("/artifacts/images/test.raw.zst");

    // The installer's own client: whole, then resumed from an offset (its retry path).
    let mut whole = Vec::new();
    let resp = images::http::get(&url, None, &[200]).unwrap();
    assert_eq!(resp.content_length, Some(data.len() as u64));
    { resp }.read_to_end(&mut whole).unwrap();
    assert!(whole == data, "full download differs");
    let from = 4_000_001u64;
    let mut tail = Vec::new();
    images::http::get(&url, Some(from), &[206])
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    assert!(tail == data[from as usize..], "resumed download differs");

    // curl: whole, a middle range, and `-C -` resuming a cut-off file.
    let out = lab.dir.path().join("got");
    assert!(curl(&[&url], &out));
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(curl(&["-r", "1000-1999", &url], &out));
    assert_eq!(std::fs::read(&out).unwrap(), &data[1000..2000]);
    std::fs::write(&out, &data[..3_333_333]).unwrap();
    assert!(curl(&["-C", "-", &url], &out));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "curl -C - result differs"
    );

    // HEAD: the same head as GET, no body (curl would hang or complain on a stray body).
    let o = Command::new("curl")
        .args(["-sSfI", "--max-time", "10", &url])
        .output()
        .unwrap();
    assert!(o.status.success());
    let head = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", data.len())),
        "{head}"
    );
    assert!(head.contains("accept-ranges: bytes\r\n"), "{head}");

    // An empty file is a 200 with no body, not a hang.
    assert!(curl(
        &["--max-time", "10", &s.url("/artifacts/empty")],
        &out
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"");
}

#[test]
fn ranges_past_the_end_and_stale_if_range_follow_rfc_9110() {
    let (_lab, data, s) = setup();
    let (mut w, mut r) = connect(&s);
    let len = data.len();
    write!(
        w,
        "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\nRange: bytes={len}-\r\n\r\n"
    )
    .unwrap();
    let a = reply(&mut r, false);
    assert_eq!(a.status, 416);
    assert_eq!(a.headers["content-range"], format!("bytes */{len}"));
    assert!(a.body.is_empty());

    // The last 10 bytes; then the same range with the file's own date as If-Range (206) and
    // with another date (the file changed since: the whole file, 200).
    write!(
        w,
        "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\nRange: bytes=-10\r\n\r\n"
    )
    .unwrap();
    let b = reply(&mut r, false);
    assert_eq!(b.status, 206);
    assert_eq!(
        b.headers["content-range"],
        format!("bytes {}-{}/{len}", len - 10, len - 1)
    );
    assert_eq!(b.body, &data[len - 10..]);
    let date = b.headers["last-modified"].clone();
    write!(w, "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: {date}\r\n\r\n").unwrap();
    assert_eq!(reply(&mut r, false).status, 206);
    write!(w, "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nIf-Range: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n").unwrap();
    let stale = reply(&mut r, false);
    assert_eq!(stale.status, 200);
    assert!(stale.body == data);
    // A conditional GET (a browser revisiting) is answered by the router: 304, no body.
    write!(
        w,
        "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\nIf-Modified-Since: {date}\r\n\r\n"
    )
    .unwrap();
    assert_eq!(reply(&mut r, true).status, 304);
    write!(
        w,
        "GET /artifacts/images/test.raw.zst.sha256 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    assert_eq!(reply(&mut r, false).body, b"abc  test.raw.zst\n");
}

#[test]
fn one_connection_carries_fast_path_and_router_answers_in_order() {
    let (_lab, data, s) = setup();
    let (mut w, mut r) = connect(&s);
    // Pipelined in one write: two fast-path answers, then requests only the router answers
    // (the hand-off must carry the bytes already read), then artifacts again (now through the
    // router, which must serve the same bytes).
    let mut batch = String::new();
    for req in [
        "GET /artifacts/images/test.raw.zst.sha256",
        "HEAD /artifacts/images/test.raw.zst",
        "GET /healthz",
        "GET /artifacts/escape",
        "GET /artifacts/%2e%2e/bundle/plan.json",
        "GET /artifacts/images/test.raw.zst",
    ] {
        batch.push_str(&format!("{req} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    w.write_all(batch.as_bytes()).unwrap();
    let sha = reply(&mut r, false);
    assert_eq!(
        (sha.status, sha.body.as_slice()),
        (200, &b"abc  test.raw.zst\n"[..])
    );
    assert_eq!(sha.headers["content-type"], "text/plain; charset=utf-8");
    let head = reply(&mut r, true);
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], data.len().to_string());
    let health = reply(&mut r, false);
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(
        reply(&mut r, false).status,
        404,
        "symlink out of the folder"
    );
    assert_eq!(reply(&mut r, false).status, 404, "encoded traversal");
    let img = reply(&mut r, false);
    assert_eq!(img.status, 200);
    assert!(img.body == data, "router answer differs from the file");

    // A fresh connection, `Connection: close`: answered, then closed by the server.
    let (mut w, mut r) = connect(&s);
    write!(
        w,
        "GET /artifacts/images/test.raw.zst.sha256 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let last = reply(&mut r, false);
    assert_eq!(last.headers["connection"], "close");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after a close answer: {rest:?}");

    // Every answer above counted under the artifacts route, fast path or not.
    let (_, metrics) = s.get("/metrics");
    let count = |status: &str| -> u64 {
        let key =
            format!("ironseed_http_requests_total{{route=\"artifacts\",status=\"{status}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("200"), 4, "{metrics}");
    assert_eq!(count("404"), 2, "{metrics}");
}

#[test]
fn shutdown_closes_idle_keep_alive_connections_on_both_paths() {
    let (_lab, _data, s) = setup();
    // One idle connection after a fast-path answer, one after a router answer.
    let (mut fast_w, mut fast_r) = connect(&s);
    write!(
        fast_w,
        "GET /artifacts/images/test.raw.zst.sha256 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    assert_eq!(reply(&mut fast_r, false).status, 200);
    let (mut routed_w, mut routed_r) = connect(&s);
    write!(routed_w, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(reply(&mut routed_r, false).status, 200);
    let started = std::time::Instant::now();
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "idle connections held shutdown for {:?}",
        started.elapsed()
    );
    for r in [&mut fast_r, &mut routed_r] {
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "connection left open");
    }
}

#[test]
fn a_client_that_hangs_up_mid_image_does_not_disturb_the_server() {
    let (_lab, data, s) = setup();
    for _ in 0..3 {
        let (mut w, mut r) = connect(&s);
        write!(
            w,
            "GET /artifacts/images/test.raw.zst HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .unwrap();
        let mut some = vec![0u8; 100_000];
        r.read_exact(&mut some).unwrap();
        // Gone with most of the body unsent: the server's next sendfile hits a reset.
        drop((w, r));
    }
    let (st, body) = s.get("/healthz");
    assert_eq!((st, body.as_str()), (200, "ok\n"));
    let mut whole = Vec::new();
    images::http::get(&s.url("/artifacts/images/test.raw.zst"), None, &[200])
        .unwrap()
        .read_to_end(&mut whole)
        .unwrap();
    assert!(whole == data);
    assert_eq!(
        s.stop().code(),
        Some(0),
        "pxe serve died or failed on shutdown"
    );
}
