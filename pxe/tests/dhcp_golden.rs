//! Codec golden tests over captured datagrams in `pxe/testdata/*.bin`
//! (how they were captured: testdata/CAPTURE.md).
//!
//! For each capture: decode → text must equal `NAME.txt` (compared first; only
//! `UPDATE_GOLDEN=1` outside CI then rewrites the texts that differ), decode →
//! encode → decode must be identical, and client requests must give the
//! expected `BootRequest`. The server's own captured replies (`ironseed_*`) must
//! come back byte for byte: re-encoded from their decoding, and rebuilt by the
//! server's handler from the captured client request they answered.

#[path = "../../images/tests/support/ci.rs"]
mod ci;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pxe::dhcp_policy::{DhcpMode, DhcpPolicyConfig, Firmware, NodeView, PoolRange};
use pxe::leases::LeaseStore;
use pxe::proto::dhcp::{self, MacAddr, RecvPort};
use pxe::serve::dhcp::{DhcpContext, Outcome};
use pxe::state::NodeState;

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

fn read(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join(format!("{name}.bin"))).unwrap()
}

/// Protects the codec against silent change: every capture decodes to its reviewed text and
/// survives decode → encode → decode. A text that differs fails the test, unless
/// `UPDATE_GOLDEN=1` (outside CI) asked for the new texts, which are then written and listed.
#[test]
fn captured_datagrams_match_golden_text_and_round_trip() {
    let update = ci::update_golden();
    let files = captures();
    assert!(
        files.len() >= 6,
        "expected the captured datagrams, found {files:?}"
    );
    let mut differ = Vec::new();
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
        match std::fs::read_to_string(&golden) {
            Ok(want) if want == text => {}
            Ok(want) => differ.push((golden, text, format!("{name}: was\n{want}"))),
            Err(e) => differ.push((golden, text, format!("{name}: {e}"))),
        }
        // Round trip: our encoding of the decoded message decodes the same.
        let again = dhcp::decode_reply(&dhcp::encode(&msg).unwrap()).unwrap();
        assert_eq!(
            again, msg,
            "{name}: decode → encode → decode changed the message"
        );
    }
    if update {
        for (golden, text, _) in &differ {
            std::fs::write(golden, text).unwrap();
        }
        for (golden, text, was) in &differ {
            eprintln!("UPDATED {}:\n{was}\nnow\n{text}", golden.display());
        }
        return;
    }
    let report: Vec<String> = differ
        .iter()
        .map(|(golden, text, was)| {
            format!(
                "{} differs: {was}\ndecodes now to\n{text}",
                golden.display()
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "{}\nIf the codec change is intended: UPDATE_GOLDEN=1 cargo test -p pxe --test dhcp_golden",
        report.join("\n")
    );
}

/// One captured server reply and what produced it: the client's captured request, and the
/// server's configuration at capture time (the JSON given to `examples/dhcp_serve.rs` by the
/// netns tests and `testdata/capture-firmware.sh`).
struct Exchange {
    reply: &'static str,
    request: &'static str,
    lab: Lab,
}

#[derive(Clone, Copy)]
enum Lab {
    /// dhcp_netns::full_mode_udhcpc_gets_lease_and_boot_file
    Full1,
    /// dhcp_netns::proxy_mode_answers_pxe_clients_only
    Proxy2,
    /// capture-firmware.sh (bios and uefi)
    Firmware241,
}

const EXCHANGES: &[Exchange] = &[
    Exchange {
        reply: "ironseed_offer_full_bios",
        request: "udhcpc_discover_arch0",
        lab: Lab::Full1,
    },
    Exchange {
        reply: "ironseed_ack_full_efi",
        request: "udhcpc_request_arch7",
        lab: Lab::Full1,
    },
    Exchange {
        reply: "ironseed_proxy_offer_efi",
        request: "udhcpc_discover_arch7_proxy",
        lab: Lab::Proxy2,
    },
    Exchange {
        reply: "ironseed_offer_to_ipxe",
        request: "ipxe_discover_bios",
        lab: Lab::Firmware241,
    },
    Exchange {
        reply: "ironseed_ack_to_ipxe",
        request: "ipxe_request_bios",
        lab: Lab::Firmware241,
    },
    Exchange {
        reply: "ironseed_offer_to_edk2",
        request: "edk2_discover_uefi",
        lab: Lab::Firmware241,
    },
    Exchange {
        reply: "ironseed_ack_to_edk2",
        request: "edk2_request_uefi",
        lab: Lab::Firmware241,
    },
];

/// The server as it was configured for `lab`, with fresh (empty) leases.
fn server(lab: Lab) -> DhcpContext {
    let net = |c: u8| Ipv4Addr::new(10, 77, c, 0);
    let (c, mode, node): (u8, DhcpMode, Option<(&str, &str, Firmware)>) = match lab {
        Lab::Full1 => (
            1,
            DhcpMode::Full,
            Some(("52:54:00:77:00:0a", "k3s1", Firmware::Bios)),
        ),
        Lab::Proxy2 => (2, DhcpMode::Proxy, None),
        Lab::Firmware241 => (
            241,
            DhcpMode::Full,
            Some(("52:54:00:77:f1:01", "ipxevm", Firmware::Bios)),
        ),
    };
    let server_ip = Ipv4Addr::new(10, 77, c, 1);
    let mut policy = DhcpPolicyConfig::proxy(
        server_ip,
        format!("{}/24", net(c)).parse().unwrap(),
        format!("http://{server_ip}:8080"),
    );
    policy.mode = mode;
    policy.lease_secs = 600;
    if mode == DhcpMode::Full {
        policy.gateway = Some(server_ip);
        policy.pool = Some(PoolRange {
            start: Ipv4Addr::new(10, 77, c, 100),
            end: Ipv4Addr::new(10, 77, c, 150),
        });
    }
    if let Lab::Full1 = lab {
        policy.dns = vec![server_ip];
    }
    policy.validate().unwrap();
    let nodes: HashMap<MacAddr, NodeView> = node
        .into_iter()
        .map(|(mac, host, firmware)| {
            (
                mac.parse().unwrap(),
                NodeView {
                    hostname: host.into(),
                    inventory_ip: Some(Ipv4Addr::new(10, 77, c, 10)),
                    state: NodeState::default(),
                    firmware,
                    efi_boot_file: None,
                    secure_boot: false,
                },
            )
        })
        .collect();
    let reserved: Vec<Ipv4Addr> = nodes
        .values()
        .filter_map(|n| n.inventory_ip)
        .chain([server_ip])
        .collect();
    let leases = LeaseStore::new(policy.pool, reserved);
    DhcpContext::new(policy, Arc::new(nodes), leases)
}

/// Protects what goes on the wire: the server's captured replies are what it sends today, byte
/// for byte. Each is re-encoded from its own decoding (the encoder is deterministic and loses
/// nothing), and rebuilt by the server's handler (decode → policy → encode, the path of every
/// real reply) from the captured request it answered. A change to an option, its order, the
/// header or padding fails here; an intended one is re-captured (testdata/CAPTURE.md).
#[test]
fn the_servers_captured_replies_are_reproduced_byte_for_byte() {
    let ours: Vec<String> = captures()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ironseed_"))
        .collect();
    let covered: Vec<&str> = EXCHANGES.iter().map(|x| x.reply).collect();
    assert_eq!(
        ours,
        {
            let mut c = covered.clone();
            c.sort();
            c
        },
        "every captured server reply has its exchange here"
    );
    for x in EXCHANGES {
        let want = read(x.reply);
        let decoded = dhcp::decode_reply(&want).unwrap();
        assert!(
            dhcp::encode(&decoded).unwrap() == want,
            "{}: re-encoding the decoded reply changed its bytes",
            x.reply
        );
        let src: SocketAddr = "0.0.0.0:68".parse().unwrap();
        let got = match server(x.lab).handle(RecvPort::Dhcp, &read(x.request), src) {
            Outcome::Send { bytes, .. } => bytes,
            Outcome::Nothing => panic!("{}: the server no longer answers {}", x.reply, x.request),
        };
        if got != want {
            let now = dhcp::describe(&dhcp::decode_reply(&got).unwrap());
            panic!(
                "{}: the server's reply to {} is no longer the captured one \
                 ({} bytes now, {} captured)\ncaptured:\n{}\nnow:\n{now}",
                x.reply,
                x.request,
                got.len(),
                want.len(),
                dhcp::describe(&decoded),
            );
        }
    }
}

fn request(name: &str) -> dhcp::BootRequest {
    dhcp::decode_request(&read(name), RecvPort::Dhcp).unwrap()
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
