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

//!
//! Files: `config` (settings), this file (the accept loop and admission), `transfer` (one
//! transfer), `window` (pure window/backoff logic), `source` (read-ahead);
//! the GSO sender is [`crate::net::gso`], the provider types [`crate::content`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::proto::tftp::{ErrorCode, Packet, decode, encode};

mod config;
mod source;
mod transfer;
mod window;

pub use crate::content::{
    Body, BoxFuture, Content, FsProvider, Provider, ProviderError, relative_path,
};
pub use crate::metrics::TftpStats;
pub use config::{DEADLINE, MAX_PER_ADDRESS, TftpConfig};
pub use window::{AckOutcome, Window, ack_poll_budget, backoff};

use transfer::transfer;

/// Whether a read request may start a transfer, given how many run in total and
/// from its source address.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Start,
    /// Every slot is taken.
    Busy,
    /// This address already runs its share.
    AddressBusy,
}

/// Pure admission rule for a read request. The per-address share is checked first, so
/// a host over its share is told so even when the server is also full.
pub fn admit(running: usize, from_address: usize, cfg: &TftpConfig) -> Admission {
    if from_address >= cfg.max_per_address.max(1) {
        Admission::AddressBusy
    } else if running >= cfg.max_transfers {
        Admission::Busy
    } else {
        Admission::Start
    }
}

/// Transfers running per source address; an [`AddressSlot`] gives its place back on drop.
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>);

struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn count(&self, ip: IpAddr) -> usize {
        self.0.lock().unwrap().get(&ip).copied().unwrap_or(0)
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> AddressSlot {
        *self.0.lock().unwrap().entry(ip).or_default() += 1;
        AddressSlot {
            table: self.clone(),
            ip,
        }
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap();
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
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
    let per_address = Arc::new(PerAddress::default());
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
                        let running = cfg.max_transfers - permits.available_permits();
                        match admit(running, per_address.count(peer.ip()), &cfg) {
                            Admission::Start => {}
                            Admission::Busy => {
                                warn!(%peer, file = %req.filename, "tftp: busy, request refused");
                                TftpStats::inc(&cfg.stats.refused);
                                send_error(&socket, peer, ErrorCode::NotDefined, "server busy").await;
                                continue;
                            }
                            Admission::AddressBusy => {
                                warn!(%peer, file = %req.filename, limit = cfg.max_per_address, "tftp: too many transfers from this address, request refused");
                                TftpStats::inc(&cfg.stats.refused);
                                TftpStats::inc(&cfg.stats.refused_per_address);
                                send_error(&socket, peer, ErrorCode::NotDefined, "too many transfers from this address").await;
                                continue;
                            }
                        }
                        // Only this loop takes permits, so the one counted free above is there.
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            continue;
                        };
                        let slot = per_address.take(peer.ip());
                        TftpStats::inc(&cfg.stats.started);
                        tasks.spawn(transfer(
                            req,
                            peer,
                            local_ip,
                            provider.clone(),
                            cfg.clone(),
                            stop_rx.clone(),
                            (permit, slot),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects the transfer slots from one host: past its share an address is refused
    /// even while slots are free, and a full server refuses everyone else as busy.
    #[test]
    fn admission_caps_each_address_then_the_server() {
        let cfg = TftpConfig {
            max_transfers: 10,
            max_per_address: 4,
            ..TftpConfig::default()
        };
        assert_eq!(admit(0, 0, &cfg), Admission::Start);
        assert_eq!(admit(3, 3, &cfg), Admission::Start);
        assert_eq!(admit(4, 4, &cfg), Admission::AddressBusy);
        assert_eq!(admit(10, 4, &cfg), Admission::AddressBusy);
        assert_eq!(admit(10, 0, &cfg), Admission::Busy);
        assert_eq!(admit(9, 0, &cfg), Admission::Start);
        // A zero share is taken as one: a misconfiguration must not refuse everything.
        let zero = TftpConfig {
            max_per_address: 0,
            ..cfg
        };
        assert_eq!(admit(0, 0, &zero), Admission::Start);
        assert_eq!(admit(1, 1, &zero), Admission::AddressBusy);
    }

    #[test]
    fn address_slots_are_given_back_on_drop() {
        let t = Arc::new(PerAddress::default());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let a = t.take(ip);
        let b = t.take(ip);
        assert_eq!(t.count(ip), 2);
        drop(a);
        assert_eq!(t.count(ip), 1);
        drop(b);
        assert_eq!(t.count(ip), 0);
        assert!(
            t.0.lock().unwrap().is_empty(),
            "no entry left per past client"
        );
    }
}
