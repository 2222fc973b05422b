//! The one way an image reaches a disk, for the network installer and the USB writer alike:
//! the source stream is hashed while it is read (the catalog's sha256 is of the file as
//! published, compressed or not), decompressed, and written in large chunks; the first MiB
//! (partition table, boot code) is held back and written last, only after the checksum matched,
//! then everything is synced. A disk whose write failed or whose image did not verify never
//! boots: its first MiB is zeroed.

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::bundle::hex;
use sha2::{Digest, Sha256};

pub const HEAD: usize = 1 << 20;
const CHUNK: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// sha256 of the source stream, lowercase hex.
    pub sha256: String,
    pub compression: Compression,
    /// Skip writing all-zero blocks. Only correct when the target is known to read back zeroes
    /// (a fresh sparse file, a new or discarded disk); a reused disk must get real zeroes.
    pub target_is_zeroed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Bytes of image written (uncompressed), first MiB included.
    pub written: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "image checksum mismatch: expected {expected}, got {actual}; the disk was left unbootable"
    )]
    Checksum { expected: String, actual: String },
    #[error("reading the image: {0}")]
    Read(io::Error),
    #[error("writing the disk: {0}")]
    Write(io::Error),
    #[error("the image is empty")]
    Empty,
}

/// Where an image goes: a block device or a regular file.
pub trait Target: Write + Seek {
    fn sync(&mut self) -> io::Result<()>;
    /// Make `len` bytes at `offset` read back as zeroes without writing them, if the target can
    /// (a disk's write-zeroes/discard, a file's zero range). `Ok(false)`: write them instead.
    fn zero_range(&mut self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
}

impl Target for std::fs::File {
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }

