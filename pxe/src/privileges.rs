//! Dropping root after the privileged ports are bound: DHCP 67, TFTP 69 and HTTP 80 need root
//! (or CAP_NET_BIND_SERVICE), serving them afterwards does not.
//!
//! Before the drop the state folder is given to the service user. That walk runs as root over a
//! folder the service user could write to on an earlier run, so it never follows a symbolic
//! link (not even for the folder itself), never changes a file that has other hard links (it
//! may be a file outside the folder), never leaves the folder's file system and is capped.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::{Gid, Uid, User, fchown, setgid, setgroups, setuid};

/// The account `pxe serve` switches to by default (pxe/ironseed.sysusers creates it).
pub const SERVICE_USER: &str = "ironseed";

/// How far the ownership walk goes before it refuses: a pxe state folder holds a handful of
/// files, so hitting either limit means `--state` names the wrong folder (`/`, a home folder).
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    pub max_entries: usize,
    pub max_depth: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_entries: 10_000,
            max_depth: 8,
        }
    }
}

/// What the ownership walk did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Walked {
    /// Folders and regular files now owned by the user (the state folder included).
    pub chowned: usize,
    /// Entries left alone: symbolic links, hard-linked files, FIFOs, sockets, devices and
    /// anything on another file system.
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error(
        "no such user `{0}`: create it with `useradd --system --no-create-home --shell /usr/sbin/nologin {0}` \
         (or install pxe/ironseed.sysusers and run systemd-sysusers), or pass --user with an existing \
         unprivileged account"
    )]
    NoUser(String),
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("still able to regain root after dropping to `{0}`; refusing to run")]
    NotDropped(String),
    #[error(
        "{0}: the state folder is a symbolic link (or not a folder); refusing to give it to the \
         service user: pass the real folder as --state"
    )]
    NotAFolder(PathBuf),
    #[error(
        "{path}: more than {} entries or deeper than {} levels; not a pxe state folder? \
         refusing to change its ownership",
        .limits.max_entries, .limits.max_depth
    )]
    TooBig { path: PathBuf, limits: WalkLimits },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> PrivError {
    let what = what.into();
    move |source| PrivError::Sys { what, source }
}

/// Give the state folder `dirs` to `user` ([`chown_state_dir`]), then switch to that user and its
/// primary group for good. Returns the uid/gid now in effect.
pub fn drop_to(user: &str, dirs: &[&Path]) -> Result<(Uid, Gid), PrivError> {
    let u = User::from_name(user)
        .map_err(sys(format!("looking up user {user}")))?
        .ok_or_else(|| PrivError::NoUser(user.into()))?;
    for d in dirs {
        chown_state_dir(d, u.uid, u.gid, WalkLimits::default())?;
    }
    // Order matters: supplementary groups and gid while still root, uid last.
    setgroups(&[u.gid]).map_err(sys("setgroups"))?;
    setgid(u.gid).map_err(sys("setgid"))?;
    setuid(u.uid).map_err(sys("setuid"))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivError::NotDropped(user.into()));
    }
    Ok((u.uid, u.gid))
}

/// Open `dir` as a folder without following a symbolic link in its last component.
fn open_dir_nofollow(dir: &Path) -> Result<OwnedFd, PrivError> {
    open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on anything else ENOTDIR.
        Errno::ELOOP | Errno::ENOTDIR => PrivError::NotAFolder(dir.to_path_buf()),
        e => PrivError::Sys {
            what: format!("opening {}", dir.display()),
            source: e,
        },
    })
}

/// Make sure the state folder exists and is owner-only (it holds node state and secrets):
/// created 0700 if missing (parents with the default mode), tightened to 0700 if group or
/// others have access. A symbolic link as the folder itself is refused, as by the walk.
pub fn private_dir(dir: &Path) -> Result<(), PrivError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PrivError::Io {
            what: format!("creating {}", parent.display()),
            source,
        })?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(PrivError::Io {
                what: format!("creating {}", dir.display()),
                source,
            });
        }
    }
    let fd = open_dir_nofollow(dir)?;
    let st = fstat(&fd).map_err(sys(format!("stat {}", dir.display())))?;
    if st.st_mode & 0o077 != 0 {
        fchmod(&fd, Mode::from_bits_truncate(0o700))
            .map_err(sys(format!("chmod 0700 {}", dir.display())))?;
    }
    Ok(())
}

