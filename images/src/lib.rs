//! ironseed images: what touches a node's disks. One image-writing path (used by the network
//! installer and the USB writer alike), the install-disk selection that keeps data disks safe,
//! and the image catalog with its verified, resumable fetch.

pub mod catalog;
pub mod cidata;
pub mod disk;
pub mod fetch;
pub mod golden;
pub mod gpt;
pub mod http;
pub mod initramfs;
pub mod install;
pub mod iso9660;
pub mod plan;
pub mod stick;
pub mod system;
pub mod usb;
pub mod write;
