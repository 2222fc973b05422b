//! `builder images build` and `builder images installer`: the golden image and the installer
//! environment, into the artifacts folder that `pxe serve` publishes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};

use images::golden::{self, BuildOptions, Event, K3sKit};
use images::initramfs::{self, InstallerOptions};

use crate::cli::{ArtifactsArg, ImageBuildArgs, InstallerArgs};

/// The artifacts folder: --artifacts, else the per-user or system default.
pub fn artifacts_dir(a: &ArtifactsArg) -> PathBuf {
    a.artifacts
        .clone()
        .unwrap_or_else(images::catalog::default_artifacts_dir)
}

/// The first `URIs:` (deb822) or `deb` line of this machine's apt sources: the mirror it
/// already uses (and can reach), instead of guessing.
fn apt_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for l in text.lines().map(str::trim) {
            let url = l
                .strip_prefix("URIs:")
                .and_then(|r| r.split_whitespace().next())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
                });
            if let Some(u) = url
                && u.trim_end_matches('/').ends_with("/debian")
            {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// The suite of this machine's Debian (`VERSION_CODENAME`), whose kernel the installer takes
/// with apt: its firmware packages come from the same suite.
fn host_suite() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase()))
        .unwrap_or_else(|| "bookworm".into())
}

/// A line above the bar, or on stderr when there is no terminal to draw the bar on (CI logs).
fn say(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn bar(len: u64) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}")
            .unwrap(),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

pub fn build(a: &ImageBuildArgs) -> Result<()> {
    let recipe = golden::recipe(&a.name).ok_or_else(|| {
        let known: Vec<&str> = golden::recipes().iter().map(|r| r.name).collect();
        anyhow!(
            "no image recipe named {:?}; known: {}",
            a.name,
            known.join(", ")
        )
    })?;
    let o = BuildOptions {
        artifacts: artifacts_dir(&a.artifacts),
        work: a.work.clone(),
        mirror: a
            .mirror
            .clone()
            .or_else(apt_mirror)
            .unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        kit: K3sKit {
            binary: a.k3s_binary.clone(),
            images: a.k3s_images.clone(),
            install_script: a.k3s_install_script.clone(),
        },
        force: a.force,
        keep_work: a.keep_work,
        nonfree: !a.no_nonfree,
    };
    if a.no_nonfree {
        eprintln!("--no-nonfree: {}", golden::WITHOUT_NONFREE);
    }
    eprintln!(
        "building {} from {} into {}",
        recipe.name,
        o.mirror,
        o.artifacts.join("images").display()
    );
    let t0 = Instant::now();
    let pb = bar(0);
    let mut phase = String::new();
    let built = golden::build(recipe, &o, &mut |e| match e {
        Event::Phase { index, total, name } => {
            pb.set_length(total as u64);
            pb.set_position(index as u64 - 1);
            phase = name.to_string();
            pb.set_message(phase.clone());
            say(
                &pb,
                &format!("[{:>5.0}s] {name}", t0.elapsed().as_secs_f64()),
            );
        }
        Event::Line(l) => pb.set_message(format!("{phase}: {l}")),
        Event::Bytes { done, total } if total > 0 => {
            pb.set_message(format!("{phase}: {} / {} MiB", done >> 20, total >> 20))
        }
        Event::Bytes { .. } => {}
    });
    pb.finish_and_clear();
    let built = built.with_context(|| format!("building {}", recipe.name))?;
    if built.cached {
        eprintln!(
            "{} is up to date (same inputs): {} sha256 {}",
            built.name,
            built.path.display(),
            built.sha256
        );
    } else {
        eprintln!(
            "built {} in {:.0} s: {} ({} MiB, {} MiB raw) sha256 {}",
            built.name,
            t0.elapsed().as_secs_f64(),
            built.path.display(),
            built.size >> 20,
            built.raw_size >> 20,
            built.sha256
        );
    }
    Ok(())
}

pub fn installer(a: &InstallerArgs) -> Result<()> {
    let bin = match &a.installer_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating the builder binary")?
            .with_file_name("installer"),
    };
    let mut drivers: Vec<String> = initramfs::DRIVERS.iter().map(|s| s.to_string()).collect();
    drivers.extend(a.drivers.iter().cloned());
    let o = InstallerOptions {
        artifacts: artifacts_dir(&a.artifacts),
        work: a.work.clone(),
        kernel_deb: a.kernel_deb.clone(),
        installer_bin: bin,
        busybox: a.busybox.clone(),
        drivers,
        nonfree: !a.no_nonfree,
        mirror: a
            .mirror
            .clone()
            .or_else(apt_mirror)
            .unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        suite: host_suite(),
        firmware_debs: a.firmware_debs.clone(),
    };
    if a.no_nonfree {
        eprintln!("--no-nonfree: {}", initramfs::firmware::WITHOUT_NONFREE);
    }
    let pb = bar(0);
    let built = initramfs::build_installer(&o, &mut |l| say(&pb, l));
    pb.finish_and_clear();
    let built = built.context("building the installer environment")?;
    eprintln!(
        "installer for kernel {}: {} and {} ({} KiB; drivers {}; {} firmware files)",
        built.kernel_version,
        built.vmlinuz.display(),
        built.initrd.display(),
        built.initrd_size >> 10,
        built.modules.join(" "),
        built.firmware.len()
    );
    Ok(())
}
