//! One transfer: open the content and negotiate on the runtime, then exchange packets on a
//! blocking-pool thread (`start_transfer` says why).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, SockaddrStorage};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tracing::{debug, info, warn};

use super::source::Source;
use super::window::{AckOutcome, Window, ack_poll_budget, backoff, smooth};
use super::{AddressSlot, Provider, ProviderError, TftpConfig, TftpStats, kind};
use crate::net::gso::Sender;
use crate::proto::tftp::{
    ErrorCode, Mode, Negotiated, Packet, Request, block_count, decode, encode, negotiate,
};

/// How a transfer ended, other than by success.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("client sent ERROR {code:?}: {msg}")]
    ClientError { code: ErrorCode, msg: String },
    #[error("no acknowledgement after {0} retries")]
    Timeout(u32),
    #[error("still running after {0:?}, cut")]
    Deadline(Duration),
    #[error("refused: {0}")]
    Refused(String),
    #[error("server shutting down")]
    Shutdown,
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

pub(super) async fn transfer(
    req: Request,
    peer: SocketAddr,
    local_ip: IpAddr,
    provider: Arc<dyn Provider>,
    cfg: Arc<TftpConfig>,
    stop: watch::Receiver<bool>,
    permit: (OwnedSemaphorePermit, AddressSlot),
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
            if matches!(e, TransferError::Deadline(_)) {
                TftpStats::inc(&stats.deadline_exceeded);
            }
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

/// The I/O half of one transfer, run on a blocking thread: socket, peer, and
/// the buffers for receiving ACKs and sending windows.
struct Transfer {
    sock: std::net::UdpSocket,
    peer: SocketAddr,
    cfg: Arc<TftpConfig>,
    stop: watch::Receiver<bool>,
    /// When the transfer is cut ([`TftpConfig::deadline`] after it started).
    give_up: Instant,
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
            give_up: Instant::now() + cfg.deadline,
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
            if now >= self.give_up {
                self.fail(ErrorCode::NotDefined, "transfer took too long");
                return Err(TransferError::Deadline(self.cfg.deadline));
            }
            // No need to cut the wait at the give-up time: waits are sliced into
            // STOP_POLL, so it is seen within one slice.
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
