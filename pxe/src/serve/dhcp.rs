//! The DHCP server loop: receive → decode → look up → decide → encode → send.
//!
//! All decisions live in `dhcp_policy` and `leases`; this module only does
//! I/O, logging and counting. A bad datagram is logged and the loop goes on.
//!
//! There is deliberately no ICMP "ping check" before an OFFER (RFC 2131
//! §4.4.1 makes it a SHOULD): dnsmasq's default check costs ~3 s per new
//! client, which stalls a PXE boot storm. Pool addresses are tracked here,
//! inventory addresses are static, and a client that finds its address in
//! use says so with DECLINE, which quarantines the address.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::dhcp_policy::{
    DhcpMode, DhcpPolicyConfig, NoLeases, NodeView, decide_explained, lease_effect,
};
use crate::discovered::{DiscoveredStore, Sighting};
use crate::leases::LeaseStore;
use crate::metrics::arch_bucket;
pub use crate::metrics::{ARCH_LABELS, CountersSnapshot, DhcpCounters};
use crate::net::{ReplyRouting, reply_target};
use crate::proto::dhcp::{self as codec, MacAddr, MessageType, RecvPort, ReplyKind};

/// What the server knows about a MAC; the node state machine implements it.
pub trait NodeLookup: Send + Sync {
    fn node(&self, mac: &MacAddr) -> Option<NodeView>;
}

/// A fixed table (examples, tests).
impl NodeLookup for HashMap<MacAddr, NodeView> {
    fn node(&self, mac: &MacAddr) -> Option<NodeView> {
        self.get(mac).cloned()
    }
}

/// Seconds on some monotonic-enough scale; injected so leases are testable.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// Wall-clock seconds since the Unix epoch (persisted leases survive restarts).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A bound socket and what it serves.
pub struct DhcpSocket {
    pub socket: UdpSocket,
    pub port: RecvPort,
}

/// Everything the loop needs; shared by the per-socket tasks.
pub struct DhcpContext {
    pub policy: DhcpPolicyConfig,
    pub nodes: Arc<dyn NodeLookup>,
    pub leases: Mutex<LeaseStore>,
    pub clock: Arc<dyn Clock>,
    pub routing: ReplyRouting,
    /// Where `dhcp-leases.json` is kept (full mode); `None`: in memory only.
    pub state_dir: Option<PathBuf>,
    pub counters: DhcpCounters,
    /// Where requests of MACs not in the inventory are recorded (`None`: not recorded).
    pub discovered: Option<Arc<DiscoveredStore>>,
    /// The served interface (`--interface`), recorded with each discovered machine.
    pub interface: Option<String>,
    dirty: AtomicBool,
}

/// Result of handling one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Send { bytes: Vec<u8>, to: SocketAddr },
    Nothing,
}

impl DhcpContext {
    pub fn new(policy: DhcpPolicyConfig, nodes: Arc<dyn NodeLookup>, leases: LeaseStore) -> Self {
        DhcpContext {
            policy,
            nodes,
            leases: Mutex::new(leases),
            clock: Arc::new(SystemClock),
            routing: ReplyRouting::default(),
            state_dir: None,
            counters: DhcpCounters::default(),
            discovered: None,
            interface: None,
            dirty: AtomicBool::new(false),
        }
    }

