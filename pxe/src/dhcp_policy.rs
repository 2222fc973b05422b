//! The DHCP reply decision: (request, node, config, leases) → reply or nothing.
//!
//! Pure and synchronous; the server loop calls [`decide_explained`] and logs
//! the [`Reason`]. Choices worth knowing:
//!
//! - **Unknown MACs in proxy mode still get the iPXE binary.** The HTTP layer
//!   then serves them a "boot locally" script and logs the MAC, so a machine
//!   that PXE-boots by accident is visible instead of silently ignored, and a
//!   new machine's MAC can be read from the log when adding it to the inventory.
//! - **Node state does not change the DHCP answer.** Installed/booted nodes
//!   that PXE-boot (network first in the boot order) must still reach the
//!   HTTP script that tells them to boot from disk; that decision is the HTTP
//!   layer's. State and firmware are kept in [`NodeView`] for logs.
//! - **Relayed requests are answered only when the relay (giaddr) is inside
//!   the served subnet** (RFC 2131 §4.3.1 picks the subnet from giaddr, and
//!   ironseed serves exactly one); replies go to the relay on port 67.
//!   Relays from other subnets are ignored.
//! - **Full mode is authoritative** for its subnet: a REQUEST for an address
//!   that is not this client's gets a NAK (RFC 2131 §4.3.2), so a moved or
//!   reinstalled machine recovers at once instead of after its lease.
//! - UEFI IA32 (arch 6) has no iPXE binary in the bundle: such clients get no
//!   boot information (no proxy reply; an address only in full mode).
//! - **A Secure Boot node gets shim, not iPXE** ([`efi_boot_file`]): its firmware refuses
//!   the unsigned iPXE. Unknown MACs keep iPXE (nothing is known about their firmware).

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::proto::dhcp::{
    BootInfo, BootRequest, LeaseParams, MacAddr, MessageType, RecvPort, Reply, ReplyKind,
};
use crate::state::NodeState;
use images::bundle::EfiBootFile;

/// RFC 4578 §2.1 / IANA processor architecture types we act on.
pub mod arch {
    pub const BIOS: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_X64: u16 = 7;
    /// "EFI BC" in RFC 4578; x86-64 in practice for old firmware and old iPXE.
    pub const EFI_BC: u16 = 9;
    pub const EFI_X64_HTTP: u16 = 16;
}

/// `pxe serve --dhcp`. The variants' doc comments are the `--help` text of the flag's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Answer PXE clients only, with boot information and no address (a router hands out addresses).
    #[default]
    Proxy,
    /// Be the DHCP server: inventory MACs get their inventory IPs, others the optional pool.
    Full,
    /// No DHCP (another server points clients at this one).
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
    #[default]
    Unknown,
}

/// What the server knows about one MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub hostname: String,
    /// The inventory address: the static lease in full mode.
    pub inventory_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub firmware: Firmware,
    /// The node's UEFI boot file (its profile's `efi_boot_file` or override); `None`: the
    /// global `--efi-file`.
    #[serde(default)]
    pub efi_boot_file: Option<EfiBootFile>,
    /// The node keeps UEFI Secure Boot on (plan `secure_boot`): it boots signed shim.
    #[serde(default)]
    pub secure_boot: bool,
}

/// An inclusive address range handed to unknown MACs in full mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRange {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl PoolRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpPolicyConfig {
    pub mode: DhcpMode,
    /// Our address on the served interface: option 54 and the reply source.
    pub server_ip: Ipv4Addr,
    /// siaddr / next-server for TFTP boot files.
    pub tftp_server: Ipv4Addr,
    /// Base of the HTTP server, without trailing slash: `http://10.77.1.1:8080`.
    pub http_base: String,
    /// BIOS boot file (arch 0).
    pub bios_file: String,
    /// UEFI x64 boot file (arch 7 and 9): `ipxe.efi` or `snponly.efi`.
    pub efi_file: String,
    /// UEFI x64 boot file of Secure Boot nodes: Debian's signed shim, which then fetches
    /// `grubx64.efi` from the same folder of the same server (see `crate::secure_boot`).
    pub secure_boot_file: String,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub pool: Option<PoolRange>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("server address {0} is not inside subnet {1}")]
    ServerOutsideSubnet(Ipv4Addr, Ipv4Net),
    #[error("pool {0}-{1} is not inside subnet {2}")]
    PoolOutsideSubnet(Ipv4Addr, Ipv4Addr, Ipv4Net),
    #[error("pool start {0} is after pool end {1}")]
    PoolReversed(Ipv4Addr, Ipv4Addr),
    #[error("pool {0}-{1} contains the network or broadcast address of {2}")]
    PoolHasReserved(Ipv4Addr, Ipv4Addr, Ipv4Net),
    #[error("http base {0:?} must start with http:// and have no trailing '/'")]
    BadHttpBase(String),
    #[error("lease time must be at least 60 s")]
    LeaseTooShort,
}

