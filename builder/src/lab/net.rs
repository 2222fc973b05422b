//! The lab's private network: a network namespace named after the lab folder, a bridge carrying
//! the inventory's subnet (the appliance address and the gateway address, so the nodes' static
//! network configuration is complete), one tap per VM. Nothing is created among the host's
//! interfaces (all links are made inside the namespace), except the veth of `--nat`.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The bridge inside the lab's namespace (names are per namespace: no clash with the host's).
pub const BRIDGE: &str = "islbr0";
/// The namespace's end of the `--nat` veth.
pub const UPLINK: &str = "islup0";

/// `isl` + 6 hex digits of the SHA-256 of the lab folder's absolute path: two labs in two
/// folders never share a namespace, and the same folder always finds its own again.
pub fn netns_name(dir: &Path) -> String {
    let h = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    format!("isl{:02x}{:02x}{:02x}", h[0], h[1], h[2])
}

/// The tap of the `i`-th VM (IFNAMSIZ: 15 characters at most).
pub fn tap_name(i: usize) -> String {
    format!("isltap{i}")
}

/// The host's end of the `--nat` veth and the /30 both ends use: derived from the namespace
/// name, in 100.64.0.0/10 (RFC 6598, never a home LAN's range).
pub fn nat_link(ns: &str) -> (String, Ipv4Addr, Ipv4Addr) {
    let h = Sha256::digest(ns.as_bytes());
    let base = Ipv4Addr::new(100, 64 + (h[0] & 0x3f), h[1], h[2] & 0xfc);
    let b = base.octets();
    (
        format!("islh{}", &ns[3..]),
        Ipv4Addr::new(b[0], b[1], b[2], b[3] + 1),
        Ipv4Addr::new(b[0], b[1], b[2], b[3] + 2),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
    #[error("namespace {ns}: {source}")]
    Setns {
        ns: String,
        #[source]
        source: io::Error,
    },
}

fn run(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetError::Command {
            cmd: args.join(" "),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: args.join(" "),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

pub fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// The namespace, its bridge with `addrs` (address/prefix), and `taps` taps on the bridge.
pub fn create(ns: &str, addrs: &[String], taps: &[String]) -> Result<(), NetError> {
    run(&["ip", "netns", "add", ns])?;
    let ip = |a: &[&str]| {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(a);
        run(&v)
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&[
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    for a in addrs {
        ip(&["addr", "add", a, "dev", BRIDGE])?;
    }
    ip(&["link", "set", BRIDGE, "up"])?;
    for t in taps {
        ip(&["tuntap", "add", "dev", t, "mode", "tap"])?;
        ip(&["link", "set", t, "master", BRIDGE, "up"])?;
    }
    Ok(())
}

/// `--nat`: a veth from the namespace to the host, the namespace routes the lab's subnet out
/// through it with masquerade (iptables), and the host masquerades the /30 out of every other
/// interface. The host must forward for that: `net.ipv4.ip_forward` is set (its value before the
/// first NAT lab is kept in [`NAT_RUN_DIR`] and restored when the last one goes), and two FORWARD
/// rules accept the veth's traffic, inserted first, because a host running Docker has a FORWARD
/// policy of DROP. Every host rule carries the comment `ironseed-lab-NS`, so `delete` removes
/// exactly this lab's. Tested in a namespace standing in for the host (builder/tests/lab_nat.rs).
pub fn add_nat(ns: &str, subnet: &str) -> Result<(), NetError> {
    let (host_if, host_ip, ns_ip) = nat_link(ns);
    run(&[
        "ip", "link", "add", &host_if, "type", "veth", "peer", "name", UPLINK, "netns", ns,
    ])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{host_ip}/30"),
        "dev",
        &host_if,
    ])?;
    run(&["ip", "link", "set", &host_if, "up"])?;
    let ip = |a: &[&str]| {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(a);
        run(&v)
    };
    ip(&["addr", "add", &format!("{ns_ip}/30"), "dev", UPLINK])?;
    ip(&["link", "set", UPLINK, "up"])?;
    ip(&["route", "add", "default", "via", &host_ip.to_string()])?;
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ])?;
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        subnet,
        "-o",
        UPLINK,
        "-j",
        "MASQUERADE",
    ])?;
    forwarding_on(ns)?;
    for (table, op, rule) in host_rules(ns) {
        let mut v = vec!["iptables".to_string(), "-t".into(), table.into(), op.into()];
        v.extend(rule);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        run(&v)?;
    }
    Ok(())
}

