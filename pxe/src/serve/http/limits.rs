//! HTTP connection limits: how many connections in total and per client address, and which
//! idle connection gives way when the server is full. Without them 1,100 idle TCP connections
//! used up the descriptors and `/healthz`, `/boot` and TFTP stopped answering.
//!
//! The rule is [`admit`] (pure); [`Connections`] is the shared table the front of every
//! connection (`files`) consults, and a [`ConnGuard`] holds a connection's place until the
//! socket is dropped, wherever it ends (fast path or router).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Limits of the HTTP server. The defaults suit a homelab: a few dozen nodes, each with a
/// handful of connections at most.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections in total; `pxe serve` lowers it to fit under `RLIMIT_NOFILE`.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_per_address: usize,
    /// Time a client has to send a whole request head, from its first byte (from the
    /// connection's start for the first request): slowloris sends a byte every few seconds.
    pub header_timeout: Duration,
    /// Time without a byte moving either way on a connection (keep-alive between requests,
    /// a request body that stalls, a client that stops reading its answer) before it is
    /// closed.
    pub idle_timeout: Duration,
    /// Time from a routed request's head to its answer's head, the request body included.
    pub request_timeout: Duration,
    /// Largest request body the router reads (bodies here are small JSON events and forms).
    pub body_limit: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            max_per_address: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            body_limit: 64 << 10,
        }
    }
}

/// Descriptors kept free of HTTP connections: TFTP transfers (a socket and a file each),
/// the DHCP and listening sockets, state files, the files the router serves.
pub fn reserved_fds(tftp_transfers: usize) -> usize {
    2 * tftp_transfers + 128
}

/// The connection cap that fits under a descriptor limit of `nofile` with `reserved` kept
/// free; never below 16, so a tiny limit still serves someone.
pub fn fit_connections(wanted: usize, nofile: u64, reserved: usize) -> usize {
    let room = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved);
    wanted.min(room).max(16)
}

/// What happens to a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// The server is full: close the connection that has waited longest for a request head,
    /// then accept. An idle flood therefore cannot lock out a real client, whose request
    /// head arrives with its first packet.
    EvictThenAccept,
    Refuse(Refusal),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Refusal {
    /// The address already holds its share.
    PerAddress,
    /// Full, and every connection is busy answering a request.
    Global,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::Global => "global",
        }
    }
}

/// Pure admission rule: `open` connections in total, `from_address` of them from the new
/// connection's address, `idle` of them waiting for a request head (evictable).
pub fn admit(open: usize, from_address: usize, idle: usize, limits: &HttpLimits) -> Admit {
    if from_address >= limits.max_per_address.max(1) {
        Admit::Refuse(Refusal::PerAddress)
    } else if open < limits.max_connections.max(1) {
        Admit::Accept
    } else if idle > 0 {
        Admit::EvictThenAccept
    } else {
        Admit::Refuse(Refusal::Global)
    }
}

/// Why a connection was closed by a limit after it was accepted.
#[derive(Debug, Clone, Copy)]
pub enum Closed {
    /// Made room for a new connection while waiting for a request head.
    Evicted,
    HeaderTimeout,
    IdleTimeout,
}

/// The shared connection table and its counters (read by `/metrics`).
pub struct Connections {
    pub limits: HttpLimits,
    table: Mutex<Table>,
    pub refused_per_address: AtomicU64,
    pub refused_global: AtomicU64,
    pub evicted: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// When a refusal was last logged (seconds since `born`): a flood logs one line every
    /// ten seconds, not one per connection.
    last_warned: AtomicU64,
    born: Instant,
}

#[derive(Default)]
struct Table {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    /// Connections waiting for a request head, by id: since when, and how to close them.
    waiting: HashMap<u64, (Instant, Arc<Notify>)>,
    next_id: u64,
}

impl Connections {
    pub fn new(limits: HttpLimits) -> Self {
        Connections {
            limits,
            table: Mutex::default(),
            refused_per_address: AtomicU64::new(0),
            refused_global: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            last_warned: AtomicU64::new(u64::MAX),
            born: Instant::now(),
        }
    }

    /// Open connections now (a gauge).
    pub fn open(&self) -> usize {
        self.table.lock().unwrap().open
    }

