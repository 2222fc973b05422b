//! `builder images ...`: the image catalog and the artifacts folder. The work is in
//! `images::{catalog, fetch}`; this is the operator's view of it (table, progress bar, messages).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use builder::diag::Diagnostics;
use builder::diag::Span;
use images::catalog::{self, Catalog, CatalogError};
use images::fetch::{self, Event, Outcome, Status};

use crate::cli::{CatalogArgs, ImagesFetchArgs, ImagesListArgs};

/// Load every catalog layer; invalid files are reported like the inventory (one line per
/// problem, the source line and a caret).
fn load(a: &CatalogArgs) -> Result<Catalog> {
    let art = a.artifacts_dir();
    match Catalog::load(&art, &a.catalog) {
        Ok(c) => Ok(c),
        Err(CatalogError::Invalid(problems)) => {
            let mut d = Diagnostics::default();
            for p in &problems {
                d.error(
                    Span::new(p.file.clone(), p.line, p.column),
                    p.field.clone(),
                    p.message.clone(),
                );
            }
            let sources = |file: &str| {
                if file == catalog::EMBEDDED_NAME {
                    Some(catalog::EMBEDDED.to_string())
                } else {
                    std::fs::read_to_string(file).ok()
                }
            };
            eprint!("{}", d.render(&sources));
            bail!("the image catalog is not valid")
        }
        Err(e) => Err(e).context("loading the image catalog"),
    }
}

fn origin_label(origin: &str) -> String {
    if origin == catalog::EMBEDDED_NAME {
        "embedded".into()
    } else if origin.ends_with(catalog::MANIFEST) {
        "manifest".into()
    } else {
        origin.into()
    }
}

pub fn list(a: &ImagesListArgs) -> Result<()> {
    let art = a.catalog.artifacts_dir();
    let cat = load(&a.catalog)?;
    println!("artifacts: {}", art.display());
    if cat.iter().next().is_none() {
        println!(
            "no images in the catalog: build one (`builder images build`) or name a catalog file with --catalog"
        );
        return Ok(());
    }
    let rows: Vec<[String; 6]> = cat
        .iter()
        .map(|l| {
            let e = &l.entry;
            let status = match fetch::status(e, &art, a.verify) {
                Status::Missing => "missing".to_string(),
                Status::Partial { bytes } => {
                    format!("partial {}%", bytes.saturating_mul(100) / e.size.max(1))
                }
                Status::Recorded => "ok".into(),
                Status::Verified => "verified".into(),
                Status::Stale { reason } => format!("STALE: {reason}"),
            };
            [
                e.name.clone(),
                e.kind.as_str().into(),
                HumanBytes(e.size).to_string(),
                status,
                origin_label(&l.origin),
                e.source.to_string(),
            ]
        })
        .collect();
    let head = ["NAME", "KIND", "SIZE", "STATUS", "FROM", "SOURCE"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head);
    for r in &rows {
        line(r.each_ref().map(String::as_str));
    }
    if !a.verify {
        println!(
            "(ok: size and recorded .sha256 match the catalog; `--verify` re-hashes the files)"
        );
    }
    Ok(())
}

pub fn fetch(a: &ImagesFetchArgs) -> Result<()> {
    let art = a.catalog.artifacts_dir();
    let cat = load(&a.catalog)?;
    let entry = cat.get(&a.name).ok_or_else(|| {
        let names = cat.names();
        anyhow!(
            "no image `{}` in the catalog ({})",
            a.name,
            if names.is_empty() {
                "it is empty; see `builder images list`".to_string()
            } else {
                format!("known: {}", names.join(", "))
            }
        )
    })?;
    eprintln!(
        "fetching {} ({}) from {} into {}",
        entry.name,
        HumanBytes(entry.size),
        entry.source,
        entry.path_in(&art).display()
    );
    // Hidden when stderr is not a terminal (logs, CI); the start and end lines still print.
    let pb = ProgressBar::with_draw_target(Some(entry.size), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let opts = fetch::Options {
        force: a.force,
        ..fetch::Options::default()
    };
    let r = fetch::fetch(entry, &art, &opts, &mut |ev| match ev {
        Event::Checking { path } => {
            pb.suspend(|| eprintln!("checking the cached copy {}", path.display()))
        }
        Event::Start { resume_from, total } => {
            if resume_from > 0 {
                pb.suspend(|| {
                    eprintln!(
                        "resuming at {} of {}",
                        HumanBytes(resume_from),
                        HumanBytes(total)
                    )
                });
            }
            pb.set_position(resume_from);
            // The rate and ETA count this run's bytes, not the kept ones.
            pb.reset_eta();
            // Ticking only from here: no empty bar while a cached copy is being hashed.
            pb.enable_steady_tick(Duration::from_millis(250));
        }
        Event::Progress { done } => pb.set_position(done),
        Event::Retry {
            attempt,
            attempts,
            error,
            delay,
        } => pb.suspend(|| eprintln!("{error}; attempt {attempt} of {attempts} in {delay:.0?}")),
        Event::Restart { reason } => pb.suspend(|| eprintln!("{reason}")),
    });
    pb.finish_and_clear();
    match r.with_context(|| format!("fetching {}", entry.name))? {
        Outcome::AlreadyPresent { path } => {
            println!(
                "{}: already present and verified at {} (--force fetches it again)",
                entry.name,
                path.display()
            );
        }
        Outcome::Fetched {
            path,
            resumed_from,
            transferred,
        } => {
            let resumed = if resumed_from > 0 {
                format!(", resumed at {}", HumanBytes(resumed_from))
            } else {
                String::new()
            };
            println!(
                "{}: fetched and verified (sha256 {}, {} transferred{resumed}) → {}",
                entry.name,
                entry.sha256,
                HumanBytes(transferred),
                path.display()
            );
        }
    }
    Ok(())
}
