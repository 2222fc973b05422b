//! DHCPv4 glue over `dhcproto`: raw bytes → [`BootRequest`], [`Reply`] → bytes.
//!
//! Pure: no sockets, no clock, no lookups. The server loop (`serve::dhcp`) and
//! the fuzz target both go through [`decode_request`] and [`encode_reply`].
//!
//! dhcproto quirks handled here (docs/reference.md "Crate notes"):
//! - it does not check the magic cookie, nor op/htype/hlen: we do, before decoding;
//! - one option whose length does not fit its type (e.g. option 93 with 1 byte)
//!   silently ends option parsing, and a few wrong lengths trip `debug_assert!`s
//!   or integer underflow in debug builds (options 80, 81, 94, 151..=155): we walk
//!   the option area ourselves first and reject such packets ([`check_options`]);
//! - options 43, 77 and 97 are raw bytes; 175 decodes as `Unknown`;
//! - `file`/`sname` decode with their trailing NUL and a full 128-byte `file`
//!   without NUL decodes as `None`, so we keep boot file names under 128 bytes
//!   and fall back to option 67 for longer URLs.

use std::net::Ipv4Addr;

pub use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::v4::{Flags, HType, UnknownOption};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// Fixed BOOTP header (RFC 2131 §2) plus the 4-byte magic cookie.
pub const HEADER_LEN: usize = 240;
/// RFC 2131 §3: the options field starts with 99.130.83.99.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// iPXE's encapsulated option space (iPXE `src/include/ipxe/dhcp.h`).
pub const OPT_IPXE_ENCAP: u8 = 175;
/// Sub-option of 175: "don't wait for ProxyDHCP" (DHCP_EB_NO_PXEDHCP).
pub const IPXE_NO_PXEDHCP: u8 = 176;
/// PXE spec 2.1 vendor sub-option 6 (PXE_DISCOVERY_CONTROL).
pub const PXE_DISCOVERY_CONTROL: u8 = 6;

/// The workspace's one MAC type (`images::bundle::Mac`), under the name the DHCP code uses.
pub use images::bundle::Mac as MacAddr;

/// Which socket a request arrived on: the PXE spec answers differently on the
/// DHCP port (67) and on the PXE boot-server port (4011).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecvPort {
    /// UDP 67, usually broadcast.
    Dhcp,
    /// UDP 4011, unicast "ProxyDHCP REQUEST" / boot server discovery (PXE 2.1 §2.2.2).
    PxeBoot,
}

/// Why a datagram was not turned into a [`BootRequest`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than the 240-byte DHCP header")]
    TooShort(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {htype}/len {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("bad magic cookie {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("option {code} runs past the end of the datagram")]
    TruncatedOption { code: u8 },
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("option {0} appears twice, not adjacent (RFC 3396 vs dhcproto: ambiguous)")]
    DuplicateOption(u8),
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
    #[error("message type {0:?} is not a client request")]
    NotClientMessage(MessageType),
    #[error("dhcproto: {0}")]
    Codec(String),
}

/// Everything the policy needs from a client request, extracted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootRequest {
    pub mac: MacAddr,
    pub xid: u32,
    pub msg_type: MessageType,
    /// Option 93 (RFC 4578 §2.1), first entry; falls back to the `Arch:NNNNN`
    /// field of a `PXEClient:Arch:...` vendor class when the option is absent.
    pub client_arch: Option<u16>,
    /// Option 77 says `iPXE` (plain string as iPXE sends it, or one RFC 3004 entry).
    pub user_class_ipxe: bool,
    /// Option 60, lossily decoded.
    pub vendor_class: Option<String>,
    /// Option 97 raw bytes (type 0 + 16-byte UUID); PXE servers echo it back.
    pub client_uuid: Option<Vec<u8>>,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    pub broadcast_flag: bool,
    pub hops: u8,
    /// Option 12.
    pub hostname: Option<String>,
    /// Set by the caller: which port the datagram arrived on.
    pub port: RecvPort,
}

impl BootRequest {
    /// Vendor class starts with `PXEClient` (PXE 2.1; firmware and iPXE).
    pub fn is_pxe_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient"))
    }

    /// Vendor class starts with `HTTPClient` (UEFI HTTP boot, UEFI 2.5 §24.7).
    pub fn is_http_client(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
    }

    /// Any kind of network-boot client: only these get boot information.
    pub fn is_boot_client(&self) -> bool {
        self.is_pxe_client() || self.is_http_client() || self.user_class_ipxe
    }
}

