//! The only writer of bundles: everything goes to a temporary folder beside the target, then
//! replaces the old bundle in one atomic `renameat2(RENAME_EXCHANGE)`. A failed render, a full
//! disk or a crash leaves the previous bundle exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::render::{Bundle, PLAN, SUMS};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "refusing to replace {0}: it is not empty and not an ironseed bundle (no {SUMS} and {PLAN}); choose another --out"
    )]
    NotABundle(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// True when `dir` looks like something `write` may replace.
fn replaceable(dir: &Path) -> Result<bool, BundleError> {
    if !dir.exists() {
        return Ok(true);
    }
    if dir.join(SUMS).is_file() && dir.join(PLAN).is_file() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(dir).map_err(io(dir))?.next().is_none())
}

pub fn write(out: &Path, bundle: &Bundle) -> Result<(), BundleError> {
    if !replaceable(out)? {
        return Err(BundleError::NotABundle(out.to_path_buf()));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(io(tmp.path()))?;
    for (rel, f) in &bundle.files {
        let p = tmp.path().join(rel);
        if let Some(d) = p.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(d)
                .map_err(io(d))?;
        }
        std::fs::write(&p, &f.bytes).map_err(io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode)).map_err(io(&p))?;
    }
    // One syncfs instead of an fsync per file: every byte is on disk before the swap makes the
    // new bundle visible, at a fraction of the cost for thousands of small files.
    let dirfd = std::fs::File::open(tmp.path()).map_err(io(tmp.path()))?;
    nix::unistd::syncfs(&dirfd).map_err(|e| BundleError::Io {
        path: tmp.path().to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    let staged = tmp.keep();
    if out.exists() {
        // Swap the two folders in one step; the old bundle ends up at the temporary name.
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staged,
            nix::fcntl::AT_FDCWD,
            out,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| BundleError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::from(e),
        })?;
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    } else {
        std::fs::rename(&staged, out).map_err(io(out))?;
    }
    Ok(())
}

/// Read an existing bundle back (every regular file, relative paths).
pub fn read(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut out = BTreeMap::new();
    fn walk(
        base: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, Vec<u8>>,
    ) -> Result<(), BundleError> {
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let p = e.map_err(io(dir))?.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).map_err(io(&p))?);
            }
        }
        Ok(())
    }
    if dir.exists() {
        walk(dir, dir, &mut out)?;
    }
    Ok(out)
}
