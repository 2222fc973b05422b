//! `builder usb image NODE --out FILE`: the offline installer stick. The bundle is rendered in
//! memory (or read from --bundle), the node's install plan made by the same function `pxe`
//! serves `/plan/<node>/<secret>` with (`images::bundle::Plan::install_plan`), and the image
//! assembled by `images::stick`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use builder::render;
use builder::secrets::{self, Secrets};
use images::bundle::Plan;
use images::plan::{ImageRef, SeedUrls, Sources, stick_image_url};
use images::stick::{self, StickInputs};

use crate::cli::UsbImageArgs;
use crate::commands;
use crate::golden_cmd::artifacts_dir;

/// The bundle's files, from --bundle (checked against its SHA256SUMS) or a render in memory.
fn bundle_files(a: &UsbImageArgs) -> Result<BTreeMap<String, Vec<u8>>> {
    if let Some(dir) = &a.bundle {
        // The same reader pxe uses: every file checked against SHA256SUMS, no symlinks.
        let files = images::bundle::files::read_files(dir)
            .with_context(|| format!("reading the bundle {}", dir.display()))?;
        return Ok(files.into_iter().map(|(p, b)| (p, b.to_vec())).collect());
    }
    let l = commands::load(&a.source)?;
    let path = a
        .secrets
        .clone()
        .unwrap_or_else(|| secrets::default_path(l.path.as_deref()));
    let Some(s) = Secrets::load(&path).context("loading secrets")? else {
        bail!(
            "{}: no secrets file; a stick with a fresh k3s token could not join the cluster \
             (run `builder render` first, or pass --secrets)",
            path.display()
        );
    };
    // No bundle folder to learn joined nodes from: every node renders in its first form.
    let opts = commands::options(&l, Path::new("/nonexistent/ironseed-bundle"))?;
    let b = render::render(&l.inventory, &s, &l.templates, &opts).context("rendering")?;
    Ok(b.files.into_iter().map(|(p, f)| (p, f.bytes)).collect())
}

pub fn image(a: &UsbImageArgs) -> Result<()> {
    let t0 = Instant::now();
    let files = bundle_files(a)?;
    let plan_json = files
        .get(render::PLAN)
        .context("the bundle has no plan.json")?;
    let bundle = Plan::from_json(plan_json).context("reading the bundle's plan.json")?;
    let Some(node) = bundle.node(&a.node) else {
        let names: Vec<&str> = bundle.nodes.iter().map(|n| n.hostname.as_str()).collect();
        bail!(
            "no node named {:?} in the inventory; nodes: {}",
            a.node,
            names.join(", ")
        );
    };
    let seed_file = |f: &str| -> Result<&Vec<u8>> {
        let rel = format!("{}/{f}", node.seed_dir);
        files
            .get(&rel)
            .with_context(|| format!("the bundle has no {rel}"))
    };
    let (ud, md, nc) = (
        seed_file("user-data")?,
        seed_file("meta-data")?,
        seed_file("network-config")?,
    );

    let artifacts = artifacts_dir(&a.artifacts);
    let name = a.image.clone().unwrap_or_else(|| bundle.os_image.clone());
    let file_name = images::golden::image_file(&name);
    let image_path = artifacts.join("images").join(&file_name);
    let sha_path = artifacts.join(format!("images/{file_name}.sha256"));
    let sha = std::fs::read_to_string(&sha_path)
        .with_context(|| {
            format!(
                "reading {} (fetch or build the image first: `builder images fetch|build {name}`)",
                sha_path.display()
            )
        })?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let size = std::fs::metadata(&image_path)
        .with_context(|| format!("reading {}", image_path.display()))?
        .len();
    let installer = artifacts.join("installer");
    let (vmlinuz, initrd) = (installer.join("vmlinuz"), installer.join("initrd.img"));
    for p in [&vmlinuz, &initrd] {
        if !p.exists() {
            bail!(
                "{} is missing: build the installer environment first (`builder images installer`)",
                p.display()
            );
        }
    }

    // Offline the plan's URLs are names on the stick: the seed is in the ESP's ironseed/ folder,
    // the image in the ironseed-image partition, and there is no appliance to report to.
    let on_stick = |f: &str| format!("esp:{}/{f}", images::plan::STICK_DIR);
    let plan = bundle
        .install_plan(
            &a.node,
            Sources {
                image: ImageRef {
                    name: name.clone(),
                    url: stick_image_url(&file_name),
                    sha256: Some(sha),
                    size: Some(size),
                },
                seed: SeedUrls {
                    user_data: on_stick("user-data"),
                    meta_data: on_stick("meta-data"),
                    network_config: on_stick("network-config"),
                },
                report: String::new(),
            },
        )
        .expect("the node is in the plan");

    let work = tempfile::Builder::new()
        .prefix("ironseed-usb-")
        .tempdir()
        .context("creating a scratch folder")?;
    let built = stick::build(
        &StickInputs {
            plan: &plan,
            seed: [("user-data", ud), ("meta-data", md), ("network-config", nc)],
            vmlinuz: &vmlinuz,
            initrd: &initrd,
            image_file: &image_path,
            work: work.path(),
        },
        &a.out,
        &mut |l| eprintln!("{l}"),
    )
    .with_context(|| format!("building {}", a.out.display()))?;
    println!(
        "wrote {} ({} MiB) in {:.0?}: offline installer for {} with {} ({} MiB, sha256 {})",
        a.out.display(),
        built.layout.total >> 20,
        t0.elapsed(),
        a.node,
        file_name,
        size >> 20,
        plan.image.sha256.as_deref().unwrap_or("")
    );
    println!(
        "write it to a stick with: builder usb write {} /dev/disk/by-id/usb-…",
        a.out.display()
    );
    Ok(())
}
