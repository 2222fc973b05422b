//! Per-node install state: a pure transition function and a store that persists every change
//! atomically (temp file, fsync, rename, fsync of the folder), so a crash or `kill -9` leaves
//! either the old or the new state on disk, never a mix, and a restart resumes from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::dhcp_policy::NodeState;

pub const STATE_FILE: &str = "nodes.json";
/// Timeline entries kept per node; older ones are dropped first.
const TIMELINE_CAP: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
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
}

impl NodeRecord {
    pub fn new(hostname: &str, armed: bool, now_ms: u64) -> NodeRecord {
        let state = if armed {
            NodeState::Armed
        } else {
            NodeState::Disarmed
        };
        NodeRecord {
            hostname: hostname.into(),
            state,
            bytes_written: 0,
            bytes_total: 0,
            installed_sha256: None,
            last_error: None,
            installs: 0,
            timeline: vec![TimelineEntry {
                at_ms: now_ms,
                event: if armed { "armed" } else { "disarmed" }.into(),
                detail: "first seen in a bundle".into(),
            }],
        }
    }
}

/// What happens to a node: from the operator (arm), the boot server (script served), the
/// installer (installing, progress, installed, failed) and the first boot (booted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Arm,
    Disarm,
    ScriptServed {
        #[serde(default)]
        mac: String,
    },
    Installing {
        #[serde(default)]
        disk: String,
        #[serde(default)]
        total: u64,
    },
    Progress {
        written: u64,
        #[serde(default)]
        total: u64,
    },
    Installed {
        sha256: String,
    },
    Failed {
        reason: String,
    },
    Booted,
    /// Anything else a node reports (first-boot steps): logged, state unchanged.
    Note {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        detail: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("{event} is not valid for a node in state {state:?}")]
    Invalid { event: String, state: NodeState },
    #[error("unknown node {0}")]
    UnknownNode(String),
}

fn name(ev: &Event) -> &'static str {
    match ev {
        Event::Arm => "arm",
        Event::Disarm => "disarm",
        Event::ScriptServed { .. } => "script-served",
        Event::Installing { .. } => "installing",
        Event::Progress { .. } => "progress",
        Event::Installed { .. } => "installed",
        Event::Failed { .. } => "failed",
        Event::Booted => "booted",
        Event::Note { .. } => "note",
    }
}

