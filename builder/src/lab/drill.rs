//! Failure drills: the record `builder lab drill` appends to `DIR/drills.jsonl` (one JSON object
//! per line), the measurement of a recovery from pxe's node timeline, and the `--history` table.
//!
//! Times: `started_at_ms` is builder's clock at the moment of the failure; the phase times are
//! pxe's timeline entries (`GET /api/v1/nodes/NODE`, Unix ms). In the lab both run on the same
//! machine, so one clock.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use images::bundle::printable;
use serde::{Deserialize, Serialize};

use super::state::Accel;

pub const DRILLS_FILE: &str = "drills.jsonl";
/// One record is a few hundred bytes; a longer line is refused on write and skipped on read
/// (a hand-edited or foreign file must not make `--history` read one endless line).
pub const MAX_RECORD_BYTES: usize = 4096;
/// `--history` reads at most the newest 16 MiB (tens of thousands of drills).
pub const MAX_HISTORY_BYTES: u64 = 16 << 20;
/// Bound of the free-text `detail` (the installer's error, a timeout note).
const DETAIL_MAX: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("drill record of {len} bytes is larger than {MAX_RECORD_BYTES}: not written")]
    TooBig { len: usize },
}

/// What `lab fail` breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The plug pulled (qemu stopped).
    Power,
    /// The plug pulled and the install disk wiped.
    Disk,
    /// The NIC replaced: the VM comes back with a new MAC.
    Nic,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Power => "power",
            FailureKind::Disk => "disk",
            FailureKind::Nic => "nic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The node reported `booted` after the failure.
    Booted,
    /// The install failed, or the node was disarmed or its install window ended.
    Failed,
    /// `--timeout` passed first.
    TimedOut,
}

/// When each step of the recovery happened (Unix ms, pxe's timeline); `None`: not reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub armed_ms: Option<u64>,
    /// pxe served the node its install script (the network boot reached iPXE).
    pub netboot_ms: Option<u64>,
    pub installing_ms: Option<u64>,
    pub installed_ms: Option<u64>,
    pub booted_ms: Option<u64>,
}

impl Phases {
    /// (name, time) in recovery order.
    pub fn steps(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("armed", self.armed_ms),
            ("netboot", self.netboot_ms),
            ("installing", self.installing_ms),
            ("installed", self.installed_ms),
            ("booted", self.booted_ms),
        ]
    }
}

/// One line of `drills.jsonl`. Unknown fields are ignored on read (not refused) so that a newer
/// builder's records still show in an older one's `--history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub node: String,
    pub kind: FailureKind,
    /// The failure (builder's clock, Unix ms).
    pub started_at_ms: u64,
    pub phases: Phases,
    /// Failure → `booted`, seconds; `None` unless the outcome is `booted`.
    pub recovery_s: Option<f64>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub accel: Accel,
    pub builder_version: String,
}

