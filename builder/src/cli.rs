//! Command-line interface. `--help` is documentation: every flag says what it does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "builder",
    version,
    about = "ironseed builder: validate a homelab inventory and render the bundle that `pxe serve` boots nodes from",
    long_about = "ironseed builder reads one YAML inventory (nodes, MACs, IPs, roles, hardware profiles, the \
cluster VIP), checks every field before anything boots, and renders a bundle: a NoCloud seed per node \
(user-data, meta-data, network-config), k3s configs for an HA cluster behind a VIP, iPXE scripts, a boot \
plan and SHA256SUMS.\n\nWithout --inventory every command uses the embedded default inventory (the seed \
homelab); `builder init` writes it out for editing."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the default inventory (commented) to PATH for editing.
    Init(InitArgs),
    /// Check the inventory and hardware profiles; print every problem with file:line:column.
    /// With --facts or --server, also check every node against the facts its machine reported
    /// from an inspection boot (disks, boot NIC, firmware mode, GPU, missing firmware).
    Validate(ValidateArgs),
    /// Validate, then render the bundle into --out (atomically: a failed render leaves the old bundle).
    Render(RenderArgs),
    /// Show what `render` would change in an existing bundle, without writing anything.
    Diff(RenderArgs),
    /// Print the cluster picture: the subnet, gateway, appliance and API VIP, then the servers,
    /// agents and NFS hosts as boxes (hostname, IP, profile, etcd, GPU, Longhorn tiers, NFS
    /// exports), laid out for the terminal's width. The same picture is the bundle's
    /// topology.svg.
    Topology(TopologyArgs),
    /// OS images: the catalog, and verified images in the artifacts folder `pxe serve` serves.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// USB media for nodes.
    #[command(subcommand)]
    Usb(UsbCommand),
    /// Replace a node's hardware: update its boot MAC, re-render it in join form, re-arm it in
    /// the running pxe, and print the cluster-side runbook for its role.
    Rebuild(RebuildArgs),
    /// Add a discovered machine to the inventory file: next free address, an install-disk
    /// selector derived from its inspection facts, validated before the file is replaced
    /// (comments and layout kept).
    Adopt(AdoptArgs),
    /// Disaster restore: render the cluster-reset config for one surviving server (and join
    /// configs for the others) from an etcd snapshot, and print the restore runbook.
    Recover(RecoverArgs),
    /// Machines a pxe server saw that are not in the inventory, with the hardware their
    /// inspection boot reported (vendor/product, boot mode, disks, NICs).
    Discover(DiscoverArgs),
    /// Power one node on, off or through a cycle (or read its power state) with the driver of
    /// its inventory `power:` block (redfish, ipmi, wol, manual). Says
    /// what it will do and asks first; refuses to power off or cycle a node pxe reports
    /// `booted` unless --force.
    Power(PowerArgs),
    /// Take nodes from powered-off metal to booted: arm them in the running pxe, then power
    /// them on with a one-time network boot in cluster order (the bootstrap server first, wait
    /// until it is booted, then the other servers, then agents and the NFS host), and print the
    /// time per node. Nodes without power control are listed ("power it on now") and waited
    /// for. Booted nodes are skipped, so re-running it is safe.
    Provision(ProvisionArgs),
    /// Rehearse the rack in VMs before touching metal: the inventory's nodes as qemu machines
    /// shaped like their hardware profiles, on a private network (a network namespace) with a
    /// real `pxe serve`, installed in cluster order. Needs root (namespaces, taps).
    #[command(subcommand)]
    Lab(LabCommand),
}

