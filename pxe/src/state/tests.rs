use super::*;
use NodeState::*;

const HOUR: u64 = 3_600_000;

fn arm_at(now: u64) -> Event {
    Event::Arm {
        secret: Secret("s".repeat(64)),
        expires_ms: now + HOUR,
    }
}

fn armed() -> NodeRecord {
    apply(&NodeRecord::new("n1", 0), &arm_at(0), 0).unwrap()
}

fn run(events: &[Event]) -> Result<NodeRecord, TransitionError> {
    let mut r = armed();
    for (i, e) in events.iter().enumerate() {
        r = apply(&r, e, i as u64 + 1)?;
    }
    Ok(r)
}

fn served() -> Event {
    Event::ScriptServed {
        mac: "52:54:00:00:00:01".into(),
    }
}
fn installing() -> Event {
    Event::Install(InstallEvent::Installing {
        disk: "/dev/vda".into(),
        total: 100,
        secure_boot: None,
    })
}
fn installed(sha: &str) -> Event {
    Event::Install(InstallEvent::Installed { sha256: sha.into() })
}
fn failed(reason: &str) -> Event {
    Event::Install(InstallEvent::Failed {
        reason: reason.into(),
    })
}
fn note(detail: &str) -> Event {
    Event::Report(ReportEvent::Note {
        kind: "k".into(),
        detail: detail.into(),
    })
}

#[test]
fn the_happy_path_reaches_booted_with_a_full_timeline() {
    let r = run(&[
        served(),
        installing(),
        Event::Install(InstallEvent::Progress {
            written: 50,
            total: 100,
        }),
        installed("ab"),
        Event::Report(ReportEvent::Booted),
    ])
    .unwrap();
    assert_eq!(r.state, Booted);
    assert_eq!(r.installs, 1);
    assert_eq!(r.bytes_written, 100);
    let ev: Vec<&str> = r.timeline.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(
        ev,
        [
            "disarmed",
            "arm",
            "script-served",
            "installing",
            "installed",
            "booted"
        ]
    );
}

#[test]
fn a_new_node_is_disarmed_and_never_gets_the_installer() {
    let fresh = NodeRecord::new("n1", 0);
    assert_eq!(fresh.state, Disarmed);
    assert!(fresh.live_secret(0).is_none());
    assert!(apply(&fresh, &served(), 1).is_err());
}

#[test]
fn the_install_secret_dies_at_installed_failed_disarm_rearm_and_expiry() {
    let a = armed();
    let secret = "s".repeat(64);
    assert!(a.secret_ok(&secret, 1));
    assert!(!a.secret_ok("wrong", 1));
    assert!(
        !a.secret_ok(&secret, HOUR),
        "expired at the end of the window"
    );

    let done = run(&[served(), installing(), installed("ab")]).unwrap();
    assert!(done.install_secret.is_none() && !done.secret_ok(&secret, 5));
    let gone = run(&[served(), installing(), failed("x")]).unwrap();
    assert!(gone.install_secret.is_none());
    let dis = apply(&a, &Event::Disarm, 1).unwrap();
    assert!(dis.install_secret.is_none());
    let re = apply(
        &a,
        &Event::Arm {
            secret: Secret("t".repeat(64)),
            expires_ms: HOUR,
        },
        1,
    )
    .unwrap();
    assert!(!re.secret_ok(&secret, 2), "re-arming kills the old secret");
    assert!(re.secret_ok(&"t".repeat(64), 2));
}

#[test]
fn expiry_disarms_an_armed_node_and_fails_an_unfinished_install() {
    let a = armed();
    assert_eq!(apply(&a, &Event::Expire, 5).unwrap(), a, "not due yet");
    let e = apply(&a, &Event::Expire, HOUR).unwrap();
    assert_eq!(e.state, Disarmed);
    assert!(e.install_secret.is_none());
    let mid = run(&[served(), installing()]).unwrap();
    let e = apply(&mid, &Event::Expire, HOUR + 1).unwrap();
    assert_eq!(e.state, Failed);
    assert!(e.last_error.unwrap().contains("window"));
    assert!(
        apply(&mid, &served(), HOUR + 1).is_err(),
        "no script after expiry"
    );
}

