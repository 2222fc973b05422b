//! The golden image's disk layout and boot configuration, as pure functions of sizes and
//! identifiers, so they are tested without building anything.
//!
//! ```text
//! LBA 0        protective MBR + syslinux gptmbr.bin (BIOS: chains the LegacyBIOSBootable partition)
//! 1 MiB  p1    ESP, FAT32: vmlinuz, initrd, syslinux (BIOS); Debian's signed shim as
//!              EFI/BOOT/BOOTX64.EFI + signed GRUB beside it, EFI/debian/grub.cfg (UEFI, Secure Boot)
//!        p2    cidata: 1 MiB slot, zero in the image; the installer writes the node's seed here
//!        p3    root, ext4 with a fixed UUID, last so it can grow to the disk
//! ```
//! The seed slot means no per-node root filesystem is ever built or mounted: cloud-init 22.4
//! finds a FAT volume labelled CIDATA on any partition (`[seed=/dev/sda2]`), network-config
//! included (docs/reference.md "Golden image recipe").

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;

/// Partition type GUIDs (UEFI spec; Discoverable Partitions Specification for root x86-64).
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Fixed identifiers: random GUIDs and serials make images differ run to run for no reason,
/// and `root=UUID=` must be known before the filesystem exists.
pub struct Ids {
    pub disk_guid: &'static str,
    pub esp_uuid: &'static str,
    pub cidata_uuid: &'static str,
    pub root_part_uuid: &'static str,
    pub root_fs_uuid: &'static str,
    /// FAT volume serial of the ESP (hex, 8 digits), as mkfs.vfat -i takes it.
    pub esp_serial: &'static str,
}

pub const IDS: Ids = Ids {
    disk_guid: "1E5EED00-0000-4000-8000-000000000000",
    esp_uuid: "1E5EED00-0000-4000-8000-000000000001",
    cidata_uuid: "1E5EED00-0000-4000-8000-000000000002",
    root_part_uuid: "1E5EED00-0000-4000-8000-000000000003",
    root_fs_uuid: "1e5eed00-0000-4000-8000-0000000000f3",
    esp_serial: "1E5EED01",
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub esp_start: u64,
    pub esp_len: u64,
    pub cidata_start: u64,
    pub cidata_len: u64,
    pub root_start: u64,
    pub root_len: u64,
    /// The whole image: partitions plus the backup GPT (33 sectors), rounded to a MiB.
    pub total: u64,
}

/// Partitions of the given lengths, each rounded up to a MiB, back to back from 1 MiB: their
/// `(start, length)` and the whole image's length, with a MiB left for the backup GPT (33
/// sectors). The golden image and the offline stick are both laid out by this.
pub fn mib_aligned<const N: usize>(lens: [u64; N]) -> ([(u64, u64); N], u64) {
    let mut at = MIB;
    let parts = lens.map(|len| {
        let part = (at, len.div_ceil(MIB) * MIB);
        at += part.1;
        part
    });
    (parts, at + MIB)
}

/// One partition of [`gpt_script`]: `(start, length)` in bytes, type GUID, partition UUID, name.
pub type ScriptPart<'a> = ((u64, u64), &'a str, &'a str, &'a str);

/// Input for `sfdisk` (util-linux script format): a GPT with fixed IDs. The first partition
/// is the ESP and carries `LegacyBIOSBootable`, which syslinux's gptmbr.bin looks for to find
/// the partition to chain into.
pub fn gpt_script(disk_guid: &str, parts: &[ScriptPart]) -> String {
    use std::fmt::Write;
    let mut s = format!("label: gpt\nlabel-id: {disk_guid}\nfirst-lba: 2048\n");
    for (i, ((start, len), type_guid, uuid, name)) in parts.iter().enumerate() {
        let _ = write!(
            s,
            "start={}, size={}, type={type_guid}, uuid={uuid}, name=\"{name}\"",
            start / SECTOR,
            len / SECTOR,
        );
        s.push_str(if i == 0 {
            ", attrs=\"LegacyBIOSBootable\"\n"
        } else {
            "\n"
        });
    }
    s
}

/// Byte offsets for an ESP and a root filesystem of the given sizes, all MiB-aligned.
pub fn layout(esp_len: u64, root_len: u64) -> Layout {
    let (
        [
            (esp_start, esp_len),
            (cidata_start, cidata_len),
            (root_start, root_len),
        ],
        total,
    ) = mib_aligned([esp_len, MIB, root_len]);
    Layout {
        esp_start,
        esp_len,
        cidata_start,
        cidata_len,
        root_start,
        root_len,
        total,
    }
}

