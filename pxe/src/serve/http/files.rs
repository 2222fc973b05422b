//! The front of every HTTP connection. Plain GET/HEAD of an artifact (kernels, initrds, OS
//! images, the k3s air-gap files: the bytes of an install) is answered here with sendfile(2),
//! so image bytes go from the page cache to the socket without passing through user space;
//! anything else hands the connection, bytes already read included, to the axum router.
//! Through hyper, 50 parallel image downloads reached 0.59x nginx on loopback; the copy into
//! and out of user memory was the difference (pxe/bench/http.sh).
//!
//! The request-head parsing and range rules are `proto::http`; this file only does I/O.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::HttpApp;
use crate::proto::http::{self, FileHead, FileRequest, Parse, Span};
use crate::serve::stopped;

/// A client that sends no complete request head, or accepts no bytes, for this long is dropped.
const IDLE: Duration = Duration::from_secs(120);
/// After shutdown is asked for, answers in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(30);
/// One sendfile call moves at most this much, so one fast client cannot hold a worker thread
/// for long while others wait.
const SENDFILE_CHUNK: usize = 4 << 20;

/// A connection the fast path passed on, with the bytes it had already read.
pub struct Handoff {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
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
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Handoff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// The connection source axum serves: what the fast path passed on.
pub struct Handoffs {
    rx: mpsc::Receiver<(Handoff, SocketAddr)>,
    local: SocketAddr,
}

impl Handoffs {
    pub fn new(rx: mpsc::Receiver<(Handoff, SocketAddr)>, local: SocketAddr) -> Self {
        Handoffs { rx, local }
    }
}

impl axum::serve::Listener for Handoffs {
    type Io = Handoff;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Handoff, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The front stopped (shutdown): axum stops on the same signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The client's address, as the router's handlers see it (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Handoffs>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, Handoffs>) -> Self {
        Peer(*s.remote_addr())
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
                    // Heads and bodies are coalesced with TCP_CORK, so Nagle has nothing to add
                    // and would hold a short answer's last segment for a delayed ACK.
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, peer, app.clone(), handoffs.clone(), stop.clone()));
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
    handoffs: mpsc::Sender<(Handoff, SocketAddr)>,
    stop: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let parsed = loop {
            match http::parse(&buf) {
                Parse::Incomplete => {}
                done => break done,
            }
            buf.reserve(1024);
            let read = tokio::select! {
                r = tokio::time::timeout(IDLE, stream.read_buf(&mut buf)) => r,
                // An idle keep-alive connection closes at shutdown; a half-read head is
                // waited for (bounded by IDLE and the drain).
                _ = stopped(stop.clone()), if buf.is_empty() => return,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        };
        let (head_len, req, file) = match parsed {
            Parse::File { head_len, req } => {
                let rel = req.path.strip_prefix("/artifacts/").unwrap_or("");
                match super::artifact_file(&app, rel) {
                    Ok(file) => (head_len, req, file),
                    // Not found, outside the folder: the router answers and logs those.
                    Err(_) => return hand_off(stream, buf, peer, &handoffs).await,
                }
            }
            _ => return hand_off(stream, buf, peer, &handoffs).await,
        };
        match send_file(&stream, &req, &file).await {
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
    }
}

async fn hand_off(
    stream: TcpStream,
    prefix: Vec<u8>,
    peer: SocketAddr,
    handoffs: &mpsc::Sender<(Handoff, SocketAddr)>,
) {
    let conn = Handoff {
        prefix,
        pos: 0,
        inner: stream,
    };
    // Fails only when the router is gone (shutdown): the connection is dropped.
    let _ = handoffs.send((conn, peer)).await;
}

/// Answer one request for `path`; the status sent.
async fn send_file(
    stream: &TcpStream,
    req: &FileRequest,
    path: &std::path::Path,
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
    send_head(stream, head.render().as_bytes()).await?;
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
        sendfile_all(stream, &file, offset, len).await?;
        let _ = sock.set_tcp_cork(false);
    }
    Ok(head.status())
}

async fn send_head(stream: &TcpStream, mut head: &[u8]) -> io::Result<()> {
    while !head.is_empty() {
        let n = writable(stream, || stream.try_write(head)).await?;
        head = &head[n..];
    }
    Ok(())
}

async fn sendfile_all(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
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
        let n = writable(stream, || {
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
/// [`IDLE`] without progress (a client that stopped reading).
async fn writable<T>(stream: &TcpStream, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match tokio::time::timeout(IDLE, stream.writable()).await {
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
