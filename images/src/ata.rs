//! The full model of a SATA disk, as udev's `ata_id` reads it. The installer has no udev, and
//! a SATA disk's sysfs `device/model` is what libata's SCSI translation puts in the INQUIRY
//! product field (SAT-4 9.2.2): the first 16 characters of the ATA model, under vendor `ATA`.
//! An Intel S4500 whose model is `INTEL SSDSC2KB240G8` shows as `INTEL SSDSC2KB24`, so a
//! selector naming the model as lsblk (udev) shows it could never match in the installer.
//!
//! The whole 40-character model is in the disk's IDENTIFY DEVICE data (ACS-3 7.12.7, words
//! 27–46). `ata_id` asks for it with an ATA PASS-THROUGH command through SG_IO; libata already
//! read it when it probed the disk and shows it, as 256 hex words, in the ATA transport class
//! attribute `…/ataN/linkN/devN.M/ata_device/devN.M/id` (drivers/ata/libata-transport.c,
//! `show_ata_dev_id`). The installer reads that file: the same data, no command sent to the disk
//! (so no timeout to guard), and no ioctl (this workspace forbids `unsafe`, which SG_IO needs).
//!
//! Pure: [`parse_sysfs_id`] (text → the 512-byte block), [`identify_model`] (block → model),
//! [`id_file`] (the disk's sysfs path → its `id` file); [`sysfs_model`] reads.

use std::io::Read;
use std::path::{Path, PathBuf};

/// One IDENTIFY DEVICE data block: 256 16-bit words.
pub const IDENTIFY_LEN: usize = 512;
/// The `id` attribute: 256 words of 4 hex digits and a separator, 1280 bytes. Read no more.
const ID_FILE_MAX: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("IDENTIFY data is {0} bytes, not 512")]
    Length(usize),
    #[error("IDENTIFY word 0 says this is not an ATA device")]
    NotAta,
    #[error("IDENTIFY checksum (word 255) does not add up")]
    Checksum,
    #[error("IDENTIFY has an empty model")]
    NoModel,
    #[error("the ATA id attribute is not 256 hex words")]
    NotWords,
}

/// The `id` attribute (256 words, `%04x`, 8 a line) as the IDENTIFY block the disk sent
/// (words little-endian, as ATA transfers them).
pub fn parse_sysfs_id(text: &str) -> Result<Vec<u8>, IdentifyError> {
    let mut out = Vec::with_capacity(IDENTIFY_LEN);
    for w in text.split_ascii_whitespace() {
        if w.len() != 4 || out.len() >= IDENTIFY_LEN {
            return Err(IdentifyError::NotWords);
        }
        let v = u16::from_str_radix(w, 16).map_err(|_| IdentifyError::NotWords)?;
        out.extend_from_slice(&v.to_le_bytes());
    }
    if out.len() != IDENTIFY_LEN {
        return Err(IdentifyError::NotWords);
    }
    Ok(out)
}

/// The model number (words 27–46: 40 ASCII characters, each word's two bytes swapped, padded
/// with spaces) of an IDENTIFY DEVICE block. Checked first: word 0 bit 15 clear (an ATA
/// device, not ATAPI), and when word 255's low byte is the signature 0xA5, the block's bytes
/// must sum to zero (ACS-3 7.12.7.93). Non-printable characters are dropped.
pub fn identify_model(block: &[u8]) -> Result<String, IdentifyError> {
    if block.len() != IDENTIFY_LEN {
        return Err(IdentifyError::Length(block.len()));
    }
    if block[1] & 0x80 != 0 {
        return Err(IdentifyError::NotAta);
    }
    if block[510] == 0xa5 && block.iter().fold(0u8, |s, b| s.wrapping_add(*b)) != 0 {
        return Err(IdentifyError::Checksum);
    }
    let model: String = block[54..94]
        .chunks_exact(2)
        .flat_map(|w| [w[1], w[0]])
        .filter(|b| (0x20..0x7f).contains(b))
        .map(char::from)
        .collect();
    let model = model.trim();
    if model.is_empty() {
        return Err(IdentifyError::NoModel);
    }
    Ok(model.to_string())
}

/// The `id` file of the ATA device behind a SCSI disk's resolved sysfs path
/// (`…/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sdb` →
/// `…/0000:00:1f.2/ata3/link3/dev3.0/ata_device/dev3.0/id`). libata numbers the SCSI address
/// of a disk on the port's own link as channel 0, id = the device number (0, or 1 for a PATA
/// slave), and names the device `dev<port>.<devno>`; behind a port multiplier (channel = the
/// PMP link) it is `link<port>.<pmp>/dev<port>.<pmp>.0`. `None` when the path has no `ataN`.
pub fn id_file(devpath: &Path) -> Option<PathBuf> {
    let parts: Vec<String> = devpath
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let ata = parts.iter().position(|p| {
        p.strip_prefix("ata")
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    })?;
    let port = &parts[ata][3..];
    // The SCSI address H:C:T:L after it.
    let addr = parts[ata..].iter().find_map(|p| {
        let f: Vec<&str> = p.split(':').collect();
        (f.len() == 4 && f.iter().all(|x| x.parse::<u32>().is_ok())).then(|| {
            (
                f[1].parse::<u32>().unwrap_or(0),
                f[2].parse::<u32>().unwrap_or(0),
            )
        })
    })?;
    let base: PathBuf = parts[..=ata].iter().collect();
    let (link, dev) = match addr {
        (0, id) => (format!("link{port}"), format!("dev{port}.{id}")),
        (pmp, _) => (format!("link{port}.{pmp}"), format!("dev{port}.{pmp}.0")),
    };
    Some(
        base.join(link)
            .join(&dev)
            .join("ata_device")
            .join(&dev)
            .join("id"),
    )
}

