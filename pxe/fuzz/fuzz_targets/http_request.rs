//! Fuzz the sendfile fast path's request-head parser and byte-range rules
//! (`pxe::proto::http`): the bytes a client sends before anything reaches the
//! router. A head the fast path takes must be a plain GET/HEAD under
//! `/artifacts/` whose path needs no decoding; any range it computes must lie
//! inside the file.
//!
//! Run: `cargo +nightly fuzz run http_request -- -max_total_time=60`
//! (from pxe/), or `fuzz/run.sh` for every target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pxe::proto::http::{FileHead, MAX_HEAD, Parse, Span, parse, span};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parse::Incomplete => assert!(data.len() < MAX_HEAD),
        Parse::Other => {}
        Parse::File { head_len, req } => {
            assert!(head_len <= data.len());
            // httparse also takes bare LF line ends (RFC 9112 §2.2 allows it).
            assert!(data[..head_len].ends_with(b"\n"));
            let rest = req
                .path
                .strip_prefix("/artifacts/")
                .expect("fast path outside /artifacts/");
            assert!(!rest.is_empty());
            assert!(
                !req.path.contains(['%', '?', '#', '\\', ' ']),
                "{:?}",
                req.path
            );
            // Whatever the client sent as Range, the answer stays inside the file.
            for len in [0u64, 1, 10, 4096, u64::MAX / 2] {
                let s = span(req.range.as_deref(), len);
                if let Span::Part { start, end } = s {
                    assert!(start <= end && end < len, "{s:?} of {len}");
                }
                let head = FileHead {
                    len,
                    span: s,
                    last_modified: "Thu, 01 Jan 1970 00:00:00 GMT",
                    date: "Thu, 01 Jan 1970 00:00:00 GMT",
                    content_type: "application/octet-stream",
                    keep_alive: req.keep_alive,
                };
                let (off, n) = head.body();
                assert!(off.checked_add(n).is_some_and(|e| e <= len));
                let text = head.render();
                assert!(text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1);
            }
        }
    }
});
