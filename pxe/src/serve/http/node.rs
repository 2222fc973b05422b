//! The node-facing routes: what firmware, the installer and the first boot ask for. They never
//! take the operator token; each takes the node's own secret and nothing else:
//! - `/boot/<mac>.ipxe`: the install-once decision; an armed node's script carries its live
//!   install secret (inserted here, never stored in the bundle);
//! - `/plan/<host>/<secret>`, `/seed/<host>/<secret>/<file>`, `/install/<host>/<secret>/events`:
//!   only with the live install secret; anything else is the same 404 as an unknown node;
//! - `/report/<host>/<token>/{events,phone-home}`: the first boot, with the report token from
//!   its seed, and only from the node's inventory address;
//! - `/inspect/<mac>/<secret>/facts`: an inspection boot's facts, with the MAC's live inspect
//!   secret (minted by `pxe inspect` or `--inspect unknown`, dead once facts arrive).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{App, HttpApp, files, internal, text};
use crate::boot_policy::{self, Script};
use crate::bundle::PlanNode;
use crate::state::{Event, NodeRecord, StoreError, TransitionError, now_ms};
use images::bundle::{INSTALL_SECRET_PLACEHOLDER, InstallEvent, ReportEvent, paths, printable};
use images::plan::{ImageRef, SeedUrls, Sources};

/// Largest body the node-facing POST routes read (events, notes, phone-home forms).
pub const EVENT_BODY_MAX: usize = 4096;

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

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Run a store change on the blocking pool: it fsyncs, and the async workers serve `/boot`,
/// DHCP lookups and downloads meanwhile.
pub(super) async fn apply(
    app: &Arc<HttpApp>,
    host: &str,
    ev: Event,
) -> Result<NodeRecord, StoreError> {
    let (app, host) = (app.clone(), host.to_string());
    tokio::task::spawn_blocking(move || app.store.apply(&host, &ev))
        .await
        .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e.to_string()))))
}

/// Entry point for DHCP clients that cannot be given a per-MAC URL (e.g. chainloaded by hand).
pub(super) async fn boot_entry() -> Response {
    ipxe(b"#!ipxe\nchain boot/${net0/mac}.ipxe\n".to_vec())
}

/// The install-once decision for `mac` with, for an install, the node's live secret. The first
/// answer to an armed node moves it to booting. Shared by the iPXE script and the GRUB config.
async fn decide(
    app: &Arc<HttpApp>,
    bundle: &crate::bundle::Bundle,
    mac: images::bundle::Mac,
) -> (
    Script,
    Option<crate::state::NodeState>,
    Option<crate::state::Secret>,
) {
    let node = bundle.node_by_mac(&mac);
    let state = node.and_then(|n| app.store.state(&n.hostname));
    let mut decision = boot_policy::choose(state);
    let mut secret = None;
    if decision == Script::Install {
        let host = &node.expect("install implies a node").hostname;
        secret = app
            .store
            .get(host)
            .and_then(|r| r.live_secret(now_ms()).cloned());
        if secret.is_none() {
            decision = Script::Local;
        } else if state == Some(crate::state::NodeState::Armed) {
            // Only the first script moves the node (to booting); repeats change nothing and
            // cost no state-file write (anyone with the MAC can ask for the script).
            let served = Event::ScriptServed {
                mac: mac.to_string(),
            };
            if let Err(e) = apply(app, host, served).await {
                // The state moved under us (e.g. disarmed or installed concurrently): be safe.
                tracing::warn!(%mac, node = %host, "not serving the installer: {e}");
                decision = Script::Local;
            }
        }
    }
    (decision, state, secret)
}

/// `/grub/node/<mac>.cfg` over TFTP: the GRUB config of a Secure Boot node (the same decision
/// and secret as its iPXE script would carry).
pub(super) async fn grub_config(
    app: &Arc<HttpApp>,
    peer: IpAddr,
    mac: images::bundle::Mac,
) -> String {
    use crate::secure_boot::{InstallBoot, grub_config};
    app.nbp_watch.script(peer, now_ms());
    let bundle = app.bundle.get();
    let (decision, state, secret) = decide(app, &bundle, mac).await;
    let node = bundle.node_by_mac(&mac);
    let hostname = node.map(|n| n.hostname.as_str()).unwrap_or("-");
    tracing::info!(%mac, node = hostname, client = %peer, ?state, decision = decision.label(), "grub config");
    let install = match (node, &secret) {
        (Some(n), Some(s)) if decision == Script::Install => Some((n, s)),
        _ => None,
    };
    grub_config(
        decision,
        install.map(|(n, s)| InstallBoot {
            appliance_url: &bundle.plan.appliance.url,
            hostname: n.hostname.as_str(),
            kernel_args: &n.kernel_args,
            secret: s.expose(),
        }),
    )
}

