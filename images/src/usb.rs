//! Writing an image to a USB stick: whether a device may be written (a pure decision over facts
//! the system layer gathers, `system::device_facts`), and the write itself through the one
//! image-writing path (`write::write_image`) followed by a read-back of the device.

use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::bundle::hex;
use crate::write::{self, Compression, ImageSpec, Target, WriteError};

/// What the system layer found out about a write target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The path as given, and what it resolves to (`/dev/disk/by-id/...` → `/dev/sdb`).
    pub path: String,
    pub resolved: String,
    /// A block device (false: a regular file or anything else).
    pub is_block: bool,
    /// A partition (`/dev/sdb1`) rather than a whole disk.
    pub is_partition: bool,
    /// Bytes; `None` for a regular file (it grows).
    pub size: Option<u64>,
    /// `/sys/block/X/removable` is 1.
    pub removable: bool,
    /// The device hangs off a USB controller (its `/sys/dev/block/M:m` path has `/usbN/`).
    pub usb: bool,
    pub read_only: bool,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Mount points of the device and of each of its partitions (/proc/self/mountinfo).
    pub mounts: Vec<String>,
    /// Device-mapper, md or other holders of the device or its partitions (`holders/`).
    pub holders: Vec<String>,
    /// The device backs `/` or `/boot` (directly, through a partition, or under dm/md).
    pub holds_system: bool,
}

impl DeviceFacts {
    /// One line for the confirmation prompt: model, size, serial, transport.
    pub fn describe(&self) -> String {
        let name = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let size = match self.size {
            Some(s) => format!("{:.1} GB ({s} bytes)", s as f64 / 1e9),
            None => "size n/a (regular file)".into(),
        };
        format!(
            "{}{}: {}, {}, serial {}, {}",
            self.path,
            if self.resolved != self.path && !self.resolved.is_empty() {
                format!(" ({})", self.resolved)
            } else {
                String::new()
            },
            if name.is_empty() {
                "unknown model"
            } else {
                &name
            },
            size,
            self.serial.as_deref().unwrap_or("unknown"),
            match (self.is_block, self.usb, self.removable) {
                (false, _, _) => "not a block device",
                (true, true, _) => "USB",
                (true, false, true) => "removable",
                (true, false, false) => "fixed disk",
            }
        )
    }
}

/// What the operator allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Write a disk that is neither removable nor on USB (`--force`).
    pub force: bool,
    /// Test seam: a regular file may stand in for the device. Never set by an operator path.
    pub allow_regular_file: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("{0} is not a block device; give the stick's device, e.g. /dev/sdb")]
    NotBlock(String),
    #[error("{0} is a partition; give the whole stick (e.g. /dev/sdb, not /dev/sdb1)")]
    Partition(String),
    #[error("{path} holds the running system (/ or /boot)")]
    HoldsSystem { path: String },
    #[error("{path} is mounted at {mounts}; unmount it first")]
    Mounted { path: String, mounts: String },
    #[error("{path} is in use by {holders} (LVM, RAID or dm-crypt); release it first")]
    Held { path: String, holders: String },
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("{0} is neither removable nor on USB; if it really is the stick, pass --force")]
    NotRemovable(String),
    #[error("the image ({image} bytes) is larger than {path} ({device} bytes)")]
    TooSmall {
        path: String,
        image: u64,
        device: u64,
    },
}

/// Whether `image_len` bytes may be written to the device `f` describes. Pure; the order is
/// the order of severity, so the operator sees the most important reason first. `--force` only
/// waives "not removable": a mounted or system disk is never written.
pub fn check(f: &DeviceFacts, image_len: u64, p: Policy) -> Result<(), Refusal> {
    let path = f.path.clone();
    if !f.is_block && !p.allow_regular_file {
        return Err(Refusal::NotBlock(path));
    }
    if f.is_partition {
        return Err(Refusal::Partition(path));
    }
    if f.holds_system {
        return Err(Refusal::HoldsSystem { path });
    }
    if !f.mounts.is_empty() {
        return Err(Refusal::Mounted {
            path,
            mounts: f.mounts.join(", "),
        });
    }
    if !f.holders.is_empty() {
        return Err(Refusal::Held {
            path,
            holders: f.holders.join(", "),
        });
    }
    if f.read_only {
        return Err(Refusal::ReadOnly(path));
    }
    if f.is_block && !f.removable && !f.usb && !p.force {
        return Err(Refusal::NotRemovable(path));
    }
    if let Some(device) = f.size
        && image_len > device
    {
        return Err(Refusal::TooSmall {
            path,
            image: image_len,
            device,
        });
    }
    Ok(())
}