/// `builder lab ...`. The lab's folder (`--dir`) holds everything: lab.json, the bundle, the
/// disk files, serial logs, pxe's state.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Render the inventory into DIR/bundle, create the lab's network namespace and bridge,
    /// start pxe serve there, create one VM per node and power them on in cluster order
    /// through the lab power driver; show each node's progress and a final table. Needs root:
    /// without it, exits 2 having changed nothing. The lab keeps running afterwards (also
    /// when a node did not boot): `builder lab status`, `console`, `down`.
    Up(LabUpArgs),
    /// The lab's table again: each VM running or not, pxe's state, first-boot notes.
    Status(LabDirArgs),
    /// A node's serial console log (escaped: a guest's console is untrusted text).
    Console(LabConsoleArgs),
    /// Stop the lab's own processes (by recorded PID and start time: SIGTERM, then SIGKILL),
    /// delete its network namespace, then remove its files unless --keep. Safe to run twice
    /// and on a half-started lab. Disk files that were in DIR before `lab up` are never deleted.
    Down(LabDownArgs),
    /// Break a lab node the way hardware breaks: --power pulls the plug (qemu quits at once),
    /// --disk pulls it and wipes the install disk file (first and last MiB zeroed, the rest
    /// punched out; only the install disk lab.json lists, inside DIR), --nic pulls it and gives
    /// the VM a new MAC (52:54:00:..), printed for `builder rebuild NODE --mac NEW`. Recorded in
    /// DIR/failures.jsonl. Recover with `builder rebuild NODE [--mac NEW] --power --lab DIR`.
    Fail(LabFailArgs),
    /// Fail a node, recover it through the normal path (`builder rebuild NODE [--mac NEW] --power
    /// --lab DIR`), wait for `booted`, and print the recovery time with its phases (fail → armed
    /// → netboot → installing → installed → booted, from pxe's timeline). Each drill is appended
    /// to DIR/drills.jsonl; --history prints median and max per node and failure.
    Drill(LabDrillArgs),
    /// Try an inventory change on the lab first: re-render with the changed inventory, show what
    /// `builder diff` calls dangerous for a running cluster and which nodes a rebuild reaches
    /// (and why), then with --yes rebuild them one at a time in cluster order (servers first)
    /// through the lab's power driver and report per node.
    Apply(LabApplyArgs),
}

/// Which failure (exactly one).
#[derive(Debug, Args)]
pub struct FailureArgs {
    /// Pull the plug: qemu quits at once, the guest gets no shutdown.
    #[arg(long)]
    pub power: bool,
    /// Pull the plug and wipe the install disk file (a dead disk replaced by a blank one).
    #[arg(long)]
    pub disk: bool,
    /// Pull the plug and replace the NIC: the VM comes back with a new MAC. The recovery's
    /// `builder rebuild --mac` edits the lab's inventory, so the lab must run an inventory
    /// inside DIR (a copy), never your rack's file.
    #[arg(long)]
    pub nic: bool,
}

#[derive(Debug, Args)]
pub struct LabFailArgs {
    /// The node (hostname).
    pub node: String,
    #[command(flatten)]
    pub failure: FailureArgs,
    #[command(flatten)]
    pub dir: LabDirArgs,
}

#[derive(Debug, Args)]
pub struct LabDrillArgs {
    /// The node (hostname); not with --history.
    #[arg(required_unless_present = "history")]
    pub node: Option<String>,
    #[command(flatten)]
    pub failure: FailureArgs,
    #[command(flatten)]
    pub dir: LabDirArgs,
    /// Give up when the node is not booted this many minutes after the failure (recorded as
    /// timed-out; exit status 1).
    #[arg(long, value_name = "MIN", default_value_t = 60)]
    pub timeout: u64,
    /// Print the drills recorded in DIR/drills.jsonl: per node, failure and accelerator the
    /// count, how many came back, median and max recovery time, median time to armed and to
    /// installed. A truncated last line (a killed drill) is skipped with a warning.
    #[arg(long, conflicts_with_all = ["power", "disk", "nic"])]
    pub history: bool,
}

#[derive(Debug, Args)]
pub struct LabApplyArgs {
    /// The changed inventory (default: the one the lab runs; after apply the lab runs this one).
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub dir: LabDirArgs,
    /// Secrets file. Default: the one beside the lab's inventory, which the lab was rendered
    /// with (another token would be a new cluster).
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Rebuild the nodes the plan names. Without it, apply only shows the plan.
    #[arg(long)]
    pub yes: bool,
    /// With --yes: rebuild the cluster's only server too (refused otherwise: that reinstall
    /// starts a new, empty cluster).
    #[arg(long, requires = "yes")]
    pub rebuild_sole_server: bool,
}

