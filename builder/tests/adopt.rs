//! `builder adopt` and `builder validate --facts` as an operator runs them, on the facts
//! fixtures in fixtures/facts/ (a Dell R730 with a PERC virtual disk and a SATA SSD, an
//! OptiPlex with one NVMe, the R630 GPU node) and the default inventory with its comments.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::templates::Templates;
use common::{builder_cmd, stderr as err, stdout as out};
use serde_json::{Value, json};

const NEW_MAC: &str = "24:6e:96:20:00:40";

fn builder(args: &[&str], cwd: &Path) -> Output {
    builder_cmd(args).current_dir(cwd).output().unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/facts")
}

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

const R730: &str = "24-6e-96-20-00-30.json";
const OPTIPLEX: &str = "d8-9e-f3-20-00-21.json";
const R630: &str = "24-6e-96-20-00-23.json";

/// A lab folder: the default inventory (with its comments) as lab.yaml, mode 0640, and the
/// fixtures copied to facts/.
fn lab() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("lab.yaml");
    std::fs::write(&inv, DEFAULT_INVENTORY).unwrap();
    std::fs::set_permissions(&inv, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir(d.path().join("facts")).unwrap();
    for f in [R730, OPTIPLEX, R630] {
        std::fs::copy(fixtures().join(f), d.path().join("facts").join(f)).unwrap();
    }
    d
}

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// `file:line:column` of `value` on the first line of the default inventory containing `line`.
fn loc(line: &str, value: &str) -> String {
    let (i, l) = DEFAULT_INVENTORY
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(line))
        .unwrap_or_else(|| panic!("`{line}` not in the default inventory"));
    format!("lab.yaml:{}:{}", i + 1, l.find(value).unwrap() + 1)
}