impl DrillRecord {
    /// The record of a finished measurement.
    pub fn new(
        node: &str,
        kind: FailureKind,
        started_at_ms: u64,
        m: &Measured,
        timed_out: bool,
        accel: Accel,
    ) -> DrillRecord {
        let outcome = match m.outcome {
            Some(o) => o,
            None if timed_out => Outcome::TimedOut,
            None => Outcome::Failed,
        };
        let recovery_s = match (outcome, m.phases.booted_ms) {
            (Outcome::Booted, Some(b)) => Some(b.saturating_sub(started_at_ms) as f64 / 1000.0),
            _ => None,
        };
        DrillRecord {
            node: node.to_string(),
            kind,
            started_at_ms,
            phases: m.phases,
            recovery_s,
            outcome,
            detail: m.detail.as_deref().map(|d| printable(d, DETAIL_MAX)),
            accel,
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// One entry of pxe's node timeline as the operator API shows it (`pxe::state::TimelineEntry`;
/// builder does not link pxe, the JSON is the contract).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub event: String,
    #[serde(default)]
    pub detail: String,
}

/// The recovery so far, as the timeline shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub phases: Phases,
    /// `None` while the recovery is still under way.
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
}

/// Phases of the recovery that started at `fail_ms`, from the node's timeline (oldest first, as
/// pxe keeps it). Entries older than the failure belong to earlier installs and are ignored, and
/// so is an entry older than the phase before it (a clock step back), so phase times never go
/// backwards. A re-arm (the operator retrying after a failed install) starts the install phases
/// over; `armed` stays the first arm, so the recovery time includes the retry.
pub fn measure(timeline: &[TimelineEntry], fail_ms: u64) -> Measured {
    let mut m = Measured::default();
    let mut last = fail_ms;
    for e in timeline.iter().filter(|e| e.at_ms >= fail_ms) {
        let p = &mut m.phases;
        if e.event == "arm" {
            if p.armed_ms.is_none() {
                p.armed_ms = Some(e.at_ms);
            }
            p.netboot_ms = None;
            p.installing_ms = None;
            p.installed_ms = None;
            p.booted_ms = None;
            m.outcome = None;
            m.detail = None;
            last = e.at_ms.max(last);
            continue;
        }
        if p.armed_ms.is_none() || m.outcome.is_some() || e.at_ms < last {
            continue;
        }
        let slot = match e.event.as_str() {
            "script-served" if p.netboot_ms.is_none() => &mut p.netboot_ms,
            "installing" if p.installing_ms.is_none() => &mut p.installing_ms,
            "installed" if p.installing_ms.is_some() => &mut p.installed_ms,
            "booted" if p.installed_ms.is_some() => {
                m.outcome = Some(Outcome::Booted);
                &mut p.booted_ms
            }
            "failed" | "disarm" | "install-window-expired" => {
                m.outcome = Some(Outcome::Failed);
                m.detail = Some(printable(&format!("{}: {}", e.event, e.detail), DETAIL_MAX));
                continue;
            }
            _ => continue,
        };
        *slot = Some(e.at_ms);
        last = e.at_ms;
    }
    m
}

/// Append one record (a drill, or a `lab fail`) as one line: `O_APPEND`, one `write` of the whole line (a concurrent
/// drill or a kill never interleaves or splits a record short of the 4 KiB cap), owner-only from
/// creation like everything in the lab folder.
pub fn append<T: Serialize>(path: &Path, rec: &T) -> Result<(), DrillError> {
    let mut line = serde_json::to_vec(rec).expect("a record serialises");
    line.push(b'\n');
    if line.len() > MAX_RECORD_BYTES {
        return Err(DrillError::TooBig { len: line.len() });
    }
    let io = |source| DrillError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(&line).map_err(io)?;
    f.sync_data().map_err(io)
}

/// What `--history` read: the records, and why some lines were not.
#[derive(Debug, Default, PartialEq)]
pub struct History {
    pub records: Vec<DrillRecord>,
    pub warnings: Vec<String>,
}

/// Parse `drills.jsonl`. Never fails: a line that is not a record is skipped with a warning; an
/// unterminated last line is what a drill killed mid-write leaves, and says so.
pub fn parse_history(bytes: &[u8]) -> History {
    let mut h = History::default();
    let ends_clean = bytes.last().is_none_or(|b| *b == b'\n');
    let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let last = i + 1 == n;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let no = i + 1;
        if line.len() > MAX_RECORD_BYTES {
            h.warnings.push(format!(
                "line {no}: {} bytes, longer than a drill record: skipped",
                line.len()
            ));
            continue;
        }
        match serde_json::from_slice::<DrillRecord>(line) {
            Ok(r) => h.records.push(r),
            Err(_) if last && !ends_clean => h.warnings.push(format!(
                "line {no}: truncated last record (a drill killed while writing?): skipped"
            )),
            Err(e) => h.warnings.push(format!(
                "line {no}: not a drill record ({}): skipped",
                printable(&e.to_string(), 120)
            )),
        }
    }
    h
}

/// Read `path` (missing: no drills yet). Only the newest [`MAX_HISTORY_BYTES`] are read.
pub fn read_history(path: &Path) -> Result<History, DrillError> {
    let io = |source| DrillError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = match std::fs::File::open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        r => r.map_err(io)?,
    };
    let len = f.metadata().map_err(io)?.len();
    let mut bytes = Vec::new();
    let mut skipped = false;
    if len > MAX_HISTORY_BYTES {
        f.seek(SeekFrom::Start(len - MAX_HISTORY_BYTES))
            .map_err(io)?;
        skipped = true;
    }
    f.take(MAX_HISTORY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if skipped {
        // Drop the partial first line the seek landed in.
        let cut = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |p| p + 1);
        bytes.drain(..cut);
    }
    let mut h = parse_history(&bytes);
    if skipped {
        h.warnings.insert(
            0,
            format!(
                "{} is larger than {} MiB: only its newest records are shown",
                path.display(),
                MAX_HISTORY_BYTES >> 20
            ),
        );
    }
    Ok(h)
}