/// Give the state folder and everything in it to `uid:gid` without following symbolic links:
/// the folder is opened with O_NOFOLLOW (a symbolic link there is refused) and every entry is
/// looked at relative to its parent's descriptor, so renaming things during the walk cannot
/// redirect it. Regular files are opened (O_NOFOLLOW) and changed through their descriptor
/// after checking the descriptor is still a regular file with a single link: a hard link to,
/// say, /etc/shadow placed in the folder is left alone. Symbolic links, FIFOs, sockets,
/// devices and other file systems are skipped.
pub fn chown_state_dir(
    dir: &Path,
    uid: Uid,
    gid: Gid,
    limits: WalkLimits,
) -> Result<Walked, PrivError> {
    let fd = open_dir_nofollow(dir)?;
    let st = fstat(&fd).map_err(sys(format!("stat {}", dir.display())))?;
    fchown(&fd, Some(uid), Some(gid)).map_err(sys(format!("chown {}", dir.display())))?;
    let mut w = Walk {
        top: dir,
        dev: st.st_dev,
        uid,
        gid,
        limits,
        entries: 0,
        done: Walked {
            chowned: 1,
            skipped: 0,
        },
    };
    w.folder(fd, dir.to_path_buf(), 1)?;
    Ok(w.done)
}

struct Walk<'a> {
    top: &'a Path,
    dev: u64,
    uid: Uid,
    gid: Gid,
    limits: WalkLimits,
    entries: usize,
    done: Walked,
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

