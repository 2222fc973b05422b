//! Machines that asked this pxe for DHCP or a boot script and are not in the inventory, and
//! their inspection boots.
//!
//! Recording is a pure function over a map ([`record`]); the [`DiscoveredStore`] around it keeps
//! the map in memory and writes `discovered.json` (temp file, fsync, rename; 0600 from creation)
//! only when asked: the DHCP loop marks it dirty and a timer saves it off the async workers, so a
//! flood of DHCP packets with random MACs costs memory bounded by [`CAP`] and one write every
//! few seconds, never a write per packet. Everything from the network is cut and made printable
//! before it is kept.
//!
//! Inspection: an operator arms a MAC (`pxe inspect MAC`), or `pxe serve --inspect unknown` arms
//! every unknown MAC that has no facts yet when it asks for its boot script. Arming mints an
//! inspect secret like the install secret; it dies when the facts arrive or at the end of the
//! install window.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use images::bundle::discovered::Discovered;
use images::bundle::facts::Facts;
use images::bundle::{Mac, hex, printable};
use serde::{Deserialize, Serialize};

use crate::state::Secret;

pub const DISCOVERED_FILE: &str = "discovered.json";
/// Machines kept; beyond it the one seen longest ago goes (see [`record`]).
pub const CAP: usize = 1024;
/// Longest vendor class (option 60) kept, in bytes.
pub const VENDOR_CLASS_MAX: usize = 128;
/// Longest interface name kept (IFNAMSIZ - 1).
pub const INTERFACE_MAX: usize = 15;
/// Option 97 bytes kept (type byte + 16-byte UUID is 17; RFC 4578 §2.3).
pub const UUID_MAX: usize = 32;
/// Facts kept in all, in bytes of JSON. Beyond it the facts of the machine seen longest ago go,
/// those of automatic inspections (`--inspect unknown`) before those an operator asked for.
pub const FACTS_BUDGET: usize = 16 << 20;
/// Inspections `--inspect unknown` keeps open at once. Anyone can ask for a boot script with a
/// made-up MAC; each open inspection takes facts once.
pub const AUTO_LIVE_MAX: usize = 32;

/// `pxe serve --inspect`. The variants' doc comments are the `--help` text of the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InspectMode {
    /// Inspect only MACs armed with `pxe inspect MAC`.
    #[default]
    None,
    /// Also inspect every MAC not in the inventory that has not reported facts yet.
    Unknown,
}

/// `pxe serve --after-inspect`: what the machine does once its facts are posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AfterInspect {
    /// Power off (the default: a new machine waits for its adoption).
    #[default]
    Poweroff,
    /// Reboot (it then boots whatever comes next, usually its local disk or `exit`).
    Reboot,
}

impl AfterInspect {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterInspect::Poweroff => "poweroff",
            AfterInspect::Reboot => "reboot",
        }
    }
}

/// One DHCP request of an unknown client, as the DHCP loop saw it (not yet bounded).
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    pub mac: Mac,
    pub arch: Option<u16>,
    pub vendor_class: Option<&'a str>,
    pub uuid: Option<&'a [u8]>,
    pub interface: Option<&'a str>,
}

/// What is kept per machine; the API shows [`Record::view`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub mac: Mac,
    pub arch: Option<u16>,
    pub vendor_class: Option<String>,
    pub uuid: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub count: u64,
    pub interface: Option<String>,
    #[serde(default)]
    pub facts: Option<Facts>,
    /// The live inspect secret, if armed. Never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspect_secret: Option<Secret>,
    #[serde(default)]
    pub inspect_expires_ms: u64,
    /// The inspection was asked for by the operator (`pxe inspect`), not minted by
    /// `--inspect unknown` for whoever asked with this MAC.
    #[serde(default)]
    pub operator_inspection: bool,
}

impl Record {
    fn new(mac: Mac, now_ms: u64) -> Record {
        Record {
            mac,
            arch: None,
            vendor_class: None,
            uuid: None,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            count: 0,
            interface: None,
            facts: None,
            inspect_secret: None,
            inspect_expires_ms: 0,
            operator_inspection: false,
        }
    }

