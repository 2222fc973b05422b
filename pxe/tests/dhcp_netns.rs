//! The DHCP server against real clients across a veth pair between two
//! network namespaces (needs root; see `netns_available`).
//!
//! - full mode: `busybox udhcpc -V PXEClient -x 0x5d:0000` (and 0007, 0009)
//!   gets the inventory address, hostname and the right boot file; an
//!   unknown MAC gets a pool address, and its lease is persisted;
//! - proxy mode: udhcpc gets an address-less offer with the right boot file
//!   (udhcpc is not a PXE client, so it then asks for 0.0.0.0 and fails,
//!   which is expected: the LAN's router would have given the address);
//!   a plain DISCOVER gets nothing; iPXE gets its per-MAC script URL;
//!   UEFI HTTP boot gets an HTTP URL; port 4011 answers by unicast.
//!
//! - real firmware under qemu TCG, full mode: the iPXE NIC ROM (SeaBIOS)
//!   gets its inventory address and per-MAC script URL; EDK2's own UEFI PXE
//!   client (OVMF, arch 7) gets its address and `ipxe.efi`;
//! - real firmware, proxy mode next to a router (dnsmasq handing out
//!   addresses only): iPXE and EDK2 take the router's address and boot the
//!   file named in ironseed's ProxyDHCP offer, as their consoles show.
//!
//! - discovery: the real `pxe serve`, in proxy and in full mode, records udhcpc (a MAC not in
//!   the inventory) with its option 93, option 60 and the interface, in `discovered.json`.
//!
//! With `IRONSEED_REGEN_TESTDATA=1` (never under CI, like golden files) the
//! captured datagrams are written to `pxe/testdata/` for the codec golden tests
//! (see testdata/CAPTURE.md).

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::Duration;

use pxe::proto::dhcp::{self, DhcpOption, Message, MessageType, OptionCode};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};
use support::dhcp::{Server, mac, plain_discover, pxe_discover};
use support::netns::{Capture, Frame, Lab, Netns, in_netns, netns_available, udhcpc, write_hook};
use support::vm::{Firmware, OVMF_CODE, OVMF_VARS, machine_args};
use support::{Proc, wait_until};

const KNOWN_MAC: &str = "52:54:00:77:00:0a";
const UNKNOWN_MAC: &str = "52:54:00:77:00:99";

fn server_in(lab: &Lab, cfg: serde_json::Value, dir: &Path) -> Server {
    Server::spawn(&["ip", "netns", "exec", &lab.srv.0], &cfg, dir)
}

fn msg_type(m: &Message) -> Option<MessageType> {
    m.opts().msg_type()
}

fn opt60(m: &Message) -> Option<String> {
    match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    }
}

fn file(m: &Message) -> String {
    m.fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
        .unwrap_or_default()
}

/// Client datagrams (to port 67/4011) and server datagrams, decoded.
type Decoded = Vec<(Frame, Message)>;

fn split(frames: &[Frame]) -> (Decoded, Decoded) {
    let (mut cli, mut srv) = (Vec::new(), Vec::new());
    for f in frames {
        if f.payload.first() == Some(&1) {
            cli.push((
                f.clone(),
                dhcp::decode_message(&f.payload).expect("client datagram"),
            ));
        } else {
            srv.push((
                f.clone(),
                dhcp::decode_reply(&f.payload).expect("server datagram"),
            ));
        }
    }
    (cli, srv)
}

/// Keep captured datagrams as golden inputs when asked to (the workspace's rule for files of
/// the source tree: `=1` exactly, never under CI).
fn maybe_save(name: &str, payload: &[u8]) {
    if support::ci::may_rewrite("IRONSEED_REGEN_TESTDATA") {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(format!("{name}.bin"));
        std::fs::write(&p, payload).unwrap();
        eprintln!("wrote {}", p.display());
    }
}

fn arch_of(m: &Message) -> Option<u16> {
    match m.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    }
}

