//! The slice of HTTP/1.1 the artifact fast path speaks itself (RFC 9110, RFC 9112): request
//! heads of a plain GET or HEAD under `/artifacts/`, one byte range, and the response head.
//! Everything else (other paths and methods, bodies, percent-encoding, malformed heads) is
//! [`Parse::Other`] and goes to the full HTTP stack, which owns the error answers.

/// A request head longer than this is not ours; hyper answers it (431).
pub const MAX_HEAD: usize = 16 << 10;
const MAX_HEADERS: usize = 48;

/// What the front of a connection does with the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet: read more.
    Incomplete,
    /// A request the fast path can answer; its head is the first `head_len` bytes.
    File { head_len: usize, req: FileRequest },
    /// Anything else: hand the connection, these bytes included, to the full HTTP stack.
    Other,
}

#[derive(Debug, PartialEq, Eq)]
pub struct FileRequest {
    /// HEAD: the same head as GET, no body.
    pub head_only: bool,
    /// The request target, starting with `/artifacts/`.
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    /// HTTP/1.1 without `Connection: close`. HTTP/1.0 connections are closed after one answer.
    pub keep_alive: bool,
}

pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parse::Incomplete,
        _ => return Parse::Other,
    };
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parse::Other,
    };
    let Some(path) = req.path.filter(|p| plain_artifact_path(p)) else {
        return Parse::Other;
    };
    let mut keep_alive = req.version == Some(1);
    let (mut range, mut if_range) = (None, None);
    for h in req.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok().map(str::trim);
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let v = value().unwrap_or("");
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("range") {
            // Two Range fields, or one that is not text: not a request to guess at.
            if range.is_some() {
                return Parse::Other;
            }
            match value() {
                Some(v) => range = Some(v.to_owned()),
                None => return Parse::Other,
            }
        } else if name.eq_ignore_ascii_case("if-range") {
            if_range = value().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("content-length") {
            // A GET with a body (RFC 9110 §9.3.1: no defined meaning) is left to hyper, which
            // knows how to skip it; the fast path never reads bodies.
            if value() != Some("0") {
                return Parse::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            // Conditional requests (browsers, caches; never installers or
            // firmware) get tower-http's full precondition handling, 304 and 412
            // included.
            || name.eq_ignore_ascii_case("if-modified-since")
            || name.eq_ignore_ascii_case("if-unmodified-since")
            || name.eq_ignore_ascii_case("if-match")
            || name.eq_ignore_ascii_case("if-none-match")
        {
            return Parse::Other;
        }
    }
    Parse::File {
        head_len,
        req: FileRequest {
            head_only,
            path: path.to_owned(),
            range,
            if_range,
            keep_alive,
        },
    }
}

/// `/artifacts/` followed by unreserved characters and slashes only: no query, no fragment, no
/// percent-encoding, so the target is the file name without any decoding. Traversal is still
/// the caller's to refuse (`..` segments are made of allowed characters).
fn plain_artifact_path(p: &str) -> bool {
    p.strip_prefix("/artifacts/").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/+".contains(&b))
    })
}

/// Which bytes of a `len`-byte file an answer carries (RFC 9110 §14).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Span {
    /// 200, the whole file.
    Full,
    /// 206, bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// 416: a well-formed range that starts past the end.
    Unsatisfiable,
}

/// The span a Range header asks for. A header the server does not understand, an invalid one
/// or a multi-range request is ignored (§14.2: the server MAY ignore Range) and the whole file
/// is sent; installers ask for at most one range, to resume.
pub fn span(range: Option<&str>, len: u64) -> Span {
    let Some(r) = range else { return Span::Full };
    let Some((unit, set)) = r.split_once('=') else {
        return Span::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Span::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Span::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Past u64: larger than any file, which is what it means.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // "-N": the last N bytes.
        (true, false) => match num(last) {
            None => Span::Full,
            Some(0) => Span::Unsatisfiable,
            Some(_) if len == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        // "A-": from A to the end.
        (false, true) => match num(first) {
            None => Span::Full,
            Some(a) if a >= len => Span::Unsatisfiable,
            Some(a) => Span::Part {
                start: a,
                end: len - 1,
            },
        },
        // "A-B".
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    Span::Unsatisfiable
                } else {
                    Span::Part {
                        start: a,
                        end: b.min(len - 1),
                    }
                }
            }
            _ => Span::Full,
        },
        (true, true) => Span::Full,
    }
}

