//! The golden node image: Debian bookworm from Debian's archive by debootstrap, made bootable
//! in BIOS and UEFI mode without root-only kernel features (no loop devices, no mounts — this
//! kernel cannot mount vfat, and a build host should not need to), then compressed with its
//! sha256. The recipe: docs/reference.md "Golden image recipe", measured on this kind of machine.
//!
//! UEFI boots through Debian's own signed chain, installed in the image (so the node's upgrades
//! refresh it): shim-signed's shim as EFI/BOOT/BOOTX64.EFI, grub-efi-amd64-signed's GRUB, the
//! signed linux-image-amd64 kernel — Secure Boot on or off (docs/secure-boot.md "Installed OS").
//!
//! Needs root (debootstrap creates device nodes and files owned by other users; `chroot` runs
//! update-initramfs) and Debian's debootstrap, dosfstools, mtools, syslinux, syslinux-common,
//! e2fsprogs and fdisk.
//!
//! Nothing reaches the artifacts folder before the image is complete and hashed: the work
//! happens in a separate folder, the compressed image is written to `images/.partial/` and
//! renamed into place, then its `.sha256` and `.inputs` files.

pub mod assemble;
pub mod layout;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::bundle::hex;
use layout::{IDS, MIB};

/// What a golden image is made of. Every field goes into the cache key.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: &'static str,
    pub suite: &'static str,
    pub description: &'static str,
    /// debootstrap `--include`: beyond minbase.
    pub packages: &'static [&'static str],
    /// From Debian's non-free-firmware component (enabled in the image's sources with them);
    /// left out by `--no-nonfree`.
    pub nonfree_packages: &'static [&'static str],
    /// initramfs-tools `MODULES=list`: a 6 MB initrd boots ~5 s faster than the default 30 MB
    /// one under emulation, and these are all the disks/NICs of the supported hardware.
    pub initramfs_modules: &'static [&'static str],
    /// Files written into the tree (path, mode, content).
    pub files: &'static [(&'static str, u32, &'static str)],
    /// systemd units masked: timers that only cost boot time and disk wear on a k3s node, and
    /// the NFS server with its portmapper, which only the NFS host's first boot unmasks.
    pub masked: &'static [&'static str],
}

const CLOUD_CFG: &str = "\
# ironseed golden image. The seed comes from the CIDATA volume (the image's seed slot or a
# USB stick): probing other datasources only costs boot time.
datasource_list: [NoCloud, None]
# minbase has no locales and no grub: without these cloud-config.service ends 'failed'.
locale: C.UTF-8
grub_dpkg:
  enabled: false
# One host key type: generating every default type costs seconds per boot under emulation.
ssh_genkeytypes: [ed25519]
# The installer grows the root partition to the disk; cloud-init grows the filesystem.
growpart:
  mode: auto
  devices: ['/']
resize_rootfs: true
";

const INTERFACES: &str = "\
# cloud-init writes the node's network (static address from the seed) to interfaces.d.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
";