/// An image file as read once before writing: its checksum as stored (what the writer verifies
/// while streaming, so a file changed in between is caught), and the length and checksum of
/// what lands on the device (what the read-back compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub compression: Compression,
    pub source_sha256: String,
    pub len: u64,
    pub sha256: String,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Hash `r` to its end; returns (bytes, sha256).
fn hash_all(r: &mut dyn Read, mut also: impl FnMut(&[u8])) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        also(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(&h.finalize())))
}

/// Read an image once: zstd is recognised by its magic number, whatever the file is called.
pub fn inspect(mut src: impl Read + Seek) -> io::Result<ImageInfo> {
    let mut magic = [0u8; 4];
    let got = src.read(&mut magic)?;
    src.seek(SeekFrom::Start(0))?;
    if got == 4 && magic == ZSTD_MAGIC {
        let (_, source_sha256) = hash_all(&mut src, |_| {})?;
        src.seek(SeekFrom::Start(0))?;
        let mut dec = zstd::Decoder::new(src)?;
        let (len, sha256) = hash_all(&mut dec, |_| {})?;
        Ok(ImageInfo {
            compression: Compression::Zstd,
            source_sha256,
            len,
            sha256,
        })
    } else {
        let (len, sha256) = hash_all(&mut src, |_| {})?;
        Ok(ImageInfo {
            compression: Compression::None,
            source_sha256: sha256.clone(),
            len,
            sha256,
        })
    }
}

/// A target that can also be read back from the medium rather than from the page cache.
pub trait Device: Target + Read {
    /// Forget cached pages, so the read-back sees what the stick stored.
    fn drop_cache(&mut self) -> io::Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Writing,
    Verifying,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub written: u64,
    /// sha256 of the (decompressed) image and of the device's first `written` bytes.
    pub image_sha256: String,
    pub device_sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("reading the device back: {0}")]
    ReadBack(io::Error),
    #[error(
        "read-back mismatch: image sha256 {image}, device sha256 {device}; the stick is bad or was removed"
    )]
    Mismatch { image: String, device: String },
}

