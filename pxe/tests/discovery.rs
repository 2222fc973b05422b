//! Discovered machines and inspection boots against the real `pxe serve` on loopback: the
//! operator arms an inspection, the unknown MAC gets the inspect script, its facts come back
//! only with the live inspect secret, and `builder discover` shows them.

mod support;

use std::os::unix::fs::PermissionsExt;

use images::bundle::facts::{DiskFacts, Dmi, FACTS_MAX, Facts, Nic};
use support::serve::{Server, lab};

const NEW: &str = "52:54:00:de:ad:01";

/// The inspect secret in an inspect script's `ironseed.facts=.../inspect/<mac>/<secret>/facts`.
fn facts_path(script: &str) -> Option<String> {
    let url = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ironseed.facts="))?;
    Some(url[url.find("/inspect/")?..].to_string())
}

fn facts() -> String {
    let disk = |name: &str, size: u64, transport: &str| DiskFacts {
        name: name.into(),
        model: Some(format!("{transport} disk")),
        serial: Some(format!("SN-{name}")),
        wwn: None,
        size,
        rotational: transport == "sas",
        removable: false,
        transport: Some(transport.into()),
        by_id: vec![],
        by_path: vec![],
        partition_table: None,
        signatures: vec![],
    };
    serde_json::to_string(&Facts {
        version: images::bundle::facts::FACTS_VERSION,
        boot_mac: Some(NEW.parse().unwrap()),
        dmi: Dmi {
            sys_vendor: Some("Dell Inc.".into()),
            product_name: Some("PowerEdge R630".into()),
            ..Dmi::default()
        },
        firmware: Some(images::bundle::Firmware::Uefi),
        memory_bytes: 64 << 30,
        nics: vec![Nic {
            name: "eno1".into(),
            mac: NEW.parse().unwrap(),
            driver: Some("tg3".into()),
            pci_id: Some("14e4:165f".into()),
            carrier: true,
            speed_mbps: Some(1000),
        }],
        disks: vec![
            disk("nvme0n1", 64 << 30, "nvme"),
            disk("sda", 4 << 40, "sas"),
            disk("sdb", 480 << 30, "sata"),
        ],
        ..Facts::default()
    })
    .unwrap()
}