    fn leases(&self) -> MutexGuard<'_, LeaseStore> {
        // A panic while holding the lock must not take the server down with it.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One datagram in, at most one datagram out. Synchronous and socket-free,
    /// so tests can drive it directly.
    pub fn handle(&self, port: RecvPort, bytes: &[u8], src: SocketAddr) -> Outcome {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        let req = match codec::decode_request(bytes, port) {
            Ok(r) => r,
            Err(e) => {
                c.malformed.fetch_add(1, Ordering::Relaxed);
                debug!(%src, len = bytes.len(), error = %e, "dropping malformed DHCP datagram");
                return Outcome::Nothing;
            }
        };
        let node = self.nodes.node(&req.mac);
        // Every request of a MAC not in the inventory, answered or not, in every mode: memory
        // only here, saved by a timer (see `discovered`).
        if node.is_none()
            && let Some(d) = &self.discovered
        {
            d.record(
                &Sighting {
                    mac: req.mac,
                    arch: req.client_arch,
                    vendor_class: req.vendor_class.as_deref(),
                    uuid: req.client_uuid.as_deref(),
                    interface: self.interface.as_deref(),
                },
                crate::state::now_ms(),
            );
        }
        let now = self.clock.now();
        let full = self.policy.mode == DhcpMode::Full;
        // The lock is held across decide + apply so two clients cannot be
        // offered the same pool address.
        let mut store = full.then(|| self.leases());
        let (reply, why) = match &store {
            Some(s) => decide_explained(&req, node.as_ref(), &self.policy, &s.view(now)),
            None => decide_explained(&req, node.as_ref(), &self.policy, &NoLeases),
        };
        let mut applied = false;
        if let Some(s) = store.as_mut()
            && let Some(action) = lease_effect(&req, reply.as_ref(), &self.policy)
            && s.apply(action, now)
        {
            applied = true;
            self.dirty.store(true, Ordering::Relaxed);
        }
        drop(store);
        if full && req.msg_type == MessageType::Decline && !applied {
            c.declines_ignored.fetch_add(1, Ordering::Relaxed);
            // Debug: every datagram already gets its info line below; a spoofed DECLINE
            // flood shows in the counter.
            debug!(mac = %req.mac, %src, requested = ?req.requested_ip, server_id = ?req.server_id,
                  "dhcp: DECLINE ignored: not from the lease's client or not for this server");
        }
        c.by_decision[why.index()].fetch_add(1, Ordering::Relaxed);
        let arch = req.client_arch;
        let host = node.as_ref().map_or("-", |n| n.hostname.as_str());
        let Some(reply) = reply else {
            c.ignored.fetch_add(1, Ordering::Relaxed);
            info!(mac = %req.mac, arch = ?arch, ipxe = req.user_class_ipxe, msg = ?req.msg_type,
                  port = ?port, host, decision = %why, "dhcp");
            return Outcome::Nothing;
        };
        let bytes = match codec::encode_reply(&req, &reply) {
            Ok(b) => b,
            Err(e) => {
                error!(mac = %req.mac, error = %e, "cannot encode reply");
                return Outcome::Nothing;
            }
        };
        match reply.kind {
            ReplyKind::Offer => &c.offers,
            ReplyKind::Ack => &c.acks,
            ReplyKind::Nak => &c.naks,
        }
        .fetch_add(1, Ordering::Relaxed);
        c.replies_by_arch[arch_bucket(arch)].fetch_add(1, Ordering::Relaxed);
        let to = reply_target(&req, reply.kind, src, &self.routing);
        info!(mac = %req.mac, arch = ?arch, ipxe = req.user_class_ipxe, msg = ?req.msg_type,
              port = ?port, host, decision = %why, yiaddr = %reply.yiaddr,
              file = reply.boot.as_ref().map_or("-", |b| b.file.as_str()), %to, "dhcp");
        Outcome::Send { bytes, to }
    }

    /// [`Self::handle`] with panics contained: a bug triggered by one hostile
    /// datagram must not stop the server answering everybody else.
    pub fn handle_guarded(&self, port: RecvPort, bytes: &[u8], src: SocketAddr) -> Outcome {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(port, bytes, src))) {
            Ok(o) => o,
            Err(_) => {
                self.counters.panics.fetch_add(1, Ordering::Relaxed);
                error!(%src, len = bytes.len(), "panic while handling a DHCP datagram; dropped");
                Outcome::Nothing
            }
        }
    }

    /// Write the leases if they changed since the last save. Blocking (JSON +
    /// fsync): the loop calls it through `spawn_blocking` so a save of tens
    /// of thousands of leases never stalls replies.
    pub fn persist_if_dirty(&self) {
        let Some(dir) = &self.state_dir else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        // Only the bound leases are copied under the lock.
        let bound = self.leases().bound();
        if let Err(e) = LeaseStore::save_leases(&bound, dir) {
            self.dirty.store(true, Ordering::Relaxed);
            warn!(dir = %dir.display(), error = %e, "cannot save DHCP leases");
        }
    }
}

/// Serve until `shutdown` resolves; then stop receiving, save leases, return.
pub async fn run(
    sockets: Vec<DhcpSocket>,
    ctx: Arc<DhcpContext>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for s in sockets {
        let ctx = ctx.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move { serve_socket(s, &ctx, &mut stop).await });
    }
    {
        let ctx = ctx.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let c = ctx.clone();
                        let _ = tokio::task::spawn_blocking(move || c.persist_if_dirty()).await;
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        });
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(std::io::Error::other(e)),
            Ok(Ok(())) => {}
        }
    }
    let _ = tokio::task::spawn_blocking(move || ctx.persist_if_dirty()).await;
    result
}

