//! The Redfish driver against a real Redfish service: OpenStack's `sushy-emulator` (PyPI
//! `sushy-tools`, in the venv `tests/run` makes) with its libvirt driver, over TLS with a
//! self-signed certificate made here and an htpasswd (bcrypt) account. The test starts its own
//! `libvirtd` in a private mount namespace (tmpfs over /etc/libvirt, /run/libvirt,
//! /var/lib/libvirt, … so no host network or domain is touched, the socket under /tmp/rf-*)
//! and its own emulator on 127.0.0.1:19500–19529, defines two TCG domains (one that starts,
//! one whose disk is missing so it cannot), and stops both processes by PID.
//!
//! Paths: status, one-time network boot (read back), power on (read back), power off; a wrong
//! password (401); a power-on the emulator cannot carry out; a wrong pinned fingerprint, with
//! the emulator's request log showing that not even one request arrived.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use builder::power::redfish::client::{Client, Trust, sha256_hex};
use builder::power::redfish::{Redfish, Timing};
use builder::power::{PowerDriver, PowerState, PxeOnce};
use common::ci;

const GOOD_UUID: &str = "5f1c0a6e-0000-4000-8000-0000000000a1";
const BROKEN_UUID: &str = "5f1c0a6e-0000-4000-8000-0000000000b2";

fn venv() -> PathBuf {
    std::env::var_os("IRONSEED_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ironseed-tests/sushy-venv"))
}

/// Stops a process (and waits for it) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Destroys rf-good (if running) when dropped.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-c", &self.0, "destroy", "rf-good"])
            .output();
    }
}

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn sh(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} not ready after {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const QEMU_CONF: &str = r#"# the test's own libvirtd: qemu as root, no cgroups/AppArmor/virtlogd
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"#;

const LIBVIRT_SH: &str = r#"set -e
D="$1"
for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "$d"
  mount -t tmpfs rf-libvirt "$d"
done
cp "$D/qemu.conf" /etc/libvirt/qemu.conf
cp "$D/libvirtd.conf" /etc/libvirt/libvirtd.conf
exec /usr/sbin/libvirtd --config /etc/libvirt/libvirtd.conf --pid-file "$D/libvirtd.pid"
"#;

fn domain(name: &str, uuid: &str, extra: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>\
         <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{extra}</devices></domain>"
    )
}

fn requests_logged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("HTTP/1.1\"")
        .count()
}

