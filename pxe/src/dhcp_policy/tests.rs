//! The decision table: arch × iPXE × mode × known/unknown × message/port.
//!
//! Expected values are written out from the issue text, not derived from the
//! implementation, so a change in `decide` that breaks the table fails here.

use super::*;
use std::collections::HashSet;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
const KNOWN: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
const UNKNOWN: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x99]);
const KNOWN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 10);
const POOL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 100);

fn cfg(mode: DhcpMode, pool: bool) -> DhcpPolicyConfig {
    let mut c = DhcpPolicyConfig::proxy(
        SERVER,
        "10.77.1.0/24".parse().unwrap(),
        "http://10.77.1.1:8080",
    );
    c.mode = mode;
    c.gateway = Some(SERVER);
    c.dns = vec![SERVER];
    if pool {
        c.pool = Some(PoolRange {
            start: POOL_IP,
            end: Ipv4Addr::new(10, 77, 1, 200),
        });
    }
    c.validate().unwrap();
    c
}

fn node() -> NodeView {
    NodeView {
        hostname: "k3s1".into(),
        inventory_ip: Some(KNOWN_IP),
        state: NodeState::Armed,
        firmware: Firmware::Uefi,
        efi_boot_file: None,
        secure_boot: false,
    }
}

/// A one-address fake pool: offers POOL_IP to anyone, acks only POOL_IP.
struct OnePool;
impl LeaseView for OnePool {
    fn offer_for(&self, _: &MacAddr, _: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        Some(POOL_IP)
    }
    fn may_ack(&self, _: &MacAddr, ip: Ipv4Addr) -> bool {
        ip == POOL_IP
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Exchange {
    Discover,
    /// REQUEST on 67 in SELECTING state, naming us and the address we'd give.
    Request,
    Inform,
    /// REQUEST to port 4011.
    PxePort,
}

fn request(
    mac: MacAddr,
    arch: Option<u16>,
    ipxe: bool,
    ex: Exchange,
    want: Ipv4Addr,
) -> BootRequest {
    let vendor = match arch {
        Some(16) => Some("HTTPClient:Arch:00016:UNDI:003000".to_string()),
        Some(a) => Some(format!("PXEClient:Arch:{a:05}:UNDI:002001")),
        None => None,
    };
    BootRequest {
        mac,
        xid: 42,
        msg_type: match ex {
            Exchange::Discover => MessageType::Discover,
            Exchange::Request | Exchange::PxePort => MessageType::Request,
            Exchange::Inform => MessageType::Inform,
        },
        client_arch: arch,
        user_class_ipxe: ipxe,
        vendor_class: vendor,
        client_uuid: None,
        ciaddr: if matches!(ex, Exchange::Inform | Exchange::PxePort) {
            want
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        giaddr: Ipv4Addr::UNSPECIFIED,
        requested_ip: (ex == Exchange::Request).then_some(want),
        server_id: (ex == Exchange::Request).then_some(SERVER),
        broadcast_flag: false,
        hops: 0,
        hostname: None,
        port: if ex == Exchange::PxePort {
            RecvPort::PxeBoot
        } else {
            RecvPort::Dhcp
        },
    }
}

/// Issue text: 0 → undionly.kpxe; 7, 9 → efi file; 16 → HTTP URL; iPXE →
/// per-MAC script; anything else (6, 11, …) → none.
fn expected_file(arch: Option<u16>, ipxe: bool, mac: MacAddr) -> Option<(String, &'static str)> {
    if ipxe {
        let vc = if arch == Some(16) {
            "HTTPClient"
        } else {
            "PXEClient"
        };
        return Some((format!("http://10.77.1.1:8080/boot/{mac}.ipxe"), vc));
    }
    match arch {
        None => None, // not a boot client at all in this table (no vendor class)
        Some(0) => Some(("undionly.kpxe".into(), "PXEClient")),
        Some(7 | 9) => Some(("ipxe.efi".into(), "PXEClient")),
        Some(16) => Some(("http://10.77.1.1:8080/ipxe.efi".into(), "HTTPClient")),
        Some(_) => None,
    }
}

#[test]
fn full_table() {
    let arches = [None, Some(0), Some(6), Some(7), Some(9), Some(11), Some(16)];
    let exchanges = [
        Exchange::Discover,
        Exchange::Request,
        Exchange::Inform,
        Exchange::PxePort,
    ];
    let mut seen = HashSet::new();
    let mut checked = 0;
    for mode in [DhcpMode::Proxy, DhcpMode::Full, DhcpMode::Off] {
        for pool in [false, true] {
            for known in [true, false] {
                for arch in arches {
                    for ipxe in [false, true] {
                        for ex in exchanges {
                            let mac = if known { KNOWN } else { UNKNOWN };
                            let addr = if known { KNOWN_IP } else { POOL_IP };
                            let req = request(mac, arch, ipxe, ex, addr);
                            let c = cfg(mode, pool);
                            let n = node();
                            let nv = known.then_some(&n);
                            let leases: &dyn LeaseView = if pool { &OnePool } else { &NoLeases };
                            let (got, why) = decide_explained(&req, nv, &c, leases);
                            let ctx = format!(
                                "mode={mode:?} pool={pool} known={known} arch={arch:?} ipxe={ipxe} ex={ex:?} -> {why:?}"
                            );
                            check_row(mode, pool, known, arch, ipxe, ex, got.as_ref(), &ctx);
                            seen.insert(why);
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 2 * 2 * 7 * 2 * 4);
    // The table exercises every main branch.
    for r in [
        Reason::ModeOff,
        Reason::NotBootClient,
        Reason::UnsupportedArch,
        Reason::ProxyIgnoresRequest,
        Reason::NoAddress,
        Reason::ProxyOffer,
        Reason::ProxyAck,
        Reason::Offer,
        Reason::Ack,
        Reason::InformAck,
    ] {
        assert!(seen.contains(&r), "table never produced {r:?}");
    }
}

#[allow(clippy::too_many_arguments)]
fn check_row(
    mode: DhcpMode,
    pool: bool,
    known: bool,
    arch: Option<u16>,
    ipxe: bool,
    ex: Exchange,
    got: Option<&Reply>,
    ctx: &str,
) {
    let mac = if known { KNOWN } else { UNKNOWN };
    let file = expected_file(arch, ipxe, mac);
    let boot_client = arch.is_some() || ipxe;
    match mode {
        DhcpMode::Off => assert!(got.is_none(), "{ctx}"),
        _ if ex == Exchange::PxePort => {
            // Port 4011: boot info ACK, no address, in either mode.
            match &file {
                None => assert!(got.is_none(), "{ctx}"),
                Some((f, vc)) => {
                    let r = got.unwrap_or_else(|| panic!("{ctx}"));
                    assert_eq!(r.kind, ReplyKind::Ack, "{ctx}");
                    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED, "{ctx}");
                    let b = r.boot.as_ref().unwrap();
                    assert_eq!((&b.file, b.vendor_class), (f, *vc), "{ctx}");
                    assert!(r.lease.is_none(), "{ctx}");
                }
            }
        }
        DhcpMode::Proxy => {
            let kind = match ex {
                Exchange::Discover => Some(ReplyKind::Offer),
                Exchange::Inform => Some(ReplyKind::Ack),
                _ => None, // REQUEST on 67 belongs to the router
            };
            match (kind, &file) {
                (Some(k), Some((f, vc))) => {
                    // Known and unknown alike (documented choice).
                    let r = got.unwrap_or_else(|| panic!("{ctx}"));
                    assert_eq!(r.kind, k, "{ctx}");
                    assert_eq!(
                        r.yiaddr,
                        Ipv4Addr::UNSPECIFIED,
                        "{ctx}: proxy never gives addresses"
                    );
                    assert!(r.lease.is_none(), "{ctx}");
                    let b = r.boot.as_ref().unwrap();
                    assert_eq!((&b.file, b.vendor_class), (f, *vc), "{ctx}");
                    let tftp = !f.starts_with("http://");
                    assert_eq!(b.pxe_discovery_control, tftp, "{ctx}");
                    assert_eq!(b.ipxe_no_proxydhcp, ipxe, "{ctx}");
                    assert_eq!(b.next_server, SERVER, "{ctx}");
                }
                _ => assert!(got.is_none(), "{ctx}: proxy must stay silent"),
            }
        }
        DhcpMode::Full => {
            let addr = if known {
                Some(KNOWN_IP)
            } else if pool {
                Some(POOL_IP)
            } else {
                None
            };
            let r = match (ex, addr) {
                (Exchange::Inform, _) => got.unwrap_or_else(|| panic!("{ctx}")),
                (_, None) => {
                    // Unknown MAC, no pool: REQUEST for a pool address is NAKed
                    // (authoritative), DISCOVER gets nothing.
                    match ex {
                        Exchange::Discover => assert!(got.is_none(), "{ctx}"),
                        _ => assert_eq!(got.map(|r| r.kind), Some(ReplyKind::Nak), "{ctx}"),
                    }
                    return;
                }
                _ => got.unwrap_or_else(|| panic!("{ctx}")),
            };
            let (kind, yiaddr) = match ex {
                Exchange::Discover => (ReplyKind::Offer, addr.unwrap()),
                Exchange::Request => (ReplyKind::Ack, addr.unwrap()),
                _ => (ReplyKind::Ack, Ipv4Addr::UNSPECIFIED),
            };
            assert_eq!((r.kind, r.yiaddr), (kind, yiaddr), "{ctx}");
            let lease = r.lease.as_ref().unwrap();
            assert_eq!(lease.subnet_mask, Ipv4Addr::new(255, 255, 255, 0), "{ctx}");
            assert_eq!(lease.lease_secs.is_some(), ex != Exchange::Inform, "{ctx}");
            assert_eq!(r.hostname.as_deref(), known.then_some("k3s1"), "{ctx}");
            match (&file, &r.boot) {
                (Some((f, vc)), Some(b)) => {
                    assert_eq!((&b.file, b.vendor_class), (f, *vc), "{ctx}");
                }
                (None, None) => assert!(!boot_client || matches!(arch, Some(6 | 11)), "{ctx}"),
                (want, have) => panic!("{ctx}: boot {want:?} vs {have:?}"),
            }
        }
    }
}

#[test]
fn non_pxe_discover_gets_nothing_in_proxy_mode() {
    let mut req = request(UNKNOWN, None, false, Exchange::Discover, POOL_IP);
    req.vendor_class = Some("MSFT 5.0".into());
    let c = cfg(DhcpMode::Proxy, false);
    assert_eq!(
        decide_explained(&req, None, &c, &NoLeases),
        (None, Reason::NotBootClient)
    );
}

#[test]
fn missing_option_93_with_pxeclient_is_bios() {
    let mut req = request(KNOWN, Some(0), false, Exchange::Discover, KNOWN_IP);
    req.client_arch = None;
    req.vendor_class = Some("PXEClient".into());
    let r = decide(&req, None, &cfg(DhcpMode::Proxy, false), &NoLeases).unwrap();
    assert_eq!(r.boot.unwrap().file, "undionly.kpxe");
}

#[test]
fn snponly_is_configurable() {
    let mut c = cfg(DhcpMode::Proxy, false);
    c.efi_file = "snponly.efi".into();
    for arch in [7, 9] {
        let req = request(KNOWN, Some(arch), false, Exchange::Discover, KNOWN_IP);
        assert_eq!(
            decide(&req, None, &c, &NoLeases)
                .unwrap()
                .boot
                .unwrap()
                .file,
            "snponly.efi"
        );
    }
}

/// Per-profile boot quirks: a known node gets its own UEFI boot file (r630/r730 ship
/// `snponly.efi`, optiplex `ipxe.efi`), an unknown machine the global `--efi-file`, BIOS
/// clients `undionly.kpxe` whatever the node says, and iPXE's own DHCP its per-MAC script.
/// Expected values are written out, not derived: dropping the node lookup in `boot_info`
/// (every UEFI client getting the global file) fails the r630 rows.
#[test]
fn per_node_efi_boot_file_table() {
    let with = |f: Option<EfiBootFile>| NodeView {
        efi_boot_file: f,
        ..node()
    };
    let r630 = with(Some(EfiBootFile::SnpOnly));
    let optiplex = with(Some(EfiBootFile::Ipxe));
    let plain = with(None);
    let script = "http://10.77.1.1:8080/boot/52:54:00:00:00:01.ipxe";
    // (node, global --efi-file, arch, iPXE user class, expected file)
    let table: &[(Option<&NodeView>, &str, u16, bool, &str)] = &[
        (Some(&r630), "ipxe.efi", 7, false, "snponly.efi"),
        (Some(&r630), "ipxe.efi", 9, false, "snponly.efi"),
        (
            Some(&r630),
            "ipxe.efi",
            16,
            false,
            "http://10.77.1.1:8080/snponly.efi",
        ),
        (Some(&optiplex), "snponly.efi", 7, false, "ipxe.efi"),
        (Some(&optiplex), "ipxe.efi", 7, false, "ipxe.efi"),
        (Some(&plain), "snponly.efi", 7, false, "snponly.efi"),
        (Some(&plain), "ipxe.efi", 7, false, "ipxe.efi"),
        (None, "ipxe.efi", 7, false, "ipxe.efi"),
        (None, "snponly.efi", 7, false, "snponly.efi"),
        (
            None,
            "snponly.efi",
            16,
            false,
            "http://10.77.1.1:8080/snponly.efi",
        ),
        (Some(&r630), "ipxe.efi", 0, false, "undionly.kpxe"),
        (Some(&optiplex), "ipxe.efi", 0, false, "undionly.kpxe"),
        (Some(&r630), "ipxe.efi", 7, true, script),
        (Some(&optiplex), "snponly.efi", 7, true, script),
    ];
    for mode in [DhcpMode::Proxy, DhcpMode::Full] {
        for &(node, global, arch, ipxe, want) in table {
            let mut c = cfg(mode, false);
            c.efi_file = global.into();
            for ex in [Exchange::Discover, Exchange::PxePort] {
                let req = request(KNOWN, Some(arch), ipxe, ex, KNOWN_IP);
                // Full mode answers an unknown MAC only from its pool; give it one.
                let leases: &dyn LeaseView = if node.is_none() { &OnePool } else { &NoLeases };
                let ctx = format!(
                    "{mode:?} {ex:?} node={node:?} global={global} arch={arch} ipxe={ipxe}"
                );
                let r = decide(&req, node, &c, leases).unwrap_or_else(|| panic!("{ctx}: no reply"));
                assert_eq!(r.boot.expect(&ctx).file, want, "{ctx}");
            }
        }
    }
}

#[test]
fn relayed_requests_only_from_the_served_subnet() {
    let mut req = request(KNOWN, Some(0), false, Exchange::Discover, KNOWN_IP);
    for mode in [DhcpMode::Proxy, DhcpMode::Full] {
        let c = cfg(mode, true);
        req.giaddr = Ipv4Addr::new(10, 77, 2, 1);
        assert_eq!(
            decide_explained(&req, Some(&node()), &c, &OnePool).1,
            Reason::Relayed
        );
        // A relay on our own subnet (perfdhcp simulates one) is served.
        req.giaddr = Ipv4Addr::new(10, 77, 1, 254);
        let (r, why) = decide_explained(&req, Some(&node()), &c, &OnePool);
        assert!(r.is_some(), "{mode:?}: {why:?}");
    }
    let c = cfg(DhcpMode::Full, true);
    let r = decide(&req, Some(&node()), &c, &OnePool).unwrap();
    assert!(
        lease_effect(&req, Some(&r), &c).is_some(),
        "relayed offers are held too"
    );
}

#[test]
fn full_mode_request_states() {
    let c = cfg(DhcpMode::Full, true);
    let n = node();
    // SELECTING naming another server: silent, and the offer is forgotten.
    let mut req = request(KNOWN, Some(0), false, Exchange::Request, KNOWN_IP);
    req.server_id = Some(Ipv4Addr::new(10, 77, 1, 254));
    let (r, why) = decide_explained(&req, Some(&n), &c, &OnePool);
    assert_eq!((r.is_none(), why), (true, Reason::OtherServerChosen));
    assert_eq!(
        lease_effect(&req, None, &c),
        Some(LeaseAction::Forget { mac: KNOWN })
    );
    // SELECTING for the wrong address: NAK.
    let mut req = request(
        KNOWN,
        Some(0),
        false,
        Exchange::Request,
        Ipv4Addr::new(10, 77, 1, 11),
    );
    let r = decide(&req, Some(&n), &c, &OnePool).unwrap();
    assert_eq!(r.kind, ReplyKind::Nak);
    assert!(r.lease.is_none() && r.boot.is_none());
    // INIT-REBOOT (no server id, option 50): static address ACKed.
    req.server_id = None;
    req.requested_ip = Some(KNOWN_IP);
    assert_eq!(
        decide(&req, Some(&n), &c, &OnePool).unwrap().kind,
        ReplyKind::Ack
    );
    // INIT-REBOOT from another network: NAK.
    req.requested_ip = Some(Ipv4Addr::new(192, 168, 9, 9));
    assert_eq!(
        decide(&req, Some(&n), &c, &OnePool).unwrap().kind,
        ReplyKind::Nak
    );
    // RENEWING: ciaddr only.
    req.requested_ip = None;
    req.ciaddr = KNOWN_IP;
    let r = decide(&req, Some(&n), &c, &OnePool).unwrap();
    assert_eq!((r.kind, r.yiaddr), (ReplyKind::Ack, KNOWN_IP));
    assert_eq!(
        lease_effect(&req, Some(&r), &c),
        Some(LeaseAction::Bind {
            mac: KNOWN,
            ip: KNOWN_IP,
            secs: 3600
        })
    );
    // An unknown MAC asking for a known node's address: NAK.
    let mut req = request(UNKNOWN, None, false, Exchange::Request, KNOWN_IP);
    req.server_id = None;
    assert_eq!(
        decide(&req, None, &c, &OnePool).unwrap().kind,
        ReplyKind::Nak
    );
    // REQUEST naming no address at all: silent.
    req.requested_ip = None;
    assert_eq!(
        decide_explained(&req, None, &c, &OnePool).1,
        Reason::NoRequestedAddress
    );
}

#[test]
fn release_and_decline_effects() {
    let c = cfg(DhcpMode::Full, true);
    let mut req = request(UNKNOWN, None, false, Exchange::Discover, POOL_IP);
    req.msg_type = MessageType::Release;
    req.ciaddr = POOL_IP;
    assert_eq!(
        decide_explained(&req, None, &c, &OnePool),
        (None, Reason::ClientReleases)
    );
    assert_eq!(
        lease_effect(&req, None, &c),
        Some(LeaseAction::Release {
            mac: UNKNOWN,
            ip: POOL_IP
        })
    );
    req.msg_type = MessageType::Decline;
    req.ciaddr = Ipv4Addr::UNSPECIFIED;
    req.requested_ip = Some(POOL_IP);
    req.server_id = Some(c.server_ip);
    assert_eq!(
        lease_effect(&req, None, &c),
        Some(LeaseAction::Decline {
            mac: UNKNOWN,
            ip: POOL_IP
        })
    );
    // Protects the pool: a DECLINE without our server identifier (RFC 2131 §4.4.4) is not
    // about our lease and quarantines nothing.
    for other in [None, Some(Ipv4Addr::new(10, 77, 1, 254))] {
        req.server_id = other;
        assert_eq!(lease_effect(&req, None, &c), None, "server id {other:?}");
    }
    req.server_id = Some(c.server_ip);
    // Proxy mode never touches leases.
    assert_eq!(lease_effect(&req, None, &cfg(DhcpMode::Proxy, true)), None);
}

#[test]
fn offers_become_lease_actions() {
    let c = cfg(DhcpMode::Full, true);
    let req = request(UNKNOWN, Some(7), false, Exchange::Discover, POOL_IP);
    let r = decide(&req, None, &c, &OnePool).unwrap();
    assert_eq!(
        lease_effect(&req, Some(&r), &c),
        Some(LeaseAction::Offer {
            mac: UNKNOWN,
            ip: POOL_IP
        })
    );
}

#[test]
fn config_validation() {
    let mut c = cfg(DhcpMode::Full, true);
    c.pool = Some(PoolRange {
        start: Ipv4Addr::new(10, 77, 1, 0),
        end: Ipv4Addr::new(10, 77, 1, 9),
    });
    assert!(matches!(
        c.validate(),
        Err(ConfigError::PoolHasReserved(..))
    ));
    c.pool = Some(PoolRange {
        start: Ipv4Addr::new(10, 77, 1, 9),
        end: Ipv4Addr::new(10, 77, 1, 2),
    });
    assert!(matches!(c.validate(), Err(ConfigError::PoolReversed(..))));
    c.pool = Some(PoolRange {
        start: Ipv4Addr::new(10, 77, 1, 2),
        end: Ipv4Addr::new(10, 77, 2, 9),
    });
    assert!(matches!(
        c.validate(),
        Err(ConfigError::PoolOutsideSubnet(..))
    ));
    c.pool = None;
    c.http_base = "http://x/".into();
    assert!(matches!(c.validate(), Err(ConfigError::BadHttpBase(_))));
    c.http_base = "http://x".into();
    c.server_ip = Ipv4Addr::new(10, 78, 0, 1);
    assert!(matches!(
        c.validate(),
        Err(ConfigError::ServerOutsideSubnet(..))
    ));
}

#[test]
fn reason_table_is_consistent() {
    let mut labels = HashSet::new();
    for (i, r) in Reason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
        assert!(labels.insert(r.label()), "duplicate label {}", r.label());
    }
}

/// The Secure Boot row of the boot-file table: a `secure_boot` node's UEFI firmware gets
/// Debian's signed shim (TFTP for arch 7/9, a URL for HTTP boot 16); its BIOS request,
/// iPXE already running, other nodes and unknown MACs keep what they had. Without this row
/// the firmware of such a node refuses the unsigned iPXE and boots nothing.
#[test]
fn secure_boot_nodes_get_shim_on_uefi_only() {
    let sb = NodeView {
        secure_boot: true,
        ..node()
    };
    let plain = node();
    for mode in [DhcpMode::Proxy, DhcpMode::Full] {
        let c = cfg(mode, true);
        // (arch, iPXE user class, node) → boot file
        let table: [(u16, bool, Option<&NodeView>, &str); 9] = [
            (arch::EFI_X64, false, Some(&sb), "shimx64.efi"),
            (arch::EFI_BC, false, Some(&sb), "shimx64.efi"),
            (
                arch::EFI_X64_HTTP,
                false,
                Some(&sb),
                "http://10.77.1.1:8080/shimx64.efi",
            ),
            (arch::EFI_X64, false, Some(&plain), "ipxe.efi"),
            (
                arch::EFI_X64_HTTP,
                false,
                Some(&plain),
                "http://10.77.1.1:8080/ipxe.efi",
            ),
            (arch::EFI_X64, false, None, "ipxe.efi"),
            (arch::BIOS, false, Some(&sb), "undionly.kpxe"),
            (
                arch::EFI_X64,
                true,
                Some(&sb),
                "http://10.77.1.1:8080/boot/52:54:00:00:00:01.ipxe",
            ),
            (
                arch::EFI_X64,
                true,
                Some(&plain),
                "http://10.77.1.1:8080/boot/52:54:00:00:00:01.ipxe",
            ),
        ];
        for (a, ipxe, n, want) in table {
            let want_ip = if mode == DhcpMode::Full {
                KNOWN_IP
            } else {
                POOL_IP
            };
            let req = request(KNOWN, Some(a), ipxe, Exchange::Discover, want_ip);
            let (reply, why) = decide_explained(&req, n, &c, &OnePool);
            let file = reply.and_then(|r| r.boot).map(|b| b.file);
            assert_eq!(
                file.as_deref(),
                Some(want),
                "{mode:?} arch {a} ipxe {ipxe} secure_boot {:?} ({why})",
                n.map(|n| n.secure_boot)
            );
        }
    }
}
