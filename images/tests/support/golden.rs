//! A stand-in golden image for tests that install or package one: 8 MiB laid out exactly as
//! `builder images build` lays out the real one (`images::golden::layout`: the ESP as p1, the
//! 1 MiB `cidata` slot as p2, the root last as p3, the same type GUIDs, IDs and
//! LegacyBIOSBootable flag), its GPT written by the real sfdisk (fdisk package) from the real
//! `sfdisk_script`. The partitions hold a pattern instead of filesystems, so every byte the
//! installer must carry over is checkable. Included with `#[path]` by the tests of other crates.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use images::golden::layout::{self, IDS, Layout, MIB};

/// The stand-in image and where its partitions are.
pub struct Golden {
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

impl Golden {
    /// The `cidata` slot (p2) as a byte range of the image.
    pub fn cidata(&self) -> std::ops::Range<usize> {
        let l = &self.layout;
        l.cidata_start as usize..(l.cidata_start + l.cidata_len) as usize
    }

    /// The root partition (p3) as a byte range of the image.
    pub fn root(&self) -> std::ops::Range<usize> {
        let l = &self.layout;
        l.root_start as usize..(l.root_start + l.root_len) as usize
    }
}

/// Write the image to `dir/golden.raw` and return it. The first MiB is zero before the table is
/// written, as in the real image; `cidata_zeroed`: the seed slot is zero too, as the real image
/// ships it (otherwise it holds the pattern, standing in for a seed left over from elsewhere).
pub fn golden_image(dir: &Path, cidata_zeroed: bool) -> Golden {
    // 1 MiB ESP, the 1 MiB slot, 4 MiB root: 8 MiB with the first MiB and the backup GPT's.
    let l = layout::layout(MIB, 4 * MIB);
    assert_eq!(l.total, 8 * MIB);
    let raw = dir.join("golden.raw");
    let mut img: Vec<u8> = (0..l.total as usize)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2])
        .collect();
    img[..MIB as usize].fill(0);
    let g = Golden {
        bytes: Vec::new(),
        layout: l,
    };
    if cidata_zeroed {
        img[g.cidata()].fill(0);
    }
    std::fs::write(&raw, &img).unwrap();
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (fdisk package)");
    sf.stdin
        .take()
        .unwrap()
        .write_all(layout::sfdisk_script(&g.layout, &IDS).as_bytes())
        .unwrap();
    assert!(sf.wait().unwrap().success());
    Golden {
        bytes: std::fs::read(&raw).unwrap(),
        ..g
    }
}