fn discovered(s: &Server) -> serde_json::Value {
    let (st, b) = s.get("/api/v1/discovered");
    assert_eq!(st, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

/// Protects install-once and the facts route: an unknown MAC is inspected only when armed
/// (never an inventory MAC), its facts are taken only with the live inspect secret, within
/// FACTS_MAX, as a valid document, once; then `builder discover` shows them.
#[test]
fn armed_inspection_takes_facts_once_with_its_secret() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    // Not armed, `--inspect none`: the unknown script, and no URL takes facts.
    let script = s.boot_script(NEW);
    assert!(script.contains("not in the inventory"), "{script}");
    assert!(!script.contains("ironseed.mode=inspect"), "{script}");
    let guess = format!("/inspect/52-54-00-de-ad-01/{}/facts", "0".repeat(64));
    assert_eq!(s.anon_post(&guess, &facts()).0, 404);

    // An inventory MAC is never inspected.
    let known = lab.mac("k3s-master1");
    let (st, b) = s.post(&format!("/api/v1/discovered/{known}/inspect"), "");
    assert_eq!(st, 409, "{b}");
    let script = s.boot_script(&known);
    assert!(!script.contains("ironseed.mode=inspect"), "{script}");
    assert_eq!(s.post("/api/v1/discovered/zz/inspect", "").0, 400);

    // Armed: the inspect script, with the facts URL and the after action.
    let (st, b) = s.post(&format!("/api/v1/discovered/{NEW}/inspect"), "");
    assert_eq!(st, 200, "{b}");
    assert!(
        !b.contains("secret"),
        "the API never shows the inspect secret: {b}"
    );
    let script = s.boot_script(NEW);
    assert!(script.contains("ironseed.mode=inspect"), "{script}");
    assert!(script.contains("ironseed.after=poweroff"), "{script}");
    assert!(script.contains("/artifacts/installer/vmlinuz"), "{script}");
    let path = facts_path(&script).expect("facts URL");
    let listed = discovered(&s);
    assert_eq!(listed["machines"][0]["inspect"], true, "{listed}");
    assert!(!listed.to_string().contains(path.split('/').nth(3).unwrap()));

    // Wrong secret, other MAC: 404. Bad JSON: 400. Too large: 413. None of them kills it.
    let wrong = path.replace("/52-54-00-de-ad-01/", "/52-54-00-de-ad-02/");
    assert_eq!(s.anon_post(&wrong, &facts()).0, 404);
    let mut bad_secret = path.clone();
    bad_secret.replace_range(bad_secret.len() - 8..bad_secret.len() - 6, "zz");
    assert_eq!(s.anon_post(&bad_secret, &facts()).0, 404);
    let (st, b) = s.anon_post(&path, "{\"version\":1,\"dmi\":");
    assert_eq!(st, 400, "{b}");
    let (st, b) = s.anon_post(&path, r#"{"version":1,"unexpected":true}"#);
    assert_eq!(st, 400, "{b}");
    let huge = format!("{}{}", facts(), " ".repeat(FACTS_MAX));
    assert_eq!(s.anon_post(&path, &huge).0, 413);

    // The real document, larger than the 64 KiB other routes take (a big server's facts):
    // stored, the secret dies, the machine is no longer inspected.
    let big = format!("{}{}", facts(), " ".repeat(200 << 10));
    let (st, b) = s.anon_post(&path, &big);
    assert_eq!(st, 200, "{b}");
    assert_eq!(s.anon_post(&path, &facts()).0, 404, "the secret died");
    let listed = discovered(&s);
    let m = &listed["machines"][0];
    assert_eq!(m["mac"], NEW);
    assert_eq!(m["inspect"], false);
    assert_eq!(m["facts"]["dmi"]["product_name"], "PowerEdge R630");
    assert_eq!(m["facts"]["disks"].as_array().unwrap().len(), 3);
    let script = s.boot_script(NEW);
    assert!(!script.contains("ironseed.mode=inspect"), "{script}");

    // builder discover against this server: the table and the raw list.
    let out = std::process::Command::new(support::builder_bin())
        .args(["discover", "--server", &s.url("")])
        .arg("--api-token-file")
        .arg(&s.token_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(NEW), "{text}");
    assert!(text.contains("Dell Inc. PowerEdge R630"), "{text}");
    assert!(
        text.contains("3 disks: 64G nvme, 4T sas, 480G sata"),
        "{text}"
    );
    assert!(text.contains("eno1 tg3 up 1000M"), "{text}");
    assert!(text.contains("uefi"), "{text}");
    let out = std::process::Command::new(support::builder_bin())
        .args(["discover", "--json", "--server", &s.url("")])
        .arg("--api-token-file")
        .arg(&s.token_file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["machines"][0]["facts"]["memory_bytes"], 64u64 << 30);
    // Without the token, builder discover says what to do.
    let out = std::process::Command::new(support::builder_bin())
        .args(["discover", "--server", &s.url("")])
        .env_remove("IRONSEED_API_TOKEN")
        .env("HOME", lab.dir.path())
        .env("XDG_STATE_HOME", lab.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Saved owner-only, facts kept across a restart.
    s.stop();
    let file = lab.state.join("discovered.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let s = Server::start(&lab, &[]);
    let listed = discovered(&s);
    assert_eq!(
        listed["machines"][0]["facts"]["dmi"]["sys_vendor"],
        "Dell Inc."
    );
}

/// `--inspect unknown`: every unknown MAC without facts gets the inspect script (with the
/// `--after-inspect` action); an inventory MAC never does, armed or not; once a machine has
/// reported, it is sent on to its next boot device.
#[test]
fn inspect_unknown_inspects_unknown_macs_until_they_report() {
    let lab = lab();
    let s = Server::spawn(Server::command_default_arming(
        &lab,
        &["--inspect", "unknown", "--after-inspect", "reboot"],
    ));
    for host in ["k3s-master1", "k3s1"] {
        let script = s.boot_script(&lab.mac(host));
        assert!(
            !script.contains("ironseed.mode=inspect"),
            "{host}: {script}"
        );
    }
    let script = s.boot_script(NEW);
    assert!(script.contains("ironseed.mode=inspect"), "{script}");
    assert!(script.contains("ironseed.after=reboot"), "{script}");
    let path = facts_path(&script).unwrap();
    // A second boot before reporting (a reset mid-inspection) keeps the same secret.
    assert_eq!(facts_path(&s.boot_script(NEW)).unwrap(), path);
    assert_eq!(s.anon_post(&path, &facts()).0, 200);
    let script = s.boot_script(NEW);
    assert!(script.contains("not in the inventory"), "{script}");
    // Armed again by the operator: inspected again.
    assert_eq!(
        s.post(&format!("/api/v1/discovered/{NEW}/inspect"), "").0,
        200
    );
    assert!(s.boot_script(NEW).contains("ironseed.mode=inspect"));
}

fn metric(s: &Server, series: &str) -> u64 {
    let (st, body) = s.get("/metrics");
    assert_eq!(st, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// Protects memory and the disk: a flood of DHCP DISCOVERs with made-up MACs keeps at most
/// 1,024 machines and costs one coalesced write of discovered.json per 2 s, not one per
/// packet; the server still answers a real client meanwhile. Prints what it measured.
#[test]
fn a_dhcp_flood_of_random_macs_is_capped_and_coalesced() {
    use pxe::proto::dhcp::{
        Architecture, DhcpOption, MacAddr, MessageType, client_message, encode,
    };
    use std::time::{Duration, Instant};
    let lab = lab();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pxe"));
    cmd.args(["serve", "--listen", "127.0.0.1", "--dhcp", "proxy"])
        .args(["--dhcp-port", &port.to_string()])
        .args(["--http-port", "0", "--tftp-port", "0", "--bundle"])
        .arg(&lab.bundle)
        .arg("--state")
        .arg(&lab.state)
        .arg("--ipxe-dir")
        .arg(&lab.ipxe)
        .arg("--artifacts")
        .arg(&lab.artifacts);
    support::ensure_service_user();
    let s = Server::spawn(cmd);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let sent = 20_000u32;
    for i in 0..sent {
        let b = i.to_be_bytes();
        let msg = client_message(
            MacAddr([2, 0xfe, b[0], b[1], b[2], b[3]]),
            i,
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(7)),
            ],
        );
        let _ = sock.send_to(&encode(&msg).unwrap(), ("127.0.0.1", port));
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let flood = start.elapsed();
    // A real client during the aftermath: answered (1 s printed, 5 s asserted under load).
    let t = Instant::now();
    let script = s.boot_script(NEW);
    let answered = t.elapsed();
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(answered < Duration::from_secs(5), "{answered:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let machines = metric(&s, "ironseed_discovered_machines");
    let saves = metric(&s, "ironseed_discovered_saves_total");
    let elapsed = start.elapsed();
    eprintln!(
        "flood: {sent} DISCOVERs in {flood:?}; kept {machines} machines; {saves} saves in \
         {elapsed:?}; a boot script answered in {answered:?}"
    );
    assert_eq!(
        machines, 1024,
        "capped at 1,024 (and the flood reached the server)"
    );
    assert!(
        saves <= elapsed.as_secs() / 2 + 2,
        "{saves} writes in {elapsed:?}: not coalesced"
    );
    let saved = std::fs::read_to_string(lab.state.join("discovered.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert!(v["machines"].as_array().unwrap().len() <= 1024);
}
