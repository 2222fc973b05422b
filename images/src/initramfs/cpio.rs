//! An initramfs is a `newc` cpio archive (the kernel's only format: Documentation/
//! driver-api/early-userspace/buffer-format.rst). Written here, in memory and deterministically
//! (fixed inode numbers, owner 0:0, mtime 0), so device nodes such as `/dev/console` need no root.

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

#[derive(Default)]
pub struct Archive {
    entries: Vec<(String, Entry)>,
}

impl Archive {
    /// Add `path` (relative, no leading slash). Parents must be added first, as the kernel
    /// creates entries in archive order.
    pub fn add(&mut self, path: &str, e: Entry) {
        self.entries
            .push((path.trim_start_matches('/').to_string(), e));
    }

    pub fn dir(&mut self, path: &str) {
        self.add(path, Entry::Dir { mode: 0o755 });
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.add(path, Entry::File { mode, data });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.add(
            path,
            Entry::Symlink {
                target: target.into(),
            },
        );
    }

    /// `/dev/console`: the kernel opens it for init's stdio before /init can mount devtmpfs.
    pub fn console(&mut self) {
        self.add(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (name, e)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match e {
                Entry::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(e, Entry::Dir { .. }) { 2 } else { 1 };
            header(&mut out, i as u32 + 1, mode, nlink, data.len(), rdev, name);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

/// One entry read back by [`read`]: its path, full mode (type and permission bits) and data
/// (a symlink's target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

impl ReadEntry {
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == S_IFREG
    }
}

/// The entries of a `newc` archive up to its trailer, to check what an initramfs holds. Every
/// length is checked against the input, so a truncated or corrupt archive is an error, never
/// a read out of bounds.
pub fn read(b: &[u8]) -> Result<Vec<ReadEntry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let h = b
            .get(at..at + 110)
            .ok_or_else(|| format!("truncated header at byte {at}"))?;
        if &h[..6] != b"070701" {
            return Err(format!("no newc magic at byte {at}"));
        }
        let field = |i: usize| -> Result<usize, String> {
            let f = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            usize::from_str_radix(f, 16).map_err(|e| format!("header field at byte {at}: {e}"))
        };
        let (mode, size, namesize) = (field(1)?, field(6)?, field(11)?);
        let name_end = at + 110 + namesize;
        let name = b
            .get(at + 110..name_end)
            .ok_or_else(|| format!("truncated name at byte {at}"))?;
        let name = String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
        let data_at = align(name_end);
        let data = b
            .get(data_at..data_at + size)
            .ok_or_else(|| format!("truncated data of {name}"))?;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push(ReadEntry {
            path: name,
            mode: mode as u32,
            data: data.to_vec(),
        });
        at = align(data_at + size);
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: fixed, so the same inputs give the same bytes
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check (newc has none)
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::default();
        a.dir("bin");
        a.dir("dev");
        a.console();
        a.file("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        a.file("bin/odd", 0o644, vec![7u8; 5]);
        a.symlink("bin/sh", "busybox");
        a
    }

    #[test]
    fn headers_are_newc_aligned_and_end_with_the_trailer() {
        let b = sample().encode();
        assert_eq!(&b[..6], b"070701");
        assert_eq!(b.len() % 4, 0);
        let trailer = b.windows(10).position(|w| w == b"TRAILER!!!").unwrap();
        assert_eq!(&b[trailer - 110..trailer - 104], b"070701");
        assert_eq!(sample().encode(), b, "deterministic");
    }

    #[test]
    fn read_gives_back_what_was_written_and_refuses_truncation() {
        let b = sample().encode();
        let e = read(&b).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "dev", "dev/console", "init", "bin/odd", "bin/sh"]
        );
        assert!(e[3].is_file() && e[3].mode & 0o777 == 0o755);
        assert_eq!(e[3].data, b"#!/bin/sh\necho hi\n");
        assert_eq!(e[5].data, b"busybox");
        assert!(!e[5].is_file());
        for cut in [0, 50, 120, b.len() - 120, b.len() - 1] {
            assert!(read(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// GNU cpio with the archive on stdin.
    fn cpio(args: &[&str], dir: &std::path::Path) -> std::process::Output {
        use std::io::Write;
        let mut c = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(&sample().encode())
            .unwrap();
        c.wait_with_output().unwrap()
    }

    /// GNU cpio reads it back: names, types, modes, the device number and file contents.
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        if !crate::testutil::have("cpio", "cpio") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = cpio(&["-t", "-v", "--quiet"], dir.path());
        assert!(out.status.success());
        let list = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 6, "{list}");
        assert!(lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" bin"));
        assert!(
            lines[2].starts_with("crw-------")
                && lines[2].contains("5,")
                && lines[2].ends_with("dev/console")
        );
        assert!(lines[3].starts_with("-rwxr-xr-x") && lines[3].ends_with(" init"));
        assert!(lines[5].starts_with("lrwxrwxrwx") && lines[5].ends_with("bin/sh -> busybox"));
        let args = [
            "-i",
            "-d",
            "--quiet",
            "--no-absolute-filenames",
            "init",
            "bin/odd",
        ];
        assert!(cpio(&args, dir.path()).status.success());
        assert_eq!(
            std::fs::read(dir.path().join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("bin/odd")).unwrap(),
            vec![7u8; 5]
        );
    }
}
