//! ironseed `pxe`: serves a rendered bundle on the LAN (DHCP, TFTP, HTTP) and tracks each
//! node's install state. Codecs and policies are pure; `serve::*` only does I/O.

pub mod boot_files;
pub mod boot_policy;
pub mod bundle;
pub mod content;
pub mod dhcp_policy;
pub mod discovered;
pub mod leases;
pub mod metrics;
pub mod nbp_watch;
pub mod net;
pub mod privileges;
pub mod proto;
pub mod ratelimit;
pub mod secure_boot;
pub mod serve;
pub mod state;

/// The workspace's rule for skips (CI set to any value: no skip), shared with every crate's tests.
#[cfg(test)]
#[path = "../../images/tests/support/ci.rs"]
pub(crate) mod test_ci;
