//! A NoCloud seed volume: a small FAT12 filesystem labelled `CIDATA` holding a node's
//! `user-data`, `meta-data` and `network-config`. cloud-init 22.4 reads such a volume (by its
//! label, all upper or all lower case) including `network-config`, which an HTTP seed never
//! delivers. Built in memory without mounting (this kernel cannot mount vfat), byte-identical for
//! the same files: the volume id comes from the caller, the timestamps are the FAT epoch.

use std::io::{Cursor, Read, Write};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

/// The files of a seed, in the order they are written.
pub const SEED_FILES: [&str; 3] = ["user-data", "meta-data", "network-config"];

/// The golden image's seed slot is a 1 MiB partition; a seed is a few tens of KiB.
pub const DEFAULT_SIZE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CidataError {
    #[error("building the CIDATA volume: {0}")]
    Io(#[from] std::io::Error),
    #[error("the seed files ({0} bytes) do not fit a {1}-byte CIDATA volume")]
    TooBig(usize, usize),
}

/// A FAT12 image of `size` bytes labelled CIDATA with `files` (name, content) at its root.
pub fn build(files: &[(&str, &[u8])], volume_id: u32, size: usize) -> Result<Vec<u8>, CidataError> {
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    // Leave room for the FATs, root directory and cluster rounding.
    if total + 64 * 1024 > size {
        return Err(CidataError::TooBig(total, size));
    }
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat12)
            .volume_label(*b"CIDATA     ")
            .volume_id(volume_id),
    )?;
    disk.set_position(0);
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new())?;
        for (name, bytes) in files {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(bytes)?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// A seed file read back: its name and content.
pub type SeedFile = (String, Vec<u8>);

/// A FAT seed volume read back: its label and the seed files (of [`SEED_FILES`]) at its root,
/// in that order. What a node's cloud-init will find, for checking a written disk or stick.
pub fn read(volume: &[u8]) -> Result<(String, Vec<SeedFile>), CidataError> {
    // fatfs wants a writable device even to read: work on a copy (1 MiB).
    let fs = FileSystem::new(Cursor::new(volume.to_vec()), FsOptions::new())?;
    let mut files = Vec::new();
    for name in SEED_FILES {
        let Ok(mut f) = fs.root_dir().open_file(name) else {
            continue;
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        files.push((name.to_string(), b));
    }
    Ok((fs.volume_label(), files))
}

/// The same seed as an ISO9660 volume labelled `cidata` (what `genisoimage -V cidata -J -R`
/// makes, and what Proxmox and most cloud images expect on a CD-ROM). Rock Ridge keeps the names
/// `user-data` etc.; the volume's dates come from `volume_id` (blkid turns them into the UUID), so
/// nodes get distinct by-uuid links and the same node the same bytes.
pub fn build_iso(
    files: &[(&str, &[u8])],
    volume_id: u32,
) -> Result<Vec<u8>, crate::iso9660::IsoError> {
    crate::iso9660::build(
        files,
        "cidata",
        crate::iso9660::Stamp::epoch_plus(volume_id),
    )
}

/// A stable volume id (FAT serial) for a node: the same node always gets the same id, so
/// renders stay byte-deterministic, and nodes differ so udev's by-uuid links do not collide.
pub fn volume_id_for(hostname: &str) -> u32 {
    // FNV-1a: tiny, stable across platforms and releases.
    let mut h: u32 = 0x811c9dc5;
    for b in hostname.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn seed() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("user-data", b"#cloud-config\nhostname: k3s1\n".as_slice()),
            ("meta-data", b"instance-id: iid-k3s1\n".as_slice()),
            ("network-config", b"version: 2\n".as_slice()),
        ]
    }

    #[test]
    fn deterministic_and_readable_back() {
        let a = build(&seed(), volume_id_for("k3s1"), DEFAULT_SIZE).unwrap();
        let b = build(&seed(), volume_id_for("k3s1"), DEFAULT_SIZE).unwrap();
        assert!(a == b, "same input, same bytes");
        let c = build(&seed(), volume_id_for("k3s2"), DEFAULT_SIZE).unwrap();
        assert!(a != c, "volume id differs per node");
        let fs = FileSystem::new(Cursor::new(a.clone()), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat12);
        let (label, files) = read(&a).unwrap();
        assert_eq!(label, "CIDATA");
        let want: Vec<(String, Vec<u8>)> = seed()
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect();
        assert_eq!(files, want);
    }

    #[test]
    fn too_big_a_seed_is_refused() {
        let big = vec![b'x'; DEFAULT_SIZE];
        assert!(matches!(
            build(&[("user-data", &big)], 1, DEFAULT_SIZE),
            Err(CidataError::TooBig(..))
        ));
    }

    /// The volume as the real tools see it: blkid (what cloud-init's lookup by label uses),
    /// fsck.fat and mtools. Skipped loudly where they are missing, never in CI.
    #[test]
    fn real_tools_accept_the_volume() {
        let tools = [
            ("blkid", "util-linux"),
            ("fsck.fat", "dosfstools"),
            ("mcopy", "mtools"),
        ];
        if !tools.iter().all(|(t, p)| crate::testutil::have(t, p)) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cidata.img");
        std::fs::write(
            &img,
            build(&seed(), volume_id_for("k3s1"), DEFAULT_SIZE).unwrap(),
        )
        .unwrap();
        let out = Command::new("blkid").arg("-p").arg(&img).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("LABEL=\"CIDATA\"") && text.contains("TYPE=\"vfat\""),
            "{text}"
        );
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for (name, want) in seed() {
            let out = Command::new("mcopy")
                .args(["-n", "-i"])
                .arg(&img)
                .arg(format!("::{name}"))
                .arg("-")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, want, "{name}");
        }
    }

    /// The ISO variant as isoinfo, xorriso and blkid see it: volume id `cidata`, Rock Ridge
    /// names, byte-identical content. Skipped loudly where the tools are missing, never in CI.
    #[test]
    fn real_tools_accept_the_iso_variant() {
        let tools = [
            ("isoinfo", "genisoimage"),
            ("xorriso", "xorriso"),
            ("blkid", "util-linux"),
        ];
        if !tools.iter().all(|(t, p)| crate::testutil::have(t, p)) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("cidata.iso");
        let bytes = build_iso(&seed(), volume_id_for("k3s1")).unwrap();
        assert!(bytes == build_iso(&seed(), volume_id_for("k3s1")).unwrap());
        std::fs::write(&img, &bytes).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        let d = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&img));
        let text = String::from_utf8_lossy(&d.stdout);
        assert!(text.contains("Volume id: cidata\n"), "{text}");
        assert!(
            text.contains("Rock Ridge signatures version 1 found"),
            "{text}"
        );
        let b = run(Command::new("blkid").arg("-p").arg(&img));
        let text = String::from_utf8_lossy(&b.stdout);
        assert!(
            text.contains("LABEL=\"cidata\"") && text.contains("TYPE=\"iso9660\""),
            "{text}"
        );
        let l = run(Command::new("isoinfo").args(["-R", "-l", "-i"]).arg(&img));
        let text = String::from_utf8_lossy(&l.stdout);
        let out = dir.path().join("x");
        run(Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&img)
            .args(["-extract", "/"])
            .arg(&out));
        for (name, want) in seed() {
            assert!(text.contains(&format!(" {name}")), "{name} in {text}");
            let x = run(Command::new("isoinfo")
                .args(["-R", "-i"])
                .arg(&img)
                .args(["-x", &format!("/{name}")]));
            assert_eq!(x.stdout, want, "isoinfo -x {name}");
            assert_eq!(
                std::fs::read(out.join(name)).unwrap(),
                want,
                "xorriso {name}"
            );
        }
    }
}