/// Parse raw bytes into a [`BootRequest`]. Pure; never panics on any input
/// (the `dhcp_request` fuzz target checks that).
pub fn decode_request(bytes: &[u8], port: RecvPort) -> Result<BootRequest, DecodeError> {
    let msg = decode_message(bytes)?;
    BootRequest::from_message(&msg, port)
}

/// Header and option-area checks, then dhcproto.
pub fn decode_message(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    if bytes[0] != 1 {
        return Err(DecodeError::NotRequest(bytes[0]));
    }
    // Only Ethernet: the MAC keys the inventory, and iPXE's ${net0/mac} is 6 bytes.
    if bytes[1] != 1 || bytes[2] != 6 {
        return Err(DecodeError::NotEthernet {
            htype: bytes[1],
            hlen: bytes[2],
        });
    }
    let magic: [u8; 4] = [bytes[236], bytes[237], bytes[238], bytes[239]];
    if magic != MAGIC_COOKIE {
        return Err(DecodeError::BadMagic(magic));
    }
    check_options(&bytes[HEADER_LEN..])?;
    Message::decode(&mut Decoder::new(bytes)).map_err(|e| DecodeError::Codec(e.to_string()))
}

/// Walk the option area like dhcproto does (runs of the same code are one
/// option, RFC 3396) and reject lengths dhcproto would mis-handle.
///
/// RFC 3396 also concatenates *non-adjacent* instances of an option, while
/// dhcproto keeps only the last one; rather than guess, such packets are
/// refused (no PXE firmware or iPXE build splits options that way).
pub fn check_options(mut opts: &[u8]) -> Result<(), DecodeError> {
    let mut seen = [false; 256];
    // (code, concatenated length) of the run being accumulated.
    let mut run: Option<(u8, usize)> = None;
    let mut close = |run: &mut Option<(u8, usize)>| -> Result<(), DecodeError> {
        if let Some((c, l)) = run.take() {
            if std::mem::replace(&mut seen[usize::from(c)], true) {
                return Err(DecodeError::DuplicateOption(c));
            }
            check_len(c, l)?;
        }
        Ok(())
    };
    while let Some(&code) = opts.first() {
        if code == 0 || code == 255 {
            close(&mut run)?;
            if code == 255 {
                break;
            }
            opts = &opts[1..];
            continue;
        }
        let Some(&len) = opts.get(1) else {
            return Err(DecodeError::TruncatedOption { code });
        };
        let len = usize::from(len);
        if opts.len() < 2 + len {
            return Err(DecodeError::TruncatedOption { code });
        }
        match &mut run {
            Some((c, l)) if *c == code => *l += len,
            _ => {
                close(&mut run)?;
                run = Some((code, len));
            }
        }
        opts = &opts[2 + len..];
    }
    close(&mut run)
}

fn check_len(code: u8, len: usize) -> Result<(), DecodeError> {
    let ok = match code {
        // message type, overload
        53 | 52 => len == 1,
        // requested IP, server id, lease time, T1, T2: 4 bytes
        50 | 51 | 54 | 58 | 59 => len == 4,
        57 => len == 2,
        // RFC 4578: a list of 16-bit architecture types.
        93 => len >= 2 && len.is_multiple_of(2),
        // RFC 4578 §2.2: type, major, minor (dhcproto debug-asserts 3).
        94 => len == 3,
        // rapid commit: empty (debug_assert in dhcproto)
        80 => len == 0,
        // client FQDN: flags + 2 rcodes (dhcproto subtracts 3)
        81 => len >= 3,
        // bulk lease query status: code byte (dhcproto subtracts 1)
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadOptionLength { code, len })
    }
}

impl BootRequest {
    /// Extract the request from a decoded message.
    pub fn from_message(msg: &Message, port: RecvPort) -> Result<Self, DecodeError> {
        if msg.opcode() != Opcode::BootRequest {
            return Err(DecodeError::NotRequest(2));
        }
        let chaddr = msg.chaddr();
        if msg.htype() != HType::Eth || chaddr.len() != 6 {
            return Err(DecodeError::NotEthernet {
                htype: u8::from(msg.htype()),
                hlen: msg.hlen(),
            });
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&chaddr[..6]);
        let opts = msg.opts();
        let msg_type = opts.msg_type().ok_or(DecodeError::NoMessageType)?;
        match msg_type {
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform => {}
            other => return Err(DecodeError::NotClientMessage(other)),
        }
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        };
        let client_arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => vendor_class.as_deref().and_then(arch_from_vendor_class),
        };
        let user_class_ipxe = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(raw)) => user_class_has(raw, b"iPXE"),
            _ => false,
        };
        let client_uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        };
        Ok(BootRequest {
            mac: MacAddr(mac),
            xid: msg.xid(),
            msg_type,
            client_arch,
            user_class_ipxe,
            vendor_class,
            client_uuid,
            ciaddr: msg.ciaddr(),
            giaddr: msg.giaddr(),
            requested_ip,
            server_id,
            broadcast_flag: msg.flags().broadcast(),
            hops: msg.hops(),
            hostname,
            port,
        })
    }
}

