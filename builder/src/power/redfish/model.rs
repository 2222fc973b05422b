//! The Redfish resources builder reads and the requests it makes, as pure functions: parse the
//! ServiceRoot, a Systems collection and a ComputerSystem; choose the boot override and the
//! reset type from what the BMC lists in `@Redfish.AllowableValues`; build the PATCH/POST
//! bodies. DSP0266 (Redfish specification) §9.6 "Actions", §9.7 "Annotations", DSP0268
//! ComputerSystem schema. No I/O here.

use serde_json::{Value, json};

use images::bundle::printable;

/// What the BMC answered, reduced to what builder needs. Every string that came from the
/// network is passed through `printable` before it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoot {
    /// `Systems.@odata.id`.
    pub systems: String,
    /// `Links.Sessions.@odata.id`: where to log in (session auth), when offered.
    pub sessions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub odata_id: String,
    pub power_state: Option<String>,
    pub boot: Boot,
    pub reset: Option<ResetAction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Boot {
    pub enabled: Option<String>,
    pub target: Option<String>,
    pub mode: Option<String>,
    /// `None`: the annotation is absent, which per DSP0266 §9.7.4 means "every value of the
    /// schema" — but a BMC that lists them is only sent listed values.
    pub enabled_allowed: Option<Vec<String>>,
    pub target_allowed: Option<Vec<String>>,
    pub mode_allowed: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetAction {
    pub target: String,
    pub allowed: Option<Vec<String>>,
}

/// A problem with what the BMC sent or offers. Texts are already printable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error(
        "the BMC does not offer {property} = {wanted}; it allows: {}",
        allowed.join(", ")
    )]
    Unsupported {
        property: &'static str,
        wanted: String,
        allowed: Vec<String>,
    },
    #[error("{0}")]
    Systems(String),
}

fn s(v: &Value, max: usize) -> Option<String> {
    v.as_str().map(|x| printable(x, max))
}

fn odata_id(v: &Value) -> Option<String> {
    s(&v["@odata.id"], 512)
}

/// `@odata.id` of a resource, printable.
pub fn odata_id_of(v: &Value) -> Option<String> {
    odata_id(v)
}

fn allowed(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|x| s(x, 64))
            .take(64) // a list a BMC can grow: bounded
            .collect()
    })
}

/// An `@odata.id` must be a path on the same service: an absolute URL would send the
/// credentials to whatever host the answer names.
fn same_service_path(what: &'static str, p: String) -> Result<String, ModelError> {
    if p.starts_with('/') && !p.starts_with("//") {
        Ok(p)
    } else {
        Err(ModelError::Malformed {
            what,
            why: format!("`{p}` is not a path on this service"),
        })
    }
}

pub fn parse_root(v: &Value) -> Result<ServiceRoot, ModelError> {
    let systems = odata_id(&v["Systems"]).ok_or(ModelError::Malformed {
        what: "ServiceRoot",
        why: "no Systems collection (is this a Redfish service?)".into(),
    })?;
    let sessions = match odata_id(&v["Links"]["Sessions"]) {
        Some(p) => Some(same_service_path("ServiceRoot Links.Sessions", p)?),
        None => None,
    };
    Ok(ServiceRoot {
        systems: same_service_path("ServiceRoot Systems", systems)?,
        sessions,
    })
}

/// The member of a Systems collection to drive: the one whose id (last path segment) is
/// `wanted`, or the only member when none is named.
pub fn pick_system(collection: &Value, wanted: Option<&str>) -> Result<String, ModelError> {
    let members: Vec<String> = collection["Members"]
        .as_array()
        .ok_or(ModelError::Malformed {
            what: "Systems collection",
            why: "no Members array".into(),
        })?
        .iter()
        .filter_map(odata_id)
        .take(256)
        .collect();
    let id_of = |m: &str| {
        m.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    };
    let ids: Vec<String> = members.iter().map(|m| id_of(m)).collect();
    let chosen = match wanted {
        Some(w) => members.iter().find(|m| id_of(m) == w).ok_or_else(|| {
            ModelError::Systems(format!(
                "the BMC has no system `{w}`; it has: {}",
                list_or_none(&ids)
            ))
        })?,
        None => match members.as_slice() {
            [one] => one,
            [] => return Err(ModelError::Systems("the BMC lists no systems".into())),
            _ => {
                return Err(ModelError::Systems(format!(
                    "the BMC manages several systems ({}); name one in the node's `power.redfish.system`",
                    ids.join(", ")
                )));
            }
        },
    };
    same_service_path("Systems member", chosen.clone())
}

