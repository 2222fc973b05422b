//! Network servers. Each `run` function owns only I/O; protocol decisions live in
//! [`crate::proto`] and the policy modules.

pub mod dhcp;
pub mod http;
pub mod tftp;
