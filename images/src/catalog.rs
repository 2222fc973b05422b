//! The image catalog: which OS images exist, where to get them and what they must hash to.
//!
//! Three layers, later entries with the same name overriding earlier ones:
//! 1. `images/catalog.yaml` of the repository, embedded in the binary;
//! 2. `images/manifest.yaml` in the artifacts folder: images built or fetched on this machine;
//! 3. extra catalog files named on the command line.
//!
//! Each file is parsed into raw structs that keep every value's location, then validated into
//! [`Entry`]; every problem is reported at once with file:line:column and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::write::Compression;

/// The repository's catalog, shipped in the binary.
pub const EMBEDDED: &str = include_str!("../catalog.yaml");
pub const EMBEDDED_NAME: &str = "images/catalog.yaml (embedded)";
/// The local catalog inside the artifacts folder.
pub const MANIFEST: &str = "images/manifest.yaml";

/// The folder `pxe serve --artifacts` serves and `builder images` fills:
/// `/var/lib/ironseed/artifacts` as root, else `$XDG_DATA_HOME/ironseed/artifacts`
/// (`~/.local/share/ironseed/artifacts`).
pub fn default_artifacts_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/ironseed/artifacts");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ironseed/artifacts")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An uncompressed raw disk image, `<name>.raw`.
    Raw,
    /// A zstd-compressed raw disk image, `<name>.raw.zst`.
    RawZst,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::RawZst => "raw.zst",
        }
    }

    pub fn compression(self) -> Compression {
        match self {
            Kind::Raw => Compression::None,
            Kind::RawZst => Compression::Zstd,
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `http://` or `https://` URL, as written.
    Url(String),
    /// A local file; relative paths were resolved against the folder of the catalog file that
    /// names them.
    Path(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(u) => f.write_str(u),
            Source::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One validated catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A safe file name: `[A-Za-z0-9][A-Za-z0-9._-]*`, no `..`.
    pub name: String,
    pub kind: Kind,
    pub source: Source,
    /// sha256 of the source file (compressed, for `raw.zst`), lowercase hex.
    pub sha256: String,
    /// Bytes of the source file.
    pub size: u64,
    pub description: Option<String>,
}

impl Entry {
    /// The file name in `<artifacts>/images/`: `<name>.raw` or `<name>.raw.zst`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.kind.as_str())
    }

    /// `<artifacts>/images/<file>`.
    pub fn path_in(&self, artifacts: &Path) -> PathBuf {
        artifacts.join("images").join(self.file_name())
    }

    /// `<artifacts>/images/<file>.sha256`, the `sha256sum`-format checksum `pxe` publishes.
    pub fn sha256_path_in(&self, artifacts: &Path) -> PathBuf {
        artifacts
            .join("images")
            .join(format!("{}.sha256", self.file_name()))
    }
}

/// One problem in a catalog file. Line and column are 1-based; 0 means unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// Field path, e.g. `images[1].sha256`; empty for document-level problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{}", lines(.0))]
    Invalid(Vec<Problem>),
    #[error("reading {path}: {source}", path = .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}", path = .path.display())]
    Write { path: PathBuf, source: io::Error },
}

// ---- layer one: the file as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    images: Vec<Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Spanned<String>,
    kind: Spanned<String>,
    source: Spanned<String>,
    sha256: Spanned<String>,
    size: Spanned<u64>,
    #[serde(default)]
    description: Option<String>,
}

/// What the manifest is written as; the same shape the reader accepts.
#[derive(Debug, Serialize)]
struct OutCatalog<'a> {
    images: Vec<OutEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct OutEntry<'a> {
    name: &'a str,
    kind: &'a str,
    source: String,
    sha256: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

// ---- layer two: validation ----

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 100
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.contains("..")
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_source(text: &str, base: Option<&Path>) -> Result<Source, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty source: give an http(s) URL or a file path".into());
    }
    if let Some((scheme, rest)) = t.split_once("://") {
        if !matches!(scheme, "http" | "https") {
            return Err(format!(
                "unsupported URL scheme `{scheme}`: only http://, https:// or a file path"
            ));
        }
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("`{t}` has no host"));
        }
        if rest.contains(char::is_whitespace) {
            return Err(format!("`{t}` contains whitespace"));
        }
        return Ok(Source::Url(t.to_string()));
    }
    let p = Path::new(t);
    let p = match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    };
    // Resolved now, so the entry means the same file whatever the working directory later is.
    Ok(Source::Path(if base.is_some() {
        std::path::absolute(&p).unwrap_or(p)
    } else {
        p
    }))
}

