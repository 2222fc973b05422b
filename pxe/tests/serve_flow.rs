//! `pxe serve` end to end on loopback (DHCP off): the install-once flow a node goes through,
//! driven over HTTP the way iPXE, the installer and cloud-init drive it.

mod support;

use support::serve::{self, Server, lab};

#[test]
fn install_once_flow_from_armed_to_booted_and_re_arm() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let mac = lab.mac("k3s1");

    // A MAC that is not in the inventory is never installed and changes nothing.
    let (st, body) = s.anon_get("/boot/52:54:00:ee:ee:ee.ipxe");
    assert_eq!(st, 200);
    assert!(
        body.contains("not in the inventory") && body.contains("exit 1"),
        "{body}"
    );

    // Armed (--arm-new, a first deployment): the per-MAC script is the installer, carrying a
    // live install secret (not in the bundle's file), and the node is now booting.
    assert_eq!(s.state("k3s1"), "armed");
    assert_eq!(s.node("k3s1")["install_secret"], true);
    let (st, body) = s.anon_get(&format!("/boot/{mac}.ipxe"));
    assert_eq!(st, 200);
    assert!(body.contains("ironseed: installing k3s1"), "{body}");
    let secret = serve::secret_in(&body).unwrap();
    assert_eq!(secret.len(), 64, "{body}");
    let on_disk = std::fs::read_to_string(lab.bundle.join("ipxe/k3s1.ipxe")).unwrap();
    assert!(!on_disk.contains(&secret) && on_disk.contains("@IRONSEED_INSTALL_SECRET@"));
    assert!(
        !s.get("/api/v1/nodes").1.contains(&secret),
        "the API never shows the secret"
    );
    assert_eq!(s.state("k3s1"), "booting");
    // Real iPXE percent-encodes the colons of ${net0/mac} in the request (captured by the DHCP
    // firmware tests); upper case and dashes also occur. The same secret while it lives.
    let (_, enc) = s.anon_get(&format!("/boot/{}.ipxe", mac.replace(':', "%3A")));
    assert_eq!(serve::secret_in(&enc).as_deref(), Some(secret.as_str()));
    let (_, again) = s.anon_get(&format!(
        "/boot/{}.ipxe",
        mac.to_uppercase().replace(':', "-")
    ));
    assert!(again.contains("installing k3s1"));

    // The installer's plan and the seed, only with the live secret.
    let (st, plan) = s.anon_get(&format!("/plan/k3s1/{secret}"));
    assert_eq!(st, 200, "{plan}");
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["hostname"], "k3s1");
    assert_eq!(plan["install_disk"]["by_path"], "pci-0000:02:00.0-nvme-1");
    assert_eq!(plan["image"]["sha256"], serve::IMAGE_SHA256);
    assert!(
        plan["seed"]["network-config"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/seed/k3s1/{secret}/network-config"))
    );
    assert!(
        plan["report"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/install/k3s1/{secret}/events"))
    );
    let (st, ud) = s.anon_get(&format!("/seed/k3s1/{secret}/user-data"));
    assert_eq!(st, 200);
    assert!(ud.starts_with("#cloud-config\n"));
    assert!(
        ud.contains(&lab.report_token("k3s1")),
        "the seed carries the report token"
    );
    assert_eq!(
        s.anon_get(&format!("/seed/k3s1/{}/user-data", "0".repeat(64)))
            .0,
        404,
        "wrong secret"
    );
    assert_eq!(
        s.anon_get(&format!("/seed/k3s2/{secret}/user-data")).0,
        404,
        "another node's secret"
    );
    assert_eq!(
        s.anon_get(&format!("/seed/k3s1/{secret}/../../plan.json"))
            .0,
        404
    );
    assert_eq!(
        s.anon_get(&format!("/seed/k3s1/{secret}/vendor-data")).0,
        404
    );

    // The installer reports with the secret; out-of-order reports are refused, and so is any
    // report without the secret or with the old per-node API path.
    assert_eq!(
        s.install_event("k3s1", &secret, r#"{"event":"installed","sha256":"aa"}"#),
        409
    );
    assert_eq!(
        s.install_event(
            "k3s1",
            &"1".repeat(64),
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":1000}"#
        ),
        404
    );
    assert_eq!(
        s.anon_post(
            "/api/v1/nodes/k3s1/events",
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":1000}"#
        )
        .0,
        401
    );
    assert_eq!(
        s.install_event(
            "k3s1",
            &secret,
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":1000}"#
        ),
        200
    );
    assert_eq!(
        s.install_event(
            "k3s1",
            &secret,
            r#"{"event":"progress","written":400,"total":1000}"#
        ),
        200
    );
    assert_eq!(s.node("k3s1")["bytes_written"], 400);
    // Anyone on the LAN fetching the boot script mid-install changes nothing: the install goes
    // on (a repeat used to pull it back to booting and make its reports fail).
    for _ in 0..50 {
        assert!(s.boot_script(&mac).contains("installing k3s1"));
    }
    assert_eq!(s.state("k3s1"), "installing");
    // `installed` only with the sha256 of the image the plan named.
    assert_eq!(
        s.install_event("k3s1", &secret, r#"{"event":"installed","sha256":"aa"}"#),
        409
    );
    assert_eq!(s.state("k3s1"), "installing");
    assert_eq!(
        s.install_event("k3s1", &secret, r#"{"event":"booted"}"#),
        400,
        "the installer cannot claim booted"
    );
    assert_eq!(
        s.install_event(
            "k3s1",
            &secret,
            &format!(
                r#"{{"event":"installed","sha256":"{}"}}"#,
                serve::IMAGE_SHA256
            )
        ),
        200
    );
    assert_eq!(s.state("k3s1"), "installed");
    assert_eq!(s.node("k3s1")["install_secret"], false);

    // Installed: boot local, and the secret is dead: plan, seed and events are 404, like an
    // unknown node (a replayed seed URL gives nothing).
    let (_, body) = s.anon_get(&format!("/boot/{mac}.ipxe"));
    assert!(
        body.contains("booting from local disk") && body.contains("sanboot"),
        "{body}"
    );
    assert_eq!(s.anon_get(&format!("/seed/k3s1/{secret}/user-data")).0, 404);
    assert_eq!(s.anon_get(&format!("/plan/k3s1/{secret}")).0, 404);
    assert_eq!(
        s.install_event("k3s1", &secret, r#"{"event":"failed","reason":"x"}"#),
        404
    );

    // cloud-init's phone_home ends the first boot, but only from the node's own address: from
    // here (127.0.0.1) it is refused even with the right token; a wrong token is a 404.
    let token = lab.report_token("k3s1");
    assert_eq!(
        s.anon_post(
            &format!("/report/k3s1/{token}/phone-home"),
            "instance_id=x&hostname=k3s1"
        )
        .0,
        403
    );
    assert_eq!(
        s.anon_post(
            &format!("/report/k3s1/{}/phone-home", "0".repeat(64)),
            "instance_id=x&hostname=k3s1"
        )
        .0,
        404
    );
    assert_eq!(s.state("k3s1"), "installed");
    let timeline: Vec<String> = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        timeline,
        [
            "disarmed",
            "arm",
            "script-served",
            "installing",
            "installed",
        ],
        "repeated boot scripts add nothing"
    );

    // Re-arm through the CLI (the token from the state folder): a new secret, the next PXE
    // boot installs again, and the old secret stays dead.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
        .args(["arm", "k3s1", "--server", &s.url("")])
        .arg("--api-token-file")
        .arg(&s.token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "k3s1: armed");
    let new_secret = s.secret_from_boot(&mac);
    assert_ne!(new_secret, secret);
    assert_eq!(s.anon_get(&format!("/plan/k3s1/{secret}")).0, 404);
    assert_eq!(s.anon_get(&format!("/plan/k3s1/{new_secret}")).0, 200);
    assert_eq!(s.post("/api/v1/nodes/nope/arm", "").0, 404);

    // Without a token the CLI says how to give one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
        .args(["status", "--server", &s.url("")])
        .env_remove("IRONSEED_API_TOKEN")
        .env("HOME", lab.dir.path())
        .env_remove("XDG_STATE_HOME")
        .output()
        .unwrap();
    if !nix::unistd::geteuid().is_root() {
        // (As root the default /var/lib/ironseed/pxe/api-token may exist on this machine.)
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--api-token-file"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // pxe status prints the table (token from the environment).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
        .args(["status", "--server", &s.url("")])
        .env("IRONSEED_API_TOKEN", &s.token)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("k3s1 ") && l.contains("booting")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("nfs1 ") && l.contains("armed")),
        "{table}"
    );

    // Metrics count what happened, and give away no MAC and no secret.
    let (_, m) = s.anon_get("/metrics");
    assert!(m.contains("ironseed_nodes{state=\"booting\"} 1"), "{m}");
    assert!(
        m.contains("ironseed_http_requests_total{route=\"seed\",status=\"404\"}"),
        "{m}"
    );
    assert!(!m.to_lowercase().contains(&mac.to_lowercase()), "{m}");
    assert!(!m.contains(&new_secret) && !m.contains(&s.token), "{m}");
    assert!(s.stop().success(), "graceful shutdown exits 0");
}

/// Protects: arming is an explicit act. Without `--arm-new` a fresh state folder arms nothing.
#[test]
fn by_default_nothing_is_armed_until_pxe_arm() {
    let lab = lab();
    let s = Server::spawn(serve::Server::command_default_arming(&lab, &[]));
    let mac = lab.mac("k3s-master1");
    let nodes: serde_json::Value = serde_json::from_str(&s.get("/api/v1/nodes").1).unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "disarmed", "{n}");
        assert_eq!(n["install_secret"], false, "{n}");
    }
    assert!(s.boot_script(&mac).contains("booting from local disk"));
    assert_eq!(s.state("k3s-master1"), "disarmed");
    assert_eq!(s.post("/api/v1/nodes/k3s-master1/arm", "").0, 200);
    assert!(s.boot_script(&mac).contains("installing k3s-master1"));
    // `pxe arm --all`, `pxe disarm --all`.
    for (verb, want) in [("arm", "armed"), ("disarm", "disarmed")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
            .args([verb, "--all", "--server", &s.url("")])
            .env("IRONSEED_API_TOKEN", &s.token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().count(),
            lab.plan["nodes"].as_array().unwrap().len()
        );
        assert!(
            text.lines().all(|l| l.ends_with(&format!(": {want}"))),
            "{text}"
        );
    }
}

/// Protects the cluster-init server after a lost state folder: `--arm-new` left on the command
/// line arms nothing when the cluster's Kubernetes API answers (here: something listening on
/// the VIP of a lab of its own, 127.0.20.77:6443, so no other test's VIP answers).
#[test]
fn arm_new_arms_nothing_when_the_cluster_answers() {
    let inv = serve::loopback_inventory().replace("vip: 127.0.20.10", "vip: 127.0.20.77");
    assert!(inv.contains("vip: 127.0.20.77"));
    let lab = serve::lab_from(&inv, &[]);
    let vip = match std::net::TcpListener::bind("127.0.20.77:6443") {
        Ok(l) => l,
        Err(e) => panic!("binding the lab VIP's API port on loopback: {e}"),
    };
    let mut cmd = Server::command(&lab, &[]);
    cmd.env("RUST_LOG", "info");
    let s = Server::spawn_capturing(cmd);
    let nodes: serde_json::Value = serde_json::from_str(&s.get("/api/v1/nodes").1).unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "disarmed", "{n}");
    }
    let log = s.stop_and_log();
    assert!(
        log.contains("--arm-new arms nothing") && log.contains("127.0.20.77:6443"),
        "{log}"
    );
    drop(vip);
}

