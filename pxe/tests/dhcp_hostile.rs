//! Feed the running server malformed and hostile datagrams, then check it
//! still answers, that none of them got a reply, and that nothing panicked.
//!
//! Runs on loopback without root: the example server is bound to
//! 127.0.0.1:46810 (DHCP) / :46812 (PXE), and its "broadcast" replies are
//! pointed at 127.0.0.1:46811, where this test listens as the client.
//!
//! "No reply" is proven without timeouts: the server handles a socket's
//! datagrams in order, so if any hostile datagram had been answered, that
//! answer would arrive before the answer to the valid probe sent last.

mod support;

use std::net::UdpSocket;

use pxe::proto::dhcp::{self, HEADER_LEN, MAGIC_COOKIE};
use serde_json::json;
use support::dhcp::{Server, mac, plain_discover, pxe_discover};

const DHCP_PORT: u16 = 46810;
const CLIENT_PORT: u16 = 46811;
const PXE_PORT: u16 = 46812;

/// A BOOTREQUEST header with a valid magic cookie and the given option bytes.
fn with_opts(opts: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6;
    b[4..8].copy_from_slice(&0xdead_0000u32.to_be_bytes());
    b[28..34].copy_from_slice(&mac(0xee).0);
    b[236..240].copy_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(opts);
    b
}

const PXE_VC: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

/// Option 53 DISCOVER + PXE vendor class + `tail`: were the tail accepted,
/// the server would answer, so silence proves the packet was refused.
fn pxe_with(tail: &[u8]) -> Vec<u8> {
    let mut o = vec![53, 1, 1, 60, PXE_VC.len() as u8];
    o.extend_from_slice(PXE_VC);
    o.extend_from_slice(tail);
    with_opts(&o)
}

fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let good = pxe_discover(mac(0xee), 0xdead_0001, 0, false);
    let mut v: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![1]),
        ("truncated header", good[..239].to_vec()),
        ("header only, no cookie", good[..236].to_vec()),
    ];
    let mut b = good.clone();
    b[236..240].copy_from_slice(b"\x63\x82\x53\x00");
    v.push(("bad magic cookie", b));
    let mut b = good.clone();
    b[0] = 2;
    v.push(("op BOOTREPLY", b));
    let mut b = good.clone();
    b[0] = 0;
    v.push(("op 0", b));
    let mut b = good.clone();
    b[1] = 6;
    v.push(("htype token ring", b));
    let mut b = good.clone();
    b[2] = 16;
    v.push(("hlen 16", b));
    let mut b = good.clone();
    b[2] = 0;
    v.push(("hlen 0", b));
    let mut b = good.clone();
    b[24..28].copy_from_slice(&[10, 77, 9, 1]);
    b[3] = 1;
    v.push(("relayed PXE discover (giaddr set)", b));
    v.push((
        "no option 53 (BOOTP)",
        with_opts(&[
            60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 255,
        ]),
    ));
    v.push((
        "option 53 len 0",
        with_opts(&[
            53, 0, 60, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't', 255,
        ]),
    ));
    v.push(("option 53 len 2", with_opts(&[53, 2, 1, 1, 255])));
    v.push(("client sends OFFER", with_opts(&[53, 1, 2, 255])));
    v.push(("client sends ACK", with_opts(&[53, 1, 5, 255])));
    v.push(("unknown message type 99", with_opts(&[53, 1, 99, 255])));
    v.push(("option runs past the end", pxe_with(&[12, 200, b'x', b'y'])));
    v.push(("option code without length", pxe_with(&[12])));
    let mut huge55 = Vec::new();
    for _ in 0..4 {
        huge55.push(55);
        huge55.push(255);
        huge55.extend(std::iter::repeat_n(1u8, 255));
    }
    huge55.extend_from_slice(&[93, 1, 0, 255]);
    v.push((
        "huge option 55 (1020 bytes, RFC 3396 split) + bad 93",
        pxe_with(&huge55),
    ));
    v.push(("option 93 len 1", pxe_with(&[93, 1, 0, 255])));
    v.push(("option 93 len 3", pxe_with(&[93, 3, 0, 0, 7, 255])));
    v.push(("option 94 len 2", pxe_with(&[94, 2, 1, 2, 255])));
    v.push(("option 81 len 1", pxe_with(&[81, 1, 0, 255])));
    v.push(("option 80 len 1", pxe_with(&[80, 1, 0, 255])));
    v.push(("option 151 len 0", pxe_with(&[151, 0, 255])));
    v.push(("option 50 len 3", pxe_with(&[50, 3, 10, 77, 1, 255])));
    v.push(("option 54 len 5", pxe_with(&[54, 5, 10, 77, 1, 1, 1, 255])));
    v.push(("option 57 len 1", pxe_with(&[57, 1, 2, 255])));
    v.push((
        "option 53 twice (concatenated len 2)",
        pxe_with(&[53, 1, 1, 255]),
    ));
    // Overload (52) pointing into garbage file/sname fields, then a second,
    // non-adjacent option 53 of the wrong length.
    let mut b = pxe_with(&[52, 1, 3, 53, 2, 1, 1, 255]);
    b[44..236].fill(0xff);
    v.push(("overload + garbage + bad 53", b));
    v.push((
        "vendor class not UTF-8, not PXE",
        with_opts(&[53, 1, 1, 60, 4, 0xff, 0xfe, b'P', b'X', 255]),
    ));
    v.push(("hostname not UTF-8 before the vendor class", {
        let mut o = vec![53, 1, 1, 12, 2, 0xc3, 0x28];
        o.extend_from_slice(&[60, PXE_VC.len() as u8]);
        o.extend_from_slice(PXE_VC);
        o.push(255);
        with_opts(&o)
    }));
    v.push(("options are all PAD, no END", with_opts(&[0; 300])));
    v.push((
        "user class with lying RFC 3004 lengths",
        with_opts(&[53, 1, 1, 77, 5, 200, b'i', b'P', b'X', b'E', 255]),
    ));
    v.push((
        "classless route prefix 33",
        with_opts(&[53, 1, 1, 121, 5, 33, 1, 2, 3, 4, 255]),
    ));
    v.push((
        "relay agent info garbage",
        with_opts(&[53, 1, 1, 82, 4, 1, 9, 0, 0, 255]),
    ));
    v.push(("9000-byte datagram ending in a bare option code", {
        let mut o = vec![53, 1, 1];
        o.extend(std::iter::repeat_n(0u8, 9000 - HEADER_LEN - 4));
        o.push(12);
        with_opts(&o)
    }));
    v.push((
        "plain (non-PXE) DISCOVER",
        plain_discover(mac(0xef), 0xdead_0002),
    ));
    v.push(("REQUEST on port 67 in proxy mode", {
        let mut o = vec![53, 1, 3, 54, 4, 10, 77, 1, 254, 60, PXE_VC.len() as u8];
        o.extend_from_slice(PXE_VC);
        o.push(255);
        with_opts(&o)
    }));
    v.push((
        "UEFI IA32 (no binary)",
        pxe_discover(mac(0xee), 0xdead_0003, 6, false),
    ));
    v
}

