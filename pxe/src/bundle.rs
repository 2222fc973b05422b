//! The bundle `builder render` wrote, as `pxe` reads it: `plan.json` plus the files it names.
//! Every file is checked against `SHA256SUMS` at load, so a half-copied or edited bundle is
//! refused before anything boots from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::proto::dhcp::MacAddr;

pub use images::bundle::files::{FilesError, ReadLimits, read_files, read_files_limited};
pub use images::bundle::{Appliance, Artifact, Network, Plan, PlanNode, Pool};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a plan this pxe understands: {message}")]
    Plan { path: PathBuf, message: String },
    #[error("plan.json: not in SHA256SUMS")]
    NoPlan,
    #[error("bundle reader: {0}")]
    Reader(String),
}

/// A loaded, verified bundle. Its files are kept in memory (they are small), so the server
/// can serve the owner-only seeds after it has dropped root.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub plan: Plan,
    /// sha256 of `plan.json`: identifies this render.
    pub id: String,
    files: BTreeMap<String, std::sync::Arc<[u8]>>,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        Bundle::from_files(dir, read_files(dir)?)
    }

    /// A bundle from files already read and verified by [`read_files`] (possibly by the
    /// privileged bundle reader, see `LiveBundle`).
    pub fn from_files(
        dir: &Path,
        files: BTreeMap<String, std::sync::Arc<[u8]>>,
    ) -> Result<Bundle, BundleError> {
        let plan_path = dir.join("plan.json");
        let bytes = files.get("plan.json").ok_or(BundleError::NoPlan)?;
        let plan = Plan::from_json(bytes).map_err(|e| BundleError::Plan {
            path: plan_path,
            message: e.to_string(),
        })?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            id: images::bundle::files::digest(bytes),
            plan,
            files,
        })
    }

    pub fn node(&self, hostname: &str) -> Option<&PlanNode> {
        self.plan.node(hostname)
    }

    pub fn node_by_mac(&self, mac: &MacAddr) -> Option<&PlanNode> {
        self.plan.node_by_mac(mac)
    }

    /// A verified file of the bundle (paths come from the plan, never from a request).
    /// Whether the bundle holds `rel` (listed in its `SHA256SUMS`).
    pub fn has(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
    }

    pub fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        self.files.get(rel).map(|b| b.to_vec()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{rel} is not in the bundle's SHA256SUMS"),
            )
        })
    }
}

/// The bundle being served, replaceable while serving: `builder rebuild` re-renders the bundle
/// folder and asks for a reload (`POST /api/v1/reload`), so a node's new MAC is answered without
/// a restart. Readers take an `Arc` snapshot; a request never sees half of two bundles.
#[derive(Debug)]
pub struct LiveBundle {
    current: std::sync::RwLock<std::sync::Arc<Bundle>>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// This process reads the folder itself.
    Direct,
    /// After dropping root this process can no longer open the bundle's owner-only files
    /// (seeds, k3s configs, plan.json are 0600). A reader started while still root
    /// (`pxe bundle-reader`, see [`serve_reader`]) reads and verifies them for it. It takes no
    /// input but "load": the folder is fixed when it starts, and it ends with this process.
    Helper(std::sync::Mutex<Helper>),
}

#[derive(Debug)]
struct Helper {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        // The reader is still root and this process no longer is: it cannot be killed from
        // here. Closing its stdin ends it (it exits at EOF), as does this process dying.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl LiveBundle {
    pub fn new(b: Bundle) -> LiveBundle {
        LiveBundle {
            current: std::sync::RwLock::new(std::sync::Arc::new(b)),
            source: Source::Direct,
        }
    }

