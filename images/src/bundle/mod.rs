//! The contract between the node and the appliance, typed once: what the installer and the
//! first boot send to `pxe`, at which URLs, with which secrets. `pxe` accepts exactly these
//! types and the installer posts exactly these, so the two sides cannot drift apart.
//!
//! Two secrets guard the node-facing routes (Ironic's agent token, Foreman's build token):
//! - the **install secret**, minted by `pxe` when a node is armed, never written into the
//!   bundle: the boot script, the plan, the seed and every install event carry it, and it dies
//!   at `installed`, `failed`, disarm, re-arm or the end of the install window;
//! - the **report token**, per node, rendered into that node's seed (owner-only): first-boot
//!   reports (`booted`, notes) carry it, and `pxe` accepts them only from the node's own address.

use serde::{Deserialize, Serialize};

pub mod cluster;
pub mod discovered;
pub mod facts;
pub mod files;
mod mac;
mod plan;

pub use mac::{Mac, MacError};
pub use plan::{
    Appliance, Artifact, EfiBootFile, Firmware, Hostname, KERNEL_ARG_MAX_LEN, KERNEL_ARGS_MAX,
    Network, Plan, PlanError, PlanNode, Pool, Role, check_kernel_arg, check_label,
};

/// The version of `plan.json` this release writes and reads. 2: install secrets (no seed token
/// in the bundle), per-node report tokens. 3: per-node `efi_boot_file` and `secure_boot` (an
/// older pxe would refuse the new fields with a less clear "unknown field").
pub const PLAN_VERSION: u32 = 3;

/// What the bundle's install scripts carry where the install secret goes: `pxe` puts the live
/// secret there when it serves the script, so no secret sits in a world-readable bundle file.
pub const INSTALL_SECRET_PLACEHOLDER: &str = "@IRONSEED_INSTALL_SECRET@";

/// Longest `reason` or note `detail` `pxe` keeps (bytes, cut on a character boundary).
pub const NOTE_MAX: usize = 256;

/// What the installer reports while it installs (`POST <plan.report>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum InstallEvent {
    Installing {
        #[serde(default)]
        disk: String,
        #[serde(default)]
        total: u64,
        /// UEFI Secure Boot as the installer found it (efivars, else the kernel log); `None`
        /// under BIOS or when unreadable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secure_boot: Option<bool>,
    },
    Progress {
        written: u64,
        #[serde(default)]
        total: u64,
    },
    /// The image is written and verified: its sha256, which must be the one the plan named.
    Installed {
        sha256: String,
    },
    Failed {
        reason: String,
    },
    /// Something the operator should see in the node's timeline that does not change its state:
    /// `firmware` for each `firmware: failed to load` line of the kernel log (a NIC whose
    /// firmware blob is missing stays link-down with no other sign).
    Note {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        detail: String,
    },
}

/// Most firmware notes the installer reports per install, and longest detail it sends; pxe
/// bounds notes again on its side ([`NOTE_MAX`], and its per-node notes cap).
pub const FIRMWARE_NOTES_MAX: usize = 8;