impl DhcpPolicyConfig {
    /// A proxy-mode config with the usual defaults.
    pub fn proxy(server_ip: Ipv4Addr, subnet: Ipv4Net, http_base: impl Into<String>) -> Self {
        DhcpPolicyConfig {
            mode: DhcpMode::Proxy,
            server_ip,
            tftp_server: server_ip,
            http_base: http_base.into(),
            bios_file: "undionly.kpxe".into(),
            efi_file: "ipxe.efi".into(),
            secure_boot_file: crate::secure_boot::SHIM.into(),
            subnet,
            gateway: None,
            dns: Vec::new(),
            lease_secs: 3600,
            pool: None,
        }
    }

    /// Checks that need no host lookups (style: validation is pure).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == DhcpMode::Full && !self.subnet.contains(&self.server_ip) {
            return Err(ConfigError::ServerOutsideSubnet(
                self.server_ip,
                self.subnet,
            ));
        }
        if !self.http_base.starts_with("http://") || self.http_base.ends_with('/') {
            return Err(ConfigError::BadHttpBase(self.http_base.clone()));
        }
        if self.lease_secs < 60 {
            return Err(ConfigError::LeaseTooShort);
        }
        if let Some(p) = self.pool {
            if p.start > p.end {
                return Err(ConfigError::PoolReversed(p.start, p.end));
            }
            if !self.subnet.contains(&p.start) || !self.subnet.contains(&p.end) {
                return Err(ConfigError::PoolOutsideSubnet(p.start, p.end, self.subnet));
            }
            if p.contains(self.subnet.network()) || p.contains(self.subnet.broadcast()) {
                return Err(ConfigError::PoolHasReserved(p.start, p.end, self.subnet));
            }
        }
        Ok(())
    }
}

/// Read-only questions the policy asks the lease store (full mode).
pub trait LeaseView {
    /// The address to offer this client now: its current lease, else the
    /// requested address if free, else a free pool address; `None` if the
    /// pool is exhausted or there is no pool.
    fn offer_for(&self, mac: &MacAddr, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr>;
    /// May `ip` be acknowledged for this client (free, or already its own)?
    fn may_ack(&self, mac: &MacAddr, ip: Ipv4Addr) -> bool;
}

/// No pool (proxy mode, or full mode with static leases only).
pub struct NoLeases;

impl LeaseView for NoLeases {
    fn offer_for(&self, _: &MacAddr, _: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        None
    }
    fn may_ack(&self, _: &MacAddr, _: Ipv4Addr) -> bool {
        false
    }
}

/// Why [`decide`] answered the way it did; logged for every exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ModeOff,
    Relayed,
    NotBootClient,
    UnsupportedArch,
    /// Proxy mode: the REQUEST on port 67 belongs to the LAN's real DHCP server.
    ProxyIgnoresRequest,
    NotForThisPort,
    NoAddress,
    OtherServerChosen,
    NoRequestedAddress,
    ClientReleases,
    ProxyOffer,
    ProxyAck,
    Offer,
    Ack,
    InformAck,
    Nak,
}

