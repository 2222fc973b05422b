//! Read-only TFTP server on tokio.
//!
//! [`run`] listens on one socket for requests; each accepted read request gets its
//! own task and its own ephemeral UDP socket on the same local IP (RFC 1350's
//! transfer identifier). Content comes from a [`Provider`], so files can be served
//! from disk ([`FsProvider`]) or generated per client. Protocol decisions (option
//! negotiation, block numbering, which ACK moves the window) are pure functions in
//! [`crate::proto::tftp`] and [`Window`]; this module only does I/O around them.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::proto::tftp::{
    DATA_HEADER_LEN, ErrorCode, Limits, Mode, Negotiated, Packet, Request, ack_to_seq, block_count,
    block_number, decode, encode, negotiate, write_data_header,
};

/// A boxed future, so [`Provider`] stays usable as `dyn Provider`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bytes of one file to serve.
pub enum Body {
    /// Content already in memory (generated scripts, small files).
    Bytes(Arc<[u8]>),
    /// Content streamed from a reader; read in large chunks, not per block.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

/// What a [`Provider`] returns for a request. The size must be known up front:
/// it answers the `tsize` option and tells the server where the last block is.
pub struct Content {
    pub size: u64,
    pub body: Body,
}

impl Content {
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes: Arc<[u8]> = bytes.into();
        Content {
            size: bytes.len() as u64,
            body: Body::Bytes(bytes),
        }
    }

    /// `reader` must yield at least `size` bytes; only `size` bytes are sent.
    pub fn from_reader(size: u64, reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        Content {
            size,
            body: Body::Reader(Box::new(reader)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Sent to the client as ERROR 1.
    #[error("file not found")]
    NotFound,
    /// Sent to the client as ERROR 2; the reason is only logged.
    #[error("access violation: {0}")]
    AccessViolation(&'static str),
    /// Sent to the client as ERROR 0 "I/O error"; the details are only logged.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Source of the files a TFTP client may read. Given the client's address and the
/// path exactly as requested, return the content or an error. Implementations may
/// generate content per client (e.g. an iPXE script naming the node).
pub trait Provider: Send + Sync {
    fn open<'a>(
        &'a self,
        client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>>;
}

/// Serves regular files below `root`.
///
/// Confinement: a request is split at `/`; `.` and empty components are skipped
/// and any `..` is refused, so a leading `/` means "relative to the root" (PXE
/// firmware sometimes asks for `/undionly.kpxe`, and DHCP option 67 is often
/// written that way). The joined path is then canonicalized and must still lie
/// under the canonical root, which refuses symlinks that point out of the root
/// (crates.md: every surveyed crate followed them). Symlinks that stay inside the
/// root are served. Known gap: a symlink swapped between the check and the open
/// is not detected; the root is expected to be writable only by the operator.
pub struct FsProvider {
    root: PathBuf,
}

impl FsProvider {
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        Ok(FsProvider {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn open_path(&self, requested: &str) -> Result<Content, ProviderError> {
        let rel = relative_path(requested)?;
        let canon = match tokio::fs::canonicalize(self.root.join(rel)).await {
            Ok(p) => p,
            Err(e) => return Err(map_io(e)),
        };
        if !canon.starts_with(&self.root) {
            return Err(ProviderError::AccessViolation(
                "path resolves outside the root",
            ));
        }
        let file = tokio::fs::File::open(&canon).await.map_err(map_io)?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(ProviderError::AccessViolation("not a regular file"));
        }
        Ok(Content::from_reader(meta.len(), file))
    }
}

impl Provider for FsProvider {
    fn open<'a>(
        &'a self,
        _client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>> {
        Box::pin(self.open_path(path))
    }
}

fn map_io(e: io::Error) -> ProviderError {
    match e.kind() {
        // NotADirectory: "file.txt/x". Reported as absent, like a missing file.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ProviderError::NotFound,
        io::ErrorKind::PermissionDenied => ProviderError::AccessViolation("permission denied"),
        _ => ProviderError::Io(e),
    }
}

/// The lexical half of the confinement rule: the requested path as a relative
/// path with no `..`, or an error. Pure, so it is tested directly.
pub fn relative_path(requested: &str) -> Result<PathBuf, ProviderError> {
    let mut rel = PathBuf::new();
    for part in requested.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ProviderError::AccessViolation("'..' in path")),
            p => rel.push(p),
        }
    }
    if rel.as_os_str().is_empty() {
        // "/" or "": the root directory itself is not a file.
        return Err(ProviderError::NotFound);
    }
    Ok(rel)
}

/// Counters a metrics endpoint can read while the server runs.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Read requests accepted (a transfer task was started).
    pub started: AtomicU64,
    /// Transfers whose last block was acknowledged.
    pub finished: AtomicU64,
    /// Transfers that ended in an error on our side or by timeout.
    pub failed: AtomicU64,
    /// Transfers the client ended with an ERROR (EDK2's tsize probe counts here).
    pub aborted_by_client: AtomicU64,
    /// Requests refused before any data was sent: busy, write requests, malformed,
    /// unsupported mode, not found, access violation.
    pub refused: AtomicU64,
    /// DATA payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// DATA or OACK packets sent again after a timeout.
    pub retransmits: AtomicU64,
}

impl TftpStats {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Concurrent transfers; further requests get ERROR 0 "server busy".
    pub max_transfers: usize,
    /// Retransmission timeout unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned
    /// (each waits twice as long as the one before, see [`backoff`]).
    pub max_retries: u32,
    pub limits: Limits,
    /// Bytes read from a [`Body::Reader`] at a time, at least 8 blocks (plus one
    /// window kept for retransmission). Per-transfer memory is about twice this:
    /// `tokio::fs::File` keeps its own buffer of the same size. 64 KiB kept 50
    /// transfers at 12-16 MB resident; 256 KiB cost 36-47 MB for no speed gain.
    pub read_chunk: usize,
    pub stats: Arc<TftpStats>,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            max_transfers: 128,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            limits: Limits::default(),
            read_chunk: 64 * 1024,
            stats: Arc::default(),
        }
    }
}

