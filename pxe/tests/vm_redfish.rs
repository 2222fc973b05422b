//! End to end with a real Redfish service: `builder provision vm-bios1 --watch` takes a
//! powered-off libvirt domain to a booted node through sushy-emulator (PyPI `sushy-tools`,
//! libvirt driver; the venv of `tests/run`). The test runs its own libvirtd inside the lab's
//! PXE namespace (and a private mount namespace: tmpfs over libvirt's /etc, /run and /var
//! folders, so nothing of the host's libvirt is touched) — the qemu it spawns (TCG, one vCPU,
//! a blank 4 GiB disk) sits on the lab bridge with the node's MAC — and sushy-emulator in the
//! same namespace on 127.0.0.1, over TLS with a certificate made here, pinned in the node's
//! `power: redfish` block. provision sets the one-time network boot, powers the domain on,
//! and waits; the VM network-boots from `pxe serve`, installs, reboots and boots: provision
//! reports it booted. Prints the time from the power-on request to `booted`.
//!
//! Needs what vm_install needs, plus libvirt-daemon, libvirt-clients and the sushy venv.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::vm::*;

const NODE: &str = "vm-bios1";
const NODE_MAC: &str = "52:54:00:88:00:11";
const UUID: &str = "5f1c0a6e-0000-4000-8000-000000000e2e";
const PORT: u16 = 19531;

fn venv() -> PathBuf {
    std::env::var_os("IRONSEED_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ironseed-tests/sushy-venv"))
}

const QEMU_CONF: &str = "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n\
remember_owner = 0\nsecurity_driver = \"none\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n\
stdio_handler = \"file\"\n";

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

fn out(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Destroys the domain before libvirtd goes (a qemu outlives its libvirtd).
struct Domain {
    uri: String,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-c", &self.uri, "destroy", NODE])
            .output();
    }
}

