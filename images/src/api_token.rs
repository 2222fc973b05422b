//! The operator API token of `pxe serve`: where it lives, how the server creates it, and how
//! every client (`pxe status|arm|disarm`, `builder rebuild`) finds it. One definition for both
//! sides, so a client looks exactly where the server wrote it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The token's file name in the server's state folder.
pub const TOKEN_FILE: &str = "api-token";
/// The environment variable clients read the token from.
pub const TOKEN_ENV: &str = "IRONSEED_API_TOKEN";
/// Shortest token accepted from a file or the environment: 128 bits as hex.
const MIN_LEN: usize = 32;
/// Longest: a token file is a token, not a document.
const MAX_LEN: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not an API token (want {MIN_LEN} to {MAX_LEN} printable characters on one line)"
    )]
    Malformed { path: PathBuf },
    #[error("{path}: readable by other users (mode {mode:o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
}

/// The state folder `pxe serve` uses by default: /var/lib/ironseed/pxe as root, else
/// $XDG_STATE_HOME/ironseed/pxe (~/.local/state/ironseed/pxe).
pub fn default_state_dir(root: bool) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/ironseed/pxe");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ironseed/pxe")
}

fn valid(t: &str) -> bool {
    (MIN_LEN..=MAX_LEN).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic())
}

/// Read a token file: one line, owner-only.
pub fn read(path: &Path) -> Result<String, TokenError> {
    use std::os::unix::fs::MetadataExt;
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    // O_NOFOLLOW: pxe reads this as root before it drops privileges; a symlink planted in the
    // state folder must not make it read another file.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if meta.mode() & 0o077 != 0 {
        return Err(TokenError::Exposed {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.len() > MAX_LEN as u64 + 2 {
        return Err(TokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(io)?;
    let t = text.trim_end_matches(['\n', '\r']);
    if !valid(t) {
        return Err(TokenError::Malformed {
            path: path.to_path_buf(),
        });
    }
    Ok(t.to_string())
}

/// The server side: the token in `path`, or a new 256-bit one written there with mode 0600
/// from creation (`O_CREAT|O_EXCL`, never a chmod after the fact). `true` when it was created.
pub fn load_or_create(path: &Path) -> Result<(String, bool), TokenError> {
    use rand::Rng;
    let io = |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    };
    match read(path) {
        Ok(t) => return Ok((t, false)),
        Err(TokenError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token = crate::bundle::hex(&bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok((token, true))
}

/// The client side: `--api-token-file FILE` if given, else `$IRONSEED_API_TOKEN`, else the
/// token file of a local `pxe serve` (root's state folder, then this user's) when readable.
/// `None` when there is none: the request goes without one and the server's 401 says why.
pub fn resolve(file: Option<&Path>) -> Result<Option<String>, TokenError> {
    if let Some(f) = file {
        return read(f).map(Some);
    }
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        let t = t.trim().to_string();
        if !valid(&t) {
            return Err(TokenError::Malformed {
                path: PathBuf::from(format!("${TOKEN_ENV}")),
            });
        }
        return Ok(Some(t));
    }
    for dir in [default_state_dir(true), default_state_dir(false)] {
        match read(&dir.join(TOKEN_FILE)) {
            Ok(t) => return Ok(Some(t)),
            Err(TokenError::Io { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Constant-time equality of two secrets (the time does not depend on where they differ).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    // Comparing fixed-size digests also hides the length of the expected secret.
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_owner_only_once_then_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(TOKEN_FILE);
        let (t, created) = load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(t.len(), 64, "256 bits as hex");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = load_or_create(&p).unwrap();
        assert_eq!((again, created), (t, false));
    }

    #[test]
    fn a_world_readable_or_odd_token_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        std::fs::write(&p, "a".repeat(40)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&p), Err(TokenError::Exposed { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&p).unwrap(), "a".repeat(40));
        std::fs::write(&p, "short").unwrap();
        assert!(matches!(read(&p), Err(TokenError::Malformed { .. })));
        std::fs::write(&p, format!("{}\x1b[2J", "a".repeat(40))).unwrap();
        assert!(matches!(read(&p), Err(TokenError::Malformed { .. })));
    }

    #[test]
    fn a_symlinked_token_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::write(&real, "a".repeat(40)).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join(TOKEN_FILE);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(read(&link), Err(TokenError::Io { .. })));
        assert!(read(&real).is_ok());
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert!(!secrets_equal("", "a"));
    }
}
