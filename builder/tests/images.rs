//! `builder images list|fetch` as an operator runs them, against an in-process HTTP server on
//! loopback (the same fault-injecting server the images crate's fetch tests use).

mod common;
#[path = "../../images/tests/support/server.rs"]
mod server;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{builder_cmd, stderr, stdout};
use server::TestServer;

fn builder(args: &[&str], art: &Path) -> Output {
    builder_cmd(args)
        .arg("--artifacts")
        .arg(art)
        .output()
        .unwrap()
}

fn body(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

fn hex(b: &[u8]) -> String {
    images::bundle::files::digest(b)
}

/// A catalog file naming `debian-12` at the server.
fn catalog(dir: &Path, url: &str, b: &[u8]) -> String {
    let p = dir.join("lab-catalog.yaml");
    std::fs::write(
        &p,
        format!(
            "images:\n  - name: debian-12\n    kind: raw.zst\n    source: {url}\n    sha256: {}\n    size: {}\n    description: test image\n",
            hex(b),
            b.len()
        ),
    )
    .unwrap();
    p.display().to_string()
}

const LEN: usize = 2 * (1 << 20) + 777;

#[test]
fn list_with_only_the_embedded_catalog_says_there_is_nothing() {
    let art = tempfile::tempdir().unwrap();
    let o = builder(&["images", "list"], art.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("artifacts: {}", art.path().display())),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("no images in the catalog"));
}

#[test]
fn fetch_then_list_then_fetch_again_does_nothing() {
    let b = body(LEN);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let cat = catalog(art.path(), &srv.url("debian-12.raw.zst"), &b);

    let o = builder(&["images", "list", "--catalog", &cat], art.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("NAME") && out.contains("STATUS"), "{out}");
    let row = out.lines().find(|l| l.starts_with("debian-12")).unwrap();
    assert!(row.contains("missing") && row.contains("raw.zst"), "{row}");

    let o = builder(
        &["images", "fetch", "debian-12", "--catalog", &cat],
        art.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("fetching debian-12"), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("debian-12: fetched and verified"),
        "{}",
        stdout(&o)
    );
    let img = art.path().join("images/debian-12.raw.zst");
    assert!(std::fs::read(&img).unwrap() == b);
    assert_eq!(
        std::fs::read_to_string(art.path().join("images/debian-12.raw.zst.sha256")).unwrap(),
        format!("{}  debian-12.raw.zst\n", hex(&b))
    );

    // The manifest now knows the image: no --catalog needed any more.
    let o = builder(&["images", "list"], art.path());
    let out = stdout(&o);
    let row = out.lines().find(|l| l.starts_with("debian-12")).unwrap();
    assert!(row.contains(" ok ") && row.contains("manifest"), "{out}");
    let o = builder(&["images", "list", "--verify"], art.path());
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("debian-12") && l.contains("verified")),
        "{out}"
    );

    let o = builder(&["images", "fetch", "debian-12"], art.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("already present and verified"));
    assert_eq!(srv.requests().len(), 1, "nothing fetched the second time");
}

#[test]
fn a_mismatch_exits_nonzero_with_both_hashes_and_keeps_the_cached_copy() {
    let b = body(LEN);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let cat = catalog(art.path(), &srv.url("debian-12.raw.zst"), &b);
    assert!(
        builder(
            &["images", "fetch", "debian-12", "--catalog", &cat],
            art.path()
        )
        .status
        .success()
    );
    srv.set(|x| x.corrupt = true);
    let o = builder(
        &["images", "fetch", "debian-12", "--catalog", &cat, "--force"],
        art.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let mut bad = b.clone();
    bad[LEN / 2] ^= 0xff;
    assert!(e.contains("sha256 mismatch"), "{e}");
    assert!(e.contains(&hex(&b)) && e.contains(&hex(&bad)), "{e}");
    assert!(std::fs::read(art.path().join("images/debian-12.raw.zst")).unwrap() == b);
    assert!(
        !art.path()
            .join("images/.partial/debian-12.raw.zst.part")
            .exists()
    );
}

#[test]
fn a_cut_download_is_resumed_by_the_cli() {
    let b = body(LEN);
    let srv = TestServer::start(b.clone());
    srv.set(|x| {
        x.cut_after = Some(1 << 20);
        x.cuts = 1;
    });
    let art = tempfile::tempdir().unwrap();
    let cat = catalog(art.path(), &srv.url("debian-12.raw.zst"), &b);
    let o = builder(
        &["images", "fetch", "debian-12", "--catalog", &cat],
        art.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("connection closed at byte"),
        "{}",
        stderr(&o)
    );
    assert_eq!(srv.requests()[1].range, Some(1 << 20));
    assert!(srv.bytes_sent() < 2 * LEN as u64);
    assert!(std::fs::read(art.path().join("images/debian-12.raw.zst")).unwrap() == b);
}

/// Whether SIGINT is ignored in this process (and so in children it spawns).
fn sigint_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    mask & (1 << (nix::sys::signal::Signal::SIGINT as i32 - 1)) != 0
}

