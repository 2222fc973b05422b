//! Platform socket code, all in one place: bind-to-device, broadcast, and the
//! RFC 2131 reply-target rule.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::dhcp::{BootRequest, RecvPort, ReplyKind};

pub mod gso;

pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
/// PXE boot server port (PXE 2.1 §2.2.2).
pub const PXE_PORT: u16 = 4011;

/// A UDP socket for DHCP: `SO_REUSEADDR` (the HTTP/TFTP servers or a restart
/// may hold the port briefly), `SO_BROADCAST` (replies to 255.255.255.255),
/// `SO_BINDTODEVICE` when an interface is given (serve one segment only, and
/// receive broadcasts there even when bound to 0.0.0.0).
pub fn udp_socket(iface: Option<&str>, addr: SocketAddrV4) -> io::Result<tokio::net::UdpSocket> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.set_broadcast(true)?;
    if let Some(dev) = iface {
        sock.bind_device(Some(dev.as_bytes()))?;
    }
    // A boot storm arrives in bursts; give the kernel room to queue them.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&SocketAddr::V4(addr).into())?;
    tokio::net::UdpSocket::from_std(sock.into())
}

/// Raise this process's soft `RLIMIT_NOFILE` to its hard limit and return the new soft
/// limit. The soft default is 1024 (systemd and most shells), which 1,100 idle HTTP
/// connections used up; the hard limit (systemd: 524288) is what the administrator allows.
/// Every socket and file of the server counts, so the HTTP connection cap is fitted under it.
pub fn raise_nofile() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    // An unlimited hard limit cannot be the soft one: the kernel caps descriptors at
    // fs.nr_open, 1048576 by default.
    let want = hard.min(1 << 20);
    if soft >= want {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).map_err(io::Error::from)?;
    Ok(want)
}

/// The first IPv4 address of `iface` (getifaddrs), for option 54 and siaddr.
pub fn interface_ipv4(iface: &str) -> io::Result<Option<Ipv4Addr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    Ok(addrs
        .filter(|a| a.interface_name == iface)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip())))
}

/// Where replies go when the client cannot be reached by unicast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyRouting {
    /// UDP port of DHCP clients (68; tests on loopback use another).
    pub client_port: u16,
    /// Limited broadcast (255.255.255.255; tests on loopback use 127.0.0.1).
    pub broadcast: Ipv4Addr,
}

impl Default for ReplyRouting {
    fn default() -> Self {
        ReplyRouting {
            client_port: DHCP_CLIENT_PORT,
            broadcast: Ipv4Addr::BROADCAST,
        }
    }
}

/// RFC 2131 §4.1 (and PXE 2.1 for port 4011), as a pure function.
///
/// We never unicast to `yiaddr` of a client that has no address yet: that
/// needs an ARP entry injected for the client's MAC, which needs raw sockets.
/// Broadcasting instead is what the RFC allows and what every client accepts.
pub fn reply_target(
    req: &BootRequest,
    kind: ReplyKind,
    src: SocketAddr,
    routing: &ReplyRouting,
) -> SocketAddr {
    // Port 4011: the client talks to us from an address it owns; answer there.
    if req.port == RecvPort::PxeBoot {
        return src;
    }
    if !req.giaddr.is_unspecified() {
        return SocketAddrV4::new(req.giaddr, DHCP_SERVER_PORT).into();
    }
    // A NAK is always broadcast: the client's address is what is in doubt.
    if kind != ReplyKind::Nak && !req.ciaddr.is_unspecified() {
        return SocketAddrV4::new(req.ciaddr, routing.client_port).into();
    }
    SocketAddrV4::new(routing.broadcast, routing.client_port).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dhcp::{MacAddr, MessageType};

    fn req() -> BootRequest {
        BootRequest {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            xid: 1,
            msg_type: MessageType::Discover,
            client_arch: Some(0),
            user_class_ipxe: false,
            vendor_class: Some("PXEClient".into()),
            client_uuid: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            requested_ip: None,
            server_id: None,
            broadcast_flag: false,
            hops: 0,
            hostname: None,
            port: RecvPort::Dhcp,
        }
    }

    #[test]
    fn targets() {
        let r = ReplyRouting::default();
        let src: SocketAddr = "10.77.1.50:68".parse().unwrap();
        let mut q = req();
        assert_eq!(
            reply_target(&q, ReplyKind::Offer, src, &r),
            "255.255.255.255:68".parse().unwrap()
        );
        q.broadcast_flag = true;
        assert_eq!(
            reply_target(&q, ReplyKind::Offer, src, &r),
            "255.255.255.255:68".parse().unwrap()
        );
        q.ciaddr = Ipv4Addr::new(10, 77, 1, 50);
        assert_eq!(
            reply_target(&q, ReplyKind::Ack, src, &r),
            "10.77.1.50:68".parse().unwrap()
        );
        assert_eq!(
            reply_target(&q, ReplyKind::Nak, src, &r),
            "255.255.255.255:68".parse().unwrap()
        );
        q.giaddr = Ipv4Addr::new(10, 77, 9, 1);
        assert_eq!(
            reply_target(&q, ReplyKind::Ack, src, &r),
            "10.77.9.1:67".parse().unwrap()
        );
        let mut q = req();
        q.port = RecvPort::PxeBoot;
        let src4011: SocketAddr = "10.77.1.50:4011".parse().unwrap();
        assert_eq!(reply_target(&q, ReplyKind::Ack, src4011, &r), src4011);
    }

    /// Protects against descriptor exhaustion at the soft default: the soft limit ends at
    /// the hard one.
    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Start below the hard limit (lowering the soft limit is always allowed).
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).unwrap();
        let want = hard.min(1 << 20);
        assert_eq!(raise_nofile().unwrap(), want);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (want, hard));
    }

    #[test]
    fn loopback_interface_has_127_0_0_1() {
        assert_eq!(interface_ipv4("lo").unwrap(), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(interface_ipv4("dhc-no-such-if").unwrap(), None);
    }
}
