//! The operator API under `/api/v1`: every route in it — GET included, the node list gives
//! away MACs — goes through one layer, [`require_operator`], which wants
//! `Authorization: Bearer <token>` and refuses browser requests from another origin. Routes are
//! declared in [`routes`] only, and the layer wraps the whole nested router (fallback
//! included), so a route added later cannot skip it (Cobbler's CVE-2018-1000226 was 70
//! endpoints that each forgot the check).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::node::apply;
use super::{App, HttpApp, files, internal, text};
use crate::state::{Event, NodeRecord, StoreError, TransitionError, now_ms};
use images::bundle::printable;

/// The operator routes, relative to `/api/v1`. The only place one is declared.
pub fn routes() -> Vec<(&'static str, MethodRouter<Arc<HttpApp>>)> {
    vec![
        ("/reload", post(reload)),
        ("/nodes", get(nodes)),
        ("/nodes/{name}", get(node)),
        ("/nodes/{name}/arm", post(arm)),
        ("/nodes/{name}/disarm", post(disarm)),
        ("/nodes/{name}/power", post(power)),
        ("/discovered", get(discovered)),
        ("/discovered/{mac}/inspect", post(inspect)),
        ("/events/stream", get(super::events::stream)),
        ("/topology.svg", get(super::dashboard::topology)),
    ]
}

/// Every operator route with the layer around all of them, unknown paths included.
pub fn router(app: Arc<HttpApp>) -> Router<Arc<HttpApp>> {
    let mut r = Router::new();
    for (path, route) in routes() {
        r = r.route(path, route);
    }
    r.fallback(|| async { text(StatusCode::NOT_FOUND, "no such API route\n") })
        .layer(middleware::from_fn_with_state(app, require_operator))
}

/// Why an operator request is refused, if it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No or a wrong bearer token: 401.
    Unauthorized,
    /// A browser page of another origin (CSRF): 403, even with a token.
    CrossOrigin,
}

/// The check, pure over the request headers: a browser's `Origin` must be this server's own
/// (`http://<Host>`); the bearer token must equal `token` (constant time).
pub fn check(headers: &HeaderMap, token: &str) -> Result<(), Refused> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own = host.map(|h| format!("http://{h}"));
        if origin.to_str().ok() != own.as_deref() {
            return Err(Refused::CrossOrigin);
        }
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if images::api_token::secrets_equal(token, p) => Ok(()),
        _ => Err(Refused::Unauthorized),
    }
}

async fn require_operator(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    req: Request,
    next: Next,
) -> Response {
    // Inside the nested router the path has lost its `/api/v1` prefix: log the one asked for.
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let path = printable(&path, 200);
    match check(req.headers(), &app.api_token) {
        Ok(()) => next.run(req).await,
        Err(Refused::CrossOrigin) => {
            tracing::warn!(client = %peer.ip(), %path, "operator API: cross-origin request refused");
            text(
                StatusCode::FORBIDDEN,
                "cross-origin requests to the operator API are refused\n",
            )
        }
        Err(Refused::Unauthorized) => {
            tracing::warn!(client = %peer.ip(), %path, "operator API: missing or wrong token");
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "operator API token required: Authorization: Bearer <token> (pxe serve wrote it \
                 to STATE/api-token; clients read --api-token-file or IRONSEED_API_TOKEN)\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ironseed\""),
            );
            r
        }
    }
}

/// A node as the API shows it: never its install secret, only whether it has a live one. The
/// event stream leaves the timeline out (`timeline: false`); `last_event_ms` is its newest entry.
pub(super) fn view(app: &HttpApp, r: &NodeRecord, timeline: bool) -> serde_json::Value {
    let bundle = app.bundle.get();
    let n = bundle.node(&r.hostname);
    let live = r.live_secret(now_ms()).is_some();
    let mut v = json!({
        "hostname": r.hostname,
        "mac": n.map(|n| n.mac.to_string()),
        "ip": n.map(|n| n.ip),
        "role": n.map(|n| n.role),
        "profile": n.map(|n| n.profile.as_str()),
        "last_event_ms": r.timeline.iter().map(|e| e.at_ms).max(),
        "state": r.state,
        "bytes_written": r.bytes_written,
        "bytes_total": r.bytes_total,
        "installed_sha256": r.installed_sha256,
        "last_error": r.last_error,
        "installs": r.installs,
        "install_secret": live,
        "install_window_ends_ms": live.then_some(r.install_expires_ms),
        "last_power": r.last_power,
    });
    if timeline {
        v["timeline"] = json!(r.timeline);
    }
    v
}

async fn nodes(State(app): App) -> Response {
    let list: Vec<_> = app
        .store
        .all()
        .iter()
        .map(|r| view(&app, r, true))
        .collect();
    let bundle = app.bundle.get();
    Json(json!({"cluster": bundle.plan.cluster, "bundle": bundle.id, "nodes": list}))
        .into_response()
}

