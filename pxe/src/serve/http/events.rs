//! `GET /api/v1/events/stream`: node changes pushed as Server-Sent Events (WHATWG HTML §9.2),
//! for the dashboard. Operator-authenticated like every `/api/v1` route; the page reads it with
//! `fetch()` so the token travels in the `Authorization` header, never in a URL that ends up in
//! logs and history (`EventSource` cannot set headers).
//!
//! Bounded at every step, because a client decides how fast it reads:
//! - at most [`StreamLimits::max_streams`] streams at once (503 beyond);
//! - the store's change feed is one shared ring ([`crate::state::CHANGES_CAP`]); a stream that
//!   falls behind it is ended;
//! - each stream has a queue of [`StreamLimits::queue`] frames between its pump and the socket;
//!   a client that does not read fills it and is ended, never buffered for;
//! - a heartbeat comment every [`StreamLimits::heartbeat`] keeps a live reader above the idle
//!   timeout and finds dead ones.
//!
//! The client reconnects (after a restart too) and gets a fresh `snapshot` first, so a stream
//! that was ended loses nothing but time.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc, watch};

use super::{App, HttpApp, text};
use crate::state::Change;

#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Event streams open at once (each is one operator's browser tab).
    pub max_streams: usize,
    /// Frames queued per stream before the client counts as too slow and is dropped.
    pub queue: usize,
    /// Time between heartbeat comments.
    pub heartbeat: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: 16,
            queue: 256,
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// The open streams, their limits, and the signal that ends them at shutdown (graceful
/// shutdown waits for answers in flight, and a stream never finishes by itself).
pub struct Streams {
    pub limits: StreamLimits,
    open: AtomicUsize,
    pub refused: AtomicU64,
    pub dropped_slow: AtomicU64,
    closing: watch::Sender<bool>,
}

impl Streams {
    pub fn new(limits: StreamLimits) -> Self {
        Streams {
            limits,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
            closing: watch::channel(false).0,
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// End every stream (pxe is stopping).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// The Prometheus lines of the event streams, for `/metrics`.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            o,
            "# HELP ironseed_event_streams_open Dashboard event streams open now (at most {}).\n\
             # TYPE ironseed_event_streams_open gauge\nironseed_event_streams_open {}\n\
             # HELP ironseed_event_streams_refused_total Event streams refused by the cap (503).\n\
             # TYPE ironseed_event_streams_refused_total counter\nironseed_event_streams_refused_total {}\n\
             # HELP ironseed_event_streams_dropped_total Event streams ended because the client did not keep up.\n\
             # TYPE ironseed_event_streams_dropped_total counter\nironseed_event_streams_dropped_total {}",
            self.limits.max_streams,
            self.open(),
            self.refused.load(Ordering::Relaxed),
            self.dropped_slow.load(Ordering::Relaxed)
        );
    }

    /// A place for one more stream, if the cap allows.
    fn try_open(self: &Arc<Self>) -> Option<StreamGuard> {
        let max = self.limits.max_streams.max(1);
        let took = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !took {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(StreamGuard(self.clone()))
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new(StreamLimits::default())
    }
}

struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One SSE frame: `event: <name>` and the data, one `data:` line per line (a JSON text from
/// serde has none, but the format must hold for any text).
pub fn frame(event: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + event.len() + 16);
    s.push_str("event: ");
    s.push_str(event);
    s.push('\n');
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line.trim_end_matches('\r'));
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

/// Why a stream's pump stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    Gone,
    /// The client did not read: its queue was full, or it fell behind the change feed.
    Slow,
    /// pxe is stopping.
    Closing,
}

/// Move changes into a stream's queue until it ends: first `snapshot`, then one frame per
/// changed node (changes that arrived together are coalesced per node), a fresh snapshot after
/// a reload, and a heartbeat comment when nothing happened for `heartbeat`. Never waits for
/// the client: a full queue ends the stream. `render` turns a change into a frame.
pub async fn pump(
    mut changes: broadcast::Receiver<Change>,
    out: mpsc::Sender<Bytes>,
    mut closing: watch::Receiver<bool>,
    heartbeat: Duration,
    render: impl Fn(&Change) -> Option<Bytes>,
) -> Ended {
    let send = |b: Bytes| match out.try_send(b) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Ended::Slow),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Ended::Gone),
    };
    if let Some(b) = render(&Change::All)
        && let Err(e) = send(b)
    {
        return e;
    }
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    loop {
        let first = tokio::select! {
            _ = closing.wait_for(|c| *c) => return Ended::Closing,
            _ = out.closed() => return Ended::Gone,
            _ = tick.tick() => {
                if let Err(e) = send(Bytes::from_static(b": heartbeat\n\n")) {
                    return e;
                }
                continue;
            }
            c = changes.recv() => c,
        };
        let mut batch = BTreeSet::new();
        let mut next = first;
        loop {
            match next {
                Ok(c) => {
                    batch.insert(c);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Ended::Slow,
                Err(broadcast::error::RecvError::Closed) => return Ended::Closing,
            }
            next = match changes.try_recv() {
                Ok(c) => Ok(c),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
            };
        }
        // A reload makes every other change of the batch part of the new snapshot.
        let batch = if batch.contains(&Change::All) {
            vec![Change::All]
        } else {
            batch.into_iter().collect()
        };
        for c in &batch {
            if let Some(b) = render(c)
                && let Err(e) = send(b)
            {
                return e;
            }
        }
        tick.reset();
    }
}