fn list_or_none(l: &[String]) -> String {
    if l.is_empty() {
        "none".into()
    } else {
        l.join(", ")
    }
}

pub fn parse_system(v: &Value) -> Result<System, ModelError> {
    let odata_id = odata_id(v).ok_or(ModelError::Malformed {
        what: "ComputerSystem",
        why: "no @odata.id".into(),
    })?;
    let b = &v["Boot"];
    let boot = Boot {
        enabled: s(&b["BootSourceOverrideEnabled"], 64),
        target: s(&b["BootSourceOverrideTarget"], 64),
        mode: s(&b["BootSourceOverrideMode"], 64),
        enabled_allowed: allowed(&b["BootSourceOverrideEnabled@Redfish.AllowableValues"]),
        target_allowed: allowed(&b["BootSourceOverrideTarget@Redfish.AllowableValues"]),
        mode_allowed: allowed(&b["BootSourceOverrideMode@Redfish.AllowableValues"]),
    };
    let a = &v["Actions"]["#ComputerSystem.Reset"];
    let reset = match s(&a["target"], 512) {
        Some(t) => Some(ResetAction {
            target: same_service_path("ComputerSystem.Reset target", t)?,
            allowed: allowed(&a["ResetType@Redfish.AllowableValues"]),
        }),
        None => None,
    };
    Ok(System {
        odata_id: same_service_path("ComputerSystem", odata_id)?,
        power_state: s(&v["PowerState"], 32),
        boot,
        reset,
    })
}

/// `PowerState` as on/off; the transitional `PoweringOn`/`PoweringOff` count as the state they
/// head for only once reached, so they are `None` (keep polling).
pub fn power_state(s: &System) -> Option<super::super::PowerState> {
    match s.power_state.as_deref() {
        Some("On") => Some(super::super::PowerState::On),
        Some("Off") => Some(super::super::PowerState::Off),
        _ => None,
    }
}

fn check(
    property: &'static str,
    wanted: &str,
    allowed: &Option<Vec<String>>,
) -> Result<(), ModelError> {
    match allowed {
        Some(list) if !list.iter().any(|a| a == wanted) => Err(ModelError::Unsupported {
            property,
            wanted: wanted.to_string(),
            allowed: list.clone(),
        }),
        _ => Ok(()),
    }
}

/// The override "boot from the network once" for `sys`, as the PATCH body for the
/// ComputerSystem. `uefi`: the profile's firmware; an override made for the other boot mode is
/// ignored by the firmware (iDRAC8: the server boots its disk), so the mode is set when the BMC
/// reports one that differs — and refused when the BMC does not offer the right one.
pub fn pxe_once_body(sys: &System, uefi: bool) -> Result<Value, ModelError> {
    let b = &sys.boot;
    check("BootSourceOverrideTarget", "Pxe", &b.target_allowed)?;
    check("BootSourceOverrideEnabled", "Once", &b.enabled_allowed)?;
    let mut boot = json!({
        "BootSourceOverrideTarget": "Pxe",
        "BootSourceOverrideEnabled": "Once",
    });
    let want_mode = if uefi { "UEFI" } else { "Legacy" };
    // A BMC that does not report the property has no per-override mode (older iDRAC
    // firmware): the BIOS boot mode decides, which the operator must set (docs/power.md).
    if b.mode.is_some() || b.mode_allowed.is_some() {
        check("BootSourceOverrideMode", want_mode, &b.mode_allowed)?;
        if b.mode.as_deref() != Some(want_mode) {
            boot["BootSourceOverrideMode"] = json!(want_mode);
        }
    }
    Ok(json!({ "Boot": boot }))
}

/// How the read-back of an override compares with what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideCheck {
    Set,
    /// The target is Pxe but the BMC keeps it `Continuous` (sushy-emulator's libvirt driver,
    /// some BMCs): the machine network-boots on every boot until the override is cleared.
    Persistent(String),
    /// The PATCH was answered with success and nothing changed.
    Ignored(String),
}