/// Protects: a lost state folder with a bundle of an existing cluster (a rebuild's `joined`
/// nodes) arms nothing even under `--arm-new`, and says so.
#[test]
fn a_lost_state_folder_with_a_joined_bundle_arms_nothing() {
    let lab = serve::lab_with_joined(&["k3s-master2"]);
    let mut cmd = Server::command(&lab, &[]);
    cmd.env("RUST_LOG", "info");
    let s = Server::spawn_capturing(cmd);
    let nodes: serde_json::Value = serde_json::from_str(&s.get("/api/v1/nodes").1).unwrap();
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["state"], "disarmed", "{n}");
    }
    let log = s.stop_and_log();
    assert!(log.contains("--arm-new arms nothing"), "{log}");
}

#[test]
fn extra_macs_identify_the_node() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    // k3s3's second onboard port (extra_macs in the default inventory).
    assert!(
        s.get("/boot/24:6e:96:20:00:24.ipxe")
            .1
            .contains("installing k3s3")
    );
}

#[test]
fn tampered_bundle_is_refused_at_start() {
    let lab = lab();
    let ud = lab.bundle.join("nodes/k3s1/user-data");
    let mut text = std::fs::read_to_string(&ud).unwrap();
    text.push_str("# edited by hand\n");
    std::fs::write(&ud, text).unwrap();
    let out = Server::command(&lab, &[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nodes/k3s1/user-data: checksum mismatch"),
        "{err}"
    );
}

#[test]
fn ipxe_binaries_are_served_over_tftp_and_artifacts_over_http_with_ranges() {
    let lab = lab();
    let art = lab.dir.path().join("artifacts");
    std::fs::create_dir_all(art.join("installer")).unwrap();
    std::fs::write(art.join("installer/vmlinuz"), b"0123456789").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", art.join("escape")).unwrap();
    let s = Server::start(&lab, &["--artifacts", art.to_str().unwrap()]);
    let out = lab.dir.path().join("got.kpxe");
    assert!(
        serve::tftp_get(s.tftp, "undionly.kpxe", &out),
        "curl tftp failed"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(lab.ipxe.join("undionly.kpxe")).unwrap()
    );
    // The transfer is counted once its last ACK is in, and is no longer running.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = s.get("/metrics").1;
        if metrics.contains("ironseed_tftp_transfers_total{outcome=\"finished\"} 1\n") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        metrics.contains("ironseed_tftp_transfers_total{outcome=\"finished\"} 1\n")
            && metrics.contains("ironseed_tftp_transfers_active 0\n"),
        "{metrics}"
    );
    let (st, body) = s.get("/artifacts/installer/vmlinuz");
    assert_eq!((st, body.as_str()), (200, "0123456789"));
    // Range: the installer resumes image downloads.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", s.http)).unwrap();
    use std::io::{Read, Write};
    write!(tcp, "GET /artifacts/installer/vmlinuz HTTP/1.1\r\nHost: t\r\nRange: bytes=2-4\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 206"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n234"), "{raw}");
    // UEFI HTTP boot (arch 16) is pointed at http://server:port/<efi file>.
    let efi = lab.dir.path().join("got.efi");
    let ok = std::process::Command::new("curl")
        .args(["-sSf", "-o"])
        .arg(&efi)
        .arg(s.url("/ipxe.efi"))
        .status()
        .unwrap();
    assert!(ok.success());
    assert_eq!(
        std::fs::read(&efi).unwrap(),
        std::fs::read(lab.ipxe.join("ipxe.efi")).unwrap()
    );
    assert_eq!(s.get("/nonexistent.efi").0, 404);
    // A symlink out of the folder and traversal are refused.
    assert_eq!(s.get("/artifacts/escape").0, 404);
    assert_eq!(s.get("/artifacts/../bundle/plan.json").0, 404);
    assert_eq!(s.get("/artifacts/%2e%2e/bundle/plan.json").0, 404);
}

/// Protects the host from a compromised server: started as root, `pxe serve` runs as the
/// `ironseed` account (the default `--user`) with every uid, gid and group dropped, and its
/// state folder is owner-only.
#[test]
fn started_as_root_it_serves_as_the_unprivileged_user() {
    if !nix::unistd::geteuid().is_root() {
        support::ci::skip("not root, nothing to drop");
        return;
    }
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let user = nix::unistd::User::from_name("ironseed").unwrap().unwrap();
    for key in ["Uid:", "Gid:"] {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        let ids: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        let want = if key == "Uid:" {
            user.uid.as_raw()
        } else {
            user.gid.as_raw()
        };
        assert!(
            ids.iter().all(|i| *i == want),
            "real, effective, saved and fs ids all dropped: {line}"
        );
    }
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(!groups.split_whitespace().any(|g| g == "0"), "{groups}");
    // Still serving, and the state it writes belongs to that user.
    assert_eq!(s.post("/api/v1/nodes/k3s1/disarm", "").0, 200);
    let meta = |p: &std::path::Path| std::fs::metadata(p).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta(&lab.state.join("nodes.json")).uid(), user.uid.as_raw());
    assert_eq!(meta(&lab.state).uid(), user.uid.as_raw());
    assert_eq!(meta(&lab.state).mode() & 0o7777, 0o700);
}

/// SIGTERM at once after READY drains and exits 0: the handler is in place before READY is
/// printed (when it was installed after, the default action now and then killed the server,
/// status 15, on a loaded machine).
#[test]
fn sigterm_right_after_ready_is_a_clean_shutdown() {
    let lab = lab();
    for _ in 0..30 {
        let status = Server::start(&lab, &[]).stop();
        assert!(status.success(), "{status:?}");
    }
}
