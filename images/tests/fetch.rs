//! `images::fetch` against a real HTTP server on loopback that misbehaves on demand.

mod support;

use std::path::Path;
use std::time::Duration;

use images::catalog::{Entry, Kind, Source, manifest};
use images::fetch::{self, Event, FetchError, Options, Outcome, Status};
use sha2::{Digest, Sha256};
use support::server::TestServer;

/// Deterministic, incompressible-looking bytes; a little over 3 MiB so several chunks flow.
fn body(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn sha(b: &[u8]) -> String {
    fetch::hex(&Sha256::digest(b))
}

fn entry(name: &str, source: Source, b: &[u8]) -> Entry {
    Entry {
        name: name.into(),
        kind: Kind::RawZst,
        source,
        sha256: sha(b),
        size: b.len() as u64,
        description: None,
    }
}

fn opts() -> Options {
    Options {
        force: false,
        attempts: 4,
        backoff: Duration::from_millis(5),
    }
}

fn run(e: &Entry, art: &Path, o: &Options) -> (Result<Outcome, FetchError>, Vec<Event>) {
    let mut events = Vec::new();
    let r = fetch::fetch(e, art, o, &mut |ev| events.push(ev));
    (r, events)
}

const LEN: usize = 3 * (1 << 20) + 12345;

#[test]
fn a_fetch_is_byte_exact_and_publishes_checksum_and_manifest_entry() {
    let b = body(LEN, 1);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("debian-12", Source::Url(srv.url("debian-12.raw.zst")), &b);
    let (r, events) = run(&e, art.path(), &opts());
    let Outcome::Fetched {
        path,
        resumed_from,
        transferred,
    } = r.unwrap()
    else {
        panic!("not fetched")
    };
    assert_eq!(path, art.path().join("images/debian-12.raw.zst"));
    assert!(std::fs::read(&path).unwrap() == b, "bytes differ");
    assert_eq!((resumed_from, transferred), (0, LEN as u64));
    assert_eq!(
        std::fs::read_to_string(art.path().join("images/debian-12.raw.zst.sha256")).unwrap(),
        format!("{}  debian-12.raw.zst\n", sha(&b))
    );
    assert_eq!(manifest::read(art.path()).unwrap(), vec![e.clone()]);
    assert!(!fetch::partial_path(&e, art.path()).exists());
    assert!(matches!(events.last(), Some(Event::Progress { done }) if *done == LEN as u64));
    assert_eq!(fetch::status(&e, art.path(), false), Status::Recorded);
    assert_eq!(fetch::status(&e, art.path(), true), Status::Verified);
    assert_eq!(srv.requests().len(), 1);
    assert_eq!(srv.requests()[0].range, None);
}

#[test]
fn a_cut_download_resumes_with_a_range_request() {
    let b = body(LEN, 2);
    let srv = TestServer::start(b.clone());
    let cut = (1 << 20) + 4321;
    srv.set(|x| {
        x.cut_after = Some(cut);
        x.cuts = 1;
    });
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let (r, events) = run(&e, art.path(), &opts());
    r.unwrap();
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range, Some(cut), "the second request resumes");
    assert!(srv.bytes_sent() < 2 * LEN as u64, "{}", srv.bytes_sent());
    assert_eq!(srv.bytes_sent(), LEN as u64, "nothing was sent twice");
    assert!(events.iter().any(|e| matches!(e, Event::Retry { .. })));
}

#[test]
fn a_partial_left_by_an_interrupted_fetch_is_hashed_and_resumed() {
    let b = body(LEN, 3);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    // What Ctrl-C leaves: the first bytes in the partial, and the sha256 they belong to.
    let part = fetch::partial_path(&e, art.path());
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &b[..2_000_000]).unwrap();
    std::fs::write(
        format!("{}.expect", part.display()),
        format!("{}\n", e.sha256),
    )
    .unwrap();
    assert_eq!(
        fetch::status(&e, art.path(), false),
        Status::Partial { bytes: 2_000_000 }
    );
    let (r, events) = run(&e, art.path(), &opts());
    assert!(matches!(
        r.unwrap(),
        Outcome::Fetched { resumed_from: 2_000_000, transferred, .. } if transferred == LEN as u64 - 2_000_000
    ));
    assert!(events.contains(&Event::Start {
        total: LEN as u64,
        resume_from: 2_000_000
    }));
    assert_eq!(srv.requests()[0].range, Some(2_000_000));
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);
}