pub fn check_override(asked: &Value, now: &System) -> OverrideCheck {
    let b = &now.boot;
    let got = format!(
        "target {}, enabled {}, mode {}",
        b.target.as_deref().unwrap_or("-"),
        b.enabled.as_deref().unwrap_or("-"),
        b.mode.as_deref().unwrap_or("-"),
    );
    let mode_ok = asked["Boot"]["BootSourceOverrideMode"]
        .as_str()
        .is_none_or(|m| b.mode.as_deref() == Some(m));
    if b.target.as_deref() != Some("Pxe") || !mode_ok {
        return OverrideCheck::Ignored(got);
    }
    match b.enabled.as_deref() {
        Some("Once") => OverrideCheck::Set,
        _ => OverrideCheck::Persistent(got),
    }
}

/// What a power action asks of `ComputerSystem.Reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    On,
    Off,
    Cycle,
}

/// The `ResetType` for `want`, only from the values the BMC allows (in order of preference):
/// on → `On` (`ForceOn`); off → `ForceOff`; cycle → `PowerCycle` (a real cold cycle, newer
/// iDRAC firmware), else `ForceRestart`.
pub fn reset_type(reset: &ResetAction, want: Want) -> Result<&'static str, ModelError> {
    let prefs: &[&'static str] = match want {
        Want::On => &["On", "ForceOn"],
        Want::Off => &["ForceOff"],
        Want::Cycle => &["PowerCycle", "ForceRestart"],
    };
    match &reset.allowed {
        // DSP0266: no annotation = every value of the schema; PowerCycle is not in older
        // schema versions, so without a list the widely supported value is used.
        None => Ok(match want {
            Want::Cycle => "ForceRestart",
            _ => prefs[0],
        }),
        Some(list) => prefs
            .iter()
            .copied()
            .find(|p| list.iter().any(|a| a == p))
            .ok_or_else(|| ModelError::Unsupported {
                property: "ResetType",
                wanted: prefs.join(" or "),
                allowed: list.clone(),
            }),
    }
}

pub fn reset_body(reset_type: &str) -> Value {
    json!({ "ResetType": reset_type })
}

pub fn session_body(username: &str, password: &str) -> Value {
    json!({ "UserName": username, "Password": password })
}

/// The message of a Redfish error body (`error.@Message.ExtendedInfo[].Message`, else
/// `error.message`), printable and bounded.
pub fn error_message(v: &Value) -> Option<String> {
    let e = &v["error"];
    let ext: Vec<String> = e["@Message.ExtendedInfo"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| s(&m["Message"], 200))
                .take(3)
                .collect()
        })
        .unwrap_or_default();
    if !ext.is_empty() {
        return Some(ext.join("; "));
    }
    s(&e["message"], 300)
}