/// `PXEClient:Arch:00007:UNDI:003016` → 7 (PXE 2.1 §2.2.1 vendor class layout).
pub fn arch_from_vendor_class(v: &str) -> Option<u16> {
    let mut parts = v.split(':');
    if !matches!(parts.next(), Some("PXEClient" | "HTTPClient")) {
        return None;
    }
    if parts.next()? != "Arch" {
        return None;
    }
    let n = parts.next()?;
    if n.len() != 5 {
        return None;
    }
    n.parse().ok()
}

/// Option 77 is either RFC 3004 (a list of length-prefixed class names) or, as
/// iPXE and some firmware send it, one plain string. Accept both.
pub fn user_class_has(raw: &[u8], class: &[u8]) -> bool {
    if raw == class {
        return true;
    }
    let mut rest = raw;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || tail.len() < len {
            return false; // not RFC 3004 after all
        }
        if &tail[..len] == class {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// What to answer, as decided by the policy. Turned into a packet by [`build_reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// Address given to the client; `0.0.0.0` for proxy offers and INFORM acks.
    pub yiaddr: Ipv4Addr,
    /// Option 54.
    pub server_id: Ipv4Addr,
    /// Network boot information, if the client is a boot client.
    pub boot: Option<BootInfo>,
    /// Address lease parameters (full mode only).
    pub lease: Option<LeaseParams>,
    /// Option 12 for inventory hosts.
    pub hostname: Option<String>,
    /// Option 56 text (NAK reason).
    pub message: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

impl ReplyKind {
    pub fn message_type(self) -> MessageType {
        match self {
            ReplyKind::Offer => MessageType::Offer,
            ReplyKind::Ack => MessageType::Ack,
            ReplyKind::Nak => MessageType::Nak,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// siaddr: the TFTP server ("next-server").
    pub next_server: Ipv4Addr,
    /// Boot file name (TFTP path) or URL (HTTP boot, iPXE script).
    pub file: String,
    /// Option 60 to send: `PXEClient` or `HTTPClient` (UEFI HTTP boot ignores
    /// offers without `HTTPClient`).
    pub vendor_class: &'static str,
    /// Send option 43 with PXE_DISCOVERY_CONTROL = 8: "boot the file in this
    /// packet, skip boot-server discovery" (PXE 2.1 table 2-1, bit 3).
    pub pxe_discovery_control: bool,
    /// Send option 175.176 = 1 so iPXE skips its ~3 s ProxyDHCP wait.
    pub ipxe_no_proxydhcp: bool,
    /// Echo of the client's option 97 (PXE 2.1 §2.2.5: servers return it).
    pub client_uuid: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseParams {
    /// Option 51; `None` for INFORM acks (RFC 2131 §4.3.5 forbids it).
    pub lease_secs: Option<u32>,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// RFC 2131 Table 3 header fields + options for `reply` to `req`.
pub fn build_reply(req: &BootRequest, reply: &Reply) -> Message {
    let mut msg = Message::new_with_id(
        req.xid,
        Ipv4Addr::UNSPECIFIED,
        reply.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr,
        &req.mac.0,
    );
    msg.set_opcode(Opcode::BootReply);
    msg.set_htype(HType::Eth);
    // Table 3: ciaddr is copied for ACKs (REQUEST in RENEWING, INFORM), else 0.
    if reply.kind == ReplyKind::Ack {
        msg.set_ciaddr(req.ciaddr);
    }
    if req.broadcast_flag {
        msg.set_flags(Flags::default().set_broadcast());
    }
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(reply.kind.message_type()));
    opts.insert(DhcpOption::ServerIdentifier(reply.server_id));
    if let Some(text) = &reply.message {
        opts.insert(DhcpOption::Message(text.clone()));
    }
    if reply.kind == ReplyKind::Nak {
        // Table 3: a NAK carries nothing else.
        return msg;
    }
    if let Some(lease) = &reply.lease {
        if let Some(secs) = lease.lease_secs {
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            // RFC 2131 §4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(
                (u64::from(secs) * 7 / 8).try_into().unwrap_or(u32::MAX),
            ));
        }
        opts.insert(DhcpOption::SubnetMask(lease.subnet_mask));
        if let Some(r) = lease.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !lease.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
        }
    }
    if let Some(h) = &reply.hostname {
        opts.insert(DhcpOption::Hostname(h.clone()));
    }
    if let Some(boot) = &reply.boot {
        opts.insert(DhcpOption::ClassIdentifier(
            boot.vendor_class.as_bytes().to_vec(),
        ));
        if boot.pxe_discovery_control {
            opts.insert(DhcpOption::VendorExtensions(vec![
                PXE_DISCOVERY_CONTROL,
                1,
                8,
                255,
            ]));
        }
        if let Some(uuid) = &boot.client_uuid {
            opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
        }
        if boot.ipxe_no_proxydhcp {
            opts.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(OPT_IPXE_ENCAP),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
        }
        // Option 67 too when the name does not fit the 128-byte `file` field
        // with its NUL (iPXE and EDK2 read both).
        if boot.file.len() < 128 {
            msg.set_fname_str(&boot.file);
        } else {
            msg.opts_mut()
                .insert(DhcpOption::BootfileName(boot.file.as_bytes().to_vec()));
        }
        msg.set_siaddr(boot.next_server);
    }
    msg
}

/// Encode a message to bytes.
pub fn encode(msg: &Message) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(400);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// `build_reply` + `encode`.
pub fn encode_reply(req: &BootRequest, reply: &Reply) -> Result<Vec<u8>, String> {
    encode(&build_reply(req, reply))
}

/// Read back a reply (tests, golden files, the netns harness).
pub fn decode_reply(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    check_options(&bytes[HEADER_LEN..])?;
    Message::decode(&mut Decoder::new(bytes)).map_err(|e| DecodeError::Codec(e.to_string()))
}

/// A compact, stable text form of a message for golden files and logs.
pub fn describe(msg: &Message) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "op: {:?}", msg.opcode());
    let _ = writeln!(s, "xid: {:#010x}", msg.xid());
    let _ = writeln!(s, "flags.broadcast: {}", msg.flags().broadcast());
    let _ = writeln!(
        s,
        "ciaddr: {} yiaddr: {} siaddr: {} giaddr: {}",
        msg.ciaddr(),
        msg.yiaddr(),
        msg.siaddr(),
        msg.giaddr()
    );
    let chaddr = msg.chaddr();
    if chaddr.len() >= 6 {
        let mut m = [0u8; 6];
        m.copy_from_slice(&chaddr[..6]);
        let _ = writeln!(s, "chaddr: {}", MacAddr(m));
    }
    if let Some(f) = msg.fname() {
        let _ = writeln!(
            s,
            "file: {}",
            String::from_utf8_lossy(f).trim_end_matches('\0')
        );
    }
    for (code, opt) in msg.opts().iter() {
        let _ = writeln!(s, "option {}: {}", u8::from(*code), describe_opt(opt));
    }
    s
}