/// Write `src` (the image file, read a second time) to `dev` through the one image-writing path,
/// then read the device back over the image's length and compare checksums.
pub fn write_verified<D: Device>(
    src: impl Read,
    info: &ImageInfo,
    dev: &mut D,
    progress: &mut dyn FnMut(Phase, u64),
) -> Result<Verified, UsbError> {
    let spec = ImageSpec {
        sha256: info.source_sha256.clone(),
        compression: info.compression,
        // A stick holds whatever it held before: every zero must be written.
        target_is_zeroed: false,
    };
    let report = write::write_image(src, dev, &spec, &mut |n| progress(Phase::Writing, n))?;
    dev.drop_cache().map_err(UsbError::ReadBack)?;
    dev.seek(SeekFrom::Start(0)).map_err(UsbError::ReadBack)?;
    let mut done = 0u64;
    let mut limited = dev.take(report.written);
    let (n, device_sha256) = hash_all(&mut limited, |b| {
        done += b.len() as u64;
        progress(Phase::Verifying, done);
    })
    .map_err(UsbError::ReadBack)?;
    if n != report.written || device_sha256 != info.sha256 {
        return Err(UsbError::Mismatch {
            image: info.sha256.clone(),
            device: device_sha256,
        });
    }
    Ok(Verified {
        written: report.written,
        image_sha256: info.sha256.clone(),
        device_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn stick() -> DeviceFacts {
        DeviceFacts {
            path: "/dev/sdb".into(),
            resolved: "/dev/sdb".into(),
            is_block: true,
            size: Some(16_000_000_000),
            removable: true,
            usb: true,
            model: Some("Cruzer Blade".into()),
            serial: Some("4C530001".into()),
            ..Default::default()
        }
    }

    const NONE: Policy = Policy {
        force: false,
        allow_regular_file: false,
    };

    #[test]
    fn a_usb_stick_may_be_written() {
        assert_eq!(check(&stick(), 1 << 20, NONE), Ok(()));
        // Some USB card readers report removable=0: on USB is enough.
        let mut s = stick();
        s.removable = false;
        assert_eq!(check(&s, 1 << 20, NONE), Ok(()));
    }

    #[test]
    fn every_refusal() {
        type Case = (fn(&mut DeviceFacts), Policy, &'static str);
        let cases: Vec<Case> = vec![
            (|f| f.is_block = false, NONE, "not a block device"),
            (|f| f.is_partition = true, NONE, "is a partition"),
            (|f| f.holds_system = true, NONE, "holds the running system"),
            (
                |f| f.mounts = vec!["/media/stick".into()],
                NONE,
                "mounted at /media/stick",
            ),
            (|f| f.holders = vec!["dm-0".into()], NONE, "in use by dm-0"),
            (|f| f.read_only = true, NONE, "read-only"),
            (
                |f| {
                    f.removable = false;
                    f.usb = false
                },
                NONE,
                "pass --force",
            ),
            (|f| f.size = Some(1000), NONE, "larger than"),
            // --force waives only "not removable".
            (
                |f| {
                    f.removable = false;
                    f.usb = false;
                    f.holds_system = true
                },
                Policy {
                    force: true,
                    ..NONE
                },
                "running system",
            ),
            (
                |f| f.mounts = vec!["/".into()],
                Policy {
                    force: true,
                    allow_regular_file: true,
                },
                "mounted",
            ),
        ];
        for (edit, policy, want) in cases {
            let mut f = stick();
            edit(&mut f);
            let e = check(&f, 1 << 20, policy).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn force_allows_a_fixed_disk_and_the_seam_a_file() {
        let mut f = stick();
        f.removable = false;
        f.usb = false;
        let force = Policy {
            force: true,
            ..NONE
        };
        assert_eq!(check(&f, 1, force), Ok(()));
        let file = DeviceFacts {
            path: "/tmp/x.img".into(),
            size: None,
            ..Default::default()
        };
        let seam = Policy {
            allow_regular_file: true,
            ..NONE
        };
        assert_eq!(check(&file, u64::MAX, seam), Ok(()));
    }

    #[test]
    fn describe_shows_model_size_serial() {
        let d = stick().describe();
        assert!(
            d.contains("Cruzer Blade") && d.contains("16.0 GB") && d.contains("4C530001"),
            "{d}"
        );
    }

    /// A device in memory; `corrupt` flips a byte of what it returns when read back.
    struct Mem {
        data: Cursor<Vec<u8>>,
        corrupt: Option<usize>,
        dropped: bool,
    }
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.data.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Seek for Mem {
        fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
            self.data.seek(p)
        }
    }
    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let at = self.data.position() as usize;
            let n = self.data.read(b)?;
            if let Some(c) = self.corrupt
                && (at..at + n).contains(&c)
            {
                b[c - at] ^= 0x01;
            }
            Ok(n)
        }
    }
    impl Target for Mem {
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Device for Mem {
        fn drop_cache(&mut self) -> io::Result<()> {
            self.dropped = true;
            Ok(())
        }
    }

    fn image() -> Vec<u8> {
        (0..(3 << 20) + 5)
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }

    fn mem(corrupt: Option<usize>) -> Mem {
        // Old data beyond the image's end must not count in the read-back.
        Mem {
            data: Cursor::new(vec![0x5a; 8 << 20]),
            corrupt,
            dropped: false,
        }
    }

    #[test]
    fn raw_and_zstd_images_are_written_and_read_back() {
        let img = image();
        for src in [img.clone(), zstd::encode_all(&img[..], 3).unwrap()] {
            let info = inspect(Cursor::new(&src)).unwrap();
            assert_eq!(info.len, img.len() as u64);
            assert_eq!(info.sha256, hex(&Sha256::digest(&img)));
            let mut d = mem(None);
            let mut last = (Phase::Writing, 0);
            let v = write_verified(&src[..], &info, &mut d, &mut |p, n| last = (p, n)).unwrap();
            assert_eq!(v.image_sha256, v.device_sha256);
            assert_eq!(last, (Phase::Verifying, img.len() as u64));
            assert!(d.dropped);
            assert!(d.data.get_ref()[..img.len()] == img[..]);
        }
    }

    #[test]
    fn a_read_back_mismatch_is_reported_with_both_checksums() {
        let img = image();
        let info = inspect(Cursor::new(&img)).unwrap();
        let mut d = mem(Some(2 << 20));
        let e = write_verified(&img[..], &info, &mut d, &mut |_, _| {}).unwrap_err();
        match e {
            UsbError::Mismatch { image, device } => {
                assert_eq!(image, info.sha256);
                assert_ne!(device, image);
            }
            e => panic!("{e}"),
        }
    }

    #[test]
    fn an_image_changed_between_inspect_and_write_is_caught() {
        let img = image();
        let info = inspect(Cursor::new(&img)).unwrap();
        let mut other = img.clone();
        other[7] ^= 1;
        let e = write_verified(&other[..], &info, &mut mem(None), &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(e, UsbError::Write(WriteError::Checksum { .. })),
            "{e}"
        );
    }
}
