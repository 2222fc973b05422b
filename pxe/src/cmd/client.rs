//! A minimal HTTP/1.1 client for the appliance's own API (plain http on the LAN); enough for
//! `pxe status` and `pxe arm` without pulling a TLS stack into the build.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

pub fn request(method: &str, url: &str, body: Option<&[u8]>) -> Result<Reply> {
    let (host, path) = split_url(url)?;
    let mut s = TcpStream::connect(&host).with_context(|| format!("connecting to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading reply")?;
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP reply")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let mut body = raw[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol])?.trim(), 16)?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        if b.len() < n + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

fn json(url: &str, r: Reply) -> Result<serde_json::Value> {
    if r.status != 200 {
        bail!(
            "{url}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        );
    }
    serde_json::from_slice(&r.body).with_context(|| format!("{url}: not JSON"))
}

pub fn get_json(url: &str) -> Result<serde_json::Value> {
    json(url, request("GET", url, None)?)
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    json(
        url,
        request("POST", url, Some(body.to_string().as_bytes()))?,
    )
}
