//! Per-node install state: a pure transition function and a store that persists every change
//! atomically (temp file, fsync, rename, fsync of the folder), so a crash or `kill -9` leaves
//! either the old or the new state on disk, never a mix, and a restart resumes from it.
//!
//! Arming mints the node's install secret (see `images::bundle`): it lives only here, in the
//! owner-only state file, and dies at `installed`, `failed`, disarm, re-arm or the end of the
//! install window.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use images::bundle::{InstallEvent, NOTE_MAX, ReportEvent, printable};
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "nodes.json";
/// Lifecycle entries (arm, booting, installed, ...) kept per node; older ones go first.
const LIFECYCLE_CAP: usize = 200;
/// Notes kept per node, apart from the lifecycle entries: a chatty or hostile node can push out
/// its own older notes, never the record of who armed it and what happened since.
const NOTES_CAP: usize = 50;
/// Power entries kept per node, a class of their own: a provision loop retried all night pushes
/// out only its own older power entries.
const POWER_CAP: usize = 50;
/// Bounds of a power record's fields (the operator API checks them; `apply` re-bounds).
pub const POWER_ACTIONS: &[&str] = &["status", "on", "off", "cycle", "pxe-once"];
pub const POWER_RESULT_MAX: usize = 200;
pub const POWER_BY_MAX: usize = 64;
/// How long an install secret lives unless `pxe serve --install-window` says otherwise.
pub const DEFAULT_INSTALL_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// A node's install lifecycle; [`apply`] moves it, the DHCP and boot policies read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Armed,
    Booting,
    Installing,
    Installed,
    Booted,
    Failed,
    /// Not armed for install (served with `--no-arm`): boots its local disk.
    Disarmed,
}

impl NodeState {
    /// Whether a PXE boot of this node gets the installer. Booting and Installing stay armed:
    /// a node that PXE-boots again mid-install was interrupted, and its disk is not bootable
    /// (the installer writes the first MiB last).
    pub fn install_armed(self) -> bool {
        matches!(
            self,
            NodeState::Armed | NodeState::Booting | NodeState::Installing
        )
    }
}

/// An install secret. Never printed: `Debug` is redacted, and the API shows only whether a node
/// has one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// 256 random bits as hex.
    pub fn mint() -> Secret {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        Secret(images::bundle::hex(&bytes))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a request carried.
    pub fn matches(&self, presented: &str) -> bool {
        images::api_token::secrets_equal(&self.0, presented)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl TimelineEntry {
    /// 0: lifecycle, 1: note, 2: power; each class is capped on its own.
    fn class(&self) -> u8 {
        match self.event.as_str() {
            "note" => 1,
            "power" => 2,
            _ => 0,
        }
    }
}

/// The last power action builder reported for a node (`builder power`, `provision`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPower {
    pub action: String,
    pub result: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hostname: String,
    pub state: NodeState,
    #[serde(default)]
    pub bytes_written: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub installed_sha256: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Completed installs since this pxe first saw the node; install-once means this only
    /// grows after an explicit re-arm.
    #[serde(default)]
    pub installs: u32,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    /// The live install secret, while the node is armed and inside its install window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_secret: Option<Secret>,
    /// When the install secret dies (Unix ms).
    #[serde(default)]
    pub install_expires_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_power: Option<LastPower>,
}

impl NodeRecord {
    /// A node this pxe has never seen: disarmed. Arming is always an explicit act.
    pub fn new(hostname: &str, now_ms: u64) -> NodeRecord {
        NodeRecord {
            hostname: hostname.into(),
            state: NodeState::Disarmed,
            bytes_written: 0,
            bytes_total: 0,
            installed_sha256: None,
            last_error: None,
            installs: 0,
            timeline: vec![TimelineEntry {
                at_ms: now_ms,
                event: "disarmed".into(),
                detail: "first seen in a bundle".into(),
            }],
            install_secret: None,
            install_expires_ms: 0,
            last_power: None,
        }
    }

    /// The install secret, if it is alive at `now_ms` for a node armed for install.
    pub fn live_secret(&self, now_ms: u64) -> Option<&Secret> {
        self.install_secret
            .as_ref()
            .filter(|_| self.state.install_armed() && now_ms < self.install_expires_ms)
    }

    /// Whether `presented` is this node's live install secret.
    pub fn secret_ok(&self, presented: &str, now_ms: u64) -> bool {
        self.live_secret(now_ms)
            .is_some_and(|s| s.matches(presented))
    }
}

/// What happens to a node: from the operator (arm, disarm), the boot server (script served,
/// the install window ending), the installer and the first boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Armed by the operator with a fresh secret that lives until `expires_ms`.
    Arm {
        secret: Secret,
        expires_ms: u64,
    },
    Disarm,
    ScriptServed {
        mac: String,
    },
    Install(InstallEvent),
    Report(ReportEvent),
    /// The install window ended before the install did.
    Expire,
    /// builder powered the machine (or tried to): recorded, never a state change.
    Power {
        action: String,
        result: String,
        by: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("{event} is not valid for a node in state {state:?}")]
    Invalid { event: String, state: NodeState },
    #[error("unknown node {0}")]
    UnknownNode(String),
}

