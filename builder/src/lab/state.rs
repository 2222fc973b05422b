//! `DIR/lab.json`: what `builder lab up` started and where, read by every other lab command
//! (`status`, `console`, `down`, `fail`, `drill`, `apply`) and by the lab power driver. One typed
//! definition; written atomically, owner-only (it names the API token file and the processes
//! `down` will kill).
//!
//! Processes are recorded with their start time (field 22 of `/proc/PID/stat`, clock ticks since
//! boot), so a PID the kernel reused for someone else's process after a crash is never signalled.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bump when the shape changes; an older `lab.json` is refused with a clear error (the lab is
/// disposable: `lab down` and `lab up` again).
/// 2: `LabVm::user_disks` (disk files that were in DIR before `lab up`; `down` leaves them).
pub const LAB_STATE_VERSION: u32 = 2;
pub const LAB_STATE_FILE: &str = "lab.json";
/// `lab.json` is small; a bigger file is not ours.
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: no lab here (no {LAB_STATE_FILE}; start one with `builder lab up`)")]
    Missing { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lab state file: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: lab state version {found}, this builder writes {LAB_STATE_VERSION}; \
         run `builder lab down` with the builder that started it"
    )]
    Version { path: String, found: u32 },
    #[error("{path}: larger than {MAX_STATE_BYTES} bytes: not a lab state file")]
    TooBig { path: String },
}

/// How qemu runs the lab's machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabProcess {
    pub pid: u32,
    /// `/proc/PID/stat` field 22 when started.
    pub start_ticks: u64,
}

/// One node's VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabVm {
    /// The MAC the VM's NIC has now (`lab fail --nic` changes it; the inventory's may differ).
    pub mac: String,
    /// The tap in the lab's namespace the NIC is plugged into.
    pub tap: String,
    /// Disk files in the lab folder, install disk first (`builder::vmshape` order).
    pub disks: Vec<PathBuf>,
    /// qemu's serial console, appended to across restarts.
    pub serial: PathBuf,
    /// qemu's QMP socket (power off, reset, status).
    pub qmp: PathBuf,
    /// The full qemu argument list (without the binary) the VM is started with; the NIC's MAC
    /// and the boot order are in it. The lab power driver starts the VM from this.
    pub argv: Vec<String>,
    /// Set by the lab power driver's `pxe_once`: the next start boots from the network first
    /// (a BMC's one-time override), then it is cleared.
    #[serde(default)]
    pub pxe_once: bool,
    /// The running qemu, if any.
    pub qemu: Option<LabProcess>,
    /// Disk files that were already in the folder when `lab up` ran (a pool with data the user
    /// put there): used as they are, and `lab down` never deletes them.
    #[serde(default)]
    pub user_disks: Vec<PathBuf>,
}

