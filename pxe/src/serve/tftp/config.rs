//! Settings of the TFTP server and their defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::TftpStats;
use crate::proto::tftp::Limits;

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Concurrent transfers; further requests get ERROR 0 "server busy". Each
    /// running transfer holds a thread of tokio's blocking pool (512 by default),
    /// so keep this well below the runtime's `max_blocking_threads`.
    pub max_transfers: usize,
    /// Concurrent transfers from one source address, so one host (or one spoofer
    /// that can receive at one address) cannot hold every slot. Firmware runs one
    /// transfer at a time; EDK2's tsize probe and its real request overlap briefly.
    pub max_per_address: usize,
    /// A transfer still running after this long is cut, whatever its pace: the
    /// bound on how long one slot can be held (see [`DEADLINE`]).
    pub deadline: Duration,
    /// Retransmission timeout unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned
    /// (each waits twice as long as the one before, see [`super::backoff`]).
    pub max_retries: u32,
    pub limits: Limits,
    /// Bytes read from a [`crate::content::Body::File`] or [`crate::content::Body::Reader`] at a time, at least
    /// 8 blocks (plus one window kept for retransmission). 64 KiB kept 50
    /// transfers at 12-16 MB resident; 256 KiB cost 36-47 MB for no speed gain
    /// (measured when a `tokio::fs::File` doubled every buffer).
    pub read_chunk: usize,
    /// Longest a transfer polls its socket for the next ACK before it sleeps in
    /// recvfrom; zero never polls. Only used while it pays, see [`super::ack_poll_budget`].
    pub ack_poll: Duration,
    pub stats: Arc<TftpStats>,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            max_transfers: 128,
            max_per_address: MAX_PER_ADDRESS,
            deadline: DEADLINE,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            limits: Limits::default(),
            read_chunk: 64 * 1024,
            ack_poll: Duration::from_micros(200),
            stats: Arc::default(),
        }
    }
}

/// Default [`TftpConfig::max_per_address`].
pub const MAX_PER_ADDRESS: usize = 4;

/// Default [`TftpConfig::deadline`]. The largest file served over TFTP here is a
/// 1-2 MiB iPXE binary, but the bound is sized for a 30 MiB file at RFC 1350's
/// lock-step 512-byte blocks (61,440 round trips) over a link with a 10 ms round
/// trip: 614 s. Fifteen minutes leaves half again on top; a never-ACKing client is
/// dropped far sooner by the retry limit.
pub const DEADLINE: Duration = Duration::from_secs(15 * 60);
