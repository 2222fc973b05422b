//! ironseed builder: reads one inventory, validates it, and renders the bundle `pxe` serves.
//! Data flows one way: inventory → validated model → rendered files in memory → bundle on disk.

pub mod adopt;
pub mod bundle;
pub mod diag;
pub mod diff;
pub mod facts_check;
pub mod fsutil;
pub mod inventory;
pub mod k3s_flags;
pub mod lab;
pub mod power;
pub mod render;
pub mod runbook;
pub mod secrets;
pub mod templates;
pub mod topology;
pub mod vmshape;
