//! The VM lab shared by the real-firmware tests (vm_pxe.rs, vm_install.rs): two network
//! namespaces (the PXE segment with a bridge and taps, a "home router" running dnsmasq for
//! addresses and IPv6 RAs), `pxe serve` on the bridge, and qemu VMs under TCG whose serial
//! consoles are waited on for markers with generous deadlines (never fixed sleeps).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::netns::{Netns, in_netns};
pub use super::{Proc, builder_bin, run};
use super::{ensure_service_user, exchange};

pub const SERVER: &str = "10.88.0.1";
pub const HTTP_PORT: u16 = 8088;
/// Markers and exits are waited for this long while the guest is quiet: a guard against a hung
/// test, not a performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(600);
/// A guest that is still writing to its console past DEADLINE is slow, not hung: TCG on two
/// cores shared by two VM test binaries (tests/run's pass 2) stretches a first boot from 4 to
/// 9 minutes. It gets more time as long as its last output is at most STALL old, up to
/// HARD_DEADLINE in all.
pub const STALL: Duration = Duration::from_secs(240);
pub const HARD_DEADLINE: Duration = Duration::from_secs(1800);

/// When a wait started and when the watched output last changed; `expired` is the one rule
/// every wait applies.
pub struct Patience {
    start: Instant,
    last_change: Instant,
    seen: usize,
}

impl Patience {
    pub fn new() -> Self {
        let now = Instant::now();
        Patience {
            start: now,
            last_change: now,
            seen: 0,
        }
    }

    /// Note how much output there is now (the serial file's length).
    pub fn saw(&mut self, len: usize) {
        if len != self.seen {
            self.seen = len;
            self.last_change = Instant::now();
        }
    }

    /// Some(why) once the wait should give up.
    pub fn expired(&self) -> Option<String> {
        expired_at(self.start.elapsed(), self.last_change.elapsed())
    }
}

impl Default for Patience {
    fn default() -> Self {
        Self::new()
    }
}

/// The rule itself, over durations, so it can be tested without waiting.
pub fn expired_at(waited: Duration, quiet: Duration) -> Option<String> {
    if waited >= HARD_DEADLINE {
        Some(format!(
            "after {HARD_DEADLINE:?} (the cap even for a guest that keeps printing)"
        ))
    } else if waited >= DEADLINE && quiet >= STALL {
        Some(format!(
            "after {:?} ({:?} without new console output)",
            Duration::from_secs(waited.as_secs()),
            Duration::from_secs(quiet.as_secs())
        ))
    } else {
        None
    }
}

/// Set by the first failed wait, so waits on other threads give up at once.
pub static FAILED: AtomicBool = AtomicBool::new(false);

pub const KEEP_HINT: &str =
    "(IRONSEED_VM_KEEP=1 keeps every serial console and the pxe/dnsmasq logs for a post-mortem)";

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF with Microsoft's keys enrolled and Secure Boot enforced (needs SMM), and its NVRAM
/// template: what a machine shipped with Secure Boot on looks like.
pub const OVMF_CODE_MS: &str = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

