//! Fuzz the TFTP codec and what the server does with a request before any
//! file is opened: decode → encode → decode, option negotiation against
//! several server limits, and the requested file name's path confinement.
//!
//! Run: `cargo +nightly fuzz run tftp_packet -- -max_total_time=60`
//! (from pxe/), or `fuzz/run.sh` for every target.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use pxe::proto::tftp::{self, Limits, MAX_BLKSIZE, MIN_BLKSIZE, Negotiated, Packet};
use pxe::serve::tftp::{ProviderError, relative_path};

/// Limits the server can be configured with: the default, a tight one, one
/// with degenerate zeros (clamped by `negotiate`) and an unbounded one.
const LIMITS: [Limits; 4] = [
    Limits {
        max_blksize: MAX_BLKSIZE,
        max_windowsize: 64,
        max_window_bytes: 1 << 20,
        max_timeout_secs: 5,
    },
    Limits {
        max_blksize: 1024,
        max_windowsize: 4,
        max_window_bytes: 4096,
        max_timeout_secs: 1,
    },
    Limits {
        max_blksize: 0,
        max_windowsize: 0,
        max_window_bytes: 0,
        max_timeout_secs: 0,
    },
    Limits {
        max_blksize: u16::MAX,
        max_windowsize: u16::MAX,
        max_window_bytes: usize::MAX,
        max_timeout_secs: u8::MAX,
    },
];

fn check_negotiation(requested: &[(String, String)], limits: &Limits, file_size: u64) {
    let n: Negotiated = tftp::negotiate(requested, limits, file_size);
    // Without a blksize option the RFC 1350 default of 512 applies whatever
    // the server's maximum; a negotiated one must be within the limits.
    let negotiated_blksize = n.oack.iter().any(|(name, _)| name == "blksize");
    let max_blksize = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    assert!(
        !negotiated_blksize || (MIN_BLKSIZE..=max_blksize).contains(&n.blksize),
        "blksize {} out of range for {limits:?}",
        n.blksize
    );
    assert!(
        (1..=limits.max_windowsize.max(1)).contains(&n.windowsize),
        "windowsize {} out of range for {limits:?}",
        n.windowsize
    );
    // One block is always allowed; a larger window must fit the memory bound.
    assert!(
        n.windowsize == 1 || n.windowsize as usize * n.blksize as usize <= limits.max_window_bytes,
        "window {}×{} exceeds {limits:?}",
        n.windowsize,
        n.blksize
    );
    if let Some(t) = n.timeout_secs {
        assert!(t >= 1, "timeout 0 accepted");
    }
    // The OACK states exactly what was decided, once per option, and only for
    // options the client asked for.
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &n.oack {
        assert!(
            !seen.contains(&name.as_str()),
            "{name} twice in {:?}",
            n.oack
        );
        seen.push(name);
        assert!(
            requested.iter().any(|(r, _)| r.eq_ignore_ascii_case(name)),
            "{name} acknowledged but not requested"
        );
        let want = match name.as_str() {
            "blksize" => n.blksize.to_string(),
            "windowsize" => n.windowsize.to_string(),
            "timeout" => n.timeout_secs.expect("timeout in OACK").to_string(),
            "tsize" => file_size.to_string(),
            other => panic!("unexpected option {other:?} in OACK"),
        };
        assert_eq!(value, &want, "OACK value of {name}");
    }
    if !seen.contains(&"blksize") {
        assert_eq!(n.blksize, tftp::DEFAULT_BLKSIZE);
    }
    if !seen.contains(&"windowsize") {
        assert_eq!(n.windowsize, 1);
    }
    if !seen.contains(&"timeout") {
        assert_eq!(n.timeout_secs, None);
    }
    if !n.oack.is_empty() {
        // The OACK we would send must decode as such.
        let oack = Packet::Oack {
            options: n.oack.clone(),
        };
        assert_eq!(tftp::decode(&tftp::encode(&oack)), Ok(oack));
    }
}

/// The file name a client asks for must never leave the TFTP root.
fn check_path(requested: &str) {
    match relative_path(requested) {
        Ok(rel) => {
            assert!(rel.is_relative(), "{rel:?} from {requested:?}");
            assert!(rel.components().next().is_some());
            for c in rel.components() {
                assert!(
                    matches!(c, Component::Normal(_)),
                    "{c:?} in {rel:?} from {requested:?}"
                );
            }
            assert!(!requested.split('/').any(|p| p == ".."));
        }
        Err(ProviderError::AccessViolation(_)) => {
            assert!(requested.split('/').any(|p| p == ".."), "{requested:?}")
        }
        Err(ProviderError::NotFound) => {
            assert!(
                requested.split('/').all(|p| p.is_empty() || p == "."),
                "{requested:?}"
            )
        }
        Err(e) => panic!("unexpected {e} for {requested:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = tftp::decode(data) else {
        return;
    };
    let bytes = tftp::encode(&packet);
    let again = tftp::decode(&bytes).expect("our encoding of a decoded packet decodes");
    assert_eq!(again, packet, "decode(encode(p)) != p for {data:?}");
    assert_eq!(tftp::encode(&again), bytes, "encoding is not stable");
    let options = match &packet {
        Packet::Rrq(req) | Packet::Wrq(req) => {
            check_path(&req.filename);
            &req.options
        }
        Packet::Oack { options } => options,
        _ => return,
    };
    // File size from the input, so tsize answers vary.
    let file_size = data.iter().fold(0u64, |a, &b| a.rotate_left(7) ^ b as u64);
    for limits in &LIMITS {
        check_negotiation(options, limits, file_size);
    }
});
