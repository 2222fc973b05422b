//! A minimal ISO9660 writer for NoCloud seeds: one root directory with a few small files, Rock
//! Ridge names (so `user-data` keeps its lowercase and dash; plain ISO9660 allows neither), fixed
//! timestamps, byte-identical output for the same input.
//!
//! Why not hadris-iso (docs/reference.md "Crate notes"): 2.5 stamps `now()` into the volume
//! descriptor and every directory record, so two renders differ; 3.0 fixes that but is a
//! release candidate. The volume needed here is ~25 sectors and this file writes all of them.
//!
//! Layout (2048-byte sectors): 0–15 system area (zero), 16 primary volume descriptor,
//! 17 terminator, 18 L path table, 19 M path table, 20 root directory, 21 Rock Ridge
//! continuation area (the ER entry does not fit in the root's own record), 22.. file data.

pub const SECTOR: usize = 2048;
const PVD: usize = 16;
const L_TABLE: u32 = 18;
const M_TABLE: u32 = 19;
const ROOT: u32 = 20;
const CONT: u32 = 21;
const FIRST_DATA: u32 = 22;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("{0:?}: a seed file name must be 1–30 characters of a-z, 0-9, `-`, `_`, `.`")]
    BadName(String),
    #[error("volume id {0:?} is longer than 32 bytes")]
    BadVolumeId(String),
    #[error("{0:?} appears twice")]
    Duplicate(String),
    #[error("the seed files do not fit one 2048-byte directory sector")]
    TooManyFiles,
}