#[test]
fn provision_takes_a_powered_off_redfish_vm_to_booted() {
    let name = "vm_redfish";
    if !capable(name) {
        return;
    }
    for (p, why) in [
        ("/usr/sbin/libvirtd", "libvirt-daemon"),
        ("/usr/bin/virsh", "libvirt-clients"),
        ("/usr/sbin/debootstrap", "debootstrap"),
    ] {
        if !Path::new(p).exists() {
            support::ci::skip(&format!("{name}: missing {p} ({why})"));
            return;
        }
    }
    let emulator = venv().join("bin/sushy-emulator");
    if !emulator.exists() {
        support::ci::skip(&format!(
            "{name}: {} missing (tests/run makes the venv)",
            emulator.display()
        ));
        return;
    }
    let (dir, _guard) = lab_dir(tempfile::Builder::new().prefix("rf-").tempdir().unwrap());
    let artifacts = artifacts();

    // TLS and the account first: the fingerprint goes into the inventory.
    let sh = |prog: &str, args: &[&str]| out(Command::new(prog).args(args).current_dir(&dir));
    sh(
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
            "/CN=rf-bmc",
            "-days",
            "2",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    );
    sh(
        "openssl",
        &[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ],
    );
    let fp = sha256_hex(&std::fs::read(dir.join("cert.der")).unwrap());
    let hash = sh(
        venv().join("bin/python").to_str().unwrap(),
        &[
            "-c",
            "import bcrypt; print(bcrypt.hashpw(b'calvin', bcrypt.gensalt(4)).decode())",
        ],
    );
    std::fs::write(dir.join("htpasswd"), format!("admin:{}\n", hash.trim())).unwrap();

    let inv = inventory_copy(&dir);
    let yaml = std::fs::read_to_string(inv.join("vmlab.yaml")).unwrap();
    let anchor = format!("    mac: {NODE_MAC}\n");
    assert!(yaml.contains(&anchor));
    let yaml = yaml.replacen(
        &anchor,
        &format!(
            "{anchor}    power:\n      redfish:\n        address: 127.0.0.1:{PORT}\n        \
             fingerprint: \"{fp}\"\n        system: {UUID}\n"
        ),
        1,
    );
    std::fs::write(inv.join("vmlab.yaml"), yaml).unwrap();
    let secrets = inv.join("vmlab.secrets.yaml");
    let mut s = std::fs::read_to_string(&secrets).unwrap();
    s.push_str(&format!(
        "power:\n  {NODE}:\n    username: admin\n    password: calvin\n"
    ));
    std::fs::write(&secrets, s).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let bundle = dir.join("bundle");
    let source = |cmd: &mut Command| {
        cmd.arg("-i")
            .arg(inv.join("vmlab.yaml"))
            .arg("--secrets")
            .arg(&secrets);
    };
    let mut render = Command::new(builder_bin());
    render.arg("render").arg("-o").arg(&bundle);
    source(&mut render);
    run(&mut render);

    let lab = Lab::new(0);
    let ns = lab.pxe.0.clone();
    let _router = start_router(&lab, &dir);
    let art = artifacts.display().to_string();
    let (_pxe, _log) = start_pxe_with(&lab, &bundle, &dir, "snponly.efi", &["--artifacts", &art]);

    // libvirtd in the lab namespace.
    let sock_dir = dir.join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    std::fs::write(dir.join("qemu.conf"), QEMU_CONF).unwrap();
    std::fs::write(
        dir.join("libvirtd.conf"),
        format!(
            "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
             log_outputs = \"3:file:{}/libvirtd.log\"\n",
            sock_dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("libvirt.sh"), LIBVIRT_SH).unwrap();
    let mut libvirtd = support::Proc::new(
        "libvirtd",
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .arg("sh")
            .arg(dir.join("libvirt.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let sock = sock_dir.join("libvirt-sock");
    let until = Instant::now() + DEADLINE;
    while !sock.exists() {
        assert!(libvirtd.alive(), "libvirtd exited (see libvirtd.err)");
        assert!(Instant::now() < until, "no libvirtd socket");
        std::thread::sleep(Duration::from_millis(200));
    }
    let uri = format!("qemu:///system?socket={}", sock.display());
    let disk = dir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let serial = dir.join("serial.log");
    std::fs::write(
        dir.join("domain.xml"),
        format!(
            "<domain type='qemu'><name>{NODE}</name><uuid>{UUID}</uuid>\
             <memory unit='MiB'>1024</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os>\
             <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/><boot order='2'/></disk>\
             <interface type='bridge'><source bridge='vmtbr0'/><mac address='{NODE_MAC}'/>\
             <model type='virtio'/></interface>\
             <serial type='file'><source path='{}'/><target port='0'/></serial>\
             </devices></domain>",
            disk.display(),
            serial.display()
        ),
    )
    .unwrap();
    out(Command::new("virsh")
        .args(["-c", &uri, "define"])
        .arg(dir.join("domain.xml")));
    let _domain = Domain { uri: uri.clone() };

    // sushy-emulator in the same namespace, on its loopback.
    std::fs::write(
        dir.join("sushy.conf"),
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {PORT}\n\
             SUSHY_EMULATOR_SSL_CERT = '{0}/cert.pem'\nSUSHY_EMULATOR_SSL_KEY = '{0}/key.pem'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{0}/htpasswd'\nSUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\n",
            dir.display()
        ),
    )
    .unwrap();
    let sushy_log = dir.join("sushy.log");
    let mut sushy = support::Proc::new(
        "sushy-emulator",
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&emulator)
            .arg("--config")
            .arg(dir.join("sushy.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&sushy_log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_file(
        &sushy_log,
        "sushy-emulator start",
        |t| t.contains("Running on"),
        || sushy.alive(),
    );
    // Lo is down in a fresh namespace; the lab brings up only the bridge.
    let _ = Command::new("ip")
        .args(["-n", &ns, "link", "set", "lo", "up"])
        .output();

    let builder = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns])
            .arg(builder_bin())
            .args(args)
            .args(["--server", &format!("http://{SERVER}:{HTTP_PORT}")])
            .arg("--api-token-file")
            .arg(dir.join("api-token"));
        source(&mut c);
        c.env_remove("IRONSEED_INVENTORY")
            .env_remove("IRONSEED_SECRETS")
            .env_remove("IRONSEED_PXE");
        c
    };
    let status = out(&mut builder(&["power", NODE, "status"]));
    assert_eq!(status.trim(), format!("{NODE}: off"));

    let t = Instant::now();
    let prov_out = dir.join("provision.out");
    let mut prov = support::Proc::new(
        "builder provision",
        builder(&["provision", NODE, "--watch", "--timeout", "60"])
            .stdout(std::fs::File::create(&prov_out).unwrap())
            .stderr(std::fs::File::create(dir.join("provision.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_file(
        &serial,
        "the installer",
        |t| t.contains(&format!("ironseed: installing {NODE}")),
        || prov.alive(),
    );
    eprintln!(
        "timing: power-on to installer {:>6.1} s",
        t.elapsed().as_secs_f64()
    );
    let until = Instant::now() + 4 * DEADLINE;
    let code = loop {
        if let Some(s) = prov.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "provision still running; console:\n{}",
            clean(&std::fs::read(&serial).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let took = t.elapsed();
    let text = std::fs::read_to_string(&prov_out).unwrap();
    let err = std::fs::read_to_string(dir.join("provision.err")).unwrap();
    assert!(code.success(), "{text}\n{err}");
    eprintln!(
        "timing: redfish provision, powered-off to booted {:>6.1} s",
        took.as_secs_f64()
    );
    assert!(
        text.contains(&format!("{NODE}: power on (redfish)")),
        "{text}"
    );
    assert!(text.contains("booted after"), "{text}");
    let n = nodes(&ns)
        .into_iter()
        .find(|n| n["hostname"] == NODE)
        .unwrap();
    assert_eq!(n["state"], "booted", "{n:#}");
    let tl = n["timeline"].to_string();
    assert!(tl.contains("pxe-once: ok (by builder provision)"), "{tl}");
    assert!(tl.contains("on: ok (by builder provision)"), "{tl}");
    assert_eq!(
        out(&mut builder(&["power", NODE, "status"])).trim(),
        format!("{NODE}: on")
    );
    // sushy's libvirt driver keeps every override (NIC first, persistently): say so.
    let xml = out(Command::new("virsh").args(["-c", &uri, "dumpxml", NODE]));
    eprintln!(
        "after provision: {}",
        xml.lines()
            .filter(|l| l.contains("boot order"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(sushy);
}
