//! `power:` blocks, in a node or as a hardware profile's default. Credentials are not here: they
//! live only in the secrets file (`power.<node>.username/password`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::model::{Network, Power, Redfish};
use super::profiles::span;
use super::raw::{RawPower, S};
use crate::diag::Diagnostics;

/// Check one `power:` block; `path` is where it sits (`nodes[2].power` or `power`).
pub(crate) fn check_power(
    file: &str,
    path: &str,
    raw: &S<RawPower>,
    diags: &mut Diagnostics,
) -> Option<Power> {
    let r = &raw.value;
    let given = [
        r.redfish.is_some(),
        r.wol.is_some(),
        r.ipmi.is_some(),
        r.manual.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        diags.error(
            span(file, raw),
            path,
            format!("give exactly one power driver (redfish, wol, ipmi or manual); found {given}"),
        );
        return None;
    }
    let before = diags.errors().count();
    let power = if let Some(rf) = &r.redfish {
        let p = format!("{path}.redfish");
        let address = required_address(file, &p, rf, rf.value.address.as_ref(), true, diags);
        let insecure = rf.value.insecure_tls.as_ref().is_some_and(|b| b.value);
        let ca = rf.value.ca.as_ref().map(|c| PathBuf::from(&c.value));
        let fingerprint = rf.value.fingerprint.as_ref().and_then(|f| {
            let hex = normalise_fingerprint(&f.value);
            if hex.is_none() {
                diags.error(
                    span(file, f),
                    format!("{p}.fingerprint"),
                    "not a SHA-256 fingerprint (64 hex digits, colons allowed)",
                );
            }
            hex
        });
        if !insecure && ca.is_none() && rf.value.fingerprint.is_none() {
            diags.error(
                span(file, rf),
                &p,
                "the BMC's TLS certificate must be verifiable: give `ca: FILE` or `fingerprint: SHA256`, \
                 or write `insecure_tls: true` to accept any certificate (credentials could then be \
                 sent to an impostor)",
            );
        }
        if insecure && (ca.is_some() || rf.value.fingerprint.is_some()) {
            diags.error(
                span(file, rf),
                &p,
                "`insecure_tls: true` together with `ca`/`fingerprint` is contradictory; remove one",
            );
        }
        let system = rf.value.system.as_ref().and_then(|s| {
            let ok = !s.value.is_empty()
                && s.value.len() <= 64
                && s.value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                diags.error(
                    span(file, s),
                    format!("{p}.system"),
                    "a Systems member id is 1–64 letters, digits, `-`, `_` or `.` (e.g. System.Embedded.1)",
                );
            }
            ok.then(|| s.value.clone())
        });
        address.map(|address| {
            Power::Redfish(Redfish {
                address,
                insecure_tls: insecure,
                ca,
                fingerprint,
                system,
            })
        })
    } else if let Some(w) = &r.wol {
        let p = format!("{path}.wol");
        let broadcast =
            w.value
                .broadcast
                .as_ref()
                .and_then(|b| match b.value.trim().parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(e) => {
                        diags.error(
                            span(file, b),
                            format!("{p}.broadcast"),
                            format!("`{}` is not an IPv4 address: {e}", b.value),
                        );
                        None
                    }
                });
        let interface = w.value.interface.as_ref().and_then(|i| {
            if is_ifname(&i.value) {
                Some(i.value.clone())
            } else {
                diags.error(
                    span(file, i),
                    format!("{p}.interface"),
                    format!(
                        "`{}` is not a Linux interface name (1–15 chars, no `/` or spaces)",
                        i.value
                    ),
                );
                None
            }
        });
        Some(Power::Wol {
            broadcast,
            interface,
        })
    } else if let Some(i) = &r.ipmi {
        let p = format!("{path}.ipmi");
        required_address(file, &p, i, i.value.address.as_ref(), false, diags)
            .map(|address| Power::Ipmi { address })
    } else {
        Some(Power::Manual)
    };
    (diags.errors().count() == before)
        .then_some(power)
        .flatten()
}

/// A WoL magic packet is a link-layer broadcast: it reaches the node only when the appliance
/// sends on the node's own segment. The appliance is validated to be in the served subnet, so
/// the one thing that can point elsewhere is an explicit `broadcast`.
pub(crate) fn wol_reaches(power: &Power, net: &Network) -> Result<(), String> {
    if let Power::Wol {
        broadcast: Some(b), ..
    } = power
    {
        let subnet_bcast = net.subnet.broadcast();
        if *b != subnet_bcast && *b != Ipv4Addr::BROADCAST {
            return Err(format!(
                "wake-on-LAN broadcast {b} is not on the appliance's segment {} (use {subnet_bcast} \
                 or 255.255.255.255); a magic packet does not cross a router",
                net.subnet
            ));
        }
    }
    Ok(())
}

fn required_address<T>(
    file: &str,
    path: &str,
    block: &S<T>,
    address: Option<&S<String>>,
    allow_port_and_https: bool,
    diags: &mut Diagnostics,
) -> Option<String> {
    let Some(a) = address else {
        diags.error(
            span(file, block),
            path,
            "an `address:` (the BMC's host name or IP) is required",
        );
        return None;
    };
    match check_address(&a.value, allow_port_and_https) {
        Ok(v) => Some(v),
        Err(m) => {
            diags.error(span(file, a), format!("{path}.address"), m);
            None
        }
    }
}

/// A BMC address: a host name or IPv4 (Redfish also `host:port` and an `https://` prefix).
/// The value reaches `ipmitool`'s argument list and URLs, so anything that could be read as an
/// option (`-…`) or split a URL (`/`, `@`, `?`, spaces) is refused.
pub fn check_address(v: &str, allow_port_and_https: bool) -> Result<String, String> {
    let mut s = v.trim();
    if allow_port_and_https {
        if s.starts_with("http://") {
            return Err(
                "plain http would send the BMC credentials in clear; use https (or leave the scheme out)"
                    .into(),
            );
        }
        s = s.strip_prefix("https://").unwrap_or(s);
        s = s.strip_suffix('/').unwrap_or(s);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if allow_port_and_https => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if !host_ok {
        return Err(format!(
            "`{v}` is not a BMC address (a host name or IPv4 address{})",
            if allow_port_and_https {
                ", optionally with `:port`"
            } else {
                ""
            }
        ));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("`{p}` is not a port"));
    }
    Ok(s.to_string())
}

fn normalise_fingerprint(v: &str) -> Option<String> {
    let hex: String = v
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && !s.contains(['/', ':'])
        && s.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_that_could_become_options_or_split_urls_are_refused() {
        assert!(check_address("-oProxyCommand=x", false).is_err());
        assert!(check_address("user@bmc", true).is_err());
        assert!(check_address("bmc/redfish", true).is_err());
        assert!(check_address("http://bmc", true).is_err());
        assert!(check_address("bmc:443", false).is_err());
        assert_eq!(
            check_address("https://idrac-r730:8443/", true).unwrap(),
            "idrac-r730:8443"
        );
        assert_eq!(check_address("10.0.20.200", false).unwrap(), "10.0.20.200");
    }

    #[test]
    fn fingerprints_normalise_to_lowercase_hex() {
        let colons = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        assert_eq!(normalise_fingerprint(&colons).unwrap(), "ab".repeat(32));
        assert!(normalise_fingerprint("abcd").is_none());
    }
}
