//! ironseed images: what touches a node's disks. One image-writing path (used by the network
//! installer and the USB writer alike), the install-disk selection that keeps data disks safe,
//! and the image catalog with its verified, resumable fetch.

pub mod api_token;
pub mod ata;
pub mod bundle;
pub mod catalog;
pub mod cidata;
pub mod disk;
pub mod fetch;
pub mod fsutil;
pub mod golden;
pub mod gpt;
pub mod http;
pub mod initramfs;
pub mod inspect;
pub mod install;
pub mod iso9660;
pub mod plan;
pub mod stick;
pub mod system;
pub mod usb;
pub mod write;

/// The workspace's rule for skips and golden files, shared with every crate's tests.
#[cfg(test)]
#[path = "../tests/support/ci.rs"]
pub(crate) mod ci;

#[cfg(test)]
pub(crate) mod testutil {
    /// Whether `tool` runs here. Missing: a loud skip, or a failure under CI, where
    /// tests/packages.txt installs `package`.
    pub fn have(tool: &str, package: &str) -> bool {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok()
            || crate::ci::skip(&format!("{tool} (package {package}) is not installed"))
    }
}