pub const DEBIAN_12: Recipe = Recipe {
    name: "debian-12",
    suite: "bookworm",
    description: "Debian 12 (bookworm) k3s node: cloud-init (NoCloud), BIOS+UEFI boot, Longhorn/NFS prerequisites",
    packages: &[
        // The signed kernel (linux-image-<abi>-amd64 is built from linux-signed-amd64; the
        // unsigned build is the -unsigned package), and the Secure Boot chain: shim-signed's
        // and grub-efi-amd64's postinst re-run grub-install on upgrades, grub2-common's kernel
        // hook (zz-update-grub) rewrites /boot/grub/grub.cfg on kernel upgrades.
        "linux-image-amd64",
        "grub-efi-amd64",
        "grub-efi-amd64-signed",
        "shim-signed",
        "systemd-sysv",
        "udev",
        "kmod",
        "cloud-init",
        // debootstrap's resolver does not follow Provides: python3-cryptography fails to
        // configure without it (docs/reference.md "Golden image recipe").
        "python3-cffi-backend",
        "cloud-guest-utils",
        "openssh-server",
        "sudo",
        "ifupdown",
        "isc-dhcp-client",
        "iproute2",
        "iptables",
        "ca-certificates",
        "curl",
        // cloud-init's ntp module installs a client when none is present: offline that fails.
        "chrony",
        "zstd",
        "e2fsprogs",
        "xfsprogs",
        // Longhorn: iSCSI initiator and NFSv4 client (RWX volumes); NFS host and clients.
        "open-iscsi",
        "nfs-common",
        // The NFS host's server, in the image because a node has no package mirror to install
        // it from at first boot. Masked below: only the NFS host's first boot unmasks it.
        "nfs-kernel-server",
    ],
    // NIC firmware of the profiles' hardware (docs/hardware.md) and CPU microcode, loaded early
    // by the initramfs hooks these packages install. firmware-misc-nonfree only where a profile
    // asks (the r630's GPU driver_packages).
    nonfree_packages: &[
        "firmware-bnx2x",
        "firmware-realtek",
        "intel-microcode",
        "amd64-microcode",
    ],
    initramfs_modules: &[
        "virtio_pci",
        "virtio_blk",
        "virtio_scsi",
        "sd_mod",
        "ahci",
        "nvme",
        "megaraid_sas",
        "mpt3sas",
        "ext4",
    ],
    files: &[
        ("etc/cloud/cloud.cfg.d/90-ironseed.cfg", 0o644, CLOUD_CFG),
        ("etc/network/interfaces", 0o644, INTERFACES),
        (
            "etc/initramfs-tools/conf.d/ironseed",
            0o644,
            "MODULES=list\n",
        ),
        (
            "etc/default/grub.d/ironseed.cfg",
            0o644,
            layout::GRUB_DEFAULTS,
        ),
        ("etc/hostname", 0o644, "localhost\n"),
        (
            "etc/hosts",
            0o644,
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        ),
    ],
    masked: &[
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
        "man-db.timer",
        // nfs-kernel-server's postinst enables nfs-server.service and nfs-blkmap.service (a
        // pNFS block-layout client daemon nothing here uses); rpcbind's (pulled in by
        // nfs-common) enables rpcbind.service and rpcbind.socket, a portmapper listening on
        // port 111 of every address. A k3s node must not run an NFS server nobody asked for,
        // nor answer RPC queries: its NFS client mounts NFSv4.2 (templates/runbook), which
        // needs no rpcbind. The NFS host's first boot (templates/node/firstboot.sh.j2)
        // unmasks nfs-server and rpcbind; every node's first boot reports their state.
        "nfs-server.service",
        "nfs-blkmap.service",
        "rpcbind.service",
        "rpcbind.socket",
    ],
};

pub fn recipe(name: &str) -> Option<&'static Recipe> {
    [&DEBIAN_12].into_iter().find(|r| r.name == name)
}

pub fn recipes() -> &'static [&'static Recipe] {
    &[&DEBIAN_12]
}

/// An optional k3s air-gap kit baked into the image: the node then installs k3s with no
/// download at all (the first-boot script finds them in place).
#[derive(Debug, Clone, Default)]
pub struct K3sKit {
    pub binary: Option<PathBuf>,
    pub images: Option<PathBuf>,
    pub install_script: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The folder `pxe serve --artifacts` serves; the image lands in its `images/`.
    pub artifacts: PathBuf,
    /// Scratch space (a few GiB); a subfolder per build, removed afterwards.
    pub work: PathBuf,
    pub mirror: String,
    pub kit: K3sKit,
    /// Rebuild even when an image with the same inputs is present.
    pub force: bool,
    /// Keep the work folder (the debootstrapped tree, partition files) for inspection.
    pub keep_work: bool,
    /// Enable non-free-firmware and install the recipe's `nonfree_packages`.
    pub nonfree: bool,
}

/// What an image built without non-free firmware (`--no-nonfree`) cannot do.
pub const WITHOUT_NONFREE: &str = "without non-free firmware an installed node has no network on Broadcom 57800/57810 NICs (bnx2x: the usual R630/R730 rNDC), Realtek NICs (r8169, some OptiPlex) run without their firmware patches, and no CPU gets microcode updates (intel-microcode, amd64-microcode)";

