//! The appliance's API as `pxe status` and `pxe arm` use it, over the installer's HTTP client
//! (images::http: plain http on the LAN, no TLS stack).

use anyhow::{Context, Result, bail};
use images::http;

fn json(method: &str, url: &str, body: Option<&serde_json::Value>) -> Result<serde_json::Value> {
    let (status, bytes) = http::exchange(method, url, body)?;
    if status != 200 {
        bail!(
            "{url}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        );
    }
    serde_json::from_slice(&bytes).with_context(|| format!("{url}: not JSON"))
}

pub fn get_json(url: &str) -> Result<serde_json::Value> {
    json("GET", url, None)
}

pub fn post_json(url: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    json("POST", url, Some(body))
}
