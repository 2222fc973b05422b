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
    // The cause is the error's source: anyhow prints it after the path (once).
    #[error("{}", path.display())]
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

/// The staging folder of a write in progress: removed on every way out (error, panic) unless
/// the write completed. It holds the new bundle's secrets, so none may be left behind.
struct Staging {
    path: PathBuf,
    done: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Create `path` with exactly `mode`, never wider at any moment: the mode is given to `open`
/// (`O_CREAT|O_EXCL`), so a secret file is never readable by others, not even between its
/// creation and a chmod. The umask can only take bits away; those are put back on the open file
/// (widening to the final mode, never beyond it).
fn create_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o7777 != mode {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.write_all(bytes)
}

/// A folder with exactly `mode` (the umask may have narrowed it).
fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(mode).create(path)?;
    if std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
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
    // mkdtemp makes it 0700: nobody else can look in while it fills up. It becomes 0755 (what
    // pxe and the operator read) only once every file is written with its final mode.
    let mut staging = Staging {
        path: tempfile::Builder::new()
            .prefix(&format!(".{name}.new-"))
            .tempdir_in(&parent)
            .map_err(io(&parent))?
            .keep(),
        done: false,
    };
    let tmp = staging.path.clone();
    for (rel, f) in &bundle.files {
        let p = tmp.join(rel);
        let mut dirs: Vec<&Path> = p
            .parent()
            .into_iter()
            .flat_map(Path::ancestors)
            .take_while(|d| *d != tmp)
            .collect();
        dirs.reverse();
        for d in dirs {
            if !d.is_dir() {
                create_dir(d, 0o755).map_err(io(d))?;
            }
        }
        create_file(&p, &f.bytes, f.mode).map_err(io(&p))?;
    }
    // One syncfs instead of an fsync per file: every byte is on disk before the swap makes the
    // new bundle visible, at a fraction of the cost for thousands of small files.
    let dirfd = std::fs::File::open(&tmp).map_err(io(&tmp))?;
    nix::unistd::syncfs(&dirfd).map_err(|e| BundleError::Io {
        path: tmp.clone(),
        source: std::io::Error::from(e),
    })?;
    dirfd
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(io(&tmp))?;
    if out.exists() {
        // Swap the two folders in one step; the old bundle ends up at the temporary name and
        // the guard removes it.
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            out,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| BundleError::Io {
            path: out.to_path_buf(),
            source: std::io::Error::from(e),
        })?;
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        staging.done = true;
    } else {
        std::fs::rename(&tmp, out).map_err(io(out))?;
        staging.done = true;
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