#[test]
fn installed_nodes_are_never_served_the_installer_again_until_re_armed() {
    let r = run(&[served(), installing(), installed("ab")]).unwrap();
    assert!(!r.state.install_armed());
    assert!(apply(&r, &served(), 9).is_err());
    let r = apply(&r, &arm_at(10), 10).unwrap();
    assert!(r.state.install_armed());
    assert_eq!(r.installs, 1, "re-arming keeps the count");
}

#[test]
fn out_of_order_reports_are_refused() {
    let fresh = armed();
    for ev in [
        installed("x"),
        Event::Report(ReportEvent::Booted),
        Event::Install(InstallEvent::Progress {
            written: 1,
            total: 2,
        }),
        failed("x"),
        installing(),
    ] {
        assert!(apply(&fresh, &ev, 1).is_err(), "{ev:?} on an armed node");
    }
}

#[test]
fn an_interrupted_install_stays_armed_and_a_failure_does_not() {
    let r = run(&[served(), installing()]).unwrap();
    let again = apply(&r, &served(), 5).unwrap();
    assert_eq!(again, r, "a served script changes nothing mid-install");
    assert!(again.state.install_armed());
    let restarted = apply(&again, &installing(), 6).unwrap();
    assert_eq!(
        restarted.state, Installing,
        "the restarted installer reports again"
    );
    let f = apply(&r, &failed("disk"), 5).unwrap();
    assert_eq!(f.state, Failed);
    assert!(!f.state.install_armed());
    assert_eq!(f.last_error.as_deref(), Some("disk"));
}

#[test]
fn a_retried_installed_report_is_idempotent() {
    let r = run(&[served(), installing(), installed("ab")]).unwrap();
    assert_eq!(apply(&r, &installed("ab"), 9).unwrap(), r);
    assert!(apply(&r, &installed("cd"), 9).is_err());
}

/// Protects installs from anonymous boot-script requests: a script served again (anyone with
/// the MAC can ask) neither moves an install back to booting nor adds a timeline entry.
#[test]
fn repeated_boot_scripts_change_nothing() {
    let mut r = run(&[served(), installing()]).unwrap();
    let before = r.clone();
    for i in 0..1000 {
        r = apply(&r, &served(), 10 + i).unwrap();
    }
    assert_eq!(r, before);
    let r = apply(&r, &installed("ab"), 2000).unwrap();
    assert_eq!(r.state, Installed);
    assert!(r.timeline.iter().any(|t| t.event == "arm"));
}

/// Protects: notes can never push the operator's arm and the install record out of the
/// timeline, and a note's size is capped.
#[test]
fn lifecycle_entries_survive_a_thousand_notes() {
    let mut r = run(&[served(), installing(), installed("ab")]).unwrap();
    let big = "x".repeat(10_000);
    for i in 0..1000 {
        r = apply(&r, &note(&big), 100 + i).unwrap();
    }
    let events: Vec<&str> = r.timeline.iter().map(|t| t.event.as_str()).collect();
    for want in ["arm", "script-served", "installing", "installed"] {
        assert!(events.contains(&want), "{want} evicted: {events:?}");
    }
    assert_eq!(events.iter().filter(|e| **e == "note").count(), NOTES_CAP);
    assert!(r.timeline.iter().all(|t| t.detail.len() <= NOTE_MAX));
}

#[test]
fn failure_reasons_from_the_network_are_cut_and_stripped() {
    let r = run(&[
        served(),
        failed(&format!("\x1b[2Jboom\n{}", "y".repeat(5000))),
    ])
    .unwrap();
    let e = r.last_error.unwrap();
    assert!(e.starts_with("[2Jboom"), "{e}");
    assert!(e.len() <= NOTE_MAX && !e.contains('\x1b'));
}

