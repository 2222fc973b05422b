//! What each subcommand does. Errors are `anyhow` with short lowercase context.

use std::collections::BTreeSet;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, DEFAULT_INVENTORY_NAME, Inventory, ProfileSet};
use builder::render::{self, AirgapHashes, RenderOptions, SeedImage};
use builder::secrets::{self, Secrets};
use builder::templates::Templates;
use builder::{bundle, diff, facts_check, fsutil};

use images::system::{self, DeviceFile};
use images::usb::{self, Phase, Policy};

use crate::cli::{
    InitArgs, RenderArgs, SourceArgs, TopologyArgs, UsbFormat, UsbWriteArgs, ValidateArgs,
};

pub fn init(a: &InitArgs) -> Result<()> {
    if a.path.exists() && !a.force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            a.path.display()
        );
    }
    fsutil::write_atomic(&a.path, DEFAULT_INVENTORY.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", a.path.display()))?;
    eprintln!(
        "wrote {}: edit the MACs, addresses and SSH key, then run `builder validate --inventory {}`",
        a.path.display(),
        a.path.display()
    );
    Ok(())
}

/// Everything `validate` knows, ready for `render`.
pub struct Loaded {
    pub inventory: Inventory,
    pub templates: Templates,
    pub path: Option<PathBuf>,
    /// Every hardware profile that was loaded (built-in and from hardware folders), with the
    /// source texts diagnostics quote.
    pub profiles: ProfileSet,
    /// The inventory's display name and text, as validated.
    pub name: String,
    pub text: String,
}

/// The inventory's display name and text (the embedded default without --inventory).
pub fn inventory_text(a: &SourceArgs) -> Result<(String, String)> {
    Ok(match &a.inventory {
        Some(p) => {
            let name = p.display().to_string();
            let bytes = std::fs::read(p).with_context(|| format!("reading {name}"))?;
            match builder::diag::decode_utf8(&name, bytes) {
                Ok(text) => (name, text),
                Err(d) => {
                    let lossy =
                        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
                    let mut diags = Diagnostics::default();
                    diags.error(d.span, d.path, d.message);
                    eprint!("{}", diags.render(&|_| Some(lossy.clone())));
                    bail!("{name}: inventory is not valid; nothing was rendered");
                }
            }
        }
        None => (
            DEFAULT_INVENTORY_NAME.to_string(),
            DEFAULT_INVENTORY.to_string(),
        ),
    })
}

pub fn load(a: &SourceArgs) -> Result<Loaded> {
    let (name, text) = inventory_text(a)?;
    load_text(a, name, text)
}

/// Validate `text` as the inventory of `a` (hardware folders, templates, relative paths as if
/// it were the --inventory file). Every problem is printed with file:line:column.
pub fn load_text(a: &SourceArgs, name: String, text: String) -> Result<Loaded> {
    let templates = Templates::load(a.templates.as_deref()).context("loading templates")?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = &a.inventory {
        let beside = p.parent().unwrap_or(Path::new(".")).join("hardware");
        if beside.is_dir() {
            dirs.push(beside);
        }
    }
    dirs.extend(a.hardware.iter().cloned());
    let mut diags = Diagnostics::default();
    let dir_refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let profiles = ProfileSet::load(&dir_refs, &mut diags);
    let (inv, more) = inventory::load(&name, &text, &profiles, &templates);
    diags.extend(more);
    let sources = |file: &str| {
        if file == name {
            Some(text.clone())
        } else {
            profiles.sources.get(file).cloned()
        }
    };
    if !diags.is_empty() {
        eprint!("{}", diags.render(&sources));
    }
    match inv {
        Some(mut inventory) if !diags.has_errors() => {
            // Files the inventory names are relative to the inventory's folder.
            if let (Some(p), Some(a)) = (&a.inventory, inventory.cluster.k3s.airgap.as_mut()) {
                let base = p.parent().unwrap_or(Path::new("."));
                for f in [&mut a.binary, &mut a.images, &mut a.install_script] {
                    if f.is_relative() {
                        *f = std::path::absolute(base.join(&*f))
                            .with_context(|| format!("resolving {}", f.display()))?;
                    }
                }
            }
            Ok(Loaded {
                inventory,
                templates,
                path: a.inventory.clone(),
                profiles,
                name,
                text,
            })
        }
        _ => bail!("{name}: inventory is not valid; nothing was rendered"),
    }
}

