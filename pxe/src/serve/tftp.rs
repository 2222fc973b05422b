//! Read-only TFTP server on tokio.
//!
//! [`run`] listens on one socket for requests; each accepted read request gets its
//! own task and its own ephemeral UDP socket on the same local IP (RFC 1350's
//! transfer identifier). The task opens the content and negotiates options, then
//! exchanges packets on a blocking-pool thread (blocking socket, windows sent as
//! UDP GSO; `start_transfer` says why). Content comes from a [`Provider`], so
//! files can be served from disk ([`FsProvider`]) or generated per client.
//! Protocol decisions (option negotiation, block numbering, which ACK moves the
//! window) are pure functions in [`crate::proto::tftp`] and [`Window`]; this
//! module only does I/O around them.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg, sendmsg,
};

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
    /// A regular file, read with pread(2) a window or more at a time.
    File(std::fs::File),
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

    /// `file` must hold at least `size` bytes; only `size` bytes are sent.
    pub fn from_file(size: u64, file: std::fs::File) -> Self {
        Content {
            size,
            body: Body::File(file),
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
/// (every surveyed crate followed them: docs/reference.md "Crate notes"). Symlinks that stay
/// inside the root are served. Known gap: a symlink swapped between the check and the open
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
        Ok(Content::from_file(meta.len(), file.into_std().await))
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
    /// Transfers running now (a gauge; it also decides whether a transfer may poll
    /// for ACKs, see [`ack_poll_budget`]).
    pub active: AtomicU64,
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
    /// Concurrent transfers; further requests get ERROR 0 "server busy". Each
    /// running transfer holds a thread of tokio's blocking pool (512 by default),
    /// so keep this well below the runtime's `max_blocking_threads`.
    pub max_transfers: usize,
    /// Retransmission timeout unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned
    /// (each waits twice as long as the one before, see [`backoff`]).
    pub max_retries: u32,
    pub limits: Limits,
    /// Bytes read from a [`Body::File`] or [`Body::Reader`] at a time, at least
    /// 8 blocks (plus one window kept for retransmission). 64 KiB kept 50
    /// transfers at 12-16 MB resident; 256 KiB cost 36-47 MB for no speed gain
    /// (measured when a `tokio::fs::File` doubled every buffer).
    pub read_chunk: usize,
    /// Longest a transfer polls its socket for the next ACK before it sleeps in
    /// recvfrom; zero never polls. Only used while it pays, see [`ack_poll_budget`].
    pub ack_poll: Duration,
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
            ack_poll: Duration::from_micros(200),
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
    stats.active.fetch_add(1, Ordering::Relaxed);
    let result = start_transfer(&req, peer, local_ip, provider.as_ref(), cfg, stop).await;
    stats.active.fetch_sub(1, Ordering::Relaxed);
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

/// The per-transfer socket: a new ephemeral port on the listener's address (the
/// transfer ID), in blocking mode for [`Transfer`]. Not connected to the peer:
/// packets from other ports must still reach us to be answered with ERROR 5.
fn transfer_socket(local_ip: IpAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(SocketAddr::new(local_ip, 0)),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    sock.bind(&SocketAddr::new(local_ip, 0).into())?;
    Ok(sock.into())
}

/// The async half of a transfer: open the content (providers are async), then
/// hand the socket to a blocking-pool thread for the packet exchange.
///
/// Why a thread per transfer rather than a task: every block is a send plus a
/// wait for one small ACK. On a tokio socket the wait is recvfrom (EAGAIN), a
/// trip through the reactor's epoll_wait and often a cross-worker wake-up, then
/// recvfrom again; a blocking recvfrom is one syscall that sleeps on the
/// socket. Lock-step transfers are bound by exactly that per-block latency, and
/// with 50 transfers each gets its own scheduler share, as in the C servers
/// (pxe/bench/tftp.sh measures both).
async fn start_transfer(
    req: &Request,
    peer: SocketAddr,
    local_ip: IpAddr,
    provider: &dyn Provider,
    cfg: Arc<TftpConfig>,
    stop: watch::Receiver<bool>,
) -> Result<u64, TransferError> {
    let sock = transfer_socket(local_ip)?;
    // Refusals below are one small datagram on an idle socket: a blocking send
    // does not wait here.
    if req.mode != Mode::Octet {
        // Firmware always asks for octet. netascii would need CR/LF
        // translation (and a different tsize); refuse it like dnsmasq does.
        let msg = format!("unsupported mode {}; use octet", req.mode);
        send_error_sync(&sock, peer, ErrorCode::IllegalOperation, &msg);
        return Err(TransferError::Refused(msg));
    }
    let content = match provider.open(peer, &req.filename).await {
        Ok(c) => c,
        Err(e) => {
            let (code, msg) = match &e {
                ProviderError::NotFound => (ErrorCode::FileNotFound, "file not found"),
                ProviderError::AccessViolation(_) => {
                    (ErrorCode::AccessViolation, "access violation")
                }
                ProviderError::Io(_) => (ErrorCode::NotDefined, "I/O error"),
            };
            send_error_sync(&sock, peer, code, msg);
            return Err(TransferError::Refused(e.to_string()));
        }
    };
    let neg = negotiate(&req.options, &cfg.limits, content.size);
    info!(
        %peer,
        file = %req.filename,
        size = content.size,
        blksize = neg.blksize,
        windowsize = neg.windowsize,
        options = ?req.options,
        "tftp: transfer start"
    );
    let source = Source::new(
        content,
        &neg,
        cfg.read_chunk,
        tokio::runtime::Handle::current(),
    );
    tokio::task::spawn_blocking(move || {
        let mut t = Transfer::new(sock, peer, cfg, stop);
        t.run(source, &neg)
    })
    .await
    .map_err(|e| TransferError::Io(io::Error::other(e)))?
}

fn send_error_sync(sock: &std::net::UdpSocket, peer: SocketAddr, code: ErrorCode, msg: &str) {
    let bytes = encode(&Packet::Error {
        code,
        msg: msg.to_owned(),
    });
    if let Err(e) = sock.send_to(&bytes, peer) {
        debug!(%peer, error = %e, "tftp: could not send ERROR");
    }
}

/// How often a transfer waiting for an ACK looks at the shutdown signal.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Most DATA packets handed to the kernel in one `sendmmsg` call.
const MAX_BATCH: usize = 64;

/// The I/O half of one transfer, run on a blocking thread: socket, peer, and
/// the buffers for receiving ACKs and sending windows.
struct Transfer {
    sock: std::net::UdpSocket,
    peer: SocketAddr,
    cfg: Arc<TftpConfig>,
    stop: watch::Receiver<bool>,
    buf: Vec<u8>,
    /// The socket's current SO_RCVTIMEO, so it is only set when it changes.
    rcv_timeout: Option<Duration>,
    sender: Sender,
    /// Smoothed time from a window's last send to its ACK (none yet, or only
    /// retransmitted windows so far).
    ack_latency: Option<Duration>,
    cpus: usize,
}

/// What arrived while waiting for an acknowledgement.
enum Incoming {
    Ack(u16),
    TimedOut,
}

impl Transfer {
    fn new(
        sock: std::net::UdpSocket,
        peer: SocketAddr,
        cfg: Arc<TftpConfig>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Transfer {
            peer,
            cfg,
            stop,
            buf: vec![0u8; 2048],
            rcv_timeout: None,
            sender: Sender::new(&sock, peer),
            sock,
            ack_latency: None,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Fewer transfers run than there are CPUs: spending a little CPU to cut
    /// latency takes nothing from another transfer.
    fn spare_core(&self) -> bool {
        TftpStats::get(&self.cfg.stats.active) < self.cpus as u64
    }

    fn fail(&self, code: ErrorCode, msg: &str) {
        send_error_sync(&self.sock, self.peer, code, msg);
    }

    /// Returns the number of payload bytes of the file (not counting resends).
    fn run(&mut self, mut source: Source, neg: &Negotiated) -> Result<u64, TransferError> {
        let timeout = neg
            .timeout_secs
            .map_or(self.cfg.timeout, |s| Duration::from_secs(s.into()));
        if !neg.oack.is_empty() {
            self.send_oack(neg, timeout)?;
        }
        self.send_data(&mut source, neg, timeout)
    }

    /// RFC 2347: send the OACK and wait for ACK 0. A client may answer with an
    /// ERROR instead (EDK2 does, after reading tsize): that ends the transfer.
    fn send_oack(&mut self, neg: &Negotiated, timeout: Duration) -> Result<(), TransferError> {
        let oack = encode(&Packet::Oack {
            options: neg.oack.clone(),
        });
        let mut retries = 0;
        loop {
            self.sock.send_to(&oack, self.peer)?;
            let deadline = Instant::now() + backoff(timeout, retries);
            loop {
                match self.recv(deadline, None)? {
                    Incoming::Ack(0) => return Ok(()),
                    Incoming::Ack(_) => continue,
                    Incoming::TimedOut => break,
                }
            }
            retries += 1;
            if retries > self.cfg.max_retries {
                self.fail(ErrorCode::NotDefined, "timeout");
                return Err(TransferError::Timeout(self.cfg.max_retries));
            }
            TftpStats::inc(&self.cfg.stats.retransmits);
        }
    }

    fn send_data(
        &mut self,
        source: &mut Source,
        neg: &Negotiated,
        timeout: Duration,
    ) -> Result<u64, TransferError> {
        let blksize = neg.blksize as usize;
        let size = source.size;
        let mut window = Window::new(block_count(size, neg.blksize), neg.windowsize);
        let mut retries = 0;
        loop {
            // Send every block the window allows (after an ACK: the next ones;
            // after a timeout or mid-window ACK: again from the first unacked).
            let blocks = window.to_send();
            let spare = self.spare_core();
            if !blocks.is_empty() {
                let (first, last) = (*blocks.start(), *blocks.end());
                let offset = (first - 1) * blksize as u64;
                let end = (last * blksize as u64).min(size);
                let keep_from = window.acked * blksize as u64;
                // One read for the whole run of blocks: the window is contiguous.
                let data = match source.range(offset, (end - offset) as usize, keep_from) {
                    Ok(d) => d,
                    Err(e) => {
                        self.fail(ErrorCode::NotDefined, "read error");
                        return Err(TransferError::Io(e));
                    }
                };
                let count = (last - first + 1) as usize;
                // With a core to spare, the window's first block goes out on its
                // own and the rest in one more send: the client is woken by block
                // one and starts on it while the kernel still cuts the rest into
                // datagrams, instead of waking after the whole window went through
                // the stack. With ACK polling this took atftp's windowsize 16 from
                // 1.3x to 1.5x atftpd (pxe/bench/tftp.sh). With every core busy the
                // extra syscall is pure cost (50 concurrent: 0.66x -> 0.73x atftpd's
                // wall time), so not then; lock-step windows are one block anyway.
                if count > 2 && spare {
                    let (lead, rest) = data.split_at(blksize);
                    self.sender.send(first, 1, lead, blksize)?;
                    self.sender.send(first + 1, count - 1, rest, blksize)?;
                } else {
                    self.sender.send(first, count, data, blksize)?;
                }
                self.cfg
                    .stats
                    .bytes_sent
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                window.sent = last;
                // Read the next window now, while the client works through this
                // one, so the buffer refill (a pread and a move every few
                // windows) is off the path between its ACK and our next send.
                // Errors surface on the real read after the ACK.
                if spare && last < window.last {
                    let next_end = ((last + window.size as u64) * blksize as u64).min(size);
                    let at = last * blksize as u64;
                    source.prefetch(at, (next_end - at) as usize, keep_from);
                }
            }
            // The deadline is not moved by ignored packets: a stream of duplicate
            // ACKs must not postpone the retransmission.
            let sent_at = Instant::now();
            let deadline = sent_at + backoff(timeout, retries);
            let poll = if spare {
                ack_poll_budget(self.cfg.ack_poll, self.ack_latency)
            } else {
                Duration::ZERO
            };
            let poll_until = (!poll.is_zero()).then(|| sent_at + poll);
            loop {
                match self.recv(deadline, poll_until)? {
                    Incoming::Ack(block) => match window.on_ack(block) {
                        AckOutcome::Done => return Ok(size),
                        AckOutcome::Advanced => {
                            // Only first sends: a retransmitted window's ACK may
                            // answer the earlier copy.
                            if retries == 0 {
                                self.ack_latency =
                                    Some(smooth(self.ack_latency, sent_at.elapsed()));
                            }
                            retries = 0;
                            break;
                        }
                        AckOutcome::Ignored => continue,
                    },
                    Incoming::TimedOut => {
                        retries += 1;
                        if retries > self.cfg.max_retries {
                            self.fail(ErrorCode::NotDefined, "timeout");
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
    /// a client ERROR ends it; anything else from the peer is ignored. The wait is
    /// cut into [`STOP_POLL`] slices so a shutdown is noticed. Until `poll_until`
    /// the socket is polled without sleeping (see [`ack_poll_budget`]).
    fn recv(
        &mut self,
        deadline: Instant,
        poll_until: Option<Instant>,
    ) -> Result<Incoming, TransferError> {
        loop {
            if !matches!(self.stop.has_changed(), Ok(false)) {
                self.fail(ErrorCode::NotDefined, "server shutting down");
                return Err(TransferError::Shutdown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Incoming::TimedOut);
            }
            let polled = match poll_until {
                Some(until) if now < until => match self.recv_now()? {
                    Some(got) => Some(got),
                    None => {
                        std::hint::spin_loop();
                        continue;
                    }
                },
                _ => None,
            };
            let (len, from) = match polled {
                Some(got) => got,
                None => match self.recv_blocking(deadline, now)? {
                    Some(got) => got,
                    None => continue,
                },
            };
            if from != self.peer {
                debug!(%from, peer = %self.peer, "tftp: packet from unknown TID");
                send_error_sync(
                    &self.sock,
                    from,
                    ErrorCode::UnknownTid,
                    "unknown transfer ID",
                );
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

    /// One datagram if one is queued, without sleeping.
    fn recv_now(&mut self) -> Result<Option<(usize, SocketAddr)>, TransferError> {
        use std::os::fd::AsRawFd;
        let mut iov = [io::IoSliceMut::new(&mut self.buf)];
        let got = nix::sys::socket::recvmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &mut iov,
            None,
            MsgFlags::MSG_DONTWAIT,
        );
        match got {
            Ok(m) => Ok(m.address.and_then(|a| std_addr(&a)).map(|a| (m.bytes, a))),
            Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
            Err(e) => Err(TransferError::Io(e.into())),
        }
    }

    /// Sleep in recvfrom until a datagram, `deadline` or the next [`STOP_POLL`]
    /// slice (then None).
    fn recv_blocking(
        &mut self,
        deadline: Instant,
        now: Instant,
    ) -> Result<Option<(usize, SocketAddr)>, TransferError> {
        // Whole milliseconds (rounded up, so never zero): the timeout only
        // changes near a deadline, not on every packet.
        let left_ms = (deadline - now).as_micros().div_ceil(1000) as u64;
        let wait = Duration::from_millis(left_ms).min(STOP_POLL);
        if self.rcv_timeout != Some(wait) {
            self.sock.set_read_timeout(Some(wait))?;
            self.rcv_timeout = Some(wait);
        }
        match self.sock.recv_from(&mut self.buf) {
            Ok(v) => Ok(Some(v)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(TransferError::Io(e)),
        }
    }
}

fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// How long a transfer polls for the next ACK before it sleeps in recvfrom.
///
/// A sleeping transfer thread costs a cross-CPU wake-up per window, tens of
/// microseconds on a virtualised host: as long as a fast client takes to read a
/// whole 16-block window. Polling saves that wake-up but burns the CPU while it
/// waits, so a transfer polls only while its client's ACKs have come back within
/// the budget (a slow client or a long path never makes it spin), and the caller
/// polls only with a core to spare (it never takes a core another transfer could
/// use). Measured: atftp windowsize 16 on loopback went from 1.1x to 1.3x
/// atftpd with polling alone, lock-step tftp-hpa from 1.0x to 2.9x tftpd-hpa
/// (pxe/bench/tftp.sh).
pub fn ack_poll_budget(max: Duration, ack_latency: Option<Duration>) -> Duration {
    match ack_latency {
        Some(rtt) if rtt <= max => max,
        _ => Duration::ZERO,
    }
}

/// Exponentially weighted moving average, 1/8 weight for the new sample (the
/// smoothing RFC 6298 uses for TCP's SRTT).
fn smooth(avg: Option<Duration>, sample: Duration) -> Duration {
    match avg {
        None => sample,
        Some(a) => (a * 7 + sample) / 8,
    }
}

/// Largest UDP payload handed to the kernel in one GSO send (IPv4 allows 65507).
const GSO_MAX_BYTES: usize = 65_000;
/// Segments per GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
const GSO_MAX_SEGS: usize = 64;

/// Sends DATA packets for one transfer. Each packet is two iovecs, header and a
/// slice of the read buffer, so payload is never copied in user space. A window
/// goes out as UDP GSO (`UDP_SEGMENT`: one sendmsg, one pass through the stack,
/// the kernel cuts it into `4 + blksize` datagrams, which works because every
/// block but a file's last is full) or, where GSO is refused, one `sendmmsg`
/// instead of one syscall per block. Built on the transfer's own thread
/// (`MultiHeaders` is not `Send`).
struct Sender {
    fd: std::os::fd::RawFd,
    peer: SockaddrStorage,
    mmsg: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
    gso: bool,
}

impl Sender {
    fn new(sock: &std::net::UdpSocket, peer: SocketAddr) -> Self {
        let peer = SockaddrStorage::from(peer);
        Sender {
            fd: sock.as_raw_fd(),
            peer,
            mmsg: MultiHeaders::preallocate(MAX_BATCH, None),
            addrs: vec![Some(peer); MAX_BATCH],
            gso: true,
        }
    }

    /// Sends blocks `first..first + count`, whose payloads are consecutive
    /// `blksize` slices of `data` (the last may be shorter or empty).
    fn send(&mut self, first: u64, count: usize, data: &[u8], blksize: usize) -> io::Result<()> {
        let seg = DATA_HEADER_LEN + blksize;
        let mut done = 0;
        while done < count {
            let rest = &data[(done * blksize).min(data.len())..];
            let seq = first + done as u64;
            let left = count - done;
            let gso_segs = left.min(GSO_MAX_SEGS).min(GSO_MAX_BYTES / seg);
            let sent = if left == 1 {
                self.send_gso_or_one(seq, 1, rest, blksize)
            } else if self.gso && gso_segs >= 2 {
                match self.send_gso_or_one(seq, gso_segs, rest, blksize) {
                    // Kernels or routes without UDP GSO: sendmmsg from now on.
                    Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                        debug!("tftp: UDP GSO refused, sending windows with sendmmsg");
                        self.gso = false;
                        continue;
                    }
                    r => r,
                }
            } else {
                self.send_mmsg(seq, left.min(MAX_BATCH), rest, blksize)
            };
            match sent {
                // A blocking send only returns early if interrupted; resume.
                Ok(n) => done += n.max(1),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `n` blocks in one sendmsg: with `n > 1` as GSO segments.
    fn send_gso_or_one(
        &mut self,
        first: u64,
        n: usize,
        data: &[u8],
        blksize: usize,
    ) -> nix::Result<usize> {
        let mut headers = [[0u8; DATA_HEADER_LEN]; GSO_MAX_SEGS];
        let mut iovs = [IoSlice::new(&[]); 2 * GSO_MAX_SEGS];
        for (i, h) in headers[..n].iter_mut().enumerate() {
            write_data_header(h, block_number(first + i as u64));
        }
        for (i, (iov, h)) in iovs.chunks_exact_mut(2).zip(&headers[..n]).enumerate() {
            let from = (i * blksize).min(data.len());
            let to = (from + blksize).min(data.len());
            iov[0] = IoSlice::new(h);
            iov[1] = IoSlice::new(&data[from..to]);
        }
        let seg = (DATA_HEADER_LEN + blksize) as u16;
        let gso = [ControlMessage::UdpGsoSegments(&seg)];
        let cmsgs: &[ControlMessage] = if n > 1 { &gso } else { &[] };
        sendmsg(
            self.fd,
            &iovs[..2 * n],
            cmsgs,
            MsgFlags::empty(),
            Some(&self.peer),
        )?;
        Ok(n)
    }

    /// Up to [`MAX_BATCH`] blocks in one sendmmsg; returns how many were sent.
    fn send_mmsg(
        &mut self,
        first: u64,
        n: usize,
        data: &[u8],
        blksize: usize,
    ) -> nix::Result<usize> {
        let mut headers = [[0u8; DATA_HEADER_LEN]; MAX_BATCH];
        for (i, h) in headers[..n].iter_mut().enumerate() {
            write_data_header(h, block_number(first + i as u64));
        }
        let mut iovs = [[IoSlice::new(&[]); 2]; MAX_BATCH];
        for (i, iov) in iovs[..n].iter_mut().enumerate() {
            let from = (i * blksize).min(data.len());
            let to = (from + blksize).min(data.len());
            *iov = [IoSlice::new(&headers[i]), IoSlice::new(&data[from..to])];
        }
        let r = sendmmsg(
            self.fd,
            &mut self.mmsg,
            iovs[..n].iter(),
            &self.addrs[..n],
            [],
            MsgFlags::empty(),
        )?;
        Ok(r.count())
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

/// File bytes for the data path. Content is read in `read_chunk`-sized reads
/// into one buffer that also keeps the unacknowledged window for resends, so
/// there is no allocation or read call per block, and a window is one slice.
struct Source {
    size: u64,
    kind: SourceKind,
}

enum SourceKind {
    Bytes(Arc<[u8]>),
    Buffered {
        input: Input,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        start: u64,
        /// Valid bytes in `buf`.
        filled: usize,
    },
}

/// Where a buffered source reads from, on the transfer's blocking thread.
enum Input {
    /// pread(2) straight into the window buffer.
    File(std::fs::File),
    /// A provider's async reader, driven from the blocking thread.
    Reader(Box<dyn AsyncRead + Send + Unpin>, tokio::runtime::Handle),
}

impl Input {
    fn read(&mut self, offset: u64, dst: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::File(f) => loop {
                match f.read_at(dst, offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
            // Sequential: offsets only grow, and the buffer logic asks for the
            // bytes right after the ones it has.
            Input::Reader(r, handle) => handle.block_on(r.read(dst)),
        }
    }
}

impl Source {
    fn new(
        content: Content,
        neg: &Negotiated,
        read_chunk: usize,
        handle: tokio::runtime::Handle,
    ) -> Self {
        let input = match content.body {
            Body::Bytes(b) => {
                return Source {
                    size: content.size,
                    kind: SourceKind::Bytes(b),
                };
            }
            Body::File(f) => Input::File(f),
            Body::Reader(r) => Input::Reader(r, handle),
        };
        let window_bytes = neg.blksize as usize * neg.windowsize as usize;
        // At least 8 blocks per read: with 64 KiB blocks a 256 KiB chunk
        // would mean a read call every 4 packets.
        let read_chunk = read_chunk.max(8 * neg.blksize as usize);
        // Never more than the file needs (+1 so EOF-sized buffers stay
        // non-empty): small files cost small buffers.
        let cap = (read_chunk + window_bytes).min(content.size as usize + 1);
        Source {
            size: content.size,
            kind: SourceKind::Buffered {
                input,
                buf: vec![0u8; cap.max(1)],
                start: 0,
                filled: 0,
            },
        }
    }

    /// Have `offset..offset + len` read ahead of need, when it fits in the buffer
    /// beside the unacknowledged bytes from `keep_from` (two windows of 64 KiB
    /// blocks do not); read errors are left for [`Source::range`] to report.
    fn prefetch(&mut self, offset: u64, len: usize, keep_from: u64) {
        let SourceKind::Buffered { buf, .. } = &self.kind else {
            return;
        };
        if (offset + len as u64).saturating_sub(keep_from) <= buf.len() as u64 {
            let _ = self.range(offset, len, keep_from);
        }
    }

    /// Bytes `offset..offset + len` (at most one window). `keep_from` (≤ offset)
    /// is the start of the unacknowledged window: bytes before it may be
    /// discarded.
    fn range(&mut self, offset: u64, len: usize, keep_from: u64) -> io::Result<&[u8]> {
        match &mut self.kind {
            SourceKind::Bytes(b) => {
                let start = offset as usize;
                b.get(start..start + len)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short content"))
            }
            SourceKind::Buffered {
                input,
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
                    if need > buf.len() {
                        return Err(io::Error::other("range larger than the window buffer"));
                    }
                    // Never read past the announced size: a growing file must
                    // not push bytes of the next block into this one's tail.
                    let want = (buf.len() as u64).min(self.size - *start) as usize;
                    while *filled < need {
                        let at = *start + *filled as u64;
                        let n = input.read(at, &mut buf[*filled..want])?;
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
    fn acks_are_polled_for_only_from_a_fast_client() {
        let max = Duration::from_micros(200);
        let fast = Some(Duration::from_micros(60));
        assert_eq!(ack_poll_budget(max, fast), max);
        assert_eq!(ack_poll_budget(max, Some(max)), max);
        // The first window (nothing measured yet) and a slow client sleep.
        assert_eq!(ack_poll_budget(max, None), Duration::ZERO);
        let slow = Some(Duration::from_micros(201));
        assert_eq!(ack_poll_budget(max, slow), Duration::ZERO);
        // Turned off.
        assert_eq!(ack_poll_budget(Duration::ZERO, fast), Duration::ZERO);
    }

    #[test]
    fn ack_latency_is_smoothed_like_tcp_srtt() {
        let us = Duration::from_micros;
        assert_eq!(smooth(None, us(80)), us(80));
        assert_eq!(smooth(Some(us(80)), us(160)), us(90));
        // One slow ACK moves the average by an eighth, not to the outlier.
        let mut avg = Some(us(50));
        avg = Some(smooth(avg, us(10_050)));
        assert_eq!(avg, Some(us(1_300)));
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

    /// Both send paths (GSO and its sendmmsg fallback) put the same datagrams on
    /// the wire: full blocks, a short last one, numbers across the rollover.
    #[test]
    fn sender_gso_and_sendmmsg_send_the_same_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<u8> = (0..(100 * 70 + 33)).map(|i| (i % 253) as u8).collect();
        let count = 71; // 70 full blocks of 100 and one of 33: more than one batch
        for gso in [true, false] {
            let mut sender = Sender::new(&tx, rx.local_addr().unwrap());
            sender.gso = gso;
            sender.send(65_500, count, &data, 100).unwrap();
            let mut buf = [0u8; 256];
            for i in 0..count {
                let n = rx.recv(&mut buf).unwrap();
                let seq = 65_500 + i as u64;
                let from = i * 100;
                let to = (from + 100).min(data.len());
                let want = encode(&Packet::Data {
                    block: block_number(seq),
                    data: data[from..to].to_vec(),
                });
                assert_eq!(&buf[..n], &want[..], "gso={gso} block {seq}");
            }
        }
    }

    fn neg(blksize: u16, windowsize: u16) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout_secs: None,
            oack: vec![],
        }
    }

    /// Reads blocks as the send loop does, re-reading the start of the
    /// unacknowledged window as a resend would, and a whole window at once.
    fn check_source(mut src: Source, data: &[u8]) {
        let size = data.len() as u64;
        let mut acked = 0u64;
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(100) as usize;
            let got = src.range(offset, len, acked).unwrap().to_vec();
            assert_eq!(got, data[offset as usize..offset as usize + len]);
            let again = src.range(acked, 100, acked).unwrap().to_vec();
            assert_eq!(again, data[acked as usize..acked as usize + 100]);
            let window = src.range(acked, 400.min((size - acked) as usize), acked);
            assert_eq!(
                window.unwrap(),
                &data[acked as usize..(acked + 400).min(size) as usize]
            );
            offset += 100;
            if offset.is_multiple_of(400) {
                acked = offset - 100;
            }
        }
    }

    #[test]
    fn source_reads_sequentially_and_resends_window() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Tiny chunk so the buffer is refilled and compacted many times.
        let reader = Content::from_reader(10_000, std::io::Cursor::new(data.clone()));
        check_source(
            Source::new(reader, &neg(100, 4), 150, rt.handle().clone()),
            &data,
        );
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        // A file longer than announced: only the announced bytes are read.
        std::io::Write::write_all(&mut file, b"tail").unwrap();
        let file = Content::from_file(10_000, file);
        check_source(
            Source::new(file, &neg(100, 4), 150, rt.handle().clone()),
            &data,
        );
    }

    /// A reader that counts its reads.
    struct Counted(std::io::Cursor<Vec<u8>>, Arc<AtomicU64>);

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[test]
    fn the_next_window_is_read_before_its_ack_when_it_fits() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reads = Arc::new(AtomicU64::new(0));
        let reader = Counted(std::io::Cursor::new(data.clone()), reads.clone());
        let content = Content::from_reader(10_000, reader);
        // Windows of 4 x 100 bytes; reads of at least 8 blocks: a 1200-byte
        // buffer, filled by the first read.
        let mut src = Source::new(content, &neg(100, 4), 150, rt.handle().clone());
        assert_eq!(src.range(0, 400, 0).unwrap(), &data[..400]);
        let before = reads.load(Ordering::Relaxed);
        // Window 4 while window 1 is unacknowledged: 1600 bytes do not fit.
        src.prefetch(1200, 400, 0);
        assert_eq!(
            reads.load(Ordering::Relaxed),
            before,
            "read what cannot fit"
        );
        // Window 4 while window 3 is unacknowledged fits: read now, and both
        // window 3's retransmission and window 4 after the ACK are served from
        // the buffer.
        src.prefetch(1200, 400, 800);
        let after_prefetch = reads.load(Ordering::Relaxed);
        assert!(after_prefetch > before);
        assert_eq!(src.range(800, 400, 800).unwrap(), &data[800..1200]);
        assert_eq!(src.range(1200, 400, 1200).unwrap(), &data[1200..1600]);
        assert_eq!(reads.load(Ordering::Relaxed), after_prefetch);
    }

    #[test]
    fn source_reports_short_content() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let content = Content::from_reader(1000, std::io::Cursor::new(vec![1u8; 600]));
        let mut src = Source::new(content, &neg(512, 1), 4096, rt.handle().clone());
        assert!(src.range(0, 512, 0).is_ok());
        let err = src.range(512, 488, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &[1u8; 600]).unwrap();
        let content = Content::from_file(1000, file);
        let mut src = Source::new(content, &neg(512, 1), 4096, rt.handle().clone());
        assert!(src.range(0, 512, 0).is_ok());
        let err = src.range(512, 488, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
