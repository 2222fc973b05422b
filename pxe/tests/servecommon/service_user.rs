//! `pxe serve` started as root drops to the `ironseed` system account by default. Tests that
//! start it as root create that account once, the way the documented install steps do, so
//! they run the default path rather than passing `--user nobody`.

use std::process::Command;

const USER: &str = "ironseed";

/// Create the `ironseed` system account if it is missing (only as root; idempotent).
pub fn ensure_service_user() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    ONCE.call_once(|| {
        let exists = || nix::unistd::User::from_name(USER).ok().flatten().is_some();
        if exists() {
            return;
        }
        // Another test binary may create it at the same moment (useradd then exits 9): what
        // counts is that the account exists afterwards.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status();
        assert!(exists(), "could not create the `{USER}` system account");
    });
}
