//! The installer's work, with the machine behind a trait so tests can use a regular file as the
//! disk: fetch the plan, pick the install disk (never a data disk, never a mounted one), stream
//! the verified image onto it (first MiB last), drop the node's seed into the image's `cidata`
//! partition, and report every step to the appliance. On failure the disk is left unbootable
//! and `failed` is reported with the reason.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cidata;
use crate::disk::{self, Disk, SelectError};
use crate::gpt;
use crate::http::{self, HttpError};
use crate::plan::InstallPlan;
use crate::write::{self, Compression, ImageSpec, WriteError};

/// What the installer needs from the machine it runs on.
pub trait Machine {
    fn disks(&self) -> io::Result<Vec<Disk>>;
    /// Open the chosen disk for writing (exclusively, for a block device).
    fn open(&self, disk: &Disk) -> io::Result<File>;
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("fetching the plan: {0}")]
    Plan(HttpError),
    #[error("the plan is not valid: {0}")]
    PlanJson(serde_json::Error),
    #[error("listing disks: {0}")]
    Disks(io::Error),
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error("opening {0}: {1}")]
    Open(String, io::Error),
    #[error("the plan names no sha256 for image {0}: refusing to write an unverifiable image")]
    NoChecksum(String),
    #[error("downloading the image: {0}")]
    Download(HttpError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("fetching the seed: {0}")]
    Seed(HttpError),
    #[error("placing the seed: {0}")]
    SeedPlace(String),
    #[error("growing the root partition to the disk: {0}")]
    Grow(io::Error),
}

pub struct Installed {
    pub disk: String,
    pub written: u64,
    pub sha256: String,
}

fn report(plan: &InstallPlan, ev: serde_json::Value, log: &mut dyn FnMut(&str)) {
    // Best effort: losing the appliance must not stop an install that can finish.
    match http::post_json(&plan.report, &ev) {
        Ok(200) => {}
        Ok(s) => log(&format!("report {ev}: HTTP {s}")),
        Err(e) => log(&format!("report {ev}: {e}")),
    }
}

/// Fetch the plan and install; report `installed` or `failed`.
pub fn run(
    plan_url: &str,
    machine: &dyn Machine,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    let bytes = http::get_bytes(plan_url).map_err(InstallError::Plan)?;
    let plan: InstallPlan = serde_json::from_slice(&bytes).map_err(InstallError::PlanJson)?;
    log(&format!(
        "ironseed: installing {} ({})",
        plan.hostname, plan.role
    ));
    match install(&plan, machine, log) {
        Ok(done) => {
            report(
                &plan,
                json!({"event": "installed", "sha256": done.sha256}),
                log,
            );
            log(&format!(
                "ironseed: installed {} on {} ({} bytes)",
                plan.hostname, done.disk, done.written
            ));
            Ok(done)
        }
        Err(e) => {
            report(
                &plan,
                json!({"event": "failed", "reason": e.to_string()}),
                log,
            );
            log(&format!("ironseed: FAILED: {e}"));
            Err(e)
        }
    }
}

struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

pub fn install(
    plan: &InstallPlan,
    machine: &dyn Machine,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    let disks = machine.disks().map_err(InstallError::Disks)?;
    let target = disk::select(&disks, &plan.install_disk, &plan.data_selectors())?.clone();
    log(&format!("ironseed: install disk {}", target.path));
    let sha = plan
        .image
        .sha256
        .clone()
        .ok_or_else(|| InstallError::NoChecksum(plan.image.name.clone()))?;
    let resp = http::get(&plan.image.url, None, &[200]).map_err(InstallError::Download)?;
    let total = resp.content_length.unwrap_or(0);
    report(
        plan,
        json!({"event": "installing", "disk": target.path, "total": total}),
        log,
    );
    let mut dev = machine
        .open(&target)
        .map_err(|e| InstallError::Open(target.path.clone(), e))?;
    let read = Arc::new(AtomicU64::new(0));
    let src = Counting {
        inner: resp,
        n: read.clone(),
    };
    let spec = ImageSpec {
        sha256: sha,
        compression: if plan.image.url.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        },
        target_is_zeroed: false,
    };
    let mut last = Instant::now();
    let mut progress = |_: u64| {
        // Bytes of the image file received, against its Content-Length: what `pxe status` shows.
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let _ = http::post_json(
                &plan.report,
                &json!({"event": "progress", "written": read.load(Ordering::Relaxed), "total": total}),
            );
        }
    };
    let done = write::write_image(src, &mut dev, &spec, &mut progress)?;
    if let Err(e) = place_seed(plan, &mut dev) {
        // No seed, no identity: the node must not boot as some other machine.
        let _ = write::wipe_head(&mut dev);
        return Err(e);
    }
    // The golden image is kept small (a raw image's empty space costs transfer and write time);
    // its root partition is last, so it takes the rest of the disk here and cloud-init's
    // resizefs grows the filesystem on first boot.
    let grow = dev
        .seek(SeekFrom::End(0))
        .and_then(|len| gpt::grow_last_partition(&mut dev, len))
        .and_then(|g| dev.sync_all().map(|_| g));
    match grow {
        Ok(Some(g)) => log(&format!(
            "ironseed: partition {} grown from {} to {} bytes",
            g.index, g.old_len, g.new_len
        )),
        Ok(None) => {}
        Err(e) => {
            let _ = write::wipe_head(&mut dev);
            return Err(InstallError::Grow(e));
        }
    }
    Ok(Installed {
        disk: target.path,
        written: done.written,
        sha256: done.sha256,
    })
}

/// Write the node's NoCloud seed (user-data, meta-data and network-config: cloud-init 22.4 never
/// fetches network-config from an HTTP seed) into the image's `cidata` partition.
fn place_seed(plan: &InstallPlan, dev: &mut File) -> Result<(), InstallError> {
    let fetch = |u: &str| http::get_bytes(u).map_err(InstallError::Seed);
    let (ud, md, nc) = (
        fetch(&plan.seed.user_data)?,
        fetch(&plan.seed.meta_data)?,
        fetch(&plan.seed.network_config)?,
    );
    let parts = gpt::partitions(dev).map_err(|e| InstallError::SeedPlace(e.to_string()))?;
    let slot = parts
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("cidata"))
        .ok_or_else(|| InstallError::SeedPlace("the image has no partition named cidata".into()))?;
    let size = (slot.len as usize).min(cidata::DEFAULT_SIZE);
    let vol = cidata::build(
        &[
            ("user-data", &ud),
            ("meta-data", &md),
            ("network-config", &nc),
        ],
        cidata::volume_id_for(&plan.hostname),
        size,
    )
    .map_err(|e| InstallError::SeedPlace(e.to_string()))?;
    let io = |e: io::Error| InstallError::SeedPlace(e.to_string());
    dev.seek(SeekFrom::Start(slot.first_byte)).map_err(io)?;
    dev.write_all(&vol).map_err(io)?;
    dev.sync_all().map_err(io)?;
    Ok(())
}