/// Serves read requests arriving on `socket` until `shutdown` completes, then
/// tells running transfers to stop (ERROR 0 to their clients) and waits for them.
pub async fn run(
    socket: UdpSocket,
    provider: Arc<dyn Provider>,
    cfg: TftpConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local_ip = socket.local_addr()?.ip();
    let cfg = Arc::new(cfg);
    let permits = Arc::new(Semaphore::new(cfg.max_transfers));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Requests are small; a longer datagram is truncated and then fails to decode.
    let mut buf = vec![0u8; 4096];
    tokio::pin!(shutdown);
    info!(addr = %socket.local_addr()?, "tftp: listening");

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    warn!(error = %e, "tftp: transfer task panicked");
                }
            }
            received = socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(v) => v,
                    Err(e) => {
                        // ICMP errors for earlier replies surface here on Linux;
                        // they concern one client, not the listener.
                        debug!(error = %e, "tftp: recv error on listening socket");
                        continue;
                    }
                };
                let packet = match decode(&buf[..len]) {
                    Ok(p) => p,
                    Err(e) => {
                        // Only answer what looks like a request; stray garbage
                        // gets no reply (no reflection off the listening port).
                        if len >= 2 && buf[0] == 0 && (buf[1] == 1 || buf[1] == 2) {
                            debug!(%peer, error = %e, "tftp: malformed request");
                            TftpStats::inc(&cfg.stats.refused);
                            let msg = format!("malformed request: {e}");
                            send_error(&socket, peer, ErrorCode::IllegalOperation, &msg).await;
                        }
                        continue;
                    }
                };
                match packet {
                    Packet::Rrq(req) => {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            warn!(%peer, file = %req.filename, "tftp: busy, request refused");
                            TftpStats::inc(&cfg.stats.refused);
                            send_error(&socket, peer, ErrorCode::NotDefined, "server busy").await;
                            continue;
                        };
                        TftpStats::inc(&cfg.stats.started);
                        tasks.spawn(transfer(
                            req,
                            peer,
                            local_ip,
                            provider.clone(),
                            cfg.clone(),
                            stop_rx.clone(),
                            permit,
                        ));
                    }
                    Packet::Wrq(req) => {
                        info!(%peer, file = %req.filename, "tftp: write request refused");
                        TftpStats::inc(&cfg.stats.refused);
                        send_error(&socket, peer, ErrorCode::AccessViolation, "read-only server")
                            .await;
                    }
                    other => debug!(%peer, packet = ?kind(&other), "tftp: stray packet ignored"),
                }
            }
        }
    }

    info!(running = tasks.len(), "tftp: shutting down");
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            warn!(error = %e, "tftp: transfer task panicked");
        }
    }
    Ok(())
}

fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack { .. } => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack { .. } => "OACK",
    }
}

async fn send_error(socket: &UdpSocket, peer: SocketAddr, code: ErrorCode, msg: &str) {
    let bytes = encode(&Packet::Error {
        code,
        msg: msg.to_owned(),
    });
    if let Err(e) = socket.send_to(&bytes, peer).await {
        debug!(%peer, error = %e, "tftp: could not send ERROR");
    }
}

/// How a transfer ended, other than by success.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("client sent ERROR {code:?}: {msg}")]
    ClientError { code: ErrorCode, msg: String },
    #[error("no acknowledgement after {0} retries")]
    Timeout(u32),
    #[error("refused: {0}")]
    Refused(String),
    #[error("server shutting down")]
    Shutdown,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

async fn transfer(
    req: Request,
    peer: SocketAddr,
    local_ip: IpAddr,
    provider: Arc<dyn Provider>,
    cfg: Arc<TftpConfig>,
    stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let stats = cfg.stats.clone();
    let result = match UdpSocket::bind((local_ip, 0)).await {
        Ok(sock) => {
            let mut t = Transfer {
                sock,
                peer,
                cfg: &cfg,
                stop,
                buf: vec![0u8; 2048],
            };
            t.run(&req, provider.as_ref()).await
        }
        Err(e) => Err(TransferError::Io(e)),
    };
    // Free the slot before publishing the outcome, so whoever sees the counter
    // move can also start a new transfer.
    drop(permit);
    let file = req.filename.as_str();
    match result {
        Ok(bytes) => {
            TftpStats::inc(&stats.finished);
            let secs = started.elapsed().as_secs_f64();
            info!(%peer, file, bytes, secs, "tftp: transfer done");
        }
        Err(TransferError::ClientError { code, msg }) => {
            // Normal for EDK2's tsize probe: log quietly, never retransmit.
            TftpStats::inc(&stats.aborted_by_client);
            debug!(%peer, file, ?code, msg, "tftp: client ended the transfer");
        }
        Err(TransferError::Refused(reason)) => {
            // Not found, access violation, unsupported mode: the client's
            // problem, not a server failure.
            TftpStats::inc(&stats.refused);
            info!(%peer, file, reason, "tftp: request refused");
        }
        Err(e) => {
            TftpStats::inc(&stats.failed);
            warn!(%peer, file, error = %e, "tftp: transfer failed");
        }
    }
}

/// The I/O half of one transfer: socket, peer, and a receive buffer.
struct Transfer<'a> {
    sock: UdpSocket,
    peer: SocketAddr,
    cfg: &'a TftpConfig,
    stop: watch::Receiver<bool>,
    buf: Vec<u8>,
}

/// What arrived while waiting for an acknowledgement.
enum Incoming {
    Ack(u16),
    TimedOut,
}