impl Recipe {
    /// What debootstrap installs beyond minbase: `packages`, plus `nonfree_packages` if `nonfree`.
    pub fn include(&self, nonfree: bool) -> Vec<&'static str> {
        let mut v = self.packages.to_vec();
        if nonfree {
            v.extend(self.nonfree_packages);
        }
        v
    }

    /// debootstrap `--components`: also the image's apt sources.
    pub fn components(&self, nonfree: bool) -> &'static str {
        if nonfree {
            "main,non-free-firmware"
        } else {
            "main"
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// Phase `index` of `total` starts.
    Phase {
        index: usize,
        total: usize,
        name: &'static str,
    },
    /// A line of output from the current phase's tool.
    Line(String),
    /// Bytes done of a known total in the current phase.
    Bytes { done: u64, total: u64 },
}

impl From<assemble::AssembleError> for GoldenError {
    fn from(e: assemble::AssembleError) -> Self {
        match e {
            assemble::AssembleError::Tool(t, s, o) => GoldenError::Tool(t, s, o),
            assemble::AssembleError::Io(c, e) => GoldenError::Io(c, e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("building an image needs root (debootstrap, chroot); run it with sudo")]
    NotRoot,
    #[error("missing on this machine: {0} (apt-get install {1})")]
    Missing(String, String),
    #[error("{0} failed ({1}):\n{2}")]
    Tool(String, String, String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
    #[error("unexpected tree after debootstrap: {0}")]
    Tree(String),
}

fn io_ctx(ctx: impl Into<String>) -> impl FnOnce(io::Error) -> GoldenError {
    let ctx = ctx.into();
    move |e| GoldenError::Io(ctx, e)
}

#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    /// `<artifacts>/images/<name>.raw.zst`
    pub path: PathBuf,
    pub sha256: String,
    /// Size of the compressed file.
    pub size: u64,
    /// Size of the raw image it expands to.
    pub raw_size: u64,
    pub inputs: String,
    /// True when an image with the same inputs was already there and nothing was built.
    pub cached: bool,
}

fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The cache key: everything that decides the image's content, hashed. Archive updates (a
/// Debian point release) are not in it; `--force` rebuilds.
pub fn input_key(r: &Recipe, o: &BuildOptions) -> io::Result<String> {
    let mut h = Sha256::new();
    // v2: the UEFI boot chain became shim + signed GRUB (the ESP is built by code, not recipe).
    h.update(format!("ironseed-golden-v2\n{r:?}\n{}\n", o.mirror));
    h.update(layout::DEBCONF_SELECTIONS);
    h.update(if o.nonfree {
        "nonfree\n"
    } else {
        "no-nonfree\n"
    });
    h.update(layout::sfdisk_script(&layout::layout(0, 0), &IDS));
    h.update(layout::kernel_cmdline(&IDS, &[]));
    for f in [&o.kit.binary, &o.kit.images, &o.kit.install_script] {
        match f {
            Some(p) => h.update(sha256_file(p)?),
            None => h.update("-"),
        }
    }
    Ok(hex(&h.finalize()))
}

pub fn image_file(name: &str) -> String {
    format!("{name}.raw.zst")
}

/// Tools (and files) the build runs, with the Debian package that has them.
const NEEDS: &[(&str, &str)] = &[
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/sbin/chroot", "coreutils"),
    ("/sbin/mkfs.vfat", "dosfstools"),
    ("/sbin/mkfs.ext4", "e2fsprogs"),
    ("/sbin/sfdisk", "fdisk"),
    ("/usr/bin/mcopy", "mtools"),
    ("/usr/bin/mmd", "mtools"),
    ("/usr/bin/syslinux", "syslinux"),
    (assemble::SYSLINUX_MBR, "syslinux-common"),
];

fn check_host() -> Result<(), GoldenError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(GoldenError::NotRoot);
    }
    let missing: Vec<&(&str, &str)> = NEEDS
        .iter()
        .filter(|(p, _)| !Path::new(p).exists() && !Path::new(&format!("/usr{p}")).exists())
        .collect();
    if !missing.is_empty() {
        let files: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
        let mut pkgs: Vec<&str> = missing.iter().map(|(_, k)| *k).collect();
        pkgs.dedup();
        return Err(GoldenError::Missing(files.join(", "), pkgs.join(" ")));
    }
    Ok(())
}

