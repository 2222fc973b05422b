//! An HTTP/1.1 file server for fetch tests, on loopback port 0, with faults on demand: cut the
//! connection after N body bytes, ignore Range, serve wrong bytes, answer 5xx, go slowly. It
//! records every request's Range and counts the body bytes it sent. Shared by the images and
//! builder tests (`#[path]`-included), so both test the same server behaviour.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Close the connection after this many body bytes, for the next `cuts` requests.
    pub cut_after: Option<u64>,
    pub cuts: usize,
    /// Answer every request with the whole file (200), as a server without Range support does.
    pub ignore_range: bool,
    /// Flip one byte in the middle of the body.
    pub corrupt: bool,
    /// Answer the next `fail` requests with 503.
    pub fail: usize,
    /// Send at most this many body bytes of a response, then hold the rest until
    /// this is set back to None: a download that is certainly still running.
    pub hold_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    /// The `bytes=N-` start of a Range header.
    pub range: Option<u64>,
}

#[derive(Default)]
struct Shared {
    body: Vec<u8>,
    behavior: Behavior,
    requests: Vec<Request>,
    bytes_sent: u64,
}

pub struct TestServer {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serve `body` at `/<anything>.raw*`; other paths get 404.
    pub fn start(body: Vec<u8>) -> TestServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared {
            body,
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let sh = sh.clone();
                std::thread::spawn(move || serve(c, &sh));
            }
        });
        TestServer {
            port,
            shared,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.shared.lock().unwrap().behavior);
    }

    pub fn set_body(&self, body: Vec<u8>) {
        self.shared.lock().unwrap().body = body;
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().unwrap().requests.clone()
    }

    pub fn bytes_sent(&self) -> u64 {
        self.shared.lock().unwrap().bytes_sent
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(c: TcpStream, shared: &Mutex<Shared>) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = v
                .trim()
                .strip_prefix("bytes=")
                .and_then(|s| s.strip_suffix('-'))
                .and_then(|s| s.parse::<u64>().ok());
        }
    }
    let mut w = c;
    let (body, from, cut, status) = {
        let mut s = shared.lock().unwrap();
        s.requests.push(Request {
            path: path.clone(),
            range,
        });
        let b = &mut s.behavior;
        let status = if !path.contains(".raw") {
            404
        } else if b.fail > 0 {
            b.fail -= 1;
            503
        } else {
            0
        };
        let cut = if b.cuts > 0 && b.cut_after.is_some() {
            b.cuts -= 1;
            b.cut_after
        } else {
            None
        };
        let from = if b.ignore_range { None } else { range };
        let mut body = s.body.clone();
        if s.behavior.corrupt {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        (body, from, cut, status)
    };
    if status != 0 {
        let _ = write!(
            w,
            "HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let len = body.len() as u64;
    let head = match from {
        Some(f) if f >= len => {
            let _ = write!(
                w,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Some(f) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {f}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            len - 1,
            len - f
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
        ),
    };
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut rest = &body[from.unwrap_or(0) as usize..];
    if let Some(n) = cut {
        rest = &rest[..(n as usize).min(rest.len())];
    }
    let mut sent = 0u64;
    for chunk in rest.chunks(64 << 10) {
        while shared
            .lock()
            .unwrap()
            .behavior
            .hold_after
            .is_some_and(|n| sent + chunk.len() as u64 > n)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        sent += chunk.len() as u64;
        if w.write_all(chunk).is_err() {
            return;
        }
        shared.lock().unwrap().bytes_sent += chunk.len() as u64;
    }
    let _ = w.flush();
    let _ = w.shutdown(Shutdown::Both);
}
