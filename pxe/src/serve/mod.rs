//! Network servers. Each `run` function owns only I/O; protocol decisions live in
//! [`crate::proto`] and the policy modules.

pub mod dhcp;
pub mod http;
pub mod tftp;

/// Resolves once `stop` is (or becomes) true: the shutdown signal every server loop
/// and connection waits on. Holds no lock on the flag afterwards, so it can sit in a
/// `select!` across awaits.
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