/// Where `--nat` labs note that they need the host to forward, and the host's setting before
/// the first of them. Per host network namespace (its inode in the name), so a test's stand-in
/// host never touches the real one's notes.
pub const NAT_RUN_DIR: &str = "/run/ironseed-lab";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn host_netns_id() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .map(|p| {
            p.to_string_lossy()
                .chars()
                .filter(char::is_ascii_digit)
                .collect()
        })
        .unwrap_or_else(|_| "unknown".into())
}

fn io_err(what: &str, e: io::Error) -> NetError {
    NetError::Command {
        cmd: what.to_string(),
        msg: e.to_string(),
    }
}

/// The other NAT labs of this host whose namespaces still exist. A note whose namespace is gone
/// (a lab killed without `down`, or a stand-in host whose namespace inode the kernel reused) is
/// removed, so it neither keeps forwarding on nor hides the real setting.
fn live_other_nat_labs(dir: &Path, host: &str, me: &str) -> usize {
    let prefix = format!("nat-{host}-");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut live = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(ns) = name.strip_prefix(&prefix) else {
            continue;
        };
        if ns == me {
            continue;
        }
        if exists(ns) {
            live += 1;
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    live
}

fn forwarding_on(ns: &str) -> Result<(), NetError> {
    let host = host_netns_id();
    let dir = Path::new(NAT_RUN_DIR);
    std::fs::create_dir_all(dir).map_err(|e| io_err(NAT_RUN_DIR, e))?;
    let before = dir.join(format!("ip_forward-{host}.before"));
    // The first NAT lab notes the host's own setting; later ones find it noted.
    if live_other_nat_labs(dir, &host, ns) == 0 {
        let now = std::fs::read_to_string(IP_FORWARD).map_err(|e| io_err(IP_FORWARD, e))?;
        std::fs::write(&before, now.trim()).map_err(|e| io_err("ip_forward note", e))?;
    }
    std::fs::write(dir.join(format!("nat-{host}-{ns}")), b"").map_err(|e| io_err("nat note", e))?;
    std::fs::write(IP_FORWARD, b"1").map_err(|e| io_err(IP_FORWARD, e))
}

/// This lab no longer needs forwarding; the last NAT lab of this host puts the setting back.
fn forwarding_off(ns: &str) {
    let host = host_netns_id();
    let dir = Path::new(NAT_RUN_DIR);
    if std::fs::remove_file(dir.join(format!("nat-{host}-{ns}"))).is_err() {
        return; // never a NAT lab
    }
    if live_other_nat_labs(dir, &host, ns) > 0 {
        return;
    }
    let before = dir.join(format!("ip_forward-{host}.before"));
    if let Ok(v) = std::fs::read_to_string(&before) {
        if matches!(v.trim(), "0" | "1") {
            let _ = std::fs::write(IP_FORWARD, v.trim());
        }
        let _ = std::fs::remove_file(&before);
    }
}

/// The host's rules of a `--nat` lab: (table, how to add, rule without the op), each tagged with
/// a comment naming the lab's namespace so `down` deletes exactly them.
pub fn host_rules(ns: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let (host_if, host_ip, _) = nat_link(ns);
    let tag = |mut r: Vec<String>| {
        r.extend(
            ["-m", "comment", "--comment"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("ironseed-lab-{ns}")]),
        );
        r
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "nat",
            "-A",
            tag([
                s(&["POSTROUTING", "-s"]),
                vec![format!("{host_ip}/30")],
                s(&["!", "-o", &host_if, "-j", "MASQUERADE"]),
            ]
            .concat()),
        ),
        (
            "filter",
            "-I",
            tag(s(&["FORWARD", "-i", &host_if, "-j", "ACCEPT"])),
        ),
        (
            "filter",
            "-I",
            tag(s(&[
                "FORWARD",
                "-o",
                &host_if,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ])),
        ),
    ]
}

