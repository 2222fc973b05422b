//! Socket-level tests of the TFTP server with an in-test client built on the
//! codec: every option, every error path, rollover, windows and retransmission.
//! No external binaries needed.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pxe::proto::tftp::{ErrorCode, Mode, Packet, Request, encode};
use pxe::serve::tftp::{BoxFuture, Content, Provider, ProviderError, TftpConfig, TftpStats};
use support::tftp::{Raw, TestServer, get, pattern, receive};

fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A root with a few files; returns (tempdir, file contents).
fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    dir
}

/// Long timeouts: tests that count packets must not see spurious resends.
fn patient() -> TftpConfig {
    TftpConfig {
        timeout: Duration::from_secs(30),
        ..TftpConfig::default()
    }
}

#[test]
fn plain_rrq_is_lock_step_512() {
    let data = pattern(2000, 1);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let got = get(srv.addr, "f.bin", &[]).unwrap();
    assert_eq!(got.data, data);
    assert!(got.oack.is_none(), "no options requested, no OACK expected");
    assert_ne!(got.tid, srv.addr, "transfer must come from a new TID");
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.bytes_sent.load(Ordering::Relaxed), 2000);
}

#[test]
fn every_option_is_acknowledged() {
    let data = pattern(100_000, 2);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let got = get(
        srv.addr,
        "f.bin",
        &[
            ("blksize", "1468"),
            ("tsize", "0"),
            ("timeout", "5"),
            ("windowsize", "16"),
            ("x-unknown", "1"),
        ],
    )
    .unwrap();
    assert_eq!(got.data, data);
    assert_eq!(
        got.oack.unwrap(),
        opts(&[
            ("blksize", "1468"),
            ("tsize", "100000"),
            ("timeout", "5"),
            ("windowsize", "16")
        ])
    );
}

#[test]
fn clamped_options_and_max_blksize() {
    // Two blocks only: a whole 16 × 64 KiB window would overflow this test
    // client's default socket receive buffer (the same happens to atftp).
    let data = pattern(100_000, 3);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let got = get(
        srv.addr,
        "f.bin",
        &[("blksize", "70000"), ("windowsize", "1000")],
    )
    .unwrap();
    assert_eq!(got.data, data);
    // 65464 × 16 = 1,047,424 ≤ 1 MiB window budget; 17 would exceed it.
    assert_eq!(
        got.oack.unwrap(),
        opts(&[("blksize", "65464"), ("windowsize", "16")])
    );
}

#[test]
fn invalid_option_values_are_ignored() {
    let data = pattern(700, 4);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    // All invalid: no OACK, plain 512-byte transfer.
    let got = get(
        srv.addr,
        "f.bin",
        &[
            ("blksize", "4"),
            ("windowsize", "0"),
            ("timeout", "0"),
            ("tsize", "12"),
        ],
    )
    .unwrap();
    assert_eq!(got.data, data);
    assert!(got.oack.is_none());
}

