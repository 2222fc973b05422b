//! The appliance's API as `pxe status` and `pxe arm` use it, over the installer's HTTP client
//! (images::http: plain http on the LAN, no TLS stack), with the operator API token.

use anyhow::{Context, Result, bail};
use images::http;

use crate::cli::TokenArgs;

pub struct Client {
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(server: &str, t: &TokenArgs) -> Result<Client> {
        let token = images::api_token::resolve(t.api_token_file.as_deref())
            .context("reading the API token")?;
        Ok(Client {
            base: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let (status, bytes) = http::exchange(method, &url, body, self.token.as_deref())?;
        if status == 401 && self.token.is_none() {
            bail!(
                "{url}: HTTP 401: the server wants its API token; pass --api-token-file FILE or \
                 set IRONSEED_API_TOKEN (pxe serve wrote it to STATE/api-token)"
            );
        }
        if status != 200 {
            bail!(
                "{url}: HTTP {status}: {}",
                super::clean(String::from_utf8_lossy(&bytes).trim())
            );
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{url}: not JSON"))
    }

    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.json("GET", path, None)
    }

    pub fn post(&self, path: &str) -> Result<serde_json::Value> {
        self.json("POST", path, Some(&serde_json::Value::Null))
    }
}
