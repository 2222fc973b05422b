pub mod client;
pub mod serve;
pub mod status;

/// Text from the server (node names, failure reasons a node reported) as it may reach a
/// terminal: control characters dropped, so no escape sequence from the network is ever
/// interpreted by the operator's terminal, and cut to a readable length.
pub fn clean(s: &str) -> String {
    images::bundle::printable(s, 512)
}