fn open(dir: &Path, id: &str, hosts: &[&str], new: NewNodes) -> Store {
    Store::open(Some(dir), id, hosts, new, DEFAULT_INSTALL_WINDOW)
        .unwrap()
        .0
}

#[test]
fn store_persists_every_change_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), "b1", &["a", "b"], NewNodes::Armed);
    s.apply("a", &served()).unwrap();
    s.apply("a", &installing()).unwrap();
    s.apply("a", &installed("ff")).unwrap();
    drop(s);
    let s = open(dir.path(), "b2", &["a", "b", "c"], NewNodes::Disarmed);
    assert_eq!(
        s.state("a"),
        Some(Installed),
        "install-once survives a restart"
    );
    assert_eq!(s.state("b"), Some(Armed));
    assert_eq!(s.state("c"), Some(Disarmed), "new node without --arm-new");
    let secret = s.get("b").unwrap().install_secret.unwrap();
    drop(s);
    let s = open(dir.path(), "b3", &["b"], NewNodes::Disarmed);
    assert_eq!(
        s.get("b").unwrap().install_secret.unwrap(),
        secret,
        "the secret survives a restart"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "nodes.json holds secrets: owner-only");
}

/// Protects: a node removed from the bundle and added back is not silently re-armed.
#[test]
fn a_node_removed_and_added_back_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), "b1", &["a", "b"], NewNodes::Armed);
    s.apply("a", &served()).unwrap();
    s.apply("a", &installing()).unwrap();
    s.apply("a", &installed("ff")).unwrap();
    let r = s.reconcile("b2", &["b"], NewNodes::Armed).unwrap();
    assert_eq!(r.kept_absent, ["a"]);
    assert!(s.get("a").is_none(), "not served while absent");
    assert!(s.all().iter().all(|n| n.hostname != "a"));
    let r = s.reconcile("b3", &["a", "b"], NewNodes::Armed).unwrap();
    assert_eq!(r.returned, ["a"]);
    assert!(r.armed.is_empty());
    assert_eq!(s.state("a"), Some(Installed));
    assert_eq!(s.get("a").unwrap().installs, 1);
}

#[test]
fn reconcile_on_reload_keeps_states_and_persists_before_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), "b1", &["a", "b"], NewNodes::Armed);
    s.apply("a", &served()).unwrap();
    s.reconcile("b2", &["a", "c"], NewNodes::Disarmed).unwrap();
    assert_eq!(s.state("a"), Some(Booting), "a reload re-arms nothing");
    assert_eq!(s.state("b"), None);
    assert_eq!(s.state("c"), Some(Disarmed));
    drop(s);
    let s = open(dir.path(), "b2", &["a", "c"], NewNodes::Armed);
    assert_eq!(s.state("a"), Some(Booting));
    assert_eq!(s.state("c"), Some(Disarmed), "the reload was on disk");
}

#[test]
fn a_lost_state_folder_arms_nothing_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (s, r) = Store::open(
        Some(dir.path()),
        "b1",
        &["a", "b"],
        NewNodes::Disarmed,
        DEFAULT_INSTALL_WINDOW,
    )
    .unwrap();
    assert_eq!(r.new, ["a", "b"]);
    assert!(r.armed.is_empty());
    assert!(s.all().iter().all(|n| n.state == Disarmed));
}

#[test]
fn the_sweeper_records_expired_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(
        Some(dir.path()),
        "b1",
        &["a"],
        NewNodes::Disarmed,
        Duration::from_millis(0),
    )
    .unwrap();
    s.arm("a").unwrap();
    assert_eq!(s.state("a"), Some(Disarmed), "expired at once: not armed");
    assert_eq!(s.expire_due(), ["a"]);
    let r = s.get("a").unwrap();
    assert!(r.install_secret.is_none());
    assert_eq!(r.timeline.last().unwrap().event, "install-window-expired");
}

#[test]
fn the_secret_never_shows_in_debug_output() {
    let r = armed();
    assert!(!format!("{r:?}").contains(&"s".repeat(64)));
}

