//! What is on a disk, from its first and last MiB (and each partition's), read through a
//! read-only file descriptor. Magic numbers and offsets as blkid (util-linux libblkid) and the
//! on-disk format specifications place them; only signatures that can be told apart reliably.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const MIB: u64 = 1 << 20;

/// The only way this module opens a disk: `O_RDONLY` (no write bit can reach the kernel),
/// `O_CLOEXEC`, and no `O_EXCL` (a held device is still readable; inspection must not fail
/// because something claimed a disk).
pub fn open_read_only(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)
}

/// The head (first MiB) and tail (last MiB) of `[start, start+len)` of `f`; short at the end of
/// the file (a fixture, or a partition table that claims more than the device has).
fn region(f: &File, start: u64, len: u64) -> (Vec<u8>, Vec<u8>, u64) {
    let read = |off: u64, n: u64| {
        let mut b = vec![0u8; n as usize];
        let mut got = 0;
        while got < b.len() {
            match f.read_at(&mut b[got..], off + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        b.truncate(got);
        b
    };
    let head = read(start, len.min(MIB));
    let tail_off = start + len.saturating_sub(MIB);
    let tail = read(tail_off, len.min(MIB));
    (head, tail, tail_off - start)
}

fn at(b: &[u8], off: usize, magic: &[u8]) -> bool {
    b.get(off..off + magic.len()) == Some(magic)
}

/// GPT (`EFI PART` in LBA 1, 512- or 4096-byte sectors) or an MBR partition table (`dos`).
pub fn partition_table(head: &[u8]) -> Option<&'static str> {
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some("gpt");
    }
    if !at(head, 510, &[0x55, 0xaa]) {
        return None;
    }
    // A FAT or NTFS boot sector also ends in 55 AA: it is a filesystem, not a table.
    if at(head, 3, b"NTFS    ") || at(head, 54, b"FAT") || at(head, 82, b"FAT32") {
        return None;
    }
    let entries = (0..4).map(|i| &head[446 + 16 * i..462 + 16 * i]);
    let mut any = false;
    for e in entries {
        // Status is 0x00 or 0x80; a used entry has a non-zero type.
        if e[0] != 0 && e[0] != 0x80 {
            return None;
        }
        any |= e[4] != 0;
    }
    any.then_some("dos")
}

/// Signatures found in one region (a whole disk or a partition): `head` is its first MiB,
/// `tail` its last MiB starting `tail_off` bytes into the region, `len` its length.
pub fn signatures(head: &[u8], tail: &[u8], tail_off: u64, len: u64) -> Vec<&'static str> {
    let mut out = Vec::new();
    if at(head, 0, b"XFSB") {
        out.push("xfs");
    }
    // FAT (an ESP) and NTFS boot sectors: the OEM/type strings blkid checks.
    if at(head, 510, &[0x55, 0xaa]) && (at(head, 54, b"FAT1") || at(head, 82, b"FAT32")) {
        out.push("vfat");
    }
    if at(head, 3, b"NTFS    ") {
        out.push("ntfs");
    }
    // ext2/3/4: s_magic 0xEF53 (little-endian) at 1024 + 56.
    if at(head, 1080, &[0x53, 0xef]) {
        out.push("ext4");
    }
    // btrfs: the superblock at 64 KiB, magic at offset 64 in it.
    if at(head, 0x10000 + 64, b"_BHRfS_M") {
        out.push("btrfs");
    }
    // LVM2 physical volume: a label in one of the first four sectors.
    if (0..4).any(|s| at(head, s * 512, b"LABELONE") && at(head, s * 512 + 24, b"LVM2 001")) {
        out.push("LVM2_member");
    }
    // Swap: "SWAPSPACE2" ending the first page (4 KiB pages; 64 KiB on some arm64 kernels).
    if [4096usize, 65536]
        .iter()
        .any(|p| at(head, p - 10, b"SWAPSPACE2") || at(head, p - 10, b"SWAP-SPACE"))
    {
        out.push("swap");
    }
    if md_raid(head, tail, tail_off, len) {
        out.push("linux_raid_member");
    }
    if zfs(head, tail, tail_off, len) {
        out.push("zfs_member");
    }
    if out.is_empty() && !is_zero(head) {
        // Something is there that this list cannot name: still not an empty disk.
        out.push("unknown-data");
    }
    out
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// The byte `off` (from the region's start) as an index into head or tail.
fn byte_slice<'a>(head: &'a [u8], tail: &'a [u8], tail_off: u64, off: u64) -> Option<&'a [u8]> {
    if off >= tail_off {
        tail.get((off - tail_off) as usize..)
    } else {
        head.get(off as usize..)
    }
}

/// md superblock magic 0xa92b4efc (little-endian on disk for 1.x; native, i.e. little-endian on
/// x86, for 0.90). 1.1 at 0, 1.2 at 4 KiB, 1.0 at 8 KiB before the end (4 KiB aligned), 0.90 in
/// the last 64 KiB-aligned 64 KiB block.
fn md_raid(head: &[u8], tail: &[u8], tail_off: u64, len: u64) -> bool {
    const MAGIC: [u8; 4] = [0xfc, 0x4e, 0x2b, 0xa9];
    let mut offs = vec![0u64, 4096];
    if len >= 8192 {
        offs.push((len - 8192) & !4095);
    }
    if len >= 65536 {
        offs.push((len & !65535) - 65536);
    }
    offs.iter().any(|&o| {
        byte_slice(head, tail, tail_off, o).is_some_and(|b| b.len() >= 4 && b[..4] == MAGIC)
    })
}