impl Transfer<'_> {
    async fn fail(&self, code: ErrorCode, msg: &str) {
        send_error(&self.sock, self.peer, code, msg).await;
    }

    /// Returns the number of payload bytes of the file (not counting resends).
    async fn run(&mut self, req: &Request, provider: &dyn Provider) -> Result<u64, TransferError> {
        if req.mode != Mode::Octet {
            // Firmware always asks for octet. netascii would need CR/LF
            // translation (and a different tsize); refuse it like dnsmasq does.
            let msg = format!("unsupported mode {}; use octet", req.mode);
            self.fail(ErrorCode::IllegalOperation, &msg).await;
            return Err(TransferError::Refused(msg));
        }
        let content = match provider.open(self.peer, &req.filename).await {
            Ok(c) => c,
            Err(e) => {
                let (code, msg) = match &e {
                    ProviderError::NotFound => (ErrorCode::FileNotFound, "file not found"),
                    ProviderError::AccessViolation(_) => {
                        (ErrorCode::AccessViolation, "access violation")
                    }
                    ProviderError::Io(_) => (ErrorCode::NotDefined, "I/O error"),
                };
                self.fail(code, msg).await;
                return Err(TransferError::Refused(e.to_string()));
            }
        };
        let neg = negotiate(&req.options, &self.cfg.limits, content.size);
        info!(
            peer = %self.peer,
            file = %req.filename,
            size = content.size,
            blksize = neg.blksize,
            windowsize = neg.windowsize,
            options = ?req.options,
            "tftp: transfer start"
        );
        let timeout = neg
            .timeout_secs
            .map_or(self.cfg.timeout, |s| Duration::from_secs(s.into()));
        if !neg.oack.is_empty() {
            self.send_oack(&neg, timeout).await?;
        }
        let mut source = Source::new(content, &neg, self.cfg.read_chunk);
        self.send_data(&mut source, &neg, timeout).await
    }

    /// RFC 2347: send the OACK and wait for ACK 0. A client may answer with an
    /// ERROR instead (EDK2 does, after reading tsize): that ends the transfer.
    async fn send_oack(
        &mut self,
        neg: &Negotiated,
        timeout: Duration,
    ) -> Result<(), TransferError> {
        let oack = encode(&Packet::Oack {
            options: neg.oack.clone(),
        });
        let mut retries = 0;
        loop {
            self.sock.send_to(&oack, self.peer).await?;
            let deadline = tokio::time::Instant::now() + backoff(timeout, retries);
            loop {
                match self.recv(deadline).await? {
                    Incoming::Ack(0) => return Ok(()),
                    Incoming::Ack(_) => continue,
                    Incoming::TimedOut => break,
                }
            }
            retries += 1;
            if retries > self.cfg.max_retries {
                self.fail(ErrorCode::NotDefined, "timeout").await;
                return Err(TransferError::Timeout(self.cfg.max_retries));
            }
            TftpStats::inc(&self.cfg.stats.retransmits);
        }
    }

    async fn send_data(
        &mut self,
        source: &mut Source,
        neg: &Negotiated,
        timeout: Duration,
    ) -> Result<u64, TransferError> {
        let blksize = neg.blksize as usize;
        let size = source.size;
        let mut window = Window::new(block_count(size, neg.blksize), neg.windowsize);
        let mut packet = vec![0u8; DATA_HEADER_LEN + blksize];
        let mut retries = 0;
        loop {
            // Send every block the window allows (after an ACK: the next ones;
            // after a timeout or mid-window ACK: again from the first unacked).
            let keep_from = window.acked * blksize as u64;
            for seq in window.to_send() {
                let offset = (seq - 1) * blksize as u64;
                let len = (size - offset).min(blksize as u64) as usize;
                let data = match source.block(offset, len, keep_from).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.fail(ErrorCode::NotDefined, "read error").await;
                        return Err(TransferError::Io(e));
                    }
                };
                write_data_header(&mut packet, block_number(seq));
                packet[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(data);
                self.sock
                    .send_to(&packet[..DATA_HEADER_LEN + len], self.peer)
                    .await?;
                self.cfg
                    .stats
                    .bytes_sent
                    .fetch_add(len as u64, Ordering::Relaxed);
                window.sent = seq;
            }
            // The deadline is not moved by ignored packets: a stream of duplicate
            // ACKs must not postpone the retransmission.
            let deadline = tokio::time::Instant::now() + backoff(timeout, retries);
            loop {
                match self.recv(deadline).await? {
                    Incoming::Ack(block) => match window.on_ack(block) {
                        AckOutcome::Done => return Ok(size),
                        AckOutcome::Advanced => {
                            retries = 0;
                            break;
                        }
                        AckOutcome::Ignored => continue,
                    },
                    Incoming::TimedOut => {
                        retries += 1;
                        if retries > self.cfg.max_retries {
                            self.fail(ErrorCode::NotDefined, "timeout").await;
                            return Err(TransferError::Timeout(self.cfg.max_retries));
                        }
                        TftpStats::inc(&self.cfg.stats.retransmits);
                        window.on_timeout();
                        break;
                    }
                }
            }
        }
    }

    /// Waits for an ACK from the peer until `deadline`. Packets from other
    /// addresses get ERROR 5 (RFC 1350 section 4) and do not disturb the transfer;
    /// a client ERROR ends it; anything else from the peer is ignored.
    async fn recv(&mut self, deadline: tokio::time::Instant) -> Result<Incoming, TransferError> {
        loop {
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut self.buf)) => r,
                _ = self.stop.changed() => {
                    self.fail(ErrorCode::NotDefined, "server shutting down").await;
                    return Err(TransferError::Shutdown);
                }
            };
            let (len, from) = match received {
                Err(_elapsed) => return Ok(Incoming::TimedOut),
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(TransferError::Io(e)),
            };
            if from != self.peer {
                debug!(%from, peer = %self.peer, "tftp: packet from unknown TID");
                send_error(
                    &self.sock,
                    from,
                    ErrorCode::UnknownTid,
                    "unknown transfer ID",
                )
                .await;
                continue;
            }
            match decode(&self.buf[..len]) {
                Ok(Packet::Ack { block }) => return Ok(Incoming::Ack(block)),
                Ok(Packet::Error { code, msg }) => {
                    return Err(TransferError::ClientError { code, msg });
                }
                Ok(other) => debug!(packet = kind(&other), "tftp: unexpected packet ignored"),
                Err(e) => debug!(error = %e, "tftp: undecodable packet ignored"),
            }
        }
    }
}

