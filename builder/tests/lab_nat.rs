//! `builder lab up --nat` without touching this machine's network: a namespace stands in for
//! the host (its FORWARD policy DROP, as on a host running Docker), another for the internet
//! (a TCP server on 192.0.2.2, TEST-NET-1), a third for a lab node on the lab's bridge. The
//! lab's own functions (`builder::lab::net::{create, add_nat, delete}`) run on a thread inside
//! the stand-in host, so every `ip`, `iptables` and sysctl they run lands there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use builder::lab::net;

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

fn capable() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["ip", "iptables"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if root && tools {
        return true;
    }
    let why = format!("lab_nat: needs root, ip and iptables (root={root}, tools={tools})");
    assert!(!ci(), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Ns(String);
impl Ns {
    fn new(name: String) -> Ns {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }
    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
    fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Protects `--nat`: a node behind the lab reaches past a host whose FORWARD policy is DROP
/// (fails without add_nat's FORWARD rules), its traffic leaves as the host's address (both
/// masquerades), and `delete` removes exactly the lab's host rules and puts the host's
/// ip_forward back (fails without forwarding_off).
#[test]
fn nat_reaches_past_a_dropping_host_and_down_undoes_the_hosts_changes() {
    if !capable() {
        return;
    }
    let tag = std::process::id() % 100_000;
    let host = Ns::new(format!("lnath{tag}"));
    let inet = Ns::new(format!("lnati{tag}"));
    let node = Ns::new(format!("lnatn{tag}"));
    // host <-> internet
    sh(&[
        "ip", "-n", &host.0, "link", "add", "lnup", "type", "veth", "peer", "name", "lnin",
        "netns", &inet.0,
    ]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "lnup"]);
    host.ip(&["link", "set", "lnup", "up"]);
    inet.ip(&["addr", "add", "192.0.2.2/24", "dev", "lnin"]);
    inet.ip(&["link", "set", "lnin", "up"]);
    host.exec(&["iptables", "-P", "FORWARD", "DROP"]);
    assert_eq!(
        host.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "0",
        "a new namespace starts without forwarding"
    );

    // The internet's server: records who connected.
    let inet_name = inet.0.clone();
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        join(&inet_name);
        let l = TcpListener::bind("192.0.2.2:8099").unwrap();
        ready_tx.send(()).unwrap();
        if let Ok((mut c, peer)) = l.accept() {
            let _ = c.write_all(b"hello from the internet\n");
            let _ = tx.send(peer);
        }
    });
    ready_rx.recv().unwrap();

    // The lab, set up from inside the stand-in host.
    let dir = tempfile::tempdir().unwrap();
    let lab = net::netns_name(dir.path());
    // Even when an assert fails: the lab's namespace, and its notes and rules in the stand-in
    // host (net::delete is idempotent).
    let _lab_guard = LabGuard {
        lab: lab.clone(),
        host: host.0.clone(),
    };
    let (l, h) = (lab.clone(), host.0.clone());
    in_ns(&h, move || {
        net::create(&l, &["10.93.0.1/24".to_string()], &[]).unwrap();
        net::add_nat(&l, "10.93.0.0/24").unwrap();
    });
    assert_eq!(
        host.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    let rules = host.exec(&["iptables-save"]);
    assert_eq!(
        rules.matches(&format!("ironseed-lab-{lab}")).count(),
        3,
        "the masquerade and two FORWARD rules, tagged:\n{rules}"
    );

    // A node on the lab's bridge.
    sh(&[
        "ip", "-n", &node.0, "link", "add", "lnn0", "type", "veth", "peer", "name", "lnn1",
        "netns", &lab,
    ]);
    sh(&[
        "ip",
        "-n",
        &lab,
        "link",
        "set",
        "lnn1",
        "master",
        net::BRIDGE,
        "up",
    ]);
    node.ip(&["addr", "add", "10.93.0.50/24", "dev", "lnn0"]);
    node.ip(&["link", "set", "lnn0", "up"]);
    node.ip(&["route", "add", "default", "via", "10.93.0.1"]);
    let got = in_ns(&node.0.clone(), || {
        let mut c =
            TcpStream::connect_timeout(&"192.0.2.2:8099".parse().unwrap(), Duration::from_secs(10))
                .expect("the node reaches the internet through the lab's NAT");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    });
    assert_eq!(got, "hello from the internet\n");
    let peer = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        "the node's traffic leaves as the host's address"
    );

    // Down: the lab's host rules, its veth and the namespace go; forwarding is back to off.
    let (l, h) = (lab.clone(), host.0.clone());
    in_ns(&h, move || net::delete(&l).unwrap());
    let rules = host.exec(&["iptables-save"]);
    assert!(!rules.contains("ironseed-lab-"), "{rules}");
    assert!(
        rules.contains(":FORWARD DROP"),
        "the host's own policy stays"
    );
    assert_eq!(
        host.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "0",
        "the host's forwarding as it was before the lab"
    );
    assert!(!net::exists(&lab));
    let links = host.exec(&["ip", "-o", "link"]);
    assert!(!links.contains("islh"), "{links}");
}

struct LabGuard {
    lab: String,
    host: String,
}
impl Drop for LabGuard {
    fn drop(&mut self) {
        let (l, h) = (self.lab.clone(), self.host.clone());
        let _ = std::thread::spawn(move || {
            join(&h);
            let _ = net::delete(&l);
        })
        .join();
    }
}

fn join(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        join(&ns);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}
