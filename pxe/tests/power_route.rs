//! `POST /api/v1/nodes/{name}/power` against the real `pxe serve` on loopback: builder records
//! its power actions in the node's timeline, the node list shows the last one, and nothing
//! about the record can change a node's install state. (That it wants the token is covered by
//! api_auth.rs, whose table comes from `operator::routes()`.)

mod support;

use support::serve::{Server, lab, request};

#[test]
fn power_reports_land_in_the_timeline_and_last_power() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let path = "/api/v1/nodes/k3s-master1/power";
    let (st, body) = s.post(
        path,
        r#"{"action":"on","result":"ok","by":"builder provision"}"#,
    );
    assert_eq!(st, 200, "{body}");
    let n = s.node("k3s-master1");
    assert_eq!(n["state"], "armed", "a power record is not a state change");
    assert_eq!(n["last_power"]["action"], "on");
    assert_eq!(n["last_power"]["result"], "ok");
    assert!(n["last_power"]["at_ms"].as_u64().unwrap() > 0);
    let last = n["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "power");
    assert_eq!(last["detail"], "on: ok (by builder provision)");
    // The list shows it too.
    let (_, list) = s.get("/api/v1/nodes");
    assert!(list.contains("\"last_power\""), "{list}");
}

/// Protects the timeline and the operator's terminal: an escape sequence, an unknown action,
/// an oversized field or body is refused with 400 and records nothing.
#[test]
fn hostile_power_reports_are_refused_and_record_nothing() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let before = s.node("k3s-master1");
    let path = "/api/v1/nodes/k3s-master1/power";
    let long = "x".repeat(5000);
    for body in [
        r#"{"action":"on","result":"\u001b]0;pwned\u0007","by":"x"}"#.to_string(),
        r#"{"action":"format-disk","result":"ok","by":"x"}"#.to_string(),
        format!(r#"{{"action":"on","result":"{long}","by":"x"}}"#),
        "not json".to_string(),
    ] {
        let (st, resp) = s.post(path, &body);
        assert_eq!(st, 400, "{body}: {resp}");
    }
    assert_eq!(s.node("k3s-master1"), before);
    let auth = format!("Authorization: Bearer {}", s.token);
    let (st, _) = request(
        s.http,
        "POST",
        "/api/v1/nodes/no-such-node/power",
        r#"{"action":"on","result":"ok","by":"x"}"#,
        &[&auth],
    );
    assert_eq!(st, 404);
}
