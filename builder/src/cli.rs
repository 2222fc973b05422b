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