pub fn name(ev: &Event) -> &'static str {
    match ev {
        Event::Arm { .. } => "arm",
        Event::Disarm => "disarm",
        Event::ScriptServed { .. } => "script-served",
        Event::Install(InstallEvent::Installing { .. }) => "installing",
        Event::Install(InstallEvent::Progress { .. }) => "progress",
        Event::Install(InstallEvent::Installed { .. }) => "installed",
        Event::Install(InstallEvent::Failed { .. }) => "failed",
        Event::Install(InstallEvent::Note { .. }) => "note",
        Event::Report(ReportEvent::Booted) => "booted",
        Event::Report(ReportEvent::Note { .. }) => "note",
        Event::Report(ReportEvent::SecureBoot { .. }) => "secure-boot",
        Event::Expire => "install-window-expired",
        Event::Power { .. } => "power",
    }
}

/// Keep the timeline bounded: notes only ever push out older notes, power entries older power
/// entries, lifecycle entries only older lifecycle entries.
fn trim_timeline(t: &mut Vec<TimelineEntry>) {
    for (class, cap) in [(1, NOTES_CAP), (2, POWER_CAP), (0, LIFECYCLE_CAP)] {
        let mut excess = t
            .iter()
            .filter(|e| e.class() == class)
            .count()
            .saturating_sub(cap);
        if excess > 0 {
            t.retain(|e| {
                if excess > 0 && e.class() == class {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// The state machine: armed → booting → installing → installed → booted, plus failed.
/// Pure; `Err` leaves the record as it was.
/// How the timeline shows a reported Secure Boot state.
pub fn secure_boot_word(s: Option<bool>) -> &'static str {
    match s {
        Some(true) => "on",
        Some(false) => "off",
        None => "unknown",
    }
}

/// The warning note for a node whose plan says `secure_boot` but that reports it off (the
/// firmware setting was lost: a CMOS reset, a board swap). `None` when nothing is wrong.
pub fn secure_boot_mismatch(planned: bool, reported: Option<bool>) -> Option<Event> {
    (planned && reported == Some(false)).then(|| {
        Event::Report(ReportEvent::Note {
            kind: "secure-boot-off".into(),
            detail: "the profile says secure_boot: true but the node reports Secure Boot off; \
                     turn it back on in the firmware setup"
                .into(),
        })
    })
}

pub fn apply(rec: &NodeRecord, ev: &Event, now_ms: u64) -> Result<NodeRecord, TransitionError> {
    use NodeState::*;
    let mut r = rec.clone();
    let invalid = || TransitionError::Invalid {
        event: name(ev).into(),
        state: rec.state,
    };
    let mut detail = String::new();
    match ev {
        Event::Arm { secret, expires_ms } => {
            r.state = Armed;
            r.bytes_written = 0;
            r.bytes_total = 0;
            r.last_error = None;
            r.install_secret = Some(secret.clone());
            r.install_expires_ms = *expires_ms;
        }
        Event::Disarm => {
            r.state = Disarmed;
            r.install_secret = None;
        }
        Event::ScriptServed { mac } => {
            if rec.live_secret(now_ms).is_none() {
                return Err(invalid());
            }
            if rec.state != Armed {
                // Booting or Installing: the script was served before. Anyone can fetch a boot
                // script (firmware has no credential), so a repeat changes nothing: it must not
                // pull an install in progress back to booting (its reports would be refused and
                // the node reinstall at every boot), nor write the state file, nor push the
                // arm entry out of the timeline. A real reboot mid-install reports `installing`
                // again, which Installing accepts.
                return Ok(r);
            }
            detail = mac.clone();
            r.state = Booting;
        }
        Event::Install(InstallEvent::Installing {
            disk,
            total,
            secure_boot,
        }) => {
            if !matches!(rec.state, Booting | Installing) {
                return Err(invalid());
            }
            r.state = Installing;
            r.bytes_written = 0;
            r.bytes_total = *total;
            detail = printable(disk, NOTE_MAX);
            if let Some(sb) = secure_boot {
                detail.push_str(&format!(" (secure boot {})", secure_boot_word(Some(*sb))));
            }
        }
        Event::Install(InstallEvent::Progress { written, total }) => {
            if rec.state != Installing {
                return Err(invalid());
            }
            r.bytes_written = *written;
            if *total > 0 {
                r.bytes_total = *total;
            }
            // Progress updates the counters only; a timeline entry per report would drown it.
            return Ok(r);
        }
        Event::Install(InstallEvent::Installed { sha256 }) => {
            if rec.state == Installed && rec.installed_sha256.as_deref() == Some(sha256) {
                return Ok(r); // a retried report
            }
            if rec.state != Installing {
                return Err(invalid());
            }
            r.state = Installed;
            r.installed_sha256 = Some(printable(sha256, 64));
            r.installs += 1;
            r.bytes_written = r.bytes_written.max(r.bytes_total);
            r.install_secret = None;
            detail = printable(sha256, 64);
        }
        Event::Install(InstallEvent::Failed { reason }) => {
            if !matches!(rec.state, Booting | Installing) {
                return Err(invalid());
            }
            let reason = printable(reason, NOTE_MAX);
            r.state = Failed;
            r.last_error = Some(reason.clone());
            r.install_secret = None;
            detail = reason;
        }
        Event::Install(InstallEvent::Note { kind, detail: d }) => {
            // Only from a node being installed (the route also wants its live secret); a
            // note, so it can only push out older notes (NOTES_CAP).
            if !matches!(rec.state, Booting | Installing) {
                return Err(invalid());
            }
            let kind = printable(kind, 64);
            detail = printable(&format!("{kind}: {d}"), NOTE_MAX);
        }
        Event::Report(ReportEvent::Booted) => {
            if !matches!(rec.state, Installed | Booted) {
                return Err(invalid());
            }
            r.state = Booted;
        }
        Event::Report(ReportEvent::SecureBoot { secure_boot }) => {
            detail = secure_boot_word(*secure_boot).to_string();
        }
        Event::Report(ReportEvent::Note { kind, detail: d }) => {
            let kind = printable(kind, 64);
            detail = if d.is_empty() {
                kind
            } else {
                printable(&format!("{kind}: {d}"), NOTE_MAX)
            };
        }
        Event::Expire => {
            if rec.install_secret.is_none() || now_ms < rec.install_expires_ms {
                return Ok(r);
            }
            r.install_secret = None;
            match rec.state {
                Armed => r.state = Disarmed,
                Booting | Installing => {
                    r.state = Failed;
                    r.last_error =
                        Some("install window expired before the install finished".into());
                }
                _ => {}
            }
            detail = "re-arm to install".into();
        }
        Event::Power { action, result, by } => {
            let (action, result) = (printable(action, 16), printable(result, POWER_RESULT_MAX));
            detail = format!("{action}: {result} (by {})", printable(by, POWER_BY_MAX));
            r.last_power = Some(LastPower {
                action,
                result,
                at_ms: now_ms,
            });
        }
    }
    r.timeline.push(TimelineEntry {
        at_ms: now_ms,
        event: name(ev).to_string(),
        detail,
    });
    trim_timeline(&mut r.timeline);
    Ok(r)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Serialize, Deserialize, Default, Clone)]
struct StateFile {
    /// sha256 of the plan.json these records were last reconciled with.
    bundle_id: String,
    /// Every node this pxe has ever served, also those no longer in the bundle: a node removed
    /// and added back comes back in the state it had (an installed node is not re-armed).
    nodes: BTreeMap<String, NodeRecord>,
}

/// How new nodes are treated when a bundle is (re)loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewNodes {
    /// First seen → disarmed (the default: arming is an explicit `pxe arm`).
    Disarmed,
    /// First seen → armed (`pxe serve --arm-new`, for the very first deployment only).
    Armed,
}

/// What a reconciliation did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub new: Vec<String>,
    pub armed: Vec<String>,
    /// Known from before, absent from this bundle: kept, not served.
    pub kept_absent: Vec<String>,
    pub returned: Vec<String>,
}

/// What changed in the store, for live views (the dashboard's event stream).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// One node's record.
    Node(String),
    /// The set of nodes (a bundle was loaded): every view is stale.
    All,
}

/// Changes kept for subscribers that have not read them yet. One shared ring: a subscriber more
/// than this far behind gets `Lagged` and is dropped by its reader (`events`), never buffered.
pub const CHANGES_CAP: usize = 1024;

pub struct Store {
    dir: Option<PathBuf>,
    inner: Mutex<StateFile>,
    /// Hostnames of the bundle being served: the only records the API and DHCP see.
    current: Mutex<BTreeSet<String>>,
    /// One writer at a time; readers (`/boot`, DHCP) never wait for a disk write.
    writer: Mutex<()>,
    install_window: Duration,
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Store {
    /// Load the saved state (if any) and reconcile it with the bundle's nodes (see
    /// [`Store::reconcile`]).
    pub fn open(
        dir: Option<&Path>,
        bundle_id: &str,
        hostnames: &[&str],
        new_nodes: NewNodes,
        install_window: Duration,
    ) -> std::io::Result<(Store, Reconciled)> {
        let file = match dir {
            Some(d) => match crate::privileges::read_state_file(&d.join(STATE_FILE)) {
                Ok(b) => serde_json::from_slice::<StateFile>(&b).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", d.join(STATE_FILE).display()),
                    )
                })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
                Err(e) => return Err(e),
            },
            None => StateFile::default(),
        };
        let store = Store {
            dir: dir.map(Path::to_path_buf),
            inner: Mutex::new(file),
            current: Mutex::new(BTreeSet::new()),
            writer: Mutex::new(()),
            install_window,
            changes: tokio::sync::broadcast::channel(CHANGES_CAP).0,
        };
        let r = store.reconcile(bundle_id, hostnames, new_nodes)?;
        Ok((store, r))
    }

    pub fn install_window(&self) -> Duration {
        self.install_window
    }

    /// Every change from now on, after it is on disk and visible (see [`CHANGES_CAP`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A bundle is being served: nodes known from before keep their state (install-once
    /// survives restarts, re-renders and a node's absence from a bundle), nodes never seen are
    /// disarmed (or armed with [`NewNodes::Armed`]). Persisted before it is visible.
    pub fn reconcile(
        &self,
        bundle_id: &str,
        hostnames: &[&str],
        new_nodes: NewNodes,
    ) -> std::io::Result<Reconciled> {
        let _w = self.writer.lock().unwrap();
        let mut next = self.inner.lock().unwrap().clone();
        let now = now_ms();
        let mut out = Reconciled::default();
        let previous = self.current.lock().unwrap().clone();
        for h in hostnames {
            if next.nodes.contains_key(*h) {
                if !previous.is_empty() && !previous.contains(*h) {
                    out.returned.push(h.to_string());
                }
                continue;
            }
            let mut rec = NodeRecord::new(h, now);
            if new_nodes == NewNodes::Armed {
                rec = apply(&rec, &self.arm_event(now), now).expect("arm is always valid");
                out.armed.push(h.to_string());
            }
            out.new.push(h.to_string());
            next.nodes.insert(h.to_string(), rec);
        }
        out.kept_absent = next
            .nodes
            .keys()
            .filter(|k| !hostnames.contains(&k.as_str()))
            .cloned()
            .collect();
        next.bundle_id = bundle_id.to_string();
        self.persist(&next)?;
        *self.inner.lock().unwrap() = next;
        *self.current.lock().unwrap() = hostnames.iter().map(|h| h.to_string()).collect();
        // No subscriber is not an error.
        let _ = self.changes.send(Change::All);
        Ok(out)
    }

    fn arm_event(&self, now: u64) -> Event {
        Event::Arm {
            secret: Secret::mint(),
            expires_ms: now.saturating_add(self.install_window.as_millis() as u64),
        }
    }

    fn served(&self, hostname: &str) -> bool {
        self.current.lock().unwrap().contains(hostname)
    }

    /// A node of the bundle being served.
    pub fn get(&self, hostname: &str) -> Option<NodeRecord> {
        if !self.served(hostname) {
            return None;
        }
        self.inner.lock().unwrap().nodes.get(hostname).cloned()
    }

    /// The node's state as boot decisions see it: an armed node whose install window ended
    /// is no longer armed, even before the sweeper has recorded it.
    pub fn state(&self, hostname: &str) -> Option<NodeState> {
        // On every DHCP request and boot script: no copy of the record (its timeline).
        if !self.served(hostname) {
            return None;
        }
        let g = self.inner.lock().unwrap();
        let rec = g.nodes.get(hostname)?;
        let now = now_ms();
        if rec.state.install_armed() && rec.live_secret(now).is_none() {
            return Some(apply(rec, &Event::Expire, now).map_or(rec.state, |r| r.state));
        }
        Some(rec.state)
    }

    /// Every node of the bundle being served.
    pub fn all(&self) -> Vec<NodeRecord> {
        let current = self.current.lock().unwrap().clone();
        let g = self.inner.lock().unwrap();
        current
            .iter()
            .filter_map(|h| g.nodes.get(h).cloned())
            .collect()
    }

    /// Arm `hostname` with a fresh install secret (the old one, if any, dies).
    pub fn arm(&self, hostname: &str) -> Result<NodeRecord, StoreError> {
        self.apply(hostname, &self.arm_event(now_ms()))
    }

    /// Record the end of every install window that has passed. Called periodically.
    pub fn expire_due(&self) -> Vec<String> {
        let now = now_ms();
        let due: Vec<String> = self
            .all()
            .into_iter()
            .filter(|r| r.install_secret.is_some() && now >= r.install_expires_ms)
            .map(|r| r.hostname)
            .collect();
        due.into_iter()
            .filter(|h| self.apply(h, &Event::Expire).is_ok())
            .collect()
    }

    /// Apply an event and persist the result before it becomes visible. Progress reports are
    /// persisted too: a restart must not show an older byte count than a client already saw.
    /// Blocking (fsync): async callers run it on the blocking pool.
    pub fn apply(&self, hostname: &str, ev: &Event) -> Result<NodeRecord, StoreError> {
        let _w = self.writer.lock().unwrap();
        if !self.served(hostname) {
            return Err(TransitionError::UnknownNode(hostname.into()).into());
        }
        let mut next = self.inner.lock().unwrap().clone();
        let rec = next
            .nodes
            .get(hostname)
            .ok_or_else(|| TransitionError::UnknownNode(hostname.into()))?;
        let updated = apply(rec, ev, now_ms())?;
        if updated == *rec {
            return Ok(updated);
        }
        next.nodes.insert(hostname.to_string(), updated.clone());
        // Not on disk means not done: memory never runs ahead of the disk.
        self.persist(&next).map_err(StoreError::Io)?;
        *self.inner.lock().unwrap() = next;
        let _ = self.changes.send(Change::Node(hostname.to_string()));
        Ok(updated)
    }

    fn persist(&self, file: &StateFile) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        std::fs::create_dir_all(dir)?;
        // tempfile creates 0600: the file holds install secrets.
        let mut tmp = tempfile::Builder::new()
            .prefix(".nodes-")
            .tempfile_in(dir)?;
        serde_json::to_writer(&mut tmp, file)?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        tmp.persist(dir.join(STATE_FILE)).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("saving node state: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests;
