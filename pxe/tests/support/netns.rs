//! Network namespaces (deleted on drop), a thread inside one, and the DHCP tests' lab: two
//! namespaces joined by a veth pair, a tcpdump capture, busybox udhcpc as a client.
//!
//! Names: the DHCP lab's namespaces and veths start with `dhc`, the VM lab's with `vmt`
//! (shared machine convention); the DHCP lab's addresses come from 10.77.0.0/16 only, and
//! never leave the namespaces.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::run;

/// Root and `ip netns` are needed. Under CI their absence is a
/// failure; locally, not being root is a loud skip.
pub fn netns_available(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ip_ok = Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && ip_ok {
        return true;
    }
    let why =
        format!("{test}: needs root and iproute2 `ip netns` (root={root}, ip netns ok={ip_ok})");
    assert!(
        ip_ok || !root,
        "running as root but `ip netns` fails: {why}"
    );
    super::skip(&why)
}

/// A network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Netns {
        // A leftover from a killed run of the same pid would make `add` fail.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.0]).args(args));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth end inside it (and so its peer).
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Server namespace + client namespace joined by a veth pair; the server end
/// has `10.77.<net>.1/24`, the client end no address (a DHCP client's view).
pub struct Lab {
    pub net: u8,
    pub srv: Netns,
    pub cli: Netns,
    pub srv_if: String,
    pub cli_if: String,
}

impl Lab {
    pub fn new(net: u8, client_mac: &str) -> Lab {
        let tag = format!("{}{}", std::process::id() % 100_000, net);
        let srv = Netns::new(format!("dhcs{tag}"));
        let cli = Netns::new(format!("dhcc{tag}"));
        let (srv_if, cli_if) = (format!("dhc{tag}s"), format!("dhc{tag}c"));
        // Create the pair directly inside the namespaces: nothing ever
        // appears on the host's side.
        run(Command::new("ip").args([
            "-n", &srv.0, "link", "add", &srv_if, "type", "veth", "peer", "name", &cli_if, "netns",
            &cli.0,
        ]));
        srv.ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", &srv_if]);
        srv.ip(&["link", "set", &srv_if, "up"]);
        cli.ip(&["link", "set", &cli_if, "address", client_mac]);
        cli.ip(&["link", "set", &cli_if, "up"]);
        Lab {
            net,
            srv,
            cli,
            srv_if,
            cli_if,
        }
    }

    pub fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.net, 1)
    }

    pub fn set_client_mac(&self, mac: &str) {
        self.cli.ip(&["link", "set", &self.cli_if, "down"]);
        self.cli.ip(&["link", "set", &self.cli_if, "address", mac]);
        self.cli.ip(&["link", "set", &self.cli_if, "up"]);
    }
}

/// Run `f` on a thread that has joined namespace `ns` (setns only affects
/// the calling thread, so the test process itself stays where it is).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// One UDP datagram seen on the wire.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A tcpdump capture inside a namespace; stopped and parsed by
/// [`Capture::stop`], killed on drop otherwise.
pub struct Capture {
    child: super::Proc,
    file: PathBuf,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str, dir: &Path) -> Capture {
        let file = dir.join(format!("{iface}.pcap"));
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &ns.0, "tcpdump", "-i", iface, "-n", "-U", "-s", "0",
            ])
            // Without immediate mode packets wait in a kernel block until its
            // timeout, and a SIGINT before then loses them.
            .arg("--immediate-mode")
            // -Z root: the capture file is in a 0700 temp dir.
            .args(["-Z", "root", "-w"])
            .arg(&file)
            .args(["udp and (port 67 or port 68 or port 4011)"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning tcpdump (Debian package tcpdump)");
        // Readiness: tcpdump says "listening on" once the capture is active.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("tcpdump exited before listening");
            }
            if line.contains("listening on") {
                break;
            }
        }
        // Drain the rest in the background so tcpdump never blocks on stderr.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while err.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        Capture {
            child: super::Proc::new("tcpdump", child),
            file,
        }
    }

    /// Stop tcpdump (SIGTERM: it flushes and closes the file) and parse it.
    pub fn stop(mut self) -> Vec<Frame> {
        self.child.stop();
        parse_pcap(&std::fs::read(&self.file).unwrap())
    }
}

/// Classic pcap (little-endian, microseconds), Ethernet → IPv4 → UDP.
pub fn parse_pcap(b: &[u8]) -> Vec<Frame> {
    assert!(
        b.len() >= 24 && b[..4] == [0xd4, 0xc3, 0xb2, 0xa1],
        "not a LE pcap file"
    );
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().unwrap()),
        1,
        "link type must be Ethernet"
    );
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap()) as usize;
        let pkt = &b[off + 16..off + 16 + incl];
        off += 16 + incl;
        if pkt.len() < 14 + 20 + 8 || pkt[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &pkt[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 17 || ip.len() < ihl + 8 {
            continue;
        }
        let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let udp = &ip[ihl..];
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        let payload = udp[8..ulen.min(udp.len())].to_vec();
        out.push(Frame {
            src: SocketAddrV4::new(src_ip, sport),
            dst: SocketAddrV4::new(dst_ip, dport),
            payload,
        });
    }
    out
}

/// A busybox udhcpc run: `hook` prints `EVENT <name>` then its env.
pub struct Udhcpc {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Udhcpc {
    /// Variables of the `bound` event, if any.
    pub fn bound(&self) -> Option<std::collections::BTreeMap<String, String>> {
        let start = self.stdout.find("EVENT bound\n")? + "EVENT bound\n".len();
        let body = &self.stdout[start..];
        let end = body.find("EVENT ").unwrap_or(body.len());
        Some(
            body[..end]
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

pub fn write_hook(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("udhcpc-hook.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\n# udhcpc calls this with the event name; print it and the lease variables.\n\
         echo \"EVENT $1\"\nenv | grep -E '^(ip|siaddr|boot_file|subnet|router|dns|serverid|lease|hostname|opt[0-9]+)=' | sort\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `busybox udhcpc -f -q -n -V PXEClient -x 0x5d:<arch> -s hook` in `ns`.
/// Exits by itself: with a lease (0) or after `tries` discovers (1).
pub fn udhcpc(ns: &Netns, iface: &str, hook: &Path, arch_hex: &str, tries: u32) -> Udhcpc {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "busybox", "udhcpc", "-f", "-q", "-n",
        ])
        .args([
            "-i",
            iface,
            "-V",
            "PXEClient",
            "-x",
            &format!("0x5d:{arch_hex}"),
        ])
        .args(["-t", &tries.to_string(), "-T", "1", "-A", "1", "-s"])
        .arg(hook)
        .stdin(Stdio::null())
        .output()
        .expect("busybox udhcpc (Debian package busybox-static)");
    Udhcpc {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
