//! First-boot reports against the real `pxe serve` on loopback: accepted only with the node's
//! report token and from its inventory address (the lab's nodes live in 127.0.20.0/24, which a
//! test can send from without root), capped in size, rate-limited per node, and a flood of them
//! neither evicts the lifecycle record nor slows the boot path.

mod support;

use std::time::{Duration, Instant};

use support::serve::{self as common, IMAGE_SHA256, Server, lab, request_from};

fn installed(s: &Server, lab: &common::Lab, host: &str) {
    let secret = s.secret_from_boot(&lab.mac(host));
    for ev in [
        r#"{"event":"installing","disk":"/dev/vda","total":10}"#.to_string(),
        format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA256}"}}"#),
    ] {
        assert_eq!(s.install_event(host, &secret, &ev), 200, "{ev}");
    }
}

#[test]
fn phone_home_from_the_node_address_boots_it_and_reports_are_capped() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    installed(&s, &lab, "k3s1");
    let ip = lab.ip("k3s1");
    // Another node's address with k3s1's token: refused.
    let other: std::net::Ipv4Addr = lab.ip("k3s2").parse().unwrap();
    let token = lab.report_token("k3s1");
    let (st, _) = request_from(
        other,
        s.http,
        "POST",
        &format!("/report/k3s1/{token}/phone-home"),
        "hostname=k3s1",
        &[],
    );
    assert_eq!(st, 403);
    // Another node's token from k3s1's address: the same 404 as an unknown node.
    let (st, _) = request_from(
        ip.parse().unwrap(),
        s.http,
        "POST",
        &format!("/report/k3s1/{}/phone-home", lab.report_token("k3s2")),
        "hostname=k3s1",
        &[],
    );
    assert_eq!(st, 404);
    assert_eq!(s.state("k3s1"), "installed");

    assert_eq!(
        s.report(
            &lab,
            "k3s1",
            "phone-home",
            "instance_id=x&hostname=k3s1&fqdn=k3s1.lab"
        ),
        200
    );
    assert_eq!(s.state("k3s1"), "booted");
    let last = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["detail"],
        format!("phone-home: hostname=k3s1 fqdn=k3s1.lab address={ip}")
    );
    // First boot cannot claim install events, and nothing can claim `arm`.
    for bad in [
        format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA256}"}}"#),
        r#"{"event":"arm"}"#.to_string(),
        r#"{"event":"failed","reason":"x"}"#.to_string(),
    ] {
        assert_eq!(s.report(&lab, "k3s1", "events", &bad), 400, "{bad}");
    }
    // A note is cut to 256 printable bytes; a body over 4 KiB is refused.
    let long = format!(
        r#"{{"event":"note","kind":"k","detail":"\u001b[2J{}"}}"#,
        "y".repeat(3000)
    );
    assert_eq!(s.report(&lab, "k3s1", "events", &long), 200);
    let last = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let detail = last["detail"].as_str().unwrap();
    assert!(
        detail.len() <= 256 && !detail.contains('\u{1b}'),
        "{detail}"
    );
    let huge = format!(
        r#"{{"event":"note","kind":"k","detail":"{}"}}"#,
        "z".repeat(5000)
    );
    assert_eq!(s.report(&lab, "k3s1", "events", &huge), 413);
}

