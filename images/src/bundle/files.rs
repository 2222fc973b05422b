//! Reading a bundle folder: every file `SHA256SUMS` lists, checked against its sum. One reader
//! for `pxe` (which may run it as root, in `pxe bundle-reader`) and `builder usb image`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::hex;

/// The checksum list of a bundle.
pub const SUMS: &str = "SHA256SUMS";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{0}: checksum mismatch with SHA256SUMS (a partial copy or an edited file?); re-render the bundle"
    )]
    Checksum(String),
    #[error("{0}: listed in SHA256SUMS but missing")]
    Missing(String),
    #[error(
        "{0}: a symbolic link, or a path in SHA256SUMS that leaves the bundle (builder writes only regular files)"
    )]
    Escape(String),
    #[error("SHA256SUMS line {0}: not `<sha256>  <path>`; re-render the bundle")]
    SumsLine(usize),
    #[error("SHA256SUMS: more than {0} entries")]
    TooMany(usize),
    #[error("{0}: not a regular file (builder writes only regular files)")]
    NotRegular(String),
    #[error(
        "{rel}: too large (a bundle file may have {file_bytes} bytes, all together {total_bytes})"
    )]
    TooLarge {
        rel: String,
        file_bytes: u64,
        total_bytes: u64,
    },
}

/// sha256 of `bytes` as lower-case hex.
pub fn digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `SHA256SUMS` for `files` (path, bytes), in the order given, as sha256sum(1) writes it.
pub fn sums_text<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    files
        .into_iter()
        .map(|(p, b)| format!("{}  {p}\n", digest(b)))
        .collect()
}

/// The entries of a `SHA256SUMS` text: (sha256, path) per line, blank lines skipped; paths
/// never absolute, never with `..`.
pub fn parse_sums(text: &str, max_entries: usize) -> Result<Vec<(&str, &str)>, FilesError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= max_entries {
            return Err(FilesError::TooMany(max_entries));
        }
        let (want, rel) = parse_sums_line(line).ok_or(FilesError::SumsLine(n + 1))?;
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(FilesError::Escape(rel.into()));
        }
        out.push((want, rel));
    }
    Ok(out)
}

/// Caps on what [`read_files`] keeps in memory. A bundle is a plan, seeds and boot scripts (a few
/// KiB a node; USB images are skipped), so these are far above any real bundle.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Per file, `SHA256SUMS` included.
    pub file_bytes: u64,
    /// All files together.
    pub total_bytes: u64,
    /// Lines of `SHA256SUMS`.
    pub entries: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            file_bytes: 64 << 20,
            total_bytes: 256 << 20,
            entries: 100_000,
        }
    }
}

/// Read every file `SHA256SUMS` lists and check it against its sum.
pub fn read_files(dir: &Path) -> Result<BTreeMap<String, std::sync::Arc<[u8]>>, FilesError> {
    read_files_limited(dir, ReadLimits::default())
}

