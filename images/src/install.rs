//! The installer's work, with the machine behind a trait so tests can use a regular file as the
//! disk: fetch the plan, pick the install disk (never a data disk, never a mounted one), stream
//! the verified image onto it (first MiB last), drop the node's seed into the image's `cidata`
//! partition, and report every step to the appliance. On failure the disk is left unbootable
//! and `failed` is reported with the reason.
//!
//! Offline (an installer stick from `builder usb image`, `ironseed.offline=1`): the same steps,
//! with the plan and seed read from the stick's ESP (FAT, read in place with `fatfs`, nothing
//! mounted) and the image streamed from the stick's `ironseed-image` partition. The stick is
//! never an install candidate, whatever the profile's selector says.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bundle::InstallEvent;

use crate::cidata;
use crate::disk::{self, Disk, SelectError};
use crate::gpt;
use crate::http::{self, HttpError};
use crate::plan::{self, InstallPlan};
use crate::write::{self, Compression, ImageSpec, WriteError};

/// What the installer needs from the machine it runs on.
pub trait Machine {
    fn disks(&self) -> io::Result<Vec<Disk>>;
    /// Open the chosen disk for writing (exclusively, for a block device).
    fn open(&self, disk: &Disk) -> io::Result<File>;
    /// The kernel log so far (messages, one a line), for its firmware load failures.
    fn kernel_log(&self) -> String {
        String::new()
    }

    /// UEFI Secure Boot state, reported with `installing`; `None`: BIOS or unknown.
    fn secure_boot(&self) -> Option<bool> {
        None
    }
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
    #[error(
        "no installer stick: no disk has a GPT partition named {}",
        plan::IMAGE_PARTITION
    )]
    NoStick,
    #[error("{} disks have a partition named {}: {}; unplug all sticks but one", .0.len(), plan::IMAGE_PARTITION, .0.join(", "))]
    SeveralSticks(Vec<String>),
    #[error("reading the installer stick {0}: {1}")]
    Stick(String, String),
}

pub struct Installed {
    pub disk: String,
    pub written: u64,
    pub sha256: String,
}

fn post_event(url: &str, ev: &InstallEvent) -> Result<u16, HttpError> {
    http::post_json(url, &serde_json::to_value(ev).expect("events serialise"))
}

fn report(plan: &InstallPlan, ev: InstallEvent, log: &mut dyn FnMut(&str)) {
    if plan.report.is_empty() {
        return; // offline: no appliance, the console is the report
    }
    // Best effort: losing the appliance must not stop an install that can finish.
    match post_event(&plan.report, &ev) {
        Ok(200) => {}
        Ok(s) => log(&format!("report {ev:?}: HTTP {s}")),
        Err(e) => log(&format!("report {ev:?}: {e}")),
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
    let r = install(&plan, machine, log);
    finish(&plan, r, log)
}

/// Install from the installer stick this machine booted: find it, read its plan, install.
/// `wait` is how long to wait for the stick to appear (USB disks show up seconds after their
/// controller's driver loaded).
pub fn run_offline(
    machine: &dyn Machine,
    wait: Duration,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    let until = Instant::now() + wait;
    let stick = loop {
        match find_stick(machine) {
            Err(InstallError::NoStick) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(500))
            }
            r => break r?,
        }
    };
    log(&format!("ironseed: installer stick {}", stick.disk.path));
    let plan = stick.plan()?;
    log(&format!(
        "ironseed: installing {} ({}) offline",
        plan.hostname, plan.role
    ));
    let r = install_from(&plan, machine, &Media::Stick(&stick), log);
    finish(&plan, r, log)
}

fn finish(
    plan: &InstallPlan,
    r: Result<Installed, InstallError>,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    match r {
        Ok(done) => {
            report(
                plan,
                InstallEvent::Installed {
                    sha256: done.sha256.clone(),
                },
                log,
            );
            log(&format!(
                "ironseed: installed {} on {} ({} bytes, sha256 {})",
                plan.hostname, done.disk, done.written, done.sha256
            ));
            Ok(done)
        }
        Err(e) => {
            report(
                plan,
                InstallEvent::Failed {
                    reason: e.to_string(),
                },
                log,
            );
            log(&format!("ironseed: FAILED: {e}"));
            Err(e)
        }
    }
}

