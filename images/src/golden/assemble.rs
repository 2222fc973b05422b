//! Assembly shared by the golden image and the offline stick: the ESP built as a file
//! (`mkfs.vfat`, `syslinux --install`, `mmd`, `mcopy`: no root, no loop devices, no mounts) and
//! the hybrid GPT disk around it (`sfdisk` on the image file, partitions copied in sparsely,
//! syslinux's `gptmbr.bin` in the MBR). The partition tables themselves are [`super::layout`]'s.
//!
//! What goes on the ESP is computed by the pure [`esp_steps`] (the text files and the exact
//! command lines), so a test can pin both images' ESPs without the tools.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::layout::{self, MIB, SECTOR};

pub const SYSLINUX_MBR: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// Debian's Secure Boot chain (packages shim-signed, grub-efi-amd64-signed), relative to a root:
/// `/` for the stick (the build host's), the debootstrapped tree for the golden image (the
/// very packages the node then upgrades). Shim, started as the removable-path
/// EFI/BOOT/BOOTX64.EFI, loads `grubx64.efi` from its own folder (its DEFAULT_LOADER) — and
/// would start the fallback `fbx64.efi` instead if it were there, which is why it is not.
pub const SHIM: &str = "usr/lib/shim/shimx64.efi.signed";
pub const GRUB: &str = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";
/// Shim starts MokManager when a MOK change is pending (`mokutil --import`).
pub const MOK_MANAGER: &str = "usr/lib/shim/mmx64.efi.signed";