/// A date as both ISO9660 encodings: 7-byte directory record form and 17-byte volume form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Stamp {
    /// 1980-01-01 00:00:00 UTC, the FAT epoch the FAT seed uses too.
    pub const EPOCH: Stamp = Stamp {
        year: 1980,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
    };

    /// EPOCH plus `secs` seconds (UTC, proleptic Gregorian).
    pub fn epoch_plus(secs: u32) -> Stamp {
        // Days since 1970-01-01 → civil date (Howard Hinnant's algorithm).
        let total = 315_532_800u64 + secs as u64; // 1980-01-01 in Unix seconds
        let (days, rem) = ((total / 86_400) as i64, total % 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        Stamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    fn record(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0, // GMT offset in 15-minute units
        ]
    }

    fn volume(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        out[..16].copy_from_slice(text.as_bytes());
        out
    }
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn sectors(len: usize) -> u32 {
    len.div_ceil(SECTOR) as u32
}

/// The ISO9660 (level 2) name of a Rock Ridge name: uppercase, `-` → `_`, version `;1`.
/// Readers without Rock Ridge see `USER_DATA.;1`; Linux, xorriso and isoinfo -R see `user-data`.
fn iso_name(name: &str) -> String {
    let base = name.to_ascii_uppercase().replace('-', "_");
    if base.contains('.') {
        format!("{base};1")
    } else {
        format!("{base}.;1")
    }
}

/// One directory record with its System Use entries (ECMA-119 9.1, padded to even length).
fn record(extent: u32, len: u32, dir: bool, id: &[u8], stamp: Stamp, su: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[1] = 0; // extended attribute record length
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&stamp.record());
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1)); // volume sequence number
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if id.len().is_multiple_of(2) {
        r.push(0); // padding field: the System Use area starts at an even offset
    }
    r.extend_from_slice(su);
    if !r.len().is_multiple_of(2) {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// RRIP PX (POSIX attributes, 1991A form without the serial number).
fn px(mode: u32, links: u32) -> Vec<u8> {
    let mut e = vec![b'P', b'X', 36, 1];
    e.extend_from_slice(&both32(mode));
    e.extend_from_slice(&both32(links));
    e.extend_from_slice(&both32(0)); // uid root
    e.extend_from_slice(&both32(0)); // gid root
    e
}

/// RRIP NM (the real, POSIX name).
fn nm(name: &str) -> Vec<u8> {
    let mut e = vec![b'N', b'M', 5 + name.len() as u8, 1, 0];
    e.extend_from_slice(name.as_bytes());
    e
}

/// SUSP ER naming the Rock Ridge extension (RRIP 1.10 texts, as mkisofs writes them).
fn er() -> Vec<u8> {
    const ID: &str = "RRIP_1991A";
    const DES: &str =
        "THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    const SRC: &str = "PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";
    let mut e = vec![
        b'E',
        b'R',
        (8 + ID.len() + DES.len() + SRC.len()) as u8,
        1,
        ID.len() as u8,
        DES.len() as u8,
        SRC.len() as u8,
        1,
    ];
    e.extend_from_slice(ID.as_bytes());
    e.extend_from_slice(DES.as_bytes());
    e.extend_from_slice(SRC.as_bytes());
    e
}

fn pad(field: &mut [u8], text: &str) {
    field.fill(b' ');
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// An ISO9660 image with Rock Ridge holding `files` (name, content) in its root directory.
/// `volume_id` is written as given (cloud-init looks for `cidata`, lowercase); `created` goes
/// into the volume descriptor (blkid derives the volume's UUID from it), every directory record
/// carries `Stamp::EPOCH`.
pub fn build(
    files: &[(&str, &[u8])],
    volume_id: &str,
    created: Stamp,
) -> Result<Vec<u8>, IsoError> {
    if volume_id.len() > 32 {
        return Err(IsoError::BadVolumeId(volume_id.into()));
    }
    for (i, (name, _)) in files.iter().enumerate() {
        let ok = (1..=30).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && name.bytes().filter(|b| *b == b'.').count() <= 1;
        if !ok {
            return Err(IsoError::BadName(name.to_string()));
        }
        if files[..i]
            .iter()
            .any(|(n, _)| iso_name(n) == iso_name(name))
        {
            return Err(IsoError::Duplicate(name.to_string()));
        }
    }
    // ECMA-119 9.3: directory records sorted by file identifier.
    let mut sorted: Vec<(String, &str, &[u8])> =
        files.iter().map(|(n, b)| (iso_name(n), *n, *b)).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut extent = FIRST_DATA;
    let mut placed = Vec::new();
    for (iso, name, bytes) in &sorted {
        placed.push((iso.clone(), *name, *bytes, extent));
        extent += sectors(bytes.len());
    }
    let total = extent;

    // Root directory: ".", "..", then the files.
    let er = er();
    let mut dot_su = vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0]; // SUSP in use, skip 0 bytes
    dot_su.extend_from_slice(&[b'C', b'E', 28, 1]);
    dot_su.extend_from_slice(&both32(CONT));
    dot_su.extend_from_slice(&both32(0));
    dot_su.extend_from_slice(&both32(er.len() as u32));
    dot_su.extend_from_slice(&px(0o040555, 2));
    let mut dir = record(ROOT, SECTOR as u32, true, &[0], Stamp::EPOCH, &dot_su);
    dir.extend(record(
        ROOT,
        SECTOR as u32,
        true,
        &[1],
        Stamp::EPOCH,
        &px(0o040555, 2),
    ));
    for (iso, name, bytes, at) in &placed {
        let mut su = nm(name);
        // Owner-read only: the seed carries the k3s token.
        su.extend(px(0o100400, 1));
        // An empty file has no extent; 0 is what mkisofs writes for it.
        let at = if bytes.is_empty() { 0 } else { *at };
        dir.extend(record(
            at,
            bytes.len() as u32,
            false,
            iso.as_bytes(),
            Stamp::EPOCH,
            &su,
        ));
    }
    if dir.len() > SECTOR {
        return Err(IsoError::TooManyFiles);
    }

    let mut img = vec![0u8; total as usize * SECTOR];
    let at = |s: u32| s as usize * SECTOR;

    // Primary volume descriptor (ECMA-119 8.4).
    let p = &mut img[at(PVD as u32)..at(PVD as u32 + 1)];
    p[0] = 1;
    p[1..6].copy_from_slice(b"CD001");
    p[6] = 1;
    pad(&mut p[8..40], "LINUX");
    pad(&mut p[40..72], volume_id);
    p[80..88].copy_from_slice(&both32(total));
    p[120..124].copy_from_slice(&both16(1)); // volume set size
    p[124..128].copy_from_slice(&both16(1)); // volume sequence number
    p[128..132].copy_from_slice(&both16(SECTOR as u16));
    p[132..140].copy_from_slice(&both32(10)); // path table: the root entry only
    p[140..144].copy_from_slice(&L_TABLE.to_le_bytes());
    p[148..152].copy_from_slice(&M_TABLE.to_be_bytes());
    // The root record in the descriptor carries no System Use entries (fixed 34 bytes).
    p[156..190].copy_from_slice(&record(ROOT, SECTOR as u32, true, &[0], Stamp::EPOCH, &[]));
    pad(&mut p[190..318], ""); // volume set
    pad(&mut p[318..446], ""); // publisher
    pad(&mut p[446..574], ""); // data preparer
    pad(&mut p[574..702], "IRONSEED");
    pad(&mut p[702..813], ""); // copyright, abstract, bibliographic file ids
    p[813..830].copy_from_slice(&created.volume());
    p[830..847].copy_from_slice(&created.volume());
    // Expiration and effective dates: "not specified" is sixteen '0' digits and a zero offset.
    p[847..863].fill(b'0');
    p[864..880].fill(b'0');
    p[881] = 1; // file structure version

    // Volume descriptor set terminator.
    let t = &mut img[at(PVD as u32 + 1)..];
    t[0] = 255;
    t[1..6].copy_from_slice(b"CD001");
    t[6] = 1;

    // Path tables: one entry, the root, its own parent (ECMA-119 9.4).
    for (sector, big) in [(L_TABLE, false), (M_TABLE, true)] {
        let e = &mut img[at(sector)..at(sector) + 10];
        e[0] = 1; // identifier length
        let loc = if big {
            ROOT.to_be_bytes()
        } else {
            ROOT.to_le_bytes()
        };
        e[2..6].copy_from_slice(&loc);
        e[6..8].copy_from_slice(&if big {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        });
    }

    img[at(ROOT)..at(ROOT) + dir.len()].copy_from_slice(&dir);
    img[at(CONT)..at(CONT) + er.len()].copy_from_slice(&er);
    for (_, _, bytes, s) in &placed {
        img[at(*s)..at(*s) + bytes.len()].copy_from_slice(bytes);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_arithmetic() {
        assert_eq!(Stamp::epoch_plus(0), Stamp::EPOCH);
        let s = Stamp::epoch_plus(u32::MAX);
        // 1980 + 136 years: still a 4-digit year and a valid record year (< 1900 + 256).
        assert_eq!((s.year, s.month, s.day), (2116, 2, 7));
        assert_eq!((s.hour, s.minute, s.second), (6, 28, 15));
        let leap = Stamp::epoch_plus(59 * 86_400); // 1980 is a leap year
        assert_eq!((leap.month, leap.day), (2, 29));
    }

    #[test]
    fn layout_and_determinism() {
        let files: [(&str, &[u8]); 2] = [("user-data", b"#cloud-config\n"), ("meta-data", b"")];
        let a = build(&files, "cidata", Stamp::EPOCH).unwrap();
        assert_eq!(a, build(&files, "cidata", Stamp::EPOCH).unwrap());
        assert_eq!(
            a.len(),
            23 * SECTOR,
            "one data sector, the empty file has none"
        );
        assert_eq!(&a[16 * SECTOR + 1..16 * SECTOR + 6], b"CD001");
        assert_eq!(&a[16 * SECTOR + 40..16 * SECTOR + 47], b"cidata ");
        assert_eq!(&a[22 * SECTOR..22 * SECTOR + 14], b"#cloud-config\n");
        assert_ne!(a, build(&files, "cidata", Stamp::epoch_plus(1)).unwrap());
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(
            build(&[("User Data", b"")], "cidata", Stamp::EPOCH),
            Err(IsoError::BadName(_))
        ));
        assert!(matches!(
            build(&[("a-b", b""), ("a_b", b"")], "cidata", Stamp::EPOCH),
            Err(IsoError::Duplicate(_))
        ));
        assert!(matches!(
            build(&[], &"x".repeat(33), Stamp::EPOCH),
            Err(IsoError::BadVolumeId(_))
        ));
    }
}