/// Protects the lifecycle record: a flood of power reports pushes out only older power
/// entries, never arm/installed/booted.
#[test]
fn power_entries_never_evict_lifecycle_entries() {
    let rec = armed();
    let lifecycle_before = rec.timeline.iter().filter(|e| e.event != "power").count();
    let mut r = rec;
    for i in 0..500 {
        r = apply(
            &r,
            &Event::Power {
                action: "on".into(),
                result: format!("ok {i}"),
                by: "builder provision".into(),
            },
            1000 + i,
        )
        .unwrap();
    }
    assert_eq!(
        r.state,
        NodeState::Armed,
        "a power record is not a state change"
    );
    let power = r.timeline.iter().filter(|e| e.event == "power").count();
    assert_eq!(power, POWER_CAP);
    assert_eq!(
        r.timeline.iter().filter(|e| e.event != "power").count(),
        lifecycle_before
    );
    let last = r.last_power.as_ref().unwrap();
    assert_eq!(
        (last.action.as_str(), last.result.as_str(), last.at_ms),
        ("on", "ok 499", 1499)
    );
    assert!(
        r.timeline
            .last()
            .unwrap()
            .detail
            .contains("(by builder provision)")
    );
}

/// Installer notes (firmware load failures) are timeline notes: only while the node is being
/// installed, printable and bounded, and never pushing out lifecycle entries.
#[test]
fn install_notes_only_while_installing_and_bounded() {
    let inote = |d: &str| {
        Event::Install(InstallEvent::Note {
            kind: "firmware".into(),
            detail: d.into(),
        })
    };
    let done = run(&[served(), installing(), installed("ab")]).unwrap();
    assert!(
        apply(&done, &inote("x"), 9).is_err(),
        "not after the install"
    );
    let off = apply(&armed(), &Event::Disarm, 1).unwrap();
    assert!(
        apply(&off, &inote("x"), 9).is_err(),
        "not from a disarmed node"
    );
    let mut r = run(&[served(), installing()]).unwrap();
    let lifecycle = r.timeline.len();
    for i in 0..200 {
        r = apply(&r, &inote(&format!("\x1b[31m{i}{}", "a".repeat(1000))), 2).unwrap();
    }
    assert_eq!(r.state, NodeState::Installing);
    let notes: Vec<_> = r.timeline.iter().filter(|e| e.event == "note").collect();
    assert_eq!(notes.len(), 50, "NOTES_CAP");
    assert!(
        notes
            .iter()
            .all(|e| e.detail.len() <= NOTE_MAX && !e.detail.contains('\x1b'))
    );
    assert_eq!(r.timeline.len() - notes.len(), lifecycle);
}

/// The Secure Boot state a node reports shows in its timeline and never moves the state; the
/// warning note exists exactly when the plan says on and the node says off.
#[test]
fn secure_boot_reports_show_in_the_timeline_and_mismatches_warn() {
    let r = run(&[
        served(),
        Event::Install(InstallEvent::Installing {
            disk: "/dev/vda".into(),
            total: 100,
            secure_boot: Some(true),
        }),
        installed("ab"),
        Event::Report(ReportEvent::SecureBoot {
            secure_boot: Some(false),
        }),
    ])
    .unwrap();
    assert_eq!(r.state, Installed, "a Secure Boot report changes no state");
    let details: Vec<(&str, &str)> = r
        .timeline
        .iter()
        .map(|e| (e.event.as_str(), e.detail.as_str()))
        .collect();
    assert!(
        details.contains(&("installing", "/dev/vda (secure boot on)")),
        "{details:?}"
    );
    assert!(details.contains(&("secure-boot", "off")), "{details:?}");
    assert!(crate::state::secure_boot_mismatch(true, Some(false)).is_some());
    for (planned, reported) in [
        (true, Some(true)),
        (true, None),
        (false, Some(false)),
        (false, Some(true)),
    ] {
        assert!(
            crate::state::secure_boot_mismatch(planned, reported).is_none(),
            "{planned} {reported:?}"
        );
    }
}