/// Run a tool; its output lines go to `on`, and the last ones into the error if it fails.
fn run(cmd: &mut Command, on: &mut dyn FnMut(Event)) -> Result<(), GoldenError> {
    let name = format!("{:?}", cmd.get_program());
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_ctx(format!("starting {name}")))?;
    // stderr is drained on a thread so neither pipe can fill and stall the tool.
    let err = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        tail.push(line.clone());
        if tail.len() > 20 {
            tail.remove(0);
        }
        on(Event::Line(line));
    }
    let status = child
        .wait()
        .map_err(io_ctx(format!("waiting for {name}")))?;
    let errs = errs.join().unwrap_or_default();
    if !status.success() {
        tail.extend(errs.into_iter().rev().take(20).rev());
        return Err(GoldenError::Tool(
            shown,
            status.to_string(),
            tail.join("\n"),
        ));
    }
    Ok(())
}

fn write_file(root: &Path, rel: &str, mode: u32, content: &[u8]) -> Result<(), GoldenError> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
    }
    let _ = fs::remove_file(&p); // may be a symlink into the tree (e.g. /etc/hostname)
    fs::write(&p, content).map_err(io_ctx(format!("writing {}", p.display())))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
        .map_err(io_ctx(format!("chmod {}", p.display())))
}

fn remove_glob(dir: &Path, keep: impl Fn(&str) -> bool) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if keep(&n) {
                continue;
            }
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                let _ = fs::remove_dir_all(&p);
            } else {
                let _ = fs::remove_file(&p);
            }
        }
    }
}

/// Bytes the tree needs as ext4 content: file data in 4 KiB blocks plus an inode's worth per
/// entry (directories and symlinks included).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            total += 256 + m.len().div_ceil(4096) * 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

const PHASES: usize = 6;

/// Build `r` into `o.artifacts/images/`, or report the cached image with the same inputs.
pub fn build(
    r: &Recipe,
    o: &BuildOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Built, GoldenError> {
    let key = input_key(r, o).map_err(io_ctx("hashing the k3s kit"))?;
    let images = o.artifacts.join("images");
    let out = images.join(image_file(r.name));
    let sha_file = images.join(format!("{}.sha256", image_file(r.name)));
    let inputs_file = images.join(format!("{}.inputs", image_file(r.name)));
    if !o.force
        && fs::read_to_string(&inputs_file).is_ok_and(|k| k.trim() == key)
        && let Ok(sha) = fs::read_to_string(&sha_file)
        && let Some(sha) = sha.split_whitespace().next()
        && let Ok(meta) = fs::metadata(&out)
    {
        record(r, &o.artifacts, &out, sha, meta.len())?;
        return Ok(Built {
            name: r.name.into(),
            path: out,
            sha256: sha.to_string(),
            size: meta.len(),
            raw_size: 0,
            inputs: key,
            cached: true,
        });
    }
    check_host()?;
    let work = o.work.join(format!("{}-{}", r.name, &key[..12]));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(io_ctx(format!("clearing {}", work.display())))?;
    }
    fs::create_dir_all(&work).map_err(io_ctx(format!("creating {}", work.display())))?;
    let result = build_in(r, o, &work, &key, on);
    if !o.keep_work {
        let _ = fs::remove_dir_all(&work);
    }
    result
}

