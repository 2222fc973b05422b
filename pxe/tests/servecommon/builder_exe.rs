//! The `builder` binary for pxe's tests, which get no `CARGO_BIN_EXE_builder` (another
//! package's binary).

use std::path::{Path, PathBuf};
use std::process::Command;

/// `builder`, built on demand: cargo is a no-op when it is up to date, and the binary sits
/// next to this test's profile folder (target/<profile>/deps/<test-binary>).
pub fn builder_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "builder"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(st.success(), "cargo build -p builder failed");
    profile_dir.join("builder")
}
