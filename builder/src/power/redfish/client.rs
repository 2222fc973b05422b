//! HTTPS to the BMC: ureq for HTTP, rustls for TLS with the node's trust rule — `ca: FILE` as
//! the only root, or `fingerprint:` checked by a verifier of our own inside the handshake (a
//! mismatch aborts it before a byte of HTTP, so before any credential, is sent), or
//! `insecure_tls: true`. Answers are capped in size and must be JSON.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, TcpConnector,
    Transport, TransportAdapter,
};

use images::bundle::printable;

use super::RedfishError;

/// The most of one answer builder reads: a ComputerSystem is a few KiB; a BMC (or an
/// impostor) streaming more is cut off.
pub const MAX_BODY: u64 = 1 << 20;

/// How the BMC's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    Fingerprint(String),
    Ca(std::path::PathBuf),
    Insecure,
}

/// What one request got back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub auth_token: Option<String>,
    pub location: Option<String>,
}

/// One HTTP exchange with the BMC; the real one is [`Client`], unit tests replay captures.
pub trait Http {
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, RedfishError>;
}

pub struct Client {
    agent: ureq::Agent,
    /// `https://host[:port]`, no trailing slash.
    base: String,
    /// The fingerprint the pinned verifier saw, for the mismatch message.
    seen: Arc<Mutex<Option<String>>>,
    expected: Option<String>,
}

/// `host`, `host:port` or `https://host[:port][/]` → `https://host[:port]`.
pub fn base_url(address: &str) -> String {
    let a = address.trim().trim_end_matches('/');
    let a = a.strip_prefix("https://").unwrap_or(a);
    format!("https://{a}")
}

pub fn sha256_hex(der: &[u8]) -> String {
    images::bundle::hex(&Sha256::digest(der))
}

/// `AB:CD:…` as openssl prints it.
pub fn colons(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

impl Client {
    pub fn new(address: &str, trust: &Trust, timeout: Duration) -> Result<Client, RedfishError> {
        // ring, not aws-lc-rs: no cmake/NASM in the build. Its deprecation is about
        // post-quantum key exchange, which no BMC speaks.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| RedfishError::Tls(format!("TLS setup: {e}")))?;
        let algs = provider.signature_verification_algorithms;
        let (config, expected) = match trust {
            Trust::Fingerprint(fp) => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        expected: Some(fp.clone()),
                        seen: seen.clone(),
                        algs,
                    }))
                    .with_no_client_auth(),
                Some(fp.clone()),
            ),
            Trust::Ca(path) => {
                let roots = load_ca(path)?;
                let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| RedfishError::Tls(format!("{}: {e}", path.display())))?;
                (builder.with_webpki_verifier(v).with_no_client_auth(), None)
            }
            Trust::Insecure => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned {
                        expected: None,
                        seen: seen.clone(),
                        algs,
                    }))
                    .with_no_client_auth(),
                None,
            ),
        };
        let connector = ().chain(TcpConnector::default()).chain(TlsConnector {
            config: Arc::new(config),
        });
        let cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(true)
            // A redirect could carry the Authorization header to another host; a BMC does
            // not redirect its API.
            .max_redirects(0)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(timeout))
            .user_agent("ironseed-builder")
            .build();
        Ok(Client {
            agent: ureq::Agent::with_parts(cfg, connector, DefaultResolver::default()),
            base: base_url(address),
            seen,
            expected,
        })
    }

    fn map_err(&self, url: &str, e: ureq::Error) -> RedfishError {
        if let (Some(expected), Some(seen)) = (
            &self.expected,
            self.seen.lock().ok().and_then(|s| s.clone()),
        ) && &seen != expected
        {
            return RedfishError::Fingerprint {
                url: url.to_string(),
                expected: colons(expected),
                seen: colons(&seen),
            };
        }
        match e {
            ureq::Error::Timeout(t) => RedfishError::Timeout(format!("{url}: {t}")),
            ureq::Error::BodyExceedsLimit(n) => {
                RedfishError::BadBody(format!("{url}: answer larger than {n} bytes"))
            }
            ureq::Error::Rustls(t) => RedfishError::Tls(format!("{url}: {t}")),
            ureq::Error::Io(io) if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
                RedfishError::Tls(format!("{url}: {}", printable(&io.to_string(), 300)))
            }
            other => {
                RedfishError::Connect(format!("{url}: {}", printable(&other.to_string(), 300)))
            }
        }
    }
}

impl Http for Client {
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, RedfishError> {
        let url = format!("{}{}", self.base, path);
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let built = match body {
            Some(v) => b
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(v).expect("a Value serializes"))
                .map(|r| self.agent.run(r)),
            None => b.body(()).map(|r| self.agent.run(r)),
        };
        let mut resp = built
            .map_err(|e| RedfishError::Connect(format!("{url}: {e}")))?
            .map_err(|e| self.map_err(&url, e))?;
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let auth_token = header("X-Auth-Token");
        let location = header("Location").map(|l| printable(&l, 512));
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.map_err(&url, e))?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                // An error page of a proxy or a web UI: say so, JSON is what Redfish answers.
                Err(_) if !(200..300).contains(&status) => Value::Null,
                Err(e) => {
                    return Err(RedfishError::BadBody(format!(
                        "{url}: HTTP {status} with a body that is not JSON ({e}): {}",
                        printable(
                            &String::from_utf8_lossy(&bytes[..bytes.len().min(120)]),
                            120
                        )
                    )));
                }
            }
        };
        Ok(Reply {
            status,
            body,
            auth_token,
            location,
        })
    }
}

fn load_ca(path: &Path) -> Result<RootCertStore, RedfishError> {
    let fail = |e: String| RedfishError::Tls(format!("reading the CA {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let c = c.map_err(|e| fail(e.to_string()))?;
        roots.add(c).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(roots)
}

/// Accepts exactly the leaf certificate whose SHA-256 is pinned, or with `expected: None`
/// (`insecure_tls: true`, which the operator wrote down) any certificate. Name and dates are
/// not checked — the pin is the trust decision (an iDRAC's self-signed certificate names
/// `idrac-SVCTAG`, not the address builder uses) — but the handshake signature still is, so
/// only the holder of that certificate's key gets through.
#[derive(Debug)]
struct Pinned {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = sha256_hex(end_entity);
        let ok = self.expected.as_ref().is_none_or(|e| *e == fp);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp);
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// ureq's own rustls connector takes only root certificates; this one takes our
/// `ClientConfig` (with the pinning verifier). Same shape as ureq's `RustlsConnector`.
#[derive(Debug)]
struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("no host in the URL"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = ServerName::try_from(host).map_err(|_| ureq::Error::Tls("invalid host name"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        conn.complete_io(&mut sock)?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned { conn, sock },
        })))
    }
}

struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }
    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        use std::io::Write;
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }
    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        use std::io::Read;
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let n = self.stream.read(input)?;
        self.buffers.input_appended(n);
        Ok(n > 0)
    }
    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }
    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_https_urls() {
        assert_eq!(base_url("idrac-k3s3.lab"), "https://idrac-k3s3.lab");
        assert_eq!(base_url("10.0.20.202:8443"), "https://10.0.20.202:8443");
        assert_eq!(base_url("https://10.0.20.202/"), "https://10.0.20.202");
    }

    #[test]
    fn fingerprints_print_like_openssl() {
        assert_eq!(colons("abcd01"), "AB:CD:01");
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