fn problem<T>(file: &str, at: &Spanned<T>, field: String, message: String) -> Problem {
    Problem {
        file: file.to_string(),
        line: at.referenced.line(),
        column: at.referenced.column(),
        field,
        message,
    }
}

fn yaml_problem(file: &str, e: &serde_saphyr::Error) -> Problem {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let mut message = e.without_snippet().to_string();
    // serde-saphyr prefixes "line L column C: "; the problem carries the location itself.
    if let Some(rest) = message.strip_prefix(&format!("line {line} column {column}: ")) {
        message = rest.to_string();
    }
    Problem {
        file: file.to_string(),
        line,
        column,
        field: String::new(),
        message: message
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Parse and validate one catalog file. `base` is the folder relative source paths are resolved
/// against (the file's own folder; `None` leaves them relative to the working directory).
pub fn parse(file: &str, text: &str, base: Option<&Path>) -> Result<Vec<Entry>, CatalogError> {
    let raw: RawCatalog = serde_saphyr::from_str(text)
        .map_err(|e| CatalogError::Invalid(vec![yaml_problem(file, &e)]))?;
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for (i, item) in raw.images.iter().enumerate() {
        let r = &item.value;
        let field = |f: &str| format!("images[{i}].{f}");
        let before = problems.len();
        let name = r.name.value.trim();
        if !valid_name(name) {
            problems.push(problem(
                file,
                &r.name,
                field("name"),
                format!(
                    "`{name}` is not a safe file name: letters, digits, `.`, `_`, `-`, starting with a letter or digit, no `..`, at most 100 characters"
                ),
            ));
        } else if let Some(line) = seen.insert(name.to_string(), r.name.referenced.line()) {
            problems.push(problem(
                file,
                &r.name,
                field("name"),
                format!("`{name}` is listed twice in this file (also on line {line})"),
            ));
        }
        let kind = match r.kind.value.trim() {
            "raw" => Some(Kind::Raw),
            "raw.zst" => Some(Kind::RawZst),
            other => {
                problems.push(problem(
                    file,
                    &r.kind,
                    field("kind"),
                    format!("unknown kind `{other}`: expected `raw` or `raw.zst`"),
                ));
                None
            }
        };
        let sha = r.sha256.value.trim().to_ascii_lowercase();
        if !valid_sha256(&sha) {
            problems.push(problem(
                file,
                &r.sha256,
                field("sha256"),
                format!(
                    "`{}` is not a sha256: expected 64 hex digits",
                    r.sha256.value
                ),
            ));
        }
        if r.size.value == 0 {
            problems.push(problem(
                file,
                &r.size,
                field("size"),
                "size must be the source file's length in bytes, not 0".into(),
            ));
        }
        let source = match parse_source(&r.source.value, base) {
            Ok(s) => Some(s),
            Err(m) => {
                problems.push(problem(file, &r.source, field("source"), m));
                None
            }
        };
        if problems.len() == before
            && let (Some(kind), Some(source)) = (kind, source)
        {
            entries.push(Entry {
                name: name.to_string(),
                kind,
                source,
                sha256: sha,
                size: r.size.value,
                description: r.description.clone(),
            });
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(CatalogError::Invalid(problems))
    }
}

/// Where an entry of the loaded catalog came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub entry: Entry,
    /// The catalog file that defined it (the last one, when overridden).
    pub origin: String,
}

/// The merged catalog: embedded, then the artifacts folder's manifest, then extra files.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, Listed>,
}

impl Catalog {
    /// Load all layers. A missing manifest is normal (nothing fetched yet); a missing extra file
    /// is an error. Problems of every file are reported together.
    pub fn load(artifacts: &Path, extra: &[PathBuf]) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        let mut problems = Vec::new();
        let mut layer = |c: &mut Catalog, r: Result<Vec<Entry>, CatalogError>, origin: &str| {
            match r {
                Ok(es) => c.extend(es, origin),
                Err(CatalogError::Invalid(ps)) => problems.extend(ps),
                Err(e) => return Err(e),
            }
            Ok(())
        };
        layer(&mut c, parse(EMBEDDED_NAME, EMBEDDED, None), EMBEDDED_NAME)?;
        let manifest = artifacts.join(MANIFEST);
        match std::fs::read_to_string(&manifest) {
            Ok(text) => {
                let name = manifest.display().to_string();
                layer(&mut c, parse(&name, &text, manifest.parent()), &name)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CatalogError::Read {
                    path: manifest,
                    source,
                });
            }
        }
        for p in extra {
            let text = std::fs::read_to_string(p).map_err(|source| CatalogError::Read {
                path: p.clone(),
                source,
            })?;
            let name = p.display().to_string();
            layer(&mut c, parse(&name, &text, p.parent()), &name)?;
        }
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(CatalogError::Invalid(problems))
        }
    }

    /// Add entries; one with a name already present replaces it.
    pub fn extend(&mut self, entries: Vec<Entry>, origin: &str) {
        for entry in entries {
            self.entries.insert(
                entry.name.clone(),
                Listed {
                    entry,
                    origin: origin.to_string(),
                },
            );
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name).map(|l| &l.entry)
    }

    /// All entries, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Listed> {
        self.entries.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