fn describe_opt(opt: &DhcpOption) -> String {
    match opt {
        DhcpOption::ClassIdentifier(v) | DhcpOption::UserClass(v) | DhcpOption::BootfileName(v) => {
            format!("{:?}", String::from_utf8_lossy(v))
        }
        DhcpOption::ClientSystemArchitecture(a) => format!("arch {}", u16::from(*a)),
        DhcpOption::ParameterRequestList(l) => {
            let codes: Vec<u8> = l.iter().map(|c| u8::from(*c)).collect();
            format!("{codes:?}")
        }
        DhcpOption::Unknown(u) => format!("{:02x?}", u.data()),
        other => format!("{other:?}"),
    }
}

/// Convenience for tests and the fuzz target: a client message with options.
pub fn client_message(mac: MacAddr, xid: u32, ty: MessageType, opts: Vec<DhcpOption>) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(ty));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xAB, 0x01, 0x02]);

    fn pxe_discover(arch: u16) -> Vec<u8> {
        let m = client_message(
            MAC,
            0x1234_5678,
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(
                    format!("PXEClient:Arch:{arch:05}:UNDI:002001").into_bytes(),
                ),
                DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
                DhcpOption::ClientMachineIdentifier(vec![0; 17]),
            ],
        );
        encode(&m).unwrap()
    }

    #[test]
    fn mac_display_is_lowercase_colon_separated() {
        assert_eq!(MAC.to_string(), "52:54:00:ab:01:02");
        assert_eq!("52-54-00-AB-01-02".parse::<MacAddr>().unwrap(), MAC);
        assert!("52:54:00:ab:01".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:01:02:03".parse::<MacAddr>().is_err());
        assert!("5:54:00:ab:01:020".parse::<MacAddr>().is_err());
    }

    #[test]
    fn mac_pairs_are_hex_digits_only() {
        // Found by the http_path fuzz target: u8::from_str_radix accepts a leading '+', so
        // "+0" passed as a 2-char pair and /boot/52:54:00:52:54:+0.ipxe named a node.
        for bad in [
            "52:54:00:52:54:+0",
            "+2:54:00:ab:01:02",
            "52-54-00-ab-01-+f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            crate::boot_policy::parse_boot_file("52:54:00:52:54:+0.ipxe"),
            None
        );
    }

    #[test]
    fn decodes_pxe_discover() {
        let r = decode_request(&pxe_discover(7), RecvPort::Dhcp).unwrap();
        assert_eq!(r.mac, MAC);
        assert_eq!(r.xid, 0x1234_5678);
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.client_arch, Some(7));
        assert!(r.is_pxe_client() && !r.user_class_ipxe);
        assert_eq!(r.client_uuid.as_deref(), Some(&[0u8; 17][..]));
    }

    #[test]
    fn arch_falls_back_to_vendor_class() {
        assert_eq!(
            arch_from_vendor_class("PXEClient:Arch:00009:UNDI:003016"),
            Some(9)
        );
        assert_eq!(arch_from_vendor_class("HTTPClient:Arch:00016"), Some(16));
        assert_eq!(arch_from_vendor_class("PXEClient"), None);
        assert_eq!(arch_from_vendor_class("MSFT 5.0"), None);
        assert_eq!(arch_from_vendor_class("PXEClient:Arch:7"), None);
        let m = client_message(
            MAC,
            1,
            MessageType::Discover,
            vec![DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
            )],
        );
        let r = decode_request(&encode(&m).unwrap(), RecvPort::Dhcp).unwrap();
        assert_eq!(r.client_arch, Some(0));
    }

    #[test]
    fn user_class_plain_and_rfc3004() {
        assert!(user_class_has(b"iPXE", b"iPXE"));
        assert!(user_class_has(b"\x04iPXE", b"iPXE"));
        assert!(user_class_has(b"\x03foo\x04iPXE", b"iPXE"));
        assert!(!user_class_has(b"\x03foo\x04iPX", b"iPXE"));
        assert!(!user_class_has(b"gPXE", b"iPXE"));
        assert!(!user_class_has(b"", b"iPXE"));
        assert!(!user_class_has(b"\x00iPXE", b"iPXE"));
    }

    #[test]
    fn rejects_bad_headers() {
        let good = pxe_discover(0);
        assert_eq!(
            decode_request(&good[..239], RecvPort::Dhcp),
            Err(DecodeError::TooShort(239))
        );
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(
            decode_request(&b, RecvPort::Dhcp),
            Err(DecodeError::NotRequest(2))
        );
        let mut b = good.clone();
        b[236] = 0;
        assert!(matches!(
            decode_request(&b, RecvPort::Dhcp),
            Err(DecodeError::BadMagic(_))
        ));
        let mut b = good.clone();
        b[2] = 16;
        assert!(matches!(
            decode_request(&b, RecvPort::Dhcp),
            Err(DecodeError::NotEthernet { .. })
        ));
    }

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut b = pxe_discover(0)[..HEADER_LEN].to_vec();
        b.extend_from_slice(opts);
        b
    }

    #[test]
    fn option_area_checks() {
        // Option 94 with two bytes would trip dhcproto's debug_assert.
        assert_eq!(
            decode_request(&with_options(&[53, 1, 1, 94, 2, 1, 2, 255]), RecvPort::Dhcp),
            Err(DecodeError::BadOptionLength { code: 94, len: 2 })
        );
        // Length running past the datagram.
        assert_eq!(
            decode_request(&with_options(&[53, 1, 1, 60, 40, b'P']), RecvPort::Dhcp),
            Err(DecodeError::TruncatedOption { code: 60 })
        );
        // Client FQDN shorter than its 3 fixed bytes (dhcproto underflows).
        assert_eq!(
            decode_request(&with_options(&[53, 1, 1, 81, 1, 0, 255]), RecvPort::Dhcp),
            Err(DecodeError::BadOptionLength { code: 81, len: 1 })
        );
        // RFC 3396 split option 93 (1 + 1 bytes) is fine once concatenated.
        let r = decode_request(
            &with_options(&[53, 1, 1, 93, 1, 0, 93, 1, 7, 255]),
            RecvPort::Dhcp,
        )
        .unwrap();
        assert_eq!(r.client_arch, Some(7));
        // No option 53: plain BOOTP is not served.
        assert_eq!(
            decode_request(&with_options(&[255]), RecvPort::Dhcp),
            Err(DecodeError::NoMessageType)
        );
        // A server message type from a client is refused.
        assert_eq!(
            decode_request(&with_options(&[53, 1, 2, 255]), RecvPort::Dhcp),
            Err(DecodeError::NotClientMessage(MessageType::Offer))
        );
        // The same option twice, apart: refused.
        assert_eq!(
            decode_request(
                &with_options(&[53, 1, 1, 12, 1, b'a', 53, 1, 1, 255]),
                RecvPort::Dhcp
            ),
            Err(DecodeError::DuplicateOption(53))
        );
        // No END option at all is tolerated (some firmware pads with zeros).
        assert!(decode_request(&with_options(&[53, 1, 1, 0, 0, 0]), RecvPort::Dhcp).is_ok());
    }

    fn sample_reply(file: &str) -> Reply {
        Reply {
            kind: ReplyKind::Offer,
            yiaddr: Ipv4Addr::new(10, 77, 1, 20),
            server_id: Ipv4Addr::new(10, 77, 1, 1),
            boot: Some(BootInfo {
                next_server: Ipv4Addr::new(10, 77, 1, 1),
                file: file.to_owned(),
                vendor_class: "PXEClient",
                pxe_discovery_control: true,
                ipxe_no_proxydhcp: true,
                client_uuid: Some(vec![0; 17]),
            }),
            lease: Some(LeaseParams {
                lease_secs: Some(3600),
                subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
                router: Some(Ipv4Addr::new(10, 77, 1, 1)),
                dns: vec![Ipv4Addr::new(10, 77, 1, 53)],
            }),
            hostname: Some("k3s1".into()),
            message: None,
        }
    }

    #[test]
    fn reply_round_trip() {
        let req = decode_request(&pxe_discover(7), RecvPort::Dhcp).unwrap();
        let bytes = encode_reply(&req, &sample_reply("ipxe.efi")).unwrap();
        let m = decode_reply(&bytes).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), req.xid);
        assert_eq!(m.chaddr(), &MAC.0);
        assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 77, 1, 20));
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 77, 1, 1));
        assert_eq!(m.fname(), Some(&b"ipxe.efi\0"[..]));
        let o = m.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert_eq!(
            o.get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
        );
        assert_eq!(
            o.get(OptionCode::Unknown(175)),
            Some(&DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                vec![176, 1, 1]
            )))
        );
        assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
        assert_eq!(
            o.get(OptionCode::Rebinding),
            Some(&DhcpOption::Rebinding(3150))
        );
        // The option area is well-formed by our own checker too.
        check_options(&bytes[HEADER_LEN..]).unwrap();
    }

    #[test]
    fn long_url_goes_to_option_67() {
        let req = decode_request(&pxe_discover(0), RecvPort::Dhcp).unwrap();
        let url = format!("http://10.77.1.1:8080/{}", "x".repeat(150));
        let m = decode_reply(&encode_reply(&req, &sample_reply(&url)).unwrap()).unwrap();
        assert_eq!(m.fname(), None);
        assert_eq!(
            m.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(url.into_bytes()))
        );
    }

    #[test]
    fn nak_carries_only_type_server_and_message() {
        let req = decode_request(&pxe_discover(0), RecvPort::Dhcp).unwrap();
        let mut r = sample_reply("x");
        r.kind = ReplyKind::Nak;
        r.yiaddr = Ipv4Addr::UNSPECIFIED;
        r.message = Some("wrong address".into());
        let m = decode_reply(&encode_reply(&req, &r).unwrap()).unwrap();
        let codes: Vec<u8> = m.opts().iter().map(|(c, _)| u8::from(*c)).collect();
        assert_eq!(codes, vec![53, 54, 56]);
        assert_eq!(m.fname(), None);
        assert_eq!(m.siaddr(), Ipv4Addr::UNSPECIFIED);
    }
}