/// Protects the boot path and the record: a node flooding notes is rate-limited (429), its
/// lifecycle entries stay, and `/boot` keeps answering meanwhile.
#[test]
fn a_note_flood_is_limited_and_does_not_slow_the_boot_path() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    installed(&s, &lab, "k3s1");
    let port = s.http;
    let ip: std::net::Ipv4Addr = lab.ip("k3s1").parse().unwrap();
    let path = format!("/report/k3s1/{}/events", lab.report_token("k3s1"));
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let (mut ok, mut limited) = (0, 0);
                for i in 0..250 {
                    let body = format!(r#"{{"event":"note","kind":"spam","detail":"{i}"}}"#);
                    match request_from(ip, port, "POST", &path, &body, &[]).0 {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("note answered {other}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let mac = lab.mac("k3s2");
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        assert!(s.boot_script(&mac).contains("k3s2"));
        slowest = slowest.max(t.elapsed());
    }
    let (mut ok, mut limited) = (0, 0);
    for h in flood {
        let (o, l) = h.join().unwrap();
        ok += o;
        limited += l;
    }
    eprintln!("note flood: {ok} accepted, {limited} refused (429); slowest /boot {slowest:?}");
    assert_eq!(ok + limited, 1000);
    assert!(limited >= 800, "{ok} accepted: no rate limit");
    assert!(
        slowest < Duration::from_secs(2),
        "/boot took {slowest:?} under a note flood"
    );
    let events: Vec<String> = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap().to_string())
        .collect();
    for want in ["arm", "script-served", "installing", "installed"] {
        assert!(
            events.iter().any(|e| e == want),
            "{want} evicted: {events:?}"
        );
    }
}

/// The Secure Boot state reported by the installer (`installing`) and by first boot
/// (`secure-boot`) lands in the timeline; for a node whose plan says `secure_boot` (k3s2, an
/// `optiplex`) a report of "off" adds the `secure-boot-off` warning note, for a node without
/// it (k3s-master1, a `vm`) it does not. Protects the diagnostic of a machine whose Secure Boot
/// was switched off behind the operator's back.
#[test]
fn secure_boot_off_on_a_secure_boot_node_gets_a_warning_note() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let notes = |host: &str| -> Vec<String> {
        s.node(host)["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["event"].as_str().unwrap(),
                    e["detail"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    for host in ["k3s2", "k3s-master1"] {
        let secret = s.secret_from_boot(&lab.mac(host));
        let ev = r#"{"event":"installing","disk":"/dev/vda","total":10,"secure_boot":false}"#;
        assert_eq!(s.install_event(host, &secret, ev), 200);
        let ev = format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA256}"}}"#);
        assert_eq!(s.install_event(host, &secret, &ev), 200);
        let ev = r#"{"event":"secure-boot","secure_boot":false}"#;
        assert_eq!(s.report(&lab, host, "events", ev), 200);
    }
    let sb = notes("k3s2");
    assert!(
        sb.iter()
            .any(|n| n == "installing /dev/vda (secure boot off)"),
        "{sb:?}"
    );
    assert!(sb.iter().any(|n| n == "secure-boot off"), "{sb:?}");
    assert_eq!(
        sb.iter()
            .filter(|n| n.starts_with("note secure-boot-off:"))
            .count(),
        2,
        "one warning per report: {sb:?}"
    );
    let plain = notes("k3s-master1");
    assert!(plain.iter().any(|n| n == "secure-boot off"), "{plain:?}");
    assert!(
        !plain.iter().any(|n| n.contains("secure-boot-off")),
        "no warning without secure_boot in the plan: {plain:?}"
    );
    assert_eq!(s.state("k3s2"), "installed", "reports change no state");
}

/// Issue 18 item 4, without a VM: a k3s server's `cluster` reports (the wire form of
/// `images::bundle::cluster`, posted the way the first-boot `report` helper posts them) go
/// through the real pxe, and builder's cluster check reads them back from the node timeline
/// the API serves: the newest report of any server decides. A hostile report (escapes, an
/// entry cut by pxe's note limit) is stored printable and capped and never reads as ready.
#[test]
fn a_servers_cluster_report_is_stored_and_decides_builders_cluster_check() {
    use builder::lab::cluster::{Expected, Verdict, decide_report, newest_report};
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let servers = ["k3s-master1", "k3s-master2", "k3s-master3"];
    let agents = ["k3s1", "k3s2", "k3s3"];
    let post = |host: &str, detail: &str| {
        let body = serde_json::json!({"event": "note", "kind": "cluster", "detail": detail});
        assert_eq!(s.report(&lab, host, "events", &body.to_string()), 200);
    };
    let check = || {
        let mut notes: Vec<(u64, String)> = Vec::new();
        for h in servers {
            let t: Vec<builder::lab::drill::TimelineEntry> =
                serde_json::from_value(s.node(h)["timeline"].clone()).unwrap();
            notes.extend(
                t.into_iter()
                    .filter(|e| e.event == "note")
                    .map(|e| (e.at_ms, e.detail)),
            );
        }
        for (_, d) in &notes {
            assert!(d.len() <= 256 && !d.contains('\u{1b}'), "{d:?}");
        }
        let want = Expected {
            servers: servers
                .iter()
                .map(|h| (h.to_string(), lab.ip(h).parse().unwrap()))
                .collect(),
            nodes: servers
                .iter()
                .chain(&agents)
                .map(|h| h.to_string())
                .collect(),
        };
        newest_report(notes.iter().map(|(at, d)| (*at, d.as_str())))
            .map(|(_, r)| decide_report(&want, &r))
    };
    assert_eq!(check(), None, "no report yet: nothing decided");

    post(
        "k3s-master1",
        "4 k3s-master1:True:e k3s-master2:True:e k3s-master3:-:- k3s1:False:-",
    );
    let Some(Verdict::NotYet(missing)) = check() else {
        panic!("{:?}", check())
    };
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("k3s-master3: no embedded-etcd member")),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("k3s2: not registered")),
        "{missing:?}"
    );

    // Hostile: escapes and a list far over the note limit claiming everything is fine.
    std::thread::sleep(Duration::from_millis(5));
    let mut evil = String::from("6 \u{1b}[2Jk3s-master1:True:e");
    for h in servers.iter().chain(&agents) {
        evil.push_str(&format!(" {h}{}:True:e", "\u{1b}]0;x\u{7}".repeat(20)));
    }
    post("k3s-master2", &evil);
    assert!(matches!(check(), Some(Verdict::NotYet(_))), "{:?}", check());

    // The newest report, from another server, says all is there.
    std::thread::sleep(Duration::from_millis(5));
    let all = servers
        .iter()
        .map(|h| format!("{h}:True:e"))
        .chain(agents.iter().map(|h| format!("{h}:True:-")))
        .collect::<Vec<_>>()
        .join(" ");
    post("k3s-master3", &format!("6 {all}"));
    assert_eq!(check(), Some(Verdict::Ready { notes: vec![] }));
}