#[test]
fn validate_facts_accepts_the_fixture_machines() {
    let d = lab();
    let o = builder(
        &["validate", "-i", "lab.yaml", "--facts", "facts"],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    // k3s3's kernel asked for NVIDIA firmware that its GPU driver packages already install.
    assert!(
        s.contains("facts: 3 nodes match their machines (k3s1, k3s3, nfs1)"),
        "{s}"
    );
    assert!(s.contains("no facts yet for k3s-master1"), "{s}");
}

/// One broken fact per rule; each must fail with its own diagnostic at the inventory line it
/// concerns. Removing a rule fails its case.
#[test]
fn validate_facts_reports_each_rule_at_its_inventory_line() {
    type Mutate = fn(&mut Value);
    let cases: Vec<(&str, &str, Mutate, String, &str)> = vec![
        (
            "install selector matches two disks",
            R730,
            |f| {
                let mut twin = f["disks"][1].clone();
                twin["name"] = json!("sdc");
                twin["serial"] = json!("OTHER");
                twin["wwn"] = json!("0x55cd2e41ffffffff");
                f["disks"].as_array_mut().unwrap().push(twin);
            },
            format!("{}: nodes[6].profile", loc("profile: r730", "r730")),
            "profile `r730`'s install_disk selector matches 2 of this machine's disks",
        ),
        (
            "the NFS pool disk is missing",
            R730,
            |f| {
                f["disks"].as_array_mut().unwrap().remove(0);
            },
            format!("{}: nodes[6].profile", loc("profile: r730", "r730")),
            "NFS pool disk `media` (profile `r730` data_disks[0]) does not exist",
        ),
        (
            "a Longhorn tier disk is missing",
            R630,
            |f| {
                f["disks"].as_array_mut().unwrap().remove(2);
            },
            format!("{}: nodes[5].profile", loc("profile: r630", "r630")),
            "Longhorn tier disk `optane` (profile `r630` data_disks[0]) does not exist",
        ),
        (
            "a data disk selector matches two disks",
            R630,
            |f| {
                let mut twin = f["disks"][1].clone();
                twin["name"] = json!("sdc");
                f["disks"].as_array_mut().unwrap().push(twin);
            },
            format!("{}: nodes[5].profile", loc("profile: r630", "r630")),
            "Longhorn tier disk `sas-ssd` (profile `r630` data_disks[2]) matches 2 disks",
        ),
        (
            "the boot MAC is not among the NICs",
            R730,
            |f| {
                f["nics"][0]["mac"] = json!("24:6e:96:20:00:99");
            },
            format!(
                "{}: nodes[6].mac",
                loc("mac: 24:6e:96:20:00:30", "24:6e:96:20:00:30")
            ),
            "24:6e:96:20:00:30 is not among the NICs this machine reported",
        ),
        (
            "the boot NIC has no driver",
            OPTIPLEX,
            |f| {
                f["nics"][0]["driver"] = Value::Null;
            },
            format!(
                "{}: nodes[3].mac",
                loc("mac: d8:9e:f3:20:00:21", "d8:9e:f3:20:00:21")
            ),
            "NIC eno1 (d8:9e:f3:20:00:21, PCI 8086:15bc) has no driver bound",
        ),
        (
            "the firmware mode differs from the profile's",
            OPTIPLEX,
            |f| {
                f["firmware"] = json!("bios");
            },
            format!("{}: nodes[3].profile", loc("profile: optiplex", "optiplex")),
            "the machine booted in bios mode, profile `optiplex` says uefi",
        ),
        (
            "a GPU profile without a GPU",
            R630,
            |f| {
                let pci = f["pci"].as_array_mut().unwrap();
                pci.remove(0);
                // The iDRAC's VGA is a display controller too, and no GPU.
                pci.push(json!({"address": "0000:0a:00.0", "class": "0x030000",
                    "id": "102b:0534", "driver": "mgag200"}));
            },
            format!(
                "{}: nodes[5].gpu",
                loc("default_runtime: false", "default_runtime")
            ),
            "profile `r630` has a nvidia GPU, and this machine reported none",
        ),
        (
            "firmware the kernel could not load",
            R730,
            |f| {
                f["missing_firmware"] = json!(["bnx2x/bnx2x-e2-7.13.21.0.fw"]);
            },
            format!("{}: nodes[6].hostname", loc("hostname: nfs1", "nfs1")),
            "the kernel failed to load firmware bnx2x/bnx2x-e2-7.13.21.0.fw; Debian package `firmware-bnx2x` ships it",
        ),
    ];
    for (what, file, mutate, at, msg) in cases {
        let d = lab();
        let p = d.path().join("facts").join(file);
        let mut f = fixture(file);
        mutate(&mut f);
        write_json(&p, &f);
        let o = builder(
            &["validate", "-i", "lab.yaml", "--facts", "facts"],
            d.path(),
        );
        let e = err(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {e}");
        assert!(
            e.contains(&format!("{at}: {msg}")),
            "{what}: want `{at}: {msg}` in:\n{e}"
        );
        assert!(
            e.contains("1 error(s)") && e.contains("lab.yaml: 1 problem against"),
            "{what}: exactly one error wanted:\n{e}"
        );
    }
}

/// Protects the data disks: install and data-disk selectors that differ only in by-id links
/// are refused before any facts are needed, since one disk has several by-id links (here the
/// facts show `ata-BOOT_1` and `wwn-0x5000` on the same disk).
#[test]
fn selectors_told_apart_only_by_links_are_refused() {
    let d = lab();
    std::fs::create_dir(d.path().join("hardware")).unwrap();
    std::fs::write(
        d.path().join("hardware/twolinks.yaml"),
        "name: twolinks\nfirmware: uefi\ndhcp_arch: 7\nboot_nic:\n  name: eno1\n\
         install_disk:\n  by_id: ata-BOOT_1\ndata_disks:\n  - name: tier\n    purpose: longhorn\n\
         \x20   selector:\n      by_id: wwn-0x5000\n",
    )
    .unwrap();
    let inv = DEFAULT_INVENTORY.replacen(
        "profile: optiplex\n    mac: d8:9e:f3:20:00:21",
        "profile: twolinks\n    mac: d8:9e:f3:20:00:21",
        1,
    );
    std::fs::write(d.path().join("lab.yaml"), &inv).unwrap();
    let mut f = fixture(OPTIPLEX);
    f["disks"][0]["by_id"] = json!(["ata-BOOT_1", "wwn-0x5000"]);
    write_json(&d.path().join("facts").join(OPTIPLEX), &f);
    let o = builder(
        &["validate", "-i", "lab.yaml", "--facts", "facts"],
        d.path(),
    );
    let e = err(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("hardware/twolinks.yaml:12:7: data_disks[0].selector: this data disk could be the install disk")
            && e.contains("by-id and by-path links do not"),
        "{e}"
    );
}

/// The R730 fixture as a new machine: another MAC, and a 960 GB boot SSD that the r730
/// profile's `max_size_gb: 512` does not pick.
fn new_r730() -> Value {
    let mut f = fixture(R730);
    f["boot_mac"] = json!(NEW_MAC);
    f["nics"][0]["mac"] = json!(NEW_MAC);
    f["disks"][1]["size"] = json!(960_000_000_000u64);
    f
}

fn adopt_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "adopt",
        NEW_MAC,
        "--hostname",
        "nfs2",
        "--role",
        "nfs",
        "--profile",
        "r730",
        "-i",
        "lab.yaml",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn adopt_round_trip_keeps_every_byte_and_the_entry_validates() {
    let d = lab();
    let inv = d.path().join("lab.yaml");
    write_json(&d.path().join("new.json"), &new_r730());

    // --dry-run prints the entry and writes nothing.
    let o = builder(&adopt_args(&["--facts", "new.json", "--dry-run"]), d.path());
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    assert!(
        s.contains(
            "    install_disk:\n      wwn: \"0x55cd2e4150a1b2c3\"\n      model: \"INTEL SSDSC2KB240G8\"\n"
        ),
        "{s}"
    );
    assert!(s.contains("--dry-run: lab.yaml was not changed"), "{s}");
    assert_eq!(std::fs::read_to_string(&inv).unwrap(), DEFAULT_INVENTORY);

    let o = builder(&adopt_args(&["--facts", "new.json"]), d.path());
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    for want in [
        "install disk: sdb (INTEL SSDSC2KB240G8, 960 GB) — profile `r730`'s selector matches 0 of this machine's 2 disks",
        "its WWN is burnt into the device and unique; with its model too, so the inventory can prove it never picks data disk `media`",
        "address: 10.0.20.31 (the first free address after the highest node address)",
        "added nfs2 (nfs, profile r730, 24:6e:96:20:00:40, 10.0.20.31)",
    ] {
        assert!(s.contains(want), "want `{want}` in:\n{s}");
    }
    // Every byte of the old file is still there, in order: only one block was inserted.
    let new = std::fs::read_to_string(&inv).unwrap();
    let at = new
        .bytes()
        .zip(DEFAULT_INVENTORY.bytes())
        .position(|(a, b)| a != b)
        .unwrap();
    let added = new.len() - DEFAULT_INVENTORY.len();
    assert_eq!(
        format!("{}{}", &new[..at], &new[at + added..]),
        DEFAULT_INVENTORY
    );
    assert_eq!(
        &new[at..at + added],
        "  # adopted by `builder adopt` (Dell Inc. PowerEdge R730)\n  - hostname: nfs2\n    role: nfs\n    profile: r730\n    mac: 24:6e:96:20:00:40\n    ip: 10.0.20.31\n    install_disk:\n      wwn: \"0x55cd2e4150a1b2c3\"\n      model: \"INTEL SSDSC2KB240G8\"\n"
    );
    assert!(
        new[..at].ends_with("    ip: 10.0.20.30\n"),
        "inserted after nfs1"
    );
    assert_eq!(
        std::fs::metadata(&inv).unwrap().permissions().mode() & 0o777,
        0o640
    );

    // The new entry validates, also against its machine's facts, and renders its override.
    std::fs::copy(
        d.path().join("new.json"),
        d.path().join("facts/24-6e-96-20-00-40.json"),
    )
    .unwrap();
    let o = builder(
        &["validate", "-i", "lab.yaml", "--facts", "facts"],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("facts: 4 nodes match"), "{}", out(&o));
    let o = builder(&["render", "-i", "lab.yaml", "-o", "out"], d.path());
    assert!(o.status.success(), "{}", err(&o));
    let plan: Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/plan.json")).unwrap()).unwrap();
    let node = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == "nfs2")
        .unwrap();
    assert_eq!(node["install_disk"]["wwn"], "0x55cd2e4150a1b2c3");

    // Rerunning with the same MAC is refused and changes nothing; so is a second hostname.
    let o = builder(&adopt_args(&["--facts", "new.json"]), d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("24:6e:96:20:00:40 is already in lab.yaml as node nfs2"),
        "{}",
        err(&o)
    );
    let mut other = new_r730();
    other["boot_mac"] = json!("24:6e:96:20:00:50");
    write_json(&d.path().join("other.json"), &other);
    let o = builder(
        &[
            "adopt",
            "24:6e:96:20:00:50",
            "--hostname",
            "nfs2",
            "--role",
            "nfs",
            "--profile",
            "r730",
            "-i",
            "lab.yaml",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("already has a node named nfs2"),
        "{}",
        err(&o)
    );
    assert_eq!(std::fs::read_to_string(&inv).unwrap(), new);
}

/// Protects the operator's terminal and file: text the machine reported (models, product
/// names) reaches neither unescaped.
#[test]
fn adopt_escapes_what_the_machine_reported() {
    let d = lab();
    let mut f = new_r730();
    f["dmi"]["product_name"] = json!("R730\u{1b}]0;owned\u{7}");
    f["disks"][1]["model"] = json!("SSD\u{1b}[2J\n  role: server");
    f["disks"][1]["wwn"] = Value::Null;
    f["disks"][1]["serial"] = Value::Null;
    f["disks"][1]["by_id"] = json!([]);
    write_json(&d.path().join("evil.json"), &f);
    let o = builder(
        &adopt_args(&["--facts", "evil.json", "--dry-run"]),
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let s = out(&o);
    assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s:?}");
    assert!(
        s.contains(r#"      model: "SSD\u001b[2J\n  role: server""#),
        "{s}"
    );
    let o = builder(&adopt_args(&["--facts", "evil.json"]), d.path());
    assert!(o.status.success(), "{}", err(&o));
    let new = std::fs::read_to_string(d.path().join("lab.yaml")).unwrap();
    assert!(!new.contains('\u{1b}'), "{new:?}");
    let o = builder(&["validate", "-i", "lab.yaml"], d.path());
    assert!(o.status.success(), "{}", err(&o));
}

#[test]
fn adopt_without_facts_keeps_the_profile_selector_and_says_it_is_unverified() {
    let d = lab();
    let o = builder(
        &[
            "adopt",
            "52:54:00:20:00:14",
            "--hostname",
            "k3s-master4",
            "--role",
            "agent",
            "--profile",
            "vm",
            "--ip",
            "10.0.20.14",
            "-i",
            "lab.yaml",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("profile `vm`'s selector, UNVERIFIED"),
        "{}",
        out(&o)
    );
    let new = std::fs::read_to_string(d.path().join("lab.yaml")).unwrap();
    assert!(new.contains(
        "  - hostname: k3s-master4\n    role: agent\n    profile: vm\n    mac: 52:54:00:20:00:14\n    ip: 10.0.20.14\n\nnfs:"
    ), "{new}");
    let o = builder(&["validate", "-i", "lab.yaml"], d.path());
    assert!(o.status.success(), "{}", err(&o));
}

/// Protects against installing on a guess: a machine whose install disk cannot be told apart,
/// facts of another machine, an address another node has, and the embedded inventory are all
/// refused with the file untouched.
#[test]
fn adopt_refuses_guesses_and_leaves_the_file_untouched() {
    let d = lab();
    let inv = d.path().join("lab.yaml");
    let mut two = new_r730();
    let mut twin = two["disks"][1].clone();
    twin["name"] = json!("sdc");
    two["disks"].as_array_mut().unwrap().push(twin);
    write_json(&d.path().join("two.json"), &two);
    let o = builder(&adopt_args(&["--facts", "two.json"]), d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("cannot tell which disk is the install disk: sdb (INTEL SSDSC2KB240G8, 960 GB), sdc (INTEL SSDSC2KB240G8, 960 GB)"),
        "{}",
        err(&o)
    );

    write_json(&d.path().join("r730.json"), &fixture(R730));
    let o = builder(&adopt_args(&["--facts", "r730.json"]), d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("these facts are of the machine that booted from 24:6e:96:20:00:30"),
        "{}",
        err(&o)
    );

    write_json(&d.path().join("new.json"), &new_r730());
    let o = builder(
        &adopt_args(&["--facts", "new.json", "--ip", "10.0.20.21"]),
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("was not changed"), "{}", err(&o));
    assert!(err(&o).contains("10.0.20.21"), "{}", err(&o));

    let o = builder(
        &[
            "adopt",
            NEW_MAC,
            "--hostname",
            "x1",
            "--role",
            "agent",
            "--profile",
            "vm",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("builder init lab.yaml"), "{}", err(&o));

    assert_eq!(std::fs::read_to_string(&inv).unwrap(), DEFAULT_INVENTORY);
}

/// A stand-in for `pxe serve`'s operator API: answers `GET /api/v1/discovered` with `body`
/// only to the bearer token `token` (401 otherwise), for `n` requests.
fn fake_pxe(token: &'static str, body: Value, n: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let authorized = head
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
            let (status, body) = if !head[0].starts_with("GET /api/v1/discovered ") {
                ("404 Not Found", "{}".to_string())
            } else if authorized {
                ("200 OK", body.to_string())
            } else {
                ("401 Unauthorized", "{}".to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn adopt_and_validate_read_facts_from_the_pxe_server_with_its_token() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let d = lab();
    let tok = d.path().join("token");
    std::fs::write(&tok, TOKEN).unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    let entry = |mac: &str, facts: Value| {
        json!({"mac": mac, "arch": 7, "vendor_class": "PXEClient:Arch:00007:UNDI:003016",
               "uuid": null, "first_seen_ms": 1, "last_seen_ms": 2, "count": 3,
               "interface": "eth0", "inspect": false, "facts": facts})
    };
    let body = json!({"machines": [
        entry(NEW_MAC, new_r730()),
        entry("52:54:00:20:00:15", Value::Null),
        entry("24:6e:96:20:00:30", fixture(R730)),
    ]});
    let url = fake_pxe(TOKEN, body, 4);
    let tok = tok.to_str().unwrap();

    // Without the token the server refuses, and adopt says how to pass it.
    let o = builder_cmd(&adopt_args(&["--server", &url]))
        .current_dir(d.path())
        .env_remove("IRONSEED_API_TOKEN")
        .env("HOME", d.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("HTTP 401"), "{}", err(&o));

    let o = builder(
        &adopt_args(&["--server", &url, "--api-token-file", tok]),
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("its WWN is burnt into the device"),
        "{}",
        out(&o)
    );

    // Seen on DHCP only: adopted with the profile's selector, unverified.
    let o = builder(
        &[
            "adopt",
            "52:54:00:20:00:15",
            "--hostname",
            "k3s4",
            "--role",
            "agent",
            "--profile",
            "vm",
            "-i",
            "lab.yaml",
            "--server",
            &url,
            "--api-token-file",
            tok,
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("UNVERIFIED"), "{}", out(&o));

    let o = builder(
        &[
            "validate",
            "-i",
            "lab.yaml",
            "--server",
            &url,
            "--api-token-file",
            tok,
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("facts: 2 nodes match their machines (nfs1, nfs2)"),
        "{}",
        out(&o)
    );
}

/// The node-level `install_disk` is validated like a profile's: a selector that could pick a
/// data disk of the profile, or a kernel device name, is an error at its line.
#[test]
fn a_node_install_disk_override_is_checked_like_the_profiles() {
    let load = |text: &str| {
        let mut d = builder::diag::Diagnostics::default();
        let set = ProfileSet::load(&[], &mut d);
        let (inv, more) = inventory::load("inv.yaml", text, &set, &Templates::embedded());
        d.extend(more);
        (inv, d)
    };
    let with = |sel: &str| {
        DEFAULT_INVENTORY.replacen(
            "    ip: 10.0.20.30\n",
            &format!("    ip: 10.0.20.30\n    install_disk:\n{sel}"),
            1,
        )
    };
    let ip_line = DEFAULT_INVENTORY
        .lines()
        .position(|l| l == "    ip: 10.0.20.30")
        .unwrap() as u64
        + 1;
    let (inv, d) = load(&with("      wwn: \"0x55cd2e4150a1b2c3\"\n"));
    assert!(d.errors().any(|e| {
        e.path == "nodes[6].install_disk"
            && e.message
                .contains("could pick data disk `media` of profile `r730`")
            && e.span.line == ip_line + 2
    }));
    assert!(inv.is_none());
    let (_, d) = load(&with("      device: /dev/sda\n"));
    assert!(
        d.errors().any(|e| e.path == "nodes[6].install_disk.device"),
        "{}",
        d.render(&|_| None)
    );
    let (inv, d) = load(&with(
        "      wwn: \"0x55cd2e4150a1b2c3\"\n      model: SSDSC2KB240G8\n",
    ));
    assert!(!d.has_errors(), "{}", d.render(&|_| None));
    let nfs1 = inv
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.hostname.as_str() == "nfs1")
        .unwrap();
    assert_eq!(
        nfs1.profile.install_disk.wwn.as_deref(),
        Some("0x55cd2e4150a1b2c3")
    );
    assert_eq!(nfs1.profile.install_disk.max_size_gb, None);
}
