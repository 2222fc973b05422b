//! Address leases for full mode (RFC 2131 §4.3): the dynamic pool only.
//!
//! Static leases (inventory MACs at inventory IPs) are not stored here: the
//! policy answers them from the node table, and the store only keeps those
//! addresses out of the pool (`reserved`). Pure: every method takes `now` in
//! seconds (an injected clock), nothing touches the disk except [`LeaseStore::save`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dhcp_policy::{LeaseAction, LeaseView, PoolRange};
use crate::proto::dhcp::MacAddr;

/// File name of the persisted leases under the state dir.
pub const LEASES_FILE: &str = "dhcp-leases.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Offered, waiting for the client's REQUEST.
    Offered,
    Bound,
    /// DECLINEd by a client (someone else uses it): quarantined until expiry.
    Declined,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Seconds since the epoch of the injected clock.
    pub expires: u64,
    pub state: LeaseState,
}

#[derive(Clone, Debug)]
pub struct LeaseStore {
    pool: Option<PoolRange>,
    reserved: HashSet<Ipv4Addr>,
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    /// Next address to try (iterative allocation, like Kea's default): keeps
    /// allocation O(1) amortised during a boot storm instead of a scan from
    /// the pool start for every client.
    cursor: u32,
    /// How long an offered address is held for its client.
    pub offer_hold_secs: u64,
    /// How long a DECLINEd address stays out of the pool.
    pub decline_secs: u64,
}

impl LeaseStore {
    /// `reserved`: addresses the pool must never hand out (inventory IPs, the server's own).
    pub fn new(pool: Option<PoolRange>, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        LeaseStore {
            pool,
            reserved: reserved.into_iter().collect(),
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            cursor: pool.map_or(0, |p| u32::from(p.start)),
            offer_hold_secs: 60,
            decline_secs: 600,
        }
    }

