//! `builder images fetch`: bring a catalog image into the artifacts folder, verified.
//!
//! The source streams into `images/.partial/<file>.part` and is hashed on the way. A broken
//! download resumes from the partial's length with an HTTP Range request; the hash state is
//! rebuilt by hashing the partial first, so the final checksum still covers every byte. Only a
//! download whose sha256 and size match the catalog is renamed into `images/<file>`, followed by
//! its `.sha256` file (what `pxe` publishes to the installer) and a manifest entry. A mismatch
//! discards the partial and never touches an already cached copy. Killing the process (Ctrl-C)
//! leaves the partial in place: everything written to it is on disk, and the next fetch resumes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::catalog::{self, CatalogError, Entry, Source, manifest};
use crate::http::{self, HttpError};

const CHUNK: usize = 1 << 20;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Options {
    /// Fetch even when a verified copy is already present.
    pub force: bool,
    /// Attempts in a row without progress before giving up (a connection that delivered bytes
    /// resets the count, so a slow but working mirror always finishes).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further one, up to a minute.
    pub backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            force: false,
            attempts: 6,
            backoff: Duration::from_secs(1),
        }
    }
}

/// What a fetch reports while it runs, for a progress bar or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Checking a cached copy (hashing it) before deciding whether to fetch.
    Checking { path: PathBuf },
    /// The transfer starts; `resume_from` bytes of an earlier partial are kept (and were hashed).
    Start { total: u64, resume_from: u64 },
    /// Bytes of the file now in the partial.
    Progress { done: u64 },
    /// A transient failure; the next attempt starts after `delay`.
    Retry {
        attempt: u32,
        attempts: u32,
        error: String,
        delay: Duration,
    },
    /// The partial was dropped and the transfer starts over from byte 0.
    Restart { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A copy with the catalog's sha256 and size is already there; nothing was downloaded.
    AlreadyPresent { path: PathBuf },
    Fetched {
        path: PathBuf,
        /// Bytes of an earlier partial that were kept.
        resumed_from: u64,
        /// Bytes read from the source by this fetch.
        transferred: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: https sources are not supported yet (no TLS client in ironseed): mirror the image over http, or download it and name the file as the source in a --catalog file"
    )]
    Unsupported { url: String },
    #[error("another fetch of {name} is running (it holds {path})", path = .path.display())]
    Busy { name: String, path: PathBuf },
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{source_}: {message}")]
    Source { source_: String, message: String },
    #[error(
        "{source_}: gave up after {attempts} attempts without progress ({last}); the partial download ({bytes} of {total} bytes) is kept: run the fetch again to resume"
    )]
    Transfer {
        source_: String,
        attempts: u32,
        last: String,
        bytes: u64,
        total: u64,
    },
    #[error(
        "{name}: sha256 mismatch: expected {expected}, got {actual}; the download was discarded{}",
        kept_note(.kept)
    )]
    Checksum {
        name: String,
        expected: String,
        actual: String,
        kept: Option<PathBuf>,
    },
    #[error(
        "{name}: size mismatch: the catalog says {expected} bytes, the source has {actual}; the download was discarded{}",
        kept_note(.kept)
    )]
    Size {
        name: String,
        expected: u64,
        actual: u64,
        kept: Option<PathBuf>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn kept_note(kept: &Option<PathBuf>) -> String {
    kept.as_ref()
        .map(|p| format!(" and the cached copy {} was left untouched", p.display()))
        .unwrap_or_default()
}

/// The state of an entry's file in the artifacts folder, for `builder images list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Missing,
    /// Not there, but an interrupted fetch left this many bytes.
    Partial {
        bytes: u64,
    },
    /// There, with the catalog's size and a `.sha256` file recording the catalog's sha256 (what
    /// a verified fetch writes). Not re-hashed.
    Recorded,
    /// There, and its content was hashed just now and matches.
    Verified,
    /// There but not what the catalog says.
    Stale {
        reason: String,
    },
}

