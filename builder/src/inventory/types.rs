//! Newtypes for the values an inventory is made of; each parses and checks itself.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The workspace's one MAC type (`images::bundle`).
pub use images::bundle::Mac;

/// A MAC as the inventory takes a NIC's: six hex pairs, unicast, not all zeroes. The parse
/// type for validation; the value is a [`Mac`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicMac(pub Mac);

impl FromStr for NicMac {
    type Err = images::bundle::MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mac::parse_nic(s).map(NicMac)
    }
}

/// Host names are the plan contract's type (`images::bundle`).
pub use images::bundle::{Hostname, check_label};

/// A DNS domain: dot-separated RFC 1123 labels.
pub fn check_domain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("`{s}` is longer than 253 characters"));
    }
    for label in s.split('.') {
        check_label(label).map_err(|e| format!("`{s}` is not a DNS name: {e}"))?;
    }
    Ok(())
}

/// A Kubernetes taint `key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taint(String);

impl FromStr for Taint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint `{s}` has no effect (expected key[=value]:Effect)"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint `{s}`: effect `{effect}` is not NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
        check_label_key(key).map_err(|e| format!("taint `{s}`: {e}"))?;
        Ok(Taint(s.to_string()))
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kubernetes label/taint key: optional DNS prefix `/` name (≤ 63, alnum, `-_.`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_domain(prefix).map_err(|e| format!("key `{key}`: prefix {e}"))?;
            name
        }
        None => key,
    };
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("`{key}` is not a valid Kubernetes label key"))
    }
}

pub fn check_label_value(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!("`{v}` is not a valid Kubernetes label value"))
    }
}

/// An OpenSSH public key line (`type base64 [comment]`), checked by decoding the key blob and
/// comparing the type name it carries, which catches truncated and mangled pastes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshKey(String);

const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl SshKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn comment(&self) -> &str {
        self.0.splitn(3, ' ').nth(2).unwrap_or("")
    }
}

impl FromStr for SshKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut it = s.split_whitespace();
        let kind = it.next().ok_or("SSH key is empty")?;
        if !SSH_KEY_TYPES.contains(&kind) {
            return Err(format!(
                "`{kind}` is not an SSH public key type (expected one of {})",
                SSH_KEY_TYPES.join(", ")
            ));
        }
        let b64 = it.next().ok_or("SSH key has no key data after its type")?;
        let blob = base64_decode(b64).ok_or("SSH key data is not valid base64")?;
        if blob.len() < 4 {
            return Err("SSH key data is truncated".into());
        }
        let n = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if blob.len() < 4 + n || &blob[4..4 + n] != kind.as_bytes() {
            return Err(format!(
                "SSH key data does not match its type `{kind}` (truncated or mangled paste?)"
            ));
        }
        if kind == "ssh-ed25519" && blob.len() != 4 + n + 4 + 32 {
            return Err("ssh-ed25519 key data has the wrong length (truncated paste?)".into());
        }
        Ok(SshKey(s.to_string()))
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s.as_bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints_like_ipxe() {
        let m: NicMac = "52-54-00-AB-cd-01".parse().unwrap();
        assert_eq!(m.0.to_string(), "52:54:00:ab:cd:01");
        assert!("52:54:00:ab:cd".parse::<NicMac>().is_err());
        assert!("01:00:5e:00:00:01".parse::<NicMac>().is_err(), "multicast");
        assert!("52:54:00:ab:cd:zz".parse::<NicMac>().is_err());
    }

    #[test]
    fn mac_pairs_are_hex_digits_only() {
        // The flaw the pxe http_path fuzz target found in pxe's parser: u8::from_str_radix
        // accepts a leading '+', so "+2" passed as a pair. An inventory typo must be an error.
        for bad in [
            "+2:54:00:ab:cd:01",
            "52:54:00:ab:cd:+1",
            "52-54-00-ab-cd-+1",
        ] {
            let e = bad.parse::<NicMac>().unwrap_err().to_string();
            assert!(e.contains("not a MAC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn hostname_rfc1123() {
        assert!("k3s-master1".parse::<Hostname>().is_ok());
        assert!("K3S".parse::<Hostname>().is_err());
        assert!("-a".parse::<Hostname>().is_err());
        assert!("a_b".parse::<Hostname>().is_err());
        assert!("a.b".parse::<Hostname>().is_err());
        assert!("a".repeat(64).parse::<Hostname>().is_err());
    }

    #[test]
    fn taints_and_labels() {
        assert!("nvidia.com/gpu=true:NoSchedule".parse::<Taint>().is_ok());
        assert!("dedicated:NoExecute".parse::<Taint>().is_ok());
        assert!("gpu=true".parse::<Taint>().is_err());
        assert!("gpu=true:Never".parse::<Taint>().is_err());
        assert!(check_label_key("homelab/storage-tier").is_ok());
        assert!(check_label_key("bad key").is_err());
        assert!(check_label_value("optane").is_ok());
        assert!(check_label_value("-x").is_err());
    }

    #[test]
    fn ssh_keys_are_decoded() {
        let good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHHbdQMWWKqyVxnEQLvOL+b2tZr9BHlkaBLCx65FHQXV ops@laptop";
        let k: SshKey = good.parse().unwrap();
        assert_eq!(k.comment(), "ops@laptop");
        assert!(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHXkR6y3Q3Lk"
                .parse::<SshKey>()
                .is_err()
        );
        assert!(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHHbdQMWWKqyVxnEQLvOL+b2tZr9BHlkaBLCx65FHQXV"
                .parse::<SshKey>()
                .is_err()
        );
        assert!("not-a-key".parse::<SshKey>().is_err());
        assert!("".parse::<SshKey>().is_err());
    }
}