    /// fallocate(FALLOC_FL_ZERO_RANGE): on a block device the kernel turns it into
    /// BLKZEROOUT (write-zeroes or unmap on the device, a real zero-fill where it has neither),
    /// so a reused disk still reads back zeroes. Writing a raw image's gigabyte of empty
    /// filesystem through write() dominated install time under emulation
    /// (docs/reference.md "Golden image recipe").
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        use nix::fcntl::{FallocateFlags, fallocate};
        match fallocate(
            &*self,
            FallocateFlags::FALLOC_FL_ZERO_RANGE,
            offset as i64,
            len as i64,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EINVAL) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// Hashes every byte that passes through, so the checksum covers exactly what was read.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Fill `buf` as far as the reader goes; returns how much was read (short only at EOF).
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Write `src` to `target`. `progress` gets the uncompressed bytes written so far.
pub fn write_image<T: Target>(
    src: impl Read,
    target: &mut T,
    spec: &ImageSpec,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteReport, WriteError> {
    let result = write_inner(src, target, spec, progress);
    if result.is_err() {
        // Best effort: whatever went wrong, the disk must not boot a half-written system.
        let _ = wipe_head(target);
    }
    result
}

/// Zero the first MiB (partition tables, boot code) and sync.
pub fn wipe_head<T: Target>(target: &mut T) -> io::Result<()> {
    target.seek(SeekFrom::Start(0))?;
    target.write_all(&vec![0u8; HEAD])?;
    target.sync()
}

fn write_inner<T: Target>(
    src: impl Read,
    target: &mut T,
    spec: &ImageSpec,
    progress: &mut dyn FnMut(u64),
) -> Result<WriteReport, WriteError> {
    let mut hashing = Hashing {
        inner: src,
        hash: Sha256::new(),
    };
    let mut head = vec![0u8; HEAD];
    let mut written: u64;
    let mut buf = vec![0u8; CHUNK];
    {
        let mut decoded: Box<dyn Read + '_> = match spec.compression {
            Compression::None => Box::new(&mut hashing),
            Compression::Zstd => {
                Box::new(zstd::Decoder::new(&mut hashing).map_err(WriteError::Read)?)
            }
        };
        let head_len = fill(&mut *decoded, &mut head).map_err(WriteError::Read)?;
        if head_len == 0 {
            return Err(WriteError::Empty);
        }
        head.truncate(head_len);
        written = head_len as u64;
        // The head is withheld: zero it on the target now, so an interrupted write cannot leave
        // an old partition table in front of a new system.
        target.seek(SeekFrom::Start(0)).map_err(WriteError::Write)?;
        target
            .write_all(&vec![0u8; head_len])
            .map_err(WriteError::Write)?;
        progress(written);
        loop {
            let n = fill(&mut *decoded, &mut buf).map_err(WriteError::Read)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let zero = chunk.iter().all(|b| *b == 0);
            if zero
                && (spec.target_is_zeroed
                    || target
                        .zero_range(written, n as u64)
                        .map_err(WriteError::Write)?)
            {
                target
                    .seek(SeekFrom::Current(n as i64))
                    .map_err(WriteError::Write)?;
            } else {
                target.write_all(chunk).map_err(WriteError::Write)?;
            }
            written += n as u64;
            progress(written);
        }
    }
    // The decoder may stop before the end of the stream (trailing frames, padding): hash it all.
    io::copy(&mut hashing, &mut io::sink()).map_err(WriteError::Read)?;
    let actual = hex(&hashing.hash.finalize());
    if actual != spec.sha256.to_ascii_lowercase() {
        return Err(WriteError::Checksum {
            expected: spec.sha256.clone(),
            actual,
        });
    }
    // A skipped zero tail leaves a regular file short (the position moved, the length did not):
    // extend it to the image's full length. A block device is always long enough.
    let end = target.seek(SeekFrom::End(0)).map_err(WriteError::Write)?;
    if end < written {
        target
            .seek(SeekFrom::Start(written - 1))
            .map_err(WriteError::Write)?;
        target.write_all(&[0]).map_err(WriteError::Write)?;
    }
    target.sync().map_err(WriteError::Write)?;
    target.seek(SeekFrom::Start(0)).map_err(WriteError::Write)?;
    target.write_all(&head).map_err(WriteError::Write)?;
    target.sync().map_err(WriteError::Write)?;
    Ok(WriteReport {
        written,
        sha256: actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A target that records the order of writes by offset, to prove the head goes last.
    struct Recorder {
        data: Cursor<Vec<u8>>,
        writes: Vec<(u64, usize)>,
        syncs: usize,
        fail_after: Option<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.fail_after.is_some_and(|n| self.writes.len() >= n) {
                return Err(io::Error::other("disk on fire"));
            }
            self.writes.push((self.data.position(), b.len()));
            self.data.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Recorder {
        fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
            self.data.seek(p)
        }
    }
    impl Target for Recorder {
        fn sync(&mut self) -> io::Result<()> {
            self.syncs += 1;
            Ok(())
        }
    }

    fn recorder() -> Recorder {
        Recorder {
            data: Cursor::new(vec![]),
            writes: vec![],
            syncs: 0,
            fail_after: None,
        }
    }

    fn image(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
            .collect()
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn spec(sha256: String, compression: Compression) -> ImageSpec {
        ImageSpec {
            sha256,
            compression,
            target_is_zeroed: false,
        }
    }

    #[test]
    fn raw_image_is_written_exactly_with_the_head_last() {
        let img = image(3 * HEAD + 123);
        let mut t = recorder();
        let mut seen = 0;
        let r = write_image(
            &img[..],
            &mut t,
            &spec(sha(&img), Compression::None),
            &mut |n| seen = n,
        )
        .unwrap();
        assert_eq!(r.written, img.len() as u64);
        assert_eq!(seen, img.len() as u64);
        assert!(*t.data.get_ref() == img, "bytes differ");
        // First a placeholder for the head (zeroes), then the body, then the real head.
        let last = *t.writes.last().unwrap();
        assert_eq!(last, (0, HEAD));
        assert!(
            t.writes[1..t.writes.len() - 1]
                .iter()
                .all(|(off, _)| *off >= HEAD as u64)
        );
        assert!(t.syncs >= 2);
    }

    #[test]
    fn zstd_image_is_verified_on_the_compressed_bytes() {
        let img = image(2 * HEAD + 7);
        let packed = zstd::encode_all(&img[..], 3).unwrap();
        let mut t = recorder();
        let r = write_image(
            &packed[..],
            &mut t,
            &spec(sha(&packed), Compression::Zstd),
            &mut |_| {},
        )
        .unwrap();
        assert!(*t.data.get_ref() == img, "bytes differ");
        assert_eq!(r.sha256, sha(&packed));
    }

    #[test]
    fn checksum_mismatch_leaves_the_disk_unbootable() {
        let img = image(2 * HEAD);
        let mut t = recorder();
        // An old system on the disk: its first MiB must not survive either.
        t.data.get_mut().extend(vec![0xAA; 3 * HEAD]);
        let e = write_image(
            &img[..],
            &mut t,
            &spec("00".repeat(32), Compression::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Checksum { .. }), "{e}");
        assert!(
            t.data.get_ref()[..HEAD].iter().all(|b| *b == 0),
            "head wiped"
        );
    }

    #[test]
    fn a_failing_disk_is_reported_and_wiped() {
        let img = image(3 * HEAD);
        let mut t = recorder();
        t.fail_after = Some(2);
        let e = write_image(
            &img[..],
            &mut t,
            &spec(sha(&img), Compression::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Write(_)), "{e}");
    }

    #[test]
    fn zero_blocks_are_skipped_only_on_a_zeroed_target_and_the_file_keeps_its_length() {
        let mut img = image(HEAD);
        img.extend(vec![0u8; 2 * CHUNK]);
        img.extend(image(100));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&p).unwrap();
        let mut s = spec(sha(&img), Compression::None);
        s.target_is_zeroed = true;
        write_image(&img[..], &mut f, &s, &mut |_| {}).unwrap();
        assert!(std::fs::read(&p).unwrap() == img, "zero run in the middle");
        // Trailing zeroes: the file must still be as long as the image.
        let mut img2 = image(HEAD);
        img2.extend(vec![0u8; CHUNK]);
        let mut f = std::fs::File::create(&p).unwrap();
        let mut s = spec(sha(&img2), Compression::None);
        s.target_is_zeroed = true;
        write_image(&img2[..], &mut f, &s, &mut |_| {}).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), img2.len(), "trailing zeroes keep the length");
        assert!(got == img2);
    }

    #[test]
    fn zero_runs_on_a_reused_disk_read_back_as_zeroes_without_being_written() {
        // A "reused disk": the file holds old non-zero data where the image has zero runs.
        let mut img = image(HEAD);
        img.extend(vec![0u8; 2 * CHUNK]);
        img.extend(image(5000));
        img.extend(vec![0u8; CHUNK]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0xa5u8; img.len() + 4096]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&p)
            .unwrap();
        let s = spec(sha(&img), Compression::None);
        write_image(&img[..], &mut f, &s, &mut |_| {}).unwrap();
        let got = std::fs::read(&p).unwrap();
        assert!(
            got[..img.len()] == img[..],
            "old data under a zero run survived"
        );
        assert!(
            got[img.len()..].iter().all(|b| *b == 0xa5),
            "wrote past the image"
        );
    }

    #[test]
    fn an_empty_image_is_an_error() {
        let mut t = recorder();
        let e = write_image(
            &b""[..],
            &mut t,
            &spec(sha(b""), Compression::None),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Empty));
    }
}