/// A catalog file or checksum, replaced atomically. 0644: pxe drops root and must still read
/// what a root fetch wrote.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    crate::fsutil::write_atomic(path, bytes, 0o644)
}

/// The artifacts folder's local catalog: what was built or fetched here.
pub mod manifest {
    use super::*;
    use nix::fcntl::{Flock, FlockArg};

    const HEADER: &str = "# ironseed local image catalog: images built or fetched into this artifacts folder.\n\
# Written by `builder images fetch` and `builder images build`; entries here override the\n\
# embedded catalog by name.\n";

    /// Entries of the manifest (empty when there is none yet).
    pub fn read(artifacts: &Path) -> Result<Vec<Entry>, CatalogError> {
        let path = artifacts.join(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse(&path.display().to_string(), &text, path.parent()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(CatalogError::Read { path, source }),
        }
    }

    /// Serialize entries in the catalog format (the reader's shape, so it parses back).
    pub fn to_yaml(entries: &[Entry]) -> String {
        let out = OutCatalog {
            images: entries
                .iter()
                .map(|e| OutEntry {
                    name: &e.name,
                    kind: e.kind.as_str(),
                    // Absolute: the manifest lives elsewhere than the catalog that named it.
                    source: match &e.source {
                        Source::Path(p) => std::path::absolute(p)
                            .unwrap_or_else(|_| p.clone())
                            .display()
                            .to_string(),
                        s => s.to_string(),
                    },
                    sha256: &e.sha256,
                    size: e.size,
                    description: e.description.as_deref(),
                })
                .collect(),
        };
        let body = serde_saphyr::to_string(&out).expect("catalog entries serialize");
        format!("{HEADER}{body}")
    }

    /// Record `entry` in `<artifacts>/images/manifest.yaml`, replacing an entry of the same name
    /// and keeping the others. Read-modify-write under an exclusive lock (two fetches finishing
    /// at once must not lose each other's entry), written atomically. A manifest that does not
    /// parse is left alone and reported: it is never overwritten blindly.
    pub fn add_entry(artifacts: &Path, entry: Entry) -> Result<(), CatalogError> {
        let path = artifacts.join(MANIFEST);
        let images = artifacts.join("images");
        let werr = |source| CatalogError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&images).map_err(werr)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(images.join(".manifest.lock"))
            .map_err(werr)?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| werr(io::Error::from(e)))?;
        let mut entries = read(artifacts)?;
        match entries.iter_mut().find(|e| e.name == entry.name) {
            Some(slot) => *slot = entry,
            None => entries.push(entry),
        }
        write_atomic(&path, to_yaml(&entries).as_bytes()).map_err(werr)
    }
}