/// Wait before the `retries`-th retransmission of the same packet: the timeout,
/// doubled per consecutive retry up to 16× (RFC 1123 4.2.3.2 requires an
/// adaptive timeout with exponential backoff). Besides sparing a congested link,
/// this lets a client's own retransmission timer fire: atftp restarts its timer on
/// every packet, even an ignored duplicate, so a server resending faster than the
/// client's timeout would keep it from ever re-sending a lost ACK.
pub fn backoff(timeout: Duration, retries: u32) -> Duration {
    timeout.saturating_mul(1 << retries.min(4))
}

/// RFC 7440 sender window, without I/O. Blocks are numbered by a 64-bit sequence
/// starting at 1; only the wire format wraps at 65536.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Highest block acknowledged (0: none yet).
    pub acked: u64,
    /// Highest block sent since the last rewind.
    pub sent: u64,
    /// Sequence number of the final (short) block.
    pub last: u64,
    pub size: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The final block is acknowledged.
    Done,
    /// The window moved; send what [`Window::to_send`] says next.
    Advanced,
    /// Duplicate, stale or bogus ACK: send nothing (no Sorcerer's Apprentice).
    Ignored,
}

impl Window {
    pub fn new(last: u64, size: u16) -> Self {
        Window {
            acked: 0,
            sent: 0,
            last,
            size: size.max(1),
        }
    }

    /// Blocks to send now: after the last sent one, up to one window past the
    /// last acknowledged one.
    pub fn to_send(&self) -> std::ops::RangeInclusive<u64> {
        let end = (self.acked + self.size as u64).min(self.last);
        self.sent + 1..=end
    }