/// [`read_files`] with explicit caps.
///
/// This runs as root in `pxe bundle-reader`, over a folder its owner can change at any time, so:
/// every file (`SHA256SUMS` included) is opened with openat2(2) relative to one descriptor of
/// the folder with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, which makes the kernel refuse a
/// symbolic link or `..` anywhere in the path at the moment of the open (checking a path first
/// and opening it afterwards can be raced); only what the descriptor shows to be a regular file
/// under the size cap is read; and errors name paths and line numbers, never file content.
pub fn read_files_limited(
    dir: &Path,
    limits: ReadLimits,
) -> Result<BTreeMap<String, std::sync::Arc<[u8]>>, FilesError> {
    let root = std::fs::File::open(dir).map_err(|source| FilesError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut total = 0u64;
    let sums = read_beneath(&root, dir, "SHA256SUMS", limits, &mut total)?;
    let sums = std::str::from_utf8(&sums).map_err(|e| {
        let line = sums[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        FilesError::SumsLine(line + 1)
    })?;
    let mut files: BTreeMap<String, std::sync::Arc<[u8]>> = BTreeMap::new();
    for (want, rel) in parse_sums(sums, limits.entries)? {
        // USB seed images (`builder render --usb`, 1 MiB a node) are for sticks, never served:
        // keeping them in memory would cost ~1 GiB at 1000 nodes.
        if rel.starts_with("usb/") {
            continue;
        }
        let bytes = read_beneath(&root, dir, rel, limits, &mut total)?;
        if digest(&bytes) != want {
            return Err(FilesError::Checksum(rel.into()));
        }
        files.insert(rel.to_string(), bytes.into());
    }
    Ok(files)
}

/// `<64 hex digits>  <path>` as sha256sum(1) writes it, with a path free of control
/// characters (it is echoed in errors and logs).
fn parse_sums_line(line: &str) -> Option<(&str, &str)> {
    let (want, rel) = line.split_once("  ")?;
    let hex_ok = want.len() == 64 && want.bytes().all(|b| b.is_ascii_hexdigit());
    let rel_ok = !rel.is_empty() && rel.len() <= 4096 && !rel.chars().any(char::is_control);
    (hex_ok && rel_ok).then_some((want, rel))
}

/// One file of the bundle, opened beneath `root` without following any symbolic link.
fn read_beneath(
    root: &std::fs::File,
    dir: &Path,
    rel: &str,
    limits: ReadLimits,
    total: &mut u64,
) -> Result<Vec<u8>, FilesError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::io::Read;
    // O_NONBLOCK: a FIFO named in SHA256SUMS must be refused below, not wait for a writer.
    // O_NOCTTY: a terminal must not become this process's controlling terminal.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(root, rel, how).map_err(|e| match e {
        nix::errno::Errno::ENOENT => FilesError::Missing(rel.into()),
        // ELOOP: a symbolic link on the way; EXDEV: the path leaves the folder.
        nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => FilesError::Escape(rel.into()),
        e => FilesError::Io {
            path: dir.join(rel),
            source: e.into(),
        },
    })?;
    let file = std::fs::File::from(fd);
    let io = |source| FilesError::Io {
        path: dir.join(rel),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(FilesError::NotRegular(rel.into()));
    }
    let too_big = || FilesError::TooLarge {
        rel: rel.into(),
        file_bytes: limits.file_bytes,
        total_bytes: limits.total_bytes,
    };
    let room = limits
        .file_bytes
        .min(limits.total_bytes.saturating_sub(*total));
    if meta.len() > room {
        return Err(too_big());
    }
    // The size seen by fstat can grow before the read: never read past the cap either way.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(room + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > room {
        return Err(too_big());
    }
    *total += bytes.len() as u64;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bundle(dir: &Path, files: &[(&str, &[u8])]) {
        let mut sums = String::new();
        for (rel, bytes) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            sums.push_str(&format!("{}  {rel}\n", digest(bytes)));
        }
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    }

    /// Protects files outside the bundle from the root bundle reader: a symbolic link in
    /// the bundle is refused, not followed.
    #[test]
    fn a_symlink_out_of_the_bundle_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"{}").unwrap();
        write_bundle(d.path(), &[("plan.json", b"{}")]);
        std::fs::remove_file(d.path().join("plan.json")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), d.path().join("plan.json"))
            .unwrap();
        assert!(matches!(
            read_files(d.path()),
            Err(FilesError::Escape(p)) if p == "plan.json"
        ));
        // A link that stays inside the bundle is refused too: builder writes no links, and
        // "inside" would have to be checked again at the open anyway.
        std::fs::write(d.path().join("real.json"), b"{}").unwrap();
        std::fs::remove_file(d.path().join("plan.json")).unwrap();
        std::os::unix::fs::symlink("real.json", d.path().join("plan.json")).unwrap();
        assert!(matches!(read_files(d.path()), Err(FilesError::Escape(_))));
    }

    const SECRET: &str = "root:$6$secret-hash-of-a-root-only-file";

    /// Protects root-only files from leaking through a 409 body of `POST /api/v1/reload`:
    /// SHA256SUMS replaced by a symbolic link to such a file is refused, and no error quotes
    /// what a SHA256SUMS line says.
    #[test]
    fn no_error_quotes_a_root_only_file() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        write_bundle(d.path(), &[("plan.json", b"{}")]);
        std::fs::remove_file(d.path().join("SHA256SUMS")).unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("SHA256SUMS")).unwrap();
        let e = read_files(d.path()).unwrap_err();
        assert!(
            matches!(e, FilesError::Escape(ref p) if p == "SHA256SUMS"),
            "{e}"
        );
        assert!(!e.to_string().contains("secret-hash"), "{e}");

        // The same content as a regular SHA256SUMS: the error names the line, not its text.
        std::fs::remove_file(d.path().join("SHA256SUMS")).unwrap();
        let sums = format!("{}  plan.json\n{SECRET}\n", hex(&Sha256::digest(b"{}")));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        let e = read_files(d.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SHA256SUMS line 2: not `<sha256>  <path>`; re-render the bundle"
        );
        // Nor the path of a line whose path carries control characters.
        let sums = format!("{}  plan\x1b]0;{SECRET}\x07\n", hex(&Sha256::digest(b"{}")));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        let e = read_files(d.path()).unwrap_err();
        assert!(matches!(e, FilesError::SumsLine(1)), "{e}");
    }

    /// Protects against the check-then-open race of a root reader: while one thread swaps a
    /// bundle file between a regular file and a symbolic link to a root-only file, loads either
    /// fail or return the bundle's own bytes, never the outside file's. SHA256SUMS lists the
    /// outside file's sum, so reading it would even pass verification: with a check-then-read
    /// reader this test sees the secret returned.
    #[test]
    fn swapping_a_file_for_a_symlink_never_serves_the_outside_file() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, SECRET).unwrap();
        let sums = format!("{}  plan.json\n", hex(&Sha256::digest(SECRET.as_bytes())));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        std::fs::write(d.path().join("plan.json"), b"{}").unwrap();

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, stop) = (d.path().to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let (target, tmp) = (dir.join("plan.json"), dir.join(".swap"));
                let mut swaps = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && swaps < 200_000 {
                    let _ = std::fs::remove_file(&tmp);
                    if swaps.is_multiple_of(2) {
                        std::os::unix::fs::symlink(&secret, &tmp).unwrap();
                    } else {
                        std::fs::write(&tmp, b"{}").unwrap();
                    }
                    std::fs::rename(&tmp, &target).unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        let t0 = std::time::Instant::now();
        let (mut loads, mut refused, mut mismatched) = (0u32, 0u32, 0u32);
        let enough = |l, r, m| l >= 2_000 && r > 0 && m > 0;
        while !enough(loads, refused, mismatched)
            && t0.elapsed() < std::time::Duration::from_secs(2)
        {
            loads += 1;
            match read_files(d.path()) {
                Ok(files) => panic!(
                    "load {loads} returned {:?}: the outside file was read",
                    String::from_utf8_lossy(&files["plan.json"])
                ),
                Err(e) => {
                    assert!(!e.to_string().contains("secret-hash"), "{e}");
                    match e {
                        FilesError::Escape(_) => refused += 1,
                        FilesError::Checksum(_) => mismatched += 1,
                        // The moment between remove and rename of the swap.
                        FilesError::Missing(_) => {}
                        e => panic!("unexpected error {e}"),
                    }
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        eprintln!("{loads} loads, {swaps} swaps: {refused} links refused, {mismatched} real files");
        assert!(
            refused > 0 && mismatched > 0,
            "the swap never raced the loads"
        );
    }

    /// Protects the reader from hanging (a FIFO waits for a writer) and from reading things
    /// that are not bundle files (devices, folders): only regular files are accepted.
    #[test]
    fn a_fifo_or_folder_in_sha256sums_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        write_bundle(d.path(), &[("plan.json", b"{}")]);
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir(d.path().join("folder")).unwrap();
        for rel in ["fifo", "folder"] {
            let sums = format!("{}  {rel}\n", hex(&Sha256::digest(b"")));
            std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let dir = d.path().to_path_buf();
            std::thread::spawn(move || tx.send(read_files(&dir).map(|_| ())).unwrap());
            let got = rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("reading a bundle listing {rel} blocked"));
            assert!(
                matches!(got, Err(FilesError::NotRegular(ref p)) if p == rel),
                "{got:?}"
            );
        }
    }

    /// Protects the memory of the reader and the server: a file over the per-file cap (even
    /// a sparse one that costs no disk) and a bundle over the total cap are refused.
    #[test]
    fn oversized_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        write_bundle(d.path(), &[("plan.json", b"{}")]);
        let big = std::fs::File::create(d.path().join("big.img")).unwrap();
        big.set_len(ReadLimits::default().file_bytes + 1).unwrap();
        let sums = format!("{}  big.img\n", hex(&Sha256::digest(b"")));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        let e = read_files(d.path()).unwrap_err();
        assert!(
            matches!(e, FilesError::TooLarge { ref rel, .. } if rel == "big.img"),
            "{e}"
        );

        write_bundle(d.path(), &[("a", &[1u8; 600]), ("b", &[2u8; 600])]);
        let limits = ReadLimits {
            file_bytes: 1000,
            total_bytes: 1300,
            entries: 10,
        };
        // SHA256SUMS itself counts (2 lines of 68 bytes): 136 + 600 + 600 > 1300.
        let e = read_files_limited(d.path(), limits).unwrap_err();
        assert!(
            matches!(e, FilesError::TooLarge { ref rel, .. } if rel == "b"),
            "{e}"
        );
        let fewer = ReadLimits {
            entries: 1,
            ..ReadLimits::default()
        };
        assert!(matches!(
            read_files_limited(d.path(), fewer),
            Err(FilesError::TooMany(1))
        ));
        assert_eq!(read_files(d.path()).unwrap().len(), 2);
    }

    #[test]
    fn usb_seed_images_are_not_kept_in_memory() {
        let d = tempfile::tempdir().unwrap();
        write_bundle(
            d.path(),
            &[("plan.json", b"{}"), ("usb/n1-cidata.img", &[0u8; 4096])],
        );
        let files = read_files(d.path()).unwrap();
        assert!(files.contains_key("plan.json"));
        assert!(
            !files.contains_key("usb/n1-cidata.img"),
            "{:?}",
            files.keys()
        );
    }
}
