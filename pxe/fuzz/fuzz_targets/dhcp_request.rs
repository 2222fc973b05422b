//! Fuzz the DHCP request path: decode → node lookup → decide → lease
//! bookkeeping → encode, exactly as the server loop runs it (without the
//! panic guard, so any panic is a finding).
//!
//! Run: `cargo +nightly fuzz run dhcp_request -- -max_total_time=60`
//! (from pxe/). Seeds: corpus/dhcp_request/seed-* (see make_seeds.sh).
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use pxe::dhcp_policy::{DhcpMode, DhcpPolicyConfig, Firmware, NodeView, PoolRange};
use pxe::state::NodeState;
use pxe::leases::LeaseStore;
use pxe::proto::dhcp::{self, MacAddr, RecvPort};
use pxe::serve::dhcp::{DhcpContext, Outcome};

fn context(mode: DhcpMode) -> DhcpContext {
    let server = Ipv4Addr::new(10, 77, 1, 1);
    let mut policy = DhcpPolicyConfig::proxy(
        server,
        "10.77.1.0/24".parse().unwrap(),
        "http://10.77.1.1:8080",
    );
    policy.mode = mode;
    policy.gateway = Some(server);
    policy.dns = vec![server];
    // A tiny pool so exhaustion and reuse paths are reached quickly.
    policy.pool = Some(PoolRange {
        start: Ipv4Addr::new(10, 77, 1, 100),
        end: Ipv4Addr::new(10, 77, 1, 103),
    });
    let mut nodes = HashMap::new();
    // The MAC udhcpc used in the captured seeds is a known node.
    nodes.insert(
        MacAddr([0x52, 0x54, 0x00, 0x77, 0x00, 0x0a]),
        NodeView {
            hostname: "k3s1".into(),
            inventory_ip: Some(Ipv4Addr::new(10, 77, 1, 10)),
            state: NodeState::Armed,
            firmware: Firmware::Bios,
        },
    );
    let leases = LeaseStore::new(policy.pool, [Ipv4Addr::new(10, 77, 1, 10), server]);
    DhcpContext::new(policy, Arc::new(nodes), leases)
}

static PROXY: LazyLock<DhcpContext> = LazyLock::new(|| context(DhcpMode::Proxy));
static FULL: LazyLock<DhcpContext> = LazyLock::new(|| context(DhcpMode::Full));

fuzz_target!(|data: &[u8]| {
    // The codec alone: must never panic, and an accepted request must be
    // re-encodable.
    if let Ok(msg) = dhcp::decode_message(data) {
        let bytes = dhcp::encode(&msg).expect("re-encoding a decoded request");
        let _ = dhcp::decode_reply(&bytes).expect("decoding our own encoding");
    }
    let src = "10.77.1.50:68".parse().unwrap();
    for ctx in [&*PROXY, &*FULL] {
        for port in [RecvPort::Dhcp, RecvPort::PxeBoot] {
            if let Outcome::Send { bytes, .. } = ctx.handle(port, data, src) {
                // Every reply we send must be a well-formed DHCP message.
                let reply = dhcp::decode_reply(&bytes).expect("our reply decodes");
                assert_eq!(reply.opcode(), dhcp::Opcode::BootReply);
                dhcp::check_options(&bytes[dhcp::HEADER_LEN..])
                    .expect("our reply's options are well-formed");
            }
        }
    }
});
