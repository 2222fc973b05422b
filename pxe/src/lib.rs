//! ironseed `pxe`: serves a rendered bundle on the LAN (DHCP, TFTP, HTTP) and tracks each
//! node's install state. Codecs and policies are pure; `serve::*` only does I/O.

pub mod boot_files;
pub mod boot_policy;
pub mod bundle;
pub mod content;
pub mod dhcp_policy;
pub mod leases;
pub mod metrics;
pub mod net;
pub mod privileges;
pub mod proto;
pub mod ratelimit;
pub mod serve;
pub mod state;