pub fn topology(a: &TopologyArgs) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let l = load(&a.source)?;
    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let width = match a.width {
        Some(w) => usize::from(w),
        None if tty => {
            terminal_size::terminal_size_of(&stdout).map_or(100, |(w, _)| usize::from(w.0))
        }
        None => 100,
    };
    // NO_COLOR (no-color.org): any non-empty value turns colour off.
    let colour = tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let text = builder::topology::ascii(&l.inventory, width, colour);
    stdout
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

pub fn validate(v: &ValidateArgs) -> Result<()> {
    let a = &v.source;
    let l = load(a)?;
    let inv = &l.inventory;
    let servers = inv.servers().count();
    println!(
        "{}: valid — cluster {} with {} nodes ({} server{}, VIP {})",
        a.inventory
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| DEFAULT_INVENTORY_NAME.into()),
        inv.cluster.name,
        inv.nodes.len(),
        servers,
        if servers == 1 { "" } else { "s" },
        inv.cluster.api.vip
    );
    let facts = match (&v.facts, &v.server) {
        (Some(dir), _) => facts_check::read_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?,
        (None, Some(server)) => discovered_facts(server, v.api_token_file.as_deref())?,
        (None, None) => return Ok(()),
    };
    let mut diags = Diagnostics::default();
    let checked = check_facts(&l, &facts, &mut diags)?;
    let unchecked: Vec<&str> = inv
        .nodes
        .iter()
        .map(|n| n.hostname.as_str())
        .filter(|h| !checked.iter().any(|c| c == h))
        .collect();
    if diags.has_errors() {
        bail!(
            "{}: {} problem{} against the machines' facts",
            l.name,
            diags.errors().count(),
            if diags.errors().count() == 1 { "" } else { "s" }
        );
    }
    println!(
        "facts: {} node{} match their machines ({}){}",
        checked.len(),
        if checked.len() == 1 { "" } else { "s" },
        checked.join(", "),
        if unchecked.is_empty() {
            String::new()
        } else {
            format!("; no facts yet for {}", unchecked.join(", "))
        }
    );
    Ok(())
}

/// Check `l`'s nodes against `facts` and print what is found with file:line:column. Returns
/// the hostnames that had facts.
pub fn check_facts(
    l: &Loaded,
    facts: &std::collections::BTreeMap<images::bundle::Mac, images::bundle::facts::Facts>,
    diags: &mut Diagnostics,
) -> Result<Vec<String>> {
    let raw = serde_saphyr::from_str::<builder::inventory::raw::RawInventory>(&l.text)
        .context("parsing the inventory again")?;
    let checked = facts_check::check(&l.name, &raw, &l.inventory, facts, diags);
    let sources = |file: &str| {
        if file == l.name {
            Some(l.text.clone())
        } else {
            l.profiles.sources.get(file).cloned()
        }
    };
    if !diags.is_empty() {
        eprint!("{}", diags.render(&sources));
    }
    Ok(checked)
}

/// `GET /api/v1/discovered` of a pxe server, as JSON.
pub fn discovered(server: &str, token_file: Option<&Path>) -> Result<serde_json::Value> {
    let token = images::api_token::resolve(token_file).context("reading the pxe API token")?;
    let url = format!("{}/api/v1/discovered", server.trim_end_matches('/'));
    let (status, body) = images::http::exchange("GET", &url, None, token.as_deref())
        .map_err(|e| anyhow::anyhow!("the pxe server did not answer: {e}"))?;
    match status {
        200 => {}
        401 => bail!(
            "{url}: HTTP 401: the pxe server wants its operator API token: pass --api-token-file \
             FILE or set IRONSEED_API_TOKEN (pxe serve keeps it in STATE/api-token)"
        ),
        404 => bail!(
            "{url}: HTTP 404: this pxe server does not record discovered machines (an older pxe?)"
        ),
        s => bail!(
            "{url}: HTTP {s}: {}",
            images::bundle::printable(String::from_utf8_lossy(&body).trim(), 300)
        ),
    }
    serde_json::from_slice(&body).with_context(|| format!("{url}: not a JSON answer"))
}

