//! Firmware blobs for the installer's drivers. A Broadcom 57800 (bnx2x, the usual rNDC of an
//! R630/R730) does not bring its link up without `bnx2x/bnx2x-e2-*.fw`, which only Debian's
//! non-free-firmware component ships: without it the installer cannot even fetch its plan.
//!
//! For every module packed, the files it declares (`modinfo -F firmware`) that one of
//! [`FIRMWARE_PACKAGES`] ships are packed under `lib/firmware/`, where the kernel's own loader
//! reads them (no udev in the initramfs). The packages come from the archive through apt with a
//! private configuration naming only non-free-firmware, so apt verifies them as it verifies the
//! kernel package: the Release file's signature against Debian's archive keyring, then the
//! Packages and .deb hashes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::{InitramfsError, io_ctx, run};

/// Debian (bookworm) packages with the firmware of the drivers in [`super::DRIVERS`]:
/// `firmware-bnx2x` (Broadcom NetXtreme II 10G: bnx2x) and `firmware-realtek` (rtl_nic/ for
/// r8169). Not `firmware-misc-nonfree`: of the packed drivers only tg3 declares files there
/// (`tigon/`), needed by BCM5701 A0 and 57766 chips only, not the BCM5720 of these servers,
/// and the package is ten times the size.
pub const FIRMWARE_PACKAGES: &[&str] = &["firmware-bnx2x", "firmware-realtek"];

/// What an installer built without non-free firmware (`--no-nonfree`) cannot do.
pub const WITHOUT_NONFREE: &str = "without non-free firmware the installer gets no link on Broadcom 57800/57810 NICs (bnx2x: the usual R630/R730 rNDC), so such a machine cannot fetch its plan from that NIC; Realtek NICs (r8169, some OptiPlex) run without their firmware patches";

/// Debian's archive keyring (package debian-archive-keyring): what apt checks the Release
/// file of the private source against.
pub const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Longest firmware name taken from `modinfo` (the kernel's own limit is PATH_MAX).
const NAME_MAX: usize = 200;

/// The names of `modinfo -F firmware` output that are safe relative paths below
/// `lib/firmware` (no `/` prefix, no `..`, printable ASCII without spaces).
pub fn parse_modinfo(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|n| is_firmware_name(n))
        .map(str::to_string)
        .collect()
}

pub fn is_firmware_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= NAME_MAX
        && !n.starts_with('/')
        && n.chars().all(|c| c.is_ascii_graphic())
        && n.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// What [`pick`] chose.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Picked {
    /// Name under `lib/firmware` → the file in the extracted packages.
    pub files: BTreeMap<String, PathBuf>,
    /// (module, firmware name) declared by a packed module that no package ships.
    pub missing: Vec<(String, String)>,
}

/// The declared firmware (`module → names`) the packages ship (`shipped`: name → file). The
/// kernel also loads `NAME.xz` / `NAME.zst` when it is built with compressed-firmware support
/// (bookworm's is, for xz), so a compressed file in the package counts as the file.
pub fn pick(
    declared: &BTreeMap<String, Vec<String>>,
    shipped: &BTreeMap<String, PathBuf>,
) -> Picked {
    let mut p = Picked::default();
    for (module, names) in declared {
        for n in names {
            let found = [n.clone(), format!("{n}.xz"), format!("{n}.zst")]
                .into_iter()
                .find_map(|k| shipped.get(&k).map(|f| (k, f.clone())));
            match found {
                Some((k, f)) => {
                    p.files.insert(k, f);
                }
                None => p.missing.push((module.clone(), n.clone())),
            }
        }
    }
    p
}

/// `p` with `.` and `..` resolved lexically; `None` if it climbs above its start.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Follow `p`'s symlinks inside `root` (an extracted package tree): an absolute link target is
/// taken relative to `root`, as it would be on the installed system. `None` for a link that
/// dangles, loops or leaves `root`.
fn resolve_in(root: &Path, p: &Path) -> Option<PathBuf> {
    let mut cur = p.to_path_buf();
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&cur).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(cur);
        }
        let t = fs::read_link(&cur).ok()?;
        let next = if t.is_absolute() {
            root.join(t.strip_prefix("/").ok()?)
        } else {
            cur.parent()?.join(t)
        };
        let next = normalize(&next)?;
        if !next.starts_with(root) {
            return None;
        }
        cur = next;
    }
    None
}

/// Every firmware file an extracted package tree ships (`lib/firmware`, or `usr/lib/firmware`
/// in merged-/usr packages): name → regular file, symlinks followed inside `root`.
pub fn shipped_files(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for base in ["lib/firmware", "usr/lib/firmware"] {
        let base = root.join(base);
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(p);
                    continue;
                }
                let Some(name) = p.strip_prefix(&base).ok().and_then(|r| r.to_str()) else {
                    continue;
                };
                if let Some(f) = resolve_in(root, &p) {
                    out.insert(name.to_string(), f);
                }
            }
        }
    }
    out
}

/// The firmware names `module_path` declares (`modinfo -F firmware FILE`).
pub fn declared(module_path: &Path) -> Result<Vec<String>, InitramfsError> {
    let out = run(Command::new("modinfo")
        .args(["-F", "firmware"])
        .arg(module_path))?;
    Ok(parse_modinfo(&out))
}