    pub fn on_ack(&mut self, block: u16) -> AckOutcome {
        match ack_to_seq(block, self.acked, self.sent) {
            None => AckOutcome::Ignored,
            Some(seq) if seq == self.last => {
                self.acked = seq;
                AckOutcome::Done
            }
            Some(seq) => {
                self.acked = seq;
                // RFC 7440 section 4: an ACK inside the window means the client
                // lost the block after it; continue from there.
                if seq < self.sent {
                    self.sent = seq;
                }
                AckOutcome::Advanced
            }
        }
    }

    /// After a timeout, the whole unacknowledged window is sent again.
    pub fn on_timeout(&mut self) {
        self.sent = self.acked;
    }
}

/// File bytes for the data path. A reader is consumed in `read_chunk`-sized reads
/// into one buffer that also keeps the unacknowledged window for resends, so
/// there is no allocation or read call per block.
struct Source {
    size: u64,
    kind: SourceKind,
}

enum SourceKind {
    Bytes(Arc<[u8]>),
    Reader {
        reader: Box<dyn AsyncRead + Send + Unpin>,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        start: u64,
        /// Valid bytes in `buf`.
        filled: usize,
    },
}

impl Source {
    fn new(content: Content, neg: &Negotiated, read_chunk: usize) -> Self {
        let kind = match content.body {
            Body::Bytes(b) => SourceKind::Bytes(b),
            Body::Reader(reader) => {
                let window_bytes = neg.blksize as usize * neg.windowsize as usize;
                // At least 8 blocks per read: with 64 KiB blocks a 256 KiB chunk
                // would mean a blocking-pool round trip every 4 packets.
                let read_chunk = read_chunk.max(8 * neg.blksize as usize);
                // Never more than the file needs (+1 so EOF-sized buffers stay
                // non-empty): small files cost small buffers.
                let cap = (read_chunk + window_bytes).min(content.size as usize + 1);
                SourceKind::Reader {
                    reader,
                    buf: vec![0u8; cap.max(1)],
                    start: 0,
                    filled: 0,
                }
            }
        };
        Source {
            size: content.size,
            kind,
        }
    }

    /// Bytes `offset..offset + len`. `keep_from` (≤ offset) is the start of the
    /// unacknowledged window: bytes before it may be discarded.
    async fn block(&mut self, offset: u64, len: usize, keep_from: u64) -> io::Result<&[u8]> {
        match &mut self.kind {
            SourceKind::Bytes(b) => {
                let start = offset as usize;
                b.get(start..start + len)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short content"))
            }
            SourceKind::Reader {
                reader,
                buf,
                start,
                filled,
            } => {
                let end = offset + len as u64;
                if offset < *start {
                    // Cannot happen while keep_from only grows; guard anyway.
                    return Err(io::Error::other("block before buffered window"));
                }
                if end > *start + *filled as u64 {
                    // Drop what is acknowledged, then read one big chunk.
                    let drop = (keep_from.saturating_sub(*start) as usize).min(*filled);
                    buf.copy_within(drop..*filled, 0);
                    *filled -= drop;
                    *start += drop as u64;
                    let need = (end - *start) as usize;
                    while *filled < need {
                        let n = reader.read(&mut buf[*filled..]).await?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "content shorter than its announced size",
                            ));
                        }
                        *filled += n;
                    }
                }
                let from = (offset - *start) as usize;
                Ok(&buf[from..from + len])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_rules() {
        let ok = |s: &str| relative_path(s).unwrap();
        assert_eq!(ok("undionly.kpxe"), PathBuf::from("undionly.kpxe"));
        // Leading slash = relative to the root (PXE firmware habit).
        assert_eq!(ok("/undionly.kpxe"), PathBuf::from("undionly.kpxe"));
        assert_eq!(ok("//efi/./snponly.efi"), PathBuf::from("efi/snponly.efi"));
        for bad in ["../etc/passwd", "/../x", "a/../../b", "a/..", ".."] {
            assert!(
                matches!(relative_path(bad), Err(ProviderError::AccessViolation(_))),
                "{bad:?} must be refused"
            );
        }
        for empty in ["", "/", "./", "//."] {
            assert!(matches!(relative_path(empty), Err(ProviderError::NotFound)));
        }
        // A literal file named "..x" is not a parent reference.
        assert_eq!(ok("..x"), PathBuf::from("..x"));
    }