#[cfg(test)]
pub(crate) mod tests_data {
    /// sushy-emulator 1.x (libvirt driver), rendered from its templates/system.json for a
    /// powered-off UEFI domain.
    pub(crate) const SUSHY_SYSTEM: &str = r##"{
        "@odata.type": "#ComputerSystem.v1_1_0.ComputerSystem",
        "Id": "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "Name": "rf-node",
        "UUID": "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "Manufacturer": "Sushy Emulator",
        "Status": {"State": "Enabled", "Health": "OK", "HealthRollUp": "OK"},
        "PowerState": "Off",
        "Boot": {
            "BootSourceOverrideEnabled": "Continuous",
            "BootSourceOverrideTarget": "Hdd",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd", "Hdd"],
            "BootSourceOverrideMode": "UEFI",
            "UefiTargetBootSourceOverride": "/0x31/0x33/0x01/0x01"
        },
        "Links": {"Chassis": [], "ManagedBy": [{"@odata.id": "/redfish/v1/Managers/58893887-8974-2487-2389-841168418919"}]},
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/c7a5fdbd-cdaf-9455-926a-d65c16db1809/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"]
            }
        },
        "@odata.context": "/redfish/v1/$metadata#ComputerSystem.ComputerSystem",
        "@odata.id": "/redfish/v1/Systems/c7a5fdbd-cdaf-9455-926a-d65c16db1809"
    }"##;

    pub(crate) const SUSHY_ROOT: &str = r##"{
        "@odata.type": "#ServiceRoot.v1_0_2.ServiceRoot",
        "Id": "RedvirtService", "Name": "Redvirt Service", "RedfishVersion": "1.0.2",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "Managers": {"@odata.id": "/redfish/v1/Managers"},
        "@odata.id": "/redfish/v1/"
    }"##;

    pub(crate) const SUSHY_SYSTEMS: &str = r##"{
        "@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
        "Name": "Computer System Collection",
        "Members@odata.count": 1,
        "Members": [{"@odata.id": "/redfish/v1/Systems/c7a5fdbd-cdaf-9455-926a-d65c16db1809"}],
        "@odata.id": "/redfish/v1/Systems"
    }"##;

    /// iDRAC8 (firmware 2.7x) ServiceRoot and System.Embedded.1, as Dell documents them and
    /// as seen in public captures: BIOS boot mode, no PowerCycle.
    pub(crate) const IDRAC8_ROOT: &str = r##"{
        "@odata.context": "/redfish/v1/$metadata#ServiceRoot.ServiceRoot",
        "@odata.id": "/redfish/v1",
        "@odata.type": "#ServiceRoot.v1_3_0.ServiceRoot",
        "AccountService": {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/AccountService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/Sessions"}},
        "RedfishVersion": "1.4.0",
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Systems": {"@odata.id": "/redfish/v1/Systems"}
    }"##;

    pub(crate) const IDRAC8_SYSTEM: &str = r##"{
        "@odata.id": "/redfish/v1/Systems/System.Embedded.1",
        "@odata.type": "#ComputerSystem.v1_5_0.ComputerSystem",
        "Actions": {
            "#ComputerSystem.Reset": {
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulRestart", "GracefulShutdown", "PushPowerButton", "Nmi"],
                "target": "/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset"
            }
        },
        "Boot": {
            "BootOrder": ["HardDisk.List.1-1", "NIC.Integrated.1-1-1"],
            "BootSourceOverrideEnabled": "Disabled",
            "BootSourceOverrideMode": "Legacy",
            "BootSourceOverrideTarget": "None",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Floppy", "Cd", "Hdd", "BiosSetup", "Utilities", "UefiTarget", "SDCard", "UefiHttp"],
            "UefiTargetBootSourceOverride": null
        },
        "Id": "System.Embedded.1",
        "PowerState": "On"
    }"##;

    /// DMTF Redfish-Mockup-Server "public-rackmount1" ComputerSystem (abridged): every
    /// annotation present, PowerCycle offered.
    pub(crate) const DMTF_SYSTEM: &str = r##"{
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": "437XR1138R2",
        "PowerState": "On",
        "Boot": {
            "BootSourceOverrideEnabled": "Once",
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "Utilities", "Diags", "SDCard", "UefiTarget"],
            "BootSourceOverrideMode": "UEFI",
            "BootSourceOverrideMode@Redfish.AllowableValues": ["Legacy", "UEFI"],
            "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"]
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn", "PushPowerButton", "PowerCycle"]
            }
        },
        "@odata.id": "/redfish/v1/Systems/437XR1138R2"
    }"##;
}

#[cfg(test)]
mod tests {
    use super::tests_data::*;
    use super::*;

