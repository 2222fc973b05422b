//! A stand-in golden image for tests that install or package one: 8 MiB with a GPT made by
//! the real sfdisk (fdisk package), a 1 MiB `cidata` slot at 1 MiB and a root partition
//! full of a pattern, like the layout `builder images build` produces. Included with
//! `#[path]` by the tests of other crates.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: usize = 1 << 20;

/// Write the image to `dir/golden.raw` and return its bytes; the first `zeroed` bytes are
/// zero before the table is written (2 MiB: the `cidata` slot is empty too).
pub fn golden_image(dir: &Path, zeroed: usize) -> Vec<u8> {
    let raw = dir.join("golden.raw");
    let mut img: Vec<u8> = (0..8 * MIB)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2])
        .collect();
    img[..zeroed].fill(0);
    std::fs::write(&raw, &img).unwrap();
    let mut sf = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&raw)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package)");
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=2048, name=cidata\nstart=4096, name=root\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    std::fs::read(&raw).unwrap()
}