/// Root, `ip netns`, qemu, the firmware files and dnsmasq. Missing → loud skip, or a failure
/// under CI.
pub fn capable(test: &str) -> bool {
    if super::vm_deferred(test) {
        return false;
    }
    let ok = |prog: &str, arg: &str| {
        Command::new(prog)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    if !ok("ip", "-V") {
        missing.push("iproute2".into());
    }
    if !ok("qemu-system-x86_64", "--version") {
        missing.push("qemu-system-x86_64 (qemu-system-x86)".into());
    }
    if !ok("dnsmasq", "--version") {
        missing.push("dnsmasq (dnsmasq-base)".into());
    }
    // qemu's NIC option ROM for virtio-net is iPXE; Debian ships it in ipxe-qemu.
    let files = [
        ("/usr/lib/ipxe/qemu/pxe-virtio.rom", "ipxe-qemu"),
        ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
        ("/usr/lib/ipxe/snponly.efi", "ipxe"),
        (OVMF_CODE, "ovmf"),
        (OVMF_VARS, "ovmf"),
    ];
    for (f, pkg) in files {
        if !Path::new(f).exists() {
            missing.push(format!("{f} ({pkg})"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    super::skip(&format!("{test}: missing {}", missing.join(", ")))
}

/// Whether the UEFI VMs run: always, unless `IRONSEED_VM_UEFI=0` leaves them out of a quicker
/// local run. That is a skip like any other: SKIPPED, and a failure under CI.
pub fn uefi_wanted(test: &str) -> bool {
    std::env::var("IRONSEED_VM_UEFI").map_or(true, |v| v != "0")
        || super::skip(&format!(
            "{test}: the UEFI VMs are left out (IRONSEED_VM_UEFI=0)"
        ))
}

/// The two namespaces of the module docs. Field order is drop order: the namespaces go last,
/// after the processes living in them (held elsewhere) are gone.
pub struct Lab {
    pub pxe: Netns,
    pub router: Netns,
}

impl Lab {
    pub fn new(taps: usize) -> Lab {
        let tag = std::process::id() % 100_000;
        let pxe = Netns::new(format!("vmtpxe{tag}"));
        let router = Netns::new(format!("vmtrtr{tag}"));
        pxe.ip(&[
            "link",
            "add",
            "vmtbr0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        pxe.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "vmtbr0"]);
        // nodad: usable at once; iPXE and EDK2 never need it, it only makes the segment
        // dual-stack like a real LAN.
        pxe.ip(&["addr", "add", "fd88::1/64", "dev", "vmtbr0", "nodad"]);
        pxe.ip(&["link", "set", "vmtbr0", "up"]);
        for i in 0..taps {
            let tap = format!("vmttap{i}");
            // Created inside the namespace; qemu opens it from there (`ip netns exec`).
            pxe.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            pxe.ip(&["link", "set", &tap, "master", "vmtbr0", "up"]);
        }
        // The router's leg: both veth ends are created inside the namespaces, so nothing
        // ever appears among the host's interfaces.
        run(Command::new("ip").args([
            "-n", &pxe.0, "link", "add", "vmtrb0", "type", "veth", "peer", "name", "vmtrr0",
            "netns", &router.0,
        ]));
        pxe.ip(&["link", "set", "vmtrb0", "master", "vmtbr0", "up"]);
        router.ip(&["addr", "add", "10.88.0.254/24", "dev", "vmtrr0"]);
        router.ip(&["addr", "add", "fd88::fe/64", "dev", "vmtrr0", "nodad"]);
        router.ip(&["link", "set", "vmtrr0", "up"]);
        Lab { pxe, router }
    }
}

/// Poll `file` until `pred` holds for its content; `alive` is checked between polls so a
/// process that died fails fast with its output.
pub fn wait_file(
    file: &Path,
    what: &str,
    mut pred: impl FnMut(&str) -> bool,
    mut alive: impl FnMut() -> bool,
) {
    let mut patience = Patience::new();
    loop {
        let raw = std::fs::read(file).unwrap_or_default();
        patience.saw(raw.len());
        let text = clean(&raw);
        if pred(&text) {
            return;
        }
        // A VM waited for on another thread already failed: stop now rather than letting
        // this one run into its own deadline (the first failure is the one reported).
        assert!(
            !FAILED.load(Ordering::SeqCst),
            "gave up waiting for {what}: another wait of this phase failed"
        );
        let fail = |msg: String| -> ! {
            FAILED.store(true, Ordering::SeqCst);
            panic!("{msg}")
        };
        let tail = || {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        if !alive() {
            fail(format!(
                "exited before {what}; last output of {}:\n{}\n{KEEP_HINT}",
                file.display(),
                tail()
            ));
        }
        if let Some(when) = patience.expired() {
            fail(format!(
                "no {what} {when}; last output of {}:\n{}\n{KEEP_HINT}",
                file.display(),
                tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Serial output as text: firmware writes ANSI escapes and CRs (EDK2 redraws lines), and
/// under TCG lines interleave, so markers are matched anywhere in the cleaned text.
pub fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte (0x40..=0x7e); charset selection: ESC ( B;
                // anything else: ESC + one char.
                match it.next() {
                    Some('[') => {
                        for d in it.by_ref() {
                            if ('\x40'..='\x7e').contains(&d) {
                                break;
                            }
                        }
                    }
                    Some('(' | ')') => {
                        it.next();
                    }
                    _ => {}
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

/// dnsmasq as the LAN's DHCP server: addresses only (no boot options, so every PXE answer
/// comes from `pxe serve`), `--no-ping` (its default ping check costs 3 s per client) and
/// router advertisements for fd88::/64.
pub fn start_router(lab: &Lab, dir: &Path) -> Proc {
    start_router_with(lab, dir, &[])
}

/// [`start_router`] with more dnsmasq arguments (e.g. `--dhcp-host=MAC,ignore`: machines that
/// `pxe serve --dhcp full` addresses instead).
pub fn start_router_with(lab: &Lab, dir: &Path, extra: &[&str]) -> Proc {
    let log = dir.join("dnsmasq.log");
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.router.0, "dnsmasq", "--no-daemon"])
        .args([
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=vmtrr0",
            "--bind-interfaces",
            "--except-interface=lo",
            "--dhcp-range=10.88.0.100,10.88.0.199,255.255.255.0,1h",
            "--dhcp-authoritative",
            "--no-ping",
            "--enable-ra",
            "--dhcp-range=fd88::,ra-only,64",
            // Stay root: the lease file is in the test's temp dir.
            "--user=root",
            "--log-dhcp",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--log-facility={}", log.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("dnsmasq.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("dnsmasq.err")).unwrap())
        .spawn()
        .expect("spawning dnsmasq");
    let mut p = Proc::new("dnsmasq", child);
    // Ready once it has announced its DHCP range (after binding).
    wait_file(
        &log,
        "dnsmasq start",
        |t| t.contains("DHCP, IP range"),
        || p.alive(),
    );
    p
}

pub fn render_bundle(out: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    run(Command::new(builder_bin())
        .arg("render")
        .arg("-i")
        .arg(fixtures.join("vmlab.yaml"))
        .arg("-o")
        .arg(out)
        .arg("--secrets")
        .arg(fixtures.join("vmlab.secrets.yaml")));
}

/// The operator API token of the lab's `pxe serve` (a private namespace; written 0600 and
/// passed with `--api-token-file`).
pub const API_TOKEN: &str = "4c61622d6f6e6c792d746f6b656e2d6f662d7468652d766d2d6c61622d313233";

/// `pxe serve` in the namespace, ready once it printed its READY line.
pub fn start_pxe(lab: &Lab, bundle: &Path, dir: &Path, efi_file: &str) -> (Proc, PathBuf) {
    start_pxe_with(lab, bundle, dir, efi_file, &[])
}

/// `start_pxe` with more `pxe serve` arguments (e.g. `--artifacts DIR`).
pub fn start_pxe_with(
    lab: &Lab,
    bundle: &Path,
    dir: &Path,
    efi_file: &str,
    extra: &[&str],
) -> (Proc, PathBuf) {
    let log = dir.join("pxe.log");
    ensure_service_user();
    let token_file = dir.join("api-token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token_file)
            .unwrap();
        writeln!(f, "{API_TOKEN}").unwrap();
    }
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pxe.0,
            env!("CARGO_BIN_EXE_pxe"),
            "serve",
        ])
        .arg("--bundle")
        .arg(bundle)
        .args(["--interface", "vmtbr0"])
        // Proxy beside the lab's router, unless the test chose (`extra`).
        .args(if extra.contains(&"--dhcp") {
            &[][..]
        } else {
            &["--dhcp", "proxy"][..]
        })
        .args(["--http-port", &HTTP_PORT.to_string(), "--tftp-port", "69"])
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--ipxe-dir", IPXE_DIR, "--efi-file", efi_file])
        .arg("--api-token-file")
        .arg(&token_file)
        // A first deployment: the lab's nodes start armed.
        .arg("--arm-new")
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning pxe serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let p = Proc::new("pxe", child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let ready: Value = match line.strip_prefix("READY ") {
        Some(j) => serde_json::from_str(j).unwrap(),
        None => panic!(
            "pxe serve did not become ready (got {line:?}); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    assert_eq!(ready["server_ip"], SERVER, "{ready}");
    assert_eq!(ready["http_port"], HTTP_PORT, "{ready}");
    // Keep draining stdout so pxe never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    (p, log)
}

/// One request to the server, from a thread inside the namespace, as the operator (with the
/// API token; the node-facing routes ignore it).
pub fn http(ns: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let body = body.unwrap_or("").to_owned();
    let (method, path) = (method.to_owned(), path.to_owned());
    in_netns(ns, move || {
        let addr: SocketAddrV4 = format!("{SERVER}:{HTTP_PORT}").parse().unwrap();
        let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(30)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        exchange(
            s,
            SERVER,
            &method,
            &path,
            &body,
            &[&format!("Authorization: Bearer {API_TOKEN}")],
        )
    })
}

/// Every node's record from `GET /api/v1/nodes`.
pub fn nodes(ns: &str) -> Vec<Value> {
    let (st, body) = http(ns, "GET", "/api/v1/nodes", None);
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["nodes"].as_array().unwrap().clone()
}

/// Every node's state from `GET /api/v1/nodes`.
pub fn states(ns: &str) -> std::collections::BTreeMap<String, String> {
    nodes(ns)
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn tftp_finished(ns: &str) -> u64 {
    let (st, body) = http(ns, "GET", "/metrics", None);
    assert_eq!(st, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("ironseed_tftp_transfers_total{outcome=\"finished\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no finished TFTP counter in /metrics:\n{body}"))
}

/// The live install secret of the node behind `mac`, from its boot script (as iPXE gets it;
/// the node must be armed or mid-install).
pub fn install_secret(ns: &str, mac: &str) -> String {
    let (st, script) = http(ns, "GET", &format!("/boot/{mac}.ipxe"), None);
    assert_eq!(st, 200, "{script}");
    script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ironseed.plan="))
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or_else(|| panic!("no install secret in {script}"))
        .to_string()
}

/// Post an installer event with the node's install secret, as the installer would.
pub fn post_event(ns: &str, node: &str, secret: &str, event: &str) {
    let (st, body) = http(
        ns,
        "POST",
        &format!("/install/{node}/{secret}/events"),
        Some(event),
    );
    assert_eq!(st, 200, "event {event} for {node}: {body}");
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// The qemu machine for `fw`, always TCG (/dev/kvm on this kind of machine is a broken nested
/// layer: SeaBIOS 15× slower, OVMF dies with "KVM internal error"; docs/reference.md "qemu: TCG,
/// not KVM"). UEFI: OVMF's
/// code read-only and `vars`, the machine's own NVRAM copy.
pub fn machine_args(cmd: &mut Command, fw: Firmware, vars: &Path) {
    match fw {
        Firmware::Bios => {
            cmd.args(["-machine", "pc,accel=tcg"]);
        }
        Firmware::Uefi => {
            cmd.args(["-machine", "q35,accel=tcg"])
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
    }
}

/// The qemu machine of a retail UEFI machine with Secure Boot on: OVMF's `.ms` build
/// ([`OVMF_CODE_MS`], read-only) and `vars`, the machine's own copy of [`OVMF_VARS_MS`]
/// (Microsoft's KEK and db enrolled, Secure Boot enforced), kept across its power cycles. TCG,
/// as [`machine_args`]. The Secure Boot build requires SMM, and its variable store must be
/// writable only from SMM (otherwise the OS could rewrite db): q35 with `smm=on` and a "secure"
/// flash; without them it does not start.
///
/// Power-cycle such a machine (`-no-reboot`, then a new qemu on the same disk and `vars`)
/// rather than letting it reboot: a warm reset of this firmware under TCG hung after BdsDxe,
/// before shim printed anything (vm_offline.rs, vm_secure_boot.rs).
pub fn secure_boot_machine_args(cmd: &mut Command, vars: &Path) {
    cmd.args(["-machine", "q35,accel=tcg,smm=on"])
        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE_MS}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
}

/// One VM: fresh blank disk, NIC first (bootindex 1), disk second, serial to a file.
pub struct Vm {
    pub name: String,
    pub serial: PathBuf,
    pub disk: PathBuf,
    pub started: Instant,
    pub proc: Proc,
}

/// How a VM's install disk is attached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DiskBus {
    /// virtio-blk: /dev/vda, no model string.
    VirtioBlk,
    /// virtio-scsi with a scsi-hd: /dev/sda, model "QEMU HARDDISK" (Proxmox's default).
    Scsi,
}

#[derive(Clone, Debug)]
pub struct VmOpts {
    pub fw: Firmware,
    pub tap: String,
    pub mac: String,
    pub bus: DiskBus,
    pub disk_size: u64,
    /// The install disk's place in the firmware's boot order (the NIC is 1). SeaBIOS makes the
    /// lowest-numbered disk BIOS drive 0x80, the one local boot (`sanboot 0x80`, "Booting from
    /// Hard Disk") tries.
    pub disk_bootindex: u32,
    /// Keep an existing disk file instead of making a fresh blank one.
    pub reuse_disk: bool,
    pub mem_mb: u32,
    pub smp: u32,
    /// End qemu at the guest's first reboot instead of rebooting it.
    pub no_reboot: bool,
    /// More disks, after the install disk (vm_discover: a machine with several).
    pub extra_disks: Vec<ExtraDisk>,
    /// UEFI only: OVMF with Secure Boot enforced ([`OVMF_CODE_MS`]).
    pub secure_boot: bool,
    /// A hardware-shaped machine (`builder::vmshape`): its NIC, memory and disks replace
    /// `bus`, `disk_size`, `mem_mb` and `extra_disks`. Disk files the test has not made are
    /// created blank (sparse); `reuse_disk` does not apply.
    pub shape: Option<builder::vmshape::Shape>,
}

/// A further disk: an existing raw `file` (the test makes it, with known content), attached
/// with `device` (a qemu `-device` value; `,drive=<id>` is appended), after the `controller`
/// device it sits on, if any (e.g. `megasas-gen2,id=raid` for `scsi-hd,bus=raid.0`).
#[derive(Clone, Debug)]
pub struct ExtraDisk {
    pub file: PathBuf,
    pub controller: Option<String>,
    pub device: String,
}

impl VmOpts {
    pub fn new(fw: Firmware, tap: &str, mac: &str) -> VmOpts {
        VmOpts {
            fw,
            tap: tap.into(),
            mac: mac.into(),
            bus: DiskBus::VirtioBlk,
            disk_size: 64 << 20,
            disk_bootindex: 2,
            reuse_disk: false,
            mem_mb: 256,
            smp: 1,
            no_reboot: true,
            extra_disks: Vec::new(),
            secure_boot: false,
            shape: None,
        }
    }
}

impl Vm {
    pub fn start(lab: &Lab, dir: &Path, name: &str, fw: Firmware, tap: &str, mac: &str) -> Vm {
        Vm::start_with(lab, dir, name, &VmOpts::new(fw, tap, mac))
    }

    pub fn start_with(lab: &Lab, dir: &Path, name: &str, o: &VmOpts) -> Vm {
        if let Some(shape) = &o.shape {
            return Vm::start_shaped(lab, dir, name, o, shape);
        }
        let (fw, tap, mac) = (o.fw, o.tap.as_str(), o.mac.as_str());
        let disk = dir.join(format!("{}.img", o.mac.replace(':', "")));
        if !o.reuse_disk {
            // Blank raw disk: the "no OS yet" machine, and the local-boot target.
            let _ = std::fs::remove_file(&disk);
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(o.disk_size)
                .unwrap();
        }
        let serial = dir.join(format!("{name}.serial"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.pxe.0, "qemu-system-x86_64"]);
        let mut nic = format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1");
        match fw {
            Firmware::Bios => machine_args(&mut cmd, fw, Path::new("")),
            Firmware::Uefi if o.secure_boot => {
                // A copy of the enrolled NVRAM: kept across restarts of the same machine, as
                // a real one keeps its settings.
                let vars = dir.join(format!("{}.vars.fd", o.mac.replace(':', "")));
                if !vars.exists() {
                    std::fs::copy(OVMF_VARS_MS, &vars).unwrap();
                }
                secure_boot_machine_args(&mut cmd, &vars);
                cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"])
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
                nic.push_str(",romfile=");
            }
            Firmware::Uefi => {
                let vars = dir.join(format!("{name}.vars.fd"));
                std::fs::copy(OVMF_VARS, &vars).unwrap();
                machine_args(&mut cmd, fw, &vars);
                // No IPv6 PXE/HTTP boot entries: each would wait for a DHCPv6 server
                // that this LAN does not have.
                cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"])
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
                // No option ROM: OVMF's own EDK2 PXE client boots instead of iPXE, so the
                // firmware sends arch 7 without user class iPXE and fetches the EFI boot file
                // over TFTP, the path real UEFI machines take.
                nic.push_str(",romfile=");
            }
        }
        cmd.arg("-m")
            .arg(o.mem_mb.to_string())
            .arg("-smp")
            .arg(o.smp.to_string())
            .args(["-nographic", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        if o.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .args(["-device", &nic])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=d0,cache=unsafe",
                disk.display()
            ))
            .args(match o.bus {
                DiskBus::VirtioBlk => vec![
                    "-device".to_string(),
                    format!("virtio-blk-pci,drive=d0,bootindex={}", o.disk_bootindex),
                ],
                DiskBus::Scsi => vec![
                    "-device".to_string(),
                    "virtio-scsi-pci,id=scsi0".to_string(),
                    "-device".to_string(),
                    format!(
                        "scsi-hd,bus=scsi0.0,drive=d0,bootindex={}",
                        o.disk_bootindex
                    ),
                ],
            })
            .stdin(Stdio::null());
        for (i, x) in o.extra_disks.iter().enumerate() {
            if let Some(c) = &x.controller {
                cmd.args(["-device", c]);
            }
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=x{i},cache=unsafe",
                    x.file.display()
                ))
                .arg("-device")
                .arg(format!("{},drive=x{i}", x.device));
        }
        Vm::spawn(cmd, dir, name, serial, disk)
    }

    /// A VM shaped like a hardware profile: firmware from the shape, the rest (NIC with or
    /// without qemu's option ROM, memory, disks) from `Shape::qemu_args`: a `snponly.efi`
    /// profile's NIC has no ROM, so OVMF's own network driver and PXE client boot it.
    fn start_shaped(
        lab: &Lab,
        dir: &Path,
        name: &str,
        o: &VmOpts,
        shape: &builder::vmshape::Shape,
    ) -> Vm {
        for d in &shape.disks {
            let f = dir.join(&d.file);
            if !f.exists() {
                std::fs::File::create(&f).unwrap().set_len(d.size).unwrap();
            }
        }
        let disk = dir.join(&shape.disks[0].file);
        let serial = dir.join(format!("{name}.serial"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.pxe.0, "qemu-system-x86_64"]);
        match shape.firmware {
            // q35 for BIOS too: the shape's SATA disks sit on its AHCI (builder::vmshape).
            images::bundle::Firmware::Bios => {
                cmd.args(["-machine", "q35,accel=tcg"]);
            }
            images::bundle::Firmware::Uefi => {
                let vars = dir.join(format!("{name}.vars.fd"));
                std::fs::copy(OVMF_VARS, &vars).unwrap();
                machine_args(&mut cmd, Firmware::Uefi, &vars);
                cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"])
                    .args(["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
            }
        }
        cmd.arg("-smp")
            .arg(o.smp.to_string())
            .args(["-nographic", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        if o.no_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                o.tap
            ))
            .args(shape.qemu_args(dir, "n0"))
            .stdin(Stdio::null());
        Vm::spawn(cmd, dir, name, serial, disk)
    }

    /// Start the assembled qemu command line, its stdout/stderr in `dir/NAME.{out,err}`.
    fn spawn(mut cmd: Command, dir: &Path, name: &str, serial: PathBuf, disk: PathBuf) -> Vm {
        cmd.stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
        let child = cmd.spawn().expect("spawning qemu-system-x86_64");
        Vm {
            name: name.to_owned(),
            serial,
            disk,
            started: Instant::now(),
            proc: Proc::new("qemu", child),
        }
    }

    /// Wait for `marker` on the serial console; print when it came.
    pub fn wait(&mut self, marker: &str) {
        let proc = &mut self.proc;
        wait_file(
            &self.serial,
            &format!("{}: serial marker {marker:?}", self.name),
            |t| t.contains(marker),
            || proc.alive(),
        );
        eprintln!(
            "timing: {:<14} {:>6.1} s  {marker}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Wait for `marker` to appear after the first `anchor` (both on the serial console).
    pub fn wait_after(&mut self, anchor: &str, marker: &str) {
        let proc = &mut self.proc;
        wait_file(
            &self.serial,
            &format!("{}: serial marker {marker:?} after {anchor:?}", self.name),
            |t| t.find(anchor).is_some_and(|i| t[i..].contains(marker)),
            || proc.alive(),
        );
        eprintln!(
            "timing: {:<14} {:>6.1} s  {marker}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Wait for qemu to end by itself: the guest powered off, or rebooted under `no_reboot`.
    pub fn wait_exit(&mut self) {
        let mut patience = Patience::new();
        while self.proc.alive() {
            patience.saw(std::fs::metadata(&self.serial).map_or(0, |m| m.len() as usize));
            if let Some(when) = patience.expired() {
                FAILED.store(true, Ordering::SeqCst);
                let text = self.serial_text();
                let lines: Vec<&str> = text.lines().collect();
                panic!(
                    "{}: qemu still running {when}; last output:\n{}\n{KEEP_HINT}",
                    self.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "timing: {:<14} {:>6.1} s  qemu exited",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    pub fn serial_text(&self) -> String {
        clean(&std::fs::read(&self.serial).unwrap_or_default())
    }
}

/// The VMs of one phase run side by side, each waited for on its own thread. Even on 2 cores
/// this pays: much of a network boot is firmware waiting (EDK2 collects DHCP offers for ~4 s,
/// iPXE pauses ~2 s at "Press Ctrl-B"), not CPU.
pub fn parallel<T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    let results: Vec<std::thread::Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(j)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut ok = Vec::new();
    let mut first: Option<Box<dyn std::any::Any + Send>> = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(p) => {
                // Report the real failure, not a wait that gave up because of it.
                let gave_up = p
                    .downcast_ref::<String>()
                    .is_some_and(|m| m.starts_with("gave up"));
                if first.is_none() || !gave_up {
                    first = Some(p);
                }
            }
        }
    }
    if let Some(p) = first {
        std::panic::resume_unwind(p);
    }
    ok
}

// ---- The golden image, the installer environment and the first-boot summary, shared by the
// ---- install tests (vm_install.rs over the network, vm_offline.rs from an installer stick).

pub fn cache_dir() -> PathBuf {
    std::env::var_os("IRONSEED_E2E_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ironseed-e2e"))
}

pub fn sha256_hex(b: &[u8]) -> String {
    images::bundle::files::digest(b)
}

/// The static installer: release (sha256 and zstd under TCG are several times faster than a
/// debug build) and statically linked for the initramfs, in this workspace's target folder.
pub fn static_installer() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "images",
            "--bin",
            "installer",
        ])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    target.join("x86_64-unknown-linux-gnu/release/installer")
}

/// Golden image and installer environment in the cache; returns the artifacts folder.
pub fn artifacts() -> PathBuf {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    // tests/run runs two VM test binaries at once: one builds (or checks) the cache while the
    // other waits, instead of both debootstrapping into the same work folder.
    let lock = std::fs::File::create(cache.join(".build-lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the e2e cache");
    let t = Instant::now();
    run(Command::new(builder_bin())
        .args(["images", "build", "debian-12", "--artifacts"])
        .arg(&cache)
        .arg("--work")
        .arg(cache.join("work")));
    eprintln!("timing: golden image {:>6.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    run(Command::new(builder_bin())
        .args(["images", "installer", "--artifacts"])
        .arg(&cache)
        .arg("--installer-bin")
        .arg(static_installer())
        .arg("--work")
        .arg(cache.join("work-installer")));
    eprintln!("timing: installer env {:>6.1} s", t.elapsed().as_secs_f64());
    // pxe drops to the `ironseed` account: everything it serves must be world-readable.
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&cache));
    cache
}

/// The first-boot summary line on the console: `key=value` fields.
pub fn summary(serial: &str, node: &str) -> std::collections::BTreeMap<String, String> {
    let line = serial
        .lines()
        .find(|l| l.contains(&format!("ironseed-firstboot: node={node} ")))
        .unwrap_or_else(|| panic!("no first-boot summary for {node}"));
    let from = line.find("node=").unwrap();
    let mut out = std::collections::BTreeMap::new();
    let mut key = String::new();
    for w in line[from..].split(' ') {
        match w.split_once('=') {
            Some((k, v)) => {
                key = k.to_string();
                out.insert(key.clone(), v.to_string());
            }
            // addresses=a b: later words belong to the previous key
            None => {
                if let Some(v) = out.get_mut(&key) {
                    v.push(' ');
                    v.push_str(w);
                }
            }
        }
    }
    out
}

/// A writable copy of the VM inventory (with its hardware/ profiles and secrets): `builder
/// rebuild --mac` and `builder adopt` edit the inventory file in place.
pub fn inventory_copy(dir: &Path) -> PathBuf {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let inv = dir.join("inventory");
    std::fs::create_dir_all(inv.join("hardware")).unwrap();
    for f in ["vmlab.yaml", "vmlab.secrets.yaml"] {
        std::fs::copy(fx.join(f), inv.join(f)).unwrap();
    }
    for e in std::fs::read_dir(fx.join("hardware")).unwrap().flatten() {
        std::fs::copy(e.path(), inv.join("hardware").join(e.file_name())).unwrap();
    }
    inv
}

/// The test's folder, world-readable (pxe drops to its own user); kept with
/// `IRONSEED_VM_KEEP` set (the guard is then `None`).
pub fn lab_dir(tmp: tempfile::TempDir) -> (PathBuf, Option<tempfile::TempDir>) {
    let dir = if std::env::var_os("IRONSEED_VM_KEEP").is_some() {
        let p = tmp.keep();
        eprintln!("keeping {}", p.display());
        (p, None)
    } else {
        (tmp.path().to_owned(), Some(tmp))
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// An XFS media pool holding files (movie.txt, song.txt, music/), populated from a protofile (mkfs.xfs(8) `-p`): no mount, which
/// this kernel cannot do reliably from a loop device. Returns the filesystem UUID.
pub fn make_xfs_pool(dir: &Path, file: &Path, size: u64) -> String {
    let src = dir.join("pool-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("movie.txt"), "a film the pool must keep\n").unwrap();
    std::fs::write(src.join("song.txt"), "a song the pool must keep\n").unwrap();
    let proto = format!(
        "/dev/null\n0 0\nd--755 0 0\nmovie.txt ---644 0 0 {}\nmusic d--755 0 0\nsong.txt ---644 0 0 {}\n$\n$\n",
        src.join("movie.txt").display(),
        src.join("song.txt").display()
    );
    std::fs::write(dir.join("pool.proto"), proto).unwrap();
    std::fs::File::create(file).unwrap().set_len(size).unwrap();
    // -K: no discard of a file; a small log keeps the sparse file small.
    run(Command::new("mkfs.xfs")
        .args(["-q", "-K", "-L", "media", "-l", "size=64m", "-p"])
        .arg(dir.join("pool.proto"))
        .arg(file));
    xfs_db(file, "uuid")
        .trim()
        .strip_prefix("UUID = ")
        .unwrap()
        .to_string()
}

pub fn xfs_db(file: &Path, cmd: &str) -> String {
    let out = Command::new("xfs_db")
        .args(["-r", "-c", cmd])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "xfs_db {cmd}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