#[test]
fn full_mode_udhcpc_gets_lease_and_boot_file() {
    if !netns_available("full_mode_udhcpc_gets_lease_and_boot_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(1, KNOWN_MAC);
    let cap = Capture::start(&lab.srv, &lab.srv_if, dir.path());
    let state = dir.path().join("state");
    // dhcp_golden.rs (Lab::Full1) rebuilds the captured replies with this configuration.
    let server = server_in(
        &lab,
        json!({
            "interface": lab.srv_if,
            "mode": "full",
            "subnet": "10.77.1.0/24",
            "gateway": "10.77.1.1",
            "dns": ["10.77.1.1"],
            "lease_secs": 600,
            "pool": {"start": "10.77.1.100", "end": "10.77.1.150"},
            "nodes": [{"mac": KNOWN_MAC, "hostname": "k3s1", "ip": "10.77.1.10", "firmware": "bios"}],
            "state_dir": state,
        }),
        dir.path(),
    );
    assert_eq!(server.ready["server_ip"], "10.77.1.1");
    let hook = write_hook(dir.path());

    let expect = |arch: &str, ip: &str, boot: &str, host: Option<&str>| {
        let r = udhcpc(&lab.cli, &lab.cli_if, &hook, arch, 3);
        assert!(
            r.status.success(),
            "udhcpc arch {arch}: {}\n{}",
            r.stdout,
            r.stderr
        );
        let b: BTreeMap<String, String> = r.bound().expect("bound event");
        assert_eq!(b["ip"], ip, "{b:?}");
        assert_eq!(b["boot_file"], boot, "{b:?}");
        assert_eq!(b["siaddr"], "10.77.1.1", "{b:?}");
        assert_eq!(b["serverid"], "10.77.1.1", "{b:?}");
        assert_eq!(b["subnet"], "255.255.255.0", "{b:?}");
        assert_eq!(b["router"], "10.77.1.1", "{b:?}");
        assert_eq!(b["dns"], "10.77.1.1", "{b:?}");
        assert_eq!(b["lease"], "600", "{b:?}");
        assert_eq!(b.get("hostname").map(String::as_str), host, "{b:?}");
    };
    // Inventory MAC: its static address, BIOS then UEFI boot file.
    expect("0000", "10.77.1.10", "undionly.kpxe", Some("k3s1"));
    expect("0007", "10.77.1.10", "ipxe.efi", Some("k3s1"));
    // Unknown MAC: first pool address, old-style arch 9.
    lab.set_client_mac(UNKNOWN_MAC);
    expect("0009", "10.77.1.100", "ipxe.efi", None);

    let counters = server.stop();
    assert_eq!(counters["offers"], 3, "{counters}");
    assert_eq!(counters["acks"], 3, "{counters}");
    assert_eq!(counters["malformed"], 0, "{counters}");
    // Only the pool lease is persisted (statics come from the inventory).
    let saved = std::fs::read_to_string(state.join("dhcp-leases.json")).unwrap();
    assert!(
        saved.contains(UNKNOWN_MAC) && saved.contains("10.77.1.100"),
        "{saved}"
    );
    assert!(!saved.contains(KNOWN_MAC), "{saved}");

    let frames = cap.stop();
    let (cli, srv) = split(&frames);
    assert!(
        cli.len() >= 6 && srv.len() >= 6,
        "{} client / {} server datagrams",
        cli.len(),
        srv.len()
    );
    for (f, m) in &srv {
        // Clients without an address are answered by broadcast, from our address.
        assert_eq!(*f.src.ip(), Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(
            f.dst,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            "{}",
            dhcp::describe(m)
        );
    }
    let pick = |list: &[(Frame, Message)], ty, arch: u16| {
        list.iter()
            .find(|(_, m)| msg_type(m) == Some(ty) && arch_of(m) == Some(arch))
            .map(|(f, _)| f.payload.clone())
    };
    let disc0 = pick(&cli, MessageType::Discover, 0).expect("udhcpc DISCOVER arch 0");
    let req7 = pick(&cli, MessageType::Request, 7).expect("udhcpc REQUEST arch 7");
    let xid_of = |p: &[u8]| dhcp::decode_message(p).unwrap().xid();
    let reply_to = |xid: u32, ty| {
        srv.iter()
            .find(|(_, m)| m.xid() == xid && msg_type(m) == Some(ty))
            .map(|(f, _)| f.payload.clone())
            .expect("reply")
    };
    maybe_save("udhcpc_discover_arch0", &disc0);
    maybe_save("udhcpc_request_arch7", &req7);
    maybe_save(
        "ironseed_offer_full_bios",
        &reply_to(xid_of(&disc0), MessageType::Offer),
    );
    maybe_save(
        "ironseed_ack_full_efi",
        &reply_to(xid_of(&req7), MessageType::Ack),
    );
}

/// A DHCP client socket inside the client namespace.
fn client_socket(iface: &str, bind: SocketAddrV4) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(iface.as_bytes())).unwrap();
    s.bind(&SocketAddr::V4(bind).into()).unwrap();
    // A safety net so a broken server fails the test instead of hanging it;
    // replies normally arrive within milliseconds.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.into()
}