fn discovered_facts(
    server: &str,
    token_file: Option<&Path>,
) -> Result<std::collections::BTreeMap<images::bundle::Mac, images::bundle::facts::Facts>> {
    facts_check::from_discovered(&discovered(server, token_file)?)
        .map_err(|e| anyhow::anyhow!("{server}: {e}"))
}

pub fn secrets_path(a: &RenderArgs, l: &Loaded) -> PathBuf {
    a.secrets
        .clone()
        .unwrap_or_else(|| secrets::default_path(l.path.as_deref()))
}

/// The secrets of a cluster that already exists: a fresh token could never join it (nor
/// decrypt a snapshot's bootstrap data), so a missing file is an error here, not a new token.
pub fn existing_secrets(a: &RenderArgs, l: &Loaded) -> Result<Secrets> {
    let path = secrets_path(a, l);
    if !path.exists() {
        bail!(
            "{} does not exist: the cluster's token is needed to join it; restore the secrets \
             file from your backup (or pass --secrets FILE)",
            path.display()
        );
    }
    secrets_for(a, l)
}

fn secrets_for(a: &RenderArgs, l: &Loaded) -> Result<Secrets> {
    let path = secrets_path(a, l);
    let (s, created) = Secrets::load_or_create(&path).context("loading secrets")?;
    if created {
        eprintln!(
            "created {} with a new k3s token (mode 0600): keep it, back it up with the etcd snapshots",
            path.display()
        );
    }
    Ok(s)
}

fn hash_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(render::hex(&h.finalize()))
}

/// Nodes the existing bundle already renders in join form stay that way (see `builder rebuild`).
fn joined_from(out: &Path) -> BTreeSet<String> {
    std::fs::read(out.join(render::PLAN))
        .map(|b| images::bundle::Plan::joined_of(&b).into_iter().collect())
        .unwrap_or_default()
}

pub(crate) fn options(l: &Loaded, out: &Path) -> Result<RenderOptions> {
    let airgap = match &l.inventory.cluster.k3s.airgap {
        Some(a) => Some(AirgapHashes {
            binary_sha256: hash_file(&a.binary).context("air-gap k3s binary")?,
            images_sha256: hash_file(&a.images).context("air-gap images")?,
            install_script_sha256: hash_file(&a.install_script)
                .context("air-gap install script")?,
        }),
        None => None,
    };
    Ok(RenderOptions {
        joined: joined_from(out),
        airgap,
        seed_images: None,
        reset: None,
    })
}

fn seed_images(a: &RenderArgs) -> Option<SeedImage> {
    a.usb.then_some(match a.usb_format {
        UsbFormat::Fat => SeedImage::Fat,
        UsbFormat::Iso => SeedImage::Iso,
    })
}

pub fn render(a: &RenderArgs) -> Result<()> {
    let start = Instant::now();
    let l = load(&a.source)?;
    render_loaded(a, &l, start)
}

/// `render` of an inventory already loaded (and its diagnostics printed) by the caller.
pub fn render_loaded(a: &RenderArgs, l: &Loaded, start: Instant) -> Result<()> {
    let secrets = secrets_for(a, l)?;
    let mut opts = options(l, &a.out)?;
    opts.seed_images = seed_images(a);
    let b = render::render(&l.inventory, &secrets, &l.templates, &opts).context("rendering")?;
    bundle::write(&a.out, &b).context("writing bundle")?;
    println!(
        "rendered {} files for {} nodes into {} in {:.0?}",
        b.files.len(),
        l.inventory.nodes.len(),
        a.out.display(),
        start.elapsed()
    );
    Ok(())
}