/// An offline installer stick: the disk, its ESP and its image partition.
pub struct Stick {
    pub disk: Disk,
    esp: gpt::Partition,
    image: gpt::Partition,
}

/// A window of a file (a partition of a disk), read-only: what `fatfs` reads the stick's ESP
/// through without mounting it.
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let k = self.file.read(&mut buf[..n])?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if p < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

impl Write for Window {
    /// The stick is only read: fatfs never needs to write to list and read files.
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the installer stick is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stick {
    fn err(&self, what: impl std::fmt::Display) -> InstallError {
        InstallError::Stick(self.disk.path.clone(), what.to_string())
    }

    fn open_part(&self, p: &gpt::Partition) -> Result<Window, InstallError> {
        let file = File::open(&self.disk.path).map_err(|e| self.err(e))?;
        Ok(Window {
            file,
            start: p.first_byte,
            len: p.len,
            pos: 0,
        })
    }

    /// A file under the ESP's `ironseed/` folder.
    pub fn read_file(&self, name: &str) -> Result<Vec<u8>, InstallError> {
        let w = self.open_part(&self.esp)?;
        let fs = fatfs::FileSystem::new(w, fatfs::FsOptions::new())
            .map_err(|e| self.err(format!("its ESP is not a FAT filesystem: {e}")))?;
        let path = format!("{}/{name}", plan::STICK_DIR);
        let mut f = fs
            .root_dir()
            .open_file(&path)
            .map_err(|e| self.err(format!("{path}: {e}")))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| self.err(format!("{path}: {e}")))?;
        Ok(out)
    }

    pub fn plan(&self) -> Result<InstallPlan, InstallError> {
        serde_json::from_slice(&self.read_file("plan.json")?).map_err(InstallError::PlanJson)
    }

    /// The image partition as a stream of exactly `len` bytes (the partition is rounded up).
    fn image(&self, len: u64) -> Result<io::Take<Window>, InstallError> {
        if len > self.image.len {
            return Err(self.err(format!(
                "the plan says the image is {len} bytes, its partition holds {}",
                self.image.len
            )));
        }
        Ok(self.open_part(&self.image)?.take(len))
    }
}

/// The one disk whose GPT has a partition named `ironseed-image` (and an `ironseed-esp`).
pub fn find_stick(machine: &dyn Machine) -> Result<Stick, InstallError> {
    let disks = machine.disks().map_err(InstallError::Disks)?;
    let mut found = Vec::new();
    for d in disks {
        let Ok(mut f) = File::open(&d.path) else {
            continue;
        };
        let Ok(parts) = gpt::partitions(&mut f) else {
            continue;
        };
        let by = |n: &str| parts.iter().find(|p| p.name == n).cloned();
        if let (Some(image), Some(esp)) = (by(plan::IMAGE_PARTITION), by(plan::ESP_PARTITION)) {
            found.push(Stick {
                disk: d,
                esp,
                image,
            });
        }
    }
    match found.len() {
        0 => Err(InstallError::NoStick),
        1 => Ok(found.pop().unwrap()),
        _ => Err(InstallError::SeveralSticks(
            found.into_iter().map(|s| s.disk.path).collect(),
        )),
    }
}

/// Where the image and the seed come from.
enum Media<'a> {
    /// The appliance, by the plan's URLs.
    Network,
    /// The stick this installer booted from.
    Stick(&'a Stick),
}

