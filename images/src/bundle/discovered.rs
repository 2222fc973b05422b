//! A machine `pxe serve` saw on the network that is not in the inventory, as the operator API
//! shows it (`GET /api/v1/discovered` → `{"machines": [Discovered, ...]}`). One type for `pxe`
//! (writes it) and `builder discover`/`adopt` (read it).

use serde::{Deserialize, Serialize};

use super::Mac;
use super::facts::Facts;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovered {
    pub mac: Mac,
    /// DHCP option 93 (client system architecture, RFC 4578 §2.1): 0 BIOS, 7/9 UEFI x64, ...
    pub arch: Option<u16>,
    /// DHCP option 60, printable and bounded.
    pub vendor_class: Option<String>,
    /// DHCP option 97 (client machine identifier) as lower-case hex.
    pub uuid: Option<String>,
    /// Unix time in milliseconds.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// DHCP requests seen from it.
    pub count: u64,
    /// The interface pxe serves on (`--interface`), when known.
    pub interface: Option<String>,
    /// Armed for an inspection boot (`pxe inspect MAC`, or `--inspect unknown` before its
    /// first facts).
    pub inspect: bool,
    /// What its inspection boot reported, once it has.
    pub facts: Option<Facts>,
}

/// The body of `GET /api/v1/discovered`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiscoveredList {
    pub machines: Vec<Discovered>,
}

impl Discovered {
    /// Boot mode from option 93: `bios`, `uefi`, or `-` when unknown.
    pub fn boot_mode(&self) -> &'static str {
        match self.arch {
            Some(0) => "bios",
            Some(6 | 7 | 9 | 10 | 11 | 16) => "uefi",
            _ => "-",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects the contract `builder` reads: the field names and shapes of
    /// `GET /api/v1/discovered`.
    #[test]
    fn the_wire_format_is_the_contract() {
        let d = Discovered {
            mac: "52:54:00:aa:bb:cc".parse().unwrap(),
            arch: Some(7),
            vendor_class: Some("PXEClient:Arch:00007:UNDI:003016".into()),
            uuid: Some("00ab".into()),
            first_seen_ms: 1,
            last_seen_ms: 2,
            count: 3,
            interface: None,
            inspect: true,
            facts: None,
        };
        let v = serde_json::to_value(DiscoveredList {
            machines: vec![d.clone()],
        })
        .unwrap();
        let m = &v["machines"][0];
        let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "arch",
                "count",
                "facts",
                "first_seen_ms",
                "inspect",
                "interface",
                "last_seen_ms",
                "mac",
                "uuid",
                "vendor_class"
            ]
        );
        assert_eq!(m["mac"], "52:54:00:aa:bb:cc");
        assert_eq!(m["facts"], serde_json::Value::Null);
        let back: DiscoveredList = serde_json::from_value(v).unwrap();
        assert_eq!(back.machines[0], d);
        assert_eq!(d.boot_mode(), "uefi");
        assert_eq!(
            Discovered {
                arch: Some(0),
                ..d.clone()
            }
            .boot_mode(),
            "bios"
        );
        assert_eq!(Discovered { arch: None, ..d }.boot_mode(), "-");
    }
}