    /// JSON bytes of the facts kept, counted against [`FACTS_BUDGET`].
    fn facts_bytes(&self) -> usize {
        self.facts
            .as_ref()
            .map_or(0, |f| serde_json::to_vec(f).map_or(0, |v| v.len()))
    }

    pub fn live_secret(&self, now_ms: u64) -> Option<&Secret> {
        self.inspect_secret
            .as_ref()
            .filter(|_| now_ms < self.inspect_expires_ms)
    }

    pub fn view(&self, now_ms: u64) -> Discovered {
        Discovered {
            mac: self.mac,
            arch: self.arch,
            vendor_class: self.vendor_class.clone(),
            uuid: self.uuid.clone(),
            first_seen_ms: self.first_seen_ms,
            last_seen_ms: self.last_seen_ms,
            count: self.count,
            interface: self.interface.clone(),
            inspect: self.live_secret(now_ms).is_some(),
            facts: self.facts.clone(),
        }
    }

    /// What is lost when this record goes: 0 a DHCP sighting, 1 a live inspection (the
    /// machine boots into it again), 2 facts of an automatic inspection, 3 facts an operator
    /// asked for (only a new inspection boot brings them back).
    fn worth(&self, now_ms: u64) -> u8 {
        match (&self.facts, self.operator_inspection) {
            (Some(_), true) => 3,
            (Some(_), false) => 2,
            (None, _) if self.live_secret(now_ms).is_some() => 1,
            (None, _) => 0,
        }
    }
}

/// The key of the record [`record`] evicts to make room: the least worth keeping, then the one
/// seen longest ago. A flood of made-up MACs (DHCP, or boot-script requests under `--inspect
/// unknown`) pushes out only sightings and inspections, never what real machines reported,
/// unless every kept machine has reported.
fn victim(map: &BTreeMap<Mac, Record>, now_ms: u64) -> Option<Mac> {
    map.values()
        .min_by_key(|r| (r.worth(now_ms), r.last_seen_ms))
        .map(|r| r.mac)
}

/// Make room for one more record, if the map is at `cap`.
fn make_room(map: &mut BTreeMap<Mac, Record>, cap: usize, now_ms: u64) {
    while map.len() >= cap.max(1) {
        match victim(map, now_ms) {
            Some(m) => map.remove(&m),
            None => break,
        };
    }
}

/// Drop facts, least worth keeping and seen longest ago first, until those kept and `extra`
/// more bytes fit [`FACTS_BUDGET`] (`budget` in tests).
fn fit_facts(map: &mut BTreeMap<Mac, Record>, extra: usize, budget: usize) {
    let mut total: usize = map.values().map(Record::facts_bytes).sum::<usize>() + extra;
    while total > budget {
        let Some(mac) = map
            .values()
            .filter(|r| r.facts.is_some())
            .min_by_key(|r| (r.operator_inspection, r.last_seen_ms))
            .map(|r| r.mac)
        else {
            break;
        };
        let r = map.get_mut(&mac).expect("just found");
        total = total.saturating_sub(r.facts_bytes());
        r.facts = None;
    }
}

/// Record one sighting. Pure over the map: bounded fields, at most `cap` records.
pub fn record(map: &mut BTreeMap<Mac, Record>, s: &Sighting, now_ms: u64, cap: usize) {
    if !map.contains_key(&s.mac) {
        make_room(map, cap, now_ms);
    }
    let r = map
        .entry(s.mac)
        .or_insert_with(|| Record::new(s.mac, now_ms));
    r.last_seen_ms = now_ms.max(r.last_seen_ms);
    r.count = r.count.saturating_add(1);
    // A later request without an option keeps what an earlier one said (iPXE's requests carry
    // fewer options than the firmware's).
    if s.arch.is_some() {
        r.arch = s.arch;
    }
    if let Some(v) = s.vendor_class {
        r.vendor_class = Some(printable(v, VENDOR_CLASS_MAX));
    }
    if let Some(u) = s.uuid {
        r.uuid = Some(hex(&u[..u.len().min(UUID_MAX)]));
    }
    if let Some(i) = s.interface {
        r.interface = Some(printable(i, INTERFACE_MAX));
    }
}