    fn j(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn service_roots_are_parsed() {
        let r = parse_root(&j(SUSHY_ROOT)).unwrap();
        assert_eq!(r.systems, "/redfish/v1/Systems");
        assert_eq!(r.sessions, None, "sushy offers no sessions: basic auth");
        let r = parse_root(&j(IDRAC8_ROOT)).unwrap();
        assert_eq!(r.sessions.as_deref(), Some("/redfish/v1/Sessions"));
        assert!(parse_root(&j(r#"{"Name": "not redfish"}"#)).is_err());
    }

    /// Protects the credentials: a link to another host is refused, so a hostile answer
    /// cannot make builder log in (or send basic auth) elsewhere.
    #[test]
    fn links_to_other_hosts_are_refused() {
        let v = j(
            r#"{"Systems": {"@odata.id": "/redfish/v1/Systems"}, "Links": {"Sessions": {"@odata.id": "https://evil.example/steal"}}}"#,
        );
        assert!(parse_root(&v).is_err());
        let v = j(r#"{"Systems": {"@odata.id": "//evil.example/Systems"}}"#);
        assert!(parse_root(&v).is_err());
        let c = j(r#"{"Members": [{"@odata.id": "https://evil.example/x"}]}"#);
        assert!(pick_system(&c, None).is_err());
    }

    #[test]
    fn the_system_is_picked_by_id_or_as_the_only_one() {
        let c = j(SUSHY_SYSTEMS);
        assert_eq!(
            pick_system(&c, None).unwrap(),
            "/redfish/v1/Systems/c7a5fdbd-cdaf-9455-926a-d65c16db1809"
        );
        let two = j(
            r#"{"Members": [{"@odata.id": "/redfish/v1/Systems/System.Embedded.1"}, {"@odata.id": "/redfish/v1/Systems/System.Embedded.2/"}]}"#,
        );
        let e = pick_system(&two, None).unwrap_err().to_string();
        assert!(e.contains("System.Embedded.1, System.Embedded.2"), "{e}");
        assert_eq!(
            pick_system(&two, Some("System.Embedded.2")).unwrap(),
            "/redfish/v1/Systems/System.Embedded.2/"
        );
        let e = pick_system(&two, Some("System.Embedded.9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no system `System.Embedded.9`"), "{e}");
        assert!(pick_system(&j(r#"{"Members": []}"#), None).is_err());
    }

    #[test]
    fn systems_are_parsed() {
        let s = parse_system(&j(SUSHY_SYSTEM)).unwrap();
        assert_eq!(s.power_state.as_deref(), Some("Off"));
        assert_eq!(power_state(&s), Some(crate::power::PowerState::Off));
        assert_eq!(s.boot.target.as_deref(), Some("Hdd"));
        assert_eq!(s.boot.mode.as_deref(), Some("UEFI"));
        assert_eq!(s.boot.enabled_allowed, None);
        assert_eq!(
            s.boot.target_allowed,
            Some(vec!["Pxe".into(), "Cd".into(), "Hdd".into()])
        );
        let r = s.reset.unwrap();
        assert!(r.target.ends_with("/Actions/ComputerSystem.Reset"));
        assert_eq!(r.allowed.unwrap().len(), 7);
        let i = parse_system(&j(IDRAC8_SYSTEM)).unwrap();
        assert_eq!(power_state(&i), Some(crate::power::PowerState::On));
        let mut t = j(IDRAC8_SYSTEM);
        t["PowerState"] = json!("PoweringOn");
        assert_eq!(power_state(&parse_system(&t).unwrap()), None);
    }

    #[test]
    fn pxe_once_sets_the_mode_only_when_it_differs_and_is_offered() {
        let sushy = parse_system(&j(SUSHY_SYSTEM)).unwrap();
        assert_eq!(
            pxe_once_body(&sushy, true).unwrap(),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})
        );
        assert_eq!(
            pxe_once_body(&sushy, false).unwrap()["Boot"]["BootSourceOverrideMode"],
            "Legacy"
        );
        let idrac = parse_system(&j(IDRAC8_SYSTEM)).unwrap();
        assert_eq!(
            pxe_once_body(&idrac, true).unwrap()["Boot"]["BootSourceOverrideMode"],
            "UEFI"
        );
        // DMTF lists its modes: both are offered, the current one is not re-sent.
        let dmtf = parse_system(&j(DMTF_SYSTEM)).unwrap();
        assert!(
            pxe_once_body(&dmtf, true).unwrap()["Boot"]
                .get("BootSourceOverrideMode")
                .is_none()
        );
        // No mode property at all: nothing to set (the BIOS decides).
        let mut bare = j(IDRAC8_SYSTEM);
        bare["Boot"]
            .as_object_mut()
            .unwrap()
            .remove("BootSourceOverrideMode");
        let b = pxe_once_body(&parse_system(&bare).unwrap(), true).unwrap();
        assert!(b["Boot"].get("BootSourceOverrideMode").is_none());
    }

    /// Protects against sending a value the BMC does not list: the error names the allowed ones.
    #[test]
    fn unsupported_values_are_refused_with_the_allowed_list() {
        let mut v = j(SUSHY_SYSTEM);
        v["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"] = json!(["Cd", "Hdd"]);
        let e = pxe_once_body(&parse_system(&v).unwrap(), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the BMC does not offer BootSourceOverrideTarget = Pxe; it allows: Cd, Hdd"
        );
        let mut v = j(DMTF_SYSTEM);
        v["Boot"]["BootSourceOverrideMode@Redfish.AllowableValues"] = json!(["UEFI"]);
        let e = pxe_once_body(&parse_system(&v).unwrap(), false).unwrap_err();
        assert!(
            e.to_string()
                .contains("BootSourceOverrideMode = Legacy; it allows: UEFI")
        );
        let mut v = j(DMTF_SYSTEM);
        v["Boot"]["BootSourceOverrideEnabled@Redfish.AllowableValues"] = json!(["Continuous"]);
        assert!(pxe_once_body(&parse_system(&v).unwrap(), true).is_err());
    }

    #[test]
    fn reset_types_come_from_the_allowed_values() {
        let sushy = parse_system(&j(SUSHY_SYSTEM)).unwrap().reset.unwrap();
        assert_eq!(reset_type(&sushy, Want::On).unwrap(), "On");
        assert_eq!(reset_type(&sushy, Want::Off).unwrap(), "ForceOff");
        assert_eq!(reset_type(&sushy, Want::Cycle).unwrap(), "ForceRestart");
        let dmtf = parse_system(&j(DMTF_SYSTEM)).unwrap().reset.unwrap();
        assert_eq!(reset_type(&dmtf, Want::Cycle).unwrap(), "PowerCycle");
        // iDRAC8 2.7x offers neither PowerCycle nor ForceRestart.
        let idrac = parse_system(&j(IDRAC8_SYSTEM)).unwrap().reset.unwrap();
        let e = reset_type(&idrac, Want::Cycle).unwrap_err().to_string();
        assert!(
            e.contains("ResetType = PowerCycle or ForceRestart; it allows: On, ForceOff"),
            "{e}"
        );
        let only_force_on = ResetAction {
            target: "/x".into(),
            allowed: Some(vec!["ForceOn".into()]),
        };
        assert_eq!(reset_type(&only_force_on, Want::On).unwrap(), "ForceOn");
        let unlisted = ResetAction {
            target: "/x".into(),
            allowed: None,
        };
        assert_eq!(reset_type(&unlisted, Want::Cycle).unwrap(), "ForceRestart");
        assert_eq!(reset_body("On"), json!({"ResetType": "On"}));
    }

    #[test]
    fn override_read_back_tells_set_persistent_and_ignored_apart() {
        let asked = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
        let dmtf = parse_system(&j(DMTF_SYSTEM)).unwrap();
        assert_eq!(check_override(&asked, &dmtf), OverrideCheck::Set);
        let mut v = j(SUSHY_SYSTEM);
        v["Boot"]["BootSourceOverrideTarget"] = json!("Pxe");
        assert!(matches!(
            check_override(&asked, &parse_system(&v).unwrap()),
            OverrideCheck::Persistent(_)
        ));
        // 204 and nothing changed: still Hdd.
        let unchanged = parse_system(&j(SUSHY_SYSTEM)).unwrap();
        assert_eq!(
            check_override(&asked, &unchanged),
            OverrideCheck::Ignored("target Hdd, enabled Continuous, mode UEFI".into())
        );
        let asked_mode = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideMode": "Legacy"}});
        assert!(matches!(
            check_override(&asked_mode, &dmtf),
            OverrideCheck::Ignored(_)
        ));
    }

    /// Protects the terminal: control characters in a BMC's error text are dropped.
    #[test]
    fn error_messages_are_printable() {
        let v = j(
            r#"{"error": {"code": "Base.1.0.GeneralError", "message": "x", "@Message.ExtendedInfo": [{"Message": "bad\u001b[2Jvalue"}]}}"#,
        );
        assert_eq!(error_message(&v).unwrap(), "bad[2Jvalue");
        assert_eq!(
            error_message(&j(r#"{"error": {"message": "plain"}}"#)).unwrap(),
            "plain"
        );
        assert_eq!(error_message(&j("{}")), None);
    }
}