    /// Take a place for a connection from `ip`, closing the longest-waiting idle connection
    /// when the server is full; the refusal otherwise (counted).
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        let mut t = self.table.lock().unwrap();
        let from = t.per_address.get(&ip).copied().unwrap_or(0);
        match admit(t.open, from, t.waiting.len(), &self.limits) {
            Admit::Accept => {}
            Admit::EvictThenAccept => {
                let oldest = t
                    .waiting
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(id, _)| *id);
                if let Some((_, kick)) = oldest.and_then(|id| t.waiting.remove(&id)) {
                    // Its guard gives the place back once the task sees this and drops the
                    // socket: the total may run over the cap by the few being closed.
                    kick.notify_one();
                }
            }
            Admit::Refuse(r) => {
                drop(t);
                let counter = match r {
                    Refusal::PerAddress => &self.refused_per_address,
                    Refusal::Global => &self.refused_global,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.warn_refused(ip, r);
                return Err(r);
            }
        }
        t.open += 1;
        *t.per_address.entry(ip).or_default() += 1;
        t.next_id += 1;
        Ok(ConnGuard {
            conns: self.clone(),
            id: t.next_id,
            ip,
            kick: Arc::new(Notify::new()),
        })
    }

    fn warn_refused(&self, ip: IpAddr, r: Refusal) {
        let now = self.born.elapsed().as_secs();
        let last = self.last_warned.load(Ordering::Relaxed);
        if (last == u64::MAX || now >= last + 10)
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                client = %ip,
                reason = r.label(),
                max_connections = self.limits.max_connections,
                max_per_address = self.limits.max_per_address,
                "http connection refused (connection limit); refusals in the next 10 s are only counted (ironseed_http_connections_refused_total)"
            );
        }
    }

    /// The Prometheus lines of the connection limits, for `/metrics`.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "# HELP ironseed_http_connections_open HTTP connections open now.\n\
             # TYPE ironseed_http_connections_open gauge\n\
             ironseed_http_connections_open {}",
            self.open()
        );
        let _ = writeln!(
            o,
            "# HELP ironseed_http_connections_refused_total HTTP connections closed at once by a connection cap.\n\
             # TYPE ironseed_http_connections_refused_total counter\n\
             ironseed_http_connections_refused_total{{reason=\"per_address\"}} {}\n\
             ironseed_http_connections_refused_total{{reason=\"global\"}} {}",
            g(&self.refused_per_address),
            g(&self.refused_global)
        );
        let _ = writeln!(
            o,
            "# HELP ironseed_http_connections_closed_total HTTP connections closed by a limit after they were accepted.\n\
             # TYPE ironseed_http_connections_closed_total counter\n\
             ironseed_http_connections_closed_total{{reason=\"evicted\"}} {}\n\
             ironseed_http_connections_closed_total{{reason=\"header_timeout\"}} {}\n\
             ironseed_http_connections_closed_total{{reason=\"idle_timeout\"}} {}",
            g(&self.evicted),
            g(&self.header_timeouts),
            g(&self.idle_timeouts)
        );
    }

    pub fn count_closed(&self, why: Closed) {
        let c = match why {
            Closed::Evicted => &self.evicted,
            Closed::HeaderTimeout => &self.header_timeouts,
            Closed::IdleTimeout => &self.idle_timeouts,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's place in [`Connections`]; given back on drop.
pub struct ConnGuard {
    conns: Arc<Connections>,
    id: u64,
    ip: IpAddr,
    kick: Arc<Notify>,
}

impl ConnGuard {
    pub fn limits(&self) -> &HttpLimits {
        &self.conns.limits
    }

    pub fn connections(&self) -> &Connections {
        &self.conns
    }

    pub fn shared(&self) -> Arc<Connections> {
        self.conns.clone()
    }

    /// The connection waits for a request head: it may be closed to make room.
    pub fn waiting(&self) {
        let mut t = self.conns.table.lock().unwrap();
        t.waiting
            .entry(self.id)
            .or_insert_with(|| (Instant::now(), self.kick.clone()));
    }

    /// The connection is answering a request: it is not closed to make room.
    pub fn busy(&self) {
        self.conns.table.lock().unwrap().waiting.remove(&self.id);
    }

    /// Resolves when the connection was chosen to make room (see [`Admit::EvictThenAccept`]).
    pub async fn evicted(&self) {
        self.kick.notified().await
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut t = self.conns.table.lock().unwrap();
        t.open -= 1;
        t.waiting.remove(&self.id);
        if let Some(n) = t.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.per_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> HttpLimits {
        HttpLimits {
            max_connections: total,
            max_per_address: per,
            ..HttpLimits::default()
        }
    }

    /// Protects the descriptors and the other clients: one address gets its share, a full
    /// server makes room by closing an idle connection, and refuses only when none is idle.
    #[test]
    fn admission_rule() {
        let l = limits(10, 3);
        assert_eq!(admit(0, 0, 0, &l), Admit::Accept);
        assert_eq!(admit(9, 2, 0, &l), Admit::Accept);
        assert_eq!(admit(5, 3, 5, &l), Admit::Refuse(Refusal::PerAddress));
        assert_eq!(admit(10, 0, 1, &l), Admit::EvictThenAccept);
        assert_eq!(admit(10, 0, 0, &l), Admit::Refuse(Refusal::Global));
        assert_eq!(admit(12, 2, 0, &l), Admit::Refuse(Refusal::Global));
        // Zero limits are taken as one: a typo must not refuse every connection.
        assert_eq!(admit(0, 0, 0, &limits(0, 0)), Admit::Accept);
    }

    #[test]
    fn the_cap_fits_under_the_descriptor_limit() {
        assert_eq!(reserved_fds(128), 384);
        assert_eq!(fit_connections(1024, 1024, 384), 640);
        assert_eq!(fit_connections(1024, 1 << 20, 384), 1024);
        assert_eq!(fit_connections(1024, 100, 384), 16);
        assert_eq!(fit_connections(1024, u64::MAX, 384), 1024);
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_waiting_and_counts_refusals() {
        let conns = Arc::new(Connections::new(limits(3, 2)));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = conns.try_open(a).unwrap();
        let a2 = conns.try_open(a).unwrap();
        assert_eq!(conns.try_open(a).err(), Some(Refusal::PerAddress));
        let b1 = conns.try_open(b).unwrap();
        assert_eq!(conns.open(), 3);
        // Full and nobody idle: refused.
        assert_eq!(conns.try_open(c).err(), Some(Refusal::Global));
        a2.waiting();
        b1.waiting();
        a1.busy();
        let c1 = conns.try_open(c).unwrap();
        // a2 waited longest: it is told to go, b1 is not.
        tokio::time::timeout(Duration::from_secs(1), a2.evicted())
            .await
            .expect("the longest-waiting connection is evicted");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b1.evicted())
                .await
                .is_err()
        );
        drop(a2);
        assert_eq!(conns.open(), 3);
        drop((a1, b1, c1));
        assert_eq!(conns.open(), 0);
        assert!(conns.table.lock().unwrap().per_address.is_empty());
        assert_eq!(conns.refused_per_address.load(Ordering::Relaxed), 1);
        assert_eq!(conns.refused_global.load(Ordering::Relaxed), 1);
    }
}