/// One row of the `--history` table: the drills of one node, failure kind and accelerator
/// (TCG and KVM times differ by an order of magnitude and are never mixed).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub node: String,
    pub kind: FailureKind,
    pub accel: Accel,
    pub drills: usize,
    pub booted: usize,
    /// Over the drills that booted, seconds.
    pub median_s: Option<f64>,
    pub max_s: Option<f64>,
    /// Median failure → armed and failure → installed, seconds.
    pub median_armed_s: Option<f64>,
    pub median_installed_s: Option<f64>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn accel_key(a: Accel) -> u8 {
    match a {
        Accel::Kvm => 0,
        Accel::Tcg => 1,
    }
}

pub fn summarize(records: &[DrillRecord]) -> Vec<Summary> {
    let mut groups: BTreeMap<(String, FailureKind, u8), Vec<&DrillRecord>> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.node.clone(), r.kind, accel_key(r.accel)))
            .or_default()
            .push(r);
    }
    groups
        .into_values()
        .map(|rs| {
            let ok: Vec<&&DrillRecord> =
                rs.iter().filter(|r| r.outcome == Outcome::Booted).collect();
            let since = |r: &DrillRecord, t: Option<u64>| {
                t.map(|t| t.saturating_sub(r.started_at_ms) as f64 / 1000.0)
            };
            let rec: Vec<f64> = ok.iter().filter_map(|r| r.recovery_s).collect();
            Summary {
                node: rs[0].node.clone(),
                kind: rs[0].kind,
                accel: rs[0].accel,
                drills: rs.len(),
                booted: ok.len(),
                median_s: median(rec.clone()),
                max_s: rec.iter().copied().reduce(f64::max),
                median_armed_s: median(
                    ok.iter()
                        .filter_map(|r| since(r, r.phases.armed_ms))
                        .collect(),
                ),
                median_installed_s: median(
                    ok.iter()
                        .filter_map(|r| since(r, r.phases.installed_ms))
                        .collect(),
                ),
            }
        })
        .collect()
}

/// `12m05s`; `-` for none.
pub fn fmt_secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) => {
            let s = s.round() as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

/// The `--history` table. Node names come from a file anyone with the folder could edit: they
/// are made printable and cut before they reach the terminal.
pub fn table(rows: &[Summary]) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:<5} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11}\n",
        "node", "kind", "accel", "drills", "booted", "median", "max", "→armed", "→installed"
    );
    for r in rows {
        let accel = match r.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        out.push_str(&format!(
            "{:<16} {:<5} {:<5} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11}\n",
            printable(&r.node, 40),
            r.kind.as_str(),
            accel,
            r.drills,
            r.booted,
            fmt_secs(r.median_s),
            fmt_secs(r.max_s),
            fmt_secs(r.median_armed_s),
            fmt_secs(r.median_installed_s),
        ));
    }
    out
}