fn recv(sock: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).expect("no reply from the server");
    (dhcp::decode_reply(&buf[..n]).unwrap(), from)
}

#[test]
fn proxy_mode_answers_pxe_clients_only() {
    if !netns_available("proxy_mode_answers_pxe_clients_only") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(2, KNOWN_MAC);
    let cap = Capture::start(&lab.srv, &lab.srv_if, dir.path());
    // No node table at all: unknown MACs still get the iPXE binary in proxy mode. dhcp_golden.rs
    // (Lab::Proxy2) rebuilds the captured reply with this configuration.
    let server = server_in(
        &lab,
        json!({"interface": lab.srv_if, "mode": "proxy", "subnet": "10.77.2.0/24"}),
        dir.path(),
    );
    let hook = write_hook(dir.path());
    for arch in ["0000", "0007"] {
        let r = udhcpc(&lab.cli, &lab.cli_if, &hook, arch, 1);
        assert!(
            !r.status.success() && r.bound().is_none(),
            "a proxy must never lease an address: {}\n{}",
            r.stdout,
            r.stderr
        );
        assert!(r.stderr.contains("select for 0.0.0.0"), "{}", r.stderr);
    }

    // Our own PXE clients, from inside the client namespace.
    lab.cli
        .ip(&["addr", "add", "10.77.2.50/24", "dev", &lab.cli_if]);
    let iface = lab.cli_if.clone();
    let ns = lab.cli.0.clone();
    let m = mac(0x0a);
    in_netns(&ns, move || {
        let sock = client_socket(&iface, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        // A plain DISCOVER, then iPXE's: the first answer must be iPXE's
        // (the server handles datagrams in order), so the plain one got none.
        sock.send_to(&plain_discover(m, 0xa0), bcast).unwrap();
        sock.send_to(&pxe_discover(m, 0xa1, 7, true), bcast)
            .unwrap();
        let (r, from) = recv(&sock);
        assert_eq!(
            r.xid(),
            0xa1,
            "plain DISCOVER was answered: {}",
            dhcp::describe(&r)
        );
        assert_eq!(from, "10.77.2.1:67".parse().unwrap());
        assert_eq!(
            file(&r),
            "http://10.77.2.1:8080/boot/52:54:00:77:00:0a.ipxe"
        );
        assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(
            r.opts().get(OptionCode::Unknown(175)).is_some(),
            "no-pxedhcp for iPXE"
        );
        // UEFI HTTP boot: URL + HTTPClient.
        let mut http = dhcp::decode_message(&pxe_discover(m, 0xa2, 16, false)).unwrap();
        http.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
        ));
        sock.send_to(&dhcp::encode(&http).unwrap(), bcast).unwrap();
        let (r, _) = recv(&sock);
        assert_eq!(r.xid(), 0xa2);
        assert_eq!(file(&r), "http://10.77.2.1:8080/ipxe.efi");
        assert_eq!(opt60(&r).as_deref(), Some("HTTPClient"));
        // Port 4011: unicast REQUEST from an address the client owns, unicast ACK back.
        let uni = client_socket(&iface, "10.77.2.50:0".parse().unwrap());
        let mut req = dhcp::decode_message(&pxe_discover(m, 0xa3, 0, false)).unwrap();
        req.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        req.set_ciaddr([10, 77, 2, 50]);
        uni.send_to(&dhcp::encode(&req).unwrap(), "10.77.2.1:4011")
            .unwrap();
        let (r, from) = recv(&uni);
        assert_eq!((r.xid(), msg_type(&r)), (0xa3, Some(MessageType::Ack)));
        assert_eq!(from, "10.77.2.1:4011".parse().unwrap());
        assert_eq!(file(&r), "undionly.kpxe");
    });

    let counters = server.stop();
    assert_eq!(counters["malformed"], 0, "{counters}");
    let frames = cap.stop();
    let (cli, srv) = split(&frames);
    // udhcpc: each DISCOVER got exactly one proxy offer, and its REQUESTs
    // for 0.0.0.0 (meant for a router) got nothing.
    for (arch, want) in [(0u16, "undionly.kpxe"), (7, "ipxe.efi")] {
        let (df, disc) = cli
            .iter()
            .find(|(_, m)| msg_type(m) == Some(MessageType::Discover) && arch_of(m) == Some(arch))
            .unwrap_or_else(|| panic!("no udhcpc DISCOVER for arch {arch}"));
        assert_eq!(opt60(disc).as_deref(), Some("PXEClient"));
        let replies: Vec<_> = srv.iter().filter(|(_, m)| m.xid() == disc.xid()).collect();
        assert_eq!(replies.len(), 1, "arch {arch}: {replies:?}");
        let (of, offer) = replies[0];
        assert_eq!(msg_type(offer), Some(MessageType::Offer));
        assert_eq!(file(offer), want);
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 77, 2, 1));
        assert_eq!(opt60(offer).as_deref(), Some("PXEClient"));
        assert_eq!(
            offer.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 2, 1)))
        );
        assert_eq!(of.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let requests = cli
            .iter()
            .filter(|(_, m)| m.xid() == disc.xid() && msg_type(m) == Some(MessageType::Request))
            .count();
        assert!(
            requests >= 1,
            "udhcpc should have asked for the offered 0.0.0.0"
        );
        if arch == 7 {
            maybe_save("udhcpc_discover_arch7_proxy", &df.payload);
            maybe_save("ironseed_proxy_offer_efi", &of.payload);
        }
    }
    assert!(
        !srv.iter().any(|(_, m)| m.xid() == 0xa0),
        "the plain DISCOVER must get no proxy reply"
    );
    let ack = srv
        .iter()
        .find(|(_, m)| m.xid() == 0xa3)
        .expect("4011 ack on the wire");
    assert_eq!(
        *ack.0.dst.ip(),
        Ipv4Addr::new(10, 77, 2, 50),
        "4011 answers by unicast"
    );
}

