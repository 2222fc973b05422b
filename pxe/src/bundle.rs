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
pub fn read_files(dir: &Path) -> Result<BTreeMap<String, std::sync::Arc<[u8]>>, BundleError> {
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
) -> Result<BTreeMap<String, std::sync::Arc<[u8]>>, BundleError> {
    let root = std::fs::File::open(dir).map_err(|source| BundleError::Io {
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
        BundleError::SumsLine(line + 1)
    })?;
    let mut files: BTreeMap<String, std::sync::Arc<[u8]>> = BTreeMap::new();
    for (n, line) in sums.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if n >= limits.entries {
            return Err(BundleError::TooMany(limits.entries));
        }
        let (want, rel) = parse_sums_line(line).ok_or(BundleError::SumsLine(n + 1))?;
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(BundleError::Escape(rel.into()));
        }
        // USB seed images (`builder render --usb`, 1 MiB a node) are for sticks, never served:
        // keeping them in memory would cost ~1 GiB at 1000 nodes.
        if rel.starts_with("usb/") {
            continue;
        }
        let bytes = read_beneath(&root, dir, rel, limits, &mut total)?;
        if hex(&Sha256::digest(&bytes)) != want {
            return Err(BundleError::Checksum(rel.into()));
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
) -> Result<Vec<u8>, BundleError> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::io::Read;
    // O_NONBLOCK: a FIFO named in SHA256SUMS must be refused below, not wait for a writer.
    // O_NOCTTY: a terminal must not become this process's controlling terminal.
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(root, rel, how).map_err(|e| match e {
        nix::errno::Errno::ENOENT => BundleError::Missing(rel.into()),
        // ELOOP: a symbolic link on the way; EXDEV: the path leaves the folder.
        nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => BundleError::Escape(rel.into()),
        e => BundleError::Io {
            path: dir.join(rel),
            source: e.into(),
        },
    })?;
    let file = std::fs::File::from(fd);
    let io = |source| BundleError::Io {
        path: dir.join(rel),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(BundleError::NotRegular(rel.into()));
    }
    let too_big = || BundleError::TooLarge {
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
            sums.push_str(&format!("{}  {rel}\n", hex(&Sha256::digest(bytes))));
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
            Err(BundleError::Escape(p)) if p == "plan.json"
        ));
        // A link that stays inside the bundle is refused too: builder writes no links, and
        // "inside" would have to be checked again at the open anyway.
        std::fs::write(d.path().join("real.json"), b"{}").unwrap();
        std::fs::remove_file(d.path().join("plan.json")).unwrap();
        std::os::unix::fs::symlink("real.json", d.path().join("plan.json")).unwrap();
        assert!(matches!(read_files(d.path()), Err(BundleError::Escape(_))));
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
            matches!(e, BundleError::Escape(ref p) if p == "SHA256SUMS"),
            "{e}"
        );
        assert!(!e.to_string().contains("secret-hash"), "{e}");

        // The same content as a regular SHA256SUMS: the error names the line, not its text.
        std::fs::remove_file(d.path().join("SHA256SUMS")).unwrap();
        let sums = format!("{}  plan.json\n{SECRET}\n", hex(&Sha256::digest(b"{}")));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        let mut out = Vec::new();
        serve_reader(d.path(), &b"load\n"[..], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "ERR SHA256SUMS line 2: not `<sha256>  <path>`; re-render the bundle\n"
        );
        // Nor the path of a line whose path carries control characters.
        let sums = format!("{}  plan\x1b]0;{SECRET}\x07\n", hex(&Sha256::digest(b"{}")));
        std::fs::write(d.path().join("SHA256SUMS"), sums).unwrap();
        let e = read_files(d.path()).unwrap_err();
        assert!(matches!(e, BundleError::SumsLine(1)), "{e}");
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
                        BundleError::Escape(_) => refused += 1,
                        BundleError::Checksum(_) => mismatched += 1,
                        // The moment between remove and rename of the swap.
                        BundleError::Missing(_) => {}
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
                matches!(got, Err(BundleError::NotRegular(ref p)) if p == rel),
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
            matches!(e, BundleError::TooLarge { ref rel, .. } if rel == "big.img"),
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
            matches!(e, BundleError::TooLarge { ref rel, .. } if rel == "b"),
            "{e}"
        );
        let fewer = ReadLimits {
            entries: 1,
            ..ReadLimits::default()
        };
        assert!(matches!(
            read_files_limited(d.path(), fewer),
            Err(BundleError::TooMany(1))
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