/// The phase lines `lab drill` prints when the node is back: offsets from the failure.
pub fn phase_lines(r: &DrillRecord) -> Vec<String> {
    let mut out = vec![format!("  fail        +{:>6}", "0m00s")];
    for (name, t) in r.phases.steps() {
        let off = t.map(|t| t.saturating_sub(r.started_at_ms) as f64 / 1000.0);
        out.push(format!("  {name:<11} +{:>6}", fmt_secs(off)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(at_ms: u64, event: &str) -> TimelineEntry {
        TimelineEntry {
            at_ms,
            event: event.into(),
            detail: String::new(),
        }
    }

    /// A previous install, then the drill's: power entries and notes in between.
    fn timeline() -> Vec<TimelineEntry> {
        vec![
            e(100, "arm"),
            e(200, "script-served"),
            e(300, "installing"),
            e(400, "installed"),
            e(500, "booted"),
            // The drill: failure at 1_000.
            e(1_100, "arm"),
            e(1_150, "power"),
            e(1_300, "script-served"),
            e(1_400, "installing"),
            e(1_450, "note"),
            e(1_900, "installed"),
            e(2_500, "booted"),
        ]
    }

    #[test]
    fn phases_come_from_the_entries_after_the_failure_only() {
        let m = measure(&timeline(), 1_000);
        assert_eq!(
            m.phases,
            Phases {
                armed_ms: Some(1_100),
                netboot_ms: Some(1_300),
                installing_ms: Some(1_400),
                installed_ms: Some(1_900),
                booted_ms: Some(2_500),
            }
        );
        assert_eq!(m.outcome, Some(Outcome::Booted));
        let r = DrillRecord::new("k3s1", FailureKind::Disk, 1_000, &m, false, Accel::Tcg);
        assert_eq!(r.recovery_s, Some(1.5));
        assert_eq!(r.outcome, Outcome::Booted);
    }

    #[test]
    fn an_unfinished_recovery_has_no_outcome_and_times_out() {
        let t: Vec<_> = timeline().into_iter().take(9).collect();
        let m = measure(&t, 1_000);
        assert_eq!(m.outcome, None);
        assert_eq!(m.phases.installing_ms, Some(1_400));
        assert_eq!(m.phases.booted_ms, None);
        let r = DrillRecord::new("k3s1", FailureKind::Power, 1_000, &m, true, Accel::Kvm);
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert_eq!(r.recovery_s, None);
    }

    #[test]
    fn a_failed_install_is_the_outcome_with_its_reason_made_printable() {
        let mut t = timeline()[..9].to_vec();
        t.push(TimelineEntry {
            at_ms: 1_500,
            event: "failed".into(),
            detail: "no disk matches\x1b[2J".into(),
        });
        t.push(e(1_600, "booted")); // cannot count after a failure
        let m = measure(&t, 1_000);
        assert_eq!(m.outcome, Some(Outcome::Failed));
        assert_eq!(m.phases.booted_ms, None);
        let d = m.detail.unwrap();
        assert!(d.starts_with("failed: no disk matches"), "{d}");
        assert!(
            !d.contains('\x1b'),
            "terminal escapes from the network: {d:?}"
        );
    }

    #[test]
    fn a_re_arm_after_a_failure_restarts_the_install_phases_but_not_armed() {
        let t = vec![
            e(1_100, "arm"),
            e(1_200, "script-served"),
            e(1_300, "failed"),
            e(1_400, "arm"),
            e(1_500, "script-served"),
            e(1_600, "installing"),
            e(1_700, "installed"),
            e(1_800, "booted"),
        ];
        let m = measure(&t, 1_000);
        assert_eq!(m.outcome, Some(Outcome::Booted));
        assert_eq!(m.phases.armed_ms, Some(1_100));
        assert_eq!(m.phases.netboot_ms, Some(1_500));
    }

    /// Phase times never go backwards, whatever the timeline holds (a clock step, a booted
    /// report replayed before installing).
    #[test]
    fn phase_times_are_monotonic() {
        let t = vec![
            e(1_100, "arm"),
            e(1_050, "script-served"), // clock stepped back: ignored
            e(1_200, "booted"),        // not installed yet: not a recovery
            e(1_300, "installing"),
            e(1_400, "installed"),
            e(1_500, "booted"),
        ];
        let m = measure(&t, 1_000);
        assert_eq!(m.phases.netboot_ms, None);
        assert_eq!(m.phases.booted_ms, Some(1_500));
        let times: Vec<u64> = m.phases.steps().iter().filter_map(|(_, t)| *t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    fn record(
        node: &str,
        kind: FailureKind,
        start: u64,
        booted_after_s: Option<u64>,
    ) -> DrillRecord {
        let phases = Phases {
            armed_ms: Some(start + 1_000),
            netboot_ms: Some(start + 2_000),
            installing_ms: Some(start + 3_000),
            installed_ms: booted_after_s.map(|_| start + 4_000),
            booted_ms: booted_after_s.map(|s| start + s * 1_000),
        };
        let m = Measured {
            phases,
            outcome: booted_after_s.map(|_| Outcome::Booted),
            detail: None,
        };
        DrillRecord::new(node, kind, start, &m, booted_after_s.is_none(), Accel::Tcg)
    }

    /// Protects the history: records are appended, never rewritten, one per line, and the file
    /// is owner-only from creation.
    #[test]
    fn appends_one_line_per_record_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DRILLS_FILE);
        append(&p, &record("k3s1", FailureKind::Disk, 10_000, Some(600))).unwrap();
        append(&p, &record("k3s1", FailureKind::Disk, 20_000, Some(700))).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
        let h = read_history(&p).unwrap();
        assert_eq!(h.warnings, Vec::<String>::new());
        assert_eq!(h.records.len(), 2);
        assert_eq!(h.records[1].recovery_s, Some(700.0));
        assert!(h.records[0].builder_version.contains('.'));
    }

    /// Protects the cap on one record: a node name that would blow a line up is refused.
    #[test]
    fn a_record_over_the_cap_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DRILLS_FILE);
        let big = record(&"n".repeat(MAX_RECORD_BYTES), FailureKind::Nic, 1, Some(2));
        assert!(matches!(append(&p, &big), Err(DrillError::TooBig { .. })));
        assert!(!p.exists());
    }

    /// A killed drill leaves a half line: the history still shows every whole record and warns.
    #[test]
    fn a_truncated_last_line_is_a_warning_not_a_crash() {
        let a =
            serde_json::to_string(&record("k3s1", FailureKind::Disk, 10_000, Some(600))).unwrap();
        let b =
            serde_json::to_string(&record("k3s1", FailureKind::Disk, 20_000, Some(700))).unwrap();
        let text = format!("{a}\ngarbage\n\n{b}\n{}", &a[..a.len() / 2]);
        let h = parse_history(text.as_bytes());
        assert_eq!(h.records.len(), 2);
        assert_eq!(h.warnings.len(), 2, "{:?}", h.warnings);
        assert!(h.warnings[0].starts_with("line 2: not a drill record"));
        assert!(
            h.warnings[1].contains("truncated last record"),
            "{:?}",
            h.warnings
        );
        // An over-long line is skipped without being parsed.
        let long = format!("{a}\n{}\n", "x".repeat(MAX_RECORD_BYTES + 1));
        let h = parse_history(long.as_bytes());
        assert_eq!(h.records.len(), 1);
        assert!(h.warnings[0].contains("longer than a drill record"));
        assert_eq!(parse_history(b""), History::default());
    }

    /// Protects the read bound: only the newest MAX_HISTORY_BYTES are read, starting at a whole
    /// line.
    #[test]
    fn a_huge_history_is_read_from_its_newest_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(DRILLS_FILE);
        let line =
            serde_json::to_string(&record("k3s1", FailureKind::Disk, 1, Some(60))).unwrap() + "\n";
        let count = (MAX_HISTORY_BYTES as usize / line.len()) + 10;
        std::fs::write(&p, line.repeat(count)).unwrap();
        let h = read_history(&p).unwrap();
        assert!(
            h.records.len() < count && h.records.len() > count - 20,
            "{}",
            h.records.len()
        );
        assert_eq!(h.warnings.len(), 1, "{:?}", h.warnings);
        assert!(h.warnings[0].contains("newest records"));
    }

    #[test]
    fn summary_has_median_and_max_per_node_and_kind() {
        let rs = vec![
            record("k3s1", FailureKind::Disk, 0, Some(600)),
            record("k3s1", FailureKind::Disk, 0, Some(900)),
            record("k3s1", FailureKind::Disk, 0, Some(700)),
            record("k3s1", FailureKind::Disk, 0, None),
            record("k3s1", FailureKind::Power, 0, Some(300)),
            record("k3s2", FailureKind::Disk, 0, Some(100)),
            record("k3s2", FailureKind::Disk, 0, Some(200)),
        ];
        let s = summarize(&rs);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].node.as_str(), s[0].kind),
            ("k3s1", FailureKind::Power)
        );
        let disk = &s[1];
        assert_eq!((disk.drills, disk.booted), (4, 3));
        assert_eq!(disk.median_s, Some(700.0));
        assert_eq!(disk.max_s, Some(900.0));
        assert_eq!(disk.median_armed_s, Some(1.0));
        assert_eq!(
            s[2].median_s,
            Some(150.0),
            "even count: mean of the middle two"
        );
        let t = table(&s);
        assert!(t.lines().nth(2).unwrap().contains("11m40s"), "{t}");
        assert!(t.lines().nth(2).unwrap().contains("15m00s"), "{t}");
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn the_table_never_prints_control_characters_from_the_file() {
        let mut r = record("k3s1", FailureKind::Disk, 0, Some(60));
        r.node = "evil\x1b]0;pwned\x07".into();
        let t = table(&summarize(&[r]));
        assert!(!t.contains('\x1b') && !t.contains('\x07'), "{t:?}");
    }

    #[test]
    fn phase_lines_show_offsets_from_the_failure() {
        let r = record("k3s1", FailureKind::Disk, 5_000, Some(125));
        let l = phase_lines(&r);
        assert_eq!(l.len(), 6);
        assert!(l[1].contains("armed") && l[1].contains("0m01s"), "{l:?}");
        assert!(l[5].contains("booted") && l[5].contains("2m05s"), "{l:?}");
    }
}