/// Remove the namespace (its bridge and taps go with it) and what `--nat` added on the host.
/// Idempotent.
pub fn delete(ns: &str) -> Result<(), NetError> {
    let (host_if, _, _) = nat_link(ns);
    // `ip link` rather than /sys/class/net: sysfs shows the namespace it was mounted in, not
    // the caller's. Deleting one veth end deletes both; gone already is fine.
    let _ = Command::new("ip")
        .args(["link", "del", &host_if])
        .stderr(std::process::Stdio::null())
        .status();
    // Only what is there: a lab without --nat never had them.
    for (table, _, rule) in host_rules(ns) {
        let _ = Command::new("iptables")
            .args(["-t", table, "-D"])
            .args(&rule)
            .stderr(std::process::Stdio::null())
            .status();
    }
    forwarding_off(ns);
    if exists(ns) {
        run(&["ip", "netns", "del", ns])?;
    }
    Ok(())
}

/// Run `f` on a thread that joined namespace `ns` (setns affects only the calling thread; the
/// process stays where it is).
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    let path = Path::new("/run/netns").join(ns);
    let nsname = ns.to_string();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).map_err(|source| NetError::Setns {
            ns: nsname.clone(),
            source,
        })?;
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            NetError::Setns {
                ns: nsname,
                source: e.into(),
            }
        })?;
        Ok(f())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The namespace the builder's pxe API requests go through (`--lab`): set once per process.
static CLIENT_NETNS: OnceLock<String> = OnceLock::new();

pub fn set_client_netns(ns: &str) {
    let _ = CLIENT_NETNS.set(ns.to_string());
}

/// `images::http::exchange`, from inside the lab's namespace when one is set: pxe's API in a
/// lab is reachable only there (no host interface without `--nat`).
pub fn exchange(
    method: &str,
    url: &str,
    json: Option<&serde_json::Value>,
    bearer: Option<&str>,
) -> Result<(u16, Vec<u8>), images::http::HttpError> {
    match CLIENT_NETNS.get() {
        None => images::http::exchange(method, url, json, bearer),
        Some(ns) => {
            let (m, u, j, b) = (
                method.to_string(),
                url.to_string(),
                json.cloned(),
                bearer.map(str::to_string),
            );
            run_in(ns, move || {
                images::http::exchange(&m, &u, j.as_ref(), b.as_deref())
            })
            .unwrap_or_else(|e| {
                Err(images::http::HttpError::Io {
                    url: url.to_string(),
                    source: io::Error::other(e.to_string()),
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_per_folder_and_fit_ifnamsiz() {
        let a = netns_name(Path::new("/srv/lab-a"));
        assert_eq!(
            a,
            netns_name(Path::new("/srv/lab-a")),
            "same folder, same lab"
        );
        assert_ne!(a, netns_name(Path::new("/srv/lab-b")));
        assert!(a.starts_with("isl") && a.len() == 9, "{a}");
        let (host_if, h, n) = nat_link(&a);
        assert!(host_if.len() <= 15, "{host_if}");
        assert_eq!(h.octets()[0], 100);
        assert!((64..128).contains(&h.octets()[1]), "in 100.64.0.0/10: {h}");
        assert_eq!(u32::from(n), u32::from(h) + 1, "the two ends of one /30");
        assert_eq!(u32::from(h) & 3, 1);
        assert!(tap_name(99).len() <= 15);
    }
}