fn build_in(
    r: &Recipe,
    o: &BuildOptions,
    work: &Path,
    key: &str,
    on: &mut dyn FnMut(Event),
) -> Result<Built, GoldenError> {
    let root = work.join("root");
    let mut phase = 0;
    let mut next = |on: &mut dyn FnMut(Event), name: &'static str| {
        phase += 1;
        on(Event::Phase {
            index: phase,
            total: PHASES,
            name,
        });
    };

    next(on, "debootstrap (Debian's archive)");
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--components={}", r.components(o.nonfree)))
            .arg(format!("--include={}", r.include(o.nonfree).join(",")))
            .arg(r.suite)
            .arg(&root)
            .arg(&o.mirror),
        on,
    )?;

    next(on, "configure the tree");
    for (rel, mode, content) in r.files {
        write_file(&root, rel, *mode, content.as_bytes())?;
    }
    write_file(&root, "etc/fstab", 0o644, layout::fstab(&IDS).as_bytes())?;
    write_file(
        &root,
        "etc/initramfs-tools/modules",
        0o644,
        (r.initramfs_modules.join("\n") + "\n").as_bytes(),
    )?;
    for unit in r.masked {
        let p = root.join("etc/systemd/system").join(unit);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/null", &p).map_err(io_ctx(format!("masking {unit}")))?;
    }
    if let Some(b) = &o.kit.binary {
        copy_kit(b, &root.join("usr/local/bin/k3s"), 0o755)?;
    }
    if let Some(i) = &o.kit.images {
        let name = i.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_else(|| "k3s-airgap-images-amd64.tar.zst".into());
        copy_kit(
            i,
            &root.join("var/lib/rancher/k3s/agent/images").join(name),
            0o644,
        )?;
    }
    if let Some(s) = &o.kit.install_script {
        copy_kit(
            s,
            &root.join("usr/local/share/ironseed/k3s-install.sh"),
            0o755,
        )?;
    }
    // Answers for the grub/shim postinst scripts of the node's future upgrades (the build's
    // own run of them, in a chroot without /sys/firmware/efi, installs nothing).
    write_file(
        &root,
        "tmp/ironseed-debconf",
        0o644,
        layout::DEBCONF_SELECTIONS.as_bytes(),
    )?;
    run(
        Command::new("chroot")
            .arg(&root)
            .args(["debconf-set-selections", "/tmp/ironseed-debconf"]),
        on,
    )?;
    let _ = fs::remove_file(root.join("tmp/ironseed-debconf"));
    run(
        Command::new("chroot")
            .arg(&root)
            .args(["update-initramfs", "-u", "-k", "all"]),
        on,
    )?;
    // De-personalise: every node must get its own machine-id, host keys and cloud-init state.
    write_file(&root, "etc/machine-id", 0o444, b"")?;
    let _ = fs::remove_file(root.join("var/lib/dbus/machine-id"));
    remove_glob(&root.join("etc/ssh"), |n| !n.starts_with("ssh_host_"));
    remove_glob(&root.join("var/lib/cloud"), |_| false);
    remove_glob(&root.join("var/lib/apt/lists"), |n| {
        n == "lock" || n == "partial"
    });
    remove_glob(&root.join("var/cache/apt/archives"), |n| {
        n == "lock" || n == "partial"
    });
    remove_glob(&root.join("var/cache/apt"), |n| n == "archives");
    remove_glob(&root.join("var/log"), |_| true);

    let boot = root.join("boot");
    let pick = |prefix: &str| -> Result<PathBuf, GoldenError> {
        let mut v: Vec<PathBuf> = fs::read_dir(&boot)
            .map_err(io_ctx("reading /boot of the tree"))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        v.sort();
        v.pop()
            .ok_or_else(|| GoldenError::Tree(format!("no /boot/{prefix}* (linux-image missing?)")))
    };
    let (kernel, initrd) = (pick("vmlinuz-")?, pick("initrd.img-")?);
    let kver = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    if !initrd.ends_with(format!("initrd.img-{kver}")) {
        return Err(GoldenError::Tree(format!(
            "kernel {} and initrd {} differ in version",
            kernel.display(),
            initrd.display()
        )));
    }
    for rel in [assemble::SHIM, assemble::GRUB, assemble::MOK_MANAGER] {
        if !root.join(rel).exists() {
            return Err(GoldenError::Tree(format!(
                "no /{rel} (shim-signed, grub-efi-amd64-signed missing?)"
            )));
        }
    }
    let cmdline = layout::kernel_cmdline(&IDS, &[]);
    // The fstab's ESP mount point: grub-install on upgrades writes there.
    fs::create_dir_all(root.join("boot/efi")).map_err(io_ctx("creating /boot/efi"))?;
    write_file(
        &root,
        "boot/grub/grub.cfg",
        0o644,
        layout::boot_grub_cfg(r.description, &IDS, &kver, &cmdline).as_bytes(),
    )?;

    next(on, "EFI system partition (syslinux + shim/GRUB)");
    let esp_len = 128 * MIB;
    let esp = assemble::build_esp(
        &assemble::EspSpec {
            label: "ESP",
            serial: IDS.esp_serial,
            // The ESP's place does not depend on the root's size, not known yet.
            start: layout::layout(esp_len, 0).esp_start,
            len: esp_len,
            reproducible: false,
            cmdline: &cmdline,
            loaders: &root,
            grub_cfg: &layout::grub_esp_chain(IDS.root_fs_uuid),
            kernel: &kernel,
            initrd: &initrd,
            extra_dir: None,
            extra: &[],
        },
        work,
        &mut |c| run(c, on),
    )?;

    next(on, "root filesystem (mkfs.ext4 -d)");
    // Room for first boot (cloud-init state, logs, the seed's packages) before the installer
    // has grown the partition — and for a node image written to a disk of the same size.
    let root_len = (tree_bytes(&root) as f64 * 1.25) as u64 + 384 * MIB;
    let root_len = root_len.div_ceil(MIB) * MIB;
    let rootfs = work.join("root.img");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-U", IDS.root_fs_uuid])
            .args(["-E", "root_owner=0:0"])
            .arg("-d")
            .arg(&root)
            .arg(&rootfs)
            .arg(format!("{}k", root_len / 1024)),
        on,
    )?;

    next(on, "disk image (GPT, hybrid BIOS/UEFI)");
    let l = layout::layout(esp_len, root_len);
    let raw = work.join("image.raw");
    {
        let f = File::create(&raw).map_err(io_ctx("creating the raw image"))?;
        f.set_len(l.total).map_err(io_ctx("sizing the raw image"))?;
    }
    assemble::partition(&raw, &layout::sfdisk_script(&l, &IDS))?;
    let mut img = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)
        .map_err(io_ctx("opening the raw image"))?;
    for (part, at) in [(&esp, l.esp_start), (&rootfs, l.root_start)] {
        let mut f = File::open(part).map_err(io_ctx(format!("opening {}", part.display())))?;
        assemble::copy_into(&mut f, &mut img, at).map_err(io_ctx("writing the raw image"))?;
    }
    assemble::write_boot_code(&mut img)?;
    drop(img);
    let _ = fs::remove_file(&rootfs);
    let _ = fs::remove_file(&esp);

    next(on, "compress and hash (zstd)");
    let images = o.artifacts.join("images");
    let partial = images.join(".partial");
    fs::create_dir_all(&partial).map_err(io_ctx(format!("creating {}", partial.display())))?;
    let file = image_file(r.name);
    let tmp = partial.join(format!("{file}.build"));
    let (sha, size) = compress(&raw, &tmp, l.total, on)?;
    let out = images.join(&file);
    fs::rename(&tmp, &out).map_err(io_ctx(format!("moving the image to {}", out.display())))?;
    let sidecar = |ext: &str, body: String| -> Result<(), GoldenError> {
        let p = images.join(format!("{file}.{ext}"));
        crate::fsutil::write_atomic(&p, body.as_bytes(), 0o644)
            .map_err(io_ctx(format!("writing {}", p.display())))
    };
    sidecar("sha256", format!("{sha}  {file}\n"))?;
    sidecar("inputs", format!("{key}\n"))?;
    record(r, &o.artifacts, &out, &sha, size)?;
    Ok(Built {
        name: r.name.into(),
        path: out,
        sha256: sha,
        size,
        raw_size: l.total,
        inputs: key.to_string(),
        cached: false,
    })
}

