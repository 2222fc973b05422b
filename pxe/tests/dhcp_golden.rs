//! Codec golden tests over captured datagrams in `pxe/testdata/*.bin`
//! (how they were captured: testdata/CAPTURE.md).
//!
//! For each capture: decode → text must equal `NAME.txt` (regenerate with
//! `IRONSEED_REGEN_TESTDATA=1`), decode → encode → decode must be
//! identical, and client requests must give the expected `BootRequest`.

use std::path::{Path, PathBuf};

use pxe::proto::dhcp::{self, RecvPort};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn captures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(testdata())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    v.sort();
    v
}

#[test]
fn captured_datagrams_match_golden_text_and_round_trip() {
    let regen = std::env::var("IRONSEED_REGEN_TESTDATA").is_ok_and(|v| v == "1");
    let files = captures();
    assert!(
        files.len() >= 6,
        "expected the captured datagrams, found {files:?}"
    );
    for bin in files {
        let bytes = std::fs::read(&bin).unwrap();
        let name = bin.file_stem().unwrap().to_string_lossy().into_owned();
        let msg = if bytes[0] == 1 {
            dhcp::decode_message(&bytes)
        } else {
            dhcp::decode_reply(&bytes)
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = dhcp::describe(&msg);
        let golden = bin.with_extension("txt");
        if regen {
            std::fs::write(&golden, &text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with IRONSEED_REGEN_TESTDATA=1)",
                golden.display()
            )
        });
        assert_eq!(
            text,
            want,
            "{name}: decoded text differs from {}",
            golden.display()
        );
        // Round trip: our encoding of the decoded message decodes the same.
        let again = dhcp::decode_reply(&dhcp::encode(&msg).unwrap()).unwrap();
        assert_eq!(
            again, msg,
            "{name}: decode → encode → decode changed the message"
        );
    }
}

fn request(name: &str) -> dhcp::BootRequest {
    let bytes = std::fs::read(testdata().join(format!("{name}.bin"))).unwrap();
    dhcp::decode_request(&bytes, RecvPort::Dhcp).unwrap()
}

#[test]
fn udhcpc_requests_decode_to_boot_requests() {
    let d = request("udhcpc_discover_arch0");
    assert_eq!(d.msg_type, dhcp::MessageType::Discover);
    assert_eq!(d.client_arch, Some(0));
    assert_eq!(d.vendor_class.as_deref(), Some("PXEClient"));
    assert!(d.is_pxe_client() && !d.user_class_ipxe);
    assert_eq!(d.mac.to_string(), "52:54:00:77:00:0a");
    let r = request("udhcpc_request_arch7");
    assert_eq!(r.msg_type, dhcp::MessageType::Request);
    assert_eq!(r.client_arch, Some(7));
    assert_eq!(r.server_id, Some([10, 77, 1, 1].into()));
    assert_eq!(r.requested_ip, Some([10, 77, 1, 10].into()));
    let p = request("udhcpc_discover_arch7_proxy");
    assert_eq!(p.client_arch, Some(7));
}

#[test]
fn edk2_requests_decode_to_boot_requests() {
    let d = request("edk2_discover_uefi");
    assert_eq!(d.client_arch, Some(7));
    assert_eq!(
        d.vendor_class.as_deref(),
        Some("PXEClient:Arch:00007:UNDI:003000")
    );
    assert!(d.is_pxe_client() && !d.user_class_ipxe && d.broadcast_flag);
    assert_eq!(d.client_uuid.as_ref().map(Vec::len), Some(17));
    let r = request("edk2_request_uefi");
    assert_eq!(r.msg_type, dhcp::MessageType::Request);
    assert_eq!(r.requested_ip, Some([10, 77, 241, 10].into()));
}

#[test]
fn ipxe_requests_decode_to_boot_requests() {
    // Real iPXE (qemu's NIC ROM), captured when qemu is available; see pxe/testdata/CAPTURE.md.
    for bin in captures() {
        let name = bin.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("ipxe_") {
            continue;
        }
        let r = request(&name);
        assert!(r.user_class_ipxe, "{name}: iPXE user class not recognised");
        assert!(r.is_pxe_client(), "{name}");
        assert!(r.client_arch.is_some(), "{name}");
    }
}
