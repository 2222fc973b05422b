//! `pxe` command line. `--help` is documentation.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pxe::dhcp_policy::DhcpMode;

#[derive(Debug, Parser)]
#[command(
    name = "pxe",
    version,
    about = "ironseed pxe: network-boot the nodes of a rendered bundle (DHCP, TFTP, HTTP) with install-once safety",
    long_about = "ironseed pxe serves a bundle rendered by `builder render`: DHCP (proxy next to a home \
router, or full), TFTP for the iPXE firmware, HTTP for iPXE scripts, installer artifacts, per-node seeds \
and an API. Only nodes of the inventory that are armed for install get the installer; an installed node \
boots its local disk until it is explicitly re-armed; an unknown MAC is never installed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a bundle: DHCP, TFTP and HTTP, until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Show every node's install state (and live progress bars with --watch), then the
    /// discovered machines: those not in the inventory that asked this pxe for DHCP or a boot.
    Status(StatusArgs),
    /// Arm nodes for (re)install: the next PXE boot of each gets the installer (a fresh install
    /// secret, valid for the server's --install-window).
    Arm(NodeArgs),
    /// Disarm nodes: their next PXE boot goes to the local disk; a live install secret dies.
    Disarm(NodeArgs),
    /// Arm one inspection boot of machines not in the inventory: the next PXE boot of each
    /// boots the installer in inspect mode, which reports the machine's hardware (never writes
    /// a disk) and powers it off. See them with `pxe status` or `builder discover`.
    Inspect(InspectArgs),
    /// Internal: started by `pxe serve` as root before it drops privileges, so a reload can
    /// still read the bundle's owner-only files. Reads "load" requests on stdin.
    #[command(hide = true)]
    BundleReader(ReaderArgs),
}

