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
/// interface. Not exercised by the tests (it changes the host).
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
    run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let mut v = vec![
        "iptables".to_string(),
        "-t".into(),
        "nat".into(),
        "-A".into(),
    ];
    v.extend(host_rule(ns));
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    run(&v)
}

/// The host's masquerade rule of a `--nat` lab (without `-A`/`-D`), tagged with a comment
/// naming the lab's namespace so `down` deletes exactly it.
pub fn host_rule(ns: &str) -> Vec<String> {
    let (host_if, host_ip, _) = nat_link(ns);
    [
        "POSTROUTING".to_string(),
        "-s".into(),
        format!("{host_ip}/30"),
        "!".into(),
        "-o".into(),
        host_if,
        "-j".into(),
        "MASQUERADE".into(),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        format!("ironseed-lab-{ns}"),
    ]
    .to_vec()
}

/// Remove the namespace (its bridge and taps go with it) and what `--nat` added on the host.
/// Idempotent.
pub fn delete(ns: &str) -> Result<(), NetError> {
    let (host_if, _, _) = nat_link(ns);
    if Path::new("/sys/class/net").join(&host_if).exists() {
        run(&["ip", "link", "del", &host_if])?;
    }
    // Only when it is there: a lab without --nat never had it.
    let mut v = vec!["-t".to_string(), "nat".into(), "-D".into()];
    v.extend(host_rule(ns));
    let _ = Command::new("iptables")
        .args(&v)
        .stderr(std::process::Stdio::null())
        .status();
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