pub(super) async fn boot(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    let Some(mac) = boot_policy::parse_boot_file(&file) else {
        return text(StatusCode::NOT_FOUND, "expected /boot/<mac>.ipxe\n");
    };
    app.nbp_watch.script(peer.ip(), now_ms());
    let bundle = app.bundle.get();
    let node = bundle.node_by_mac(&mac);
    let (decision, state, secret) = decide(&app, &bundle, mac).await;
    if decision == Script::Unknown {
        // Never for an inventory MAC: those follow install-once above.
        let auto = app.inspect == crate::discovered::InspectMode::Unknown;
        let (a, window) = (app.clone(), app.store.install_window());
        let secret = tokio::task::spawn_blocking(move || {
            a.discovered.boot_secret(mac, auto, now_ms(), window)
        })
        .await
        .ok()
        .flatten();
        if let Some(secret) = secret {
            tracing::info!(%mac, client = %peer.ip(), after = app.after_inspect.as_str(), decision = "inspect", "boot script");
            return ipxe(
                boot_policy::inspect_script(
                    &bundle.plan.appliance.url,
                    &mac,
                    secret.expose(),
                    app.after_inspect,
                )
                .into_bytes(),
            );
        }
    }
    let hostname = node.map(|n| n.hostname.as_str()).unwrap_or("-");
    tracing::info!(%mac, node = hostname, client = %peer.ip(), ?state, decision = decision.label(), "boot script");
    let rel = match decision {
        Script::Install => node.expect("install implies a node").install_script.clone(),
        Script::Local => bundle.plan.local_boot_script.clone(),
        Script::Unknown => bundle.plan.unknown_script.clone(),
    };
    let script = match bundle.read(&rel) {
        Ok(b) => b,
        Err(e) => return internal(&format!("reading {rel}"), e),
    };
    if decision != Script::Install {
        return ipxe(script);
    }
    let Some(secret) = secret else {
        return internal("install script", "the node's install secret died meanwhile");
    };
    let text = String::from_utf8_lossy(&script);
    if !text.contains(INSTALL_SECRET_PLACEHOLDER) {
        return internal(&rel, "no install secret placeholder in the script");
    }
    ipxe(
        text.replace(INSTALL_SECRET_PLACEHOLDER, secret.expose())
            .into_bytes(),
    )
}

/// The node behind an install URL, only with its live install secret. A wrong host, a wrong,
/// old or dead secret, or a node not armed: all the same 404, so the URL space tells nothing.
fn installing_node<'a>(
    app: &HttpApp,
    bundle: &'a crate::bundle::Bundle,
    host: &str,
    secret: &str,
    peer: IpAddr,
) -> Option<&'a PlanNode> {
    let node = bundle.node(host)?;
    let ok = app
        .store
        .get(host)
        .is_some_and(|r| r.secret_ok(secret, now_ms()));
    if !ok {
        tracing::warn!(node = %printable(host, 64), client = %peer, "install URL with a wrong or dead secret");
        return None;
    }
    Some(node)
}

