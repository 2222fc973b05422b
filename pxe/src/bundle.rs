//! The bundle `builder render` wrote, as `pxe` reads it: `plan.json` plus the files it names.
//! Every file is checked against `SHA256SUMS` at load, so a half-copied or edited bundle is
//! refused before anything boots from it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proto::dhcp::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a plan this pxe understands: {message}")]
    Plan { path: PathBuf, message: String },
    #[error(
        "{0}: checksum mismatch with SHA256SUMS (a partial copy or an edited file?); re-render the bundle"
    )]
    Checksum(String),
    #[error("{0}: listed in SHA256SUMS but missing")]
    Missing(String),
    #[error("{0}: a path in SHA256SUMS leaves the bundle")]
    Escape(String),
    #[error("bundle reader: {0}")]
    Reader(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Appliance {
    pub ip: Ipv4Addr,
    pub http_port: u16,
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub ntp: Vec<String>,
    pub dhcp_pool: Option<Pool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanNode {
    pub hostname: String,
    pub fqdn: String,
    pub role: String,
    pub bootstrap: bool,
    pub mac: MacAddr,
    #[serde(default)]
    pub extra_macs: Vec<MacAddr>,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub profile: String,
    pub firmware: String,
    pub dhcp_arch: u16,
    pub boot_nic: String,
    /// Parsed here, so a bundle whose selectors the installer could not read is refused at start.
    pub install_disk: images::disk::Selector,
    pub data_disks: Vec<images::plan::DataDisk>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    pub seed_dir: String,
    /// The node's first-boot report token (also in its seed): `images::bundle`.
    pub report_token: String,
    pub install_script: String,
}

impl PlanNode {
    pub fn macs(&self) -> impl Iterator<Item = &MacAddr> {
        std::iter::once(&self.mac).chain(self.extra_macs.iter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub cluster: String,
    pub domain: String,
    pub api_vip: Ipv4Addr,
    pub appliance: Appliance,
    pub network: Network,
    pub os_image: String,
    pub local_boot_script: String,
    pub unknown_script: String,
    #[serde(default)]
    pub airgap: Option<BTreeMap<String, Artifact>>,
    #[serde(default)]
    pub joined: Vec<String>,
    pub nodes: Vec<PlanNode>,
}

/// A loaded, verified bundle. Its files are kept in memory (they are small), so the server
/// can serve the owner-only seeds after it has dropped root.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub plan: Plan,
    /// sha256 of `plan.json`: identifies this render.
    pub id: String,
    /// The same `plan.json` as the installer's plans are made from (`images::plan`, shared with
    /// `builder usb image`).
    pub install: images::plan::BundlePlan,
    files: BTreeMap<String, std::sync::Arc<[u8]>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
        let bytes = files
            .get("plan.json")
            .map(|b| b.to_vec())
            .ok_or_else(|| BundleError::Missing("plan.json (not in SHA256SUMS)".into()))?;
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(&bytes).map_err(|e| BundleError::Plan {
            path: plan_path.clone(),
            message: e.to_string(),
        })?;
        if v.version != images::bundle::PLAN_VERSION {
            return Err(BundleError::Plan {
                path: plan_path,
                message: format!(
                    "plan version {} (this pxe reads version {}); re-render the bundle with the builder of this release",
                    v.version,
                    images::bundle::PLAN_VERSION
                ),
            });
        }
        let plan: Plan = serde_json::from_slice(&bytes).map_err(|e| BundleError::Plan {
            path: plan_path.clone(),
            message: e.to_string(),
        })?;
        let install = serde_json::from_slice(&bytes).map_err(|e| BundleError::Plan {
            path: plan_path.clone(),
            message: e.to_string(),
        })?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            id: hex(&Sha256::digest(&bytes)),
            plan,
            install,
            files,
        })
    }

    pub fn node(&self, hostname: &str) -> Option<&PlanNode> {
        self.plan.nodes.iter().find(|n| n.hostname == hostname)
    }

    pub fn node_by_mac(&self, mac: &MacAddr) -> Option<&PlanNode> {
        self.plan.nodes.iter().find(|n| n.macs().any(|m| m == mac))
    }

    /// A verified file of the bundle (paths come from the plan, never from a request).
    pub fn read(&self, rel: &str) -> std::io::Result<Vec<u8>> {
        self.files.get(rel).map(|b| b.to_vec()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{rel} is not in the bundle's SHA256SUMS"),
            )
        })
    }
}

/// Read every file `SHA256SUMS` lists and check it against its sum. Paths never leave `dir`.
pub fn read_files(dir: &Path) -> Result<BTreeMap<String, std::sync::Arc<[u8]>>, BundleError> {
    let io = |path: PathBuf| move |source| BundleError::Io { path, source };
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path).map_err(io(sums_path.clone()))?;
    let mut files: BTreeMap<String, std::sync::Arc<[u8]>> = BTreeMap::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (want, rel) = line
            .split_once("  ")
            .ok_or_else(|| BundleError::Checksum(format!("SHA256SUMS line `{line}`")))?;
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(BundleError::Escape(rel.into()));
        }
        // USB seed images (`builder render --usb`, 1 MiB a node) are for sticks, never served:
        // keeping them in memory would cost ~1 GiB at 1000 nodes.
        if rel.starts_with("usb/") {
            continue;
        }
        // The reader may run as root (`pxe bundle-reader`): a symlink in the bundle must not
        // make it read a file outside it. builder writes only regular files.
        if let (Ok(root), Ok(real)) = (dir.canonicalize(), dir.join(rel).canonicalize())
            && !real.starts_with(&root)
        {
            return Err(BundleError::Escape(rel.into()));
        }
        let bytes = std::fs::read(dir.join(rel)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BundleError::Missing(rel.into())
            } else {
                BundleError::Io {
                    path: dir.join(rel),
                    source: e,
                }
            }
        })?;
        if hex(&Sha256::digest(&bytes)) != want {
            return Err(BundleError::Checksum(rel.into()));
        }
        files.insert(rel.to_string(), bytes.into());
    }
    Ok(files)
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
        let len: usize = len.parse().map_err(|_| bad())?;
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
            sums.push_str(&format!("{}  {rel}\n", hex(&Sha256::digest(bytes))));
        }
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    }

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
            Err(BundleError::Escape(p)) if p == "plan.json"
        ));
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