/// Re-read and verify the bundle folder and serve it from now on (after `builder render` or
/// `builder rebuild`). A bundle that fails verification is refused and the old one stays.
/// Node states carry over; nodes new to this pxe start disarmed (or armed under `--arm-new`
/// when the bundle is a first deployment). DHCP settings taken from the network section at
/// startup (pool, reserved addresses, server address) need a restart.
async fn reload(State(app): App) -> Response {
    let live = app.bundle.clone();
    let loaded = match tokio::task::spawn_blocking(move || live.load_fresh()).await {
        Ok(r) => r,
        Err(e) => return internal("reloading the bundle", e),
    };
    let new = match loaded {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("reload refused, still serving the old bundle: {e}");
            return text(
                StatusCode::CONFLICT,
                format!("reload refused, still serving the old bundle: {e}\n"),
            );
        }
    };
    let hosts: Vec<String> = new
        .plan
        .nodes
        .iter()
        .map(|n| n.hostname.to_string())
        .collect();
    let (store, id, a, plan) = (
        app.store.clone(),
        new.id.clone(),
        app.clone(),
        new.plan.clone(),
    );
    let reconciled = tokio::task::spawn_blocking(move || {
        let policy = a.new_nodes_for(&plan);
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        store.reconcile(&id, &hosts, policy)
    })
    .await;
    let reconciled = match reconciled {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return internal("saving node state", e),
        Err(e) => return internal("saving node state", e),
    };
    let (id, nodes) = (new.id.clone(), new.plan.nodes.len());
    let old = app.bundle.replace(new);
    let current = app.bundle.get();
    let restart_needed = serde_json::to_value(&old.plan.network).ok()
        != serde_json::to_value(&current.plan.network).ok()
        || old.plan.api_vip != current.plan.api_vip;
    if restart_needed {
        tracing::warn!(
            "the reloaded bundle changes the network section: restart pxe for DHCP to follow"
        );
    }
    tracing::info!(bundle = %id, old = %old.id, nodes, new = ?reconciled.new, armed = ?reconciled.armed, kept_absent = ?reconciled.kept_absent, "bundle reloaded");
    Json(json!({
        "bundle": id,
        "previous": old.id,
        "nodes": nodes,
        "restart_needed": restart_needed,
        "new": reconciled.new,
        "armed": reconciled.armed,
    }))
    .into_response()
}

async fn node(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    match app.store.get(&name) {
        Some(r) => Json(view(&app, &r, true)).into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            format!("unknown node {}\n", printable(&name, 64)),
        ),
    }
}

fn answer(app: &HttpApp, name: &str, what: &str, r: Result<NodeRecord, StoreError>) -> Response {
    match r {
        Ok(r) => {
            tracing::info!(node = name, event = what, state = ?r.state, "operator action");
            Json(view(app, &r, true)).into_response()
        }
        Err(StoreError::Transition(TransitionError::UnknownNode(_))) => text(
            StatusCode::NOT_FOUND,
            format!("unknown node {}\n", printable(name, 64)),
        ),
        Err(StoreError::Transition(e)) => {
            tracing::warn!(node = name, event = what, "refused: {e}");
            text(StatusCode::CONFLICT, format!("{e}\n"))
        }
        Err(e @ StoreError::Io(_)) => internal("saving node state", e),
    }
}

/// Arm for (re)install: a fresh install secret, valid for the install window.
async fn arm(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    let (a, n) = (app.clone(), name.clone());
    let r = tokio::task::spawn_blocking(move || a.store.arm(&n))
        .await
        .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e.to_string()))));
    answer(&app, &name, "arm", r)
}

async fn disarm(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    let r = apply(&app, &name, Event::Disarm).await;
    answer(&app, &name, "disarm", r)
}

/// The body of `POST /nodes/{name}/power`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerReport {
    pub action: String,
    pub result: String,
    pub by: String,
}

/// Largest power report body accepted: three short fields.
pub const POWER_BODY_MAX: usize = 1024;

/// Check a power report: a known action, and short fields of printable characters only (they
/// reach the timeline, the API and terminals). Pure.
pub fn check_power(body: &[u8]) -> Result<PowerReport, String> {
    use crate::state::{POWER_ACTIONS, POWER_BY_MAX, POWER_RESULT_MAX};
    if body.len() > POWER_BODY_MAX {
        return Err(format!("power report larger than {POWER_BODY_MAX} bytes"));
    }
    let p: PowerReport =
        serde_json::from_slice(body).map_err(|e| format!("not a power report: {e}"))?;
    if !POWER_ACTIONS.contains(&p.action.as_str()) {
        return Err(format!(
            "action must be one of {}",
            POWER_ACTIONS.join(", ")
        ));
    }
    for (field, v, max) in [
        ("result", &p.result, POWER_RESULT_MAX),
        ("by", &p.by, POWER_BY_MAX),
    ] {
        if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
            return Err(format!("{field} must be 1–{max} printable characters"));
        }
    }
    Ok(p)
}

