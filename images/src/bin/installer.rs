//! The installer that runs in the node's initramfs. With `ironseed.plan=` on the kernel command
//! line (iPXE's install script) it fetches the plan from the appliance; with
//! `ironseed.offline=1` (an installer stick's boot loader) it reads plan, seed and image from
//! the stick. Either way it installs (see images::install), then reboots into the installed
//! disk. On failure it has already reported `failed` (to the appliance, or on the console) and
//! left the disk unbootable; it then drops to a shell on the console for debugging.
//! With `ironseed.mode=inspect` it writes no disk: it posts the machine's facts
//! (images::inspect) to `ironseed.facts=` and powers off (or reboots, `ironseed.after=reboot`).

use std::process::{Command, ExitCode};
use std::time::Duration;

use images::plan::{After, Cmdline};

fn main() -> ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let log = &mut |l: &str| eprintln!("{l}");
    let r = match images::plan::parse_cmdline(&cmdline) {
        None => {
            eprintln!(
                "ironseed installer: neither ironseed.plan= nor ironseed.offline=1 on the kernel command line"
            );
            return shell();
        }
        Some(Cmdline::Network { plan_url, mac }) => {
            eprintln!(
                "ironseed installer: plan {plan_url} (booted from {})",
                mac.as_deref().unwrap_or("?")
            );
            images::install::run(&plan_url, &images::system::System, log)
        }
        Some(Cmdline::Inspect {
            facts_url,
            mac,
            after,
        }) => return inspect(&facts_url, mac.as_deref(), after),
        Some(Cmdline::Offline) => {
            eprintln!("ironseed installer: offline, looking for the installer stick");
            // USB sticks appear a few seconds after their host controller's driver loaded.
            images::install::run_offline(&images::system::System, Duration::from_secs(30), log)
        }
    };
    match r {
        Ok(_) => {
            eprintln!("ironseed installer: done, rebooting into the installed system");
            links_down();
            let _ = Command::new("sync").status();
            let _ = Command::new("reboot").arg("-f").status();
            ExitCode::SUCCESS
        }
        Err(_) => shell(),
    }
}

fn inspect(facts_url: &str, mac: Option<&str>, after: After) -> ExitCode {
    eprintln!(
        "ironseed installer: inspection (booted from {}), no disk is written",
        mac.unwrap_or("?")
    );
    if let Err(e) = images::inspect::run(facts_url, mac, &mut |l: &str| eprintln!("{l}")) {
        eprintln!("ironseed installer: inspection failed: {e}");
        return shell();
    }
    eprintln!(
        "ironseed installer: inspection done, {}",
        match after {
            After::Poweroff => "powering off",
            After::Reboot => "rebooting",
        }
    );
    links_down();
    // reboot(2) does not flush: sync first (inspection wrote no disk, but keep the rule every
    // exit of the installer follows). busybox's `poweroff -f` is the fallback if it is refused.
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(images::inspect::reboot_mode(after)).unwrap_err();
    eprintln!("ironseed installer: reboot(2): {e}");
    let cmd = match after {
        After::Poweroff => "poweroff",
        After::Reboot => "reboot",
    };
    let _ = Command::new(cmd).arg("-f").status();
    ExitCode::FAILURE
}

/// Every NIC down before reboot(2) (`images::system::interfaces_to_down` says why). Best
/// effort: a link that stays up only risks the hang this avoids.
fn links_down() {
    for n in images::system::interfaces_to_down(std::path::Path::new("/sys")) {
        let _ = Command::new("ip")
            .args(["link", "set", "dev", &n, "down"])
            .status();
    }
}

fn shell() -> ExitCode {
    eprintln!("ironseed installer: dropping to a shell (exit to reboot)");
    let _ = Command::new("/bin/sh").status();
    let _ = Command::new("reboot").arg("-f").status();
    ExitCode::FAILURE
}
