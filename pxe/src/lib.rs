//! ironseed `pxe`: serves a rendered bundle on the LAN (DHCP, TFTP, HTTP).

pub mod dhcp_policy;
pub mod leases;
pub mod net;
pub mod proto;
pub mod serve;