/// What the response head says about the file.
#[derive(Debug)]
pub struct FileHead<'a> {
    pub len: u64,
    pub span: Span,
    /// IMF-fixdate of the file's mtime (also the validator `If-Range` is compared with).
    pub last_modified: &'a str,
    /// IMF-fixdate of now.
    pub date: &'a str,
    pub content_type: &'static str,
    pub keep_alive: bool,
}

impl FileHead<'_> {
    pub fn status(&self) -> u16 {
        match self.span {
            Span::Full => 200,
            Span::Part { .. } => 206,
            Span::Unsatisfiable => 416,
        }
    }

    /// The body's bytes as `(offset, length)`; a 416 has none.
    pub fn body(&self) -> (u64, u64) {
        match self.span {
            Span::Full => (0, self.len),
            Span::Part { start, end } => (start, end - start + 1),
            Span::Unsatisfiable => (0, 0),
        }
    }

    pub fn render(&self) -> String {
        use std::fmt::Write;
        let reason = match self.status() {
            200 => "OK",
            206 => "Partial Content",
            _ => "Range Not Satisfiable",
        };
        let mut h = format!("HTTP/1.1 {} {reason}\r\n", self.status());
        let _ = write!(h, "date: {}\r\n", self.date);
        let _ = write!(h, "last-modified: {}\r\n", self.last_modified);
        h.push_str("accept-ranges: bytes\r\n");
        match self.span {
            Span::Part { start, end } => {
                let _ = write!(h, "content-range: bytes {start}-{end}/{}\r\n", self.len);
            }
            Span::Unsatisfiable => {
                let _ = write!(h, "content-range: bytes */{}\r\n", self.len);
            }
            Span::Full => {}
        }
        if self.status() != 416 {
            let _ = write!(h, "content-type: {}\r\n", self.content_type);
        }
        let _ = write!(h, "content-length: {}\r\n", self.body().1);
        if !self.keep_alive {
            h.push_str("connection: close\r\n");
        }
        h.push_str("\r\n");
        h
    }
}