pub fn partial_path(entry: &Entry, artifacts: &Path) -> PathBuf {
    artifacts
        .join("images/.partial")
        .join(format!("{}.part", entry.file_name()))
}

/// Records which sha256 a partial belongs to, so a partial of an older catalog entry is never
/// resumed into a newer one.
fn marker_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_owned();
    s.push(".expect");
    PathBuf::from(s)
}

pub use crate::bundle::hex;

fn hash_reader(r: &mut dyn Read, h: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// sha256 of a file, lowercase hex.
pub fn hash_file(path: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    hash_reader(&mut File::open(path)?, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// The first word of a `sha256sum`-format file, if it is a sha256.
fn recorded_sha256(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let w = text.split_whitespace().next()?.to_ascii_lowercase();
    (w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit())).then_some(w)
}

/// Where `entry` stands in `artifacts`. `deep` re-hashes a present file (slow for big images).
pub fn status(entry: &Entry, artifacts: &Path, deep: bool) -> Status {
    let path = entry.path_in(artifacts);
    let Ok(meta) = std::fs::metadata(&path) else {
        return match std::fs::metadata(partial_path(entry, artifacts)) {
            Ok(m) if m.len() > 0 => Status::Partial { bytes: m.len() },
            _ => Status::Missing,
        };
    };
    if meta.len() != entry.size {
        return Status::Stale {
            reason: format!("{} bytes, the catalog says {}", meta.len(), entry.size),
        };
    }
    match recorded_sha256(&entry.sha256_path_in(artifacts)) {
        None => {
            if !deep {
                return Status::Stale {
                    reason: format!("no {}.sha256", entry.file_name()),
                };
            }
        }
        Some(s) if s != entry.sha256 => {
            return Status::Stale {
                reason: format!("its .sha256 records {s}"),
            };
        }
        Some(_) => {}
    }
    if !deep {
        return Status::Recorded;
    }
    match hash_file(&path) {
        Ok(s) if s == entry.sha256 => Status::Verified,
        Ok(s) => Status::Stale {
            reason: format!("content hashes to {s}"),
        },
        Err(e) => Status::Stale {
            reason: format!("unreadable: {e}"),
        },
    }
}

/// A source opened at some offset.
struct Opened {
    reader: Box<dyn Read + Send>,
    /// Where the stream starts in the file: the requested offset, or 0 when the server ignored
    /// the Range request.
    offset: u64,
    /// The whole file's length as the source declares it, when it does.
    total: Option<u64>,
}

enum OpenError {
    /// Worth another attempt: connection refused or reset, 5xx, timeouts.
    Transient(String),
    Permanent(FetchError),
}

fn open_source(entry: &Entry, from: u64) -> Result<Opened, OpenError> {
    match &entry.source {
        Source::Url(url) if url.starts_with("https://") => {
            Err(OpenError::Permanent(FetchError::Unsupported {
                url: url.clone(),
            }))
        }
        Source::Url(url) => open_http(url, from),
        Source::Path(p) => {
            let perm = |e: io::Error| {
                OpenError::Permanent(FetchError::Source {
                    source_: p.display().to_string(),
                    message: e.to_string(),
                })
            };
            let mut f = File::open(p).map_err(perm)?;
            let total = f.metadata().map_err(perm)?.len();
            let offset = if from <= total { from } else { 0 };
            f.seek(SeekFrom::Start(offset)).map_err(perm)?;
            Ok(Opened {
                reader: Box::new(f),
                offset,
                total: Some(total),
            })
        }
    }
}

fn open_http(url: &str, from: u64) -> Result<Opened, OpenError> {
    let classify = |e: HttpError| match e {
        HttpError::Io { .. } | HttpError::Malformed { .. } => OpenError::Transient(e.to_string()),
        HttpError::Status { status, .. } if status >= 500 || status == 429 => {
            OpenError::Transient(e.to_string())
        }
        e => OpenError::Permanent(FetchError::Source {
            source_: url.to_string(),
            message: e.to_string(),
        }),
    };
    let range = (from > 0).then_some(from);
    let r = http::get(url, range, &[200, 206, 416]).map_err(classify)?;
    match r.status {
        206 => Ok(Opened {
            total: r.content_length.map(|n| from + n),
            offset: from,
            reader: Box::new(r),
        }),
        // The partial is longer than the server's file: start over and let the size check speak.
        416 => {
            let r = http::get(url, None, &[200]).map_err(classify)?;
            Ok(Opened {
                total: r.content_length,
                offset: 0,
                reader: Box::new(r),
            })
        }
        // 200: a server that ignores Range sends the whole file.
        _ => Ok(Opened {
            total: r.content_length,
            offset: 0,
            reader: Box::new(r),
        }),
    }
}

/// Fetch `entry` into `artifacts`. See the module documentation for the guarantees.
pub fn fetch(
    entry: &Entry,
    artifacts: &Path,
    opts: &Options,
    on: &mut dyn FnMut(Event),
) -> Result<Outcome, FetchError> {
    if let Source::Url(u) = &entry.source
        && u.starts_with("https://")
    {
        return Err(FetchError::Unsupported { url: u.clone() });
    }
    let part = partial_path(entry, artifacts);
    let part_dir = part.parent().expect("partial path has a folder");
    std::fs::create_dir_all(part_dir).map_err(|source| FetchError::Io {
        path: part_dir.to_path_buf(),
        source,
    })?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .map_err(|source| FetchError::Io {
            path: part.clone(),
            source,
        })?;
    // One fetch per image at a time: two writers appending to one partial would corrupt it.
    let mut file =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| FetchError::Busy {
            name: entry.name.clone(),
            path: part.clone(),
        })?;
    let r = fetch_locked(entry, artifacts, opts, on, &mut file);
    // An empty partial (nothing needed fetching, or the source failed before sending a byte) is
    // not worth keeping: `images list` would show it and the folder would collect them. Removed
    // while the lock is held, and only if the path is still this file (not a newer fetch's).
    use std::os::unix::fs::MetadataExt;
    if let (Ok(mine), Ok(now)) = (file.metadata(), std::fs::metadata(&part))
        && mine.len() == 0
        && mine.ino() == now.ino()
        && mine.dev() == now.dev()
    {
        let _ = std::fs::remove_file(marker_path(&part));
        let _ = std::fs::remove_file(&part);
    }
    r
}

fn fetch_locked(
    entry: &Entry,
    artifacts: &Path,
    opts: &Options,
    on: &mut dyn FnMut(Event),
    file: &mut File,
) -> Result<Outcome, FetchError> {
    let dest = entry.path_in(artifacts);
    let part = partial_path(entry, artifacts);
    let marker = marker_path(&part);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { path, source }
    };

    let cached = dest.exists();
    if cached && !opts.force {
        on(Event::Checking { path: dest.clone() });
        let ok = std::fs::metadata(&dest).map(|m| m.len()).ok() == Some(entry.size)
            && hash_file(&dest).ok().as_deref() == Some(entry.sha256.as_str());
        if ok {
            record(entry, artifacts, true)?;
            return Ok(Outcome::AlreadyPresent { path: dest });
        }
    }
    let kept = cached.then(|| dest.clone());

    // A partial of another catalog version (or of unknown origin) is not resumed.
    let mut have = file.metadata().map_err(io_err(&part))?.len();
    let expect = std::fs::read_to_string(&marker).unwrap_or_default();
    if have > entry.size || (have > 0 && expect.trim() != entry.sha256) {
        file.set_len(0).map_err(io_err(&part))?;
        have = 0;
    }
    catalog::write_atomic(&marker, format!("{}\n", entry.sha256).as_bytes())
        .map_err(io_err(&marker))?;
    let mut hash = Sha256::new();
    if have > 0 {
        file.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
        let n = hash_reader(&mut (&*file).take(have), &mut hash).map_err(io_err(&part))?;
        if n != have {
            // The partial shrank under us; nothing sane to resume.
            file.set_len(0).map_err(io_err(&part))?;
            hash = Sha256::new();
            have = 0;
        }
    }
    file.seek(SeekFrom::Start(have)).map_err(io_err(&part))?;
    let resumed_from = have;
    on(Event::Start {
        total: entry.size,
        resume_from: have,
    });

    let discard = |file: &File| {
        let _ = file.set_len(0);
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(&marker);
    };
    let size_error = |actual: u64| FetchError::Size {
        name: entry.name.clone(),
        expected: entry.size,
        actual,
        kept: kept.clone(),
    };
    let mut failures = 0u32;
    let mut transferred = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while have < entry.size {
        let before = have;
        let mut failure = None;
        match open_source(entry, have) {
            Err(OpenError::Permanent(e)) => return Err(e),
            Err(OpenError::Transient(m)) => failure = Some(m),
            Ok(o) => {
                if let Some(t) = o.total
                    && t != entry.size
                {
                    discard(file);
                    return Err(size_error(t));
                }
                if o.offset != have {
                    on(Event::Restart {
                        reason: format!(
                            "the source ignored the request to resume at byte {have}; starting over"
                        ),
                    });
                    file.set_len(0).map_err(io_err(&part))?;
                    file.seek(SeekFrom::Start(0)).map_err(io_err(&part))?;
                    hash = Sha256::new();
                    have = 0;
                }
                // One byte more than the file should have, to notice a longer one.
                let mut r = o.reader.take(entry.size - have + 1);
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            failure = Some(format!("reading: {e}"));
                            break;
                        }
                    };
                    file.write_all(&buf[..n]).map_err(io_err(&part))?;
                    hash.update(&buf[..n]);
                    have += n as u64;
                    transferred += n as u64;
                    on(Event::Progress { done: have });
                }
                if have > entry.size {
                    discard(file);
                    return Err(size_error(have));
                }
                if have < entry.size && failure.is_none() {
                    failure = Some(format!(
                        "the connection closed at byte {have} of {}",
                        entry.size
                    ));
                }
            }
        }
        if let Some(last) = failure {
            if have > before {
                failures = 0;
            }
            failures += 1;
            if failures >= opts.attempts {
                return Err(FetchError::Transfer {
                    source_: entry.source.to_string(),
                    attempts: failures,
                    last,
                    bytes: have,
                    total: entry.size,
                });
            }
            let delay = opts
                .backoff
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            on(Event::Retry {
                attempt: failures + 1,
                attempts: opts.attempts,
                error: last,
                delay,
            });
            std::thread::sleep(delay);
        }
    }

    let actual = hex(&hash.finalize());
    if actual != entry.sha256 {
        discard(file);
        return Err(FetchError::Checksum {
            name: entry.name.clone(),
            expected: entry.sha256.clone(),
            actual,
            kept,
        });
    }
    file.sync_all().map_err(io_err(&part))?;
    // The rename replaces a bad cached copy in one step; the lock stays held until it is done.
    std::fs::rename(&part, &dest).map_err(io_err(&dest))?;
    let _ = std::fs::remove_file(&marker);
    if let Some(dir) = dest.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    record(entry, artifacts, false)?;
    Ok(Outcome::Fetched {
        path: dest,
        resumed_from,
        transferred,
    })
}

/// Write the `.sha256` file and the manifest entry of a verified image; with `only_if_needed`,
/// leave both alone when they already say the right thing.
fn record(entry: &Entry, artifacts: &Path, only_if_needed: bool) -> Result<(), FetchError> {
    let sums = entry.sha256_path_in(artifacts);
    if !only_if_needed || recorded_sha256(&sums).as_deref() != Some(entry.sha256.as_str()) {
        let line = format!("{}  {}\n", entry.sha256, entry.file_name());
        catalog::write_atomic(&sums, line.as_bytes()).map_err(|source| FetchError::Io {
            path: sums.clone(),
            source,
        })?;
    }
    if !only_if_needed || !manifest::read(artifacts)?.contains(entry) {
        manifest::add_entry(artifacts, entry.clone())?;
    }
    Ok(())
}