/// qemu with the iPXE NIC ROMs (Debian qemu-system-x86 + ipxe-qemu) and,
/// for UEFI, OVMF. Like root, required under CI, a loud skip otherwise.
fn qemu_available(test: &str, uefi: bool) -> bool {
    let ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        // Debian's qemu looks for NIC ROMs in /usr/lib/ipxe/qemu too.
        && ["/usr/lib/ipxe/qemu", "/usr/share/qemu"]
            .iter()
            .any(|d| Path::new(d).join("efi-virtio.rom").exists())
        && (!uefi || Path::new(OVMF_CODE).exists());
    if ok {
        return true;
    }
    support::skip(&format!(
        "{test}: needs qemu-system-x86_64, ipxe-qemu (and ovmf for UEFI)"
    ))
}

/// What to wait for before stopping a VM.
enum Until<'a> {
    /// A server log line containing all of these.
    ServerLog(&'a [&'a str]),
    /// This text on the VM's serial console (what the firmware did with our answer).
    Serial(&'a str),
}

struct VmRun {
    cli: Decoded,
    srv: Decoded,
    serial: String,
}

/// Boot a diskless VM on a tap device in its own namespace against
/// `dhcp_serve` (the VM's MAC in the inventory at 10.77.<net>.10). In proxy
/// mode a dnsmasq plays the LAN's router, handing out addresses without any
/// boot options. Return what went over the wire and the serial console.
/// TCG only: this kernel's /dev/kvm is a slow nested layer (docs/reference.md "qemu: TCG, not
/// KVM").
fn boot_vm(net: u8, vm_mac: &str, uefi: bool, proxy: bool, until: Until) -> VmRun {
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}{net}", std::process::id() % 100_000);
    let ns = Netns::new(format!("dhcq{tag}"));
    let tap = format!("dhc{tag}t");
    ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", &tap]);
    ns.ip(&["link", "set", &tap, "up"]);
    let _router = proxy.then(|| {
        // dnsmasq writes to stderr in --no-daemon mode: a file, not a pipe.
        let log = dir.path().join("router.log");
        let mut r = Proc::new(
            "dnsmasq",
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.0,
                    "dnsmasq",
                    "--no-daemon",
                    "--conf-file=/dev/null",
                ])
                .args([
                    "--port=0",
                    "-u",
                    "root",
                    "--bind-interfaces",
                    "--except-interface=lo",
                ])
                .arg(format!("--interface={tap}"))
                .arg(format!(
                    "--dhcp-range=10.77.{net}.100,10.77.{net}.150,255.255.255.0,1h"
                ))
                .arg("--no-ping")
                .arg(format!(
                    "--dhcp-leasefile={}",
                    dir.path().join("router.leases").display()
                ))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("spawning dnsmasq (Debian package dnsmasq-base)"),
        );
        wait_until(
            "the router's DHCP socket",
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sockets bound")),
            || r.alive(),
        );
        r
    });
    let mode = if proxy { "proxy" } else { "full" };
    let server = Server::spawn(
        &["ip", "netns", "exec", &ns.0],
        &json!({
            "interface": tap, "mode": mode, "subnet": format!("10.77.{net}.0/24"),
            "gateway": format!("10.77.{net}.1"),
            "pool": {"start": format!("10.77.{net}.160"), "end": format!("10.77.{net}.200")},
            "nodes": [{"mac": vm_mac, "hostname": "vm", "ip": format!("10.77.{net}.10")}],
        }),
        dir.path(),
    );
    let cap = Capture::start(&ns, &tap, dir.path());
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, "qemu-system-x86_64"]);
    let nic = format!("virtio-net-pci,netdev=n0,mac={vm_mac},bootindex=1");
    if uefi {
        let vars = dir.path().join("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        machine_args(&mut cmd, Firmware::Uefi, &vars);
        // IPv4 PXE first: no IPv6 PXE/network stack entries.
        cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"])
            .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"])
            // romfile= (empty): EDK2's own PXE client instead of the iPXE ROM.
            .args(["-device", &format!("{nic},romfile=")]);
    } else {
        machine_args(&mut cmd, Firmware::Bios, Path::new(""));
        cmd.args(["-device", &nic]);
    }
    let serial = dir.path().join("serial.log");
    cmd.args([
        "-m",
        "256",
        "-smp",
        "1",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("qemu.err")).unwrap());
    let mut vm = Proc::new("qemu", cmd.spawn().expect("spawning qemu"));
    let read_serial = || {
        std::fs::read(&serial)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    };
    match until {
        Until::ServerLog(parts) => {
            server.wait_for_log(parts, || vm.alive());
        }
        Until::Serial(text) => {
            // Once the firmware has given up on the network, the text will
            // never come: fail now rather than at the 10-minute guard.
            let gave_up = if uefi {
                "EFI Internal Shell"
            } else {
                "No bootable device"
            };
            wait_until(
                &format!("{text:?} on the serial console"),
                || read_serial().contains(text),
                || {
                    let con = read_serial();
                    assert!(
                        !con.contains(gave_up),
                        "firmware gave up without {text:?}:\n{con}"
                    );
                    vm.alive()
                },
            )
        }
    }
    drop(vm);
    let counters = server.stop();
    assert_eq!(counters["malformed"], 0, "{counters}");
    let (cli, srv) = split(&cap.stop());
    VmRun {
        cli,
        srv,
        serial: read_serial(),
    }
}