/// ZFS: four 256 KiB vdev labels, two at the start and two at the end, each with an uberblock
/// ring from 128 KiB holding magic 0x00bab10c (either byte order) in 1 KiB slots.
fn zfs(head: &[u8], tail: &[u8], tail_off: u64, len: u64) -> bool {
    const LABEL: u64 = 256 << 10;
    let aligned = len & !(LABEL - 1);
    let mut labels = vec![0, LABEL];
    if aligned >= 2 * LABEL {
        labels.extend([aligned - 2 * LABEL, aligned - LABEL]);
    }
    let le = 0x00bab10cu64.to_le_bytes();
    let be = 0x00bab10cu64.to_be_bytes();
    labels.iter().any(|&l| {
        (0..128).any(|slot| {
            byte_slice(head, tail, tail_off, l + (128 << 10) + slot * 1024)
                .is_some_and(|b| b.len() >= 8 && (b[..8] == le || b[..8] == be))
        })
    })
}

/// A partition of the disk: its first sector and length in sectors (sysfs `start`, `size`).
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub start: u64,
    pub sectors: u64,
}

/// Partition table and signatures of a disk and its partitions, `f` opened read-only.
pub fn probe(f: &File, parts: &[Part]) -> (Option<String>, Vec<String>) {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A block device's metadata length is 0: the end of the device is where SEEK_END goes.
    let len = if len == 0 {
        use std::io::Seek;
        let mut f = f;
        f.seek(io::SeekFrom::End(0)).unwrap_or(0)
    } else {
        len
    };
    let (head, tail, tail_off) = region(f, 0, len);
    let table = partition_table(&head);
    let mut sigs: Vec<String> = Vec::new();
    if table.is_none() {
        sigs.extend(
            signatures(&head, &tail, tail_off, len)
                .into_iter()
                .map(String::from),
        );
    }
    for p in parts {
        let (start, plen) = (p.start * 512, p.sectors * 512);
        let (h, t, toff) = region(f, start, plen);
        for s in signatures(&h, &t, toff, plen) {
            sigs.push(s.into());
        }
    }
    sigs.sort();
    sigs.dedup();
    // An empty partition beside a formatted one says nothing more.
    if sigs.len() > 1 {
        sigs.retain(|s| s != "unknown-data");
    }
    (table.map(String::from), sigs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], off: usize, v: &[u8]) {
        b[off..off + v.len()].copy_from_slice(v);
    }

    #[test]
    fn each_signature_is_found_where_its_format_puts_it() {
        let len = 4 * MIB;
        let sig = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut d = vec![0u8; len as usize];
            f(&mut d);
            let tail_off = len - MIB;
            signatures(&d[..MIB as usize], &d[tail_off as usize..], tail_off, len)
        };
        assert_eq!(sig(&|_| {}), Vec::<&str>::new());
        assert_eq!(sig(&|d| put(d, 0, b"XFSB")), ["xfs"]);
        assert_eq!(sig(&|d| put(d, 1080, &[0x53, 0xef])), ["ext4"]);
        assert_eq!(sig(&|d| put(d, 0x10040, b"_BHRfS_M")), ["btrfs"]);
        assert_eq!(
            sig(&|d| {
                put(d, 512, b"LABELONE");
                put(d, 536, b"LVM2 001")
            }),
            ["LVM2_member"]
        );
        assert_eq!(sig(&|d| put(d, 4086, b"SWAPSPACE2")), ["swap"]);
        assert_eq!(
            sig(&|d| {
                put(d, 82, b"FAT32");
                put(d, 510, &[0x55, 0xaa])
            }),
            ["vfat"]
        );
        let md = [0xfc, 0x4e, 0x2b, 0xa9];
        assert_eq!(sig(&|d| put(d, 4096, &md)), ["linux_raid_member"]);
        // 0.90 and 1.0 superblocks sit at the end.
        let v090 = ((len & !65535) - 65536) as usize;
        assert_eq!(sig(&|d| put(d, v090, &md)), ["linux_raid_member"]);
        let v10 = ((len - 8192) & !4095) as usize;
        assert_eq!(sig(&|d| put(d, v10, &md)), ["linux_raid_member"]);
        // ZFS: an uberblock in the last label only.
        let zl = (len - (256 << 10) + (128 << 10) + 5 * 1024) as usize;
        assert_eq!(
            sig(&|d| put(d, zl, &0x00bab10cu64.to_le_bytes())),
            ["zfs_member"]
        );
        assert_eq!(sig(&|d| put(d, 2 * MIB as usize, b"x")), Vec::<&str>::new());
        assert_eq!(sig(&|d| put(d, 10, b"junk")), ["unknown-data"]);
    }

    #[test]
    fn partition_tables_and_boot_sectors_are_told_apart() {
        let mut d = vec![0u8; 8192];
        assert_eq!(partition_table(&d), None);
        put(&mut d, 510, &[0x55, 0xaa]);
        // 55 AA with no used entry: not a table.
        assert_eq!(partition_table(&d), None);
        put(&mut d, 446 + 4, &[0x83]);
        assert_eq!(partition_table(&d), Some("dos"));
        put(&mut d, 512, b"EFI PART");
        assert_eq!(partition_table(&d), Some("gpt"));
        let mut fat = vec![0u8; 8192];
        put(&mut fat, 510, &[0x55, 0xaa]);
        put(&mut fat, 82, b"FAT32");
        put(&mut fat, 446 + 4, &[0x83]);
        assert_eq!(partition_table(&fat), None);
    }

    /// Protects: disks are opened read-only. Fails if `open_read_only` asks for write access
    /// (the access mode the kernel recorded is read from /proc/self/fdinfo).
    #[test]
    fn disks_are_opened_read_only() {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = open_read_only(t.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| i32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(flags & nix::libc::O_ACCMODE, nix::libc::O_RDONLY, "{info}");
        use std::io::Write;
        assert!((&f).write_all(b"x").is_err());
    }
}
