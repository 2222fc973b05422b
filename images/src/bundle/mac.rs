//! The one MAC address type of the workspace: the inventory's, the plan's, DHCP's chaddr and
//! the `/boot/<mac>.ipxe` path all parse and print through it (a fuzz-found parser bug once had
//! to be fixed in two copies).

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address. `Display` is the spelling iPXE prints for `${net0/mac}` (lower
/// case, colons), so it can be used verbatim in per-MAC script URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("`{0}` is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")]
    Syntax(String),
    #[error("`{0}` is a multicast address; a NIC's MAC has the lowest bit of the first byte clear")]
    Multicast(String),
    #[error("00:00:00:00:00:00 is not a NIC's MAC")]
    Zero,
}

impl Mac {
    /// Parse a MAC as the inventory gives a NIC's: syntax, and a unicast, non-zero address.
    pub fn parse_nic(s: &str) -> Result<Mac, MacError> {
        let m: Mac = s.parse()?;
        if m.0[0] & 1 == 1 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if m.0 == [0; 6] {
            return Err(MacError::Zero);
        }
        Ok(m)
    }

    /// `52-54-00-ab-cd-ef`: PXELINUX's and GRUB's per-MAC config names (with a `01-` ARP type
    /// prefix there).
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// `525400abcdef`: iPXE's `${mac:hexraw}` and the UEFI device path spelling.
    pub fn hexraw(&self) -> String {
        super::hex(&self.0)
    }
}

impl FromStr for Mac {
    type Err = MacError;
    /// Six pairs of hex digits separated by `:` or `-` (one separator throughout), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError::Syntax(super::printable(s, 64));
        let sep = if s.contains(':') { ':' } else { '-' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for b in &mut out {
            let p = parts.next().ok_or_else(err)?;
            // Two hex digits exactly: from_str_radix alone also takes a sign ("+a").
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0xAB, 0x01, 0x02]);

    #[test]
    fn the_three_spellings_firmware_uses() {
        assert_eq!(MAC.to_string(), "52:54:00:ab:01:02");
        assert_eq!(MAC.dashed(), "52-54-00-ab-01-02");
        assert_eq!(MAC.hexraw(), "525400ab0102");
        assert_eq!("52-54-00-AB-01-02".parse::<Mac>().unwrap(), MAC);
        assert_eq!(
            serde_json::to_string(&MAC).unwrap(),
            "\"52:54:00:ab:01:02\""
        );
        assert_eq!(
            serde_json::from_str::<Mac>("\"52:54:00:AB:01:02\"").unwrap(),
            MAC
        );
    }

    #[test]
    fn malformed_macs_are_refused() {
        for bad in [
            "52:54:00:ab:01",
            "52:54:00:ab:01:02:03",
            "5:54:00:ab:01:020",
            "52:54:00:ab:01:zz",
            "52:54-00:ab:01:02",
            "",
            // Found by the http_path fuzz target: u8::from_str_radix accepts a leading '+'.
            "52:54:00:52:54:+0",
            "+2:54:00:ab:01:02",
            "52-54-00-ab-01-+f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_nic_mac_is_unicast_and_not_zero() {
        assert!(Mac::parse_nic("52:54:00:ab:cd:01").is_ok());
        assert!(matches!(
            Mac::parse_nic("01:00:5e:00:00:01"),
            Err(MacError::Multicast(_))
        ));
        assert_eq!(Mac::parse_nic("00:00:00:00:00:00"), Err(MacError::Zero));
        // DHCP's chaddr is whatever the client sends: plain parsing takes it.
        assert!("01:00:5e:00:00:01".parse::<Mac>().is_ok());
    }
}
