//! Power and boot control of the machines: one trait, one driver per `power:` method. Redfish
//! plugs in as one more driver; `builder power`, `provision` and `rebuild --power` only see the
//! trait.

pub mod ipmi;
pub mod manual;
pub mod order;
pub mod redfish;
pub mod wol;

use std::net::Ipv4Addr;

use crate::inventory::model::{Firmware, Inventory, Node, Power};
use crate::secrets::Secrets;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The driver cannot do this at all (WoL cannot power off or read the state).
    #[error("{driver} cannot {action}")]
    Unsupported {
        driver: &'static str,
        action: &'static str,
    },
    #[error("{0}")]
    Failed(String),
    #[error(
        "no BMC account for {node} in the secrets file (add power.{node}.username and power.{node}.password)"
    )]
    NoCredentials { node: String },
}

/// What a driver did for "boot from the network once".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PxeOnce {
    /// The BMC has a one-time network-boot override set.
    Set,
    /// Nothing to set: the machine's firmware decides; the text says what the operator must have
    /// configured (or must press).
    Firmware(&'static str),
}

pub trait PowerDriver {
    fn name(&self) -> &'static str;
    fn status(&mut self) -> Result<PowerState, PowerError>;
    fn on(&mut self) -> Result<(), PowerError>;
    fn off(&mut self) -> Result<(), PowerError>;
    fn cycle(&mut self) -> Result<(), PowerError>;
    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError>;
}

/// One Redfish request, connect to last body byte. An iDRAC8 takes up to ~5 s for a PATCH.
pub const REDFISH_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The broadcast address a WoL packet for a node of `inv` goes to by default.
pub fn default_broadcast(inv: &Inventory) -> Ipv4Addr {
    inv.network.subnet.broadcast()
}

/// The driver for `node`, or `None` when the node has no power control (treated as manual).
/// `interactive`: the manual driver waits for Enter after telling the operator what to do.
pub fn driver_for(
    inv: &Inventory,
    node: &Node,
    secrets: Option<&Secrets>,
    interactive: bool,
) -> Result<Box<dyn PowerDriver>, PowerError> {
    let hostname = node.hostname.to_string();
    match node.power.as_ref().unwrap_or(&Power::Manual) {
        Power::Manual => Ok(Box::new(manual::Manual::new(&hostname, interactive))),
        Power::Wol {
            broadcast,
            interface,
        } => Ok(Box::new(wol::Wol {
            mac: node.mac.0,
            broadcast: broadcast.unwrap_or_else(|| default_broadcast(inv)),
            interface: interface.clone(),
        })),
        Power::Ipmi { address } => {
            let cred =
                secrets
                    .and_then(|s| s.power.get(&hostname))
                    .ok_or(PowerError::NoCredentials {
                        node: hostname.clone(),
                    })?;
            Ok(Box::new(ipmi::Ipmi {
                address: address.clone(),
                username: cred.username.clone(),
                password: cred.password.clone(),
                uefi: node.profile.firmware == Firmware::Uefi,
                run: Box::new(ipmi::run_ipmitool),
            }))
        }
        Power::Redfish(rf) => {
            let cred =
                secrets
                    .and_then(|s| s.power.get(&hostname))
                    .ok_or(PowerError::NoCredentials {
                        node: hostname.clone(),
                    })?;
            let trust = match (&rf.fingerprint, &rf.ca) {
                (Some(fp), _) => redfish::client::Trust::Fingerprint(fp.clone()),
                (None, Some(ca)) => redfish::client::Trust::Ca(ca.clone()),
                // Validation allows no other combination without `insecure_tls: true`.
                (None, None) => redfish::client::Trust::Insecure,
            };
            let http = redfish::client::Client::new(&rf.address, &trust, REDFISH_REQUEST_TIMEOUT)
                .map_err(PowerError::from)?;
            Ok(Box::new(redfish::Redfish::new(
                http,
                &hostname,
                &cred.username,
                &cred.password,
                rf.system.clone(),
                node.profile.firmware == Firmware::Uefi,
            )))
        }
    }
}