#[test]
fn sushy_emulator_power_boot_and_the_negative_paths() {
    if !nix::unistd::geteuid().is_root() {
        ci::skip("needs root (a private mount namespace for the test's libvirtd)");
        return;
    }
    let emulator = venv().join("bin/sushy-emulator");
    for (p, why) in [
        (
            Path::new("/usr/sbin/libvirtd"),
            "libvirtd (apt install libvirt-daemon)",
        ),
        (Path::new("/usr/bin/qemu-system-x86_64"), "qemu-system-x86"),
        (Path::new("/usr/bin/virsh"), "virsh (libvirt-clients)"),
        (
            emulator.as_path(),
            "sushy-emulator (tests/run makes its venv)",
        ),
    ] {
        if !p.exists() {
            ci::skip(&format!("{} is missing: {why}", p.display()));
            return;
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("rf-")
        .tempdir_in("/tmp")
        .unwrap();
    let d = tmp.path();
    let sock_dir = d.join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    std::fs::write(d.join("qemu.conf"), QEMU_CONF).unwrap();
    std::fs::write(
        d.join("libvirtd.conf"),
        format!(
            "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
             log_outputs = \"3:file:{}/libvirtd.log\"\n",
            sock_dir.display(),
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("libvirt.sh"), LIBVIRT_SH).unwrap();
    // The domains' taps are made in a network namespace of the test's own.
    let ns = Netns::new(format!("rf-sushy-{}", std::process::id()));
    let _libvirtd = Proc(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "unshare"])
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(d.join("libvirt.sh"))
            .arg(d)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("libvirtd.err")).unwrap())
            .spawn()
            .expect("unshare"),
    );
    let sock = sock_dir.join("libvirt-sock");
    wait_for("libvirtd's socket", 60, || sock.exists());
    let uri = format!("qemu:///system?socket={}", sock.display());

    // A NIC, or sushy refuses a Pxe override ("Target libvirt device Pxe does not exist").
    std::fs::write(
        d.join("good.xml"),
        domain(
            "rf-good",
            GOOD_UUID,
            "<interface type='ethernet'><mac address='52:54:00:19:50:01'/><model type='virtio'/></interface>",
        ),
    )
    .unwrap();
    let missing = d.join("missing.qcow2");
    std::fs::write(
        d.join("broken.xml"),
        domain(
            "rf-broken",
            BROKEN_UUID,
            &format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                missing.display()
            ),
        ),
    )
    .unwrap();
    for x in ["good.xml", "broken.xml"] {
        sh(d, "virsh", &["-c", &uri, "define", x]);
    }
    // Dropped before libvirtd: a qemu outlives its libvirtd.
    let _domain = Domain(uri.clone());

    // TLS material and the account.
    sh(
        d,
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=rf-sushy",
            "-days",
            "2",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    );
    sh(
        d,
        "openssl",
        &[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ],
    );
    let fp = sha256_hex(&std::fs::read(d.join("cert.der")).unwrap());
    let hash = sh(
        d,
        venv().join("bin/python").to_str().unwrap(),
        &[
            "-c",
            "import bcrypt; print(bcrypt.hashpw(b'calvin', bcrypt.gensalt(4)).decode())",
        ],
    );
    std::fs::write(d.join("htpasswd"), format!("admin:{}\n", hash.trim())).unwrap();
    let port = (19500..19530)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 19500..19530");
    std::fs::write(
        d.join("sushy.conf"),
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_SSL_CERT = '{0}/cert.pem'\nSUSHY_EMULATOR_SSL_KEY = '{0}/key.pem'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\nSUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\n",
            d.display()
        ),
    )
    .unwrap();
    let log = d.join("sushy.log");
    let _sushy = Proc(
        Command::new(&emulator)
            .arg("--config")
            .arg(d.join("sushy.conf"))
            .stdout(std::fs::File::create(d.join("sushy.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("sushy-emulator"),
    );
    let address = format!("127.0.0.1:{port}");
    let driver = |password: &str, system: &str, trust: Trust| {
        let c = Client::new(&address, &trust, Duration::from_secs(60)).unwrap();
        let mut r = Redfish::new(c, "rf-node", "admin", password, Some(system.into()), false);
        r.timing = Timing {
            settle: Duration::from_secs(60),
            poll: Duration::from_millis(500),
        };
        r
    };
    wait_for("sushy-emulator", 120, || {
        driver("calvin", GOOD_UUID, Trust::Fingerprint(fp.clone()))
            .status()
            .is_ok()
    });

    // The happy path, with its round trips.
    let mut r = driver("calvin", GOOD_UUID, Trust::Fingerprint(fp.clone()));
    let t = Instant::now();
    assert_eq!(r.status().unwrap(), PowerState::Off);
    assert_eq!(r.pxe_once().unwrap(), PxeOnce::Set);
    let n0 = r.requests;
    r.on().unwrap();
    eprintln!(
        "sushy: status+override {n0} requests, power on {} requests, {:.1} s in all",
        r.requests - n0,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(r.status().unwrap(), PowerState::On);
    let n1 = r.requests;
    r.off().unwrap();
    eprintln!("sushy: power off {} requests", r.requests - n1);
    assert_eq!(r.status().unwrap(), PowerState::Off);
    let xml = sh(d, "virsh", &["-c", &uri, "dumpxml", "rf-good"]);
    // sushy's libvirt driver makes the NIC the first boot device (persistently).
    let nic = &xml[xml.find("<interface").expect("a NIC")..];
    let nic = &nic[..nic.find("</interface>").unwrap()];
    assert!(nic.contains("<boot order='1'/>"), "{xml}");

    // 401: a wrong password.
    let e = driver("wrong", GOOD_UUID, Trust::Fingerprint(fp.clone()))
        .status()
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 401"), "{e}");
    assert!(!e.contains("wrong"), "{e}");

    // A power-on the service cannot carry out (the domain's disk is missing).
    let e = driver("calvin", BROKEN_UUID, Trust::Fingerprint(fp.clone()))
        .on()
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP 500"), "{e}");
    assert!(e.contains("missing.qcow2"), "{e}");

    // A system the BMC does not have: the error lists the ones it has.
    let e = driver(
        "calvin",
        "System.Embedded.1",
        Trust::Fingerprint(fp.clone()),
    )
    .status()
    .unwrap_err()
    .to_string();
    assert!(e.contains(GOOD_UUID) && e.contains(BROKEN_UUID), "{e}");

    // A wrong pin: refused in the handshake; the emulator logs no request at all.
    std::thread::sleep(Duration::from_millis(500));
    let before = requests_logged(&log);
    let e = driver("calvin", GOOD_UUID, Trust::Fingerprint("ab".repeat(32)))
        .status()
        .unwrap_err()
        .to_string();
    assert!(e.contains("not the pinned one"), "{e}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        requests_logged(&log),
        before,
        "a request reached the emulator"
    );
    assert!(
        before > 10,
        "the emulator logs requests (else the check above proves nothing)"
    );
}
