//! Fuzz the HTTP server's path parsing: the MAC in `/boot/<mac>.ipxe`
//! (`boot_policy::parse_boot_file`, and `MacAddr`'s parser under it) and the
//! confinement of `/artifacts/<path>` (`relative_path`).
//!
//! Run: `cargo +nightly fuzz run http_path -- -max_total_time=60`
//! (from pxe/), or `fuzz/run.sh` for every target.
#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use pxe::boot_policy::parse_boot_file;
use pxe::proto::dhcp::MacAddr;
use pxe::serve::tftp::relative_path;

/// An accepted MAC must be exactly what the documented spelling allows: six
/// hex pairs separated by `:` or `-`, any case. Formatting it gives the
/// canonical 17-char lowercase colon form, which parses back to the same MAC.
fn check_mac(text: &str, mac: MacAddr) {
    let canonical = mac.to_string();
    assert_eq!(canonical.len(), 17, "{canonical:?}");
    for (i, c) in canonical.chars().enumerate() {
        if i % 3 == 2 {
            assert_eq!(c, ':', "{canonical:?}");
        } else {
            assert!(matches!(c, '0'..='9' | 'a'..='f'), "{canonical:?}");
        }
    }
    assert_eq!(canonical.parse::<MacAddr>(), Ok(mac));
    assert_eq!(parse_boot_file(&format!("{canonical}.ipxe")), Some(mac));
    assert_eq!(
        text.replace('-', ":").to_ascii_lowercase(),
        canonical,
        "{text:?} accepted as {canonical}"
    );
}

fn check_relative(path: &str) {
    if let Ok(rel) = relative_path(path) {
        assert!(rel.is_relative(), "{rel:?} from {path:?}");
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{rel:?} from {path:?}"
        );
        assert!(rel.components().all(|c| c.as_os_str() != ".."));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `/boot/{file}`: axum hands over the percent-decoded last segment.
    if let Some(mac) = parse_boot_file(text) {
        check_mac(text.strip_suffix(".ipxe").expect("only *.ipxe parses"), mac);
    }
    if let Ok(mac) = text.parse::<MacAddr>() {
        check_mac(text, mac);
    }
    // `/artifacts/{*path}`: the percent-decoded rest of the path.
    check_relative(text);
    if let Some(rest) = text.strip_prefix("/artifacts/") {
        check_relative(rest);
    }
});