/// `apt-get` with a configuration of its own under `dir`: one source, `MIRROR SUITE
/// non-free-firmware`, signed by Debian's archive key; lists and cache in `dir`, so the host's
/// apt state is neither read nor changed.
fn apt(dir: &Path) -> Command {
    let mut c = Command::new("apt-get");
    let o = |k: &str, v: &Path| format!("{k}={}", v.display());
    c.args(["-q", "-o", "Acquire::Languages=none"])
        .args(["-o", &o("Dir::Etc::SourceList", &dir.join("sources.list"))])
        .args([
            "-o",
            &o("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
        ])
        .args(["-o", &o("Dir::State::Lists", &dir.join("lists"))])
        .args(["-o", &o("Dir::State::status", &dir.join("status"))])
        .args(["-o", &o("Dir::Cache", &dir.join("cache"))])
        // The folder belongs to root; apt's `_apt` sandbox user could not write into it.
        .args(["-o", "APT::Sandbox::User=root"]);
    c
}

/// Download `packages` from `mirror`'s `suite` non-free-firmware into `dir/debs`, verified by
/// apt; returns the .deb files.
pub fn download(
    dir: &Path,
    mirror: &str,
    suite: &str,
    packages: &[&str],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>, InitramfsError> {
    if !Path::new(ARCHIVE_KEYRING).exists() {
        return Err(InitramfsError::Firmware(format!(
            "{ARCHIVE_KEYRING} is missing (apt-get install debian-archive-keyring), so the firmware packages cannot be verified"
        )));
    }
    for d in [
        "sources.list.d",
        "lists/partial",
        "cache/archives/partial",
        "debs",
    ] {
        fs::create_dir_all(dir.join(d))
            .map_err(io_ctx(format!("creating {}", dir.join(d).display())))?;
    }
    let w = |name: &str, body: String| {
        fs::write(dir.join(name), body).map_err(io_ctx(format!("writing {name}")))
    };
    w(
        "sources.list",
        format!("deb [signed-by={ARCHIVE_KEYRING}] {mirror} {suite} non-free-firmware\n"),
    )?;
    w("status", String::new())?;
    log(&format!(
        "fetching {} from {mirror} {suite} non-free-firmware",
        packages.join(", ")
    ));
    run(apt(dir).arg("update"))?;
    run(apt(dir)
        .arg("download")
        .args(packages)
        .current_dir(dir.join("debs")))?;
    let mut debs: Vec<PathBuf> = fs::read_dir(dir.join("debs"))
        .map_err(io_ctx("listing the firmware download"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    if debs.len() != packages.len() {
        return Err(InitramfsError::Firmware(format!(
            "apt-get download {} left {} .deb files",
            packages.join(" "),
            debs.len()
        )));
    }
    Ok(debs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_names_are_safe_relative_paths() {
        let out = "bnx2x/bnx2x-e2-7.13.21.0.fw\n\nrtl_nic/rtl8168h-2.fw\n../../etc/shadow\n/abs.fw\na b.fw\nx//y\n";
        assert_eq!(
            parse_modinfo(out),
            ["bnx2x/bnx2x-e2-7.13.21.0.fw", "rtl_nic/rtl8168h-2.fw"]
        );
        assert!(!is_firmware_name(&"a".repeat(NAME_MAX + 1)));
    }

    #[test]
    fn declared_files_are_taken_when_shipped_plain_or_compressed_and_the_rest_named() {
        let declared: BTreeMap<String, Vec<String>> = [
            (
                "bnx2x".to_string(),
                vec!["bnx2x/e2.fw".to_string(), "bnx2x/e1.fw".to_string()],
            ),
            ("r8169".to_string(), vec!["rtl_nic/a.fw".to_string()]),
            ("tg3".to_string(), vec!["tigon/tg3.bin".to_string()]),
        ]
        .into();
        let shipped: BTreeMap<String, PathBuf> = [
            ("bnx2x/e2.fw", "/x/e2"),
            ("bnx2x/e1.fw", "/x/e1"),
            ("rtl_nic/a.fw.xz", "/x/a"),
            ("rtl_nic/unused.fw", "/x/u"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect();
        let p = pick(&declared, &shipped);
        assert_eq!(
            p.files.keys().collect::<Vec<_>>(),
            ["bnx2x/e1.fw", "bnx2x/e2.fw", "rtl_nic/a.fw.xz"]
        );
        assert_eq!(
            p.missing,
            [("tg3".to_string(), "tigon/tg3.bin".to_string())]
        );
    }

    /// Protects the build host: a package's symlink never makes the initramfs carry a file
    /// from outside the extracted package (`/etc/shadow` of the build machine, say).
    #[test]
    fn symlinks_are_followed_inside_the_package_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let fw = root.join("lib/firmware/rtl_nic");
        fs::create_dir_all(&fw).unwrap();
        fs::write(fw.join("real.fw"), b"blob").unwrap();
        std::os::unix::fs::symlink("real.fw", fw.join("rel.fw")).unwrap();
        std::os::unix::fs::symlink("/lib/firmware/rtl_nic/real.fw", fw.join("abs.fw")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", fw.join("host.fw")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", fw.join("up.fw")).unwrap();
        std::os::unix::fs::symlink("loop.fw", fw.join("loop.fw")).unwrap();
        let s = shipped_files(root);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            ["rtl_nic/abs.fw", "rtl_nic/real.fw", "rtl_nic/rel.fw"]
        );
        for f in s.values() {
            assert_eq!(fs::read(f).unwrap(), b"blob");
            assert!(f.starts_with(root));
        }
    }
}
