//! The offline installer stick (`builder usb image NODE --out FILE`): a hybrid GPT disk image
//! that boots the installer environment in BIOS and UEFI mode and installs one node with no
//! network and no appliance — the rebuild path for when the appliance itself is down.
//!
//! ```text
//! LBA 0        protective MBR + syslinux gptmbr.bin (BIOS: chains the LegacyBIOSBootable ESP)
//! 1 MiB  p1    ironseed-esp, FAT32 labelled IRONSEED: the installer's vmlinuz + initrd.img,
//!              syslinux (BIOS), Debian's signed shim as EFI/BOOT/BOOTX64.EFI with the signed
//!              GRUB beside it and its menu in EFI/debian/grub.cfg (UEFI, Secure Boot or not),
//!              and ironseed/{plan.json,user-data,meta-data,network-config}
//!        p2    ironseed-image: the compressed golden image, raw from the partition's first byte
//!              (its length and sha256 are in plan.json; the partition is rounded up to a MiB)
//! ```
//! Built like the golden image's ESP (docs/reference.md "Building disk images without root, loop
//! devices or mounts"): no root, no loop devices, no mounts —
//! `mkfs.vfat` on a file, `syslinux --install`, `mcopy`, `sfdisk` on the image file. Partition
//! GUIDs and the FAT serial are derived from the node's name: the same node gets the same IDs,
//! and two sticks never collide in `/dev/disk/by-partuuid`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::golden::assemble::{self, EspSpec, GRUB, MOK_MANAGER, SHIM, SYSLINUX_MBR, copy_into};
use crate::golden::layout::{self as glayout, MIB, TYPE_ESP, TYPE_LINUX_DATA};
use crate::plan::{self, InstallPlan};

/// The installer's kernel command line on the stick: both consoles (the last `console=` gets
/// /dev/console, where the installer's progress goes), offline mode, then the profile's args.
pub fn kernel_cmdline(profile_args: &[String]) -> String {
    let mut v: Vec<String> = ["console=tty0", "console=ttyS0,115200", "ironseed.offline=1"]
        .map(String::from)
        .to_vec();
    v.extend(profile_args.iter().cloned());
    v.join(" ")
}

/// Identifiers of one node's stick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickIds {
    pub disk_guid: String,
    pub esp_uuid: String,
    pub image_uuid: String,
    /// FAT volume serial (8 hex digits, as mkfs.vfat -i takes it).
    pub esp_serial: String,
}

