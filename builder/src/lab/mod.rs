//! `builder lab`: the inventory's machines as qemu VMs on a private network, served by a real
//! `pxe serve`, for rehearsals and failure drills (docs/lab.md).

pub mod apply;
pub mod cluster;
pub mod drill;
pub mod fail;
pub mod net;
pub mod power;
pub mod qmp;
pub mod state;
pub mod table;
pub mod vm;
