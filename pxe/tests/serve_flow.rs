//! `pxe serve` end to end on loopback (DHCP off): the install-once flow a node goes through,
//! driven over HTTP the way iPXE, the installer and cloud-init drive it.

#[path = "servecommon/mod.rs"]
mod common;

use common::{Server, lab};

#[test]
fn install_once_flow_from_armed_to_booted_and_re_arm() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let mac = lab.mac("k3s1");
    let token = lab.token("k3s1");

    // A MAC that is not in the inventory is never installed and changes nothing.
    let (st, body) = s.get("/boot/52:54:00:ee:ee:ee.ipxe");
    assert_eq!(st, 200);
    assert!(
        body.contains("not in the inventory") && body.contains("exit 1"),
        "{body}"
    );

    // Armed (new bundle): the per-MAC script is the installer, and the node is now booting.
    assert_eq!(s.state("k3s1"), "armed");
    let (st, body) = s.get(&format!("/boot/{mac}.ipxe"));
    assert_eq!(st, 200);
    assert!(body.contains("ironseed: installing k3s1"), "{body}");
    assert!(body.contains(&format!("/plan/k3s1/{token}")), "{body}");
    assert_eq!(s.state("k3s1"), "booting");
    // Real iPXE percent-encodes the colons of ${net0/mac} in the request (captured by the DHCP
    // firmware tests); upper case and dashes also occur.
    let (_, enc) = s.get(&format!("/boot/{}.ipxe", mac.replace(':', "%3A")));
    assert!(enc.contains("installing k3s1"), "{enc}");
    let (_, again) = s.get(&format!(
        "/boot/{}.ipxe",
        mac.to_uppercase().replace(':', "-")
    ));
    assert!(again.contains("installing k3s1"));

    // The installer's plan and the seed, only with the right token.
    let (st, plan) = s.get(&format!("/plan/k3s1/{token}"));
    assert_eq!(st, 200, "{plan}");
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["hostname"], "k3s1");
    assert_eq!(plan["install_disk"]["by_path"], "pci-0000:02:00.0-nvme-1");
    assert!(
        plan["seed"]["network-config"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/seed/k3s1/{token}/network-config"))
    );
    let (st, ud) = s.get(&format!("/seed/k3s1/{token}/user-data"));
    assert_eq!(st, 200);
    assert!(ud.starts_with("#cloud-config\n"));
    assert_eq!(
        s.get(&format!("/seed/k3s1/{}/user-data", "0".repeat(32))).0,
        404,
        "wrong token"
    );
    assert_eq!(
        s.get(&format!("/seed/k3s2/{token}/user-data")).0,
        404,
        "another node's token"
    );
    assert_eq!(s.get(&format!("/seed/k3s1/{token}/../../plan.json")).0, 404);
    assert_eq!(s.get(&format!("/seed/k3s1/{token}/vendor-data")).0, 404);

    // The installer reports; out-of-order reports are refused.
    assert_eq!(
        s.event("k3s1", r#"{"event":"installed","sha256":"aa"}"#),
        409
    );
    assert_eq!(
        s.event(
            "k3s1",
            r#"{"event":"installing","disk":"/dev/nvme0n1","total":1000}"#
        ),
        200
    );
    assert_eq!(
        s.event("k3s1", r#"{"event":"progress","written":400,"total":1000}"#),
        200
    );
    assert_eq!(s.node("k3s1")["bytes_written"], 400);
    assert_eq!(
        s.event("k3s1", r#"{"event":"installed","sha256":"aa"}"#),
        200
    );
    assert_eq!(s.event("k3s1", r#"{"event":"explode"}"#), 400);
    assert_eq!(s.state("k3s1"), "installed");

    // Installed: boot local, and the seed is no longer served (it carries the token).
    let (_, body) = s.get(&format!("/boot/{mac}.ipxe"));
    assert!(
        body.contains("booting from local disk") && body.contains("sanboot"),
        "{body}"
    );
    assert_eq!(s.get(&format!("/seed/k3s1/{token}/user-data")).0, 403);
    assert_eq!(s.get(&format!("/plan/k3s1/{token}")).0, 403);

    // cloud-init's phone_home ends the first boot.
    assert_eq!(
        s.post(
            "/api/v1/nodes/k3s1/phone-home",
            "instance_id=x&hostname=k3s1"
        )
        .0,
        200
    );
    assert_eq!(s.state("k3s1"), "booted");
    let timeline: Vec<String> = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        timeline,
        [
            "armed",
            "script-served",
            "script-served",
            "script-served",
            "installing",
            "installed",
            "booted",
            "note"
        ]
    );
    // What phone_home said, and the address it came from, are in the timeline.
    let last = s.node("k3s1")["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        last["detail"], "phone-home: hostname=k3s1 fqdn= address=127.0.0.1",
        "{last}"
    );

    // Re-arm through the CLI: the next PXE boot installs again.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
        .args(["arm", "k3s1", "--server", &s.url("")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "k3s1: armed");
    assert!(s.boot_script(&mac).contains("installing k3s1"));
    assert_eq!(s.post("/api/v1/nodes/nope/arm", "").0, 404);

    // pxe status prints the table.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"))
        .args(["status", "--server", &s.url("")])
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

    // Metrics count what happened.
    let (_, m) = s.get("/metrics");
    assert!(m.contains("ironseed_nodes{state=\"booting\"} 1"), "{m}");
    assert!(
        m.contains("ironseed_http_requests_total{route=\"seed\",status=\"404\"}"),
        "{m}"
    );
    assert!(s.stop().success(), "graceful shutdown exits 0");
}

#[test]
fn no_arm_serves_local_boot_until_armed() {
    let lab = lab();
    let s = Server::start(&lab, &["--no-arm"]);
    let mac = lab.mac("k3s-master1");
    assert_eq!(s.state("k3s-master1"), "disarmed");
    assert!(s.boot_script(&mac).contains("booting from local disk"));
    assert_eq!(s.state("k3s-master1"), "disarmed");
    assert_eq!(s.post("/api/v1/nodes/k3s-master1/arm", "").0, 200);
    assert!(s.boot_script(&mac).contains("installing k3s-master1"));
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
        common::tftp_get(s.tftp, "undionly.kpxe", &out),
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
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: this test must run there"
        );
        eprintln!("SKIP: not root, nothing to drop");
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
