//! What a PXE-booting machine is told over HTTP, as a pure function of what the server knows.
//! Install-once lives here: only a node armed for install ever gets the installer.

use crate::state::NodeState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The node's install script (installer kernel + initrd, its plan URL).
    Install,
    /// Boot the local disk: the node is installed, failed (waiting for an operator), or disarmed.
    Local,
    /// Not in the inventory: never installed, sent on to the next boot device.
    Unknown,
}

impl Script {
    pub fn label(self) -> &'static str {
        match self {
            Script::Install => "install",
            Script::Local => "local",
            Script::Unknown => "unknown",
        }
    }
}

pub fn choose(node_state: Option<NodeState>) -> Script {
    match node_state {
        None => Script::Unknown,
        Some(s) if s.install_armed() => Script::Install,
        Some(_) => Script::Local,
    }
}

/// Parse the MAC of `/boot/<mac>.ipxe` as iPXE prints `${net0/mac}` (colons), also accepting
/// `-` separators and upper case. Anything else is `None`.
pub fn parse_boot_file(file: &str) -> Option<crate::proto::dhcp::MacAddr> {
    let mac = file.strip_suffix(".ipxe")?;
    if mac.len() != 17 {
        return None;
    }
    mac.replace('-', ":").to_ascii_lowercase().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;

    #[test]
    fn only_armed_states_get_the_installer() {
        assert_eq!(choose(None), Script::Unknown);
        for s in [Armed, Booting, Installing] {
            assert_eq!(choose(Some(s)), Script::Install, "{s:?}");
        }
        for s in [Installed, Booted, Failed, Disarmed] {
            assert_eq!(choose(Some(s)), Script::Local, "{s:?}");
        }
    }

    #[test]
    fn boot_file_names() {
        let m = parse_boot_file("52:54:00:ab:cd:ef.ipxe").unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(parse_boot_file("52-54-00-AB-CD-EF.ipxe"), Some(m));
        for bad in [
            "52:54:00:ab:cd:ef",
            "../../etc/passwd.ipxe",
            "52:54:00:ab:cd.ipxe",
            "",
            ".ipxe",
            "zz:54:00:ab:cd:ef.ipxe",
        ] {
            assert_eq!(parse_boot_file(bad), None, "{bad}");
        }
    }
}