fn first(list: &Decoded, ty: MessageType) -> &Message {
    list.iter()
        .map(|(_, m)| m)
        .find(|m| msg_type(m) == Some(ty))
        .unwrap_or_else(|| panic!("no {ty:?} on the wire"))
}

#[test]
fn real_ipxe_rom_gets_its_script_url() {
    let name = "real_ipxe_rom_gets_its_script_url";
    if !netns_available(name) || !qemu_available(name, false) {
        return;
    }
    let vm_mac = "52:54:00:77:03:01";
    let VmRun { cli, srv, .. } = boot_vm(
        3,
        vm_mac,
        false,
        false,
        Until::ServerLog(&["ipxe=true", "msg=Request", "decision=ack"]),
    );
    let disc = first(&cli, MessageType::Discover);
    let req = dhcp::decode_request(&dhcp::encode(disc).unwrap(), dhcp::RecvPort::Dhcp).unwrap();
    assert!(req.user_class_ipxe && req.is_pxe_client(), "{req:?}");
    assert_eq!(req.client_arch, Some(0));
    let ack = first(&srv, MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 77, 3, 10));
    assert_eq!(
        file(ack),
        format!("http://10.77.3.1:8080/boot/{vm_mac}.ipxe")
    );
    assert!(ack.opts().get(OptionCode::Unknown(175)).is_some());
}

