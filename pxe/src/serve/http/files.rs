//! The front of every HTTP connection. Plain GET/HEAD of an artifact (kernels, initrds, OS
//! images, the k3s air-gap files: the bytes of an install) is answered here with sendfile(2),
//! so image bytes go from the page cache to the socket without passing through user space;
//! anything else hands the connection, bytes already read included, to the axum router.
//! Through hyper, 50 parallel image downloads reached 0.59x nginx on loopback; the copy into
//! and out of user memory was the difference (pxe/bench/http.sh).
//!
//! The request-head parsing and range rules are `proto::http`; this file only does I/O.
//!
//! Limits (`limits`): every connection takes a place in the connection table before anything
//! is read; the request head is due within the header timeout, keep-alive and stalled bodies
//! end after the idle timeout, on this path and on the router's (through [`Handoff`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use super::HttpApp;
use super::limits::{Closed, ConnGuard};
use crate::proto::http::{self, FileHead, FileRequest, Parse, Span};
use crate::serve::stopped;
/// After shutdown is asked for, answers in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(30);
/// One sendfile call moves at most this much, so one fast client cannot hold a worker thread
/// for long while others wait.
const SENDFILE_CHUNK: usize = 4 << 20;

/// A connection the fast path passed on, with the bytes it had already read, its place in
/// the connection table, and the idle timeout hyper does not have: a read or write that
/// makes no progress for the idle timeout fails, so a stalled request body or a client that
/// stops reading its answer ends the connection.
pub struct Handoff {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
    guard: ConnGuard,
    /// Last time a byte moved either way.
    last: Instant,
    timer: Pin<Box<Sleep>>,
    timed_out: bool,
}

impl Handoff {
    fn new(inner: TcpStream, prefix: Vec<u8>, guard: ConnGuard) -> Self {
        let last = Instant::now();
        let idle = guard.limits().idle_timeout;
        Handoff {
            prefix,
            pos: 0,
            inner,
            guard,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + idle)),
            timed_out: false,
        }
    }

    /// After a read or write that made progress (`moved`) or is pending: a pending one fails
    /// once nothing moved for the idle timeout.
    fn idle_check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.last = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => {
                let due = self.last + self.guard.limits().idle_timeout;
                if self.timer.deadline() != due {
                    self.timer.as_mut().reset(due);
                }
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if !self.timed_out {
                    self.timed_out = true;
                    self.guard.connections().count_closed(Closed::IdleTimeout);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes moved for the idle timeout",
                )))
            }
        }
    }
}

impl AsyncRead for Handoff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.idle_check(cx, r)
    }
}

impl AsyncWrite for Handoff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.idle_check(cx, r)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.idle_check(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The client's address, as the router's handlers see it (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Serve the connections the front passed on with the router until the front stops (its
/// senders are dropped), then let them finish (at most [`DRAIN`]). Served here rather than by
/// `axum::serve` for hyper's header-read timeout: a client on a keep-alive connection must
/// send each next request head within it too.
pub async fn routed(
    mut handoffs: mpsc::Receiver<(Handoff, SocketAddr)>,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            got = handoffs.recv() => match got {
                Some((io, peer)) => {
                    conns.spawn(serve_routed(io, peer, router.clone(), stop.clone()));
                }
                None => break,
            }
        }
    }
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "requests still running at shutdown were cut"
        );
    }
}

async fn serve_routed(
    io: Handoff,
    peer: SocketAddr,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) {
    use tower::ServiceExt;
    let header_timeout = io.guard.limits().header_timeout;
    let conns = io.guard.shared();
    let svc = router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(Peer(peer)));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(
        hyper_util::rt::TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(svc),
    );
    tokio::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stopped(stop) => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            conns.count_closed(Closed::HeaderTimeout);
        }
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// Accept connections until `stop` turns true, answering artifacts here and passing the rest
/// on through `handoffs`; then let answers in flight finish (at most [`DRAIN`]).
pub async fn front(
    listener: TcpListener,
    app: Arc<HttpApp>,
    handoffs: mpsc::Sender<(Handoff, SocketAddr)>,
    stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(stop.clone()) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let guard = match app.connections.try_open(peer.ip()) {
                        Ok(g) => g,
                        Err(_) => {
                            // Counted and logged by the table. A reset, not a close: no
                            // TIME_WAIT left behind per refused connection of a flood.
                            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            continue;
                        }
                    };
                    // Heads and bodies are coalesced with TCP_CORK, so Nagle has nothing to add
                    // and would hold a short answer's last segment for a delayed ACK.
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, peer, app.clone(), guard, handoffs.clone(), stop.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    drop(handoffs);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "artifact downloads still running at shutdown were cut"
        );
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    app: Arc<HttpApp>,
    guard: ConnGuard,
    handoffs: mpsc::Sender<(Handoff, SocketAddr)>,
    stop: watch::Receiver<bool>,
) {
    let (header_timeout, idle_timeout) = {
        let l = guard.limits();
        (l.header_timeout, l.idle_timeout)
    };
    let mut buf = Vec::with_capacity(1024);
    // When the request head must be complete: counted from the connection's start for the
    // first request (a client that connects and sends nothing is slowloris too), from its
    // first byte for later ones; between requests the idle timeout applies.
    let mut head_due = Some(Instant::now() + header_timeout);
    loop {
        guard.waiting();
        let parsed = loop {
            match http::parse(&buf) {
                Parse::Incomplete => {}
                done => break done,
            }
            buf.reserve(1024);
            let (due, why) = match head_due {
                Some(t) => (t, Closed::HeaderTimeout),
                None => (Instant::now() + idle_timeout, Closed::IdleTimeout),
            };
            let read = tokio::select! {
                r = tokio::time::timeout_at(due, stream.read_buf(&mut buf)) => r,
                () = guard.evicted() => {
                    guard.connections().count_closed(Closed::Evicted);
                    tracing::debug!(%peer, "idle http connection closed to make room");
                    return;
                }
                // An idle keep-alive connection closes at shutdown; a half-read head is
                // waited for (bounded by the header timeout and the drain).
                _ = stopped(stop.clone()), if buf.is_empty() => return,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
                    head_due.get_or_insert_with(|| Instant::now() + header_timeout);
                }
                Err(_) => {
                    guard.connections().count_closed(why);
                    tracing::debug!(%peer, reason = ?why, "http connection closed waiting for a request");
                    return;
                }
                _ => return,
            }
        };
        guard.busy();
        let (head_len, req, file) = match parsed {
            Parse::File { head_len, req } => {
                let rel = req.path.strip_prefix("/artifacts/").unwrap_or("");
                match super::artifact_file(&app, rel) {
                    Ok(file) => (head_len, req, file),
                    // Not found, outside the folder: the router answers and logs those.
                    Err(_) => return hand_off(stream, buf, peer, guard, &handoffs).await,
                }
            }
            _ => return hand_off(stream, buf, peer, guard, &handoffs).await,
        };
        match send_file(&stream, &req, &file, idle_timeout).await {
            Ok(status) => {
                app.counters.record("artifacts", status);
                tracing::debug!(%peer, path = %req.path, status, "artifact");
            }
            Err(e) => {
                tracing::info!(%peer, path = %req.path, error = %e, "artifact download ended early");
                return;
            }
        }
        buf.drain(..head_len);
        let stopping = *stop.borrow();
        if !req.keep_alive || stopping {
            return;
        }
        // A pipelined next head is already under way; otherwise wait as keep-alive.
        head_due = (!buf.is_empty()).then(|| Instant::now() + header_timeout);
    }
}