pub fn diff(a: &RenderArgs) -> Result<()> {
    let l = load(&a.source)?;
    // diff writes nothing: a missing secrets file is reported, not created, and the diff is
    // computed with a throw-away token (masked like any secret).
    let path = secrets_path(a, &l);
    let secrets = match Secrets::load(&path).context("loading secrets")? {
        Some(s) => s,
        None => {
            eprintln!(
                "{} does not exist: `builder render` would create it (mode 0600) with a new k3s \
                 token; this diff uses a placeholder token and writes nothing",
                path.display()
            );
            Secrets::generate()
        }
    };
    let mut opts = options(&l, &a.out)?;
    opts.seed_images = seed_images(a);
    let b = render::render(&l.inventory, &secrets, &l.templates, &opts).context("rendering")?;
    let old = bundle::read(&a.out).context("reading bundle")?;
    let mut masked: Vec<&str> = vec![secrets.k3s_token.as_str()];
    masked.extend(secrets.etcd_s3_access_key.as_deref());
    masked.extend(secrets.etcd_s3_secret_key.as_deref());
    masked.extend(secrets.sops_age_key.as_deref());
    let d = diff::diff(&old, &b, &masked);
    let dangers = diff::dangers(&old, &b);
    if d.is_empty() {
        println!("{}: up to date", a.out.display());
        return Ok(());
    }
    for p in &d.added {
        println!("added    {p}");
    }
    for p in &d.removed {
        println!("removed  {p}");
    }
    for (p, lines) in &d.changed {
        println!("changed  {p}");
        for l in lines {
            println!("    {l}");
        }
    }
    println!(
        "{} added, {} removed, {} changed",
        d.added.len(),
        d.removed.len(),
        d.changed.len()
    );
    if !dangers.is_empty() {
        println!(
            "\nDANGEROUS for a running cluster: {} change{} (docs/operations.md \"Dangerous changes\")",
            dangers.len(),
            if dangers.len() == 1 { "" } else { "s" }
        );
        for x in &dangers {
            println!("  ! {}", x.what);
            println!("    nodes:     {}", x.nodes.join(", "));
            println!("    why:       {}", x.why);
            println!("    a rebuild: {}", x.rebuild);
        }
    }
    Ok(())
}

pub fn usb_write(a: &UsbWriteArgs) -> Result<()> {
    let dev_name = a.device.display().to_string();
    let img_name = a.image.display().to_string();
    let facts =
        system::device_facts(&a.device).with_context(|| format!("inspecting {dev_name}"))?;
    let mut img = std::fs::File::open(&a.image).with_context(|| format!("opening {img_name}"))?;
    let info = usb::inspect(&mut img).with_context(|| format!("reading {img_name}"))?;
    if let Some(want) = &a.sha256
        && !want.trim().eq_ignore_ascii_case(&info.source_sha256)
    {
        bail!(
            "{img_name}: sha256 is {}, expected {}; nothing was written",
            info.source_sha256,
            want.trim()
        );
    }
    let policy = Policy {
        force: a.force,
        allow_regular_file: a.target_is_file,
    };
    usb::check(&facts, info.len, policy).context("refusing to write")?;
    println!("target: {}", facts.describe());
    println!(
        "image:  {img_name}: {} bytes{}",
        info.len,
        if info.compression == images::write::Compression::Zstd {
            " (zstd, decompressed on the way)"
        } else {
            ""
        }
    );
    if !a.yes {
        confirm(&dev_name)?;
    }
    let mut dev = DeviceFile::open(Path::new(&facts.resolved), facts.is_block)
        .with_context(|| format!("opening {dev_name}"))?;
    img.seek(std::io::SeekFrom::Start(0))
        .with_context(|| format!("reading {img_name}"))?;
    let bar = indicatif::ProgressBar::new(info.len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message("writing");
    let mut verifying = false;
    let r = usb::write_verified(
        std::io::BufReader::new(img),
        &info,
        &mut dev,
        &mut |p, n| {
            if p == Phase::Verifying && !verifying {
                verifying = true;
                bar.set_message("verifying");
            }
            bar.set_position(n);
        },
    );
    bar.finish_and_clear();
    let v = r.with_context(|| format!("writing {dev_name}"))?;
    println!("image  sha256 {}", v.image_sha256);
    println!("device sha256 {}", v.device_sha256);
    println!(
        "wrote {} bytes to {dev_name}; read back and verified",
        v.written
    );
    Ok(())
}

/// Ask on the terminal; anything but `yes` (including end of input) aborts before writing.
fn confirm(dev: &str) -> Result<()> {
    eprint!("everything on {dev} will be overwritten. Type yes to continue: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was written (--yes skips the question)");
    }
    Ok(())
}