#[test]
fn real_edk2_uefi_pxe_gets_the_efi_binary() {
    let name = "real_edk2_uefi_pxe_gets_the_efi_binary";
    if !netns_available(name) || !qemu_available(name, true) {
        return;
    }
    let VmRun { cli, srv, .. } = boot_vm(
        4,
        "52:54:00:77:04:01",
        true,
        false,
        Until::ServerLog(&["arch=Some(7)", "ipxe=false", "msg=Request", "decision=ack"]),
    );
    let disc = first(&cli, MessageType::Discover);
    let req = dhcp::decode_request(&dhcp::encode(disc).unwrap(), dhcp::RecvPort::Dhcp).unwrap();
    assert!(!req.user_class_ipxe && req.is_pxe_client(), "{req:?}");
    assert_eq!(req.client_arch, Some(7));
    let ack = first(&srv, MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 77, 4, 10));
    assert_eq!(ack.siaddr(), Ipv4Addr::new(10, 77, 4, 1));
    assert_eq!(file(ack), "ipxe.efi");
    assert_eq!(opt60(ack).as_deref(), Some("PXEClient"));
}

/// Proxy mode with real firmware: a router (dnsmasq) gives the address, the
/// firmware boots what ironseed's ProxyDHCP offer names.
#[test]
fn real_ipxe_proxy_mode_next_to_a_router() {
    let name = "real_ipxe_proxy_mode_next_to_a_router";
    if !netns_available(name) || !qemu_available(name, false) {
        return;
    }
    let vm_mac = "52:54:00:77:05:01";
    let url = format!("http://10.77.5.1:8080/boot/{vm_mac}.ipxe");
    let run = boot_vm(
        5,
        vm_mac,
        false,
        true,
        // The fetch line iPXE prints after "Filename: URL" (waiting for the filename alone let a
        // loaded machine stop the VM before the fetch line was written).
        Until::Serial("52%3A54%3A00%3A77%3A05%3A01.ipxe"),
    );
    assert!(
        run.serial.contains(&format!("Filename: {url}")),
        "{}",
        run.serial
    );
    // iPXE took its address from the router and the script URL from us.
    let router_ack = run
        .srv
        .iter()
        .map(|(_, m)| m)
        .find(|m| msg_type(m) == Some(MessageType::Ack))
        .expect("router ACK");
    assert!(
        (100..=150).contains(&router_ack.yiaddr().octets()[3]),
        "{}",
        dhcp::describe(router_ack)
    );
    let ours = run
        .srv
        .iter()
        .map(|(_, m)| m)
        .find(|m| {
            msg_type(m) == Some(MessageType::Offer) && opt60(m).as_deref() == Some("PXEClient")
        })
        .expect("our proxy offer");
    assert_eq!(
        ours.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "a proxy offer carries no address"
    );
    assert_eq!(file(ours), url);
    // iPXE percent-encodes ':' when it fetches the URL: the HTTP layer must
    // decode the path (recorded here so a change in iPXE is noticed).
    assert!(
        run.serial.contains("52%3A54%3A00%3A77%3A05%3A01.ipxe"),
        "{}",
        run.serial
    );
    let disc = first(&run.cli, MessageType::Discover);
    assert_eq!(arch_of(disc), Some(0));
}