/// Checksums, manifests and scripts read as text in a browser; everything else is bytes.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "sha256" | "txt" | "inputs" | "sh" => "text/plain; charset=utf-8",
        "yaml" | "yml" => "application/yaml",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(raw: &str) -> FileRequest {
        match parse(raw.as_bytes()) {
            Parse::File { head_len, req } => {
                assert_eq!(head_len, raw.len(), "{raw:?}");
                req
            }
            other => panic!("{raw:?} gave {other:?}"),
        }
    }

    #[test]
    fn curl_and_ipxe_heads_take_the_fast_path() {
        // curl 7.88 `curl -r 5- URL` and iPXE 1.21's `kernel http://...` heads, byte for byte.
        let curl = "GET /artifacts/images/debian-12.raw.zst HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nRange: bytes=5-\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
        let r = file(curl);
        assert_eq!(r.path, "/artifacts/images/debian-12.raw.zst");
        assert_eq!(r.range.as_deref(), Some("bytes=5-"));
        assert!(r.keep_alive && !r.head_only);
        let ipxe = "GET /artifacts/installer/vmlinuz HTTP/1.1\r\nConnection: keep-alive\r\nUser-Agent: iPXE/1.21.1+git20220113.fbbdc3926-0ubuntu1\r\nHost: 10.0.0.1\r\n\r\n";
        assert!(file(ipxe).keep_alive);
        let head =
            file("HEAD /artifacts/a HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close\r\n\r\n");
        assert!(head.head_only && !head.keep_alive);
        assert!(!file("GET /artifacts/a HTTP/1.0\r\n\r\n").keep_alive);
        assert!(file("GET /artifacts/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_head_split_across_reads_is_incomplete_until_its_blank_line() {
        let raw = b"GET /artifacts/a HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        // A pipelined second request stays in the buffer for the next round.
        let mut two = raw.to_vec();
        two.extend_from_slice(b"GET /artifacts/b HTTP/1.1\r\n");
        assert!(matches!(parse(&two), Parse::File { head_len, .. } if head_len == raw.len()));
    }

    #[test]
    fn everything_else_goes_to_the_full_stack() {
        let long = format!(
            "GET /artifacts/a HTTP/1.1\r\nX: {}\r\n",
            "y".repeat(MAX_HEAD)
        );
        for raw in [
            "POST /artifacts/a HTTP/1.1\r\n\r\n",
            "GET /boot/52-54-00-12-34-56.ipxe HTTP/1.1\r\n\r\n",
            "GET /artifacts/ HTTP/1.1\r\n\r\n",
            "GET /artifacts/%2e%2e/x HTTP/1.1\r\n\r\n",
            "GET /artifacts/a?x=1 HTTP/1.1\r\n\r\n",
            "GET /artifacts/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /artifacts/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /artifacts/a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /artifacts/a HTTP/1.1\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n",
            "GET /artifacts/a HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n",
            "GET /artifacts/a HTTP/1.1\r\nRange: bytes=1-2\r\nRange: bytes=3-4\r\n\r\n",
            "GET /artifacts/a HTTP/2.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // The start of a TLS ClientHello.
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03",
            long.as_str(),
        ] {
            assert_eq!(parse(raw.as_bytes()), Parse::Other, "{raw:?}");
        }
        // Too many header fields for the fast path's table: hyper decides.
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let raw = format!("GET /artifacts/a HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(raw.as_bytes()), Parse::Other);
    }

    #[test]
    fn byte_ranges_follow_rfc_9110() {
        use Span::*;
        let p = |start, end| Part { start, end };
        for (range, want) in [
            (None, Full),
            (Some("bytes=0-0"), p(0, 0)),
            (Some("bytes=2-4"), p(2, 4)),
            (Some("bytes=2-999"), p(2, 9)),
            (Some("bytes=7-"), p(7, 9)),
            (Some("bytes=-3"), p(7, 9)),
            (Some("bytes=-30"), p(0, 9)),
            (Some("Bytes = 1-1"), p(1, 1)),
            (Some("bytes=10-"), Unsatisfiable),
            (Some("bytes=10-20"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=99999999999999999999999-"), Unsatisfiable),
            // Invalid or not understood: ignored, the whole file.
            (Some("bytes=4-2"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=-"), Full),
            (Some("bytes=+1-2"), Full),
            (Some("bytes=0-1,4-5"), Full),
            (Some("items=0-1"), Full),
            (Some("bytes 0-1"), Full),
        ] {
            assert_eq!(span(range, 10), want, "{range:?}");
        }
        assert_eq!(span(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(span(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(span(None, 0), Full);
    }

    #[test]
    fn response_heads_carry_length_range_and_close() {
        let head = |span, keep_alive| FileHead {
            len: 10,
            span,
            last_modified: "Mon, 30 Nov 2026 01:00:00 GMT",
            date: "Mon, 30 Nov 2026 02:00:00 GMT",
            content_type: "application/octet-stream",
            keep_alive,
        };
        let full = head(Span::Full, true);
        assert_eq!(
            full.render(),
            "HTTP/1.1 200 OK\r\ndate: Mon, 30 Nov 2026 02:00:00 GMT\r\nlast-modified: Mon, 30 Nov 2026 01:00:00 GMT\r\naccept-ranges: bytes\r\ncontent-type: application/octet-stream\r\ncontent-length: 10\r\n\r\n"
        );
        assert_eq!(full.body(), (0, 10));
        let part = head(Span::Part { start: 2, end: 4 }, false);
        let r = part.render();
        assert!(r.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{r}");
        assert!(r.contains("\r\ncontent-range: bytes 2-4/10\r\n"), "{r}");
        assert!(r.contains("\r\ncontent-length: 3\r\n"), "{r}");
        assert!(r.ends_with("\r\nconnection: close\r\n\r\n"), "{r}");
        assert_eq!(part.body(), (2, 3));
        let none = head(Span::Unsatisfiable, true);
        let r = none.render();
        assert!(
            r.starts_with("HTTP/1.1 416 Range Not Satisfiable\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\ncontent-range: bytes */10\r\n"), "{r}");
        assert!(r.contains("\r\ncontent-length: 0\r\n"), "{r}");
        assert_eq!(none.body(), (0, 0));
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type("/artifacts/images/debian-12.raw.zst"),
            "application/octet-stream"
        );
        assert_eq!(
            content_type("/artifacts/images/debian-12.raw.zst.sha256"),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            content_type("/artifacts/installer/vmlinuz"),
            "application/octet-stream"
        );
    }
}
