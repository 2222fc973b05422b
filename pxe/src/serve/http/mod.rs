//! HTTP: per-MAC iPXE scripts (the install-once decision), installer plans and seeds for armed
//! nodes only, boot artifacts with HEAD/Range, the operator API and metrics. Handlers only do
//! I/O; the decisions are `boot_policy` and `state::apply`.
//!
//! Three kinds of route, three kinds of trust (README "Security model"):
//! - open, read-only, no secrets: `/boot.ipxe`, `/boot/<mac>.ipxe`, boot files, `/artifacts/`,
//!   `/metrics`, `/healthz`;
//! - node-facing ([`node`]): each takes the node's own secret (or a machine's inspect secret)
//!   and nothing else;
//! - the operator API under `/api/v1` ([`operator`]): the API token, behind one layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::bundle::{LiveBundle, Plan};
use crate::metrics::TftpStats;
use crate::metrics::{self, HttpCounters};
use crate::serve::dhcp::DhcpContext;
use crate::state::{NewNodes, Store};

pub mod dashboard;
pub mod events;
mod files;
pub mod limits;
pub mod node;
pub mod operator;

pub use node::form_fields;

pub struct HttpApp {
    pub bundle: Arc<LiveBundle>,
    /// `pxe serve --arm-new`: nodes first seen start armed, in a first deployment only.
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
    /// The operator API token (`STATE/api-token` or `--api-token-file`).
    pub api_token: String,
    /// Per-node limit on what nodes post.
    pub node_posts: crate::ratelimit::PerKey,
    /// Connection caps and timeouts, and the table of open connections (`limits`).
    pub connections: Arc<limits::Connections>,
    /// Machines not in the inventory, and their inspections.
    pub discovered: Arc<crate::discovered::DiscoveredStore>,
    /// `pxe serve --inspect`.
    pub inspect: crate::discovered::InspectMode,
    /// `pxe serve --after-inspect`.
    pub after_inspect: crate::discovered::AfterInspect,
    /// The dashboard's event streams (`/api/v1/events/stream`): cap, queues, shutdown.
    pub streams: Arc<events::Streams>,
    /// iPXE downloads not followed by a script request (Secure Boot diagnostics).
    pub nbp_watch: Arc<crate::nbp_watch::NbpWatch>,
}

/// The HTTP side's answers to the TFTP server (GRUB configs of Secure Boot nodes).
pub struct TftpConfigs(pub Arc<HttpApp>);

impl crate::secure_boot::NodeConfigs for TftpConfigs {
    fn grub_config<'a>(
        &'a self,
        client: std::net::SocketAddr,
        mac: images::bundle::Mac,
    ) -> crate::content::BoxFuture<'a, Result<String, crate::content::ProviderError>> {
        Box::pin(async move { Ok(node::grub_config(&self.0, client.ip(), mac).await) })
    }

    fn boot_file_fetched(&self, client: std::net::SocketAddr, name: &str) {
        self.0
            .nbp_watch
            .fetched(client.ip(), name, crate::state::now_ms());
    }
}

impl HttpApp {
    /// How nodes new to this pxe start when `plan` is loaded (blocking: it may probe the
    /// cluster, see [`new_nodes_policy`]).
    pub fn new_nodes_for(&self, plan: &Plan) -> NewNodes {
        let probe = self.arm_new && plan.joined.is_empty();
        new_nodes_policy(
            self.arm_new,
            plan,
            probe.then(|| cluster_answers(plan)).flatten(),
        )
        .0
    }
}

/// Whether `--arm-new` may arm the nodes this pxe has never seen, and if not, why. Never for a
/// bundle that joins an existing cluster (a rebuild: `joined` nodes), where an armed bootstrap
/// server would be reinstalled with `cluster-init`; and never when a Kubernetes API already
/// answers on the cluster's VIP or a server (`cluster`): the state folder was lost, not the
/// cluster. Pure; the probe is [`cluster_answers`].
pub fn new_nodes_policy(
    arm_new: bool,
    plan: &Plan,
    cluster: Option<std::net::SocketAddr>,
) -> (NewNodes, Option<String>) {
    if !arm_new {
        return (NewNodes::Disarmed, None);
    }
    if !plan.joined.is_empty() {
        return (
            NewNodes::Disarmed,
            Some(format!(
                "this bundle joins an existing cluster (joined: {})",
                plan.joined.join(", ")
            )),
        );
    }
    if let Some(addr) = cluster {
        return (
            NewNodes::Disarmed,
            Some(format!(
                "a Kubernetes API answers at {addr}: the cluster exists (a lost state folder?)"
            )),
        );
    }
    (NewNodes::Armed, None)
}