impl Reason {
    /// Every reason, in declaration order (`ALL[r.index()] == r`).
    pub const ALL: [Reason; 16] = [
        Reason::ModeOff,
        Reason::Relayed,
        Reason::NotBootClient,
        Reason::UnsupportedArch,
        Reason::ProxyIgnoresRequest,
        Reason::NotForThisPort,
        Reason::NoAddress,
        Reason::OtherServerChosen,
        Reason::NoRequestedAddress,
        Reason::ClientReleases,
        Reason::ProxyOffer,
        Reason::ProxyAck,
        Reason::Offer,
        Reason::Ack,
        Reason::InformAck,
        Reason::Nak,
    ];

    /// Position in [`Reason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// A stable snake_case label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            Reason::ModeOff => "mode_off",
            Reason::Relayed => "relayed_other_subnet",
            Reason::NotBootClient => "not_boot_client",
            Reason::UnsupportedArch => "unsupported_arch",
            Reason::ProxyIgnoresRequest => "proxy_ignores_request",
            Reason::NotForThisPort => "not_for_this_port",
            Reason::NoAddress => "no_address",
            Reason::OtherServerChosen => "other_server_chosen",
            Reason::NoRequestedAddress => "no_requested_address",
            Reason::ClientReleases => "client_releases",
            Reason::ProxyOffer => "proxy_offer",
            Reason::ProxyAck => "proxy_ack",
            Reason::Offer => "offer",
            Reason::Ack => "ack",
            Reason::InformAck => "inform_ack",
            Reason::Nak => "nak",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::ModeOff => "ignored: dhcp mode off",
            Reason::Relayed => "ignored: relayed from a subnet we do not serve",
            Reason::NotBootClient => "ignored: not a PXE/HTTP/iPXE client",
            Reason::UnsupportedArch => "ignored: no boot file for this architecture",
            Reason::ProxyIgnoresRequest => "ignored: REQUEST on 67 is for the LAN's DHCP server",
            Reason::NotForThisPort => "ignored: message type not valid on this port",
            Reason::NoAddress => "ignored: unknown MAC and no free pool address",
            Reason::OtherServerChosen => "ignored: client chose another server",
            Reason::NoRequestedAddress => "ignored: REQUEST names no address",
            Reason::ClientReleases => "no reply: RELEASE/DECLINE",
            Reason::ProxyOffer => "proxy offer",
            Reason::ProxyAck => "proxy ack (port 4011)",
            Reason::Offer => "offer",
            Reason::Ack => "ack",
            Reason::InformAck => "inform ack",
            Reason::Nak => "nak: requested address is not this client's",
        };
        f.write_str(s)
    }
}

/// The reply for `req`, or nothing. See the module docs for the choices.
pub fn decide(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
    leases: &dyn LeaseView,
) -> Option<Reply> {
    decide_explained(req, node, cfg, leases).0
}

/// [`decide`] plus the reason, for logs and counters.
pub fn decide_explained(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
    leases: &dyn LeaseView,
) -> (Option<Reply>, Reason) {
    match cfg.mode {
        DhcpMode::Off => (None, Reason::ModeOff),
        _ if !req.giaddr.is_unspecified() && !cfg.subnet.contains(&req.giaddr) => {
            (None, Reason::Relayed)
        }
        _ if req.port == RecvPort::PxeBoot => pxe_port(req, node, cfg),
        DhcpMode::Proxy => proxy(req, node, cfg),
        DhcpMode::Full => full(req, node, cfg, leases),
    }
}

/// The UEFI boot file (arch 7, 9 and 16) for this machine: where its boot chain starts.
/// One row per kind of machine; the server loop and the tests read the same table.
pub fn efi_boot_file<'a>(node: Option<&NodeView>, cfg: &'a DhcpPolicyConfig) -> &'a str {
    match node {
        // Secure Boot on: only a Microsoft-signed binary starts; shim is, iPXE is not.
        Some(n) if n.secure_boot => &cfg.secure_boot_file,
        // Per-profile firmware quirks, e.g. `snponly.efi` on 13th-gen PowerEdge.
        Some(NodeView {
            efi_boot_file: Some(f),
            ..
        }) => f.file_name(),
        _ => &cfg.efi_file,
    }
}