/// The frame for a change, as the operator API shows nodes (never a secret; no timeline:
/// the detail view asks `/api/v1/nodes/<node>` for it).
fn render(app: &HttpApp, c: &Change) -> Option<Bytes> {
    match c {
        Change::All => {
            let bundle = app.bundle.get();
            let nodes: Vec<_> = app
                .store
                .all()
                .iter()
                .map(|r| super::operator::view(app, r, false))
                .collect();
            let v = serde_json::json!({
                "cluster": bundle.plan.cluster,
                "bundle": bundle.id,
                // The page asks for the picture only when there is one (a 404 is a console error).
                "topology": bundle.has(super::dashboard::TOPOLOGY_FILE),
                "nodes": nodes,
            });
            Some(frame("snapshot", &v.to_string()))
        }
        Change::Node(h) => {
            let r = app.store.get(h)?;
            Some(frame(
                "node",
                &super::operator::view(app, &r, false).to_string(),
            ))
        }
    }
}

pub(super) async fn stream(State(app): App) -> Response {
    let Some(guard) = app.streams.try_open() else {
        tracing::warn!(
            max = app.streams.limits.max_streams,
            "event stream refused: too many open"
        );
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    // Subscribed before the snapshot is rendered: nothing falls between the two.
    let changes = app.store.subscribe();
    let (tx, rx) = mpsc::channel(app.streams.limits.queue.max(1));
    let closing = app.streams.closing.subscribe();
    let heartbeat = app.streams.limits.heartbeat;
    let a = app.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let ended = pump(changes, tx, closing, heartbeat, |c| render(&a, c)).await;
        if ended == Ended::Slow {
            a.streams.dropped_slow.fetch_add(1, Ordering::Relaxed);
            tracing::info!("event stream ended: the client did not keep up");
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes() -> (broadcast::Sender<Change>, broadcast::Receiver<Change>) {
        let (tx, rx) = broadcast::channel(8);
        (tx, rx)
    }

    fn render(c: &Change) -> Option<Bytes> {
        Some(match c {
            Change::All => frame("snapshot", "all"),
            Change::Node(h) => frame("node", h),
        })
    }

    #[test]
    fn frames_are_sse() {
        assert_eq!(&frame("node", "{}")[..], b"event: node\ndata: {}\n\n");
        // A newline in data cannot end the frame or forge another event.
        assert_eq!(
            &frame("node", "a\n\nevent: x\r\nb")[..],
            b"event: node\ndata: a\ndata: \ndata: event: x\ndata: b\n\n"
        );
    }

    /// Protects the server's memory: a client that does not read is dropped when its queue
    /// is full, the pump never waits for it nor buffers more.
    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped() {
        let (tx, rx) = changes();
        let (out, _unread) = mpsc::channel(2);
        let (_c, closing) = watch::channel(false);
        let slow = tokio::spawn(pump(rx, out, closing, Duration::from_secs(60), render));
        for i in 0..3 {
            // The pump may have given up already (its receiver is gone then).
            let _ = tx.send(Change::Node(format!("n{i}")));
            tokio::task::yield_now().await;
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), slow)
            .await
            .unwrap();
        assert_eq!(ended.unwrap(), Ended::Slow);
    }

    /// Protects the change feed: a stream that falls behind the shared ring is ended (and
    /// reconnects to a fresh snapshot) instead of holding the ring.
    #[tokio::test]
    async fn a_stream_behind_the_feed_is_ended() {
        let (tx, rx) = changes();
        for i in 0..20 {
            tx.send(Change::Node(format!("n{i}"))).unwrap();
        }
        let (out, _keep) = mpsc::channel(100);
        let (_c, closing) = watch::channel(false);
        let ended = pump(rx, out, closing, Duration::from_secs(60), render).await;
        assert_eq!(ended, Ended::Slow);
    }

    #[tokio::test]
    async fn snapshot_then_coalesced_changes_then_heartbeats_then_close() {
        let (tx, rx) = changes();
        let (out, mut got) = mpsc::channel(16);
        let (close, closing) = watch::channel(false);
        let first = tokio::spawn(pump(rx, out, closing, Duration::from_millis(100), render));
        assert_eq!(
            &got.recv().await.unwrap()[..],
            b"event: snapshot\ndata: all\n\n"
        );
        tx.send(Change::Node("a".into())).unwrap();
        assert_eq!(&got.recv().await.unwrap()[..], b"event: node\ndata: a\n\n");
        assert_eq!(&got.recv().await.unwrap()[..], b": heartbeat\n\n");
        close.send_replace(true);
        assert_eq!(first.await.unwrap(), Ended::Closing);
        // Several changes at once: one frame per node, a reload swallows the rest.
        let (tx, rx) = changes();
        for c in [Change::Node("b".into()), Change::Node("b".into())] {
            tx.send(c).unwrap();
        }
        let (out, mut got) = mpsc::channel(16);
        let (_close, closing) = watch::channel(false);
        let p = tokio::spawn(pump(rx, out, closing, Duration::from_secs(60), render));
        got.recv().await.unwrap();
        assert_eq!(&got.recv().await.unwrap()[..], b"event: node\ndata: b\n\n");
        tx.send(Change::Node("c".into())).unwrap();
        tx.send(Change::All).unwrap();
        let next = got.recv().await.unwrap();
        assert!(
            &next[..] == b"event: node\ndata: c\n\n"
                || &next[..] == b"event: snapshot\ndata: all\n\n"
        );
        drop(got);
        tx.send(Change::Node("d".into())).unwrap();
        assert_eq!(p.await.unwrap(), Ended::Gone);
    }
}
