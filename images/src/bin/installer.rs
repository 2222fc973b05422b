//! The installer that runs in the node's initramfs: reads `ironseed.plan=` from the kernel
//! command line, installs (see images::install), then reboots into the installed disk. On
//! failure it has already reported `failed` and left the disk unbootable; it then drops to a
//! shell on the console for debugging.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(args) = images::plan::parse_cmdline(&cmdline) else {
        eprintln!("ironseed installer: no ironseed.plan= on the kernel command line");
        return shell();
    };
    eprintln!(
        "ironseed installer: plan {} (booted from {})",
        args.plan_url,
        args.mac.as_deref().unwrap_or("?")
    );
    match images::install::run(&args.plan_url, &images::system::System, &mut |l| {
        eprintln!("{l}")
    }) {
        Ok(_) => {
            eprintln!("ironseed installer: done, rebooting into the installed system");
            let _ = Command::new("sync").status();
            let _ = Command::new("reboot").arg("-f").status();
            ExitCode::SUCCESS
        }
        Err(_) => shell(),
    }
}

fn shell() -> ExitCode {
    eprintln!("ironseed installer: dropping to a shell (exit to reboot)");
    let _ = Command::new("/bin/sh").status();
    let _ = Command::new("reboot").arg("-f").status();
    ExitCode::FAILURE
}
