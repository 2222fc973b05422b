//! Command-line interface. `--help` is documentation: every flag says what it does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Validate(SourceArgs),
    /// Validate, then render the bundle into --out (atomically: a failed render leaves the old bundle).
    Render(RenderArgs),
    /// Show what `render` would change in an existing bundle, without writing anything.
    Diff(RenderArgs),
    /// Replace a node's hardware: update its boot MAC, re-render it in join form, re-arm it in
    /// the running pxe, and print the cluster-side runbook for its role.
    Rebuild(RebuildArgs),
    /// Disaster restore: render the cluster-reset config for one surviving server (and join
    /// configs for the others) from an etcd snapshot, and print the restore runbook.
    Recover(RecoverArgs),
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

#[derive(Debug, Args)]
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
    /// After arming, follow the node (installing, installed, booted) with a progress bar and
    /// print the time from arming to booted; exit non-zero if the install fails.
    #[arg(long)]
    pub watch: bool,
    /// Only print the runbook: no inventory edit, no render, no arming.
    #[arg(long, conflicts_with_all = ["mac", "watch"])]
    pub runbook_only: bool,
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
