//! The lab power driver: `power::PowerDriver` for a lab VM, the way Redfish or WoL drive a real
//! machine. "On" starts the VM's qemu inside the lab's namespace from `LabVm::argv`; "off" asks
//! qemu to quit over QMP, then kills the recorded process (PID and start time checked);
//! `pxe_once` is a flag in `lab.json` the next start honours (network first), then clears, as
//! a BMC's one-time boot override does.
//!
//! Every operation reads `lab.json` under a lock (`DIR/lab.lock`) and writes it back, so
//! `lab up`, `builder power --lab` and a drill running side by side never lose an update.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::qmp::Qmp;
use crate::lab::state::{LabProcess, LabState};
use crate::lab::vm::boot_order;
use crate::power::{PowerDriver, PowerError, PowerState, PxeOnce};

/// How long a process gets after SIGTERM (qemu and pxe exit at once) before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// Stop a process the lab recorded: nothing when it is gone or its PID now belongs to another
/// process (the start time differs); SIGTERM, wait up to `grace`, SIGKILL. Returns whether the
/// recorded process was running.
pub fn stop_process(p: &LabProcess, grace: Duration) -> bool {
    if !p.alive() {
        return false;
    }
    let pid = Pid::from_raw(p.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if !p.alive() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Checked again right before: the PID may have been reaped and reused meanwhile.
    if p.alive() {
        let _ = kill(pid, Signal::SIGKILL);
    }
    true
}

/// Hold `DIR/lab.lock` while running `f` on the loaded state; save it if `f` says so.
pub fn with_state<T>(
    dir: &Path,
    f: impl FnOnce(&mut LabState) -> Result<(T, bool), PowerError>,
) -> Result<T, PowerError> {
    let lock = File::create(dir.join("lab.lock"))
        .map_err(|e| PowerError::Failed(format!("{}: {e}", dir.display())))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| PowerError::Failed(format!("locking the lab state: {e}")))?;
    let mut s = LabState::load(dir).map_err(|e| PowerError::Failed(e.to_string()))?;
    let (out, save) = f(&mut s)?;
    if save {
        s.save(dir).map_err(|e| PowerError::Failed(e.to_string()))?;
    }
    Ok(out)
}

/// Start node `name`'s qemu in the lab's namespace (network first when `pxe_once` was set,
/// which is then cleared); records the process in `s`. qemu runs in its own process group,
/// detached from the terminal: it outlives the command that started it.
pub fn start_vm(dir: &Path, s: &mut LabState, name: &str) -> Result<(), PowerError> {
    let ns = s.netns.clone();
    let vm = s
        .nodes
        .get_mut(name)
        .ok_or_else(|| PowerError::Failed(format!("{name} is not in this lab")))?;
    if vm.qemu.as_ref().is_some_and(LabProcess::alive) {
        return Ok(());
    }
    let argv = boot_order(&vm.argv, vm.pxe_once);
    let _ = std::fs::remove_file(&vm.qmp);
    let log_path = dir.join(format!("{name}.qemu.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| PowerError::Failed(format!("{}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| PowerError::Failed(e.to_string()))?;
    // `ip netns exec` execs qemu: the recorded PID is qemu's.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "qemu-system-x86_64"])
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| PowerError::Failed(format!("starting qemu for {name}: {e}")))?;
    let pid = child.id();
    // Let qemu open its QMP socket, or fail on its arguments, before calling it started.
    let until = Instant::now() + Duration::from_secs(30);
    let proc = loop {
        if let Some(p) = LabProcess::of(pid)
            && vm.qmp.exists()
        {
            break p;
        }
        if LabProcess::of(pid).is_none() || Instant::now() > until {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(PowerError::Failed(format!(
                "qemu for {name} did not start: {}",
                images::bundle::printable(
                    &tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                    600
                )
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    vm.qemu = Some(proc);
    vm.pxe_once = false;
    Ok(())
}

/// Stop node `name`'s qemu: QMP `quit`, then the recorded process by PID and start time.
pub fn stop_vm(s: &mut LabState, name: &str) -> Result<(), PowerError> {
    let vm = s
        .nodes
        .get_mut(name)
        .ok_or_else(|| PowerError::Failed(format!("{name} is not in this lab")))?;
    let Some(p) = vm.qemu.clone() else {
        return Ok(());
    };
    if p.alive() {
        if let Ok(mut q) = Qmp::connect(&vm.qmp) {
            let _ = q.execute("quit");
        }
        let until = Instant::now() + Duration::from_secs(5);
        while p.alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop_process(&p, TERM_GRACE);
    }
    vm.qemu = None;
    Ok(())
}

pub struct LabPower {
    pub dir: PathBuf,
    pub node: String,
}

impl PowerDriver for LabPower {
    fn name(&self) -> &'static str {
        "lab"
    }

    fn status(&mut self) -> Result<PowerState, PowerError> {
        let node = self.node.clone();
        let (proc, qmp) = with_state(&self.dir, |s| {
            let vm = s
                .nodes
                .get(&node)
                .ok_or_else(|| PowerError::Failed(format!("{node} is not in this lab")))?;
            Ok(((vm.qemu.clone(), vm.qmp.clone()), false))
        })?;
        match proc {
            Some(p) if p.alive() => {
                let st = Qmp::connect(&qmp)
                    .and_then(|mut q| q.status())
                    .map_err(|e| PowerError::Failed(format!("{node}: {e}")))?;
                // `shutdown`, `guest-panicked`, … : qemu is there, the machine is not running.
                Ok(
                    if matches!(st.as_str(), "running" | "paused" | "prelaunch") {
                        PowerState::On
                    } else {
                        PowerState::Off
                    },
                )
            }
            _ => Ok(PowerState::Off),
        }
    }

    fn on(&mut self) -> Result<(), PowerError> {
        let (dir, node) = (self.dir.clone(), self.node.clone());
        with_state(&self.dir, |s| start_vm(&dir, s, &node).map(|()| ((), true)))
    }

    fn off(&mut self) -> Result<(), PowerError> {
        let node = self.node.clone();
        with_state(&self.dir, |s| stop_vm(s, &node).map(|()| ((), true)))
    }

    /// Off then on: a new qemu process, so a `pxe_once` set meanwhile takes effect.
    fn cycle(&mut self) -> Result<(), PowerError> {
        self.off()?;
        self.on()
    }

    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError> {
        let node = self.node.clone();
        with_state(&self.dir, |s| {
            let vm = s
                .nodes
                .get_mut(&node)
                .ok_or_else(|| PowerError::Failed(format!("{node} is not in this lab")))?;
            vm.pxe_once = true;
            Ok((PxeOnce::Set, true))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects `lab down` and the power driver from signalling a stranger: a recorded PID
    /// whose start time differs (the PID was reused after a crash) is left alone.
    #[test]
    fn a_reused_pid_is_never_signalled() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let real = LabProcess::of(child.id()).unwrap();
        let stranger = LabProcess {
            pid: real.pid,
            start_ticks: real.start_ticks + 1,
        };
        assert!(!stop_process(&stranger, Duration::from_millis(200)));
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process with the reused PID was signalled"
        );
        // The recorded one is stopped (and SIGTERM was enough).
        assert!(stop_process(&real, Duration::from_secs(5)));
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(15));
        assert!(
            !stop_process(&real, Duration::from_millis(10)),
            "gone: nothing to do"
        );
    }
}
