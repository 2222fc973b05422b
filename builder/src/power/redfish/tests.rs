//! The driver's request sequence against replayed BMC answers (captures in `model`'s tests):
//! login, discovery, override, reset, read-backs, logout — and the round trips each takes.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde_json::{Value, json};

use super::client::{Http, Reply};
use super::*;

/// A BMC: the ServiceRoot, one system, optional sessions; records every request.
struct FakeBmc {
    root: Value,
    system: Value,
    /// Applies PATCHes and resets (false: answers 204 and does nothing).
    obeys: bool,
    password: &'static str,
    log: Rc<RefCell<Vec<String>>>,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        auth_token: None,
        location: None,
    }
}

impl Http for FakeBmc {
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, RedfishError> {
        let auth: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.log
            .borrow_mut()
            .push(format!("{method} {path} [{}]", auth.join(",")));
        let authed = headers.iter().any(|(k, v)| {
            (*k == "X-Auth-Token" && *v == "tok")
                || (*k == "Authorization" && *v == basic("admin", self.password))
        });
        let sys_path = self.system["@odata.id"].as_str().unwrap().to_string();
        Ok(match (method, path) {
            ("GET", "/redfish/v1/") => reply(200, self.root.clone()),
            ("POST", "/redfish/v1/Sessions") => {
                let b = body.unwrap();
                if b["UserName"] == "admin" && b["Password"] == self.password {
                    Reply {
                        status: 201,
                        body: json!({"@odata.id": "/redfish/v1/Sessions/7"}),
                        auth_token: Some("tok".into()),
                        location: Some("https://bmc/redfish/v1/Sessions/7".into()),
                    }
                } else {
                    reply(401, Value::Null)
                }
            }
            _ if !authed => reply(401, Value::Null),
            ("DELETE", "/redfish/v1/Sessions/7") => reply(204, Value::Null),
            ("GET", "/redfish/v1/Systems") => {
                reply(200, json!({"Members": [{"@odata.id": sys_path}]}))
            }
            ("GET", p) if p == sys_path => reply(200, self.system.clone()),
            ("PATCH", p) if p == sys_path => {
                if self.obeys {
                    for (k, v) in body.unwrap()["Boot"].as_object().unwrap() {
                        self.system["Boot"][k] = v.clone();
                    }
                }
                reply(204, Value::Null)
            }
            ("POST", p) if p.ends_with("/Actions/ComputerSystem.Reset") => {
                let t = body.unwrap()["ResetType"].as_str().unwrap().to_string();
                if self.obeys {
                    self.system["PowerState"] = json!(match t.as_str() {
                        "ForceOff" => "Off",
                        _ => "On",
                    });
                }
                reply(204, Value::Null)
            }
            _ => reply(
                404,
                json!({"error": {"message": format!("no {method} {path}")}}),
            ),
        })
    }
}

fn bmc(root: &str, system: &str, obeys: bool) -> (Redfish<FakeBmc>, Rc<RefCell<Vec<String>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let fake = FakeBmc {
        root: serde_json::from_str(root).unwrap(),
        system: serde_json::from_str(system).unwrap(),
        obeys,
        password: "calvin",
        log: log.clone(),
    };
    let mut d = Redfish::new(fake, "k3s3", "admin", "calvin", None, true);
    d.timing = Timing {
        settle: Duration::from_millis(50),
        poll: Duration::from_millis(5),
    };
    (d, log)
}

use super::model::tests_data::*;

#[test]
fn sushy_provision_sequence_uses_basic_auth_and_reads_everything_back() {
    let (mut d, log) = bmc(SUSHY_ROOT, SUSHY_SYSTEM, true);
    assert_eq!(d.status().unwrap(), PowerState::Off);
    assert_eq!(d.requests, 3, "root, Systems, system");
    assert_eq!(d.pxe_once().unwrap(), PxeOnce::Set);
    assert_eq!(d.requests, 6, "+ system, PATCH, read-back");
    d.on().unwrap();
    assert_eq!(d.requests, 9, "+ system, Reset, read-back");
    let log = log.borrow();
    assert!(
        log[0].ends_with("[]"),
        "the ServiceRoot is read without credentials"
    );
    assert!(log[1].contains("Authorization=Basic "), "{}", log[1]);
    assert!(
        log.iter()
            .any(|l| l.starts_with("PATCH /redfish/v1/Systems/"))
    );
}

#[test]
fn idrac_uses_a_session_and_deletes_it() {
    let (mut d, log) = bmc(IDRAC8_ROOT, IDRAC8_SYSTEM, true);
    assert_eq!(d.status().unwrap(), PowerState::On);
    d.off().unwrap();
    drop(d);
    let log = log.borrow();
    assert!(log[1].starts_with("POST /redfish/v1/Sessions []"));
    assert!(log[2].contains("X-Auth-Token=tok"));
    assert!(
        log.iter().all(|l| !l.contains("Authorization")),
        "no basic auth when sessions exist"
    );
    assert_eq!(
        log.last().unwrap(),
        "DELETE /redfish/v1/Sessions/7 [X-Auth-Token=tok]"
    );
}

/// Protects against "204 and nothing happened" being reported as success.
#[test]
fn a_bmc_that_ignores_the_power_on_is_reported() {
    let (mut d, _) = bmc(SUSHY_ROOT, SUSHY_SYSTEM, false);
    let e = d.on().unwrap_err().to_string();
    assert!(
        e.contains("accepted ResetType On but PowerState is still Off"),
        "{e}"
    );
    let e = d.pxe_once().unwrap_err().to_string();
    assert!(e.contains("reads back target Hdd"), "{e}");
}

#[test]
fn a_wrong_password_is_a_clear_401() {
    let (mut d, _) = bmc(IDRAC8_ROOT, IDRAC8_SYSTEM, true);
    d.password = "wrong".into();
    let e = d.status().unwrap_err().to_string();
    assert!(e.contains("HTTP 401"), "{e}");
    assert!(e.contains("power.k3s3"), "{e}");
    assert!(
        !e.contains("wrong"),
        "the password is never in an error: {e}"
    );
    let (mut d, _) = bmc(SUSHY_ROOT, SUSHY_SYSTEM, true);
    d.password = "wrong".into();
    assert!(d.status().unwrap_err().to_string().contains("HTTP 401"));
}

#[test]
fn cycle_of_an_off_machine_powers_it_on_and_of_an_on_one_restarts() {
    let (mut d, log) = bmc(SUSHY_ROOT, SUSHY_SYSTEM, true);
    d.cycle().unwrap();
    assert!(
        log.borrow()
            .iter()
            .any(|l| l.contains("ComputerSystem.Reset"))
    );
    assert_eq!(d.status().unwrap(), PowerState::On);
    let (mut d, _) = bmc(IDRAC8_ROOT, DMTF_SYSTEM, true);
    d.cycle().unwrap();
}

#[test]
fn unsupported_override_lists_the_allowed_values() {
    let mut sys: Value = serde_json::from_str(SUSHY_SYSTEM).unwrap();
    sys["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"] = json!(["Cd", "Hdd"]);
    let (mut d, log) = bmc(SUSHY_ROOT, &sys.to_string(), true);
    let e = d.pxe_once().unwrap_err().to_string();
    assert!(e.contains("it allows: Cd, Hdd"), "{e}");
    assert!(
        log.borrow().iter().all(|l| !l.starts_with("PATCH")),
        "nothing is sent that the BMC does not list"
    );
}