/// Boot information for this client, or why there is none.
pub fn boot_info(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
) -> Result<BootInfo, Reason> {
    if !req.is_boot_client() {
        return Err(Reason::NotBootClient);
    }
    // PXE 2.1 clients that predate RFC 4578 send no option 93 (and no Arch
    // field): they are BIOS.
    let arch = req.client_arch.unwrap_or(arch::BIOS);
    let tftp = |file: &str| (cfg.tftp_server, file.to_owned(), "PXEClient");
    let (next_server, file, vendor_class) = if req.user_class_ipxe {
        // iPXE already runs: hand it its per-MAC script over HTTP, which is
        // what breaks the PXE → iPXE → PXE chainload loop.
        (
            cfg.server_ip,
            format!("{}/boot/{}.ipxe", cfg.http_base, req.mac),
            if req.is_http_client() {
                "HTTPClient"
            } else {
                "PXEClient"
            },
        )
    } else {
        match arch {
            arch::BIOS => tftp(&cfg.bios_file),
            arch::EFI_X64 | arch::EFI_BC => tftp(efi_boot_file(node, cfg)),
            // UEFI HTTP boot fetches the NBP itself; it needs HTTPClient in
            // option 60 or EDK2 drops the offer (and waits 60 s).
            arch::EFI_X64_HTTP => (
                cfg.server_ip,
                format!("{}/{}", cfg.http_base, efi_boot_file(node, cfg)),
                "HTTPClient",
            ),
            _ => return Err(Reason::UnsupportedArch),
        }
    };
    Ok(BootInfo {
        next_server,
        file,
        vendor_class,
        // Only PXE ROMs read option 43; HTTP boot and iPXE ignore it.
        pxe_discovery_control: vendor_class == "PXEClient" && !req.user_class_ipxe,
        ipxe_no_proxydhcp: req.user_class_ipxe,
        client_uuid: req.client_uuid.clone(),
    })
}

fn base_reply(kind: ReplyKind, cfg: &DhcpPolicyConfig) -> Reply {
    Reply {
        kind,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        server_id: cfg.server_ip,
        boot: None,
        lease: None,
        hostname: None,
        message: None,
    }
}

/// Port 4011 (PXE 2.1 §2.2.2): the client already has an address and asks
/// the boot server directly; answer with an ACK carrying the boot file.
fn pxe_port(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
) -> (Option<Reply>, Reason) {
    if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
        return (None, Reason::NotForThisPort);
    }
    match boot_info(req, node, cfg) {
        Ok(boot) => {
            let mut r = base_reply(ReplyKind::Ack, cfg);
            r.boot = Some(boot);
            (Some(r), Reason::ProxyAck)
        }
        Err(why) => (None, why),
    }
}

fn proxy(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
) -> (Option<Reply>, Reason) {
    let kind = match req.msg_type {
        MessageType::Discover => ReplyKind::Offer,
        // An INFORM from a configured client: boot info only.
        MessageType::Inform => ReplyKind::Ack,
        MessageType::Request => return (None, Reason::ProxyIgnoresRequest),
        _ => return (None, Reason::NotForThisPort),
    };
    match boot_info(req, node, cfg) {
        Ok(boot) => {
            let mut r = base_reply(kind, cfg);
            r.boot = Some(boot);
            let why = if kind == ReplyKind::Offer {
                Reason::ProxyOffer
            } else {
                Reason::InformAck
            };
            (Some(r), why)
        }
        Err(why) => (None, why),
    }
}

