//! Just enough GPT to find a partition by name in a freshly written image: the golden image
//! carries a small partition named `cidata` that receives the node's seed, so the root
//! filesystem never has to be rebuilt (or mounted) per node.

use std::io::{self, Read, Seek, SeekFrom, Write};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub name: String,
    pub first_byte: u64,
    pub len: u64,
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// The GPT partitions of `disk`, trying 512- and 4096-byte logical sectors.
pub fn partitions<D: Read + Seek>(disk: &mut D) -> io::Result<Vec<Partition>> {
    for sector in [512u64, 4096] {
        let mut hdr = [0u8; 92];
        disk.seek(SeekFrom::Start(sector))?;
        if disk.read_exact(&mut hdr).is_err() || &hdr[..8] != b"EFI PART" {
            continue;
        }
        let (entries_lba, count, size) = (
            le64(&hdr[72..]),
            le32(&hdr[80..]),
            le32(&hdr[84..]) as usize,
        );
        if !(128..=4096).contains(&size) || count > 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "implausible GPT header",
            ));
        }
        let mut table = vec![0u8; count as usize * size];
        disk.seek(SeekFrom::Start(entries_lba * sector))?;
        disk.read_exact(&mut table)?;
        let mut out = Vec::new();
        for (i, e) in table.chunks(size).enumerate() {
            if e[..16].iter().all(|b| *b == 0) {
                continue; // unused entry (zero type GUID)
            }
            let (first, last) = (le64(&e[32..]), le64(&e[40..]));
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|c| *c != 0)
                .collect();
            out.push(Partition {
                index: i + 1,
                name: String::from_utf16_lossy(&name),
                first_byte: first * sector,
                len: (last + 1 - first) * sector,
            });
        }
        return Ok(out);
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no GPT found"))
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT header and entry-array checksums use (UEFI spec
/// §5.3.2).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// What [`grow_last_partition`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub index: usize,
    pub old_len: u64,
    pub new_len: u64,
}