#[derive(Debug, Args)]
pub struct ReaderArgs {
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Bundle folder written by `builder render` (verified against its SHA256SUMS at start).
    #[arg(long, value_name = "DIR")]
    pub bundle: PathBuf,
    /// Network interface to serve on (SO_BINDTODEVICE); its first IPv4 address is the server address.
    #[arg(long, value_name = "IF")]
    pub interface: Option<String>,
    /// Server address for DHCP replies and URLs. Default: the interface's address, else the
    /// bundle's appliance.ip.
    #[arg(long, value_name = "IP")]
    pub listen: Option<Ipv4Addr>,
    /// DHCP mode.
    #[arg(long, value_enum, default_value = "proxy")]
    pub dhcp: DhcpMode,
    /// TFTP port (the firmware always asks on 69).
    #[arg(long, default_value_t = 69, value_name = "N")]
    pub tftp_port: u16,
    /// HTTP port. Default: the bundle's appliance.http_port, the port every URL in the bundle
    /// names; 0 picks a free port.
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
    /// DHCP server port (67; the proxy also listens on 4011). Only tests change it.
    #[arg(long, default_value_t = 67, value_name = "N", hide = true)]
    pub dhcp_port: u16,
    /// Where node states and DHCP leases are kept. Default: /var/lib/ironseed/pxe as root,
    /// else $XDG_STATE_HOME/ironseed/pxe (~/.local/state/ironseed/pxe).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Folder with the iPXE binaries served over TFTP (Debian package `ipxe`).
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/ipxe")]
    pub ipxe_dir: PathBuf,
    /// UEFI boot file for client architectures 7 and 9 (and 16, over HTTP) of machines whose
    /// hardware profile names no `efi_boot_file`, and of machines not in the inventory.
    #[arg(long, value_name = "FILE", default_value = "ipxe.efi")]
    pub efi_file: String,
    /// Debian's Microsoft-signed shim (package shim-signed), served as shimx64.efi to
    /// `secure_boot` nodes (docs/secure-boot.md).
    #[arg(long, value_name = "FILE", default_value = pxe::secure_boot::SHIM_PATH)]
    pub shim: PathBuf,
    /// Debian's signed network GRUB (package grub-efi-amd64-signed), served as grubx64.efi
    /// next to shim.
    #[arg(long, value_name = "FILE", default_value = pxe::secure_boot::GRUB_PATH)]
    pub grub: PathBuf,
    /// Folder served at /artifacts/ (installer kernel and initrd, OS images from `builder images`);
    /// must be readable by --user. Default: the one `builder images` fills,
    /// /var/lib/ironseed/artifacts as root, else $XDG_DATA_HOME/ironseed/artifacts
    /// (~/.local/share/ironseed/artifacts).
    #[arg(long, value_name = "DIR", env = "IRONSEED_ARTIFACTS")]
    pub artifacts: Option<PathBuf>,
    /// Account to switch to after binding the ports, when started as root: a dedicated system
    /// account (pxe/ironseed.sysusers creates `ironseed`; see docs/service.md). Not used when
    /// started unprivileged.
    #[arg(long, value_name = "NAME", default_value = pxe::privileges::SERVICE_USER)]
    pub user: String,
    /// Arm the nodes this pxe sees for the first time (the very first deployment of a rack).
    /// Without it every new node starts disarmed and boots its local disk until `pxe arm`.
    /// Ignored, with a warning, for a bundle that joins an existing cluster (`builder rebuild`).
    #[arg(long)]
    pub arm_new: bool,
    /// Inspect machines not in the inventory when they PXE-boot: `unknown` boots every such
    /// machine that has not reported facts yet into the installer's inspect mode (it reads the
    /// hardware, never writes a disk); `none` only those armed with `pxe inspect MAC`. Others
    /// are sent on to their next boot device.
    #[arg(long, value_enum, default_value = "none", value_name = "WHICH")]
    pub inspect: pxe::discovered::InspectMode,
    /// What an inspected machine does after posting its facts.
    #[arg(long, value_enum, default_value = "poweroff", value_name = "ACTION")]
    pub after_inspect: pxe::discovered::AfterInspect,
    /// The operator API token file. Default: STATE/api-token, created on first start (256
    /// random bits, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// How long an armed node's install secret lives: the node must boot, install and report
    /// `installed` within it, or be armed again. Seconds, or with a unit: 90m, 2h.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = parse_window)]
    pub install_window: std::time::Duration,
    /// Open HTTP connections in total (lowered to fit under the open-file limit); when full, the
    /// connection idle longest is closed for a new one. See docs/limits.md.
    #[arg(long, default_value_t = 1024, value_name = "N", hide = true)]
    pub http_max_connections: usize,
    /// Open HTTP connections from one client address; more are reset at once.
    #[arg(long, default_value_t = 64, value_name = "N", hide = true)]
    pub http_max_per_address: usize,
    /// Concurrent TFTP transfers from one client address; more get ERROR "too many transfers".
    #[arg(long, default_value_t = pxe::serve::tftp::MAX_PER_ADDRESS, value_name = "N", hide = true)]
    pub tftp_max_per_address: usize,
}

/// `--install-window`: `N` seconds, or `Ns`, `Nm`, `Nh`; from one minute to a week.
pub fn parse_window(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: want a number with s, m or h (e.g. 2h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (s, m or h)")),
    };
    if !(60..=7 * 24 * 3600).contains(&secs) {
        return Err(format!("`{s}`: the install window must be from 1m to 168h"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Keep watching: one live progress bar per node, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

/// Which pxe server a client talks to, and with which token.
#[derive(Debug, Args)]
pub struct Remote {
    /// The pxe server's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        env = "IRONSEED_PXE",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// How a client finds the operator API token.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// File holding the operator API token. Default: $IRONSEED_API_TOKEN, else the token file
    /// of a pxe serve on this machine (/var/lib/ironseed/pxe/api-token, or
    /// ~/.local/state/ironseed/pxe/api-token) when readable.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// MACs of machines not in the inventory (52:54:00:12:34:56), e.g. from `pxe status`.
    #[arg(value_name = "MAC", required = true)]
    pub macs: Vec<String>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["nodes", "all"]))]
pub struct NodeArgs {
    /// Node hostnames as in the inventory.
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Every node of the served bundle.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub remote: Remote,
}