    /// A read-only view at time `now` for the policy.
    pub fn view(&self, now: u64) -> LeaseSnapshot<'_> {
        LeaseSnapshot { store: self, now }
    }

    pub fn lease_of(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac).and_then(|ip| self.by_ip.get(ip))
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool.is_some_and(|p| p.contains(ip)) && !self.reserved.contains(&ip)
    }

    /// Free for `mac` at `now`: no live lease by someone else.
    fn free_for(&self, ip: Ipv4Addr, mac: &MacAddr, now: u64) -> bool {
        if !self.in_pool(ip) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(l) if l.state == LeaseState::Declined => l.expires <= now,
            Some(l) => l.mac == *mac || l.expires <= now,
        }
    }

    fn offer_for(&self, mac: &MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        // RFC 2131 §4.3.1: the client's current or previous address first,
        // then the address it asks for, then any free one.
        if let Some(&ip) = self.by_mac.get(mac)
            && self.free_for(ip, mac, now)
        {
            return Some(ip);
        }
        if let Some(ip) = requested
            && self.free_for(ip, mac, now)
        {
            return Some(ip);
        }
        let pool = self.pool?;
        let (start, end) = (u32::from(pool.start), u32::from(pool.end));
        let cursor = self.cursor.clamp(start, end);
        (cursor..=end)
            .chain(start..cursor)
            .map(Ipv4Addr::from)
            .find(|&ip| self.free_for(ip, mac, now))
    }

    fn may_ack(&self, mac: &MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        self.free_for(ip, mac, now)
    }

    /// Record the outcome of an exchange (from [`crate::dhcp_policy::lease_effect`]).
    /// Returns whether anything worth persisting changed.
    pub fn apply(&mut self, action: LeaseAction, now: u64) -> bool {
        match action {
            LeaseAction::Offer { mac, ip } => {
                if !self.in_pool(ip) {
                    return false; // a static lease: nothing to hold
                }
                // Keep a bound lease bound (a client re-DISCOVERing its own address).
                let state = match self.by_ip.get(&ip) {
                    Some(l) if l.mac == mac && l.state == LeaseState::Bound && l.expires > now => {
                        return false;
                    }
                    _ => LeaseState::Offered,
                };
                self.insert(Lease {
                    mac,
                    ip,
                    expires: now + self.offer_hold_secs,
                    state,
                });
                self.cursor = u32::from(ip).wrapping_add(1);
                false
            }
            LeaseAction::Bind { mac, ip, secs } => {
                if !self.in_pool(ip) {
                    return false;
                }
                self.insert(Lease {
                    mac,
                    ip,
                    expires: now + u64::from(secs),
                    state: LeaseState::Bound,
                });
                true
            }
            LeaseAction::Release { mac, ip } => {
                // §4.3.4: only the owner can release. The entry is expired
                // rather than removed: the client gets the same address next
                // time if still free (§4.3.1), and memory stays bounded by the
                // pool size even when spoofed MACs DISCOVER and RELEASE.
                match self.by_ip.get_mut(&ip) {
                    Some(l) if l.mac == mac && l.expires > now => {
                        l.expires = now;
                        true
                    }
                    _ => false,
                }
            }
            LeaseAction::Decline { mac, ip } => {
                // Only the client holding a live lease on the address may decline it:
                // otherwise any host could quarantine the whole pool, or take a bound
                // address away from the node using it.
                let own = self.by_ip.get(&ip).is_some_and(|l| {
                    l.mac == mac && l.state != LeaseState::Declined && l.expires > now
                });
                if !self.in_pool(ip) || !own {
                    return false;
                }
                self.by_mac.remove(&mac);
                self.by_ip.insert(
                    ip,
                    Lease {
                        mac,
                        ip,
                        expires: now + self.decline_secs,
                        state: LeaseState::Declined,
                    },
                );
                true
            }
            LeaseAction::Forget { mac } => {
                if let Some(&ip) = self.by_mac.get(&mac)
                    && self
                        .by_ip
                        .get(&ip)
                        .is_some_and(|l| l.state == LeaseState::Offered)
                {
                    self.by_ip.remove(&ip);
                    self.by_mac.remove(&mac);
                }
                false
            }
        }
    }

    fn insert(&mut self, lease: Lease) {
        // One address per MAC: moving to a new address frees the old one.
        if let Some(old) = self.by_mac.insert(lease.mac, lease.ip)
            && old != lease.ip
            && self.by_ip.get(&old).is_some_and(|l| l.mac == lease.mac)
        {
            self.by_ip.remove(&old);
        }
        // The address may have belonged to another (expired) client.
        if let Some(prev) = self.by_ip.insert(lease.ip, lease)
            && prev.mac != lease.mac
            && self.by_mac.get(&prev.mac) == Some(&lease.ip)
        {
            self.by_mac.remove(&prev.mac);
        }
    }

    /// Drop expired offers and declines (bound leases stay as memory of the
    /// MAC's last address until someone else takes it).
    pub fn purge(&mut self, now: u64) {
        let dead: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|l| l.state != LeaseState::Bound && l.expires <= now)
            .map(|l| l.ip)
            .collect();
        for ip in dead {
            if let Some(l) = self.by_ip.remove(&ip)
                && self.by_mac.get(&l.mac) == Some(&ip)
            {
                self.by_mac.remove(&l.mac);
            }
        }
    }

    /// Bound leases, for persistence.
    pub fn bound(&self) -> Vec<Lease> {
        self.by_ip
            .values()
            .filter(|l| l.state == LeaseState::Bound)
            .copied()
            .collect()
    }

    /// Atomic write: temp file in the same dir, fsync, rename over the old file.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        Self::save_leases(&self.bound(), dir)
    }

    /// [`Self::save`] for a list taken earlier (so the store's lock is not
    /// held while writing).
    pub fn save_leases(leases: &[Lease], dir: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(leases).map_err(std::io::Error::other)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&body)?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(LEASES_FILE)).map_err(|e| e.error)?;
        Ok(())
    }

    /// Load bound leases saved by [`Self::save`]; a missing file is an empty store.
    /// Leases that no longer fit the pool (config changed) are dropped.
    pub fn load(&mut self, dir: &Path) -> std::io::Result<usize> {
        let body = match crate::privileges::read_state_file(&dir.join(LEASES_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let leases: Vec<Lease> = serde_json::from_slice(&body).map_err(std::io::Error::other)?;
        let mut n = 0;
        for l in leases {
            if self.in_pool(l.ip) && l.state == LeaseState::Bound {
                self.insert(l);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// [`LeaseView`] of a store at one instant.
pub struct LeaseSnapshot<'a> {
    store: &'a LeaseStore,
    now: u64,
}

impl LeaseView for LeaseSnapshot<'_> {
    fn offer_for(&self, mac: &MacAddr, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.store.offer_for(mac, requested, self.now)
    }
    fn may_ack(&self, mac: &MacAddr, ip: Ipv4Addr) -> bool {
        self.store.may_ack(mac, ip, self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 1, last)
    }

    /// Pool .100-.102 with .101 reserved for an inventory node.
    fn store() -> LeaseStore {
        LeaseStore::new(
            Some(PoolRange {
                start: ip(100),
                end: ip(102),
            }),
            [ip(101)],
        )
    }

    fn offer(s: &mut LeaseStore, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let got = s.view(now).offer_for(&mac, None)?;
        s.apply(LeaseAction::Offer { mac, ip: got }, now);
        Some(got)
    }

    fn bind(s: &mut LeaseStore, mac: MacAddr, addr: Ipv4Addr, now: u64) -> bool {
        if !s.view(now).may_ack(&mac, addr) {
            return false;
        }
        s.apply(
            LeaseAction::Bind {
                mac,
                ip: addr,
                secs: 100,
            },
            now,
        )
    }

    #[test]
    fn allocation_skips_reserved_and_exhausts() {
        let mut s = store();
        assert_eq!(offer(&mut s, A, 0), Some(ip(100)));
        assert_eq!(offer(&mut s, B, 0), Some(ip(102)));
        assert_eq!(offer(&mut s, C, 0), None, "pool of 2 usable addresses");
        // Same client asking again gets the same address (no double allocation).
        assert_eq!(offer(&mut s, A, 1), Some(ip(100)));
        // Offers expire after the hold time and the address is reused.
        assert_eq!(offer(&mut s, C, 61), Some(ip(102)));
    }

    #[test]
    fn request_and_renew() {
        let mut s = store();
        let a = offer(&mut s, A, 0).unwrap();
        assert!(bind(&mut s, A, a, 1));
        assert_eq!(s.lease_of(&A).unwrap().state, LeaseState::Bound);
        // B may not take A's bound address while it is live…
        assert!(!s.view(50).may_ack(&B, a));
        assert_ne!(s.view(50).offer_for(&B, Some(a)), Some(a));
        // …renewal extends it…
        assert!(bind(&mut s, A, a, 90));
        assert!(!s.view(150).may_ack(&B, a));
        // …and after expiry it is free again.
        assert!(s.view(191).may_ack(&B, a));
        // Reserved and out-of-pool addresses are never acked.
        assert!(!s.view(0).may_ack(&C, ip(101)));
        assert!(!s.view(0).may_ack(&C, ip(50)));
    }

    #[test]
    fn requested_address_is_honoured_when_free() {
        let s = store();
        assert_eq!(s.view(0).offer_for(&A, Some(ip(102))), Some(ip(102)));
        assert_eq!(s.view(0).offer_for(&A, Some(ip(101))), Some(ip(100)));
    }

    #[test]
    fn release_only_by_owner() {
        let mut s = store();
        let a = offer(&mut s, A, 0).unwrap();
        bind(&mut s, A, a, 0);
        assert!(!s.apply(LeaseAction::Release { mac: B, ip: a }, 1));
        assert!(!s.view(1).may_ack(&B, a));
        assert!(s.apply(LeaseAction::Release { mac: A, ip: a }, 1));
        assert!(s.view(1).may_ack(&B, a));
        // A comes back and is offered its old address.
        assert_eq!(s.view(2).offer_for(&A, None), Some(a));
    }

    #[test]
    fn decline_quarantines() {
        let mut s = store();
        let a = offer(&mut s, A, 0).unwrap();
        bind(&mut s, A, a, 0);
        assert!(s.apply(LeaseAction::Decline { mac: A, ip: a }, 5));
        assert!(!s.view(6).may_ack(&A, a));
        assert_ne!(s.view(6).offer_for(&A, None), Some(a));
        assert!(s.view(5 + 600).may_ack(&B, a));
    }

    /// Protects the pool and bound nodes: a DECLINE from another client, for a free
    /// address, or for a lease already over quarantines nothing and leaves the lease alone.
    #[test]
    fn only_the_lease_holder_may_decline() {
        let mut s = store();
        let a = offer(&mut s, A, 0).unwrap();
        bind(&mut s, A, a, 0);
        assert!(!s.apply(LeaseAction::Decline { mac: B, ip: a }, 5));
        assert_eq!(s.lease_of(&A).unwrap().state, LeaseState::Bound);
        assert!(s.view(6).may_ack(&A, a));
        // A free pool address nobody holds.
        let free = ip(102);
        assert!(!s.apply(LeaseAction::Decline { mac: B, ip: free }, 5));
        assert!(s.view(6).offer_for(&B, Some(free)) == Some(free));
        // A's lease after it expired.
        let expires = s.lease_of(&A).unwrap().expires;
        assert!(!s.apply(LeaseAction::Decline { mac: A, ip: a }, expires));
        // An offered (not yet bound) address may be declined by its client.
        let b = offer(&mut s, B, 10).unwrap();
        assert!(s.apply(LeaseAction::Decline { mac: B, ip: b }, 11));
    }

    #[test]
    fn forget_drops_only_offers() {
        let mut s = store();
        let a = offer(&mut s, A, 0).unwrap();
        s.apply(LeaseAction::Forget { mac: A }, 1);
        assert!(s.lease_of(&A).is_none());
        let b = offer(&mut s, B, 1).unwrap();
        bind(&mut s, B, b, 1);
        s.apply(LeaseAction::Forget { mac: B }, 2);
        assert_eq!(s.lease_of(&B).unwrap().state, LeaseState::Bound);
        let _ = a;
    }

    #[test]
    fn moving_to_a_new_address_frees_the_old() {
        let mut s = store();
        bind(&mut s, A, ip(100), 0);
        bind(&mut s, A, ip(102), 1);
        assert_eq!(s.len(), 1);
        assert!(s.view(1).may_ack(&B, ip(100)));
    }

    #[test]
    fn static_addresses_are_not_stored() {
        let mut s = store();
        assert!(!s.apply(
            LeaseAction::Bind {
                mac: A,
                ip: ip(101),
                secs: 10
            },
            0
        ));
        assert!(!s.apply(LeaseAction::Offer { mac: A, ip: ip(10) }, 0));
        assert!(s.is_empty());
    }

    #[test]
    fn purge_keeps_bound() {
        let mut s = store();
        offer(&mut s, A, 0);
        let b = offer(&mut s, B, 0).unwrap();
        bind(&mut s, B, b, 0);
        s.purge(1000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lease_of(&B).map(|l| l.ip), Some(b));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store();
        assert_eq!(s.load(dir.path()).unwrap(), 0, "missing file is empty");
        let a = offer(&mut s, A, 0).unwrap();
        bind(&mut s, A, a, 0);
        offer(&mut s, B, 0);
        s.save(dir.path()).unwrap();
        let mut t = store();
        assert_eq!(t.load(dir.path()).unwrap(), 1, "only bound leases persist");
        assert_eq!(t.lease_of(&A).unwrap().ip, a);
        assert!(!t.view(10).may_ack(&B, a));
        // A pool change drops leases that no longer fit.
        let mut u = LeaseStore::new(
            Some(PoolRange {
                start: ip(150),
                end: ip(160),
            }),
            [],
        );
        assert_eq!(u.load(dir.path()).unwrap(), 0);
        // Garbage is an error, not an empty store.
        std::fs::write(dir.path().join(LEASES_FILE), b"{not json").unwrap();
        assert!(t.load(dir.path()).is_err());
    }

    #[test]
    fn spoofed_macs_cannot_grow_the_store() {
        let mut s = store();
        for i in 0..1000u32 {
            let mut m = [2, 1, 0, 0, 0, 0];
            m[2..].copy_from_slice(&i.to_be_bytes());
            let mac = MacAddr(m);
            if let Some(a) = offer(&mut s, mac, u64::from(i)) {
                s.apply(LeaseAction::Release { mac, ip: a }, u64::from(i));
            }
        }
        assert!(
            s.len() <= 2 && s.by_mac.len() <= 2,
            "{} / {}",
            s.len(),
            s.by_mac.len()
        );
    }

    #[test]
    fn big_pool_allocation_is_sequential() {
        let mut s = LeaseStore::new(
            Some(PoolRange {
                start: Ipv4Addr::new(10, 77, 1, 0),
                end: Ipv4Addr::new(10, 77, 200, 255),
            }),
            [],
        );
        for i in 0..20_000u32 {
            let mut m = [2, 0, 0, 0, 0, 0];
            m[2..].copy_from_slice(&i.to_be_bytes());
            let got = offer(&mut s, MacAddr(m), 0).unwrap();
            assert_eq!(u32::from(got), u32::from(Ipv4Addr::new(10, 77, 1, 0)) + i);
        }
    }
}
