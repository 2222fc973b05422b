//! The Redfish driver (DSP0266): find the ComputerSystem, set a one-time network boot, reset,
//! and read every change back — BMCs are known to answer 204 and do nothing (iDRAC firmware
//! ignoring a power-on, an override in the wrong boot mode). `model` is the pure part,
//! `client` the HTTPS.

pub mod client;
pub mod model;

use std::time::{Duration, Instant};

use serde_json::Value;

use images::bundle::printable;

use self::client::Http;
use self::model::{OverrideCheck, ServiceRoot, System, Want};
use super::{PowerDriver, PowerError, PowerState, PxeOnce};

#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error(
        "{url}: the BMC's certificate is not the pinned one (expected SHA-256 {expected}, seen {seen}); nothing was sent. If the iDRAC got a new certificate, check it and update `fingerprint:`"
    )]
    Fingerprint {
        url: String,
        expected: String,
        seen: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Connect(String),
    #[error(
        "{url}: the BMC refused the account (HTTP 401): check power.{node} in the secrets file"
    )]
    Unauthorized { url: String, node: String },
    #[error("{url}: HTTP {status}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        message: Option<String>,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    BadBody(String),
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error("{0}")]
    Ignored(String),
}

impl From<RedfishError> for PowerError {
    fn from(e: RedfishError) -> PowerError {
        PowerError::Failed(e.to_string())
    }
}

enum Auth {
    /// Not logged in yet.
    None,
    Basic(String),
    Session {
        token: String,
        uri: Option<String>,
    },
}

/// How long to wait for a reset to show in `PowerState`, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub settle: Duration,
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        // An R730 takes ~10 s from the reset to PowerState On; iDRAC answers within 2 s.
        Timing {
            settle: Duration::from_secs(90),
            poll: Duration::from_secs(2),
        }
    }
}

pub struct Redfish<H: Http> {
    pub http: H,
    pub node: String,
    pub username: String,
    pub password: String,
    pub system_id: Option<String>,
    pub uefi: bool,
    pub timing: Timing,
    auth: Auth,
    root: Option<ServiceRoot>,
    system_path: Option<String>,
    /// Requests sent, for the round-trip figures in docs/power.md.
    pub requests: u32,
}

impl<H: Http> Redfish<H> {
    pub fn new(
        http: H,
        node: &str,
        username: &str,
        password: &str,
        system_id: Option<String>,
        uefi: bool,
    ) -> Self {
        Redfish {
            http,
            node: node.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            system_id,
            uefi,
            timing: Timing::default(),
            auth: Auth::None,
            root: None,
            system_path: None,
            requests: 0,
        }
    }

    fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        authed: bool,
    ) -> Result<client::Reply, RedfishError> {
        let header = match (&self.auth, authed) {
            (Auth::Basic(h), true) => Some(("Authorization", h.clone())),
            (Auth::Session { token, .. }, true) => Some(("X-Auth-Token", token.clone())),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.requests += 1;
        let r = self.http.send(method, path, &headers, body)?;
        match r.status {
            200..=299 => Ok(r),
            401 => Err(RedfishError::Unauthorized {
                url: path.to_string(),
                node: self.node.clone(),
            }),
            status => Err(RedfishError::Http {
                url: format!("{method} {path}"),
                status,
                message: model::error_message(&r.body),
            }),
        }
    }

    /// The ServiceRoot (unauthenticated, DSP0266 §13.3.1) and a login: a session when the
    /// service offers one, basic auth otherwise.
    fn login(&mut self) -> Result<(), RedfishError> {
        if !matches!(self.auth, Auth::None) {
            return Ok(());
        }
        let root = model::parse_root(&self.raw("GET", "/redfish/v1/", None, false)?.body)?;
        if let Some(sessions) = &root.sessions {
            let body = model::session_body(&self.username, &self.password);
            let r = self.raw("POST", &sessions.clone(), Some(&body), false)?;
            let token = r.auth_token.ok_or_else(|| {
                RedfishError::BadBody(format!("{sessions}: session created without X-Auth-Token"))
            })?;
            // Only a path on this service is deleted later (the token goes with it).
            let uri = r
                .location
                .map(|l| match l.find("/redfish/") {
                    Some(i) => l[i..].to_string(),
                    None => l,
                })
                .filter(|l| l.starts_with("/redfish/"))
                .or_else(|| model::odata_id_of(&r.body));
            self.auth = Auth::Session { token, uri };
        } else {
            self.auth = Auth::Basic(basic(&self.username, &self.password));
        }
        self.root = Some(root);
        Ok(())
    }

    fn system(&mut self) -> Result<System, RedfishError> {
        self.login()?;
        let path = match &self.system_path {
            Some(p) => p.clone(),
            None => {
                let systems = self.root.as_ref().expect("logged in").systems.clone();
                let c = self.raw("GET", &systems, None, true)?.body;
                let p = model::pick_system(&c, self.system_id.as_deref())?;
                self.system_path = Some(p.clone());
                p
            }
        };
        Ok(model::parse_system(
            &self.raw("GET", &path, None, true)?.body,
        )?)
    }

    fn reset(&mut self, want: Want, expect: Option<PowerState>) -> Result<(), RedfishError> {
        let sys = self.system()?;
        let action = sys.reset.clone().ok_or_else(|| {
            RedfishError::Model(model::ModelError::Malformed {
                what: "ComputerSystem",
                why: "no #ComputerSystem.Reset action".into(),
            })
        })?;
        let kind = model::reset_type(&action, want)?;
        self.raw("POST", &action.target, Some(&model::reset_body(kind)), true)?;
        let Some(expect) = expect else {
            // A restart of a machine that is on: PowerState stays On (or blinks); that the
            // node then network-boots is what pxe sees.
            return Ok(());
        };
        let start = Instant::now();
        let mut last = sys.power_state.clone();
        loop {
            let now = self.system()?;
            if model::power_state(&now) == Some(expect) {
                return Ok(());
            }
            last = now.power_state.clone().or(last);
            if start.elapsed() >= self.timing.settle {
                return Err(RedfishError::Ignored(format!(
                    "the BMC accepted ResetType {kind} but PowerState is still {} after {} s: \
                     it did nothing (iDRAC: check the server's front panel/lockdown mode and the \
                     Lifecycle log)",
                    last.as_deref().unwrap_or("unknown"),
                    self.timing.settle.as_secs()
                )));
            }
            std::thread::sleep(self.timing.poll);
        }
    }

    fn logout(&mut self) {
        if let Auth::Session { uri: Some(uri), .. } = &self.auth {
            let uri = uri.clone();
            // Best effort: an iDRAC has few session slots, but a leftover one expires.
            if let Err(e) = self.raw("DELETE", &uri, None, true) {
                eprintln!(
                    "warning: {}: could not close the Redfish session: {}",
                    self.node,
                    printable(&e.to_string(), 300)
                );
            }
        }
        self.auth = Auth::None;
    }
}

impl<H: Http> Drop for Redfish<H> {
    fn drop(&mut self) {
        self.logout();
    }
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

impl<H: Http> PowerDriver for Redfish<H> {
    fn name(&self) -> &'static str {
        "redfish"
    }
    fn status(&mut self) -> Result<PowerState, PowerError> {
        let s = self.system()?;
        model::power_state(&s).ok_or_else(|| {
            PowerError::Failed(format!(
                "the BMC reports PowerState {}",
                s.power_state.as_deref().unwrap_or("(none)")
            ))
        })
    }
    fn on(&mut self) -> Result<(), PowerError> {
        Ok(self.reset(Want::On, Some(PowerState::On))?)
    }
    fn off(&mut self) -> Result<(), PowerError> {
        Ok(self.reset(Want::Off, Some(PowerState::Off))?)
    }
    fn cycle(&mut self) -> Result<(), PowerError> {
        // A reset of a machine that is off is refused by most BMCs: power it on instead.
        match self.status()? {
            PowerState::On => Ok(self.reset(Want::Cycle, None)?),
            PowerState::Off => self.on(),
        }
    }
    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError> {
        let sys = self.system()?;
        let body = model::pxe_once_body(&sys, self.uefi).map_err(RedfishError::from)?;
        self.raw("PATCH", &sys.odata_id, Some(&body), true)?;
        let now = self.system()?;
        match model::check_override(&body, &now) {
            OverrideCheck::Set => Ok(PxeOnce::Set),
            OverrideCheck::Persistent(got) => {
                // sushy-emulator's libvirt driver and some BMCs store every override as
                // Continuous. Harmless for ironseed: pxe answers an installed node with "boot
                // from disk"; but the operator should know.
                eprintln!(
                    "warning: {}: the BMC keeps the network boot override ({got}): the node will \
                     network-boot on every boot until it is cleared",
                    self.node
                );
                Ok(PxeOnce::Set)
            }
            OverrideCheck::Ignored(got) => Err(RedfishError::Ignored(format!(
                "the BMC accepted the one-time network boot but reads back {got}: it did \
                 nothing (an override for the wrong boot mode is dropped: set the BIOS boot mode \
                 to the profile's firmware)"
            ))
            .into()),
        }
    }
}

#[cfg(test)]
mod tests;