/// The address EDK2 reports on its console ("Station IP address is …").
fn station_ip(serial: &str) -> Ipv4Addr {
    serial
        .lines()
        .find_map(|l| l.trim().strip_prefix("Station IP address is "))
        .unwrap_or_else(|| panic!("no station IP on the console:\n{serial}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn real_edk2_proxy_mode_next_to_a_router() {
    let name = "real_edk2_proxy_mode_next_to_a_router";
    if !netns_available(name) || !qemu_available(name, true) {
        return;
    }
    let run = boot_vm(
        6,
        "52:54:00:77:06:01",
        true,
        true,
        Until::Serial("NBP filename is ipxe.efi"),
    );
    // EDK2 prints what it took from where: the router's address, our server and file.
    let station = station_ip(&run.serial);
    assert!(
        (100..=150).contains(&station.octets()[3]),
        "not a router address: {station}"
    );
    assert!(
        run.serial.contains("Server IP address is 10.77.6.1\n"),
        "{}",
        run.serial
    );
    let disc = first(&run.cli, MessageType::Discover);
    assert_eq!(arch_of(disc), Some(7));
}

/// Protects discovery in every DHCP mode: the real `pxe serve` records a client that is not in
/// the inventory (busybox udhcpc, arch 7) from the broadcast it sees, in proxy mode (where it
/// leases nothing) as in full mode, and saves it owner-only in the state folder.
#[test]
fn pxe_serve_records_unknown_clients_in_proxy_and_full_mode() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    if !netns_available("pxe_serve_records_unknown_clients_in_proxy_and_full_mode") {
        return;
    }
    for (net, mode) in [(8u8, "proxy"), (9u8, "full")] {
        let tag = format!("{}{net}", std::process::id() % 100_000);
        let srv = Netns::new(format!("discovery-s{tag}"));
        let cli = Netns::new(format!("discovery-c{tag}"));
        let (srv_if, cli_if) = (format!("dsc{tag}s"), format!("dsc{tag}c"));
        support::run(Command::new("ip").args([
            "-n", &srv.0, "link", "add", &srv_if, "type", "veth", "peer", "name", &cli_if, "netns",
            &cli.0,
        ]));
        srv.ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", &srv_if]);
        srv.ip(&["link", "set", &srv_if, "up"]);
        cli.ip(&["link", "set", &cli_if, "address", UNKNOWN_MAC]);
        cli.ip(&["link", "set", &cli_if, "up"]);

        let inventory =
            builder::inventory::DEFAULT_INVENTORY.replace("10.0.20.", &format!("10.77.{net}."));
        let lab = support::serve::lab_from(&inventory, &[]);
        support::ensure_service_user();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &srv.0, env!("CARGO_BIN_EXE_pxe"), "serve"])
            .args(["--interface", &srv_if, "--dhcp", mode])
            .args(["--http-port", "0", "--tftp-port", "0", "--bundle"])
            .arg(&lab.bundle)
            .arg("--state")
            .arg(&lab.state)
            .arg("--ipxe-dir")
            .arg(&lab.ipxe)
            .arg("--artifacts")
            .arg(&lab.artifacts);
        let mut server = support::serve::Server::spawn(cmd);

        let hook = write_hook(lab.dir.path());
        let _ = udhcpc(&cli, &cli_if, &hook, "0007", 2);
        let file = lab.state.join("discovered.json");
        let mut saved = String::new();
        // Saved by the server's 2 s timer: generous under load.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !saved.contains(UNKNOWN_MAC) {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "{mode}: pxe exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: not recorded: {saved}"
            );
            std::thread::sleep(Duration::from_millis(200));
            saved = std::fs::read_to_string(&file).unwrap_or_default();
        }
        let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
        let m = &v["machines"][0];
        assert_eq!(m["mac"], UNKNOWN_MAC, "{mode}: {saved}");
        assert_eq!(m["arch"], 7, "{mode}: {saved}");
        assert_eq!(m["vendor_class"], "PXEClient", "{mode}: {saved}");
        assert_eq!(m["interface"], srv_if.as_str(), "{mode}: {saved}");
        assert!(m["count"].as_u64().unwrap() >= 1, "{mode}: {saved}");
        assert_eq!(
            v["machines"].as_array().unwrap().len(),
            1,
            "only the unknown client: {saved}"
        );
        let mode_bits = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode_bits & 0o777, 0o600, "{mode}");
        drop(server);
    }
}