/// The image's entry in the artifacts folder's manifest (the local catalog): `builder images
/// list` shows it and `fetch` treats it like any other.
fn record(
    r: &Recipe,
    artifacts: &Path,
    out: &Path,
    sha: &str,
    size: u64,
) -> Result<(), GoldenError> {
    crate::catalog::manifest::add_entry(
        artifacts,
        crate::catalog::Entry {
            name: r.name.to_string(),
            kind: crate::catalog::Kind::RawZst,
            source: crate::catalog::Source::Path(out.to_path_buf()),
            sha256: sha.to_string(),
            size,
            description: Some(r.description.to_string()),
        },
    )
    .map_err(|e| {
        GoldenError::Io(
            "recording the image in the manifest".into(),
            io::Error::other(e),
        )
    })
}

fn copy_kit(src: &Path, dst: &Path, mode: u32) -> Result<(), GoldenError> {
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
    }
    fs::copy(src, dst).map_err(io_ctx(format!("copying {}", src.display())))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(io_ctx(format!("chmod {}", dst.display())))
}

/// zstd level 3 (level 19 saves ~20 % for minutes of CPU), hashing the compressed bytes as
/// they are written: the sha256 is of the file as published, which is what the installer
/// verifies while streaming.
fn compress(
    raw: &Path,
    out: &Path,
    total: u64,
    on: &mut dyn FnMut(Event),
) -> Result<(String, u64), GoldenError> {
    struct HashingWriter<W> {
        inner: W,
        hash: Sha256,
        n: u64,
    }
    impl<W: Write> Write for HashingWriter<W> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let k = self.inner.write(b)?;
            self.hash.update(&b[..k]);
            self.n += k as u64;
            Ok(k)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
    let ctx = || io_ctx(format!("compressing to {}", out.display()));
    let mut src = File::open(raw).map_err(ctx())?;
    let dst = File::create(out).map_err(ctx())?;
    let hw = HashingWriter {
        inner: io::BufWriter::new(dst),
        hash: Sha256::new(),
        n: 0,
    };
    let mut enc = zstd::Encoder::new(hw, 3).map_err(ctx())?;
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(ctx())?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n]).map_err(ctx())?;
        done += n as u64;
        on(Event::Bytes { done, total });
    }
    let mut hw = enc.finish().map_err(ctx())?;
    hw.flush().map_err(ctx())?;
    let f = hw.inner.into_inner().map_err(|e| ctx()(e.into_error()))?;
    f.sync_all().map_err(ctx())?;
    Ok((hex(&hw.hash.finalize()), hw.n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects every node from an NFS server and portmapper nobody asked for: the image ships
    /// nfs-kernel-server (the NFS host's first boot needs `exportfs`, and a node has no mirror),
    /// and masks each unit that it and rpcbind enable. Fails when the package or a mask goes.
    #[test]
    fn nfs_server_shipped_but_masked() {
        let r = &DEBIAN_12;
        for p in ["nfs-kernel-server", "nfs-common"] {
            assert!(r.include(false).contains(&p), "{p} in the image");
        }
        for u in [
            "nfs-server.service",
            "nfs-blkmap.service",
            "rpcbind.service",
            "rpcbind.socket",
        ] {
            assert!(r.masked.contains(&u), "{u} masked");
        }
    }

    fn opts(nonfree: bool) -> BuildOptions {
        BuildOptions {
            artifacts: "/a".into(),
            work: "/w".into(),
            mirror: "http://deb.debian.org/debian".into(),
            kit: K3sKit::default(),
            force: false,
            keep_work: false,
            nonfree,
        }
    }

    /// The image's package list has the NIC firmware and microcode from non-free-firmware (and
    /// that component enabled), `--no-nonfree` has none of it, and the two never share a cached
    /// image.
    #[test]
    fn nonfree_firmware_and_microcode_only_without_no_nonfree() {
        let r = &DEBIAN_12;
        let with = r.include(true);
        for p in [
            "firmware-bnx2x",
            "firmware-realtek",
            "intel-microcode",
            "amd64-microcode",
        ] {
            assert!(with.contains(&p), "{p} in {with:?}");
            assert!(!r.include(false).contains(&p), "{p} with --no-nonfree");
        }
        assert!(r.include(false).iter().all(|p| with.contains(p)));
        assert_eq!(r.components(true), "main,non-free-firmware");
        assert_eq!(r.components(false), "main");
        let (a, b) = (
            input_key(r, &opts(true)).unwrap(),
            input_key(r, &opts(false)).unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(
            a,
            input_key(r, &opts(true)).unwrap(),
            "the key is deterministic"
        );
    }
}
