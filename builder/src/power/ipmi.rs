//! IPMI over LAN through `ipmitool`, when it is installed. The password goes in the
//! environment (`-E` reads `IPMI_PASSWORD`): the command line is visible to every user in `ps`,
//! a process's environment only to its owner and root.

use std::process::Command;

use super::{PowerDriver, PowerError, PowerState, PxeOnce};

/// Runs ipmitool with (args, env) and returns its stdout; replaced in tests.
pub type Runner = dyn FnMut(&[String], &[(String, String)]) -> Result<String, PowerError>;

pub struct Ipmi {
    pub address: String,
    pub username: String,
    pub password: String,
    pub uefi: bool,
    pub run: Box<Runner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Status,
    On,
    Off,
    Cycle,
    PxeOnce,
}

/// The argument list (without the program) and environment for one action. Pure.
pub fn command(
    address: &str,
    username: &str,
    password: &str,
    uefi: bool,
    action: Action,
) -> (Vec<String>, Vec<(String, String)>) {
    let mut args: Vec<String> = [
        "-I", "lanplus", "-H", address, "-U", username, "-E", "chassis",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let tail: &[&str] = match action {
        Action::Status => &["power", "status"],
        Action::On => &["power", "on"],
        Action::Off => &["power", "off"],
        Action::Cycle => &["power", "cycle"],
        // Without options the override is one-time (IPMI 2.0 §28.12, "valid for next boot
        // only"); efiboot asks for a UEFI network boot, else a BIOS-mode override is ignored
        // by UEFI firmware.
        Action::PxeOnce if uefi => &["bootdev", "pxe", "options=efiboot"],
        Action::PxeOnce => &["bootdev", "pxe"],
    };
    args.extend(tail.iter().map(|s| s.to_string()));
    (args, vec![("IPMI_PASSWORD".into(), password.into())])
}

/// `Chassis Power is on` / `off`.
pub fn parse_status(out: &str) -> Option<PowerState> {
    let l = out.to_ascii_lowercase();
    if l.contains("chassis power is on") {
        Some(PowerState::On)
    } else if l.contains("chassis power is off") {
        Some(PowerState::Off)
    } else {
        None
    }
}

pub fn run_ipmitool(args: &[String], env: &[(String, String)]) -> Result<String, PowerError> {
    let out = Command::new("ipmitool")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| {
            PowerError::Failed(if e.kind() == std::io::ErrorKind::NotFound {
                "ipmitool is not installed (apt install ipmitool)".into()
            } else {
                format!("running ipmitool: {e}")
            })
        })?;
    if !out.status.success() {
        // The BMC's answer is untrusted: printable characters only, bounded.
        let err: String = String::from_utf8_lossy(&out.stderr)
            .chars()
            .filter(|c| !c.is_control() || *c == '\n')
            .take(300)
            .collect();
        return Err(PowerError::Failed(format!(
            "ipmitool failed ({}): {}",
            out.status,
            err.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Ipmi {
    fn act(&mut self, a: Action) -> Result<String, PowerError> {
        let (args, env) = command(&self.address, &self.username, &self.password, self.uefi, a);
        (self.run)(&args, &env)
    }
}

impl PowerDriver for Ipmi {
    fn name(&self) -> &'static str {
        "ipmi"
    }
    fn status(&mut self) -> Result<PowerState, PowerError> {
        let out = self.act(Action::Status)?;
        parse_status(&out).ok_or_else(|| {
            PowerError::Failed("ipmitool printed no `Chassis Power is on/off`".into())
        })
    }
    fn on(&mut self) -> Result<(), PowerError> {
        self.act(Action::On).map(drop)
    }
    fn off(&mut self) -> Result<(), PowerError> {
        self.act(Action::Off).map(drop)
    }
    fn cycle(&mut self) -> Result<(), PowerError> {
        // `power cycle` is refused by a BMC while the chassis is off; then power on instead.
        match self.status()? {
            PowerState::On => self.act(Action::Cycle).map(drop),
            PowerState::Off => self.on(),
        }
    }
    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError> {
        self.act(Action::PxeOnce).map(|_| PxeOnce::Set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects the BMC password from `ps`: it is passed only in the environment, never as an
    /// argument.
    #[test]
    fn password_is_never_an_argument() {
        for a in [
            Action::Status,
            Action::On,
            Action::Off,
            Action::Cycle,
            Action::PxeOnce,
        ] {
            let (args, env) = command("10.0.20.200", "root", "hunter2", true, a);
            assert!(args.iter().all(|s| !s.contains("hunter2")), "{args:?}");
            assert!(args.contains(&"-E".to_string()));
            assert!(!args.contains(&"-P".to_string()));
            assert_eq!(
                env,
                vec![("IPMI_PASSWORD".to_string(), "hunter2".to_string())]
            );
        }
    }

    #[test]
    fn commands_are_the_chassis_ones() {
        let (args, _) = command("bmc", "root", "x", false, Action::Status);
        assert_eq!(
            args.join(" "),
            "-I lanplus -H bmc -U root -E chassis power status"
        );
        let (args, _) = command("bmc", "root", "x", true, Action::PxeOnce);
        assert!(
            args.join(" ")
                .ends_with("chassis bootdev pxe options=efiboot")
        );
        let (args, _) = command("bmc", "root", "x", false, Action::PxeOnce);
        assert!(args.join(" ").ends_with("chassis bootdev pxe"));
        let (args, _) = command("bmc", "root", "x", false, Action::Cycle);
        assert!(args.join(" ").ends_with("chassis power cycle"));
    }

    #[test]
    fn status_is_parsed_and_cycle_of_an_off_chassis_powers_on() {
        assert_eq!(parse_status("Chassis Power is on\n"), Some(PowerState::On));
        assert_eq!(
            parse_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_status("garbage"), None);
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let s2 = seen.clone();
        let mut d = Ipmi {
            address: "bmc".into(),
            username: "root".into(),
            password: "x".into(),
            uefi: false,
            run: Box::new(move |args: &[String], _: &[(String, String)]| {
                s2.borrow_mut().push(args[8..].join(" "));
                Ok(if args.ends_with(&["status".to_string()]) {
                    "Chassis Power is off\n".into()
                } else {
                    String::new()
                })
            }),
        };
        d.cycle().unwrap();
        assert_eq!(*seen.borrow(), vec!["power status", "power on"]);
    }
}
