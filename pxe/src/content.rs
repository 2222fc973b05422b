//! What a TFTP (or HTTP) client may read: the [`Provider`] trait and the [`Content`] it
//! returns, and [`FsProvider`] with its confinement rule ([`relative_path`]). Shared by the
//! TFTP server and the boot files, so it sits below both.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::AsyncRead;

/// A boxed future, so [`Provider`] stays usable as `dyn Provider`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bytes of one file to serve.
pub enum Body {
    /// Content already in memory (generated scripts, small files).
    Bytes(Arc<[u8]>),
    /// A regular file, read with pread(2) a window or more at a time.
    File(std::fs::File),
    /// Content streamed from a reader; read in large chunks, not per block.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

/// What a [`Provider`] returns for a request. The size must be known up front:
/// it answers the `tsize` option and tells the server where the last block is.
pub struct Content {
    pub size: u64,
    pub body: Body,
}

impl Content {
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes: Arc<[u8]> = bytes.into();
        Content {
            size: bytes.len() as u64,
            body: Body::Bytes(bytes),
        }
    }

    /// `file` must hold at least `size` bytes; only `size` bytes are sent.
    pub fn from_file(size: u64, file: std::fs::File) -> Self {
        Content {
            size,
            body: Body::File(file),
        }
    }

    /// `reader` must yield at least `size` bytes; only `size` bytes are sent.
    pub fn from_reader(size: u64, reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        Content {
            size,
            body: Body::Reader(Box::new(reader)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Sent to the client as ERROR 1.
    #[error("file not found")]
    NotFound,
    /// Sent to the client as ERROR 2; the reason is only logged.
    #[error("access violation: {0}")]
    AccessViolation(&'static str),
    /// Sent to the client as ERROR 0 "I/O error"; the details are only logged.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Source of the files a TFTP client may read. Given the client's address and the
/// path exactly as requested, return the content or an error. Implementations may
/// generate content per client (e.g. an iPXE script naming the node).
pub trait Provider: Send + Sync {
    fn open<'a>(
        &'a self,
        client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>>;
}

/// Serves regular files below `root`.
///
/// Confinement: a request is split at `/`; `.` and empty components are skipped
/// and any `..` is refused, so a leading `/` means "relative to the root" (PXE
/// firmware sometimes asks for `/undionly.kpxe`, and DHCP option 67 is often
/// written that way). The joined path is then canonicalized and must still lie
/// under the canonical root, which refuses symlinks that point out of the root
/// (every surveyed crate followed them: docs/reference.md "Crate notes"). Symlinks that stay
/// inside the root are served. Known gap: a symlink swapped between the check and the open
/// is not detected; the root is expected to be writable only by the operator.
pub struct FsProvider {
    root: PathBuf,
}

impl FsProvider {
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        Ok(FsProvider {
            root: std::fs::canonicalize(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn open_path(&self, requested: &str) -> Result<Content, ProviderError> {
        let rel = relative_path(requested)?;
        let canon = match tokio::fs::canonicalize(self.root.join(rel)).await {
            Ok(p) => p,
            Err(e) => return Err(map_io(e)),
        };
        if !canon.starts_with(&self.root) {
            return Err(ProviderError::AccessViolation(
                "path resolves outside the root",
            ));
        }
        let file = tokio::fs::File::open(&canon).await.map_err(map_io)?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(ProviderError::AccessViolation("not a regular file"));
        }
        Ok(Content::from_file(meta.len(), file.into_std().await))
    }
}

impl Provider for FsProvider {
    fn open<'a>(
        &'a self,
        _client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>> {
        Box::pin(self.open_path(path))
    }
}

fn map_io(e: io::Error) -> ProviderError {
    match e.kind() {
        // NotADirectory: "file.txt/x". Reported as absent, like a missing file.
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => ProviderError::NotFound,
        io::ErrorKind::PermissionDenied => ProviderError::AccessViolation("permission denied"),
        _ => ProviderError::Io(e),
    }
}

/// The lexical half of the confinement rule: the requested path as a relative
/// path with no `..`, or an error. Pure, so it is tested directly.
pub fn relative_path(requested: &str) -> Result<PathBuf, ProviderError> {
    let mut rel = PathBuf::new();
    for part in requested.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ProviderError::AccessViolation("'..' in path")),
            p => rel.push(p),
        }
    }
    if rel.as_os_str().is_empty() {
        // "/" or "": the root directory itself is not a file.
        return Err(ProviderError::NotFound);
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_rules() {
        let ok = |s: &str| relative_path(s).unwrap();
        assert_eq!(ok("undionly.kpxe"), PathBuf::from("undionly.kpxe"));
        // Leading slash = relative to the root (PXE firmware habit).
        assert_eq!(ok("/undionly.kpxe"), PathBuf::from("undionly.kpxe"));
        assert_eq!(ok("//efi/./snponly.efi"), PathBuf::from("efi/snponly.efi"));
        for bad in ["../etc/passwd", "/../x", "a/../../b", "a/..", ".."] {
            assert!(
                matches!(relative_path(bad), Err(ProviderError::AccessViolation(_))),
                "{bad:?} must be refused"
            );
        }
        for empty in ["", "/", "./", "//."] {
            assert!(matches!(relative_path(empty), Err(ProviderError::NotFound)));
        }
        // A literal file named "..x" is not a parent reference.
        assert_eq!(ok("..x"), PathBuf::from("..x"));
    }
}