/// The golden image's GPT: the ESP, the seed slot, the root.
pub fn sfdisk_script(l: &Layout, ids: &Ids) -> String {
    gpt_script(
        ids.disk_guid,
        &[
            ((l.esp_start, l.esp_len), TYPE_ESP, ids.esp_uuid, "esp"),
            (
                (l.cidata_start, l.cidata_len),
                TYPE_LINUX_DATA,
                ids.cidata_uuid,
                "cidata",
            ),
            (
                (l.root_start, l.root_len),
                TYPE_ROOT_X86_64,
                ids.root_part_uuid,
                "root",
            ),
        ],
    )
}

/// The kernel command line of the installed system.
pub fn kernel_cmdline(ids: &Ids, extra: &[String]) -> String {
    let mut v = vec![
        format!("root=UUID={}", ids.root_fs_uuid),
        "rw".to_string(),
        // Both consoles: the serial one is where tests and out-of-band consoles (iDRAC SOL,
        // Proxmox serial) read, tty0 is the monitor. The last console= gets /dev/console.
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
    ];
    v.extend(extra.iter().cloned());
    v.join(" ")
}

/// syslinux (BIOS) configuration: no prompt, no delay.
pub fn syslinux_cfg(cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT ironseed\n\nLABEL ironseed\n  \
         LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n"
    )
}

/// Where Debian's signed GRUB reads its configuration on the disk it was loaded from: the
/// prefix `/EFI/debian` is baked into `grubx64.efi.signed` (its embedded `(memdisk)/grub.cfg`
/// sources `$prefix/grub.cfg`, and only falls back to `$cmdpath/grub.cfg` when the prefix does
/// not exist), so this path works whether shim started it from EFI/BOOT or EFI/debian.
pub const GRUB_ESP_CFG: &str = "EFI/debian/grub.cfg";

/// The ESP's `EFI/debian/grub.cfg` of an installed system, the same three lines `grub-install`
/// writes there: find the root filesystem by UUID, then read its `/boot/grub/grub.cfg` (which
/// `update-grub` rewrites on every kernel upgrade, so the ESP never holds a kernel path).
pub fn grub_esp_chain(root_fs_uuid: &str) -> String {
    format!(
        "search.fs_uuid {root_fs_uuid} root\nset prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
    )
}

/// One GRUB menu that boots at once, on the monitor and serial port 0 (where tests and
/// out-of-band consoles read). `root_fs_uuid`: search for the filesystem holding `kernel` and
/// `initrd` (paths on it); without it they are on the device GRUB's prefix is on (the ESP).
pub fn grub_cfg(
    title: &str,
    root_fs_uuid: Option<&str>,
    kernel: &str,
    initrd: &str,
    cmdline: &str,
) -> String {
    let search = root_fs_uuid
        .map(|u| format!("search --no-floppy --fs-uuid --set=root {u}\n"))
        .unwrap_or_default();
    // GRUB quotes: a title with ' would end the string early.
    let title = title.replace('\'', "");
    format!(
        "set default=0\nset timeout=0\nserial --unit=0 --speed=115200\n\
         terminal_input console serial\nterminal_output console serial\n{search}\
         menuentry '{title}' {{\n  linux {kernel} {cmdline}\n  initrd {initrd}\n}}\n"
    )
}

/// The root filesystem's `/boot/grub/grub.cfg` as the image ships it: kernel version `kver`
/// from /boot. On the node, the first kernel upgrade's `update-grub` replaces it with Debian's
/// generated one (from [`GRUB_DEFAULTS`]), which boots the same way.
pub fn boot_grub_cfg(title: &str, ids: &Ids, kver: &str, cmdline: &str) -> String {
    format!(
        "# written by ironseed's golden image build; update-grub replaces it on kernel upgrades\n{}",
        grub_cfg(
            title,
            Some(ids.root_fs_uuid),
            &format!("/boot/vmlinuz-{kver}"),
            &format!("/boot/initrd.img-{kver}"),
            cmdline,
        )
    )
}

/// `/etc/default/grub.d/ironseed.cfg`: what `update-grub` on the node needs to generate a
/// grub.cfg equivalent to [`boot_grub_cfg`] (it adds `root=UUID=` itself, probed from `/`).
pub const GRUB_DEFAULTS: &str = "\
# ironseed: boot at once, both consoles (as the image's own grub.cfg does).
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"
GRUB_CMDLINE_LINUX_DEFAULT=\"\"
GRUB_TERMINAL=\"console serial\"
GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"
GRUB_DISABLE_OS_PROBER=true
";