    /// Serve `b`, and reload through `exe bundle-reader --bundle DIR` started now (call this
    /// while still root, before dropping privileges).
    pub fn with_reader(b: Bundle, exe: &Path) -> std::io::Result<LiveBundle> {
        use std::process::{Command, Stdio};
        let mut child = Command::new(exe)
            .arg("bundle-reader")
            .arg("--bundle")
            .arg(&b.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(LiveBundle {
            current: std::sync::RwLock::new(std::sync::Arc::new(b)),
            source: Source::Helper(std::sync::Mutex::new(Helper {
                child,
                stdin: Some(stdin),
                stdout,
            })),
        })
    }

    pub fn get(&self) -> std::sync::Arc<Bundle> {
        self.current.read().unwrap().clone()
    }

    /// Swap in `b`; returns the bundle it replaced.
    pub fn replace(&self, b: Bundle) -> std::sync::Arc<Bundle> {
        std::mem::replace(&mut *self.current.write().unwrap(), std::sync::Arc::new(b))
    }

    /// Read and verify the folder again (blocking). The served bundle is not changed.
    pub fn load_fresh(&self) -> Result<Bundle, BundleError> {
        let dir = self.get().dir.clone();
        match &self.source {
            Source::Direct => Bundle::load(&dir),
            Source::Helper(h) => {
                let mut h = h.lock().unwrap();
                let files = request_files(&mut h).map_err(|source| BundleError::Io {
                    path: dir.clone(),
                    source,
                })??;
                Bundle::from_files(&dir, files)
            }
        }
    }
}

type Files = BTreeMap<String, std::sync::Arc<[u8]>>;

fn request_files(h: &mut Helper) -> std::io::Result<Result<Files, BundleError>> {
    use std::io::{BufRead, Read, Write};
    let stdin = h.stdin.as_mut().expect("open until drop");
    stdin.write_all(b"load\n")?;
    stdin.flush()?;
    let mut files = Files::new();
    loop {
        let mut line = String::new();
        if h.stdout.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the bundle reader exited",
            ));
        }
        let line = line.trim_end_matches('\n');
        if line == "END" {
            return Ok(Ok(files));
        }
        if let Some(msg) = line.strip_prefix("ERR ") {
            return Ok(Err(BundleError::Reader(msg.to_string())));
        }
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bundle reader reply");
        let (len, rel) = line
            .strip_prefix("F ")
            .and_then(|r| r.split_once(' '))
            .ok_or_else(bad)?;
        let len: u64 = len.parse().map_err(|_| bad())?;
        if len > ReadLimits::default().file_bytes {
            return Err(bad());
        }
        let len = len as usize;
        let mut buf = vec![0u8; len];
        h.stdout.read_exact(&mut buf)?;
        files.insert(rel.to_string(), buf.into());
    }
}

/// `pxe bundle-reader`: answer each "load" line on `input` with the verified files of `dir`
/// (`F <len> <path>` + bytes per file, then `END`) or one `ERR <message>` line. Ends at EOF.
pub fn serve_reader(
    dir: &Path,
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> std::io::Result<()> {
    for line in input.lines() {
        if line?.trim() != "load" {
            writeln!(output, "ERR unknown request")?;
            output.flush()?;
            continue;
        }
        match read_files(dir) {
            Ok(files) => {
                for (rel, bytes) in &files {
                    writeln!(output, "F {} {rel}", bytes.len())?;
                    output.write_all(bytes)?;
                }
                writeln!(output, "END")?;
            }
            Err(e) => writeln!(output, "ERR {}", e.to_string().replace('\n', " "))?,
        }
        output.flush()?;
    }
    Ok(())
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
            sums.push_str(&images::bundle::files::sums_text([(*rel, *bytes)]));
        }
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    }

    #[test]
    fn the_bundle_reader_sends_verified_files_or_one_error_line() {
        let d = tempfile::tempdir().unwrap();
        write_bundle(
            d.path(),
            &[("plan.json", b"{}\n"), ("nodes/a/user-data", b"x\ny\n")],
        );
        let mut out = Vec::new();
        serve_reader(d.path(), &b"load\nload\nnope\n"[..], &mut out).unwrap();
        // Sorted by path; the length frames the bytes, so newlines inside a file are harmless.
        let one = "F 4 nodes/a/user-data\nx\ny\nF 3 plan.json\n{}\nEND\n";
        let want = format!("{one}{one}ERR unknown request\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);

        std::fs::write(d.path().join("plan.json"), b"edited").unwrap();
        let mut out = Vec::new();
        serve_reader(d.path(), &b"load\n"[..], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("ERR plan.json: checksum mismatch"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
    }
}
