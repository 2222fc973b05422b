//! The dashboard at `/`: one page, its script and stylesheet, embedded in the binary (no CDN,
//! nothing fetched at build time, works offline on the LAN). The page itself is open and holds
//! no data: everything it shows comes from the operator API with the token the operator types
//! in once (kept in the tab's `sessionStorage`). docs/dashboard.md.
//!
//! Every answer of the page carries [`SECURITY_HEADERS`]: scripts only from this server (no
//! inline script, no `eval`), no framing (clickjacking of the arm button), no MIME sniffing.
//! The script renders everything that came from the network with `textContent`.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, internal, text};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// The page's Content Security Policy.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The topology picture's policy when it is opened on its own: an SVG document may carry
/// script, and this one is never allowed to run any.
pub const SVG_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; sandbox";

/// Headers on every dashboard answer.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("content-security-policy", PAGE_CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (k, v) in SECURITY_HEADERS {
        r.headers_mut()
            .insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    r
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The bundle's file of the cluster picture (`builder render`).
pub const TOPOLOGY_FILE: &str = "topology.svg";

/// `GET /api/v1/topology.svg` (operator: it names hosts and addresses). 404 when the bundle
/// has none (rendered by an older builder).
pub(super) async fn topology(State(app): App) -> Response {
    let bundle = app.bundle.get();
    if !bundle.has(TOPOLOGY_FILE) {
        return text(
            StatusCode::NOT_FOUND,
            "this bundle has no topology.svg (render it again with a newer builder)\n",
        );
    }
    let svg = match bundle.read(TOPOLOGY_FILE) {
        Ok(b) => b,
        Err(e) => return internal("reading topology.svg", e),
    };
    let mut r = ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response();
    for (k, v) in [
        ("content-security-policy", SVG_CSP),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        r.headers_mut()
            .insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    r
}