/// The first of the cluster's API endpoints (the VIP, then each server, port 6443) that
/// accepts a TCP connection within a short timeout. Blocking, about a second at most per
/// address that drops packets.
pub fn cluster_answers(plan: &Plan) -> Option<std::net::SocketAddr> {
    let servers = plan
        .nodes
        .iter()
        .filter(|n| n.role == images::bundle::Role::Server)
        .map(|n| n.ip);
    std::iter::once(plan.api_vip)
        .chain(servers)
        .map(|ip| std::net::SocketAddr::from((ip, 6443)))
        .find(|a| {
            std::net::TcpStream::connect_timeout(a, std::time::Duration::from_millis(700)).is_ok()
        })
}

type App = State<Arc<HttpApp>>;

pub fn router(app: Arc<HttpApp>) -> Router {
    let events = DefaultBodyLimit::max(node::EVENT_BODY_MAX);
    let router = Router::new()
        .route("/boot.ipxe", get(node::boot_entry))
        .route("/boot/{file}", get(node::boot))
        .route("/plan/{host}/{secret}", get(node::plan))
        .route("/seed/{host}/{secret}/{file}", get(node::seed))
        .route(
            "/install/{host}/{secret}/events",
            post(node::install_event).layer(events),
        )
        .route(
            "/inspect/{mac}/{secret}/facts",
            post(node::inspect_facts)
                .layer(DefaultBodyLimit::max(images::bundle::facts::FACTS_MAX)),
        )
        .route(
            "/report/{host}/{token}/events",
            post(node::report_event).layer(events),
        )
        .route(
            "/report/{host}/{token}/phone-home",
            post(node::phone_home).layer(events),
        )
        .route("/artifacts/{*path}", get(artifact))
        .nest("/api/v1", operator::router(app.clone()))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(dashboard::index))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
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
        Some("/plan/{host}/{secret}") => "plan",
        Some("/seed/{host}/{secret}/{file}") => "seed",
        Some(p) if p.starts_with("/install/") => "install",
        Some(p) if p.starts_with("/report/") => "report",
        Some(p) if p.starts_with("/inspect/") => "inspect",
        Some(p) if p.starts_with("/artifacts") => "artifacts",
        Some(p) if p.starts_with("/api/") => "api",
        Some("/metrics") => "metrics",
        Some("/{file}") => "boot-file",
        Some("/healthz") => "healthz",
        Some("/") | Some("/dashboard/app.js") | Some("/dashboard/app.css") => "dashboard",
        _ if req.uri().path().starts_with("/api/") => "api",
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

/// A render/read failure is a 500 with a log line, never a silent 404.
fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!("{what}: {e}");
    text(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}\n"))
}

/// UEFI HTTP boot fetches the EFI binary itself over HTTP.
async fn boot_file(
    State(app): App,
    axum::extract::ConnectInfo(files::Peer(peer)): axum::extract::ConnectInfo<files::Peer>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    match app.boot_files.get(&file) {
        Some(b) => {
            app.nbp_watch
                .fetched(peer.ip(), &file, crate::state::now_ms());
            ([(header::CONTENT_TYPE, "application/efi")], b.to_vec()).into_response()
        }
        None => text(StatusCode::NOT_FOUND, "not found\n"),
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

async fn metrics_handler(State(app): App) -> Response {
    let dhcp = app.dhcp.as_ref().map(|d| d.counters.snapshot());
    let mut body = metrics::render(
        dhcp.as_ref(),
        &app.tftp_stats,
        &app.counters,
        &app.store.all(),
    );
    app.connections.render_metrics(&mut body);
    app.nbp_watch.render_metrics(&mut body);
    body.push_str(&format!(
        "# HELP ironseed_discovered_machines Machines not in the inventory that are kept (at most 1024).\n\
         # TYPE ironseed_discovered_machines gauge\nironseed_discovered_machines {}\n\
         # HELP ironseed_discovered_saves_total Writes of discovered.json (coalesced, at most one per 2 s).\n\
         # TYPE ironseed_discovered_saves_total counter\nironseed_discovered_saves_total {}\n",
        app.discovered.len(),
        app.discovered.saves()
    ));
    app.streams.render_metrics(&mut body);
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
    let streams = app.streams.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Event streams never end by themselves; the drain below would wait for them.
        streams.close_all();
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
