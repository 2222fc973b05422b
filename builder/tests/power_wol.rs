//! Wake-on-LAN on the wire: the real `builder power NODE on` in one network namespace (the
//! appliance), tcpdump in another (the node's segment) joined by a veth pair, and the captured
//! datagram checked byte for byte: 6 × 0xFF, the node's boot MAC 16 times, to the subnet's
//! broadcast address, UDP port 9. Namespaces and veths are named `power-*`/`pw*`; addresses only
//! inside them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builder::inventory::DEFAULT_INVENTORY;
use common::ci;

struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        Ns(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        ip(&a);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let s = Command::new("ip").args(args).status().unwrap();
    assert!(s.success(), "ip {args:?}");
}

fn available() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["ip", "tcpdump"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if root && tools {
        return true;
    }
    ci::skip(&format!(
        "wol_magic_packet_on_the_wire: needs root, iproute2 and tcpdump (root={root}, tools={tools})"
    ))
}

#[test]
fn wol_magic_packet_on_the_wire() {
    if !available() {
        return;
    }
    let id = std::process::id() % 100_000;
    let (a, b) = (
        Ns::new(format!("power-a-{id}")),
        Ns::new(format!("power-b-{id}")),
    );
    let (va, vb) = (format!("pwa{id}"), format!("pwb{id}"));
    ip(&[
        "link", "add", &va, "netns", &a.0, "type", "veth", "peer", "name", &vb, "netns", &b.0,
    ]);
    a.ip(&["addr", "add", "10.0.20.5/24", "dev", &va]);
    b.ip(&["addr", "add", "10.0.20.21/24", "dev", &vb]);
    for (ns, v) in [(&a, &va), (&b, &vb)] {
        ns.ip(&["link", "set", v, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    // Once with the default (the subnet's broadcast, the route's interface), once bound to the
    // appliance's interface (SO_BINDTODEVICE).
    let blocks = ["wol: {}".to_string(), format!("wol: {{interface: {va}}}")];
    for (i, block) in blocks.iter().enumerate() {
        let inv = DEFAULT_INVENTORY.replacen(
            "    profile: optiplex\n",
            &format!("    profile: optiplex\n    power:\n      {block}\n"),
            1,
        );
        std::fs::write(dir.path().join(format!("lab{i}.yaml")), &inv).unwrap();
    }
    let mac = "d8:9e:f3:20:00:21";
    assert!(
        DEFAULT_INVENTORY.contains(&format!("mac: {mac}")),
        "k3s1's MAC in the fixture"
    );

    // Three copies per send, two sends.
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", &b.0, "timeout", "30", "tcpdump", "-i", &vb, "-n", "-l", "-x", "-c",
            "6",
        ])
        .args(["udp", "port", "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for "listening on" so the packet is not sent before the capture runs.
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    let t = Instant::now();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpdump ended: {line}"
        );
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    let exe = env!("CARGO_BIN_EXE_builder");
    for (i, block) in blocks.iter().enumerate() {
        let file = format!("lab{i}.yaml");
        let out = Command::new("ip")
            .args([
                "netns", "exec", &a.0, exe, "power", "k3s1", "on", "--yes", "-i", &file,
            ])
            // Nothing listens there: recording the action in pxe fails with a warning only.
            .args(["--server", "http://127.0.0.1:9"])
            .current_dir(dir.path())
            .env_remove("IRONSEED_INVENTORY")
            .env_remove("IRONSEED_PXE")
            .env_remove("IRONSEED_SECRETS")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{block}: {text}");
        assert!(
            text.contains("wake-on-LAN packet for d8:9e:f3:20:00:21 to 10.0.20.255:9"),
            "{block}: {text}"
        );
    }

    let mut captured = String::new();
    dump.stdout
        .take()
        .unwrap()
        .read_to_string(&mut captured)
        .unwrap();
    let _ = dump.wait();
    let mut want = "ff".repeat(6);
    want.push_str(&mac.replace(':', "").repeat(16));
    // One header line per packet ("IP 10.0.20.5.PORT > 10.0.20.255.9: UDP, length 102"), then
    // its hex dump lines (indented).
    let mut packets: Vec<(String, String)> = Vec::new();
    for l in captured.lines() {
        if !l.starts_with(char::is_whitespace) {
            packets.push((l.to_string(), String::new()));
        } else if let (Some(p), Some((_, h))) = (packets.last_mut(), l.trim().split_once(":  ")) {
            p.1.push_str(&h.replace(' ', ""));
        }
    }
    assert_eq!(packets.len(), 6, "{captured}");
    for (head, hex) in &packets {
        assert!(head.contains("IP 10.0.20.5."), "{captured}");
        assert!(
            head.contains("> 10.0.20.255.9: UDP, length 102"),
            "{captured}"
        );
        assert!(
            hex.ends_with(&want),
            "the datagram's payload is not the magic packet for {mac}:\n{captured}"
        );
        // IPv4 (20) + UDP (8) + 102.
        assert_eq!(hex.len(), 2 * (20 + 8 + 102), "{captured}");
    }
}