/// The 40-character model of the SATA disk `sys/block/NAME`, from libata's IDENTIFY data.
pub fn sysfs_model(sys: &Path, name: &str) -> std::io::Result<String> {
    let dev = std::fs::canonicalize(sys.join("block").join(name))?;
    let file = id_file(&dev).ok_or_else(|| std::io::Error::other("not behind a libata port"))?;
    let mut text = String::new();
    std::fs::File::open(&file)?
        .take(ID_FILE_MAX)
        .read_to_string(&mut text)?;
    parse_sysfs_id(&text)
        .and_then(|b| identify_model(&b))
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IDENTIFY DEVICE of a qemu 7.2 `ide-hd,model=INTEL SSDSC2KB240G8` on q35's AHCI, sent
    /// by the disk to `sg_raw` (ATA PASS-THROUGH), and the same disk's sysfs `id` attribute,
    /// captured under the installer's kernel: images/tests/fixtures/ata/README.md.
    const QEMU_IDE_HD: &[u8] = include_bytes!("../tests/fixtures/ata/qemu-ide-hd-identify.bin");
    const QEMU_IDE_HD_SYSFS: &str = include_str!("../tests/fixtures/ata/qemu-ide-hd-sysfs-id.txt");

    #[test]
    fn model_of_a_captured_qemu_identify_block_is_all_40_characters() {
        assert_eq!(QEMU_IDE_HD.len(), IDENTIFY_LEN);
        assert_eq!(identify_model(QEMU_IDE_HD).unwrap(), "INTEL SSDSC2KB240G8");
    }

    /// The sysfs attribute is the block the disk sends (words in CPU order, printed as hex).
    #[test]
    fn the_sysfs_id_attribute_is_the_identify_block() {
        assert_eq!(parse_sysfs_id(QEMU_IDE_HD_SYSFS).unwrap(), QEMU_IDE_HD);
        assert_eq!(parse_sysfs_id(""), Err(IdentifyError::NotWords));
        assert_eq!(parse_sysfs_id("0040 zz00"), Err(IdentifyError::NotWords));
        let long = format!("{QEMU_IDE_HD_SYSFS} 0000");
        assert_eq!(parse_sysfs_id(&long), Err(IdentifyError::NotWords));
    }

    fn block_with(model: &str) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        let m = format!("{model:<40}");
        for (i, w) in m.as_bytes().chunks(2).enumerate() {
            b[54 + 2 * i] = w[1];
            b[54 + 2 * i + 1] = w[0];
        }
        b
    }

    fn seal(mut b: Vec<u8>) -> Vec<u8> {
        b[510] = 0xa5;
        let s = b[..511].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b[511] = 0u8.wrapping_sub(s);
        b
    }

    #[test]
    fn words_are_byte_swapped_and_padding_trimmed() {
        let long = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";
        assert_eq!(identify_model(&block_with(long)).unwrap(), long);
        assert_eq!(identify_model(&seal(block_with("X1"))).unwrap(), "X1");
        assert_eq!(identify_model(&block_with("XYZ")).unwrap(), "XYZ");
    }

    /// The checks that keep a garbled or non-ATA answer from naming a disk: a wrong length,
    /// ATAPI's word 0, a checksum that does not add up, an empty model.
    #[test]
    fn bad_blocks_are_refused() {
        assert_eq!(identify_model(&[0; 511]), Err(IdentifyError::Length(511)));
        let mut atapi = block_with("CDROM");
        atapi[1] = 0x85;
        assert_eq!(identify_model(&atapi), Err(IdentifyError::NotAta));
        let mut bad = seal(block_with("X1"));
        bad[60] ^= 1;
        assert_eq!(identify_model(&bad), Err(IdentifyError::Checksum));
        assert_eq!(identify_model(&block_with("")), Err(IdentifyError::NoModel));
        // qemu leaves word 255 zero (no checksum); sealed, one flipped bit is caught.
        let mut tampered = seal(QEMU_IDE_HD.to_vec());
        assert_eq!(identify_model(&tampered).unwrap(), "INTEL SSDSC2KB240G8");
        tampered[56] ^= 0x20;
        assert_eq!(identify_model(&tampered), Err(IdentifyError::Checksum));
    }

    #[test]
    fn the_id_file_of_a_disk_on_a_port_a_pata_slave_and_a_port_multiplier() {
        let ahci = "/sys/devices/pci0000:00/0000:00:1f.2";
        let f = |p: &str| id_file(Path::new(p)).map(|p| p.display().to_string());
        assert_eq!(
            f(&format!("{ahci}/ata3/host2/target2:0:0/2:0:0:0/block/sdb")).unwrap(),
            format!("{ahci}/ata3/link3/dev3.0/ata_device/dev3.0/id")
        );
        assert_eq!(
            f("/sys/devices/pci0000:00/0000:00:01.1/ata1/host0/target0:0:1/0:0:1:0/block/sdb")
                .unwrap(),
            "/sys/devices/pci0000:00/0000:00:01.1/ata1/link1/dev1.1/ata_device/dev1.1/id"
        );
        assert_eq!(
            f(&format!("{ahci}/ata2/host1/target1:2:0/1:2:0:0/block/sdc")).unwrap(),
            format!("{ahci}/ata2/link2.2/dev2.2.0/ata_device/dev2.2.0/id")
        );
        // A PERC virtual disk, NVMe, virtio: no libata port.
        assert_eq!(
            f("/sys/devices/pci0000:00/0000:00:03.0/host2/target2:2:0/2:2:0:0/block/sda"),
            None
        );
        assert_eq!(f("/sys/devices/virtual/block/loop0"), None);
    }
}
