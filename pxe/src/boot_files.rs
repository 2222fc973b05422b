//! The iPXE binaries the firmware fetches over TFTP, read once at start and served from memory.
//!
//! The folder is operator configuration, not client input, so its symlinks are followed here:
//! Debian's `ipxe` package ships `/usr/lib/ipxe/ipxe.efi` as a link to `/boot/ipxe.efi`, which a
//! root-confined file server (rightly) refuses. Client paths never touch the filesystem: a
//! request names one of the loaded files or gets "file not found". Loading first also means
//! nothing under the folder has to be readable after root is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::content::{BoxFuture, Content, Provider, ProviderError, relative_path};

/// Larger files in the folder (ISO images) are not boot files; skip them.
const MAX_FILE: u64 = 16 << 20;

pub struct BootFiles {
    files: BTreeMap<String, Arc<[u8]>>,
}

impl BootFiles {
    pub fn load(dir: &Path) -> std::io::Result<BootFiles> {
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            // metadata() follows symlinks: a dangling link is skipped, not fatal.
            let Ok(meta) = std::fs::metadata(e.path()) else {
                continue;
            };
            if meta.is_file() && meta.len() <= MAX_FILE {
                files.insert(name, std::fs::read(e.path())?.into());
            }
        }
        Ok(BootFiles { files })
    }

    /// Serve the file at `path` (operator configuration, symlinks followed) as `name`: the
    /// signed shim and GRUB of the Secure Boot chain, under the names the chain asks for.
    pub fn add(&mut self, name: &str, path: &Path) -> std::io::Result<()> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return Err(std::io::Error::other(
                "not a boot file (a regular file up to 16 MiB)",
            ));
        }
        self.files
            .insert(name.to_string(), std::fs::read(path)?.into());
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn get(&self, requested: &str) -> Option<Arc<[u8]>> {
        // Firmware asks for `undionly.kpxe` or `/undionly.kpxe`; only top-level names exist.
        let rel = relative_path(requested).ok()?;
        let name = rel.to_str()?;
        self.files.get(name).cloned()
    }
}

impl Provider for BootFiles {
    fn open<'a>(
        &'a self,
        _client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>> {
        Box::pin(async move {
            self.get(path)
                .map(Content::from_bytes)
                .ok_or(ProviderError::NotFound)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_operator_symlinks_but_serves_only_top_level_names() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("ipxe.efi"), b"EFI").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("undionly.kpxe"), b"KPXE").unwrap();
        std::os::unix::fs::symlink(outside.path().join("ipxe.efi"), dir.path().join("ipxe.efi"))
            .unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("dangling.efi")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"x").unwrap();
        let b = BootFiles::load(dir.path()).unwrap();
        assert_eq!(&*b.get("ipxe.efi").unwrap(), b"EFI");
        assert_eq!(&*b.get("/undionly.kpxe").unwrap(), b"KPXE");
        assert!(b.get("sub/x").is_none());
        assert!(b.get("../undionly.kpxe").is_none());
        assert!(b.get("dangling.efi").is_none());
        assert_eq!(b.names().collect::<Vec<_>>(), ["ipxe.efi", "undionly.kpxe"]);
    }
}
