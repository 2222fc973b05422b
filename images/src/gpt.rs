//! Just enough GPT to find a partition by name in a freshly written image: the golden image
//! carries a small partition named `cidata` that receives the node's seed, so the root
//! filesystem never has to be rebuilt (or mounted) per node.

use std::io::{self, Read, Seek, SeekFrom};

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
