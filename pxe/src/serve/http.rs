//! HTTP: per-MAC iPXE scripts (the install-once decision), installer plans and seeds for armed
//! nodes only, boot artifacts with HEAD/Range, the node API and metrics. Handlers only do I/O;
//! the decisions are `boot_policy` and `state::apply`.

use std::net::SocketAddr;
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
use crate::bundle::{Bundle, PlanNode};
use crate::metrics::{self, HttpCounters};
use crate::serve::dhcp::DhcpContext;
use crate::serve::tftp::TftpStats;
use crate::state::{Event, NodeRecord, Store, StoreError, TransitionError};

pub struct HttpApp {
    pub bundle: Arc<Bundle>,
    pub store: Arc<Store>,
    pub counters: Arc<HttpCounters>,
    pub tftp_stats: Arc<TftpStats>,
    pub dhcp: Option<Arc<DhcpContext>>,
    /// Folder served at `/artifacts/` (installer kernel/initrd, OS images).
    pub artifacts: Option<PathBuf>,
    /// The UEFI boot file for UEFI HTTP boot, see [`HttpBootFile`].
    pub http_boot: Option<HttpBootFile>,
}

/// The UEFI boot file (`--efi-file`, a path inside `--ipxe-dir`) served at `/<name>`. DHCP answers UEFI
/// HTTP-boot clients (arch 16, vendor class `HTTPClient`) with `http://SERVER:PORT/<name>`, so
/// this route is what makes that answer bootable: without it the firmware gets a 404 and a
/// machine whose only network boot is HTTP boot never reaches iPXE.
#[derive(Debug, Clone)]
pub struct HttpBootFile {
    pub name: String,
    pub path: PathBuf,
}

type App = State<Arc<HttpApp>>;