/// Why facts were not taken. Every case is the same 404 to the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FactsRefused {
    #[error("no live inspection for this MAC with this secret")]
    NoInspection,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    machines: Vec<Record>,
}

pub struct DiscoveredStore {
    dir: Option<PathBuf>,
    inner: Mutex<BTreeMap<Mac, Record>>,
    dirty: AtomicBool,
    /// One writer at a time, so an older snapshot never lands after a newer one.
    writer: Mutex<()>,
    cap: usize,
    facts_budget: usize,
    /// Writes of `discovered.json` since start (`ironseed_discovered_saves_total`).
    saves: AtomicU64,
}

impl DiscoveredStore {
    /// Load `DIR/discovered.json` if there is one (`None`: memory only).
    pub fn open(dir: Option<&Path>) -> std::io::Result<DiscoveredStore> {
        let mut map = BTreeMap::new();
        if let Some(d) = dir {
            let path = d.join(DISCOVERED_FILE);
            match crate::privileges::read_state_file(&path) {
                Ok(b) => {
                    let f: File = serde_json::from_slice(&b).map_err(|e| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    for r in f.machines {
                        map.insert(r.mac, r);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(DiscoveredStore {
            dir: dir.map(Path::to_path_buf),
            inner: Mutex::new(map),
            dirty: AtomicBool::new(false),
            writer: Mutex::new(()),
            cap: CAP,
            facts_budget: FACTS_BUDGET,
            saves: AtomicU64::new(0),
        })
    }

    /// A store holding at most `cap` machines (tests).
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    /// A store keeping at most `bytes` of facts (tests).
    pub fn with_facts_budget(mut self, bytes: usize) -> Self {
        self.facts_budget = bytes;
        self
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Mac, Record>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the DHCP loop for every request of an unknown MAC: memory only; saved later by
    /// [`Self::persist_if_dirty`].
    pub fn record(&self, s: &Sighting, now_ms: u64) {
        record(&mut self.map(), s, now_ms, self.cap);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Every machine, most recently seen first.
    pub fn all(&self, now_ms: u64) -> Vec<Discovered> {
        let mut v: Vec<Discovered> = self.map().values().map(|r| r.view(now_ms)).collect();
        v.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.mac.cmp(&b.mac)));
        v
    }

    /// Machines kept now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes of `discovered.json` since start.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::Relaxed)
    }

    pub fn get(&self, mac: &Mac) -> Option<Record> {
        self.map().get(mac).cloned()
    }

    /// Arm `mac` for one inspection boot with a fresh secret (a live one dies). Saved before it
    /// returns. Blocking.
    pub fn arm(&self, mac: Mac, now_ms: u64, window: Duration) -> std::io::Result<Discovered> {
        let view = {
            let mut m = self.map();
            if !m.contains_key(&mac) {
                make_room(&mut m, self.cap, now_ms);
            }
            let r = m.entry(mac).or_insert_with(|| Record::new(mac, now_ms));
            r.inspect_secret = Some(Secret::mint());
            r.inspect_expires_ms = now_ms.saturating_add(window.as_millis() as u64);
            r.operator_inspection = true;
            r.view(now_ms)
        };
        self.dirty.store(true, Ordering::Relaxed);
        self.persist_if_dirty()?;
        Ok(view)
    }

    /// The inspect secret for a boot script of unknown `mac`: its live one, or, when `auto`
    /// (`--inspect unknown`) and it has not reported facts yet, a fresh one. `None`: no
    /// inspection. An auto-minted secret is saved with the next coalesced write: lost in a
    /// crash, the machine is simply inspected again.
    pub fn boot_secret(
        &self,
        mac: Mac,
        auto: bool,
        now_ms: u64,
        window: Duration,
    ) -> Option<Secret> {
        let mut m = self.map();
        if let Some(s) = m.get(&mac).and_then(|r| r.live_secret(now_ms)) {
            return Some(s.clone());
        }
        if !auto || m.get(&mac).is_some_and(|r| r.facts.is_some()) {
            return None;
        }
        let open = m
            .values()
            .filter(|r| !r.operator_inspection && r.live_secret(now_ms).is_some())
            .count();
        if open >= AUTO_LIVE_MAX {
            tracing::warn!(%mac, open, "--inspect unknown: too many inspections open; not inspecting this one now");
            return None;
        }
        if !m.contains_key(&mac) {
            make_room(&mut m, self.cap, now_ms);
        }
        let r = m.entry(mac).or_insert_with(|| Record::new(mac, now_ms));
        let s = Secret::mint();
        r.operator_inspection = false;
        r.inspect_secret = Some(s.clone());
        r.inspect_expires_ms = now_ms.saturating_add(window.as_millis() as u64);
        drop(m);
        self.dirty.store(true, Ordering::Relaxed);
        Some(s)
    }

    /// Take the facts an inspection boot posted, with its live secret; the secret dies. Kept
    /// within [`FACTS_BUDGET`]; saved by the next coalesced write (a write per post would let
    /// anyone with made-up MACs under `--inspect unknown` make the appliance rewrite the whole
    /// file for each). A crash before it loses the facts: inspect the machine again.
    pub fn post_facts(
        &self,
        mac: &Mac,
        presented: &str,
        facts: Facts,
        now_ms: u64,
    ) -> Result<(), FactsRefused> {
        let size = serde_json::to_vec(&facts).map_or(0, |v| v.len());
        {
            let mut m = self.map();
            let ok = m
                .get(mac)
                .is_some_and(|r| r.live_secret(now_ms).is_some_and(|s| s.matches(presented)));
            if !ok {
                return Err(FactsRefused::NoInspection);
            }
            if let Some(r) = m.get_mut(mac) {
                r.facts = None;
            }
            fit_facts(&mut m, size, self.facts_budget);
            let r = m.get_mut(mac).expect("checked above");
            r.facts = Some(facts);
            r.inspect_secret = None;
            r.inspect_expires_ms = 0;
        }
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Write `discovered.json` if anything changed since the last write. Blocking (JSON +
    /// fsync): async callers use the blocking pool.
    pub fn persist_if_dirty(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            self.dirty.store(false, Ordering::Relaxed);
            return Ok(());
        };
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let file = File {
            machines: self.map().values().cloned().collect(),
        };
        let r = write_atomic(dir, &file);
        match r {
            Ok(()) => {
                self.saves.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.dirty.store(true, Ordering::Relaxed),
        }
        r
    }
}

fn write_atomic(dir: &Path, file: &File) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // tempfile creates 0600: the file holds inspect secrets.
    let mut tmp = tempfile::Builder::new()
        .prefix(".discovered-")
        .tempfile_in(dir)?;
    serde_json::to_writer(&mut tmp, file)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(DISCOVERED_FILE))
        .map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u16) -> Mac {
        Mac([2, 0, 0, 0, (n >> 8) as u8, n as u8])
    }

    fn seen(n: u16) -> Sighting<'static> {
        Sighting {
            mac: mac(n),
            arch: Some(7),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003016"),
            uuid: Some(&[0, 1, 2]),
            interface: Some("eth0"),
        }
    }

    #[test]
    fn records_first_and_last_seen_and_counts() {
        let mut m = BTreeMap::new();
        record(&mut m, &seen(1), 100, CAP);
        let ipxe = Sighting {
            arch: None,
            vendor_class: None,
            uuid: None,
            ..seen(1)
        };
        record(&mut m, &ipxe, 200, CAP);
        let r = &m[&mac(1)];
        assert_eq!((r.first_seen_ms, r.last_seen_ms, r.count), (100, 200, 2));
        assert_eq!(
            r.arch,
            Some(7),
            "a later request without option 93 keeps it"
        );
        assert_eq!(r.uuid.as_deref(), Some("000102"));
        assert_eq!(r.interface.as_deref(), Some("eth0"));
    }

    /// Protects memory: never more than the cap, the machine seen longest ago goes first.
    #[test]
    fn capped_and_oldest_evicted() {
        let mut m = BTreeMap::new();
        for n in 0..10 {
            record(&mut m, &seen(n), 1000 + n as u64, 4);
        }
        assert_eq!(m.len(), 4);
        let kept: Vec<_> = m.keys().copied().collect();
        assert_eq!(kept, vec![mac(6), mac(7), mac(8), mac(9)]);
        // Seen again: refreshed, so the next newcomer evicts another.
        record(&mut m, &seen(6), 2000, 4);
        record(&mut m, &seen(10), 2001, 4);
        assert!(m.contains_key(&mac(6)) && !m.contains_key(&mac(7)));
    }

    /// Protects what real machines reported: a flood of made-up MACs evicts only machines
    /// without facts, even when the flood arms inspections (`--inspect unknown`).
    #[test]
    fn a_flood_does_not_evict_facts() {
        let s = DiscoveredStore::open(None).unwrap().with_cap(8);
        s.record(&seen(1), 10);
        assert!(s.arm(mac(1), 10, Duration::from_secs(60)).unwrap().inspect);
        let secret = s.get(&mac(1)).unwrap().inspect_secret.unwrap();
        s.post_facts(&mac(1), secret.expose(), Facts::default(), 20)
            .unwrap();
        for n in 100..2000 {
            s.record(&seen(n), 100 + n as u64);
        }
        for n in 3000..3100 {
            assert!(
                s.boot_secret(mac(n), true, 5000, Duration::from_secs(60))
                    .is_some()
            );
        }
        let all = s.all(5000);
        assert_eq!(all.len(), 8);
        assert!(all.iter().any(|d| d.mac == mac(1) && d.facts.is_some()));
    }

    /// Protects logs and terminals: fields from the network are cut and printable.
    #[test]
    fn fields_are_bounded_and_printable() {
        let mut m = BTreeMap::new();
        let long = format!("\x1b[31mevil\n{}", "v".repeat(5000));
        let uuid = [0xffu8; 300];
        let s = Sighting {
            mac: mac(1),
            arch: Some(0),
            vendor_class: Some(&long),
            uuid: Some(&uuid),
            interface: Some("eth0\x1b]0;x\x07averyveryverylongname"),
        };
        record(&mut m, &s, 1, CAP);
        let r = &m[&mac(1)];
        let v = r.vendor_class.as_deref().unwrap();
        assert!(v.len() <= VENDOR_CLASS_MAX && !v.chars().any(char::is_control));
        assert!(v.starts_with("[31mevil"));
        assert_eq!(r.uuid.as_ref().unwrap().len(), 2 * UUID_MAX);
        let i = r.interface.as_deref().unwrap();
        assert!(i.len() <= INTERFACE_MAX && !i.chars().any(char::is_control));
    }

    /// Protects the facts route: only the live secret of an armed MAC is accepted, once.
    fn big_facts(n: usize) -> Facts {
        Facts {
            version: images::bundle::facts::FACTS_VERSION,
            missing_firmware: vec!["x".repeat(n)],
            ..Facts::default()
        }
    }

    /// Protects the appliance from `--inspect unknown` floods: made-up MACs get at most
    /// AUTO_LIVE_MAX open inspections, the facts they post stay within the budget, and the
    /// facts an operator asked for are the last to go.
    #[test]
    fn an_inspection_flood_stays_within_its_budget() {
        let s = DiscoveredStore::open(None)
            .unwrap()
            .with_facts_budget(100_000);
        let w = Duration::from_secs(600);
        s.arm(mac(9000), 0, w).unwrap();
        let op = s.get(&mac(9000)).unwrap().inspect_secret.unwrap();
        s.post_facts(&mac(9000), op.expose(), big_facts(10_000), 1)
            .unwrap();
        let minted: Vec<(Mac, Secret)> = (0..100)
            .filter_map(|i| {
                let m = mac(i);
                s.boot_secret(m, true, 2 + i as u64, w).map(|x| (m, x))
            })
            .collect();
        assert_eq!(minted.len(), AUTO_LIVE_MAX, "open auto inspections capped");
        for (i, (m, secret)) in minted.iter().enumerate() {
            s.post_facts(m, secret.expose(), big_facts(10_000), 200 + i as u64)
                .unwrap();
        }
        let m = s.map();
        let total: usize = m.values().map(Record::facts_bytes).sum();
        assert!(total <= 100_000, "{total} bytes of facts kept");
        assert!(
            m[&mac(9000)].facts.is_some(),
            "the operator's facts outlive automatic ones"
        );
        assert_eq!(
            m.values().filter(|r| r.facts.is_some()).count(),
            9,
            "the newest automatic facts are kept"
        );
    }

    #[test]
    fn facts_need_the_live_secret_once() {
        let s = DiscoveredStore::open(None).unwrap();
        let w = Duration::from_secs(60);
        assert_eq!(
            s.post_facts(&mac(1), "x", Facts::default(), 0),
            Err(FactsRefused::NoInspection)
        );
        s.arm(mac(1), 0, w).unwrap();
        let secret = s.get(&mac(1)).unwrap().inspect_secret.unwrap();
        assert_eq!(
            s.post_facts(&mac(1), "wrong", Facts::default(), 1),
            Err(FactsRefused::NoInspection)
        );
        assert_eq!(
            s.post_facts(&mac(2), secret.expose(), Facts::default(), 1),
            Err(FactsRefused::NoInspection),
            "another MAC's URL"
        );
        assert_eq!(
            s.post_facts(&mac(1), secret.expose(), Facts::default(), 60_000),
            Err(FactsRefused::NoInspection),
            "after the window"
        );
        s.post_facts(&mac(1), secret.expose(), Facts::default(), 1)
            .unwrap();
        assert_eq!(
            s.post_facts(&mac(1), secret.expose(), Facts::default(), 2),
            Err(FactsRefused::NoInspection),
            "the secret died with the facts"
        );
        assert!(!s.all(3)[0].inspect);
    }

    /// `--inspect unknown` inspects a machine until it has facts, then never again by itself.
    #[test]
    fn auto_inspection_until_facts() {
        let s = DiscoveredStore::open(None).unwrap();
        let w = Duration::from_secs(60);
        assert_eq!(s.boot_secret(mac(1), false, 0, w), None);
        let a = s.boot_secret(mac(1), true, 0, w).unwrap();
        let b = s.boot_secret(mac(1), true, 1, w).unwrap();
        assert_eq!(a, b, "a reboot mid-inspection keeps the secret");
        s.post_facts(&mac(1), a.expose(), Facts::default(), 2)
            .unwrap();
        assert_eq!(s.boot_secret(mac(1), true, 3, w), None);
        s.arm(mac(1), 4, w).unwrap();
        assert!(
            s.boot_secret(mac(1), false, 5, w).is_some(),
            "pxe inspect re-arms"
        );
    }

    /// Protects the disk and the secrets: nothing is written per sighting, only when asked,
    /// and the file is owner-only; a restart reads it back.
    #[test]
    fn saved_coalesced_owner_only_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = DiscoveredStore::open(Some(dir.path())).unwrap();
        for n in 0..100 {
            s.record(&seen(n), n as u64);
        }
        let path = dir.path().join(DISCOVERED_FILE);
        assert!(!path.exists(), "recording alone writes nothing");
        s.persist_if_dirty().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.persist_if_dirty().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified,
            "nothing changed: no write"
        );
        let again = DiscoveredStore::open(Some(dir.path())).unwrap();
        assert_eq!(again.all(0).len(), 100);
    }
}
