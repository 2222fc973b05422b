//! ironseed images: what touches a node's disks. One image-writing path (used by the network
//! installer and the USB writer alike) and the install-disk selection that keeps data disks safe.

pub mod cidata;
pub mod disk;
pub mod gpt;
pub mod http;
pub mod install;
pub mod iso9660;
pub mod plan;
pub mod system;
pub mod usb;
pub mod write;