/// The `firmware: failed to load` lines of a kernel log (`/dev/kmsg` messages, one a line),
/// printable and cut to [`NOTE_MAX`], at most [`FIRMWARE_NOTES_MAX`] of them (distinct, first
/// seen first): what the installer reports as `firmware` notes.
pub fn firmware_failures(kernel_log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in kernel_log.lines() {
        if out.len() == FIRMWARE_NOTES_MAX {
            break;
        }
        if !l.contains("firmware: failed to load") {
            continue;
        }
        let l = printable(l.trim(), NOTE_MAX);
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

/// What a node reports after the install, from its first boot (`POST <report>/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ReportEvent {
    Booted,
    /// A first-boot step (`k3s-config`, `first-boot-failed`, ...): logged, state unchanged.
    Note {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        detail: String,
    },
    /// The installed OS's UEFI Secure Boot state at first boot (efivars): `None` under BIOS
    /// or when unreadable. State unchanged; pxe warns when the plan says `secure_boot` and
    /// the node reports it off.
    SecureBoot {
        #[serde(default)]
        secure_boot: Option<bool>,
    },
}

/// The node-facing URL paths, relative to the appliance URL.
pub mod paths {
    /// The install plan the installer fetches (`ironseed.plan=` on its kernel command line).
    pub fn plan(host: &str, secret: &str) -> String {
        format!("/plan/{host}/{secret}")
    }
    /// The node's seed folder (`user-data`, `meta-data`, `network-config` below it).
    pub fn seed(host: &str, secret: &str) -> String {
        format!("/seed/{host}/{secret}")
    }
    /// Where the installer posts [`super::InstallEvent`]s.
    pub fn install_events(host: &str, secret: &str) -> String {
        format!("/install/{host}/{secret}/events")
    }
    /// Where an inspection boot posts its [`super::facts::Facts`] (`ironseed.facts=` on the
    /// installer's kernel command line, with `ironseed.mode=inspect`).
    pub fn inspect_facts(mac: &super::Mac, secret: &str) -> String {
        format!("/inspect/{}/{secret}/facts", mac.dashed())
    }
    /// The first boot's report base: `<base>/events` takes [`super::ReportEvent`]s,
    /// `<base>/phone-home` cloud-init's phone_home form.
    pub fn report(host: &str, token: &str) -> String {
        format!("/report/{host}/{token}")
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `s` with control characters (terminal escapes, newlines) dropped and cut to at most `max`
/// bytes on a character boundary: for anything from the network that reaches a log, a
/// terminal or the node's timeline.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    // Bidirectional overrides and isolates (U+202A-202E, U+2066-2069) and marks are not
    // control characters to Rust, yet reorder what a terminal shows.
    let bidi = |c: &char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    for c in s.chars().filter(|c| !c.is_control() && !bidi(c)) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_use_the_wire_format_both_sides_share() {
        let e: InstallEvent =
            serde_json::from_str(r#"{"event":"progress","written":5,"total":9}"#).unwrap();
        assert_eq!(
            e,
            InstallEvent::Progress {
                written: 5,
                total: 9
            }
        );
        let back = serde_json::to_string(&InstallEvent::Installed {
            sha256: "ab".into(),
        })
        .unwrap();
        assert_eq!(back, r#"{"event":"installed","sha256":"ab"}"#);
        // An install event is not a report and the other way round: first boot cannot claim
        // `installed`, and the installer cannot claim `booted`.
        assert!(serde_json::from_str::<ReportEvent>(&back).is_err());
        assert!(serde_json::from_str::<InstallEvent>(r#"{"event":"booted"}"#).is_err());
        for bad in [
            r#"{"event":"arm"}"#,
            r#"{"event":"explode"}"#,
            r#"{"event":"progress","written":1,"extra":2}"#,
        ] {
            assert!(serde_json::from_str::<InstallEvent>(bad).is_err(), "{bad}");
        }
        let n: ReportEvent =
            serde_json::from_str(r#"{"event":"note","kind":"k3s-config","detail":"x"}"#).unwrap();
        assert!(matches!(n, ReportEvent::Note { .. }));
        // What firstboot.sh posts (null under BIOS), and the installer's `installing`.
        for (json, want) in [
            (r#"{"event":"secure-boot","secure_boot":true}"#, Some(true)),
            (
                r#"{"event":"secure-boot","secure_boot":false}"#,
                Some(false),
            ),
            (r#"{"event":"secure-boot","secure_boot":null}"#, None),
        ] {
            let e: ReportEvent = serde_json::from_str(json).unwrap();
            assert_eq!(e, ReportEvent::SecureBoot { secure_boot: want }, "{json}");
        }
        let i: InstallEvent = serde_json::from_str(
            r#"{"event":"installing","disk":"/dev/vda","total":1,"secure_boot":true}"#,
        )
        .unwrap();
        assert!(matches!(
            i,
            InstallEvent::Installing {
                secure_boot: Some(true),
                ..
            }
        ));
        let old: InstallEvent =
            serde_json::from_str(r#"{"event":"installing","disk":"/dev/vda"}"#).unwrap();
        assert!(matches!(
            old,
            InstallEvent::Installing {
                secure_boot: None,
                ..
            }
        ));
    }

    #[test]
    fn printable_drops_escapes_and_cuts_on_a_char_boundary() {
        assert_eq!(printable("a\x1b[31mb\nc", 100), "a[31mbc");
        assert_eq!(
            printable("ab\u{202e}cd\u{2066}e", 100),
            "abcde",
            "bidi overrides dropped"
        );
        assert_eq!(printable("ééé", 5), "éé");
        assert_eq!(printable(&"x".repeat(1000), NOTE_MAX).len(), NOTE_MAX);
    }

    /// Protects the timeline from a kernel log the node controls: lines are made printable,
    /// cut, deduplicated and capped.
    #[test]
    fn firmware_failures_are_bounded_printable_lines() {
        let log = "\
bnx2x 0000:01:00.0: firmware: failed to load bnx2x/bnx2x-e2-7.13.21.0.fw (-2)
bnx2x 0000:01:00.0: Direct firmware load for bnx2x/bnx2x-e2-7.13.21.0.fw failed with error -2
r8169 0000:02:00.0: firmware: failed to load rtl_nic/rtl8168h-2.fw (-2)
r8169 0000:02:00.0: firmware: failed to load rtl_nic/rtl8168h-2.fw (-2)
e1000e: Intel(R) PRO/1000 Network Driver
";
        assert_eq!(
            firmware_failures(log),
            [
                "bnx2x 0000:01:00.0: firmware: failed to load bnx2x/bnx2x-e2-7.13.21.0.fw (-2)",
                "r8169 0000:02:00.0: firmware: failed to load rtl_nic/rtl8168h-2.fw (-2)",
            ]
        );
        let hostile: String = (0..100)
            .map(|i| {
                format!(
                    "x{i} firmware: failed to load \x1b[31m{}\n",
                    "a".repeat(1000)
                )
            })
            .collect();
        let f = firmware_failures(&hostile);
        assert_eq!(f.len(), FIRMWARE_NOTES_MAX);
        assert!(f.iter().all(|l| l.len() <= NOTE_MAX && !l.contains('\x1b')));
        assert!(firmware_failures("").is_empty());
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
    }
}
