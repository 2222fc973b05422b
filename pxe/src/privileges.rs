//! Dropping root after the privileged ports are bound: DHCP 67, TFTP 69 and HTTP 80 need root
//! (or CAP_NET_BIND_SERVICE), serving them afterwards does not.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, chown, setgid, setgroups, setuid};

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("no such user `{0}` (pass --user with an existing unprivileged account)")]
    NoUser(String),
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("still able to regain root after dropping to `{0}`; refusing to run")]
    NotDropped(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> PrivError {
    let what = what.into();
    move |source| PrivError::Sys { what, source }
}

/// Give `dirs` (recursively) to `user`, then switch to that user and its primary group for good.
/// Returns the uid/gid now in effect.
pub fn drop_to(user: &str, dirs: &[&Path]) -> Result<(Uid, Gid), PrivError> {
    let u = User::from_name(user)
        .map_err(sys(format!("looking up user {user}")))?
        .ok_or_else(|| PrivError::NoUser(user.into()))?;
    for d in dirs {
        chown_tree(d, u.uid, u.gid)?;
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

fn chown_tree(p: &Path, uid: Uid, gid: Gid) -> Result<(), PrivError> {
    chown(p, Some(uid), Some(gid)).map_err(sys(format!("chown {}", p.display())))?;
    if p.is_dir()
        && let Ok(rd) = std::fs::read_dir(p)
    {
        for e in rd.flatten() {
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}
