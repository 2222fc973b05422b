//! USB media through the `builder` binary: `render --usb` seed images checked with the real
//! tools (blkid, mtools, fsck.fat, isoinfo, xorriso), and `usb write` against a regular file
//! standing in for the stick (the hidden `--i-know-target-is-a-file` seam), refusals included.
//! The refusals that need a real device (mounted, held, not removable, too small) are exercised
//! with fabricated facts in images/src/usb.rs; the system disk is refused here for real.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const NODES: [&str; 7] = [
    "k3s-master1",
    "k3s-master2",
    "k3s-master3",
    "k3s1",
    "k3s2",
    "k3s3",
    "nfs1",
];

fn builder_in(args: &[&str], cwd: &Path) -> Command {
    let mut c = common::builder_cmd(args);
    c.current_dir(cwd);
    c
}

fn builder(args: &[&str], cwd: &Path) -> Output {
    builder_in(args, cwd).output().unwrap()
}

/// Run with `input` on stdin (the confirmation answer).
fn builder_stdin(args: &[&str], cwd: &Path, input: &str) -> Output {
    let mut child = builder_in(args, cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Tools missing: skip loudly, except under CI where tests/run must have installed them.
fn have(tools: &[&str]) -> bool {
    for t in tools {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return common::ci::skip(&format!(
                "{t} not installed (tests/packages.txt); seed images NOT checked with the real tools"
            ));
        }
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    o
}

fn render(dir: &Path, out: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["render", "--out", out, "--usb"];
    args.extend_from_slice(extra);
    let o = builder(&args, dir);
    assert!(o.status.success(), "{}", text(&o));
    dir.join(out)
}

#[test]
fn render_usb_writes_a_fat_seed_image_per_node() {
    let d = tempfile::tempdir().unwrap();
    let b = render(d.path(), "b", &[]);
    let sums = std::fs::read_to_string(b.join("SHA256SUMS")).unwrap();
    for n in NODES {
        let rel = format!("usb/{n}-cidata.img");
        let p = b.join(&rel);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{rel} carries the token");
        assert!(
            sums.contains(&format!("  {rel}\n")),
            "{rel} not in SHA256SUMS"
        );
    }
    let check = run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&b));
    assert!(check.status.success());
    // Same inputs, same bytes: a second render into another folder.
    let b2 = render(d.path(), "b2", &[]);
    for n in NODES {
        let rel = format!("usb/{n}-cidata.img");
        assert!(
            std::fs::read(b.join(&rel)).unwrap() == std::fs::read(b2.join(&rel)).unwrap(),
            "{rel} not deterministic"
        );
    }
    // Without --usb there is no usb/ folder.
    let o = builder(&["render", "--out", "plain"], d.path());
    assert!(o.status.success());
    assert!(!d.path().join("plain/usb").exists());

    if !have(&["blkid", "fsck.fat", "mcopy"]) {
        return;
    }
    for n in ["k3s-master1", "nfs1"] {
        let img = b.join(format!("usb/{n}-cidata.img"));
        let o = run(Command::new("blkid").arg("-p").arg(&img));
        let t = text(&o);
        assert!(
            t.contains("LABEL=\"CIDATA\"") && t.contains("TYPE=\"vfat\""),
            "{t}"
        );
        run(Command::new("fsck.fat").arg("-n").arg(&img));
        for f in ["user-data", "meta-data", "network-config"] {
            let o = run(Command::new("mcopy")
                .args(["-n", "-i"])
                .arg(&img)
                .arg(format!("::{f}"))
                .arg("-"));
            let want = std::fs::read(b.join(format!("nodes/{n}/{f}"))).unwrap();
            assert!(o.stdout == want, "{n}/{f} differs from the bundle's");
        }
    }
}

#[test]
fn render_usb_iso_writes_an_iso9660_cidata_volume() {
    let d = tempfile::tempdir().unwrap();
    let b = render(d.path(), "b", &["--usb-format", "iso"]);
    let b2 = render(d.path(), "b2", &["--usb-format", "iso"]);
    let img = b.join("usb/k3s2-cidata.img");
    assert!(std::fs::read(&img).unwrap() == std::fs::read(b2.join("usb/k3s2-cidata.img")).unwrap());
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // --usb-format alone is a mistake, not a silent no-op.
    let o = builder(&["render", "--out", "c", "--usb-format", "iso"], d.path());
    assert!(!o.status.success());

    if !have(&["isoinfo", "xorriso", "blkid"]) {
        return;
    }
    let t = text(&run(Command::new("isoinfo").arg("-d").arg("-i").arg(&img)));
    assert!(t.contains("Volume id: cidata\n"), "{t}");
    assert!(t.contains("Rock Ridge signatures"), "{t}");
    let t = text(&run(Command::new("blkid").arg("-p").arg(&img)));
    assert!(
        t.contains("LABEL=\"cidata\"") && t.contains("TYPE=\"iso9660\""),
        "{t}"
    );
    let x = d.path().join("x");
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&img)
        .args(["-extract", "/"])
        .arg(&x));
    for f in ["user-data", "meta-data", "network-config"] {
        let want = std::fs::read(b.join(format!("nodes/k3s2/{f}"))).unwrap();
        let o = run(Command::new("isoinfo")
            .args(["-R", "-i"])
            .arg(&img)
            .args(["-x", &format!("/{f}")]));
        assert!(o.stdout == want, "isoinfo: {f} differs");
        assert!(
            std::fs::read(x.join(f)).unwrap() == want,
            "xorriso: {f} differs"
        );
    }
}