fn full(
    req: &BootRequest,
    node: Option<&NodeView>,
    cfg: &DhcpPolicyConfig,
    leases: &dyn LeaseView,
) -> (Option<Reply>, Reason) {
    let static_ip = node.and_then(|n| n.inventory_ip);
    let allowed = |ip: Ipv4Addr| match static_ip {
        Some(s) => s == ip,
        None => leases.may_ack(&req.mac, ip),
    };
    let (kind, yiaddr, why) = match req.msg_type {
        MessageType::Discover => {
            let ip = static_ip.or_else(|| leases.offer_for(&req.mac, req.requested_ip));
            match ip {
                Some(ip) => (ReplyKind::Offer, ip, Reason::Offer),
                None => return (None, Reason::NoAddress),
            }
        }
        MessageType::Request => {
            // RFC 2131 §4.3.2: SELECTING has a server id; INIT-REBOOT has
            // option 50 and no ciaddr; RENEWING/REBINDING have ciaddr only.
            if let Some(sid) = req.server_id
                && sid != cfg.server_ip
            {
                return (None, Reason::OtherServerChosen);
            }
            let wanted = if req.ciaddr.is_unspecified() {
                req.requested_ip
            } else {
                Some(req.ciaddr)
            };
            let Some(ip) = wanted else {
                return (None, Reason::NoRequestedAddress);
            };
            if allowed(ip) {
                (ReplyKind::Ack, ip, Reason::Ack)
            } else {
                let mut r = base_reply(ReplyKind::Nak, cfg);
                r.message = Some(format!("{ip} is not the address for {}", req.mac));
                return (Some(r), Reason::Nak);
            }
        }
        MessageType::Inform => (ReplyKind::Ack, Ipv4Addr::UNSPECIFIED, Reason::InformAck),
        MessageType::Release | MessageType::Decline => return (None, Reason::ClientReleases),
        _ => return (None, Reason::NotForThisPort),
    };
    let mut r = base_reply(kind, cfg);
    r.yiaddr = yiaddr;
    r.hostname = node.map(|n| n.hostname.clone());
    r.lease = Some(LeaseParams {
        // RFC 2131 §4.3.5: no lease time in an ACK to INFORM.
        lease_secs: (why != Reason::InformAck).then_some(cfg.lease_secs),
        subnet_mask: cfg.subnet.netmask(),
        router: cfg.gateway,
        dns: cfg.dns.clone(),
    });
    // Boot info rides along for boot clients; an unsupported arch still gets its address.
    r.boot = boot_info(req, node, cfg).ok();
    (Some(r), why)
}

/// What the lease store must record after an exchange (full mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Hold an offered pool address for a short while.
    Offer { mac: MacAddr, ip: Ipv4Addr },
    /// Bind `ip` to `mac` for `secs`.
    Bind {
        mac: MacAddr,
        ip: Ipv4Addr,
        secs: u32,
    },
    /// RELEASE (RFC 2131 §4.3.4): the client gives the address back.
    Release { mac: MacAddr, ip: Ipv4Addr },
    /// DECLINE (§4.3.3): the address is in use by someone else; quarantine it. Applied only
    /// to the declining client's own lease ([`crate::leases::LeaseStore::apply`]).
    Decline { mac: MacAddr, ip: Ipv4Addr },
    /// The client chose another server: drop our pending offer.
    Forget { mac: MacAddr },
}

/// Pure companion to [`decide`]: the lease bookkeeping an exchange implies.
pub fn lease_effect(
    req: &BootRequest,
    reply: Option<&Reply>,
    cfg: &DhcpPolicyConfig,
) -> Option<LeaseAction> {
    if cfg.mode != DhcpMode::Full || req.port != RecvPort::Dhcp {
        return None;
    }
    let mac = req.mac;
    match (req.msg_type, reply) {
        (MessageType::Discover, Some(r)) if r.kind == ReplyKind::Offer => {
            Some(LeaseAction::Offer { mac, ip: r.yiaddr })
        }
        (MessageType::Request, Some(r)) if r.kind == ReplyKind::Ack => Some(LeaseAction::Bind {
            mac,
            ip: r.yiaddr,
            secs: cfg.lease_secs,
        }),
        (MessageType::Request, None) if req.server_id.is_some_and(|s| s != cfg.server_ip) => {
            Some(LeaseAction::Forget { mac })
        }
        (MessageType::Release, _) if !req.ciaddr.is_unspecified() => Some(LeaseAction::Release {
            mac,
            ip: req.ciaddr,
        }),
        // §4.4.4: a DECLINE carries the server identifier of the server that leased the
        // address. One without ours is not about our lease: quarantining on it would let
        // any host take pool addresses out of service.
        (MessageType::Decline, _) if req.server_id == Some(cfg.server_ip) => {
            req.requested_ip.map(|ip| LeaseAction::Decline { mac, ip })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