#[test]
fn size_multiple_of_blksize_ends_with_empty_block() {
    for (size, opts) in [
        (1024usize, vec![]),
        (0, vec![]),
        (1468 * 32, vec![("blksize", "1468"), ("windowsize", "8")]),
    ] {
        let data = pattern(size, 5);
        let dir = root_with(&[("f.bin", &data)]);
        let srv = TestServer::start_fs(dir.path(), patient());
        let got = get(srv.addr, "f.bin", &opts).unwrap();
        assert_eq!(got.data, data, "size {size}");
        srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn block_numbers_roll_over_past_65535() {
    // blksize 8 keeps the file small while needing 65,549 blocks.
    let data = pattern(65_536 * 8 + 100, 6);
    let dir = root_with(&[("big.bin", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let got = get(
        srv.addr,
        "big.bin",
        &[("blksize", "8"), ("windowsize", "64")],
    )
    .unwrap();
    assert_eq!(got.data.len(), data.len());
    assert!(got.data == data, "content differs after rollover");
}

#[test]
fn write_request_is_refused() {
    let dir = root_with(&[]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.send_to(
        &Packet::Wrq(Request {
            filename: "upload".into(),
            mode: Mode::Octet,
            options: vec![],
        }),
        srv.addr,
    );
    assert_eq!(raw.expect_error().0, ErrorCode::AccessViolation);
    assert!(!dir.path().join("upload").exists());
    assert_eq!(srv.stats.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn missing_file_and_directory() {
    let dir = root_with(&[("sub/f", b"x")]);
    let srv = TestServer::start_fs(dir.path(), patient());
    assert_eq!(
        get(srv.addr, "nope", &[]).err().unwrap().0,
        ErrorCode::FileNotFound
    );
    assert_eq!(
        get(srv.addr, "sub/f/x", &[]).err().unwrap().0,
        ErrorCode::FileNotFound
    );
    assert_eq!(
        get(srv.addr, "sub", &[]).err().unwrap().0,
        ErrorCode::AccessViolation
    );
    assert_eq!(
        get(srv.addr, "/", &[]).err().unwrap().0,
        ErrorCode::FileNotFound
    );
    assert_eq!(get(srv.addr, "sub/f", &[]).unwrap().data, b"x");
    srv.wait_stat(|s| s.refused.load(Ordering::Relaxed), 4);
    assert_eq!(srv.stats.failed.load(Ordering::Relaxed), 0);
}

#[test]
fn paths_are_confined_to_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let data = pattern(3000, 7);
    let dir = root_with(&[("boot/undionly.kpxe", &data)]);
    let root = dir.path();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.join("out-link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out-dir")).unwrap();
    std::os::unix::fs::symlink("boot/undionly.kpxe", root.join("in-link")).unwrap();
    let srv = TestServer::start_fs(root, patient());

    let refused = |path: &str| {
        let err = get(srv.addr, path, &[]).err().unwrap_or_else(|| {
            panic!("{path:?} was served");
        });
        assert_eq!(err.0, ErrorCode::AccessViolation, "{path:?}: {err:?}");
    };
    refused("../secret");
    refused("boot/../../secret");
    refused("out-link");
    refused("out-dir/secret");
    refused("/out-link");
    let rel = format!(
        "{}/secret",
        pathdiff(outside.path(), root).to_str().unwrap()
    );
    refused(&rel);
    // An absolute path is taken relative to the root: the outside file's absolute
    // path does not exist under the root.
    let abs = outside.path().join("secret");
    let err = get(srv.addr, abs.to_str().unwrap(), &[]).err().unwrap();
    assert_eq!(err.0, ErrorCode::FileNotFound);
    // Leading slash and symlinks inside the root are fine.
    assert_eq!(
        get(srv.addr, "/boot/undionly.kpxe", &[]).unwrap().data,
        data
    );
    assert_eq!(get(srv.addr, "in-link", &[]).unwrap().data, data);
}

/// `../../x` style path from `root` to `target` (both absolute, canonical).
fn pathdiff(target: &std::path::Path, root: &std::path::Path) -> std::path::PathBuf {
    let target = std::fs::canonicalize(target).unwrap();
    let root = std::fs::canonicalize(root).unwrap();
    let mut up = std::path::PathBuf::new();
    for _ in root.components().skip(1) {
        up.push("..");
    }
    up.join(target.strip_prefix("/").unwrap())
}

#[test]
fn netascii_and_malformed_requests_are_refused() {
    let dir = root_with(&[("f", b"abc\n")]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.send_to(
        &Packet::Rrq(Request {
            filename: "f".into(),
            mode: Mode::Netascii,
            options: vec![],
        }),
        srv.addr,
    );
    assert_eq!(raw.expect_error().0, ErrorCode::IllegalOperation);
    // RRQ whose mode string is not terminated.
    raw.sock.send_to(b"\x00\x01f\x00oct", srv.addr).unwrap();
    assert_eq!(raw.expect_error().0, ErrorCode::IllegalOperation);
    // Stray DATA/ACK at the listening port are ignored; the next request works.
    raw.send_to(&Packet::Ack { block: 1 }, srv.addr);
    raw.sock.send_to(b"\x00\x09zz", srv.addr).unwrap();
    raw.rrq("f", &[]);
    assert!(matches!(raw.recv().0, Packet::Data { block: 1, .. }));
}

#[test]
fn tsize_probe_then_real_request() {
    // EDK2 (docs/reference.md "Firmware behaviour" 7): RRQ tsize only, read OACK, ERROR 8,
    // RRQ again.
    let data = pattern(50_000, 8);
    let dir = root_with(&[("snponly.efi", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("snponly.efi", &[("tsize", "0")]);
    let (oack, tid) = raw.recv();
    assert_eq!(
        oack,
        Packet::Oack {
            options: opts(&[("tsize", "50000")])
        }
    );
    raw.send_to(
        &Packet::Error {
            code: ErrorCode::OptionRefused,
            msg: "probe".into(),
        },
        tid,
    );
    srv.wait_stat(|s| s.aborted_by_client.load(Ordering::Relaxed), 1);
    raw.rrq(
        "snponly.efi",
        &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
    );
    let got = receive(&raw).unwrap();
    assert_eq!(got.data, data);
    assert_ne!(got.tid, tid);
    srv.wait_stat(|s| s.finished.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(srv.stats.retransmits.load(Ordering::Relaxed), 0);
}

#[test]
fn client_error_during_data_ends_transfer() {
    let dir = root_with(&[("f", &pattern(10_000, 9))]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[]);
    let (p, tid) = raw.recv();
    assert!(matches!(p, Packet::Data { block: 1, .. }));
    raw.send_to(
        &Packet::Error {
            code: ErrorCode::DiskFull,
            msg: "full".into(),
        },
        tid,
    );
    srv.wait_stat(|s| s.aborted_by_client.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.finished.load(Ordering::Relaxed), 0);
}

#[test]
fn retransmission_stops_at_the_retry_limit() {
    let dir = root_with(&[("f", &pattern(5000, 10))]);
    let cfg = TftpConfig {
        timeout: Duration::from_millis(50),
        max_retries: 3,
        ..TftpConfig::default()
    };
    let srv = TestServer::start_fs(dir.path(), cfg);
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[]);
    // Never ACK: block 1 once plus 3 resends, then ERROR 0.
    let mut data_packets = 0;
    loop {
        match raw.recv().0 {
            Packet::Data { block: 1, .. } => data_packets += 1,
            Packet::Error { code, .. } => {
                assert_eq!(code, ErrorCode::NotDefined);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data_packets, 4);
    srv.wait_stat(|s| s.failed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.retransmits.load(Ordering::Relaxed), 3);
}

#[test]
fn oack_is_retransmitted_until_acked() {
    let data = pattern(3000, 11);
    let dir = root_with(&[("f", &data)]);
    let cfg = TftpConfig {
        timeout: Duration::from_millis(50),
        max_retries: 50,
        ..TftpConfig::default()
    };
    let srv = TestServer::start_fs(dir.path(), cfg);
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[("blksize", "1000")]);
    let (first, tid) = raw.recv();
    let (second, tid2) = raw.recv();
    assert_eq!(first, second);
    assert!(matches!(first, Packet::Oack { .. }));
    assert_eq!(tid, tid2);
    // Now behave: the transfer completes despite the lost first OACK.
    raw.send_to(&Packet::Ack { block: 0 }, tid);
    let mut got = Vec::new();
    loop {
        let (p, _) = raw.recv();
        match p {
            Packet::Oack { .. } => continue, // a resend that crossed our ACK
            Packet::Data { block, data } => {
                if block as usize == got.len() / 1000 + 1 {
                    got.extend_from_slice(&data);
                }
                raw.send_to(&Packet::Ack { block }, tid);
                if data.len() < 1000 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, data);
}

#[test]
fn duplicate_ack_does_not_trigger_a_resend() {
    // Sorcerer's Apprentice: answering every duplicate ACK doubles all traffic.
    let data = pattern(512 * 4 + 10, 12);
    let dir = root_with(&[("f", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[]);
    let (p, tid) = raw.recv();
    assert!(matches!(p, Packet::Data { block: 1, .. }));
    raw.send_to(&Packet::Ack { block: 1 }, tid);
    raw.send_to(&Packet::Ack { block: 1 }, tid);
    assert!(matches!(raw.recv().0, Packet::Data { block: 2, .. }));
    raw.send_to(&Packet::Ack { block: 2 }, tid);
    // If the duplicate ACK 1 had caused a second block 2, it would arrive here
    // (loopback keeps order) instead of block 3.
    assert!(matches!(raw.recv().0, Packet::Data { block: 3, .. }));
}

#[test]
fn mid_window_ack_resends_from_the_next_block() {
    let data = pattern(512 * 20, 13);
    let dir = root_with(&[("f", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[("windowsize", "4")]);
    let (p, tid) = raw.recv();
    assert!(matches!(p, Packet::Oack { .. }));
    raw.send_to(&Packet::Ack { block: 0 }, tid);
    let blocks = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| match raw.recv().0 {
                Packet::Data { block, .. } => block,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    assert_eq!(blocks(4), vec![1, 2, 3, 4]);
    // Pretend block 3 was lost: ACK 2.
    raw.send_to(&Packet::Ack { block: 2 }, tid);
    assert_eq!(blocks(4), vec![3, 4, 5, 6]);
    raw.send_to(&Packet::Ack { block: 6 }, tid);
    assert_eq!(blocks(4), vec![7, 8, 9, 10]);
}

#[test]
fn packets_from_a_foreign_tid_get_error_5() {
    let data = pattern(512 * 3 + 1, 14);
    let dir = root_with(&[("f", &data)]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[]);
    let (p, tid) = raw.recv();
    assert!(matches!(p, Packet::Data { block: 1, .. }));
    let intruder = Raw::new(srv.addr);
    intruder.send_to(&Packet::Ack { block: 1 }, tid);
    assert_eq!(intruder.expect_error().0, ErrorCode::UnknownTid);
    // The intruder's ACK did not advance the real transfer: still lock-step
    // from block 1 for the real client.
    let mut got = match p {
        Packet::Data { data, .. } => data,
        _ => unreachable!(),
    };
    for block in 1u16..=3 {
        raw.send_to(&Packet::Ack { block }, tid);
        match raw.recv().0 {
            Packet::Data { block: b, data } => {
                assert_eq!(b, block + 1);
                got.extend_from_slice(&data);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    raw.send_to(&Packet::Ack { block: 4 }, tid);
    assert_eq!(got, data);
}

#[test]
fn transfers_over_the_cap_get_busy() {
    let dir = root_with(&[("f", &pattern(5000, 15))]);
    let cfg = TftpConfig {
        max_transfers: 1,
        ..patient()
    };
    let srv = TestServer::start_fs(dir.path(), cfg);
    let first = Raw::new(srv.addr);
    first.rrq("f", &[]);
    let (_, tid) = first.recv();
    let second = Raw::new(srv.addr);
    second.rrq("f", &[]);
    let (code, msg) = second.expect_error();
    assert_eq!((code, msg.as_str()), (ErrorCode::NotDefined, "server busy"));
    // Ending the first transfer frees the slot.
    first.send_to(
        &Packet::Error {
            code: ErrorCode::NotDefined,
            msg: "bye".into(),
        },
        tid,
    );
    srv.wait_stat(|s| s.aborted_by_client.load(Ordering::Relaxed), 1);
    assert!(get(srv.addr, "f", &[]).is_ok());
}

#[test]
fn shutdown_ends_running_transfers() {
    let dir = root_with(&[("f", &pattern(5000, 16))]);
    let srv = TestServer::start_fs(dir.path(), patient());
    let raw = Raw::new(srv.addr);
    raw.rrq("f", &[]);
    let _ = raw.recv();
    let stats: Arc<TftpStats> = srv.stats.clone();
    // Drop joins the server thread: it must return although a transfer is
    // waiting for an ACK with a 30 s timeout.
    drop(srv);
    let (code, msg) = raw.expect_error();
    assert_eq!(
        (code, msg.as_str()),
        (ErrorCode::NotDefined, "server shutting down")
    );
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
}

/// Generates a per-client file: shows that content can depend on the client.
struct PerClient;

impl Provider for PerClient {
    fn open<'a>(
        &'a self,
        client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>> {
        Box::pin(async move {
            match path {
                "boot.ipxe" => Ok(Content::from_bytes(
                    format!("#!ipxe\necho hello {}\n", client.port()).into_bytes(),
                )),
                _ => Err(ProviderError::NotFound),
            }
        })
    }
}

#[test]
fn provider_generates_content_per_client() {
    let srv = TestServer::start(Arc::new(PerClient), patient());
    for _ in 0..2 {
        let raw = Raw::new(srv.addr);
        let port = raw.sock.local_addr().unwrap().port();
        raw.rrq("boot.ipxe", &[("tsize", "0")]);
        let got = receive(&raw).unwrap();
        let want = format!("#!ipxe\necho hello {port}\n");
        assert_eq!(String::from_utf8(got.data).unwrap(), want);
        assert_eq!(
            got.oack.unwrap(),
            opts(&[("tsize", &want.len().to_string())])
        );
    }
    assert_eq!(
        get(srv.addr, "other", &[]).err().unwrap().0,
        ErrorCode::FileNotFound
    );
}

#[test]
fn wire_bytes_of_a_request_are_what_firmware_sends() {
    // Guards encode() against accidental changes: the bytes the tests send are
    // the bytes real clients send.
    let bytes = encode(&support::tftp::rrq("a", &[("tsize", "0")]));
    assert_eq!(bytes, b"\x00\x01a\x00octet\x00tsize\x000\x00");
}

/// Protects the transfer slots from a client that stalls without ever timing out (it
/// asks for a long `timeout` or ACKs just often enough): the transfer is cut at the
/// per-transfer deadline with an ERROR, however patient the retransmission timer is.
#[test]
fn a_transfer_is_cut_at_its_deadline() {
    let data = pattern(100_000, 11);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(
        dir.path(),
        TftpConfig {
            deadline: Duration::from_secs(1),
            ..patient()
        },
    );
    let raw = Raw::new(srv.addr);
    let t0 = std::time::Instant::now();
    raw.rrq("f.bin", &[]);
    // DATA 1 arrives and is never acknowledged; the next resend would be 30 s away.
    assert!(matches!(raw.recv().0, Packet::Data { block: 1, .. }));
    let (code, msg) = raw.expect_error();
    let took = t0.elapsed();
    println!("deadline 1 s: transfer cut after {took:?}");
    assert_eq!(
        (code, msg.as_str()),
        (ErrorCode::NotDefined, "transfer took too long")
    );
    assert!(took < Duration::from_secs(10), "cut after {took:?}");
    srv.wait_stat(|s| s.deadline_exceeded.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.failed.load(Ordering::Relaxed), 1);
}

/// Protects the slots from one host: past its share of transfers a source address is
/// refused at once, while another address is still served and the stalled transfers run on.
#[test]
fn one_address_gets_only_its_share_of_transfers() {
    let data = pattern(10_000, 12);
    let dir = root_with(&[("f.bin", &data)]);
    let srv = TestServer::start_fs(
        dir.path(),
        TftpConfig {
            max_per_address: 2,
            ..patient()
        },
    );
    // Two stalled transfers from 127.0.0.1 (first DATA never acknowledged).
    let stalled: Vec<Raw> = (0..2)
        .map(|_| {
            let r = Raw::new(srv.addr);
            r.rrq("f.bin", &[]);
            assert!(matches!(r.recv().0, Packet::Data { block: 1, .. }));
            r
        })
        .collect();
    let third = Raw::new(srv.addr);
    third.rrq("f.bin", &[]);
    assert_eq!(
        third.expect_error(),
        (
            ErrorCode::NotDefined,
            "too many transfers from this address".to_string()
        )
    );
    assert_eq!(srv.stats.refused_per_address.load(Ordering::Relaxed), 1);
    // Another address (all of 127/8 is loopback) is not affected.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other
        .set_read_timeout(Some(support::tftp::RECV_WAIT))
        .unwrap();
    let raw = Raw {
        sock: other,
        server: srv.addr,
    };
    raw.rrq("f.bin", &[]);
    assert_eq!(receive(&raw).unwrap().data, data);
    drop(stalled);
}