/// Move the backup GPT to the end of a disk larger than the image written to it and extend the
/// last partition (the golden image's root) over the new space; the filesystem inside is grown
/// on first boot (cloud-init resizefs). `disk_len` is the device's size in bytes. Returns
/// `None` when there is nothing to grow.
///
/// Everything is rewritten the way the UEFI spec (§5.3) wants it: primary header (alternate
/// LBA, last usable LBA, entry-array CRC, header CRC), backup entry array and backup header in
/// the last sectors, and the protective MBR's size. The stale backup header inside the grown
/// partition is zeroed so no tool mistakes it for the real one.
pub fn grow_last_partition<D: Read + Write + Seek>(
    disk: &mut D,
    disk_len: u64,
) -> io::Result<Option<Grown>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let sector = [512u64, 4096]
        .into_iter()
        .find(|s| {
            let mut sig = [0u8; 8];
            disk.seek(SeekFrom::Start(*s)).is_ok()
                && disk.read_exact(&mut sig).is_ok()
                && &sig == b"EFI PART"
        })
        .ok_or_else(|| bad("no GPT found"))?;
    let mut hdr = vec![0u8; sector as usize];
    disk.seek(SeekFrom::Start(sector))?;
    disk.read_exact(&mut hdr)?;
    let hsize = le32(&hdr[12..]) as usize;
    if !(92..=sector as usize).contains(&hsize) {
        return Err(bad("implausible GPT header size"));
    }
    let (old_alt, entries_lba, count, esize) = (
        le64(&hdr[32..]),
        le64(&hdr[72..]),
        le32(&hdr[80..]) as u64,
        le32(&hdr[84..]) as u64,
    );
    if !(128..=4096).contains(&esize) || count > 1024 {
        return Err(bad("implausible GPT header"));
    }
    let mut table = vec![0u8; (count * esize) as usize];
    disk.seek(SeekFrom::Start(entries_lba * sector))?;
    disk.read_exact(&mut table)?;
    let sectors = disk_len / sector;
    let table_sectors = (count * esize).div_ceil(sector);
    let new_alt = sectors - 1;
    if new_alt <= old_alt {
        return Ok(None);
    }
    let new_last_usable = new_alt - table_sectors - 1;
    let (idx, old_last, first) = table
        .chunks(esize as usize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
        .map(|(i, e)| (i, le64(&e[40..]), le64(&e[32..])))
        .max_by_key(|(_, last, _)| *last)
        .ok_or_else(|| bad("the GPT has no partitions"))?;
    let e = &mut table[idx * esize as usize..][..esize as usize];
    e[40..48].copy_from_slice(&new_last_usable.to_le_bytes());
    let table_crc = crc32(&table);

    let seal = |h: &mut [u8]| {
        h[16..20].fill(0);
        let c = crc32(&h[..hsize]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
    };
    let mut primary = hdr.clone();
    primary[32..40].copy_from_slice(&new_alt.to_le_bytes());
    primary[48..56].copy_from_slice(&new_last_usable.to_le_bytes());
    primary[88..92].copy_from_slice(&table_crc.to_le_bytes());
    seal(&mut primary);
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&new_alt.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&(new_alt - table_sectors).to_le_bytes());
    seal(&mut backup);

    // Backup first, primary last: until the primary is rewritten the disk is the old,
    // consistent image (its backup header is still where the primary says).
    disk.seek(SeekFrom::Start((new_alt - table_sectors) * sector))?;
    disk.write_all(&table)?;
    disk.seek(SeekFrom::Start(new_alt * sector))?;
    disk.write_all(&backup)?;
    disk.seek(SeekFrom::Start(entries_lba * sector))?;
    disk.write_all(&table)?;
    disk.seek(SeekFrom::Start(sector))?;
    disk.write_all(&primary)?;
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    if mbr[450] == 0xEE {
        let size = (sectors - 1).min(u32::MAX as u64) as u32;
        disk.seek(SeekFrom::Start(446 + 12))?;
        disk.write_all(&size.to_le_bytes())?;
    }
    disk.seek(SeekFrom::Start(old_alt * sector))?;
    disk.write_all(&vec![0u8; sector as usize])?;
    disk.flush()?;
    Ok(Some(Grown {
        index: idx + 1,
        old_len: (old_last + 1 - first) * sector,
        new_len: (new_last_usable + 1 - first) * sector,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// A real sfdisk GPT in a file that is then enlarged, as an image written to a bigger disk.
    #[test]
    fn the_last_partition_grows_to_the_end_and_sfdisk_finds_the_table_consistent() {
        if !crate::testutil::have("sfdisk", "fdisk") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0u8; 16 << 20]).unwrap();
        let mut sf = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&p)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        sf.stdin
            .take()
            .unwrap()
            .write_all(b"label: gpt\nstart=2048, size=4096, type=U, name=esp\nstart=6144, size=2048, name=cidata\nstart=8192, name=root\n")
            .unwrap();
        assert!(sf.wait().unwrap().success());
        let before = partitions(&mut std::fs::File::open(&p).unwrap()).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.set_len(64 << 20).unwrap();
        let mut f = f;
        let g = grow_last_partition(&mut f, 64 << 20)
            .unwrap()
            .expect("grown");
        assert_eq!(g.index, 3);
        assert_eq!(g.old_len, before[2].len);
        let after = partitions(&mut std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(after[..2], before[..2], "other partitions untouched");
        // 64 MiB disk: 131072 sectors; backup table 32 sectors + header → last usable 131038.
        assert_eq!(after[2].first_byte, 8192 * 512);
        assert_eq!(after[2].len, (131038 + 1 - 8192) * 512);
        assert_eq!(g.new_len, after[2].len);
        let verify = Command::new("sfdisk")
            .arg("--verify")
            .arg(&p)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&verify.stdout).to_string()
            + &String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success(), "{out}");
        assert!(!out.to_lowercase().contains("corrupt"), "{out}");
        let dump = Command::new("sfdisk").arg("-d").arg(&p).output().unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout).to_string()
            + &String::from_utf8_lossy(&dump.stderr);
        assert!(dump.contains("last-lba: 131038"), "{dump}");
        assert!(!dump.to_lowercase().contains("mismatch"), "{dump}");
        // Run again: nothing left to grow.
        assert_eq!(grow_last_partition(&mut f, 64 << 20).unwrap(), None);
    }
}
