//! HTTP: per-MAC iPXE scripts (the install-once decision), installer plans and seeds for armed
//! nodes only, boot artifacts with HEAD/Range, the node API and metrics. Handlers only do I/O;
//! the decisions are `boot_policy` and `state::apply`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::boot_policy::{self, Script};
use crate::bundle::{Bundle, LiveBundle, PlanNode};
use crate::metrics::TftpStats;
use crate::metrics::{self, HttpCounters};
use crate::serve::dhcp::DhcpContext;
use crate::state::{Event, NodeRecord, Store, StoreError, TransitionError};
use images::plan::{ImageRef, SeedUrls, Sources};

mod files;
pub mod limits;

pub struct HttpApp {
    pub bundle: Arc<LiveBundle>,
    /// Nodes first seen in a reloaded bundle start armed (`pxe serve` without `--no-arm`).
    pub arm_new: bool,
    pub store: Arc<Store>,
    pub counters: Arc<HttpCounters>,
    pub tftp_stats: Arc<TftpStats>,
    pub dhcp: Option<Arc<DhcpContext>>,
    /// Folder served at `/artifacts/` (installer kernel/initrd, OS images).
    pub artifacts: Option<PathBuf>,
    /// The iPXE binaries, also served at `/<name>` for UEFI HTTP boot (client arch 16), whose
    /// DHCP answer is `http://server:port/<efi file>`.
    pub boot_files: Arc<crate::boot_files::BootFiles>,
    /// Connection caps and timeouts, and the table of open connections (`limits`).
    pub connections: Arc<limits::Connections>,
}

type App = State<Arc<HttpApp>>;

pub fn router(app: Arc<HttpApp>) -> Router {
    let router = Router::new()
        .route("/boot.ipxe", get(boot_entry))
        .route("/boot/{file}", get(boot))
        .route("/plan/{host}/{token}", get(plan))
        .route("/seed/{host}/{token}/{file}", get(seed))
        .route("/artifacts/{*path}", get(artifact))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/nodes/{name}/arm", post(arm))
        .route("/api/v1/nodes/{name}/disarm", post(disarm))
        .route("/api/v1/nodes/{name}/events", post(events))
        .route("/api/v1/nodes/{name}/phone-home", post(phone_home))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/{file}", get(boot_file));
    // Counted outside the limits, so their 408 and 413 answers show in the metrics.
    bounded(router, &app.connections.limits)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

/// The request limits every route gets: the body size cap, set explicitly (axum's default
/// is 2 MB; bodies here are small events and forms; routes that need less set their own,
/// smaller limit) and the request timeout.
fn bounded<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limits: &limits::HttpLimits,
) -> Router<S> {
    router
        .layer(axum::extract::DefaultBodyLimit::max(limits.body_limit))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ))
}

/// A request whose answer is not ready within the request timeout (typically a body that
/// trickles in) gets 408 and the connection is closed: whatever of the body is left unread
/// cannot be skipped safely.
async fn request_timeout(
    State(limit): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(?limit, "request not answered within the request timeout");
            let mut r = text(StatusCode::REQUEST_TIMEOUT, "request timeout\n");
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    }
}