const SEAM: &str = "--i-know-target-is-a-file";

fn image(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2])
        .collect()
}

fn sha(b: &[u8]) -> String {
    images::bundle::files::digest(b)
}

#[test]
fn usb_write_to_a_file_stand_in_writes_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let img = image((2 << 20) + 4097);
    std::fs::write(d.path().join("a.img"), &img).unwrap();
    // An old stick: longer than the image, full of something else.
    std::fs::write(d.path().join("stick"), vec![0x77u8; 4 << 20]).unwrap();
    let o = builder(&["usb", "write", "a.img", "stick", "--yes", SEAM], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read(d.path().join("stick")).unwrap();
    assert!(got[..img.len()] == img[..], "image bytes on the stick");
    assert!(
        got[img.len()..].iter().all(|b| *b == 0x77),
        "nothing past it"
    );
    let t = text(&o);
    let want = sha(&img);
    assert!(t.contains(&format!("image  sha256 {want}")), "{t}");
    assert!(t.contains(&format!("device sha256 {want}")), "{t}");
    assert!(t.contains("verified"), "{t}");

    // zstd: decompressed on the way, the read-back compares the decompressed bytes; the
    // answer may come piped instead of typed; --sha256 is of the file as stored.
    let packed = zstd::encode_all(&img[..], 3).unwrap();
    std::fs::write(d.path().join("a.img.zst"), &packed).unwrap();
    std::fs::write(d.path().join("stick2"), b"").unwrap();
    let o = builder_stdin(
        &[
            "usb",
            "write",
            "a.img.zst",
            "stick2",
            "--sha256",
            &sha(&packed),
            SEAM,
        ],
        d.path(),
        "yes\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(d.path().join("stick2")).unwrap() == img);
}

#[test]
fn usb_write_refusals_leave_the_target_untouched() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.img"), image(1 << 20)).unwrap();
    let old = vec![0x42u8; 3 << 20];
    std::fs::write(d.path().join("stick"), &old).unwrap();
    let untouched = |why: &str| {
        assert!(
            std::fs::read(d.path().join("stick")).unwrap() == old,
            "{why}: target written"
        );
    };
    let zeros = "0".repeat(64);
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        // A regular file without the seam.
        (vec!["a.img", "stick", "--yes"], "", "not a block device"),
        // No confirmation: end of input, or anything but "yes".
        (vec!["a.img", "stick", SEAM], "", "not confirmed"),
        (vec!["a.img", "stick", SEAM], "y\n", "not confirmed"),
        (vec!["a.img", "stick", SEAM], "no\n", "not confirmed"),
        // A published checksum that does not match.
        (
            vec!["a.img", "stick", "--yes", SEAM, "--sha256", &zeros],
            "",
            "nothing was written",
        ),
        (
            vec!["missing.img", "stick", "--yes", SEAM],
            "",
            "missing.img",
        ),
    ];
    for (args, input, want) in cases {
        let mut full = vec!["usb", "write"];
        full.extend(args.iter().copied());
        let o = builder_stdin(&full, d.path(), input);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains(want), "{args:?}: {t}");
        untouched(want);
    }
    // A character device is no stick either.
    let o = builder(&["usb", "write", "a.img", "/dev/null", "--yes"], d.path());
    assert!(text(&o).contains("not a block device"), "{}", text(&o));
}

/// The disk under this machine's `/`, for real: refused as the system disk even with --force.
/// Never given --yes, so even a broken check would stop at the question. Needs `/` on a visible
/// `/dev` block device (CI's VM has it: /dev/vda); elsewhere a loud skip, under CI a failure.
#[test]
fn usb_write_refuses_this_machines_system_disk() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(dev) = mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&"/") && f.get(sep + 2)?.starts_with("/dev/"))
            .then(|| f[sep + 2].to_string())
    }) else {
        common::ci::skip("/ is not on a /dev block device here; the system disk NOT checked");
        return;
    };
    if !Path::new(&dev).exists() {
        common::ci::skip(&format!(
            "{dev} (under /) is not visible here; the system disk NOT checked"
        ));
        return;
    }
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.img"), image(4096)).unwrap();
    let o = builder_stdin(&["usb", "write", "a.img", &dev, "--force"], d.path(), "");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("holds the running system") || t.contains("is mounted at"),
        "{t}"
    );
    assert!(!t.contains("Type yes"), "asked before refusing: {t}");
}

/// A seed image from `render --usb` written through `usb write` still reads back with mtools.
#[test]
fn a_rendered_seed_survives_usb_write() {
    let d = tempfile::tempdir().unwrap();
    let b = render(d.path(), "b", &[]);
    std::fs::write(d.path().join("stick"), b"").unwrap();
    let o = builder(
        &[
            "usb",
            "write",
            "b/usb/k3s3-cidata.img",
            "stick",
            "--yes",
            SEAM,
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    if !have(&["mcopy"]) {
        return;
    }
    let o = run(Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(d.path().join("stick"))
        .args(["::network-config", "-"]));
    assert!(o.stdout == std::fs::read(b.join("nodes/k3s3/network-config")).unwrap());
}
