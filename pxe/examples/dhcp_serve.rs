//! Run the DHCP server on one interface with a JSON node table.
//!
//! Usage: `dhcp_serve CONFIG.json` (see `Config` below for the fields).
//! Prints `READY {json}` on stdout once the sockets are bound (the readiness
//! signal for tests and the benchmark), and `COUNTERS {json}` when it stops
//! on SIGTERM/SIGINT. Logs go to stderr (`RUST_LOG`, default `info`).
//! The real `pxe serve` CLI comes later; this is for tests and benchmarks.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use pxe::dhcp_policy::{DhcpMode, DhcpPolicyConfig, Firmware, NodeView, PoolRange};
use pxe::leases::LeaseStore;
use pxe::net::{self, ReplyRouting};
use pxe::proto::dhcp::{MacAddr, RecvPort};
use pxe::serve::dhcp::{DhcpContext, DhcpSocket, run};
use pxe::state::NodeState;
use serde::Deserialize;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Interface to bind (SO_BINDTODEVICE); omit only for loopback tests.
    interface: Option<String>,
    #[serde(default = "any")]
    bind_ip: Ipv4Addr,
    #[serde(default = "dhcp_port")]
    dhcp_port: u16,
    /// Port for PXE boot-server requests; 0 disables it.
    #[serde(default = "pxe_port")]
    pxe_port: u16,
    #[serde(default = "client_port")]
    client_port: u16,
    #[serde(default = "broadcast")]
    broadcast: Ipv4Addr,
    #[serde(default)]
    mode: DhcpMode,
    /// Defaults to the interface's first IPv4 address.
    server_ip: Option<Ipv4Addr>,
    subnet: Ipv4Net,
    /// Defaults to `http://<server_ip>:8080`.
    http_base: Option<String>,
    efi_file: Option<String>,
    bios_file: Option<String>,
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    dns: Vec<Ipv4Addr>,
    #[serde(default = "lease_secs")]
    lease_secs: u32,
    pool: Option<PoolRange>,
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    state_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    mac: MacAddr,
    hostname: String,
    ip: Option<Ipv4Addr>,
    #[serde(default)]
    state: NodeState,
    #[serde(default)]
    firmware: Firmware,
}

fn any() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}
fn dhcp_port() -> u16 {
    net::DHCP_SERVER_PORT
}
fn pxe_port() -> u16 {
    net::PXE_PORT
}
fn client_port() -> u16 {
    net::DHCP_CLIENT_PORT
}
fn broadcast() -> Ipv4Addr {
    Ipv4Addr::BROADCAST
}
fn lease_secs() -> u32 {
    3600
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = std::env::args()
        .nth(1)
        .context("usage: dhcp_serve CONFIG.json")?;
    let raw = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let cfg: Config = serde_json::from_slice(&raw).with_context(|| format!("parsing {path}"))?;
    let iface = cfg.interface.as_deref();

    let server_ip = match (cfg.server_ip, iface) {
        (Some(ip), _) => ip,
        (None, Some(i)) => net::interface_ipv4(i)
            .with_context(|| format!("reading addresses of {i}"))?
            .with_context(|| format!("{i} has no IPv4 address"))?,
        (None, None) => bail!("server_ip is required without an interface"),
    };
    let mut policy = DhcpPolicyConfig::proxy(
        server_ip,
        cfg.subnet,
        cfg.http_base
            .unwrap_or_else(|| format!("http://{server_ip}:8080")),
    );
    policy.mode = cfg.mode;
    if let Some(f) = cfg.efi_file {
        policy.efi_file = f;
    }
    if let Some(f) = cfg.bios_file {
        policy.bios_file = f;
    }
    policy.gateway = cfg.gateway;
    policy.dns = cfg.dns;
    policy.lease_secs = cfg.lease_secs;
    policy.pool = cfg.pool;
    policy.validate().context("invalid DHCP config")?;

    let nodes: HashMap<MacAddr, NodeView> = cfg
        .nodes
        .into_iter()
        .map(|n| {
            (
                n.mac,
                NodeView {
                    hostname: n.hostname,
                    inventory_ip: n.ip,
                    state: n.state,
                    firmware: n.firmware,
                    efi_boot_file: None,
                    secure_boot: false,
                },
            )
        })
        .collect();
    // Inventory addresses and our own are never handed out from the pool.
    let reserved: Vec<Ipv4Addr> = nodes
        .values()
        .filter_map(|n| n.inventory_ip)
        .chain([server_ip])
        .collect();
    let mut leases = LeaseStore::new(policy.pool, reserved);
    if let Some(dir) = &cfg.state_dir {
        std::fs::create_dir_all(dir)?;
        let n = leases.load(dir).context("loading leases")?;
        tracing::info!(leases = n, dir = %dir.display(), "loaded leases");
    }

    let mut sockets = vec![DhcpSocket {
        socket: net::udp_socket(iface, SocketAddrV4::new(cfg.bind_ip, cfg.dhcp_port))
            .with_context(|| format!("binding UDP {}:{}", cfg.bind_ip, cfg.dhcp_port))?,
        port: RecvPort::Dhcp,
    }];
    if cfg.pxe_port != 0 {
        sockets.push(DhcpSocket {
            socket: net::udp_socket(iface, SocketAddrV4::new(cfg.bind_ip, cfg.pxe_port))
                .with_context(|| format!("binding UDP {}:{}", cfg.bind_ip, cfg.pxe_port))?,
            port: RecvPort::PxeBoot,
        });
    }
    let dhcp_port = sockets[0].socket.local_addr()?.port();

    let mut ctx = DhcpContext::new(policy, Arc::new(nodes), leases);
    ctx.routing = ReplyRouting {
        client_port: cfg.client_port,
        broadcast: cfg.broadcast,
    };
    ctx.state_dir = cfg.state_dir;
    let ctx = Arc::new(ctx);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "READY {}",
            serde_json::json!({"server_ip": server_ip, "dhcp_port": dhcp_port, "mode": cfg.mode})
        )?;
        out.flush()?;
    }
    run(sockets, ctx.clone(), async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "COUNTERS {}",
        serde_json::to_string(&ctx.counters.snapshot())?
    )?;
    out.flush()?;
    Ok(())
}
