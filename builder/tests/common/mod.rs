//! What every test of the `builder` binary needs: the binary with none of the operator's
//! `IRONSEED_*` settings leaking in from the environment that runs the tests, and its
//! output as text.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The workspace's rule for skips and golden files (CI set to any value: no skip).
#[path = "../../../images/tests/support/ci.rs"]
pub mod ci;

/// The environment variables `builder` reads in place of flags.
const SETTINGS: [&str; 4] = [
    "IRONSEED_INVENTORY",
    "IRONSEED_SECRETS",
    "IRONSEED_PXE",
    "IRONSEED_ARTIFACTS",
];

/// `builder ARGS` with a clean environment.
pub fn builder_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_builder"));
    c.args(args);
    for v in SETTINGS {
        c.env_remove(v);
    }
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
