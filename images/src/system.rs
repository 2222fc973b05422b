//! The real machine under the installer: disks from `lsblk` and udev's `/dev/disk/by-*` links,
//! and an exclusive open of the chosen block device (fails if anything holds it).

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::disk::{self, Disk};
use crate::install::Machine;

pub struct System;

/// Every `/dev/disk/by-path/*` and `/dev/disk/by-id/*` link with the device it resolves to.
pub fn disk_links() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["/dev/disk/by-path", "/dev/disk/by-id"] {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(target) = std::fs::canonicalize(e.path()) {
                out.push((e.path().display().to_string(), target.display().to_string()));
            }
        }
    }
    out
}

impl Machine for System {
    fn disks(&self) -> io::Result<Vec<Disk>> {
        let out = Command::new("lsblk")
            .args([
                "-J",
                "-b",
                "-o",
                "NAME,PATH,MODEL,SERIAL,WWN,SIZE,ROTA,RM,RO,TYPE,MOUNTPOINTS",
            ])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "lsblk: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        disk::parse_lsblk(&String::from_utf8_lossy(&out.stdout), &disk_links())
            .map_err(io::Error::other)
    }

    fn open(&self, d: &Disk) -> io::Result<File> {
        let mut o = File::options();
        o.read(true).write(true);
        // O_EXCL on a block device: refuse if it is mounted or otherwise claimed (Linux semantics).
        if Path::new(&d.path).starts_with("/dev") {
            o.custom_flags(nix::libc::O_EXCL);
        }
        o.open(&d.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_disks_are_listed_and_its_root_disk_is_never_a_target() {
        if Command::new("lsblk").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "lsblk missing in CI");
            eprintln!("SKIP: no lsblk");
            return;
        }
        let disks = System.disks().unwrap();
        let root = disks.iter().find(|d| d.mounts.iter().any(|m| m == "/"));
        if let Some(root) = root {
            let s = disk::Selector {
                min_size_gb: Some(0),
                ..Default::default()
            };
            // Whatever else matches, the mounted root disk is either ambiguous or refused.
            if let Ok(d) = disk::select(std::slice::from_ref(root), &s, &[]) {
                panic!("selected the mounted root disk {}", d.path);
            }
        }
    }
}