async fn count(State(app): App, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>().map(|m| m.as_str()) {
        Some("/boot.ipxe") | Some("/boot/{file}") => "boot",
        Some("/plan/{host}/{token}") => "plan",
        Some("/seed/{host}/{token}/{file}") => "seed",
        Some(p) if p.starts_with("/artifacts") => "artifacts",
        Some(p) if p.starts_with("/api/") => "api",
        Some("/metrics") => "metrics",
        Some("/{file}") => "boot-file",
        Some("/healthz") => "healthz",
        _ => "other",
    };
    let resp = next.run(req).await;
    app.counters.record(route, resp.status().as_u16());
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn ipxe(body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A render/read failure is a 500 with a log line, never a silent 404.
fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!("{what}: {e}");
    text(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}\n"))
}

/// Entry point for DHCP clients that cannot be given a per-MAC URL (e.g. chainloaded by hand).
async fn boot_entry() -> Response {
    ipxe(b"#!ipxe\nchain boot/${net0/mac}.ipxe\n".to_vec())
}

async fn boot(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    let Some(mac) = boot_policy::parse_boot_file(&file) else {
        return text(StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n");
    };
    let bundle = app.bundle.get();
    let node = bundle.node_by_mac(&mac);
    let state = node.and_then(|n| app.store.state(&n.hostname));
    let mut decision = boot_policy::choose(state);
    if decision == Script::Install {
        let host = &node.unwrap().hostname;
        if let Err(e) = app.store.apply(
            host,
            &Event::ScriptServed {
                mac: mac.to_string(),
            },
        ) {
            // The state moved under us (e.g. re-armed and installed concurrently): be safe.
            tracing::warn!(%mac, node = %host, "not serving the installer: {e}");
            decision = Script::Local;
        }
    }
    let hostname = node.map(|n| n.hostname.as_str()).unwrap_or("-");
    tracing::info!(%mac, node = hostname, client = %peer.ip(), ?state, decision = decision.label(), "boot script");
    let rel = match decision {
        Script::Install => node.unwrap().install_script.clone(),
        Script::Local => bundle.plan.local_boot_script.clone(),
        Script::Unknown => bundle.plan.unknown_script.clone(),
    };
    match bundle.read(&rel) {
        Ok(b) => ipxe(b),
        Err(e) => internal(&format!("reading {rel}"), e),
    }
}

/// UEFI HTTP boot fetches the EFI binary itself over HTTP.
async fn boot_file(State(app): App, UrlPath(file): UrlPath<String>) -> Response {
    match app.boot_files.get(&file) {
        Some(b) => ([(header::CONTENT_TYPE, "application/efi")], b.to_vec()).into_response(),
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Constant-time comparison for the seed URL token.
fn token_ok(want: &str, got: &str) -> bool {
    want.len() == got.len()
        && want
            .bytes()
            .zip(got.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
}

/// Why an installer URL is refused.
enum Refusal {
    NotFound,
    NotArmed,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
            Refusal::NotArmed => text(StatusCode::FORBIDDEN, "node is not armed for install\n"),
        }
    }
}

/// The node behind an installer URL, only while it is armed for install and with its token.
/// A wrong host or token is the same 404, so the URL space tells nothing to a guesser.
fn armed_node<'a>(
    app: &HttpApp,
    bundle: &'a Bundle,
    host: &str,
    token: &str,
) -> Result<&'a PlanNode, Refusal> {
    let not_found = || Refusal::NotFound;
    let node = bundle.node(host).ok_or_else(not_found)?;
    if !token_ok(&node.seed_token, token) {
        tracing::warn!(node = host, "seed or plan request with a wrong token");
        return Err(not_found());
    }
    match app.store.state(host) {
        Some(s) if s.install_armed() => Ok(node),
        s => {
            tracing::warn!(node = host, state = ?s, "seed or plan requested while not armed for install");
            Err(Refusal::NotArmed)
        }
    }
}

async fn plan(State(app): App, UrlPath((host, token)): UrlPath<(String, String)>) -> Response {
    let bundle = app.bundle.get();
    let node = match armed_node(&app, &bundle, &host, &token) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let base = &bundle.plan.appliance.url;
    let seed = format!("{base}/seed/{host}/{token}");
    let image = &bundle.plan.os_image;
    let sources = Sources {
        image: ImageRef {
            name: image.clone(),
            url: format!("{base}/artifacts/images/{image}.raw.zst"),
            sha256: image_sha256(&app, image),
            size: None,
        },
        seed: SeedUrls {
            user_data: format!("{seed}/user-data"),
            meta_data: format!("{seed}/meta-data"),
            network_config: format!("{seed}/network-config"),
        },
        report: format!("{base}/api/v1/nodes/{host}/events"),
    };
    match bundle.install.install_plan(&node.hostname, sources) {
        Some(plan) => Json(plan).into_response(),
        None => {
            // Both views come from the same plan.json: a node in one is in the other.
            tracing::error!(node = host, "node missing from the bundle's install view");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// The image's published checksum, from `<artifacts>/images/<name>.raw.zst.sha256` (the first
/// word, `sha256sum` format). Without it the installer refuses to write.
fn image_sha256(app: &HttpApp, name: &str) -> Option<String> {
    let path = app
        .artifacts
        .as_ref()?
        .join(format!("images/{name}.raw.zst.sha256"));
    let text = std::fs::read_to_string(&path).ok()?;
    let word = text.split_whitespace().next()?.to_ascii_lowercase();
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit())).then_some(word)
}

async fn seed(
    State(app): App,
    UrlPath((host, token, file)): UrlPath<(String, String, String)>,
) -> Response {
    let bundle = app.bundle.get();
    let node = match armed_node(&app, &bundle, &host, &token) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if !matches!(file.as_str(), "user-data" | "meta-data" | "network-config") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let rel = format!("{}/{file}", node.seed_dir);
    match bundle.read(&rel) {
        Ok(b) => (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            b,
        )
            .into_response(),
        Err(e) => internal(&format!("reading {rel}"), e),
    }
}

async fn serve_file(path: &Path, req: Request) -> Response {
    // 256 KiB reads: the default 64 KiB costs a blocking-pool round trip per chunk, which
    // shows at image sizes; larger ones cost memory per client (pxe/bench/http.sh). Most
    // artifact requests never get here: `files` answers plain GET/HEAD with sendfile(2).
    match ServeFile::new(path)
        .with_buf_chunk_size(256 << 10)
        .oneshot(req)
        .await
    {
        Ok(r) => r.map(Body::new),
        Err(e) => internal("serving file", e),
    }
}

/// Why `/artifacts/<path>` has no file to serve.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoArtifact {
    NoFolder,
    NotFound,
    /// `..`, or a symlink that resolves outside the folder.
    Outside,
}

/// The file behind `/artifacts/<path>` (`path` decoded): an air-gap file of the bundle's plan
/// at `/artifacts/k3s/<name>`, else a regular file inside the artifacts folder with symlinks
/// resolved (tower-http would follow a symlink out of the root). One function for both
/// the router and the sendfile fast path, so they can never disagree on what is served.
pub(crate) fn artifact_file(app: &HttpApp, path: &str) -> Result<PathBuf, NoArtifact> {
    if let Some(name) = path.strip_prefix("k3s/").filter(|n| !n.contains('/')) {
        let bundle = app.bundle.get();
        let found = bundle.plan.airgap.as_ref().and_then(|m| m.get(name));
        return found.map(|a| a.path.clone()).ok_or(NoArtifact::NotFound);
    }
    let root = app.artifacts.as_ref().ok_or(NoArtifact::NoFolder)?;
    let rel = crate::content::relative_path(path).map_err(|e| match e {
        crate::content::ProviderError::AccessViolation(_) => NoArtifact::Outside,
        _ => NoArtifact::NotFound,
    })?;
    let (Ok(root_c), Ok(full)) = (root.canonicalize(), root.join(&rel).canonicalize()) else {
        return Err(NoArtifact::NotFound);
    };
    if !full.starts_with(&root_c) {
        return Err(NoArtifact::Outside);
    }
    if !full.is_file() {
        return Err(NoArtifact::NotFound);
    }
    Ok(full)
}

/// `/artifacts/...` (and `/artifacts/k3s/<name>`) when the fast path passed the request on:
/// percent-encoded or odd requests, and every error answer. HEAD and Range by tower-http.
async fn artifact(State(app): App, UrlPath(path): UrlPath<String>, req: Request) -> Response {
    match artifact_file(&app, &path) {
        Ok(file) => serve_file(&file, req).await,
        Err(NoArtifact::NoFolder) => text(
            StatusCode::NOT_FOUND,
            "no artifacts folder configured (pxe serve --artifacts)\n",
        ),
        Err(NoArtifact::Outside) => {
            tracing::warn!(
                path,
                "artifact request outside the artifacts folder refused"
            );
            text(StatusCode::NOT_FOUND, "not found\n")
        }
        Err(NoArtifact::NotFound) => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn view(app: &HttpApp, r: &NodeRecord) -> serde_json::Value {
    let bundle = app.bundle.get();
    let n = bundle.node(&r.hostname);
    json!({
        "hostname": r.hostname,
        "mac": n.map(|n| n.mac.to_string()),
        "ip": n.map(|n| n.ip),
        "role": n.map(|n| n.role.clone()),
        "state": r.state,
        "bytes_written": r.bytes_written,
        "bytes_total": r.bytes_total,
        "installed_sha256": r.installed_sha256,
        "last_error": r.last_error,
        "installs": r.installs,
        "timeline": r.timeline,
    })
}

async fn nodes(State(app): App) -> Response {
    let list: Vec<_> = app.store.all().iter().map(|r| view(&app, r)).collect();
    let bundle = app.bundle.get();
    Json(json!({"cluster": bundle.plan.cluster, "bundle": bundle.id, "nodes": list}))
        .into_response()
}

/// Re-read and verify the bundle folder and serve it from now on (after `builder render` or
/// `builder rebuild`). A bundle that fails verification is refused and the old one stays.
/// Node states carry over; nodes new to this pxe start as at startup. DHCP settings taken from
/// the network section at startup (pool, reserved addresses, server address) need a restart.
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
    let hosts: Vec<&str> = new.plan.nodes.iter().map(|n| n.hostname.as_str()).collect();
    if let Err(e) = app.store.reconcile(&new.id, &hosts, app.arm_new) {
        return internal("saving node state", e);
    }
    let (id, nodes) = (new.id.clone(), hosts.len());
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
    tracing::info!(bundle = %id, old = %old.id, nodes, "bundle reloaded");
    Json(
        json!({"bundle": id, "previous": old.id, "nodes": nodes, "restart_needed": restart_needed}),
    )
    .into_response()
}

async fn node(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    match app.store.get(&name) {
        Some(r) => Json(view(&app, &r)).into_response(),
        None => text(StatusCode::NOT_FOUND, format!("unknown node {name}\n")),
    }
}

fn apply(app: &HttpApp, name: &str, ev: Event) -> Response {
    match app.store.apply(name, &ev) {
        Ok(r) => {
            tracing::info!(node = name, event = ?ev, state = ?r.state, "node event");
            Json(view(app, &r)).into_response()
        }
        Err(StoreError::Transition(TransitionError::UnknownNode(_))) => {
            text(StatusCode::NOT_FOUND, format!("unknown node {name}\n"))
        }
        Err(StoreError::Transition(e)) => {
            tracing::warn!(node = name, event = ?ev, "refused: {e}");
            text(StatusCode::CONFLICT, format!("{e}\n"))
        }
        Err(e @ StoreError::Io(_)) => internal("saving node state", e),
    }
}

async fn arm(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    apply(&app, &name, Event::Arm)
}

async fn disarm(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    apply(&app, &name, Event::Disarm)
}

async fn events(
    State(app): App,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let ev: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad event: {e}\n")),
    };
    if matches!(ev, Event::Arm | Event::Disarm | Event::ScriptServed { .. }) {
        return text(StatusCode::BAD_REQUEST, "use /arm or /disarm\n");
    }
    apply(&app, &name, ev)
}

/// cloud-init's phone_home (form-encoded POST) at the end of the node's first boot. What the
/// node says of itself (its hostname, fqdn) and the address it reports from (its own static
/// address, not the DHCP one it installed with) go into the timeline: proof of the seed taking
/// effect, readable from the API.
async fn phone_home(
    State(app): App,
    UrlPath(name): UrlPath<String>,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    body: axum::body::Bytes,
) -> Response {
    let r = apply(&app, &name, Event::Booted);
    if !r.status().is_success() {
        return r;
    }
    let form = form_fields(&body);
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let detail = format!(
        "hostname={} fqdn={} address={}",
        field("hostname"),
        field("fqdn"),
        peer.ip()
    );
    apply(
        &app,
        &name,
        Event::Note {
            kind: "phone-home".into(),
            detail,
        },
    )
}

/// `application/x-www-form-urlencoded` pairs (WHATWG URL §5.1): `+` is a space, `%XX` a byte.
/// Values are kept short and printable: they end up in logs and the API.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 3 <= b.len()
                    && b[i + 1].is_ascii_hexdigit()
                    && b[i + 2].is_ascii_hexdigit() =>
                {
                    let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                    out.push(hex(b[i + 1]) << 4 | hex(b[i + 2]));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out)
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn metrics_handler(State(app): App) -> Response {
    let dhcp = app.dhcp.as_ref().map(|d| d.counters.snapshot());
    let mut body = metrics::render(
        dhcp.as_ref(),
        &app.tftp_stats,
        &app.counters,
        &app.store.all(),
    );
    app.connections.render_metrics(&mut body);
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Serve until `shutdown` resolves. Every connection starts in [`files`], which answers
/// artifact downloads with sendfile(2) and passes everything else to the router; answers in
/// flight are drained.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<HttpApp>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (handoff_tx, handoff_rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let front = files::front(listener, app.clone(), handoff_tx, stop_rx.clone());
    let routed = files::routed(handoff_rx, router(app), stop_rx);
    tokio::join!(front, routed);
    Ok(())
}

#[cfg(test)]
mod limit_tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::http::{Request, StatusCode, header};
    use axum::routing::post;
    use hyper::body::{Body as HttpBody, Frame};
    use tower::ServiceExt;

    use super::{Router, bounded, limits::HttpLimits};

    /// A request body whose bytes never come.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    fn app() -> Router {
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        bounded(
            Router::new().route("/", post(|b: Bytes| async move { b.len().to_string() })),
            &limits,
        )
    }

    /// Protects the router from bodies that trickle or never come: the request is answered
    /// 408 (and the connection closed) at the request timeout.
    #[tokio::test]
    async fn a_stalled_body_gets_408_at_the_request_timeout() {
        let req = Request::post("/").body(Body::new(Stalled)).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), app().oneshot(req))
            .await
            .expect("no answer: the request timeout is missing")
            .unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    /// Protects memory: a body over 64 KiB is refused (413), one under is read.
    #[tokio::test]
    async fn bodies_are_capped_at_64_kib() {
        let post = |n: usize| Request::post("/").body(Body::from(vec![b'x'; n])).unwrap();
        let r = app().oneshot(post(64 << 10)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app().oneshot(post((64 << 10) + 1)).await.unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}

#[cfg(test)]
mod form_tests {
    use super::form_fields;

    #[test]
    fn cloud_init_phone_home_forms_decode() {
        let f = form_fields(
            b"instance_id=iid-vm&hostname=vm-bios2&fqdn=vm-bios2.lab%2Earpa+x&bad=%zz%4",
        );
        assert_eq!(f[0], ("instance_id".into(), "iid-vm".into()));
        assert_eq!(f[1], ("hostname".into(), "vm-bios2".into()));
        assert_eq!(f[2], ("fqdn".into(), "vm-bios2.lab.arpa x".into()));
        assert_eq!(f[3], ("bad".into(), "%zz%4".into()));
        assert!(form_fields(b"").is_empty());
        assert_eq!(
            form_fields(b"a=%0a%41")[0].1,
            "A",
            "control characters dropped"
        );
    }
}