pub(super) async fn plan(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((host, secret)): UrlPath<(String, String)>,
) -> Response {
    let bundle = app.bundle.get();
    let Some(node) = installing_node(&app, &bundle, &host, &secret, peer.ip()) else {
        return not_found();
    };
    let base = &bundle.plan.appliance.url;
    let seed = format!("{base}{}", paths::seed(&host, &secret));
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
        report: format!("{base}{}", paths::install_events(&host, &secret)),
    };
    tracing::info!(node = host, client = %peer.ip(), "install plan served");
    match bundle.plan.install_plan(&node.hostname, sources) {
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

pub(super) async fn seed(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((host, secret, file)): UrlPath<(String, String, String)>,
) -> Response {
    let bundle = app.bundle.get();
    let Some(node) = installing_node(&app, &bundle, &host, &secret, peer.ip()) else {
        return not_found();
    };
    if !matches!(file.as_str(), "user-data" | "meta-data" | "network-config") {
        return not_found();
    }
    let rel = format!("{}/{file}", node.seed_dir);
    tracing::info!(node = host, client = %peer.ip(), file, "seed served");
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

/// A store change a node asked for, as an HTTP answer.
fn answer(host: &str, peer: IpAddr, ev: &Event, r: Result<NodeRecord, StoreError>) -> Response {
    let what = crate::state::name(ev);
    match r {
        Ok(rec) => {
            tracing::info!(node = host, client = %peer, event = what, state = ?rec.state, "node event");
            Json(serde_json::json!({"state": rec.state})).into_response()
        }
        Err(StoreError::Transition(TransitionError::UnknownNode(_))) => not_found(),
        Err(StoreError::Transition(e)) => {
            tracing::warn!(node = host, client = %peer, event = what, "refused: {e}");
            text(StatusCode::CONFLICT, format!("{e}\n"))
        }
        Err(e @ StoreError::Io(_)) => internal("saving node state", e),
    }
}

/// A node's JSON event, or a 400 whose text (serde's, which may quote the body) is kept short
/// and printable.
fn parse_event<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, BadEvent> {
    serde_json::from_slice(body).map_err(|e| BadEvent(printable(&e.to_string(), 200)))
}

struct BadEvent(String);

impl IntoResponse for BadEvent {
    fn into_response(self) -> Response {
        text(StatusCode::BAD_REQUEST, format!("bad event: {}\n", self.0))
    }
}

fn too_many(host: &str, peer: IpAddr) -> Response {
    tracing::warn!(node = host, client = %peer, "node posting too fast: refused");
    text(
        StatusCode::TOO_MANY_REQUESTS,
        "too many reports; slow down\n",
    )
}

/// `POST /install/<host>/<secret>/events`: the installer's progress, with the live install
/// secret. `installed` is accepted only with the sha256 of the image the plan named.
pub(super) async fn install_event(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((host, secret)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let bundle = app.bundle.get();
    if installing_node(&app, &bundle, &host, &secret, peer.ip()).is_none() {
        return not_found();
    }
    if !app.node_posts.allow(&host) {
        return too_many(&host, peer.ip());
    }
    let ev: InstallEvent = match parse_event(&body) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    if let InstallEvent::Installed { sha256 } = &ev {
        let want = image_sha256(&app, &bundle.plan.os_image);
        if want.as_deref() != Some(sha256.to_ascii_lowercase().as_str()) {
            tracing::warn!(node = host, client = %peer.ip(), got = %printable(sha256, 64), "installed with another image's sha256: refused");
            return text(
                StatusCode::CONFLICT,
                "installed: sha256 is not the one of the image the plan named\n",
            );
        }
    }
    let reported_sb = match &ev {
        InstallEvent::Installing { secure_boot, .. } => Some(*secure_boot),
        _ => None,
    };
    let ev = Event::Install(ev);
    let r = apply(&app, &host, ev.clone()).await;
    let ok = r.is_ok();
    let resp = answer(&host, peer.ip(), &ev, r);
    if ok && let Some(reported) = reported_sb {
        warn_secure_boot(&app, &bundle, &host, peer.ip(), reported).await;
    }
    resp
}

/// A node whose plan says `secure_boot` reports it off: a warning in the log and a note in
/// its timeline (the node goes on; the operator decides).
async fn warn_secure_boot(
    app: &Arc<HttpApp>,
    bundle: &crate::bundle::Bundle,
    host: &str,
    peer: IpAddr,
    reported: Option<bool>,
) {
    let planned = bundle.node(host).is_some_and(|n| n.secure_boot);
    if let Some(note) = crate::state::secure_boot_mismatch(planned, reported) {
        tracing::warn!(node = host, client = %peer, "secure_boot: true in the plan, but the node reports Secure Boot off");
        if let Err(e) = apply(app, host, note).await {
            tracing::warn!(node = host, "recording the secure-boot-off note: {e}");
        }
    }
}

/// `POST /inspect/<mac>/<secret>/facts`: what an inspection boot found, with the MAC's live
/// inspect secret. The body is capped at `FACTS_MAX` by the route; a wrong MAC or secret, an
/// unarmed MAC or a dead secret are all the same 404; the secret dies with the facts.
pub(super) async fn inspect_facts(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((mac, secret)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(mac) = mac.parse::<images::bundle::Mac>() else {
        return not_found();
    };
    let live = app
        .discovered
        .get(&mac)
        .and_then(|r| r.live_secret(now_ms()).map(|s| s.matches(&secret)))
        .unwrap_or(false);
    if !live {
        tracing::warn!(%mac, client = %peer.ip(), "facts with a wrong or dead inspect secret");
        return not_found();
    }
    if !app.node_posts.allow(&mac.to_string()) {
        return too_many(&mac.to_string(), peer.ip());
    }
    let facts = match images::bundle::facts::Facts::from_json(&body) {
        Ok(f) => f,
        Err(e) => {
            let e = printable(&e.to_string(), 200);
            tracing::warn!(%mac, client = %peer.ip(), error = %e, "bad facts document");
            return text(StatusCode::BAD_REQUEST, format!("bad facts: {e}\n"));
        }
    };
    let (disks, nics) = (facts.disks.len(), facts.nics.len());
    let a = app.clone();
    let r = tokio::task::spawn_blocking(move || {
        a.discovered.post_facts(&mac, &secret, facts, now_ms())
    })
    .await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(%mac, client = %peer.ip(), disks, nics, "inspection facts stored");
            Json(serde_json::json!({"stored": true})).into_response()
        }
        Ok(Err(crate::discovered::FactsRefused::NoInspection)) => not_found(),
        Err(e) => internal("storing facts", e),
    }
}

/// Why a first-boot report is refused.
enum ReportRefusal {
    /// No such node, or a wrong token: the same 404 as an unknown URL.
    NotFound,
    /// The right token from another address than the node's.
    WrongAddress,
    TooMany,
}

impl IntoResponse for ReportRefusal {
    fn into_response(self) -> Response {
        match self {
            ReportRefusal::NotFound => not_found(),
            ReportRefusal::WrongAddress => text(
                StatusCode::FORBIDDEN,
                "reports are accepted only from the node's inventory address\n",
            ),
            ReportRefusal::TooMany => text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many reports; slow down\n",
            ),
        }
    }
}

/// The node behind a first-boot report: its report token, from its own inventory address.
fn reporting_node(
    app: &HttpApp,
    host: &str,
    token: &str,
    peer: IpAddr,
) -> Result<(), ReportRefusal> {
    let bundle = app.bundle.get();
    let Some(node) = bundle.node(host) else {
        return Err(ReportRefusal::NotFound);
    };
    if !images::api_token::secrets_equal(&node.report_token, token) {
        tracing::warn!(node = host, client = %peer, "first-boot report with a wrong token");
        return Err(ReportRefusal::NotFound);
    }
    if peer != IpAddr::V4(node.ip) {
        tracing::warn!(node = host, client = %peer, inventory_ip = %node.ip, "first-boot report from another address than the node's: refused");
        return Err(ReportRefusal::WrongAddress);
    }
    if !app.node_posts.allow(host) {
        tracing::warn!(node = host, client = %peer, "node posting too fast: refused");
        return Err(ReportRefusal::TooMany);
    }
    Ok(())
}

/// `POST /report/<host>/<token>/events`: first-boot notes (and `booted`).
pub(super) async fn report_event(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((host, token)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = reporting_node(&app, &host, &token, peer.ip()) {
        return r.into_response();
    }
    let ev: ReportEvent = match parse_event(&body) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    let reported_sb = match &ev {
        ReportEvent::SecureBoot { secure_boot } => Some(*secure_boot),
        _ => None,
    };
    let ev = Event::Report(ev);
    let r = apply(&app, &host, ev.clone()).await;
    let ok = r.is_ok();
    let resp = answer(&host, peer.ip(), &ev, r);
    if ok && let Some(reported) = reported_sb {
        let bundle = app.bundle.get();
        warn_secure_boot(&app, &bundle, &host, peer.ip(), reported).await;
    }
    resp
}

/// cloud-init's phone_home (form-encoded POST) at the end of the node's first boot. What the
/// node says of itself (its hostname, fqdn) and the address it reports from go into the
/// timeline: proof of the seed taking effect, readable from the API.
pub(super) async fn phone_home(
    State(app): App,
    ConnectInfo(files::Peer(peer)): ConnectInfo<files::Peer>,
    UrlPath((host, token)): UrlPath<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = reporting_node(&app, &host, &token, peer.ip()) {
        return r.into_response();
    }
    let booted = Event::Report(ReportEvent::Booted);
    let r = apply(&app, &host, booted.clone()).await;
    let r = answer(&host, peer.ip(), &booted, r);
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
    let note = Event::Report(ReportEvent::Note {
        kind: "phone-home".into(),
        detail,
    });
    let r = apply(&app, &host, note.clone()).await;
    answer(&host, peer.ip(), &note, r)
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
        printable(&String::from_utf8_lossy(&out), 256)
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .take(32)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
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