#[test]
fn hostile_datagrams_are_dropped_and_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    // Bind the "client" side first so the server's broadcasts have a listener.
    let client = UdpSocket::bind(("127.0.0.1", CLIENT_PORT)).expect("client port 46811");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut server = Server::spawn(
        &[],
        &json!({
            "bind_ip": "127.0.0.1",
            "dhcp_port": DHCP_PORT,
            "pxe_port": PXE_PORT,
            "client_port": CLIENT_PORT,
            "broadcast": "127.0.0.1",
            "server_ip": "127.0.0.1",
            "subnet": "127.0.0.0/8",
            "mode": "proxy",
        }),
        dir.path(),
    );
    let cases = hostile();
    assert!(cases.len() >= 30, "only {} hostile cases", cases.len());

    // Each case followed by a probe, so a failure names the case; then all
    // cases in one burst (queued back to back), then a last probe.
    let mut buf = [0u8; 1500];
    let mut probe = |xid: u32, what: &str| {
        sender
            .send_to(
                &pxe_discover(mac(1), xid, 7, false),
                ("127.0.0.1", DHCP_PORT),
            )
            .unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        let reply = dhcp::decode_reply(&buf[..n]).unwrap();
        assert_eq!(
            reply.xid(),
            xid,
            "{what} was answered (the first reply must answer the probe):\n{}",
            dhcp::describe(&reply)
        );
        assert_eq!(reply.fname(), Some(&b"ipxe.efi\0"[..]));
    };
    for (i, (name, pkt)) in cases.iter().enumerate() {
        sender.send_to(pkt, ("127.0.0.1", DHCP_PORT)).unwrap();
        probe(0x0b0b_0000 + i as u32, name);
    }
    for (_, pkt) in &cases {
        sender.send_to(pkt, ("127.0.0.1", DHCP_PORT)).unwrap();
    }
    probe(0x0c0c_0000, "a case in the burst");

    // The PXE port (4011): the same cases, each followed by a valid
    // REQUEST whose ACK comes back to the sender. The port-67 REQUEST case
    // is a legitimate 4011 request, so it is left out here.
    let mut buf = [0u8; 1500];
    let mut pxe_probes = 0;
    for (i, (name, pkt)) in cases.iter().enumerate() {
        if name.starts_with("REQUEST on port 67") {
            continue;
        }
        sender.send_to(pkt, ("127.0.0.1", PXE_PORT)).unwrap();
        let xid = 0x4011_0000 + i as u32;
        let mut req = dhcp::decode_message(&pxe_discover(mac(2), xid, 0, false)).unwrap();
        req.opts_mut()
            .insert(dhcp::DhcpOption::MessageType(dhcp::MessageType::Request));
        req.set_ciaddr([127, 0, 0, 1]);
        sender
            .send_to(&dhcp::encode(&req).unwrap(), ("127.0.0.1", PXE_PORT))
            .unwrap();
        let (n, _) = sender.recv_from(&mut buf).unwrap();
        let ack = dhcp::decode_reply(&buf[..n]).unwrap();
        assert_eq!(
            ack.xid(),
            xid,
            "{name} was answered on the PXE port:\n{}",
            dhcp::describe(&ack)
        );
        assert_eq!(ack.opts().msg_type(), Some(dhcp::MessageType::Ack));
        assert_eq!(ack.fname(), Some(&b"undionly.kpxe\0"[..]));
        pxe_probes += 1;
    }
    assert!(server_alive(&mut server));

    let counters = server.stop();
    let malformed = counters["malformed"].as_u64().unwrap();
    assert_eq!(counters["panics"], 0, "{counters}");
    // Everything except the well-formed-but-unanswerable cases is malformed.
    assert!(malformed >= 3 * 25, "{counters}");
    assert_eq!(counters["offers"], cases.len() as u64 + 1, "{counters}");
    assert_eq!(counters["acks"], pxe_probes, "{counters}");
}

fn server_alive(s: &mut Server) -> bool {
    s.is_running()
}
