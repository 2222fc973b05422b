pub mod client;
pub mod serve;
pub mod status;
