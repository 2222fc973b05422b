//! A small HTTP/1.1 client for the installer: plain http to the appliance on the LAN, streaming
//! bodies (images are gigabytes), Range resume. No TLS stack in the initramfs.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}: only http://host[:port]/path URLs are supported")]
    Url(String),
    #[error("{url}: {source}")]
    Io { url: String, source: io::Error },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: malformed reply: {what}")]
    Malformed { url: String, what: String },
}

pub struct Response {
    pub status: u16,
    pub content_length: Option<u64>,
    body: Box<dyn Read + Send>,
}

impl Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

fn split(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.into()))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if host.is_empty() {
        return Err(HttpError::Url(url.into()));
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((
        host,
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

fn request(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io {
        url: url.into(),
        source,
    };
    let (host, path) = split(url)?;
    let mut s = TcpStream::connect(&host).map_err(io)?;
    // Generous: a loaded appliance or a busy TCG guest must not fail an install.
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: ironseed-installer\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed {
            url: url.into(),
            what: format!("status line {line:?}"),
        })?;
    let (mut len, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line).map_err(io)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let body: Box<dyn Read + Send> = if chunked {
        Box::new(Chunked {
            inner: r,
            left: 0,
            done: false,
        })
    } else if let Some(n) = len {
        Box::new(r.take(n))
    } else {
        Box::new(r)
    };
    Ok(Response {
        status,
        content_length: if chunked { None } else { len },
        body,
    })
}

/// GET, failing on anything but `ok` statuses.
pub fn get(url: &str, range_from: Option<u64>, ok: &[u16]) -> Result<Response, HttpError> {
    let headers: Vec<(&str, String)> = range_from
        .map(|n| ("Range", format!("bytes={n}-")))
        .into_iter()
        .collect();
    let r = request("GET", url, &headers, b"")?;
    if !ok.contains(&r.status) {
        return Err(HttpError::Status {
            url: url.into(),
            status: r.status,
        });
    }
    Ok(r)
}

pub fn get_bytes(url: &str) -> Result<Vec<u8>, HttpError> {
    let mut r = get(url, None, &[200])?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|source| HttpError::Io {
        url: url.into(),
        source,
    })?;
    Ok(out)
}

/// Largest reply body `exchange` reads: API answers are small, a hostile server's are not.
const EXCHANGE_MAX: u64 = 64 << 20;

/// One request with an optional JSON body (and the operator API token, when given); the status
/// and the whole reply body, whatever the status (API callers show the server's error text).
pub fn exchange(
    method: &str,
    url: &str,
    json: Option<&serde_json::Value>,
    bearer: Option<&str>,
) -> Result<(u16, Vec<u8>), HttpError> {
    let body = json.map(|v| v.to_string()).unwrap_or_default();
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(t) = bearer {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    let mut r = request(method, url, &headers, body.as_bytes())?;
    let status = r.status;
    let mut out = Vec::new();
    (&mut r)
        .take(EXCHANGE_MAX)
        .read_to_end(&mut out)
        .map_err(|source| HttpError::Io {
            url: url.into(),
            source,
        })?;
    Ok((status, out))
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Result<u16, HttpError> {
    exchange("POST", url, Some(body), None).map(|(status, _)| status)
}

struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split("http://10.0.0.1:8080/a/b").unwrap(),
            ("10.0.0.1:8080".into(), "/a/b".into())
        );
        assert_eq!(split("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(split("https://h/").is_err());
        assert!(split("http:///x").is_err());
    }

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        let mut c = Chunked {
            inner: &raw[..],
            left: 0,
            done: false,
        };
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "Wikipedia");
    }
}
