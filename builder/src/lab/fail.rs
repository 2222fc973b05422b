//! `builder lab fail`: what each failure does to a lab VM, the parts that touch files kept
//! apart from the command so they are tested on their own. The disk wipe is the one place the
//! lab destroys data on purpose: it only ever touches the install disk file `lab.json` lists
//! for the node, resolved inside the lab folder, never a disk the user brought.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::drill::FailureKind;
use super::state::LabState;

pub const FAILURES_FILE: &str = "failures.jsonl";
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FailError {
    #[error("{0} is not a node of this lab")]
    NotInLab(String),
    #[error("{0} has no disk in lab.json")]
    NoDisk(String),
    #[error("{path} is not inside the lab folder {dir}: refusing to wipe it")]
    OutsideDir { path: String, dir: String },
    #[error(
        "{0} was in the lab folder before `lab up` (a disk you brought): lab fail never wipes it"
    )]
    UserDisk(String),
    #[error("{0} is not a regular file: refusing to wipe it")]
    NotAFile(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> FailError + '_ {
    move |source| FailError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What `lab fail` did, one line of `DIR/failures.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub node: String,
    pub kind: FailureKind,
    /// builder's clock, Unix ms, when the plug was pulled.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_mac: Option<String>,
    pub builder_version: String,
}

/// The install disk of `node` when it may be wiped: the first disk `lab.json` lists for it, not
/// one the user brought, and — symlinks resolved — a regular file inside `dir`.
pub fn install_disk_to_wipe(dir: &Path, s: &LabState, node: &str) -> Result<PathBuf, FailError> {
    let vm = s
        .nodes
        .get(node)
        .ok_or_else(|| FailError::NotInLab(node.to_string()))?;
    let disk = vm
        .disks
        .first()
        .ok_or_else(|| FailError::NoDisk(node.to_string()))?;
    let shown = disk.display().to_string();
    if vm.user_disks.iter().any(|u| u == disk) {
        return Err(FailError::UserDisk(shown));
    }
    let root = dir.canonicalize().map_err(io(dir))?;
    let real = disk.canonicalize().map_err(io(disk))?;
    if !real.starts_with(&root) {
        return Err(FailError::OutsideDir {
            path: format!("{shown} ({})", real.display()),
            dir: root.display().to_string(),
        });
    }
    if vm
        .user_disks
        .iter()
        .any(|u| u.canonicalize().ok().as_ref() == Some(&real))
    {
        return Err(FailError::UserDisk(shown));
    }
    if !std::fs::metadata(&real).map_err(io(&real))?.is_file() {
        return Err(FailError::NotAFile(shown));
    }
    Ok(real)
}

/// A dead disk: zeroes over the first and the last MiB (partition tables, the GPT backup, the
/// boot sector), the rest punched out (reads as zeroes, frees the space). The file keeps its
/// size, as a replaced disk of the same model would. `O_NOFOLLOW`: the path checked by
/// [`install_disk_to_wipe`] is the file written.
pub fn wipe(path: &Path) -> Result<(), FailError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let zeros = vec![0u8; MIB as usize];
    let head = len.min(MIB);
    f.write_all(&zeros[..head as usize]).map_err(io(path))?;
    let tail_at = len.saturating_sub(MIB).max(head);
    f.seek(SeekFrom::Start(tail_at)).map_err(io(path))?;
    f.write_all(&zeros[..(len - tail_at) as usize])
        .map_err(io(path))?;
    if tail_at > head {
        use nix::fcntl::{FallocateFlags, fallocate};
        fallocate(
            &f,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            head as i64,
            (tail_at - head) as i64,
        )
        .map_err(|e| FailError::Io {
            path: format!("{} (punching out the middle)", path.display()),
            source: e.into(),
        })?;
    }
    f.sync_all().map_err(io(path))
}

/// A locally administered MAC in qemu's range (52:54:00, as the lab's VMs have), none of
/// `taken` (every MAC of the lab and the inventory, lowercase).
pub fn new_mac(taken: &BTreeSet<String>, mut random: impl FnMut() -> [u8; 3]) -> String {
    loop {
        let [a, b, c] = random();
        let mac = format!("52:54:00:{a:02x}:{b:02x}:{c:02x}");
        if !taken.contains(&mac) {
            return mac;
        }
    }
}

/// The VM's argument list with its NIC's MAC replaced; `None` when `old` is not in it (the
/// argv and lab.json disagree: refuse rather than start a VM with the wrong NIC).
pub fn with_mac(argv: &[String], old: &str, new: &str) -> Option<Vec<String>> {
    let from = format!("mac={}", old.to_ascii_lowercase());
    let to = format!("mac={new}");
    let mut found = false;
    let out = argv
        .iter()
        .map(|a| {
            let low = a.to_ascii_lowercase();
            match low.find(&from) {
                // The match must end the option (`,` or the end), not be a longer MAC's prefix.
                Some(i)
                    if low[i + from.len()..].is_empty()
                        || low[i + from.len()..].starts_with(',') =>
                {
                    found = true;
                    format!("{}{to}{}", &a[..i], &a[i + from.len()..])
                }
                _ => a.clone(),
            }
        })
        .collect();
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::state::{Accel, LAB_STATE_VERSION, LabVm};
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn lab(dir: &Path, disk: PathBuf, user: bool) -> LabState {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "k3s1".to_string(),
            LabVm {
                mac: "52:54:00:20:00:21".into(),
                tap: "drt0".into(),
                disks: vec![disk.clone(), dir.join("k3s1-data.raw")],
                serial: dir.join("k3s1.serial"),
                qmp: dir.join("k3s1.qmp"),
                argv: vec![],
                pxe_once: false,
                qemu: None,
                user_disks: if user { vec![disk] } else { vec![] },
            },
        );
        LabState {
            version: LAB_STATE_VERSION,
            inventory: "/inv.yaml".into(),
            bundle: dir.join("bundle"),
            netns: "drl0".into(),
            bridge: "drbr0".into(),
            server_ip: Ipv4Addr::new(10, 0, 20, 5),
            http_port: 8080,
            api_token_file: dir.join("api-token"),
            accel: Accel::Tcg,
            pxe: None,
            helpers: BTreeMap::new(),
            nodes,
        }
    }

    /// A disk that already holds data: a pattern over every MiB.
    fn disk_with_data(path: &Path, mib: usize) {
        let mut data = Vec::with_capacity(mib << 20);
        for i in 0..mib << 20 {
            data.push((i % 251) as u8 | 1);
        }
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn wipe_zeroes_a_disk_holding_data_and_keeps_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k3s1-install.raw");
        disk_with_data(&p, 5);
        wipe(&p).unwrap();
        let back = std::fs::read(&p).unwrap();
        assert_eq!(back.len(), 5 << 20);
        assert!(
            back.iter().all(|b| *b == 0),
            "a byte of the old disk is left"
        );
        // Smaller than two MiB: head and tail overlap, no hole to punch.
        let small = dir.path().join("small.raw");
        std::fs::write(&small, vec![7u8; 1_500_000]).unwrap();
        wipe(&small).unwrap();
        let back = std::fs::read(&small).unwrap();
        assert_eq!(back.len(), 1_500_000);
        assert!(back.iter().all(|b| *b == 0));
    }

    #[test]
    fn the_install_disk_inside_the_folder_may_be_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k3s1-install.raw");
        disk_with_data(&p, 1);
        let s = lab(dir.path(), p.clone(), false);
        assert_eq!(
            install_disk_to_wipe(dir.path(), &s, "k3s1").unwrap(),
            p.canonicalize().unwrap()
        );
        assert!(matches!(
            install_disk_to_wipe(dir.path(), &s, "k3s9"),
            Err(FailError::NotInLab(_))
        ));
    }

    /// Protects every file outside the lab folder: a lab.json (or a symlink in the folder)
    /// naming a path outside it is refused, and the file keeps its data.
    #[test]
    fn a_disk_outside_the_folder_is_refused_also_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("precious.raw");
        disk_with_data(&victim, 1);
        let s = lab(dir.path(), victim.clone(), false);
        assert!(matches!(
            install_disk_to_wipe(dir.path(), &s, "k3s1"),
            Err(FailError::OutsideDir { .. })
        ));
        let link = dir.path().join("k3s1-install.raw");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let s = lab(dir.path(), link.clone(), false);
        assert!(matches!(
            install_disk_to_wipe(dir.path(), &s, "k3s1"),
            Err(FailError::OutsideDir { .. })
        ));
        // wipe itself does not follow a symlink either.
        assert!(wipe(&link).is_err());
        assert!(std::fs::read(&victim).unwrap().iter().all(|b| *b != 0));
        // `..` out of the folder.
        let s = lab(dir.path(), dir.path().join("..").join("x.raw"), false);
        assert!(install_disk_to_wipe(dir.path(), &s, "k3s1").is_err());
    }

    /// Protects the disks a user brought (`user_disks`: a pool with data).
    #[test]
    fn a_user_disk_is_never_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k3s1-install.raw");
        disk_with_data(&p, 1);
        let s = lab(dir.path(), p, true);
        assert!(matches!(
            install_disk_to_wipe(dir.path(), &s, "k3s1"),
            Err(FailError::UserDisk(_))
        ));
    }

    #[test]
    fn a_directory_is_not_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k3s1-install.raw");
        std::fs::create_dir(&p).unwrap();
        let s = lab(dir.path(), p, false);
        assert!(matches!(
            install_disk_to_wipe(dir.path(), &s, "k3s1"),
            Err(FailError::NotAFile(_))
        ));
    }

    #[test]
    fn a_new_mac_is_qemus_range_and_not_taken() {
        let taken: BTreeSet<String> = ["52:54:00:00:00:01".to_string()].into();
        let mut seq = vec![[0, 0, 1], [0xab, 0xcd, 0xef]].into_iter();
        let mac = new_mac(&taken, || seq.next().unwrap());
        assert_eq!(mac, "52:54:00:ab:cd:ef");
        let mut rng = rand::rng();
        let m = new_mac(&taken, || rand::Rng::random(&mut rng));
        assert!(m.starts_with("52:54:00:") && m.len() == 17, "{m}");
    }

    #[test]
    fn the_mac_is_replaced_in_the_nic_argument_only() {
        let argv: Vec<String> = [
            "-name",
            "k3s1",
            "-device",
            "e1000e,netdev=n0,mac=52:54:00:20:00:21,bootindex=2",
            "-device",
            "virtio-net,netdev=n1,mac=52:54:00:20:00:210",
        ]
        .map(String::from)
        .to_vec();
        let out = with_mac(&argv, "52:54:00:20:00:21", "52:54:00:ab:cd:ef").unwrap();
        assert_eq!(out[3], "e1000e,netdev=n0,mac=52:54:00:ab:cd:ef,bootindex=2");
        assert_eq!(out[5], argv[5], "a longer MAC is another NIC");
        assert_eq!(
            with_mac(&argv, "52:54:00:99:99:99", "52:54:00:ab:cd:ef"),
            None
        );
        // The inventory may spell it in capitals.
        assert!(
            with_mac(
                &argv,
                "52:54:00:20:00:21".to_uppercase().as_str(),
                "52:54:00:00:00:02"
            )
            .is_some()
        );
    }
}