async fn serve_socket(
    s: DhcpSocket,
    ctx: &DhcpContext,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    // Larger than any Ethernet frame: a jumbo or oversized datagram is still
    // read whole and then judged by the decoder.
    let mut buf = vec![0u8; 9000];
    loop {
        let (n, src) = tokio::select! {
            r = s.socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; keep serving.
                    debug!(error = %e, "recv error");
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        if let Outcome::Send { bytes, to } = ctx.handle_guarded(s.port, &buf[..n], src)
            && let Err(e) = s.socket.send_to(&bytes, to).await
        {
            ctx.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(%to, error = %e, "cannot send DHCP reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp_policy::PoolRange;
    use crate::leases::LeaseState;
    use crate::proto::dhcp::{Architecture, DhcpOption, MessageType, client_message, encode};
    use crate::state::NodeState;
    use std::net::Ipv4Addr;

    struct FixedClock(u64);
    impl Clock for FixedClock {
        fn now(&self) -> u64 {
            self.0
        }
    }

    fn ctx(mode: DhcpMode) -> DhcpContext {
        let mut policy = DhcpPolicyConfig::proxy(
            Ipv4Addr::new(10, 77, 1, 1),
            "10.77.1.0/24".parse().unwrap(),
            "http://10.77.1.1:8080",
        );
        policy.mode = mode;
        policy.pool = Some(PoolRange {
            start: Ipv4Addr::new(10, 77, 1, 100),
            end: Ipv4Addr::new(10, 77, 1, 101),
        });
        let mut nodes = HashMap::new();
        nodes.insert(
            MacAddr([2, 0, 0, 0, 0, 1]),
            NodeView {
                hostname: "k3s1".into(),
                inventory_ip: Some(Ipv4Addr::new(10, 77, 1, 10)),
                state: NodeState::Armed,
                firmware: Default::default(),
                efi_boot_file: None,
                secure_boot: false,
            },
        );
        let leases = LeaseStore::new(policy.pool, [Ipv4Addr::new(10, 77, 1, 10)]);
        let mut c = DhcpContext::new(policy, Arc::new(nodes), leases);
        c.clock = Arc::new(FixedClock(1000));
        c
    }

    fn discover(mac: u8, pxe: bool) -> Vec<u8> {
        let mut opts = vec![];
        if pxe {
            opts.push(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            ));
            opts.push(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
        }
        encode(&client_message(
            MacAddr([2, 0, 0, 0, 0, mac]),
            7,
            MessageType::Discover,
            opts,
        ))
        .unwrap()
    }

    const SRC: &str = "0.0.0.0:68";

    #[test]
    fn counts_and_answers() {
        let c = ctx(DhcpMode::Proxy);
        let src = SRC.parse().unwrap();
        assert!(matches!(
            c.handle(RecvPort::Dhcp, &discover(1, true), src),
            Outcome::Send { .. }
        ));
        assert_eq!(
            c.handle(RecvPort::Dhcp, &discover(1, false), src),
            Outcome::Nothing
        );
        assert_eq!(c.handle(RecvPort::Dhcp, b"garbage", src), Outcome::Nothing);
        let s = c.counters.snapshot();
        assert_eq!((s.received, s.offers, s.ignored, s.malformed), (3, 1, 1, 1));
        assert_eq!(s.replies_by_arch[0], ("bios", 1));
        let d: HashMap<_, _> = s.by_decision.into_iter().collect();
        assert_eq!(
            (d["proxy_offer"], d["not_boot_client"], d["offer"]),
            (1, 1, 0)
        );
    }

    #[test]
    fn full_mode_pool_runs_dry_then_persists() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx(DhcpMode::Full);
        c.state_dir = Some(dir.path().to_owned());
        let src = SRC.parse().unwrap();
        let offered: Vec<_> = (50..53)
            .map(
                |m| match c.handle(RecvPort::Dhcp, &discover(m, false), src) {
                    Outcome::Send { bytes, .. } => {
                        Some(codec::decode_reply(&bytes).unwrap().yiaddr())
                    }
                    Outcome::Nothing => None,
                },
            )
            .collect();
        assert_eq!(
            offered,
            vec![
                Some(Ipv4Addr::new(10, 77, 1, 100)),
                Some(Ipv4Addr::new(10, 77, 1, 101)),
                None
            ]
        );
        // REQUEST → ACK → bound lease saved.
        let req = encode(&client_message(
            MacAddr([2, 0, 0, 0, 0, 50]),
            8,
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 1, 1)),
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 77, 1, 100)),
            ],
        ))
        .unwrap();
        assert!(matches!(
            c.handle(RecvPort::Dhcp, &req, src),
            Outcome::Send { .. }
        ));
        c.persist_if_dirty();
        let saved = std::fs::read_to_string(dir.path().join(crate::leases::LEASES_FILE)).unwrap();
        assert!(
            saved.contains("02:00:00:00:00:32") && saved.contains("10.77.1.100"),
            "{saved}"
        );
    }

    /// Protects the discovered list's meaning: requests of MACs not in the inventory are
    /// recorded in every mode, answered or not; inventory MACs never are.
    #[test]
    fn unknown_clients_are_recorded_known_ones_not() {
        for mode in [DhcpMode::Proxy, DhcpMode::Full] {
            let mut c = ctx(mode);
            let d = Arc::new(DiscoveredStore::open(None).unwrap());
            c.discovered = Some(d.clone());
            c.interface = Some("eth1".into());
            let src = SRC.parse().unwrap();
            c.handle(RecvPort::Dhcp, &discover(1, true), src);
            c.handle(RecvPort::Dhcp, &discover(9, true), src);
            c.handle(RecvPort::Dhcp, &discover(9, false), src);
            let all = d.all(u64::MAX);
            assert_eq!(all.len(), 1, "{mode:?}: {all:?}");
            assert_eq!(all[0].mac, MacAddr([2, 0, 0, 0, 0, 9]));
            assert_eq!(all[0].count, 2);
            assert_eq!(all[0].arch, Some(0));
            assert_eq!(all[0].interface.as_deref(), Some("eth1"));
            assert!(
                all[0]
                    .vendor_class
                    .as_deref()
                    .unwrap()
                    .starts_with("PXEClient")
            );
        }
    }

    fn decline(mac: u8, ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
        let mut opts = vec![DhcpOption::RequestedIpAddress(ip)];
        opts.extend(server.map(DhcpOption::ServerIdentifier));
        encode(&client_message(
            MacAddr([2, 0, 0, 0, 0, mac]),
            9,
            MessageType::Decline,
            opts,
        ))
        .unwrap()
    }

    /// Protects the pool and bound clients: a DECLINE quarantines an address only when it
    /// comes from the lease's own client (chaddr) and names this server (option 54); any
    /// other is ignored and counted.
    #[test]
    fn decline_only_from_the_lease_holder_naming_this_server() {
        let c = ctx(DhcpMode::Full);
        let src = SRC.parse().unwrap();
        let ours = Ipv4Addr::new(10, 77, 1, 1);
        let ip = Ipv4Addr::new(10, 77, 1, 100);
        assert!(matches!(
            c.handle(RecvPort::Dhcp, &discover(50, false), src),
            Outcome::Send { .. }
        ));
        let req = encode(&client_message(
            MacAddr([2, 0, 0, 0, 0, 50]),
            8,
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(ours),
                DhcpOption::RequestedIpAddress(ip),
            ],
        ))
        .unwrap();
        assert!(matches!(
            c.handle(RecvPort::Dhcp, &req, src),
            Outcome::Send { .. }
        ));
        let holder = MacAddr([2, 0, 0, 0, 0, 50]);
        let state = |c: &DhcpContext| c.leases().lease_of(&holder).map(|l| l.state);
        assert_eq!(state(&c), Some(LeaseState::Bound));
        for (mac, server) in [
            (51, Some(ours)),                          // another client
            (50, None),                                // no server identifier
            (50, Some(Ipv4Addr::new(10, 77, 1, 254))), // another server's
        ] {
            assert_eq!(
                c.handle(RecvPort::Dhcp, &decline(mac, ip, server), src),
                Outcome::Nothing
            );
            assert_eq!(state(&c), Some(LeaseState::Bound), "mac {mac} {server:?}");
        }
        assert_eq!(c.counters.snapshot().declines_ignored, 3);
        // The holder naming us: quarantined, not counted as ignored.
        c.handle(RecvPort::Dhcp, &decline(50, ip, Some(ours)), src);
        assert_eq!(state(&c), None, "the address left the client");
        assert_eq!(c.counters.snapshot().declines_ignored, 3);
        match c.handle(RecvPort::Dhcp, &discover(52, false), src) {
            Outcome::Send { bytes, .. } => assert_eq!(
                codec::decode_reply(&bytes).unwrap().yiaddr(),
                Ipv4Addr::new(10, 77, 1, 101),
                "a declined address is not offered"
            ),
            Outcome::Nothing => panic!("no offer"),
        }
    }
}