#[derive(Debug, Args)]
pub struct LabDirArgs {
    /// The lab's folder.
    #[arg(long, value_name = "DIR", default_value = "ironseed-lab")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub dir: LabDirArgs,
    /// Start the lab from a bundle rendered earlier (the running cluster before a change)
    /// instead of rendering the inventory; it must hold the inventory's nodes with their MACs.
    /// Then `builder lab apply` tries the change.
    #[arg(long, value_name = "OLD_BUNDLE")]
    pub from: Option<PathBuf>,
    /// Only these nodes get a VM (repeatable); default: every node of the inventory.
    #[arg(long = "only", value_name = "NODE")]
    pub only: Vec<String>,
    /// qemu accelerator: `auto` uses KVM only when /dev/kvm works and the CPU has hardware
    /// virtualisation, else TCG with a warning about speed.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: builder::lab::vm::AccelChoice,
    /// vCPUs per VM.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub smp: u32,
    /// Also give the lab a way out: a veth to the host and masquerade (host and namespace), so
    /// nodes can pull k3s from the internet. Changes the host (ip_forward, an iptables masquerade rule
    /// removed by `lab down`). Without it the lab stays inside its namespace.
    #[arg(long)]
    pub nat: bool,
    /// The pxe binary. Default: `pxe` beside this builder binary.
    #[arg(long, value_name = "FILE")]
    pub pxe: Option<PathBuf>,
    /// Artifacts folder with the golden image and the installer (`builder images build`,
    /// `builder images installer`). Default: the default artifacts folder; what is missing
    /// there is built first (minutes).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Give up waiting when a stage's nodes are not all booted after this many minutes (the
    /// lab keeps running; exit status 1).
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct LabConsoleArgs {
    /// The node (hostname).
    pub node: String,
    #[command(flatten)]
    pub dir: LabDirArgs,
    /// Keep printing what the console writes, until Ctrl-C or the VM stops.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct LabDownArgs {
    #[command(flatten)]
    pub dir: LabDirArgs,
    /// Stop processes and delete the namespace, but keep the folder's files (disks, logs,
    /// lab.json; a later `lab down` without --keep removes them).
    #[arg(long)]
    pub keep: bool,
}

/// `--lab DIR` of `builder power`, `provision` and `rebuild`: drive a lab's VMs instead of
/// metal.
#[derive(Debug, Args)]
pub struct LabTarget {
    /// Act on the lab in DIR (`builder lab up`): its VMs through the lab power driver, its pxe
    /// (URL and API token from DIR/lab.json, reached inside the lab's namespace), its
    /// inventory unless --inventory is given.
    #[arg(long, value_name = "DIR")]
    pub lab: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerAction {
    Status,
    On,
    Off,
    Cycle,
}

/// Where the running pxe is, and how to reach its operator API.
#[derive(Debug, Args)]
pub struct PxeRemote {
    /// The pxe server. Default: the inventory's appliance URL
    /// (http://<appliance.ip>:<appliance.http_port>).
    #[arg(long, value_name = "URL", env = "IRONSEED_PXE")]
    pub server: Option<String>,
    /// File holding the pxe server's operator API token. Default: $IRONSEED_API_TOKEN, else the
    /// token file of a pxe serve on this machine (/var/lib/ironseed/pxe/api-token, or
    /// ~/.local/state/ironseed/pxe/api-token) when readable.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct PowerArgs {
    /// The node (hostname as in the inventory).
    pub node: String,
    /// status, on, off or cycle.
    #[arg(value_enum)]
    pub action: PowerAction,
    /// Before `on`/`cycle`, set a one-time network boot (ipmi: `chassis bootdev pxe`; wol and
    /// manual: says which firmware setting or key does it).
    #[arg(long)]
    pub pxe_once: bool,
    /// Power off or cycle even a node pxe reports `booted` (a running cluster member), or when
    /// pxe cannot be asked.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Secrets file with the BMC accounts (`power.<node>.username/password`). Default:
    /// <inventory>.secrets.yaml beside the inventory, or ./ironseed.secrets.yaml.
    #[arg(long, value_name = "FILE", env = "IRONSEED_SECRETS")]
    pub secrets: Option<PathBuf>,
    #[command(flatten)]
    pub remote: PxeRemote,
    #[command(flatten)]
    pub lab: LabTarget,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The nodes to provision (hostnames as in the inventory).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub nodes: Vec<String>,
    /// Every node of the inventory.
    #[arg(long)]
    pub all: bool,
    /// Show a progress bar per node (state, bytes written) while waiting.
    #[arg(long)]
    pub watch: bool,
    /// Give up when a stage's nodes are not all booted after this many minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub timeout: u64,
    /// Secrets file with the BMC accounts (`power.<node>.username/password`). Default:
    /// <inventory>.secrets.yaml beside the inventory, or ./ironseed.secrets.yaml.
    #[arg(long, value_name = "FILE", env = "IRONSEED_SECRETS")]
    pub secrets: Option<PathBuf>,
    #[command(flatten)]
    pub remote: PxeRemote,
    #[command(flatten)]
    pub lab: LabTarget,
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// The pxe server's HTTP address.
    #[arg(
        long,
        value_name = "URL",
        env = "IRONSEED_PXE",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// File holding the pxe server's operator API token. Default: $IRONSEED_API_TOKEN, else the
    /// token file of a pxe serve on this machine (/var/lib/ironseed/pxe/api-token, or
    /// ~/.local/state/ironseed/pxe/api-token) when readable.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// Print the server's list as JSON (`{"machines": [...]}`, facts included) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `builder images ...`: one variant per subcommand, each with its own argument struct.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List the catalog's images and whether each is present and verified in the artifacts folder.
    List(ImagesListArgs),
    /// Download (or copy) a catalog image into the artifacts folder: sha256 and size verified,
    /// a broken download resumed, a mismatch refused (the cached good copy is kept).
    Fetch(ImagesFetchArgs),
    /// Build a golden node image with debootstrap (root): bootable in BIOS and UEFI mode,
    /// cloud-init (NoCloud), k3s/Longhorn prerequisites; compressed, with its sha256 and a
    /// manifest entry. An image with the same inputs already present is kept (--force rebuilds).
    Build(ImageBuildArgs),
    /// Build the installer kernel + initramfs (busybox, NIC/disk drivers, the static
    /// `installer`) into <artifacts>/installer/.
    Installer(InstallerArgs),
}

/// Where images live and which catalogs describe them; shared by every `builder images` command.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Artifacts folder, the one `pxe serve --artifacts` serves; images go to DIR/images/.
    /// Default: /var/lib/ironseed/artifacts as root, else $XDG_DATA_HOME/ironseed/artifacts
    /// (~/.local/share/ironseed/artifacts).
    #[arg(long, value_name = "DIR", env = "IRONSEED_ARTIFACTS")]
    pub artifacts: Option<PathBuf>,
    /// Extra catalog file (the format of images/catalog.yaml); repeatable. Its entries override
    /// the embedded catalog and DIR/images/manifest.yaml by name.
    #[arg(long, value_name = "FILE")]
    pub catalog: Vec<PathBuf>,
}

impl CatalogArgs {
    pub fn artifacts_dir(&self) -> PathBuf {
        self.artifacts
            .clone()
            .unwrap_or_else(images::catalog::default_artifacts_dir)
    }
}

#[derive(Debug, Args)]
pub struct ImagesListArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Re-hash every present image instead of trusting its size and recorded .sha256 file
    /// (reads every image in full).
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct ImagesFetchArgs {
    /// Catalog name of the image (see `builder images list`).
    pub name: String,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Fetch again even when a verified copy is already present (it is replaced only once the
    /// new download verified).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ArtifactsArg {
    /// Artifacts folder, the one `pxe serve --artifacts` serves. Default: /var/lib/ironseed/artifacts
    /// as root, else $XDG_DATA_HOME/ironseed/artifacts (~/.local/share/ironseed/artifacts).
    #[arg(long, value_name = "DIR", env = "IRONSEED_ARTIFACTS")]
    pub artifacts: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// Recipe to build (debian-12).
    pub name: String,
    #[command(flatten)]
    pub artifacts: ArtifactsArg,
    /// Debian mirror. Default: the first URIs of this machine's apt sources, else deb.debian.org.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Scratch folder (needs ~3 GiB); a subfolder per build, removed afterwards.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/ironseed-build")]
    pub work: PathBuf,
    /// Bake a k3s binary into the image (/usr/local/bin/k3s): an air-gapped node installs k3s
    /// without any download. Use with --k3s-images and --k3s-install-script.
    #[arg(long, value_name = "FILE")]
    pub k3s_binary: Option<PathBuf>,
    /// k3s air-gap images tarball, baked into /var/lib/rancher/k3s/agent/images/.
    #[arg(long, value_name = "FILE")]
    pub k3s_images: Option<PathBuf>,
    /// k3s install script (get.k3s.io), baked into /usr/local/share/ironseed/k3s-install.sh.
    #[arg(long, value_name = "FILE")]
    pub k3s_install_script: Option<PathBuf>,
    /// Rebuild even if an image with the same inputs is present.
    #[arg(long)]
    pub force: bool,
    /// Keep the work folder (debootstrapped tree, partition files) for inspection.
    #[arg(long)]
    pub keep_work: bool,
    /// Leave out Debian's non-free-firmware component: no NIC firmware (firmware-bnx2x,
    /// firmware-realtek) and no CPU microcode in the image. Prints which hardware then will
    /// not work (docs/hardware.md).
    #[arg(long)]
    pub no_nonfree: bool,
}

#[derive(Debug, Args)]
pub struct InstallerArgs {
    #[command(flatten)]
    pub artifacts: ArtifactsArg,
    /// The static installer binary. Default: `installer` beside this builder binary.
    #[arg(long, value_name = "FILE")]
    pub installer_bin: Option<PathBuf>,
    /// A linux-image-*.deb to take the kernel and drivers from. Default: Debian's current
    /// linux-image-amd64, downloaded with apt-get.
    #[arg(long, value_name = "FILE")]
    pub kernel_deb: Option<PathBuf>,
    /// busybox binary (static; Debian package busybox-static).
    #[arg(long, value_name = "FILE", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Extra kernel module to include (with its dependencies); repeatable.
    #[arg(long = "driver", value_name = "NAME")]
    pub drivers: Vec<String>,
    /// Pack no firmware: the drivers' firmware files (firmware-bnx2x, firmware-realtek from
    /// Debian's non-free-firmware) are left out. Prints which hardware then will not work.
    #[arg(long)]
    pub no_nonfree: bool,
    /// Debian mirror the firmware packages are fetched from (apt verifies them against Debian's
    /// archive key). Default: the first URIs of this machine's apt sources, else deb.debian.org.
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// A firmware package (.deb) to take the firmware from instead of downloading
    /// firmware-bnx2x and firmware-realtek; repeatable.
    #[arg(long = "firmware-deb", value_name = "FILE")]
    pub firmware_debs: Vec<PathBuf>,
    /// Scratch folder, removed afterwards.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/tmp/ironseed-installer"
    )]
    pub work: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum UsbCommand {
    /// Build NODE's offline installer image: a disk image (BIOS and UEFI bootable) holding the
    /// installer, NODE's install plan and seed, and the golden image. Booted on the node (from a
    /// stick written with `builder usb write`), it installs NODE with no network boot and no
    /// appliance, with the same disk selection as the network installer; the stick itself is
    /// never an install target.
    ///
    /// The bundle is rendered from the inventory (as `builder render` would), or read from an
    /// existing bundle with --bundle. The image file is mode 0600: it carries the k3s token.
    Image(UsbImageArgs),
    /// Write IMAGE to the USB stick DEVICE, then read the stick back and compare sha256.
    ///
    /// Refuses a device that is mounted (or any of its partitions), holds the running system
    /// (/ or /boot), is held by LVM/RAID/dm-crypt, is read-only, is a partition, is smaller than
    /// the image, or is neither removable nor on USB (unless --force). Shows the device's model,
    /// size and serial and asks before writing (unless --yes).
    Write(UsbWriteArgs),
}

#[derive(Debug, Args)]
pub struct UsbWriteArgs {
    /// Image file: a seed image from `builder render --usb` or any raw disk image; a
    /// zstd-compressed image (recognised by its content) is decompressed on the way.
    pub image: PathBuf,
    /// The stick's block device, e.g. /dev/sdb or /dev/disk/by-id/usb-... (the whole disk).
    pub device: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Also write a disk that is neither removable nor on USB. Never overrides the other refusals.
    #[arg(long)]
    pub force: bool,
    /// Expected sha256 of IMAGE as stored (e.g. from the bundle's SHA256SUMS); a different
    /// image is refused before anything is written.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Test seam: let a regular file stand in for DEVICE (the test suite has no stick). Hidden.
    #[arg(long = "i-know-target-is-a-file", hide = true)]
    pub target_is_file: bool,
}

#[derive(Debug, Args)]
pub struct UsbImageArgs {
    /// Hostname of the node to install (as in the inventory).
    pub node: String,
    /// Where to write the image (replaced atomically; mode 0600).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub artifacts: ArtifactsArg,
    /// Golden image to put on the stick, by catalog name: DIR/images/NAME.raw.zst with its
    /// .sha256. Default: the inventory's os.image.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Read an already rendered bundle (the appliance's) instead of rendering the inventory:
    /// its files are checked against its SHA256SUMS. Use it for a node that is rebuilt into a
    /// running cluster (the bundle knows which nodes join).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["inventory", "secrets"])]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Secrets file, as for `render`. It must exist: a stick with a fresh k3s token could not
    /// join the cluster.
    #[arg(long, value_name = "FILE", env = "IRONSEED_SECRETS")]
    pub secrets: Option<PathBuf>,
}

/// `--usb-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsbFormat {
    /// FAT12 labelled CIDATA (a USB stick).
    Fat,
    /// ISO9660 labelled cidata with Rock Ridge (a virtual CD-ROM).
    Iso,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the inventory.
    #[arg(default_value = "inventory.yaml")]
    pub path: PathBuf,
    /// Overwrite PATH if it already exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Inventory file (YAML). Default: the embedded seed-homelab inventory.
    #[arg(long, short = 'i', env = "IRONSEED_INVENTORY")]
    pub inventory: Option<PathBuf>,
    /// Extra folder of hardware profiles (*.yaml); repeatable. A `hardware/` folder beside the
    /// inventory is read automatically. A profile with a built-in name replaces the built-in one.
    #[arg(long = "hardware", value_name = "DIR")]
    pub hardware: Vec<PathBuf>,
    /// Folder of templates overriding the embedded ones by relative name
    /// (e.g. DIR/cloud-init/user-data.yaml.j2).
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Bundle folder. It is replaced as a whole; a folder that is not an ironseed bundle is refused.
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Secrets file (k3s token, optional S3 and age keys; mode 0600). Default: <inventory>.secrets.yaml
    /// beside the inventory, or ./ironseed.secrets.yaml for the embedded inventory. Created with a
    /// fresh token when missing.
    #[arg(long, value_name = "FILE", env = "IRONSEED_SECRETS")]
    pub secrets: Option<PathBuf>,
    /// Also write a NoCloud seed image per node, OUT/usb/<hostname>-cidata.img (user-data,
    /// meta-data, network-config; mode 0600, listed in SHA256SUMS). Write one to a stick with
    /// `builder usb write`.
    #[arg(long)]
    pub usb: bool,
    /// Filesystem of the --usb seed images: `fat` (FAT12 labelled CIDATA, for a USB stick) or
    /// `iso` (ISO9660 labelled cidata with Rock Ridge, for a VM's virtual CD-ROM).
    #[arg(long, value_enum, default_value_t = UsbFormat::Fat, requires = "usb")]
    pub usb_format: UsbFormat,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Lay the boxes out for N columns. Default: the terminal's width, or 100 when the output
    /// is not a terminal.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(20..))]
    pub width: Option<u16>,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The node to rebuild (hostname as in the inventory).
    pub node: String,
    /// Boot MAC of the replacement hardware. Edits that node's `mac:` in the --inventory file in
    /// place (comments and layout kept) after validating the edited inventory; needs --inventory.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// The pxe server to re-arm the node on. Default: the inventory's appliance URL
    /// (http://<appliance.ip>:<appliance.http_port>).
    #[arg(long, value_name = "URL", env = "IRONSEED_PXE")]
    pub server: Option<String>,
    /// File holding the pxe server's operator API token. Default: $IRONSEED_API_TOKEN, else the
    /// token file of a pxe serve on this machine (/var/lib/ironseed/pxe/api-token, or
    /// ~/.local/state/ironseed/pxe/api-token) when readable.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<std::path::PathBuf>,
    /// After arming, follow the node (installing, installed, booted) with a progress bar and
    /// print the time from arming to booted; exit non-zero if the install fails.
    #[arg(long)]
    pub watch: bool,
    /// Only print the runbook: no inventory edit, no render, no arming.
    #[arg(long, conflicts_with_all = ["mac", "watch", "power"])]
    pub runbook_only: bool,
    /// After arming, set a one-time network boot and power the node on (or cycle it when it
    /// is on) with the driver of its inventory `power:` block (secrets from --secrets).
    #[arg(long)]
    pub power: bool,
    #[command(flatten)]
    pub lab: LabTarget,
    #[command(flatten)]
    pub render: RenderArgs,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The etcd snapshot to restore: a file name in /var/lib/rancher/k3s/server/db/snapshots/ on
    /// the survivor, an absolute path there, or (with --s3) an object name in the inventory's
    /// etcd_snapshots.s3 bucket.
    #[arg(long, value_name = "NAME")]
    pub from_snapshot: String,
    /// Read the snapshot from S3 (cluster.etcd_snapshots.s3 and the S3 keys of the secrets file).
    #[arg(long)]
    pub s3: bool,
    /// The server that restores the snapshot and carries the cluster on. Default: the first
    /// server of the inventory.
    #[arg(long, value_name = "SERVER")]
    pub survivor: Option<String>,
    #[command(flatten)]
    pub render: RenderArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Folder of facts files, `<mac-dashed>.json` each (e.g. 52-54-00-12-34-56.json, the
    /// document an inspection boot posts); every node whose MAC has one is checked against it.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub facts: Option<PathBuf>,
    /// Read the facts from a running pxe server (`GET /api/v1/discovered`) instead, matched to
    /// nodes by MAC.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// File holding the pxe server's operator API token (with --server). Default:
    /// $IRONSEED_API_TOKEN, else the token file of a pxe serve on this machine.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
}

/// `--role` of `builder adopt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Server,
    Agent,
    Nfs,
}