async fn hand_off(
    stream: TcpStream,
    prefix: Vec<u8>,
    peer: SocketAddr,
    guard: ConnGuard,
    handoffs: &mpsc::Sender<(Handoff, SocketAddr)>,
) {
    let conn = Handoff::new(stream, prefix, guard);
    // Fails only when the router is gone (shutdown): the connection is dropped.
    let _ = handoffs.send((conn, peer)).await;
}

/// Answer one request for `path`; the status sent.
async fn send_file(
    stream: &TcpStream,
    req: &FileRequest,
    path: &std::path::Path,
    idle: Duration,
) -> io::Result<u16> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let last_modified = httpdate::fmt_http_date(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    // If-Range (RFC 9110 §13.1.5): the range applies only to the version the client has; we
    // have no ETag, so only an exactly equal Last-Modified date counts.
    let range = match &req.if_range {
        Some(v) if *v != last_modified => None,
        _ => req.range.as_deref(),
    };
    let head = FileHead {
        len: meta.len(),
        span: http::span(range, meta.len()),
        last_modified: &last_modified,
        date: &httpdate::fmt_http_date(SystemTime::now()),
        content_type: http::content_type(&req.path),
        keep_alive: req.keep_alive,
    };
    let (offset, len) = if req.head_only { (0, 0) } else { head.body() };
    // TCP_CORK (nginx's tcp_nopush) puts the head in the body's first segment; uncorking
    // pushes out the last partial one.
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_cork(len > 0);
    send_head(stream, head.render().as_bytes(), idle).await?;
    if len > 0 {
        if head.span == Span::Full {
            // The whole file goes out in order: ask for aggressive readahead.
            let _ = nix::fcntl::posix_fadvise(
                &file,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
            );
        }
        sendfile_all(stream, &file, offset, len, idle).await?;
        let _ = sock.set_tcp_cork(false);
    }
    Ok(head.status())
}

async fn send_head(stream: &TcpStream, mut head: &[u8], idle: Duration) -> io::Result<()> {
    while !head.is_empty() {
        let n = writable(stream, idle, || stream.try_write(head)).await?;
        head = &head[n..];
    }
    Ok(())
}

async fn sendfile_all(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    idle: Duration,
) -> io::Result<()> {
    let mut off = i64::try_from(offset).map_err(|_| io::Error::other("offset past i64"))?;
    let end = off + i64::try_from(len).map_err(|_| io::Error::other("length past i64"))?;
    while off < end {
        let count = usize::try_from(end - off)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CHUNK);
        // sendfile on a non-blocking socket returns what fits in the socket buffer. Reading
        // the file may block the worker on a page-cache miss, as nginx without aio does; the
        // images served are read over and over and stay cached.
        let n = writable(stream, idle, || {
            nix::sys::sendfile::sendfile(stream.as_fd(), file.as_fd(), Some(&mut off), count)
                .map_err(io::Error::from)
        })
        .await?;
        if n == 0 {
            // The file shrank under us: the promised length can no longer be sent.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
    }
    Ok(())
}

/// Run a non-blocking write once the socket is writable, retrying on EAGAIN, giving up after
/// `idle` without progress (a client that stopped reading). No total deadline: an image over
/// a slow link may take long, and the per-address cap bounds how many such downloads one
/// host holds.
async fn writable<T>(
    stream: &TcpStream,
    idle: Duration,
    mut op: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    loop {
        match tokio::time::timeout(idle, stream.writable()).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                ));
            }
            Ok(r) => r?,
        }
        match stream.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}