    #[test]
    fn backoff_doubles_up_to_16x() {
        let t = Duration::from_millis(100);
        let got: Vec<u64> = (0..7).map(|r| backoff(t, r).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(
            backoff(Duration::from_secs(255), 9),
            Duration::from_secs(4080)
        );
    }

    #[test]
    fn window_lock_step() {
        let mut w = Window::new(3, 1);
        assert_eq!(w.to_send(), 1..=1);
        w.sent = 1;
        assert_eq!(w.on_ack(0), AckOutcome::Ignored, "OACK ack is stale");
        assert_eq!(w.on_ack(1), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 2..=2);
        w.sent = 2;
        // Duplicate ACK 1 (the client retransmitted): must not trigger a resend.
        assert_eq!(w.on_ack(1), AckOutcome::Ignored);
        assert_eq!(w.on_ack(2), AckOutcome::Advanced);
        w.sent = 3;
        assert_eq!(w.on_ack(3), AckOutcome::Done);
    }

    #[test]
    fn window_partial_ack_rewinds() {
        let mut w = Window::new(100, 16);
        assert_eq!(w.to_send(), 1..=16);
        w.sent = 16;
        // Client got 1..=5, lost 6: resend from 6, window now ends at 21.
        assert_eq!(w.on_ack(5), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 6..=21);
        w.sent = 21;
        // A late duplicate of ACK 5 changes nothing.
        assert_eq!(w.on_ack(5), AckOutcome::Ignored);
        assert_eq!(w.on_ack(21), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 22..=37);
        w.sent = 37;
        w.on_timeout();
        assert_eq!(w.to_send(), 22..=37);
        // Never past the last block.
        let mut w = Window::new(3, 16);
        assert_eq!(w.to_send(), 1..=3);
        w.sent = 3;
        assert_eq!(w.on_ack(3), AckOutcome::Done);
    }

    #[test]
    fn window_across_rollover() {
        let mut w = Window::new(70_000, 8);
        w.acked = 65_530;
        w.sent = 65_538;
        assert_eq!(w.on_ack(block_number(65_536)), AckOutcome::Advanced);
        assert_eq!(w.acked, 65_536);
        assert_eq!(w.to_send(), 65_537..=65_544);
    }

    fn reader_source(data: Vec<u8>, blksize: u16, windowsize: u16, chunk: usize) -> Source {
        let neg = Negotiated {
            blksize,
            windowsize,
            timeout_secs: None,
            oack: vec![],
        };
        let size = data.len() as u64;
        Source::new(
            Content::from_reader(size, std::io::Cursor::new(data)),
            &neg,
            chunk,
        )
    }

    #[tokio::test]
    async fn source_reads_sequentially_and_resends_window() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Tiny chunk so the buffer is refilled and compacted many times.
        let mut src = reader_source(data.clone(), 100, 4, 150);
        let mut acked = 0u64;
        let mut offset = 0u64;
        while offset < 10_000 {
            let len = (10_000 - offset).min(100) as usize;
            let got = src.block(offset, len, acked).await.unwrap().to_vec();
            assert_eq!(got, data[offset as usize..offset as usize + len]);
            // Re-read the start of the unacked window, as a resend would.
            let again = src.block(acked, 100, acked).await.unwrap().to_vec();
            assert_eq!(again, data[acked as usize..acked as usize + 100]);
            offset += 100;
            if offset.is_multiple_of(400) {
                acked = offset - 100;
            }
        }
    }

    #[tokio::test]
    async fn source_reports_short_reader() {
        let neg = Negotiated {
            blksize: 512,
            windowsize: 1,
            timeout_secs: None,
            oack: vec![],
        };
        let content = Content::from_reader(1000, std::io::Cursor::new(vec![1u8; 600]));
        let mut src = Source::new(content, &neg, 4096);
        assert!(src.block(0, 512, 0).await.is_ok());
        let err = src.block(512, 488, 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