#[test]
fn a_partial_of_another_catalog_version_is_not_resumed() {
    let b = body(LEN, 4);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let part = fetch::partial_path(&e, art.path());
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, body(1000, 99)).unwrap();
    std::fs::write(format!("{}.expect", part.display()), "0".repeat(64)).unwrap();
    run(&e, art.path(), &opts()).0.unwrap();
    assert_eq!(srv.requests()[0].range, None);
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);
}

#[test]
fn a_server_that_ignores_range_still_ends_correct() {
    let b = body(LEN, 5);
    let srv = TestServer::start(b.clone());
    srv.set(|x| {
        x.cut_after = Some(1 << 20);
        x.cuts = 1;
        x.ignore_range = true;
    });
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let (r, events) = run(&e, art.path(), &opts());
    r.unwrap();
    assert!(
        std::fs::read(e.path_in(art.path())).unwrap() == b,
        "bytes differ"
    );
    assert_eq!(srv.requests()[1].range, Some(1 << 20), "it asked to resume");
    assert!(events.iter().any(|e| matches!(e, Event::Restart { .. })));
}

#[test]
fn a_mismatch_discards_the_partial_and_keeps_the_cached_good_copy() {
    let b = body(LEN, 6);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    run(&e, art.path(), &opts()).0.unwrap();
    let dest = e.path_in(art.path());
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dest).unwrap());

    srv.set(|x| x.corrupt = true);
    let mut o = opts();
    o.force = true;
    let err = run(&e, art.path(), &o).0.unwrap_err();
    let FetchError::Checksum {
        expected, actual, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(expected, &e.sha256);
    let mut bad = b.clone();
    bad[LEN / 2] ^= 0xff;
    assert_eq!(actual, &sha(&bad));
    let msg = err.to_string();
    assert!(msg.contains(&e.sha256) && msg.contains(actual), "{msg}");
    assert!(msg.contains("left untouched"), "{msg}");
    assert!(
        !fetch::partial_path(&e, art.path()).exists(),
        "partial removed"
    );
    assert!(std::fs::read(&dest).unwrap() == b, "cached copy kept");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dest).unwrap()),
        inode
    );
    assert_eq!(fetch::status(&e, art.path(), true), Status::Verified);
}

#[test]
fn a_mismatch_without_a_cached_copy_leaves_nothing() {
    let b = body(LEN, 7);
    let srv = TestServer::start(b.clone());
    srv.set(|x| x.corrupt = true);
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let err = run(&e, art.path(), &opts()).0.unwrap_err();
    assert!(
        matches!(err, FetchError::Checksum { kept: None, .. }),
        "{err}"
    );
    assert!(!e.path_in(art.path()).exists());
    assert!(!e.sha256_path_in(art.path()).exists());
    assert!(!fetch::partial_path(&e, art.path()).exists());
    assert_eq!(manifest::read(art.path()).unwrap(), vec![]);
}

#[test]
fn a_present_verified_copy_is_not_fetched_again_unless_forced() {
    let b = body(LEN, 8);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    run(&e, art.path(), &opts()).0.unwrap();
    let (r, _) = run(&e, art.path(), &opts());
    assert!(matches!(r.unwrap(), Outcome::AlreadyPresent { .. }));
    assert_eq!(srv.requests().len(), 1);
    assert!(
        !art.path().join("images/.partial/img.raw.zst.part").exists(),
        "no empty partial left behind"
    );
    let mut o = opts();
    o.force = true;
    assert!(matches!(
        run(&e, art.path(), &o).0.unwrap(),
        Outcome::Fetched { .. }
    ));
    assert_eq!(srv.requests().len(), 2);
}

#[test]
fn a_damaged_cached_copy_is_replaced() {
    let b = body(LEN, 9);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    run(&e, art.path(), &opts()).0.unwrap();
    let mut bad = b.clone();
    bad[7] ^= 1;
    std::fs::write(e.path_in(art.path()), &bad).unwrap();
    assert!(matches!(
        fetch::status(&e, art.path(), true),
        Status::Stale { .. }
    ));
    assert!(matches!(
        run(&e, art.path(), &opts()).0.unwrap(),
        Outcome::Fetched { .. }
    ));
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);
}