/// The node's NoCloud seed files.
struct Seed {
    user_data: Vec<u8>,
    meta_data: Vec<u8>,
    network_config: Vec<u8>,
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

/// Install from the network (the plan's URLs); the caller reports the outcome.
pub fn install(
    plan: &InstallPlan,
    machine: &dyn Machine,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    install_from(plan, machine, &Media::Network, log)
}

fn install_from(
    plan: &InstallPlan,
    machine: &dyn Machine,
    media: &Media,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, InstallError> {
    let mut disks = machine.disks().map_err(InstallError::Disks)?;
    if let Media::Stick(s) = media {
        // The stick is never a target: a broad selector (`min_size_gb: 0`) matches it too.
        disks.retain(|d| d.path != s.disk.path);
    }
    for d in disks.iter().filter(|d| d.model_note.is_some()) {
        log(&format!(
            "ironseed: {} model {}: {}",
            d.path,
            d.model.as_deref().unwrap_or("-"),
            d.model_note.as_deref().unwrap_or_default()
        ));
    }
    let target = disk::select(&disks, &plan.install_disk, &plan.data_selectors())?.clone();
    log(&format!("ironseed: install disk {}", target.path));
    let sha = plan
        .image
        .sha256
        .clone()
        .ok_or_else(|| InstallError::NoChecksum(plan.image.name.clone()))?;
    // Offline, the seed is read before the disk is touched; the network path keeps its order
    // (the seed URLs are fetched after the image, as before).
    let mut seed = match media {
        Media::Network => None,
        Media::Stick(s) => Some(Seed {
            user_data: s.read_file("user-data")?,
            meta_data: s.read_file("meta-data")?,
            network_config: s.read_file("network-config")?,
        }),
    };
    let (src, total): (Box<dyn Read>, u64) = match media {
        Media::Network => {
            let resp = http::get(&plan.image.url, None, &[200]).map_err(InstallError::Download)?;
            let total = resp.content_length.unwrap_or(0);
            (Box::new(resp), total)
        }
        Media::Stick(s) => {
            let len = plan.image.size.ok_or_else(|| {
                s.err("its plan.json names no image size (made by an older builder?)")
            })?;
            (Box::new(s.image(len)?), len)
        }
    };
    report(
        plan,
        InstallEvent::Installing {
            disk: target.path.clone(),
            total,
            secure_boot: machine.secure_boot(),
        },
        log,
    );
    // A missing firmware blob leaves a NIC or controller silently dead: say so in the node's
    // timeline (`pxe status`), not only on a console nobody watches.
    for f in crate::bundle::firmware_failures(&machine.kernel_log()) {
        log(&format!("ironseed: {f}"));
        report(
            plan,
            InstallEvent::Note {
                kind: "firmware".into(),
                detail: f,
            },
            log,
        );
    }
    let mut dev = machine
        .open(&target)
        .map_err(|e| InstallError::Open(target.path.clone(), e))?;
    let read = Arc::new(AtomicU64::new(0));
    let src = Counting {
        inner: src,
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
    let offline = plan.report.is_empty();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut progress = |_: u64| {
        if offline {
            // No appliance to show a bar: a line on the console every 10 s.
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                log(&format!(
                    "ironseed: progress {} / {} MiB read ({:.0} s)",
                    read.load(Ordering::Relaxed) >> 20,
                    total >> 20,
                    started.elapsed().as_secs_f64()
                ));
            }
        } else if last.elapsed() >= Duration::from_secs(1) {
            // Bytes of the image file received, against its Content-Length: what `pxe status`
            // shows.
            last = Instant::now();
            let _ = post_event(
                &plan.report,
                &InstallEvent::Progress {
                    written: read.load(Ordering::Relaxed),
                    total,
                },
            );
        }
    };
    let done = write::write_image(src, &mut dev, &spec, &mut progress)?;
    let seed = match seed.take() {
        Some(s) => Ok(s),
        None => fetch_seed(plan),
    };
    if let Err(e) = seed.and_then(|s| place_seed(plan, &s, &mut dev)) {
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

fn fetch_seed(plan: &InstallPlan) -> Result<Seed, InstallError> {
    let fetch = |u: &str| http::get_bytes(u).map_err(InstallError::Seed);
    Ok(Seed {
        user_data: fetch(&plan.seed.user_data)?,
        meta_data: fetch(&plan.seed.meta_data)?,
        network_config: fetch(&plan.seed.network_config)?,
    })
}

/// Write the node's NoCloud seed (user-data, meta-data and network-config: cloud-init 22.4 never
/// fetches network-config from an HTTP seed) into the image's `cidata` partition.
fn place_seed(plan: &InstallPlan, seed: &Seed, dev: &mut File) -> Result<(), InstallError> {
    let (ud, md, nc) = (&seed.user_data, &seed.meta_data, &seed.network_config);
    let parts = gpt::partitions(dev).map_err(|e| InstallError::SeedPlace(e.to_string()))?;
    let slot = parts
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("cidata"))
        .ok_or_else(|| InstallError::SeedPlace("the image has no partition named cidata".into()))?;
    let size = (slot.len as usize).min(cidata::DEFAULT_SIZE);
    let vol = cidata::build(
        &[("user-data", ud), ("meta-data", md), ("network-config", nc)],
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