#[test]
fn ctrl_c_leaves_a_partial_that_the_next_fetch_resumes() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let b = body(LEN);
    let srv = TestServer::start(b.clone());
    // The server stops after 256 KiB until released: the fetch is certainly still
    // running when it is interrupted, however slowly this machine schedules the test
    // (a throttled download once finished before the signal under load).
    srv.set(|x| x.hold_after = Some(256 << 10));
    let art = tempfile::tempdir().unwrap();
    let cat = catalog(art.path(), &srv.url("debian-12.raw.zst"), &b);
    let mut child = builder_cmd(&[
        "images",
        "fetch",
        "debian-12",
        "--catalog",
        &cat,
        "--artifacts",
    ])
    .arg(art.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let part = art.path().join("images/.partial/debian-12.raw.zst.part");
    let t0 = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 128 << 10 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Ctrl-C is SIGINT, unless this test runs where SIGINT is ignored (a script's
    // background job inherits SIG_IGN, and so would the child): then SIGTERM, which
    // ends the process just as abruptly.
    let sig = if sigint_ignored() {
        eprintln!("NOTE: SIGINT is ignored in this process tree; interrupting with SIGTERM");
        Signal::SIGTERM
    } else {
        Signal::SIGINT
    };
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("builder images fetch did not stop on {sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!st.success());
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < LEN as u64, "{kept}");

    srv.set(|x| x.hold_after = None);
    let o = builder(
        &["images", "fetch", "debian-12", "--catalog", &cat],
        art.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at"), "{}", stderr(&o));
    assert_eq!(srv.requests().last().unwrap().range, Some(kept));
    assert!(std::fs::read(art.path().join("images/debian-12.raw.zst")).unwrap() == b);
}

#[test]
fn a_bad_catalog_is_reported_with_file_line_field_and_snippet() {
    let art = tempfile::tempdir().unwrap();
    let cat = art.path().join("cat.yaml");
    std::fs::write(
        &cat,
        "images:\n  - name: debian-12\n    kind: raw.zst\n    source: http://mirror.lan/d\n    sha256: nothex\n    size: 10\n",
    )
    .unwrap();
    let o = builder(
        &[
            "images",
            "fetch",
            "debian-12",
            "--catalog",
            cat.to_str().unwrap(),
        ],
        art.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "error: {}:5:13: images[0].sha256: `nothex` is not a sha256",
            cat.display()
        )),
        "{e}"
    );
    assert!(e.contains("  5 |     sha256: nothex\n"), "{e}");
    assert!(e.contains("image catalog is not valid"), "{e}");
}

#[test]
fn an_unknown_image_name_lists_the_known_ones() {
    let b = body(100);
    let art = tempfile::tempdir().unwrap();
    let cat = catalog(art.path(), "http://127.0.0.1:1/x.raw.zst", &b);
    let o = builder(
        &["images", "fetch", "debian-13", "--catalog", &cat],
        art.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no image `debian-13` in the catalog (known: debian-12)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_artifacts_folder_comes_from_the_environment_or_the_default() {
    let home = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &Path)]| {
        let mut c = builder_cmd(&["images", "list"]);
        c.env_remove("XDG_DATA_HOME").env("HOME", home.path());
        for (k, v) in envs {
            c.env(k, v);
        }
        stdout(&c.output().unwrap())
    };
    let art = home.path().join("art");
    assert!(
        run(&[("IRONSEED_ARTIFACTS", &art)]).contains(&format!("artifacts: {}\n", art.display()))
    );
    let want = if nix::unistd::geteuid().is_root() {
        "/var/lib/ironseed/artifacts".to_string()
    } else {
        home.path()
            .join(".local/share/ironseed/artifacts")
            .display()
            .to_string()
    };
    assert!(run(&[]).contains(&format!("artifacts: {want}\n")));
}