impl From<RoleArg> for images::bundle::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Server => images::bundle::Role::Server,
            RoleArg::Agent => images::bundle::Role::Agent,
            RoleArg::Nfs => images::bundle::Role::Nfs,
        }
    }
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Boot MAC of the machine (as `builder discover` lists it). A MAC already in the
    /// inventory is refused (replacing a node's hardware is `builder rebuild --mac`).
    pub mac: String,
    /// Hostname of the new node.
    #[arg(long, value_name = "H")]
    pub hostname: String,
    /// Its role: server (k3s control plane), agent (k3s worker) or nfs (NFS host, no k3s).
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Its hardware profile (built-in or from a hardware folder).
    #[arg(long, value_name = "P")]
    pub profile: String,
    /// Its address. Default: the first free address after the highest node address (never
    /// the gateway, appliance, VIP, a DNS server, the DHCP pool or another node's).
    #[arg(long, value_name = "IP")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Print the entry it would add, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The machine's facts as a JSON file (what its inspection boot posted). Without --facts
    /// and --server the profile's install_disk is used, unverified.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    pub facts: Option<PathBuf>,
    /// Read the machine's facts from a running pxe server (`GET /api/v1/discovered`).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// File holding the pxe server's operator API token (with --server). Default:
    /// $IRONSEED_API_TOKEN, else the token file of a pxe serve on this machine.
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
}