/// Deterministic IDs for `hostname`'s stick (a UUID-v4-shaped slice of a sha256).
pub fn ids_for(hostname: &str) -> StickIds {
    let h = |what: &str| Sha256::digest(format!("ironseed-stick\0{hostname}\0{what}"));
    let uuid = |what: &str| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&h(what)[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let x: String = b.iter().map(|v| format!("{v:02X}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &x[..8],
            &x[8..12],
            &x[12..16],
            &x[16..20],
            &x[20..]
        )
    };
    StickIds {
        disk_guid: uuid("disk"),
        esp_uuid: uuid("esp"),
        image_uuid: uuid("image"),
        esp_serial: h("serial")[..4]
            .iter()
            .map(|v| format!("{v:02X}"))
            .collect(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickLayout {
    pub esp_start: u64,
    pub esp_len: u64,
    pub image_start: u64,
    /// The partition (the image's length rounded up to a MiB).
    pub image_len: u64,
    /// Partitions plus room for the backup GPT, a whole number of MiB.
    pub total: u64,
}

pub fn layout(esp_len: u64, image_len: u64) -> StickLayout {
    let ([(esp_start, esp_len), (image_start, image_len)], total) =
        glayout::mib_aligned([esp_len, image_len.max(1)]);
    StickLayout {
        esp_start,
        esp_len,
        image_start,
        image_len,
        total,
    }
}

/// The stick's GPT: the ESP, then the image partition.
pub fn sfdisk_script(l: &StickLayout, ids: &StickIds) -> String {
    glayout::gpt_script(
        &ids.disk_guid,
        &[
            (
                (l.esp_start, l.esp_len),
                TYPE_ESP,
                &ids.esp_uuid,
                plan::ESP_PARTITION,
            ),
            (
                (l.image_start, l.image_len),
                TYPE_LINUX_DATA,
                &ids.image_uuid,
                plan::IMAGE_PARTITION,
            ),
        ],
    )
}

/// What goes on one stick.
pub struct StickInputs<'a> {
    /// The node's install plan; `image.size` and `image.sha256` must describe `image_file`.
    pub plan: &'a InstallPlan,
    /// `user-data`, `meta-data`, `network-config`.
    pub seed: [(&'a str, &'a [u8]); 3],
    /// The installer environment (`builder images installer`).
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    /// The compressed golden image, as published (`<artifacts>/images/<name>.raw.zst`).
    pub image_file: &'a Path,
    /// Scratch folder (the ESP is built there as a file).
    pub work: &'a Path,
}

impl From<assemble::AssembleError> for StickError {
    fn from(e: assemble::AssembleError) -> Self {
        match e {
            assemble::AssembleError::Tool(t, s, o) => StickError::Tool(t, s, o),
            assemble::AssembleError::Io(c, e) => StickError::Io(c, e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StickError {
    #[error("missing on this machine: {0} (apt-get install {1})")]
    Missing(String, String),
    #[error("{0} failed ({1}): {2}")]
    Tool(String, String, String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error(
        "{file}: sha256 is {actual}, the plan says {expected}; the image changed or is corrupt"
    )]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("the plan names no sha256 or size for its image")]
    Plan,
}

fn io_ctx(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> StickError {
    let ctx = ctx.into();
    move |e| StickError::Io(ctx, e)
}

const NEEDS: &[(&str, &str)] = &[
    ("mkfs.vfat", "dosfstools"),
    ("sfdisk", "fdisk"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("syslinux", "syslinux"),
];

fn check_host() -> Result<(), StickError> {
    let mut missing: Vec<(String, &str)> = NEEDS
        .iter()
        .filter(|(t, _)| {
            !["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(t).exists())
        })
        .map(|(t, p)| (t.to_string(), *p))
        .collect();
    for (f, pkg) in [
        (SYSLINUX_MBR.to_string(), "syslinux-common"),
        (format!("/{SHIM}"), "shim-signed"),
        (format!("/{MOK_MANAGER}"), "shim-signed"),
        (format!("/{GRUB}"), "grub-efi-amd64-signed"),
    ] {
        if !Path::new(&f).exists() {
            missing.push((f, pkg));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    pkgs.dedup();
    Err(StickError::Missing(
        missing
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        pkgs.join(" "),
    ))
}

fn run(cmd: &mut Command) -> Result<(), StickError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_ctx(format!("starting {shown}")))?;
    if !out.status.success() {
        return Err(StickError::Tool(
            shown,
            out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct StickBuilt {
    pub layout: StickLayout,
    pub ids: StickIds,
    pub cmdline: String,
}

/// Build the stick image into `out` (written beside it, renamed into place, mode 0600: the
/// seed carries the k3s token).
pub fn build(
    i: &StickInputs,
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<StickBuilt, StickError> {
    check_host()?;
    let (Some(sha), Some(image_len)) = (&i.plan.image.sha256, i.plan.image.size) else {
        return Err(StickError::Plan);
    };
    let ids = ids_for(&i.plan.hostname);
    let cmdline = kernel_cmdline(&i.plan.kernel_args);
    let size = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len())
            .map_err(io_ctx(format!("reading {}", p.display())))
    };
    // Room for the kernel, initrd, boot loaders and plan, plus slack; FAT32 wants >= 65525
    // clusters, which 128 MiB gives with mkfs.vfat's defaults.
    let loaders = Path::new("/");
    let mut payload = size(i.vmlinuz)? + size(i.initrd)?;
    for f in [SHIM, GRUB, MOK_MANAGER] {
        payload += size(&loaders.join(f))?;
    }
    let esp_len = (payload + 32 * MIB).max(128 * MIB);
    let l = layout(esp_len, image_len);

    log("ESP: mkfs.vfat, syslinux, shim + GRUB, installer, plan and seed");
    let title = format!("ironseed offline installer for {}", i.plan.hostname);
    // GRUB's root is the ESP it was loaded from: the kernel and initrd syslinux boots too.
    let grub_cfg = glayout::grub_cfg(&title, None, "/vmlinuz", "/initrd.img", &cmdline);
    let mut plan_json = serde_json::to_vec_pretty(i.plan).expect("a plan serialises");
    plan_json.push(b'\n');
    let [s0, s1, s2] = i.seed;
    let esp = assemble::build_esp(
        &EspSpec {
            label: "IRONSEED",
            serial: &ids.esp_serial,
            start: l.esp_start,
            len: l.esp_len,
            reproducible: true,
            cmdline: &cmdline,
            loaders,
            grub_cfg: &grub_cfg,
            kernel: i.vmlinuz,
            initrd: i.initrd,
            extra_dir: Some(plan::STICK_DIR),
            extra: &[("plan.json", &plan_json), s0, s1, s2],
        },
        i.work,
        &mut run,
    )?;

    // The disk image: GPT, ESP, image, boot code.
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stick.img".into());
    let tmp = out.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        {
            // 0600 from creation (the stick carries the node's seed, with the cluster token): a
            // file opened while it was briefly 0644 would stay readable through that descriptor.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = fs::remove_file(&tmp);
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_ctx(format!("creating {}", tmp.display())))?;
            f.set_len(l.total)
                .map_err(io_ctx(format!("sizing {}", tmp.display())))?;
        }
        log("partition table (sfdisk)");
        assemble::partition(&tmp, &sfdisk_script(&l, &ids))?;
        let mut img = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&tmp)
            .map_err(io_ctx(format!("opening {}", tmp.display())))?;
        copy_into(
            &mut File::open(&esp).map_err(io_ctx("opening the ESP"))?,
            &mut img,
            l.esp_start,
        )
        .map_err(io_ctx("writing the ESP"))?;
        log("golden image into the ironseed-image partition (sha256 checked)");
        let src = File::open(i.image_file)
            .map_err(io_ctx(format!("opening {}", i.image_file.display())))?;
        let mut hashing = HashingReader {
            inner: src,
            hash: Sha256::new(),
        };
        let n = copy_into(&mut hashing, &mut img, l.image_start)
            .map_err(io_ctx(format!("copying {}", i.image_file.display())))?;
        let actual = crate::bundle::hex(&hashing.hash.finalize());
        if actual != sha.to_ascii_lowercase() || n != image_len {
            return Err(StickError::Checksum {
                file: i.image_file.display().to_string(),
                expected: format!("{sha} ({image_len} bytes)"),
                actual: format!("{actual} ({n} bytes)"),
            });
        }
        assemble::write_boot_code(&mut img)?;
        fs::rename(&tmp, out).map_err(io_ctx(format!("moving the image to {}", out.display())))
    })();
    let _ = fs::remove_file(&esp);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    Ok(StickBuilt {
        layout: l,
        ids,
        cmdline,
    })
}

struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_mib_aligned_and_the_image_partition_holds_the_image() {
        let l = layout(128 * MIB, 239_275_278);
        assert_eq!(l.esp_start, MIB);
        assert_eq!(l.image_start, 129 * MIB);
        assert!(l.image_len >= 239_275_278 && l.image_len.is_multiple_of(MIB));
        assert_eq!(l.total, l.image_start + l.image_len + MIB);
        let s = sfdisk_script(&l, &ids_for("k3s1"));
        assert!(s.contains("name=\"ironseed-esp\", attrs=\"LegacyBIOSBootable\""));
        assert!(s.contains(&format!(
            "start={}, size={}, type={TYPE_LINUX_DATA}",
            129 * 2048,
            l.image_len / 512
        )));
        assert!(s.contains("name=\"ironseed-image\""));
    }

    #[test]
    fn ids_are_per_node_stable_and_uuid_shaped() {
        let (a, b) = (ids_for("k3s1"), ids_for("k3s2"));
        assert_eq!(a, ids_for("k3s1"));
        assert_ne!(a.disk_guid, b.disk_guid);
        assert_ne!(a.esp_uuid, a.image_uuid);
        assert_eq!(a.disk_guid.len(), 36);
        assert_eq!(&a.disk_guid[14..15], "4");
        assert_eq!(a.esp_serial.len(), 8);
    }

    #[test]
    fn the_installer_boots_offline_with_the_profiles_args() {
        let c = kernel_cmdline(&["nomodeset".into()]);
        assert_eq!(
            c,
            "console=tty0 console=ttyS0,115200 ironseed.offline=1 nomodeset"
        );
        assert_eq!(
            crate::plan::parse_cmdline(&c),
            Some(crate::plan::Cmdline::Offline)
        );
    }
}