/// The state machine: armed → booting → installing → installed → booted, plus failed.
/// Pure; `Err` leaves the record as it was.
pub fn apply(rec: &NodeRecord, ev: &Event, now_ms: u64) -> Result<NodeRecord, TransitionError> {
    use NodeState::*;
    let mut r = rec.clone();
    let invalid = || TransitionError::Invalid {
        event: name(ev).into(),
        state: rec.state,
    };
    let mut detail = String::new();
    match ev {
        Event::Arm => {
            r.state = Armed;
            r.bytes_written = 0;
            r.bytes_total = 0;
            r.last_error = None;
        }
        Event::Disarm => r.state = Disarmed,
        Event::ScriptServed { mac } => {
            if !rec.state.install_armed() {
                return Err(invalid());
            }
            detail = mac.clone();
            r.state = Booting;
        }
        Event::Installing { disk, total } => {
            if !matches!(rec.state, Booting | Installing) {
                return Err(invalid());
            }
            r.state = Installing;
            r.bytes_written = 0;
            r.bytes_total = *total;
            detail = disk.clone();
        }
        Event::Progress { written, total } => {
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
        Event::Installed { sha256 } => {
            if rec.state == Installed && rec.installed_sha256.as_deref() == Some(sha256) {
                return Ok(r); // a retried report
            }
            if rec.state != Installing {
                return Err(invalid());
            }
            r.state = Installed;
            r.installed_sha256 = Some(sha256.clone());
            r.installs += 1;
            r.bytes_written = r.bytes_written.max(r.bytes_total);
            detail = sha256.clone();
        }
        Event::Failed { reason } => {
            if !matches!(rec.state, Booting | Installing) {
                return Err(invalid());
            }
            r.state = Failed;
            r.last_error = Some(reason.clone());
            detail = reason.clone();
        }
        Event::Booted => {
            if !matches!(rec.state, Installed | Booted) {
                return Err(invalid());
            }
            r.state = Booted;
        }
        Event::Note { kind, detail: d } => {
            detail = if d.is_empty() {
                kind.clone()
            } else {
                format!("{kind}: {d}")
            };
        }
    }
    let event = match ev {
        Event::Note { .. } => "note".to_string(),
        other => name(other).to_string(),
    };
    r.timeline.push(TimelineEntry {
        at_ms: now_ms,
        event,
        detail,
    });
    if r.timeline.len() > TIMELINE_CAP {
        let drop = r.timeline.len() - TIMELINE_CAP;
        r.timeline.drain(..drop);
    }
    Ok(r)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct StateFile {
    /// sha256 of the plan.json these records were last reconciled with.
    bundle_id: String,
    nodes: BTreeMap<String, NodeRecord>,
}

fn reconcile_nodes(file: &mut StateFile, bundle_id: &str, hostnames: &[&str], arm_new: bool) {
    let now = now_ms();
    file.nodes.retain(|h, _| hostnames.contains(&h.as_str()));
    for h in hostnames {
        file.nodes
            .entry(h.to_string())
            .or_insert_with(|| NodeRecord::new(h, arm_new, now));
    }
    file.bundle_id = bundle_id.to_string();
}

pub struct Store {
    dir: Option<PathBuf>,
    inner: Mutex<StateFile>,
}

impl Store {
    /// Load the saved state (if any) and reconcile it with the bundle's nodes: known nodes keep
    /// their state (install-once survives restarts and re-renders), nodes new to this pxe start
    /// armed (or disarmed with `arm_new = false`), nodes no longer in the bundle are dropped.
    pub fn open(
        dir: Option<&Path>,
        bundle_id: &str,
        hostnames: &[&str],
        arm_new: bool,
    ) -> std::io::Result<Store> {
        let mut file = match dir {
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
        reconcile_nodes(&mut file, bundle_id, hostnames, arm_new);
        let store = Store {
            dir: dir.map(Path::to_path_buf),
            inner: Mutex::new(file),
        };
        store.persist(&store.inner.lock().unwrap())?;
        Ok(store)
    }

    /// A new bundle is being served: the same reconciliation as `open`, persisted before it is
    /// visible. Nodes keep their state, so a reload never re-arms or disarms anything by itself.
    pub fn reconcile(
        &self,
        bundle_id: &str,
        hostnames: &[&str],
        arm_new: bool,
    ) -> std::io::Result<()> {
        let mut g = self.inner.lock().unwrap();
        let mut next = StateFile {
            bundle_id: g.bundle_id.clone(),
            nodes: g.nodes.clone(),
        };
        reconcile_nodes(&mut next, bundle_id, hostnames, arm_new);
        self.persist(&next)?;
        *g = next;
        Ok(())
    }

    pub fn get(&self, hostname: &str) -> Option<NodeRecord> {
        self.inner.lock().unwrap().nodes.get(hostname).cloned()
    }

    pub fn state(&self, hostname: &str) -> Option<NodeState> {
        self.inner
            .lock()
            .unwrap()
            .nodes
            .get(hostname)
            .map(|r| r.state)
    }

    pub fn all(&self) -> Vec<NodeRecord> {
        self.inner.lock().unwrap().nodes.values().cloned().collect()
    }

    /// Apply an event and persist the result before it becomes visible. Progress reports are
    /// persisted too: a restart must not show an older byte count than a client already saw.
    pub fn apply(&self, hostname: &str, ev: &Event) -> Result<NodeRecord, StoreError> {
        let mut g = self.inner.lock().unwrap();
        let rec = g
            .nodes
            .get(hostname)
            .ok_or_else(|| TransitionError::UnknownNode(hostname.into()))?;
        let next = apply(rec, ev, now_ms())?;
        if next == *rec {
            return Ok(next);
        }
        let old = g.nodes.insert(hostname.to_string(), next.clone());
        if let Err(e) = self.persist(&g) {
            // Not on disk means not done: roll back so memory never runs ahead of the disk.
            if let Some(o) = old {
                g.nodes.insert(hostname.to_string(), o);
            }
            return Err(StoreError::Io(e));
        }
        Ok(next)
    }

    fn persist(&self, file: &StateFile) -> std::io::Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".nodes-")
            .tempfile_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, file)?;
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
mod tests {
    use super::*;
    use NodeState::*;

    fn run(events: &[Event]) -> Result<NodeRecord, TransitionError> {
        let mut r = NodeRecord::new("n1", true, 0);
        for (i, e) in events.iter().enumerate() {
            r = apply(&r, e, i as u64 + 1)?;
        }
        Ok(r)
    }

    fn served() -> Event {
        Event::ScriptServed {
            mac: "52:54:00:00:00:01".into(),
        }
    }
    fn installing() -> Event {
        Event::Installing {
            disk: "/dev/vda".into(),
            total: 100,
        }
    }

    #[test]
    fn the_happy_path_reaches_booted_with_a_full_timeline() {
        let r = run(&[
            served(),
            installing(),
            Event::Progress {
                written: 50,
                total: 100,
            },
            Event::Installed {
                sha256: "ab".into(),
            },
            Event::Booted,
        ])
        .unwrap();
        assert_eq!(r.state, Booted);
        assert_eq!(r.installs, 1);
        assert_eq!(r.bytes_written, 100);
        let ev: Vec<&str> = r.timeline.iter().map(|t| t.event.as_str()).collect();
        assert_eq!(
            ev,
            [
                "armed",
                "script-served",
                "installing",
                "installed",
                "booted"
            ]
        );
    }

    #[test]
    fn installed_nodes_are_never_served_the_installer_again_until_re_armed() {
        let r = run(&[
            served(),
            installing(),
            Event::Installed {
                sha256: "ab".into(),
            },
        ])
        .unwrap();
        assert!(!r.state.install_armed());
        assert!(apply(&r, &served(), 9).is_err());
        let r = apply(&r, &Event::Arm, 10).unwrap();
        assert!(r.state.install_armed());
        assert_eq!(r.installs, 1, "re-arming keeps the count");
    }

    #[test]
    fn out_of_order_reports_are_refused() {
        let fresh = NodeRecord::new("n1", true, 0);
        for ev in [
            Event::Installed { sha256: "x".into() },
            Event::Booted,
            Event::Progress {
                written: 1,
                total: 2,
            },
            Event::Failed { reason: "x".into() },
            installing(),
        ] {
            assert!(apply(&fresh, &ev, 1).is_err(), "{ev:?} on an armed node");
        }
        let disarmed = NodeRecord::new("n1", false, 0);
        assert!(apply(&disarmed, &served(), 1).is_err());
    }

    #[test]
    fn an_interrupted_install_stays_armed_and_a_failure_does_not() {
        let r = run(&[served(), installing()]).unwrap();
        let again = apply(&r, &served(), 5).unwrap();
        assert_eq!(again.state, Booting);
        let failed = apply(
            &r,
            &Event::Failed {
                reason: "disk".into(),
            },
            5,
        )
        .unwrap();
        assert_eq!(failed.state, Failed);
        assert!(!failed.state.install_armed());
        assert_eq!(failed.last_error.as_deref(), Some("disk"));
    }

    #[test]
    fn a_retried_installed_report_is_idempotent() {
        let r = run(&[
            served(),
            installing(),
            Event::Installed {
                sha256: "ab".into(),
            },
        ])
        .unwrap();
        let again = apply(
            &r,
            &Event::Installed {
                sha256: "ab".into(),
            },
            9,
        )
        .unwrap();
        assert_eq!(again, r);
        assert!(
            apply(
                &r,
                &Event::Installed {
                    sha256: "cd".into()
                },
                9
            )
            .is_err()
        );
    }

    #[test]
    fn events_parse_from_the_wire_format() {
        let e: Event =
            serde_json::from_str(r#"{"event":"progress","written":5,"total":9}"#).unwrap();
        assert_eq!(
            e,
            Event::Progress {
                written: 5,
                total: 9
            }
        );
        let e: Event = serde_json::from_str(r#"{"event":"failed","reason":"no disk"}"#).unwrap();
        assert_eq!(
            e,
            Event::Failed {
                reason: "no disk".into()
            }
        );
        assert!(serde_json::from_str::<Event>(r#"{"event":"explode"}"#).is_err());
    }

    #[test]
    fn store_persists_every_change_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(Some(dir.path()), "b1", &["a", "b"], true).unwrap();
        s.apply("a", &served()).unwrap();
        s.apply("a", &installing()).unwrap();
        s.apply(
            "a",
            &Event::Installed {
                sha256: "ff".into(),
            },
        )
        .unwrap();
        drop(s);
        let s = Store::open(Some(dir.path()), "b2", &["a", "b", "c"], false).unwrap();
        assert_eq!(
            s.state("a"),
            Some(Installed),
            "install-once survives a restart"
        );
        assert_eq!(s.state("b"), Some(Armed));
        assert_eq!(s.state("c"), Some(Disarmed), "new node under --no-arm");
        let s = Store::open(Some(dir.path()), "b3", &["c"], true).unwrap();
        assert!(
            s.get("a").is_none(),
            "nodes gone from the bundle are dropped"
        );
    }

    #[test]
    fn reconcile_on_reload_keeps_states_and_persists_before_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(Some(dir.path()), "b1", &["a", "b"], true).unwrap();
        s.apply("a", &served()).unwrap();
        s.reconcile("b2", &["a", "c"], false).unwrap();
        assert_eq!(s.state("a"), Some(Booting), "a reload re-arms nothing");
        assert_eq!(s.state("b"), None);
        assert_eq!(s.state("c"), Some(Disarmed));
        drop(s);
        let s = Store::open(Some(dir.path()), "b2", &["a", "c"], true).unwrap();
        assert_eq!(s.state("a"), Some(Booting));
        assert_eq!(s.state("c"), Some(Disarmed), "the reload was on disk");
    }
}