/// `DIR/lab.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    pub version: u32,
    /// The inventory the lab was rendered from (absolute), and the bundle rendered into the lab.
    pub inventory: PathBuf,
    pub bundle: PathBuf,
    /// Network namespace holding the bridge, the taps and `pxe serve`.
    pub netns: String,
    pub bridge: String,
    /// The appliance address on the bridge and pxe's HTTP port there.
    pub server_ip: Ipv4Addr,
    pub http_port: u16,
    /// Owner-only file with pxe's operator API token.
    pub api_token_file: PathBuf,
    pub accel: Accel,
    pub pxe: Option<LabProcess>,
    /// Other helper processes (a NAT helper, a router), by name.
    #[serde(default)]
    pub helpers: BTreeMap<String, LabProcess>,
    /// Per node (hostname).
    pub nodes: BTreeMap<String, LabVm>,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(LAB_STATE_FILE)
    }

    pub fn load(dir: &Path) -> Result<LabState, StateError> {
        let path = Self::path(dir);
        let shown = path.display().to_string();
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing { path: shown });
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: shown,
                    source,
                });
            }
            Ok(m) => m,
        };
        if meta.len() > MAX_STATE_BYTES {
            return Err(StateError::TooBig { path: shown });
        }
        let bytes = std::fs::read(&path).map_err(|source| StateError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &bytes)
    }

    /// The version is checked before the shape, so an old file says "old", not "unknown field".
    pub fn parse(shown: &str, bytes: &[u8]) -> Result<LabState, StateError> {
        #[derive(Deserialize)]
        struct Head {
            version: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|source| StateError::Parse {
            path: shown.to_owned(),
            source,
        })?;
        if head.version != LAB_STATE_VERSION {
            return Err(StateError::Version {
                path: shown.to_owned(),
                found: head.version,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| StateError::Parse {
            path: shown.to_owned(),
            source,
        })
    }

    /// Atomic and owner-only from creation.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let json = serde_json::to_vec_pretty(self).expect("lab state serialises");
        crate::fsutil::write_atomic(&path, &json, 0o600).map_err(|source| StateError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// `/proc/PID/stat` field 22 (start time), or None when the process is gone. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first; field 22 is the 20th.
    let mut f = rest.split_whitespace();
    // A zombie (`Z`: exited, not yet reaped by the `lab up` that started it) or a dead task
    // (`X`) runs nothing: not alive, and nothing to signal.
    if matches!(f.next()?, "Z" | "X") {
        return None;
    }
    f.nth(18)?.parse().ok()
}

impl LabProcess {
    pub fn of(pid: u32) -> Option<LabProcess> {
        Some(LabProcess {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// The recorded process still runs (same PID and the same start time).
    pub fn alive(&self) -> bool {
        start_ticks(self.pid) == Some(self.start_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "cp1".to_owned(),
            LabVm {
                mac: "52:54:00:12:34:56".into(),
                tap: "isl0t0".into(),
                disks: vec!["/lab/cp1-install.raw".into()],
                serial: "/lab/cp1.serial".into(),
                qmp: "/lab/cp1.qmp".into(),
                argv: vec!["-m".into(), "1024".into()],
                pxe_once: false,
                qemu: None,
                user_disks: Vec::new(),
            },
        );
        LabState {
            version: LAB_STATE_VERSION,
            inventory: "/inv.yaml".into(),
            bundle: "/lab/bundle".into(),
            netns: "isl0".into(),
            bridge: "islbr0".into(),
            server_ip: Ipv4Addr::new(10, 0, 0, 2),
            http_port: 8080,
            api_token_file: "/lab/api-token".into(),
            accel: Accel::Tcg,
            pxe: Some(LabProcess {
                pid: 42,
                start_ticks: 7,
            }),
            helpers: BTreeMap::new(),
            nodes,
        }
    }

    #[test]
    fn saves_owner_only_and_loads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        s.save(dir.path()).unwrap();
        let mode = std::fs::metadata(LabState::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "lab.json names the token file and PIDs"
        );
        assert_eq!(LabState::load(dir.path()).unwrap(), s);
    }

    #[test]
    fn refuses_other_versions_unknown_fields_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            LabState::load(dir.path()),
            Err(StateError::Missing { .. })
        ));
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 99.into();
        let e = LabState::parse("x", v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(e, StateError::Version { found: 99, .. }), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["surprise"] = 1.into();
        assert!(matches!(
            LabState::parse("x", v.to_string().as_bytes()),
            Err(StateError::Parse { .. })
        ));
    }

    #[test]
    fn start_ticks_counts_fields_after_the_last_parenthesis() {
        // A command name with spaces and a `)` (field 2), as a hostile process could choose.
        let stat =
            "1234 (qemu) (x y) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1 2";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(
            parse_start_ticks(&zombie),
            None,
            "an exited process is not alive"
        );
        let me = std::process::id();
        assert!(LabProcess::of(me).unwrap().alive());
        let gone = LabProcess {
            pid: me,
            start_ticks: 1,
        };
        assert!(!gone.alive(), "same PID, other start time: not ours");
    }
}