/// debconf answers for grub-efi-amd64 and shim-signed's postinst on the node: every upgrade
/// re-runs `grub-install` into EFI/debian *and* the removable path EFI/BOOT (which is what the
/// firmware boots: the image creates no NVRAM entry), and never writes NVRAM boot entries.
pub const DEBCONF_SELECTIONS: &str = "\
grub-efi-amd64 grub2/force_efi_extra_removable boolean true
grub-efi-amd64 grub2/update_nvram boolean false
";

/// The FAT volume serial as `/dev/disk/by-uuid` and fstab spell it (`1E5E-ED01`).
pub fn fat_uuid(serial: &str) -> String {
    format!("{}-{}", &serial[..4], &serial[4..])
}

pub fn fstab(ids: &Ids) -> String {
    format!(
        "# written by ironseed's golden image build\n\
         UUID={} / ext4 defaults,errors=remount-ro 0 1\n\
         # grub-install (shim-signed and grub-efi-amd64 upgrades) refreshes the boot loaders here.\n\
         UUID={} /boot/efi vfat umask=0077,nofail 0 0\n",
        ids.root_fs_uuid,
        fat_uuid(ids.esp_serial)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_mib_aligned_back_to_back_and_leave_room_for_the_backup_gpt() {
        let l = layout(100 * MIB + 1, 900 * MIB + 5);
        assert_eq!(l.esp_start, MIB);
        assert_eq!(l.esp_len, 101 * MIB);
        assert_eq!(l.cidata_start, 102 * MIB);
        assert_eq!(l.cidata_len, MIB);
        assert_eq!(l.root_start, 103 * MIB);
        assert_eq!(l.root_len, 901 * MIB);
        assert_eq!(l.total, 1005 * MIB);
        for b in [l.esp_start, l.cidata_start, l.root_start, l.total] {
            assert_eq!(b % MIB, 0);
        }
    }

    #[test]
    fn the_sfdisk_script_names_the_seed_slot_and_marks_the_esp_bios_bootable() {
        let s = sfdisk_script(&layout(64 * MIB, 512 * MIB), &IDS);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "label: gpt");
        assert!(lines[3].starts_with("start=2048, size=131072, type=C12A7328"));
        assert!(lines[3].contains("LegacyBIOSBootable"));
        assert!(lines[4].starts_with("start=133120, size=2048,") && lines[4].contains("cidata"));
        assert!(lines[5].starts_with("start=135168, size=1048576,"));
    }

    #[test]
    fn boot_configs_agree_on_the_root_and_consoles() {
        let c = kernel_cmdline(&IDS, &["quiet".into()]);
        assert!(c.starts_with("root=UUID=1e5eed00-0000-4000-8000-0000000000f3 rw"));
        assert!(c.ends_with("console=ttyS0,115200 quiet"));
        assert!(syslinux_cfg(&c).contains(&format!("APPEND {c}\n")));
        assert!(fstab(&IDS).contains("UUID=1e5eed00-0000-4000-8000-0000000000f3 / ext4"));
        assert!(fstab(&IDS).contains("UUID=1E5E-ED01 /boot/efi vfat"));
    }

    /// What the signed GRUB reads: the ESP's grub.cfg finds the root filesystem the image
    /// creates (mkfs.ext4 -U) and the fstab mounts, and the root's grub.cfg boots the kernel
    /// and initrd named by version, with the same root and consoles as syslinux.
    #[test]
    fn grub_finds_the_images_root_and_boots_its_kernel() {
        assert_eq!(
            grub_esp_chain(IDS.root_fs_uuid),
            "search.fs_uuid 1e5eed00-0000-4000-8000-0000000000f3 root\n\
             set prefix=($root)'/boot/grub'\nconfigfile $prefix/grub.cfg\n"
        );
        let c = kernel_cmdline(&IDS, &[]);
        let g = boot_grub_cfg("Debian 12", &IDS, "6.1.0-41-amd64", &c);
        assert!(g.contains(
            "search --no-floppy --fs-uuid --set=root 1e5eed00-0000-4000-8000-0000000000f3\n"
        ));
        assert!(g.contains(&format!("  linux /boot/vmlinuz-6.1.0-41-amd64 {c}\n")));
        assert!(g.contains("  initrd /boot/initrd.img-6.1.0-41-amd64\n"));
        assert!(g.contains("set timeout=0\n"));
        assert!(g.contains("terminal_output console serial\n"));
        // update-grub's settings give the node the same consoles after a kernel upgrade.
        assert!(GRUB_DEFAULTS.contains("GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\""));
        // The stick's: no search (GRUB's root is the ESP it was loaded from), no quote injection.
        let s = grub_cfg("it's", None, "/vmlinuz", "/initrd.img", "x=1");
        assert!(!s.contains("search"));
        assert!(s.contains("menuentry 'its' {\n  linux /vmlinuz x=1\n  initrd /initrd.img\n}\n"));
    }
}