pub fn router(app: Arc<HttpApp>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_entry))
        .route("/boot/{file}", get(boot))
        .route("/plan/{host}/{token}", get(plan))
        .route("/seed/{host}/{token}/{file}", get(seed))
        .route("/artifacts/k3s/{name}", get(airgap))
        .route("/artifacts/{*path}", get(artifact))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/nodes/{name}/arm", post(arm))
        .route("/api/v1/nodes/{name}/disarm", post(disarm))
        .route("/api/v1/nodes/{name}/events", post(events))
        .route("/api/v1/nodes/{name}/phone-home", post(phone_home))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        // Last, so it can never shadow a route: the UEFI HTTP-boot file.
        .fallback(http_boot)
        .layer(middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

async fn count(State(app): App, req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>().map(|m| m.as_str()) {
        Some("/boot.ipxe") | Some("/boot/{file}") => "boot",
        Some("/plan/{host}/{token}") => "plan",
        Some("/seed/{host}/{token}/{file}") => "seed",
        Some(p) if p.starts_with("/artifacts") => "artifacts",
        Some(p) if p.starts_with("/api/") => "api",
        Some("/metrics") => "metrics",
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    let Some(mac) = boot_policy::parse_boot_file(&file) else {
        return text(StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n");
    };
    let node = app.bundle.node_by_mac(&mac);
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
        Script::Local => app.bundle.plan.local_boot_script.clone(),
        Script::Unknown => app.bundle.plan.unknown_script.clone(),
    };
    match app.bundle.read(&rel) {
        Ok(b) => ipxe(b),
        Err(e) => internal(&format!("reading {rel}"), e),
    }
}

/// UEFI HTTP boot's NBP (HEAD and Range included: EDK2 asks for the size first), at exactly
/// the path DHCP offered; everything else that no route matched is a 404. Only the one
/// configured file: the iPXE folder is not browsable.
async fn http_boot(State(app): App, req: Request) -> Response {
    let wanted = req.uri().path().strip_prefix('/');
    match &app.http_boot {
        Some(b)
            if wanted == Some(b.name.as_str())
                && matches!(
                    *req.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                ) =>
        {
            serve_file(&b.path, req).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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
fn armed_node<'a>(app: &'a HttpApp, host: &str, token: &str) -> Result<&'a PlanNode, Refusal> {
    let not_found = || Refusal::NotFound;
    let node = app.bundle.node(host).ok_or_else(not_found)?;
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
    let node = match armed_node(&app, &host, &token) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let base = &app.bundle.plan.appliance.url;
    let seed = format!("{base}/seed/{host}/{token}");
    let p = &app.bundle.plan;
    Json(json!({
        "hostname": node.hostname,
        "fqdn": node.fqdn,
        "role": node.role,
        "mac": node.mac,
        "ip": node.ip,
        "prefix_len": node.prefix_len,
        "gateway": p.network.gateway,
        "dns": p.network.dns,
        "boot_nic": node.boot_nic,
        "firmware": node.firmware,
        "install_disk": node.install_disk,
        "data_disks": node.data_disks,
        "kernel_args": node.kernel_args,
        "image": {"name": p.os_image, "url": format!("{base}/artifacts/images/{}.raw.zst", p.os_image)},
        "seed": {
            "user-data": format!("{seed}/user-data"),
            "meta-data": format!("{seed}/meta-data"),
            "network-config": format!("{seed}/network-config"),
        },
        "report": format!("{base}/api/v1/nodes/{host}/events"),
    }))
    .into_response()
}

async fn seed(
    State(app): App,
    UrlPath((host, token, file)): UrlPath<(String, String, String)>,
) -> Response {
    let node = match armed_node(&app, &host, &token) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if !matches!(file.as_str(), "user-data" | "meta-data" | "network-config") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let rel = format!("{}/{file}", node.seed_dir);
    match app.bundle.read(&rel) {
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

async fn airgap(State(app): App, UrlPath(name): UrlPath<String>, req: Request) -> Response {
    let Some(a) = app.bundle.plan.airgap.as_ref().and_then(|m| m.get(&name)) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    serve_file(&a.path, req).await
}

async fn serve_file(path: &Path, req: Request) -> Response {
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => internal("serving file", e),
    }
}

/// `/artifacts/...` from the artifacts folder, HEAD and Range included (tower-http). Paths are
/// confined to the folder with symlinks resolved: tower-http follows a symlink out of the root.
async fn artifact(State(app): App, UrlPath(path): UrlPath<String>, req: Request) -> Response {
    let Some(root) = &app.artifacts else {
        return text(
            StatusCode::NOT_FOUND,
            "no artifacts folder configured (pxe serve --artifacts)\n",
        );
    };
    let Ok(rel) = crate::serve::tftp::relative_path(&path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let (Ok(root_c), Ok(full)) = (root.canonicalize(), root.join(&rel).canonicalize()) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !full.starts_with(&root_c) || !full.is_file() {
        tracing::warn!(
            path,
            "artifact request outside the artifacts folder refused"
        );
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    serve_file(&full, req).await
}

fn view(app: &HttpApp, r: &NodeRecord) -> serde_json::Value {
    let n = app.bundle.node(&r.hostname);
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
    Json(json!({"cluster": app.bundle.plan.cluster, "bundle": app.bundle.id, "nodes": list}))
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

/// cloud-init's phone_home (form-encoded POST) at the end of the node's first boot.
async fn phone_home(State(app): App, UrlPath(name): UrlPath<String>) -> Response {
    apply(&app, &name, Event::Booted)
}

async fn metrics_handler(State(app): App) -> Response {
    let dhcp = app.dhcp.as_ref().map(|d| d.counters.snapshot());
    let body = metrics::render(
        dhcp.as_ref(),
        &app.tftp_stats,
        &app.counters,
        &app.store.all(),
    );
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Serve until `shutdown` resolves; in-flight requests are drained.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Arc<HttpApp>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    /// A bundle with no nodes: enough for routes that do not depend on the plan's nodes.
    fn empty_app(dir: &Path, http_boot: Option<HttpBootFile>) -> Arc<HttpApp> {
        use sha2::{Digest, Sha256};
        let plan = json!({
            "version": 1, "cluster": "t", "domain": "t.arpa", "api_vip": "10.0.0.10",
            "appliance": {"ip": "10.0.0.1", "http_port": 8080, "url": "http://10.0.0.1:8080"},
            "network": {"subnet": "10.0.0.0/24", "gateway": "10.0.0.254", "dns": [], "dhcp_pool": null},
            "os_image": "debian-12", "local_boot_script": "ipxe/local.ipxe",
            "unknown_script": "ipxe/unknown.ipxe", "nodes": [],
        });
        let bytes = serde_json::to_vec(&plan).unwrap();
        std::fs::write(dir.join("plan.json"), &bytes).unwrap();
        let sum: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(dir.join("SHA256SUMS"), format!("{sum}  plan.json\n")).unwrap();
        let bundle = Arc::new(Bundle::load(dir).unwrap());
        let store = Arc::new(Store::open(None, &bundle.id, &[], true).unwrap());
        Arc::new(HttpApp {
            bundle,
            store,
            counters: Arc::new(HttpCounters::default()),
            tftp_stats: Arc::new(TftpStats::default()),
            dhcp: None,
            artifacts: None,
            http_boot,
        })
    }

    async fn get(app: &Arc<HttpApp>, method: Method, uri: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = router(app.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    /// Regression (found by the VM test, pxe/tests/vm_pxe.rs): DHCP sent OVMF's HTTP-boot
    /// entry to `/<efi file>`, and HTTP answered 404.
    #[tokio::test]
    async fn serves_the_efi_file_that_dhcp_offers_to_http_boot_clients() {
        let dir = tempfile::tempdir().unwrap();
        let efi = dir.path().join("snponly.efi");
        std::fs::write(&efi, b"MZ fake efi binary").unwrap();
        let app = empty_app(
            dir.path(),
            Some(HttpBootFile {
                name: "snponly.efi".into(),
                path: efi,
            }),
        );
        let (st, body) = get(&app, Method::GET, "/snponly.efi").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(body, b"MZ fake efi binary");
        let (st, body) = get(&app, Method::HEAD, "/snponly.efi").await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.is_empty());
        // Only the configured name: nothing else of the folder, no other top-level names.
        for other in [
            "/ipxe.efi",
            "/plan.json",
            "/SHA256SUMS",
            "/..%2fetc%2fpasswd",
        ] {
            assert_eq!(
                get(&app, Method::GET, other).await.0,
                StatusCode::NOT_FOUND,
                "{other}"
            );
        }
        // The fixed routes still win over the catch-all.
        assert_eq!(get(&app, Method::GET, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&app, Method::GET, "/metrics").await.0, StatusCode::OK);
        let (st, body) = get(&app, Method::GET, "/boot.ipxe").await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.starts_with(b"#!ipxe"));
    }

    /// `--efi-file` may name a file in a subfolder (TFTP serves it so); HTTP boot then gets
    /// the same path.
    #[tokio::test]
    async fn efi_file_in_a_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        let app = empty_app(
            dir.path(),
            Some(HttpBootFile {
                name: "efi/ipxe.efi".into(),
                path: dir.path().join("plan.json"),
            }),
        );
        assert_eq!(
            get(&app, Method::GET, "/efi/ipxe.efi").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(&app, Method::GET, "/ipxe.efi").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get(&app, Method::POST, "/efi/ipxe.efi").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn no_http_boot_file_configured_is_a_404() {
        let dir = tempfile::tempdir().unwrap();
        let app = empty_app(dir.path(), None);
        assert_eq!(
            get(&app, Method::GET, "/snponly.efi").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