/// Timestamps of what syslinux (through mtools), mmd and mcopy write: 1980-01-01, the FAT epoch
/// (mtools honours SOURCE_DATE_EPOCH), so the same inputs give the same ESP byte for byte.
pub const EPOCH: &str = "315532800";

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Tool, exit status, its stderr.
    #[error("{0} failed ({1}): {2}")]
    Tool(String, String, String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

fn io_ctx(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> AssembleError {
    let ctx = ctx.into();
    move |e| AssembleError::Io(ctx, e)
}

/// One ESP: FAT32 with syslinux (BIOS) booting `kernel` + `initrd` with `cmdline`, shim + GRUB
/// (UEFI, Secure Boot or not) reading `grub_cfg`, plus `extra` files in the folder `extra_dir`.
pub struct EspSpec<'a> {
    pub label: &'a str,
    /// FAT volume serial (8 hex digits).
    pub serial: &'a str,
    /// Where the partition starts on the disk: the FAT's hidden sectors.
    pub start: u64,
    pub len: u64,
    /// Fixed timestamps (SOURCE_DATE_EPOCH, `mkfs.vfat --invariant`): the same inputs give the
    /// same bytes.
    pub reproducible: bool,
    pub cmdline: &'a str,
    /// Where [`SHIM`], [`GRUB`] and [`MOK_MANAGER`] are.
    pub loaders: &'a Path,
    /// The signed GRUB's configuration, [`layout::GRUB_ESP_CFG`].
    pub grub_cfg: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub extra_dir: Option<&'a str>,
    /// `(name, content)` copied into `extra_dir`.
    pub extra: &'a [(&'a str, &'a [u8])],
}

/// What [`build_esp`] does: text files to write, then commands to run in order.
pub struct EspSteps {
    pub texts: Vec<(PathBuf, Vec<u8>)>,
    pub commands: Vec<Command>,
}

/// The ESP of `spec` as the file `esp`, with its text files written under `files`.
pub fn esp_steps(spec: &EspSpec, esp: &Path, files: &Path) -> EspSteps {
    let tool = |name: &str| {
        let mut c = Command::new(name);
        if spec.reproducible {
            c.env("SOURCE_DATE_EPOCH", EPOCH);
        }
        c
    };
    let mut mkfs = tool("mkfs.vfat");
    mkfs.args(["-F", "32", "-n", spec.label, "-i", spec.serial]);
    if spec.reproducible {
        // Fixed times for what mkfs writes (the volume label entry); -i still sets the serial.
        mkfs.arg("--invariant");
    }
    // Hidden sectors = the partition's start, so the FAT boot sector (syslinux's VBR) finds
    // itself when gptmbr.bin chains into it.
    mkfs.args(["-h", &(spec.start / SECTOR).to_string(), "-C"])
        .arg(esp)
        .arg((spec.len / 1024).to_string());
    let mut syslinux = tool("syslinux");
    syslinux.arg("--install").arg(esp);

    let mut texts = Vec::new();
    let mut text = |n: &str, c: &[u8]| {
        let p = files.join(n);
        texts.push((p.clone(), c.to_vec()));
        p
    };
    let mut put: Vec<(PathBuf, String)> = vec![
        (spec.kernel.to_path_buf(), "vmlinuz".into()),
        (spec.initrd.to_path_buf(), "initrd.img".into()),
        (
            text(
                "syslinux.cfg",
                layout::syslinux_cfg(spec.cmdline).as_bytes(),
            ),
            "syslinux.cfg".into(),
        ),
        (spec.loaders.join(SHIM), "EFI/BOOT/BOOTX64.EFI".into()),
        (spec.loaders.join(GRUB), "EFI/BOOT/grubx64.efi".into()),
        (spec.loaders.join(MOK_MANAGER), "EFI/BOOT/mmx64.efi".into()),
        (
            text("grub.cfg", spec.grub_cfg.as_bytes()),
            layout::GRUB_ESP_CFG.into(),
        ),
    ];
    if let Some(dir) = spec.extra_dir {
        for (name, bytes) in spec.extra {
            put.push((text(name, bytes), format!("{dir}/{name}")));
        }
    }
    let mut mmd = tool("mmd");
    mmd.arg("-i")
        .arg(esp)
        .args(["::/EFI", "::/EFI/BOOT", "::/EFI/debian"]);
    if let Some(dir) = spec.extra_dir {
        mmd.arg(format!("::/{dir}"));
    }
    let mut commands = vec![mkfs, syslinux, mmd];
    for (src, dst) in put {
        let mut c = tool("mcopy");
        c.args(["-o", "-i"])
            .arg(esp)
            .arg(src)
            .arg(format!("::/{dst}"));
        commands.push(c);
    }
    EspSteps { texts, commands }
}

/// Build the ESP of `spec` as the file `work/esp.img` (text files in `work/esp-files`), running
/// each tool through `run`. Returns the ESP's path.
pub fn build_esp<E: From<AssembleError>>(
    spec: &EspSpec,
    work: &Path,
    run: &mut dyn FnMut(&mut Command) -> Result<(), E>,
) -> Result<PathBuf, E> {
    let esp = work.join("esp.img");
    let files = work.join("esp-files");
    let _ = fs::remove_file(&esp);
    fs::create_dir_all(&files).map_err(io_ctx(format!("creating {}", files.display())))?;
    let steps = esp_steps(spec, &esp, &files);
    for (p, c) in &steps.texts {
        fs::write(p, c).map_err(io_ctx(format!("writing {}", p.display())))?;
    }
    for mut c in steps.commands {
        run(&mut c)?;
    }
    Ok(esp)
}

/// Write a GPT from `script` (`sfdisk` script format) onto the image file `disk`.
pub fn partition(disk: &Path, script: &str) -> Result<(), AssembleError> {
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_ctx("starting sfdisk"))?;
    sf.stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(io_ctx("feeding sfdisk"))?;
    let o = sf
        .wait_with_output()
        .map_err(io_ctx("waiting for sfdisk"))?;
    if !o.status.success() {
        return Err(AssembleError::Tool(
            "sfdisk".into(),
            o.status.to_string(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// BIOS: syslinux's gptmbr.bin in the MBR's code area (the partition table starts at byte 446),
/// then the whole image to disk.
pub fn write_boot_code(img: &mut File) -> Result<(), AssembleError> {
    let mbr = fs::read(SYSLINUX_MBR).map_err(io_ctx(format!("reading {SYSLINUX_MBR}")))?;
    img.seek(SeekFrom::Start(0))
        .and_then(|_| img.write_all(&mbr[..mbr.len().min(440)]))
        .and_then(|_| img.sync_all())
        .map_err(io_ctx("writing the boot code"))
}

/// Copy all of `src` into `dst` at `offset`, leaving all-zero MiBs as holes (the image stays
/// sparse on disk: the ESP is mostly empty). Returns the bytes copied.
pub fn copy_into(src: &mut dyn Read, dst: &mut File, offset: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            return Ok(done);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(offset + done))?;
            dst.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(s: &EspSteps) -> Vec<String> {
        s.commands.iter().map(|c| format!("{c:?}")).collect()
    }

    /// The golden image's ESP exactly (the image's cache key hashes the recipe and a version
    /// string, not this code: a change here must come with a new key in `golden::input_key`).
    /// UEFI: shim as the removable path, the signed GRUB beside it, its grub.cfg at the prefix
    /// baked into it; no fallback (fbx64.efi), which would make shim write NVRAM entries.
    #[test]
    fn the_golden_esp_is_built_exactly() {
        let cmdline = layout::kernel_cmdline(&layout::IDS, &[]);
        let spec = EspSpec {
            label: "ESP",
            serial: layout::IDS.esp_serial,
            start: layout::layout(128 * MIB, 10 * MIB).esp_start,
            len: 128 * MIB,
            reproducible: false,
            cmdline: &cmdline,
            loaders: Path::new("/w/root"),
            grub_cfg: "chain\n",
            kernel: Path::new("/w/root/boot/vmlinuz-6.1"),
            initrd: Path::new("/w/root/boot/initrd.img-6.1"),
            extra_dir: None,
            extra: &[],
        };
        let s = esp_steps(&spec, Path::new("/w/esp.img"), Path::new("/w/esp-files"));
        let want = [
            r#""mkfs.vfat" "-F" "32" "-n" "ESP" "-i" "1E5EED01" "-h" "2048" "-C" "/w/esp.img" "131072""#,
            r#""syslinux" "--install" "/w/esp.img""#,
            r#""mmd" "-i" "/w/esp.img" "::/EFI" "::/EFI/BOOT" "::/EFI/debian""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/root/boot/vmlinuz-6.1" "::/vmlinuz""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/root/boot/initrd.img-6.1" "::/initrd.img""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/syslinux.cfg" "::/syslinux.cfg""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/root/usr/lib/shim/shimx64.efi.signed" "::/EFI/BOOT/BOOTX64.EFI""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/root/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "::/EFI/BOOT/grubx64.efi""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/root/usr/lib/shim/mmx64.efi.signed" "::/EFI/BOOT/mmx64.efi""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/grub.cfg" "::/EFI/debian/grub.cfg""#,
        ];
        assert_eq!(shown(&s), want);
        let texts: Vec<(String, Vec<u8>)> = s
            .texts
            .iter()
            .map(|(p, c)| (p.display().to_string(), c.clone()))
            .collect();
        assert_eq!(
            texts,
            [
                (
                    "/w/esp-files/syslinux.cfg".to_string(),
                    layout::syslinux_cfg(&cmdline).into_bytes()
                ),
                ("/w/esp-files/grub.cfg".to_string(), b"chain\n".to_vec()),
            ]
        );
    }

    /// The stick's ESP: fixed times (the same node gives the same stick byte for byte), the
    /// build host's shim and GRUB, the plan and seed in their folder.
    #[test]
    fn the_stick_esp_is_built_exactly() {
        let spec = EspSpec {
            label: "IRONSEED",
            serial: "0A0B0C0D",
            start: MIB,
            len: 160 * MIB,
            reproducible: true,
            cmdline: "console=ttyS0",
            loaders: Path::new("/"),
            grub_cfg: "menu\n",
            kernel: Path::new("/k/vmlinuz"),
            initrd: Path::new("/k/initrd.img"),
            extra_dir: Some("ironseed"),
            extra: &[("plan.json", b"{}\n"), ("user-data", b"#cloud-config\n")],
        };
        let s = esp_steps(&spec, Path::new("/w/esp.img"), Path::new("/w/esp-files"));
        let e = r#"SOURCE_DATE_EPOCH="315532800" "#;
        let want: Vec<String> = [
            r#""mkfs.vfat" "-F" "32" "-n" "IRONSEED" "-i" "0A0B0C0D" "--invariant" "-h" "2048" "-C" "/w/esp.img" "163840""#,
            r#""syslinux" "--install" "/w/esp.img""#,
            r#""mmd" "-i" "/w/esp.img" "::/EFI" "::/EFI/BOOT" "::/EFI/debian" "::/ironseed""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/k/vmlinuz" "::/vmlinuz""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/k/initrd.img" "::/initrd.img""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/syslinux.cfg" "::/syslinux.cfg""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/usr/lib/shim/shimx64.efi.signed" "::/EFI/BOOT/BOOTX64.EFI""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "::/EFI/BOOT/grubx64.efi""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/usr/lib/shim/mmx64.efi.signed" "::/EFI/BOOT/mmx64.efi""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/grub.cfg" "::/EFI/debian/grub.cfg""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/plan.json" "::/ironseed/plan.json""#,
            r#""mcopy" "-o" "-i" "/w/esp.img" "/w/esp-files/user-data" "::/ironseed/user-data""#,
        ]
        .iter()
        .map(|c| format!("{e}{c}"))
        .collect();
        assert_eq!(shown(&s), want);
        let names: Vec<String> = s
            .texts
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "/w/esp-files/syslinux.cfg",
                "/w/esp-files/grub.cfg",
                "/w/esp-files/plan.json",
                "/w/esp-files/user-data"
            ]
        );
        assert_eq!(s.texts[1].1, b"menu\n");
        assert_eq!(s.texts[2].1, b"{}\n");
    }

    /// Holes for all-zero MiBs, data where it belongs, the full length counted.
    #[test]
    fn copy_into_leaves_zero_mibs_as_holes_and_counts_every_byte() {
        let dir = std::env::temp_dir().join(format!("ironseed-assemble-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("img");
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut src = vec![0u8; 2 * MIB as usize + 3];
        src[MIB as usize + 7] = 9;
        src[2 * MIB as usize + 2] = 1;
        let n = copy_into(&mut &src[..], &mut f, MIB).unwrap();
        assert_eq!(n, src.len() as u64);
        let got = fs::read(&p).unwrap();
        assert_eq!(got.len() as u64, MIB + n);
        assert_eq!(&got[MIB as usize..], &src[..]);
        let _ = fs::remove_dir_all(&dir);
    }
}
