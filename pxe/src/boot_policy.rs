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

/// The inspect script template (`templates/ipxe/inspect.ipxe.j2`); only plain `{{ name }}`
/// substitutions, filled by [`inspect_script`].
const INSPECT_TEMPLATE: &str = include_str!("../../templates/ipxe/inspect.ipxe.j2");

/// The iPXE script of an inspection boot of `mac`: the installer with `ironseed.mode=inspect`,
/// its facts URL (with the inspect `secret`) and what to do after. `appliance_url` is the
/// bundle's, as in install scripts.
pub fn inspect_script(
    appliance_url: &str,
    mac: &images::bundle::Mac,
    secret: &str,
    after: crate::discovered::AfterInspect,
) -> String {
    let facts = format!(
        "{appliance_url}{}",
        images::bundle::paths::inspect_facts(mac, secret)
    );
    INSPECT_TEMPLATE
        .replace("{{ appliance_url }}", appliance_url)
        .replace("{{ facts_url }}", &facts)
        .replace("{{ after }}", after.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;

    #[test]
    fn inspect_script_names_the_facts_url_and_the_after_action() {
        let mac: images::bundle::Mac = "52:54:00:ab:cd:ef".parse().unwrap();
        let s = inspect_script(
            "http://10.0.0.2:8080",
            &mac,
            "s3cret",
            crate::discovered::AfterInspect::Reboot,
        );
        assert!(s.starts_with("#!ipxe\n"));
        assert!(!s.contains("{{"), "every placeholder filled: {s}");
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        for want in [
            "http://10.0.0.2:8080/artifacts/installer/vmlinuz",
            "ironseed.mode=inspect",
            "ironseed.facts=http://10.0.0.2:8080/inspect/52-54-00-ab-cd-ef/s3cret/facts",
            "ironseed.mac=${net0/mac}",
            "ironseed.after=reboot",
        ] {
            assert!(kernel.contains(want), "{want} missing: {kernel}");
        }
        assert!(s.contains("initrd http://10.0.0.2:8080/artifacts/installer/initrd.img"));
    }

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
