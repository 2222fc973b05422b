//! No power control: tell the operator what to do, and (interactively) wait until they did it.

use std::io::{BufRead, Write};

use super::{PowerDriver, PowerError, PowerState, PxeOnce};

pub struct Manual {
    node: String,
    interactive: bool,
}

impl Manual {
    pub fn new(node: &str, interactive: bool) -> Manual {
        Manual {
            node: node.to_string(),
            interactive,
        }
    }

    fn ask(&self, what: &str) -> Result<(), PowerError> {
        eprintln!("{what}");
        if self.interactive {
            eprint!("press Enter when done: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| PowerError::Failed(format!("reading stdin: {e}")))?;
        }
        Ok(())
    }
}

impl PowerDriver for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }
    fn status(&mut self) -> Result<PowerState, PowerError> {
        Err(PowerError::Unsupported {
            driver: "manual power control",
            action: "read the power state (look at the machine, or `pxe status`)",
        })
    }
    fn on(&mut self) -> Result<(), PowerError> {
        self.ask(&format!("power on {} now", self.node))
    }
    fn off(&mut self) -> Result<(), PowerError> {
        self.ask(&format!("power off {} now", self.node))
    }
    fn cycle(&mut self) -> Result<(), PowerError> {
        self.ask(&format!("reset (power cycle) {} now", self.node))
    }
    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError> {
        Ok(PxeOnce::Firmware(
            "at power-on press the one-time boot key (Dell: F12, VMs: the hypervisor's boot menu) and pick the network (PXE) entry",
        ))
    }
}
