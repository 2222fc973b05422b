//! ironseed `pxe`: serves a rendered bundle on the LAN (DHCP, TFTP, HTTP).

pub mod proto;
pub mod serve;