impl Walk<'_> {
    fn too_big(&self) -> PrivError {
        PrivError::TooBig {
            path: self.top.to_path_buf(),
            limits: self.limits,
        }
    }

    fn folder(&mut self, fd: OwnedFd, path: PathBuf, depth: usize) -> Result<(), PrivError> {
        if depth > self.limits.max_depth {
            return Err(self.too_big());
        }
        let mut d = Dir::from_fd(fd).map_err(sys(format!("reading {}", path.display())))?;
        let mut names: Vec<CString> = Vec::new();
        for e in d.iter() {
            let e = e.map_err(sys(format!("reading {}", path.display())))?;
            let name = e.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(self.too_big());
            }
            names.push(name.to_owned());
        }
        for name in names {
            let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let st = match fstatat(d.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since the listing: nothing to give away.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(sys(format!("stat {}", child.display()))(e)),
            };
            let k = kind(&st);
            if st.st_dev != self.dev || (k != SFlag::S_IFDIR && k != SFlag::S_IFREG) {
                self.done.skipped += 1;
                continue;
            }
            // O_NONBLOCK: should the entry have become a FIFO since the stat, opening it must not
            // wait for a writer. O_NOFOLLOW: nor may it have become a symbolic link.
            let flags = OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NOCTTY
                | OFlag::O_NONBLOCK
                | if k == SFlag::S_IFDIR {
                    OFlag::O_DIRECTORY
                } else {
                    OFlag::empty()
                };
            let fd = match openat(d.as_fd(), name.as_c_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {
                    self.done.skipped += 1;
                    continue;
                }
                Err(e) => return Err(sys(format!("opening {}", child.display()))(e)),
            };
            // Decide on what was opened, not on what the name pointed to a moment ago.
            let st = fstat(&fd).map_err(sys(format!("stat {}", child.display())))?;
            let k = kind(&st);
            let single = k == SFlag::S_IFDIR || (k == SFlag::S_IFREG && st.st_nlink == 1);
            if st.st_dev != self.dev || !single {
                self.done.skipped += 1;
                continue;
            }
            fchown(&fd, Some(self.uid), Some(self.gid))
                .map_err(sys(format!("chown {}", child.display())))?;
            self.done.chowned += 1;
            if k == SFlag::S_IFDIR {
                self.folder(fd, child, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Largest state file pxe reads back (`nodes.json`, `leases.json`).
pub const MAX_STATE_FILE: u64 = 64 << 20;

/// Read a file of the state folder the way `std::fs::read` does (same `NotFound`), but safe for
/// root to run on a folder the service user wrote: a symbolic link is refused (`O_NOFOLLOW`),
/// so are FIFOs (opened non-blocking) and anything that is not a regular file, and nothing
/// over [`MAX_STATE_FILE`] is read.
pub fn read_state_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let fd = open(
        path,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    let refuse = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    if !meta.file_type().is_file() {
        return Err(refuse("not a regular file"));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_STATE_FILE) as usize);
    file.take(MAX_STATE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(refuse("larger than a state file can be"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const TO: u32 = 65534;

    /// The walk changes ownership, which only root may do. Skips loudly elsewhere, but not
    /// under CI, which runs as root.
    fn root_or_skip(name: &str) -> bool {
        nix::unistd::geteuid().is_root()
            || crate::test_ci::skip(&format!("{name}: needs root to change ownership"))
    }

    fn owner(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().uid()
    }

    fn walk(p: &Path) -> Result<Walked, PrivError> {
        chown_state_dir(
            p,
            Uid::from_raw(TO),
            Gid::from_raw(TO),
            WalkLimits::default(),
        )
    }

    /// Protects root-owned files outside the state folder: a symbolic link inside it (to a
    /// file or to a folder) is never followed, so its target keeps its owner.
    #[test]
    fn a_symlink_in_the_state_folder_does_not_give_its_target_away() {
        if !root_or_skip("a_symlink_in_the_state_folder_does_not_give_its_target_away") {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::create_dir(outside.path().join("etc")).unwrap();
        std::fs::write(outside.path().join("etc/passwd"), b"x").unwrap();
        std::fs::write(state.path().join("nodes.json"), b"{}").unwrap();
        std::fs::create_dir(state.path().join("sub")).unwrap();
        std::fs::write(state.path().join("sub/leases.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(&secret, state.path().join("nodes.json.link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("etc"), state.path().join("sub/etc"))
            .unwrap();

        let w = walk(state.path()).unwrap();
        assert_eq!(owner(&secret), 0, "the link's target was given away");
        assert_eq!(owner(&outside.path().join("etc")), 0);
        assert_eq!(owner(&outside.path().join("etc/passwd")), 0);
        for p in ["", "nodes.json", "sub", "sub/leases.json"] {
            assert_eq!(owner(&state.path().join(p)), TO, "{p}");
        }
        assert_eq!(
            w,
            Walked {
                chowned: 4,
                skipped: 2
            }
        );
    }

    /// Protects files outside the state folder reached through a hard link (possible where
    /// fs.protected_hardlinks is off, or for files the service user owned once).
    #[test]
    fn a_hard_link_in_the_state_folder_is_left_alone() {
        if !root_or_skip("a_hard_link_in_the_state_folder_is_left_alone") {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let state = base.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let secret = base.path().join("shadow");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::hard_link(&secret, state.join("linked")).unwrap();
        walk(&state).unwrap();
        assert_eq!(owner(&secret), 0);
        assert_eq!(owner(&state), TO);
    }

    /// Protects the target of a state folder that is itself a symbolic link: refused, and the
    /// target keeps its owner.
    #[test]
    fn a_state_folder_that_is_a_symlink_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("etc");
        std::fs::create_dir(&target).unwrap();
        let link = base.path().join("state");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(walk(&link), Err(PrivError::NotAFolder(p)) if p == link));
        assert!(matches!(private_dir(&link), Err(PrivError::NotAFolder(_))));
        assert_eq!(owner(&target), nix::unistd::geteuid().as_raw());
    }

    /// Protects against `--state /` and the like: the walk refuses a folder with more entries
    /// or levels than a state folder has, before changing anything below the top.
    #[test]
    fn the_walk_is_capped() {
        let base = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(base.path().join(format!("f{i}")), b"").unwrap();
        }
        let me = (nix::unistd::getuid(), nix::unistd::getgid());
        let small = WalkLimits {
            max_entries: 4,
            max_depth: 8,
        };
        assert!(matches!(
            chown_state_dir(base.path(), me.0, me.1, small),
            Err(PrivError::TooBig { .. })
        ));
        let deep = base.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        let shallow = WalkLimits {
            max_entries: 100,
            max_depth: 2,
        };
        assert!(matches!(
            chown_state_dir(base.path(), me.0, me.1, shallow),
            Err(PrivError::TooBig { .. })
        ));
        let ok = chown_state_dir(base.path(), me.0, me.1, WalkLimits::default()).unwrap();
        assert_eq!(ok.chowned, 1 + 5 + 3);
    }

    /// Protects the node state and secrets from other local users: the folder is created 0700
    /// and an existing one is tightened to 0700.
    #[test]
    fn the_state_folder_is_created_owner_only() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("var/lib/ironseed/pxe");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_missing_user_is_explained_with_the_command_that_creates_it() {
        let msg = PrivError::NoUser(SERVICE_USER.into()).to_string();
        assert!(
            msg.contains("useradd --system --no-create-home --shell /usr/sbin/nologin ironseed"),
            "{msg}"
        );
    }

    /// Protects root (which reads the state back before dropping) from files the service user
    /// may have placed in its folder: a link to a root-only file is refused rather than read,
    /// a FIFO does not hang the start, an oversized file is not loaded; a missing file is
    /// `NotFound` like `std::fs::read`.
    #[test]
    fn state_files_are_read_without_following_links() {
        let state = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow"), b"root only").unwrap();
        let p = |n: &str| state.path().join(n);
        std::os::unix::fs::symlink(outside.path().join("shadow"), p("nodes.json")).unwrap();
        let e = read_state_file(&p("nodes.json")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_eloop()), "{e}");
        nix::unistd::mkfifo(&p("leases.json"), Mode::S_IRWXU).unwrap();
        let e = read_state_file(&p("leases.json")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let big = std::fs::File::create(p("big.json")).unwrap();
        big.set_len(MAX_STATE_FILE + 1).unwrap();
        assert!(read_state_file(&p("big.json")).is_err());
        let e = read_state_file(&p("missing.json")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        std::fs::write(p("ok.json"), b"{}").unwrap();
        assert_eq!(read_state_file(&p("ok.json")).unwrap(), b"{}");
    }

    fn libc_eloop() -> i32 {
        Errno::ELOOP as i32
    }
}
