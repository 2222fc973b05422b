//! Pure protocol codecs: bytes in, typed values out (and back). No sockets here, so
//! every rule can be unit-tested without the network.

pub mod dhcp;
pub mod http;
pub mod tftp;