#[test]
fn transient_errors_are_retried_a_bounded_number_of_times() {
    let b = body(200_000, 10);
    let srv = TestServer::start(b.clone());
    srv.set(|x| x.fail = 2);
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let (r, events) = run(&e, art.path(), &opts());
    r.unwrap();
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Retry { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        retries,
        [Duration::from_millis(5), Duration::from_millis(10)],
        "exponential backoff"
    );

    srv.set(|x| x.fail = 100);
    let mut o = opts();
    o.force = true;
    let err = run(&e, art.path(), &o).0.unwrap_err();
    assert!(
        matches!(err, FetchError::Transfer { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(srv.requests().len(), 3 + 4);
}

#[test]
fn a_refused_connection_gives_up_and_keeps_the_partial() {
    let b = body(LEN, 11);
    let srv = TestServer::start(b.clone());
    srv.set(|x| {
        x.cut_after = Some(500_000);
        x.cuts = 1;
    });
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    // The server goes away after the first, cut response: every retry is refused.
    let mut o = opts();
    o.attempts = 3;
    let mut srv = Some(srv);
    let r = fetch::fetch(&e, art.path(), &o, &mut |ev| {
        if matches!(ev, Event::Retry { .. }) {
            srv.take();
        }
    });
    let err = r.unwrap_err();
    assert!(
        matches!(err, FetchError::Transfer { bytes: 500_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run the fetch again to resume"));
    let part = fetch::partial_path(&e, art.path());
    assert_eq!(std::fs::metadata(part).unwrap().len(), 500_000);
}

#[test]
fn a_missing_file_on_the_server_is_not_retried() {
    let srv = TestServer::start(vec![1, 2, 3]);
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("nothing-here")), &[1, 2, 3]);
    let err = run(&e, art.path(), &opts()).0.unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert_eq!(srv.requests().len(), 1);
    assert!(!fetch::partial_path(&e, art.path()).exists());
}

#[test]
fn a_source_of_another_size_is_refused_before_it_is_downloaded() {
    let b = body(LEN, 12);
    let srv = TestServer::start(b.clone());
    let art = tempfile::tempdir().unwrap();
    let mut e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    e.size -= 1;
    let (r, events) = run(&e, art.path(), &opts());
    let err = r.unwrap_err();
    assert!(
        matches!(err, FetchError::Size { actual, .. } if actual == LEN as u64),
        "{err}"
    );
    // Refused on the declared Content-Length, before a byte was stored. (The server may still
    // have pushed bytes into the socket buffers, so its count proves nothing here.)
    assert!(!events.iter().any(|e| matches!(e, Event::Progress { .. })));
    assert!(!fetch::partial_path(&e, art.path()).exists());
}

#[test]
fn local_path_sources_copy_and_resume() {
    let b = body(LEN, 13);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("golden.raw.zst");
    std::fs::write(&file, &b).unwrap();
    let art = tempfile::tempdir().unwrap();
    let e = entry("golden", Source::Path(file.clone()), &b);
    let part = fetch::partial_path(&e, art.path());
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &b[..1_000_000]).unwrap();
    std::fs::write(format!("{}.expect", part.display()), &e.sha256).unwrap();
    let (r, _) = run(&e, art.path(), &opts());
    assert!(matches!(
        r.unwrap(),
        Outcome::Fetched { resumed_from: 1_000_000, transferred, .. } if transferred == LEN as u64 - 1_000_000
    ));
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);

    let missing = entry("gone", Source::Path(src.path().join("nope")), &b);
    let err = run(&missing, art.path(), &opts()).0.unwrap_err();
    assert!(matches!(err, FetchError::Source { .. }), "{err}");
}

#[test]
fn https_sources_are_refused_with_a_way_out() {
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url("https://example.org/x.raw".into()), b"x");
    let err = run(&e, art.path(), &opts()).0.unwrap_err();
    assert!(matches!(err, FetchError::Unsupported { .. }), "{err}");
}

#[test]
fn a_second_concurrent_fetch_of_the_same_image_is_refused() {
    let b = body(LEN, 14);
    let srv = TestServer::start(b.clone());
    // Held mid-body until released: the first fetch is still running however
    // slowly the second one gets scheduled.
    srv.set(|x| x.hold_after = Some(256 << 10));
    let art = tempfile::tempdir().unwrap();
    let e = entry("img", Source::Url(srv.url("img.raw.zst")), &b);
    let (tx, rx) = std::sync::mpsc::channel();
    let (e2, a2) = (e.clone(), art.path().to_path_buf());
    let first = std::thread::spawn(move || {
        let mut sent = false;
        fetch::fetch(&e2, &a2, &opts(), &mut |ev| {
            if !sent && matches!(ev, Event::Progress { .. }) {
                sent = true;
                tx.send(()).unwrap();
            }
        })
    });
    rx.recv().unwrap();
    let err = run(&e, art.path(), &opts()).0.unwrap_err();
    assert!(matches!(err, FetchError::Busy { .. }), "{err}");
    srv.set(|x| x.hold_after = None);
    first.join().unwrap().unwrap();
    assert!(std::fs::read(e.path_in(art.path())).unwrap() == b);
}