/// Record a power action builder took on a node (who, what, result) in its timeline; the node
/// list shows it as `last_power`. Never changes the install state.
async fn power(
    State(app): App,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let p = match check_power(&body) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let r = apply(
        &app,
        &name,
        Event::Power {
            action: p.action,
            result: p.result,
            by: p.by,
        },
    )
    .await;
    answer(&app, &name, "power", r)
}

/// Machines not in the inventory that asked for DHCP or a boot script, with their facts.
async fn discovered(State(app): App) -> Response {
    let machines = app.discovered.all(now_ms());
    Json(images::bundle::discovered::DiscoveredList { machines }).into_response()
}

/// Arm one inspection boot of a MAC (seen or not yet): a fresh inspect secret, valid for the
/// install window. A MAC of the inventory is refused: nodes follow install-once.
async fn inspect(State(app): App, UrlPath(mac): UrlPath<String>) -> Response {
    let mac = match images::bundle::Mac::parse_nic(&mac) {
        Ok(m) => m,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if let Some(n) = app.bundle.get().node_by_mac(&mac) {
        return text(
            StatusCode::CONFLICT,
            format!(
                "{mac} is node {} of the inventory: nodes are not inspected (use pxe arm)\n",
                n.hostname
            ),
        );
    }
    let (a, window) = (app.clone(), app.store.install_window());
    match tokio::task::spawn_blocking(move || a.discovered.arm(mac, now_ms(), window)).await {
        Ok(Ok(d)) => {
            tracing::info!(%mac, event = "inspect", "operator action");
            Json(d).into_response()
        }
        Ok(Err(e)) => internal("saving discovered machines", e),
        Err(e) => internal("saving discovered machines", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    /// Protects the timeline and terminals: power reports with unknown actions, control
    /// characters or oversized fields are refused.
    #[test]
    fn power_reports_are_bounded_and_printable() {
        let ok = br#"{"action":"on","result":"ok","by":"builder provision"}"#;
        assert_eq!(check_power(ok).unwrap().action, "on");
        for bad in [
            r#"{"action":"explode","result":"ok","by":"x"}"#.to_string(),
            r#"{"action":"on","result":"ok[2J","by":"x"}"#.to_string(),
            r#"{"action":"on","result":"","by":"x"}"#.to_string(),
            format!(
                r#"{{"action":"on","result":"{}","by":"x"}}"#,
                "a".repeat(201)
            ),
            format!(
                r#"{{"action":"on","result":"ok","by":"{}"}}"#,
                "b".repeat(65)
            ),
            r#"{"action":"on","result":"ok","by":"x","password":"p"}"#.to_string(),
        ] {
            assert!(check_power(bad.as_bytes()).is_err(), "{bad}");
        }
        let huge = format!(
            r#"{{"action":"on","result":"ok","by":"x","pad":"{}"}}"#,
            "a".repeat(2000)
        );
        assert!(check_power(huge.as_bytes()).unwrap_err().contains("larger"));
    }

    #[test]
    fn bearer_token_required_and_compared_whole() {
        let t = "a".repeat(64);
        assert_eq!(check(&headers(&[]), &t), Err(Refused::Unauthorized));
        let wrong = format!("Bearer {}", "b".repeat(64));
        let prefix = format!("Bearer {}", "a".repeat(63));
        for bad in [wrong.as_str(), prefix.as_str(), "Bearer ", "Basic YTph"] {
            assert_eq!(
                check(&headers(&[("authorization", bad)]), &t),
                Err(Refused::Unauthorized),
                "{bad}"
            );
        }
        let good = format!("Bearer {t}");
        assert_eq!(check(&headers(&[("authorization", &good)]), &t), Ok(()));
    }

    #[test]
    fn a_foreign_origin_is_refused_even_with_the_token() {
        let t = "a".repeat(64);
        let auth = format!("Bearer {t}");
        let h = headers(&[
            ("authorization", &auth),
            ("host", "10.0.0.5:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(check(&h, &t), Err(Refused::CrossOrigin));
        let h = headers(&[
            ("authorization", &auth),
            ("host", "10.0.0.5:8080"),
            ("origin", "null"),
        ]);
        assert_eq!(check(&h, &t), Err(Refused::CrossOrigin));
        let h = headers(&[
            ("authorization", &auth),
            ("host", "10.0.0.5:8080"),
            ("origin", "http://10.0.0.5:8080"),
        ]);
        assert_eq!(check(&h, &t), Ok(()), "the server's own page");
    }
}
