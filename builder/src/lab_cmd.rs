//! `builder lab up|status|console|down` (docs/lab.md): the I/O around `builder::lab`. `lab up`
//! powers the VMs on with `builder provision`'s own ordering and waiting
//! (`power_cmd::provision_nodes`) through the lab power driver.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use builder::inventory::model::{Firmware, Node};
use builder::lab::state::{LabProcess, LabState, LabVm, StateError};
use builder::lab::{net, power, table, vm};
use builder::vmshape;
use images::bundle::printable;

use crate::cli::{LabConsoleArgs, LabDirArgs, LabDownArgs, LabUpArgs, SourceArgs};
use crate::commands;
use crate::power_cmd::{Drivers, Outcome, Pxe};

/// The golden image recipe the lab installs (the one the bundle's plan names by default).
const OS_IMAGE: &str = "debian-12";
/// pxe's UEFI boot file for profiles that name none: runs on the firmware's network driver
/// (qemu's NIC option ROM provides one for e1000e and virtio-net).
const EFI_FILE: &str = "snponly.efi";
const IPXE_DIR: &str = "/usr/lib/ipxe";
/// The account `pxe serve` drops to (pxe::privileges::SERVICE_USER, pxe/ironseed.sysusers).
const PXE_USER: &str = "ironseed";

/// An open lab: its folder (absolute) and `lab.json`. Opening one routes the builder's pxe API
/// requests through the lab's namespace.
pub(crate) struct Lab {
    pub dir: PathBuf,
    pub state: LabState,
}

impl Lab {
    pub fn open(dir: &Path) -> Result<Lab> {
        let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
        let state = LabState::load(&dir)?;
        net::set_client_netns(&state.netns);
        Ok(Lab { dir, state })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.state.server_ip, self.state.http_port)
    }

    pub fn pxe(&self) -> Result<Pxe> {
        let token = images::api_token::resolve(Some(&self.state.api_token_file))
            .context("reading the lab's pxe API token")?;
        Ok(Pxe {
            url: self.url(),
            token,
        })
    }

    /// The inventory the lab was made from, unless the command names one.
    pub fn source(lab: Option<&Lab>, s: &SourceArgs) -> SourceArgs {
        let mut s = s.clone();
        if let Some(lab) = lab
            && s.inventory.is_none()
        {
            s.inventory = Some(lab.state.inventory.clone());
        }
        s
    }
}

/// Files of node `name` besides its disks.
fn vm_files(dir: &Path, name: &str) -> [PathBuf; 4] {
    [
        dir.join(format!("{name}.serial")),
        dir.join(format!("{name}.qmp")),
        dir.join(format!("{name}.vars.fd")),
        dir.join(format!("{name}.qemu.log")),
    ]
}

/// Everything `lab down` removes: (files, folders). Disk files the user put into the folder
/// before `lab up` (`user_disks`) are not in it.
pub(crate) fn lab_files(dir: &Path, s: &LabState) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    for (name, vm) in &s.nodes {
        files.extend(
            vm.disks
                .iter()
                .filter(|d| !vm.user_disks.contains(d))
                .cloned(),
        );
        files.extend(vm_files(dir, name));
    }
    files.extend([
        s.api_token_file.clone(),
        dir.join("pxe.out"),
        dir.join("pxe.log"),
        dir.join("lab.lock"),
        // Last: while it exists, `down` can be run again.
        LabState::path(dir),
    ]);
    (files, vec![s.bundle.clone(), dir.join("pxe-state")])
}

pub(crate) fn need_root(what: &str) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "error: builder lab {what} needs root (network namespaces, taps, qemu on them); \
             run it with sudo"
        );
        std::process::exit(2);
    }
}

fn alive(p: &Option<LabProcess>) -> bool {
    p.as_ref().is_some_and(LabProcess::alive)
}

fn running_processes(s: &LabState) -> Vec<String> {
    let mut out = Vec::new();
    if alive(&s.pxe) {
        out.push("pxe serve".to_string());
    }
    for (n, vm) in &s.nodes {
        if alive(&vm.qemu) {
            out.push(format!("{n}'s qemu"));
        }
    }
    for (n, p) in &s.helpers {
        if p.alive() {
            out.push(n.clone());
        }
    }
    out
}

/// The artifacts `pxe serve` needs for an install; build what is missing.
fn ensure_images(dir: &Path) -> Result<()> {
    let need = [
        dir.join("installer/vmlinuz"),
        dir.join("installer/initrd.img"),
        dir.join(format!("images/{OS_IMAGE}.raw.zst")),
    ];
    let me = std::env::current_exe().context("finding the builder binary")?;
    if !need[2].exists() {
        println!(
            "golden image {OS_IMAGE} missing in {}: building it (several minutes)",
            dir.display()
        );
        let st = Command::new(&me)
            .args(["images", "build", OS_IMAGE, "--artifacts"])
            .arg(dir)
            .status()
            .context("running builder images build")?;
        if !st.success() {
            bail!("building the golden image failed (see above); or pass --images DIR");
        }
    }
    if !need[0].exists() || !need[1].exists() {
        println!("installer missing in {}: building it", dir.display());
        let st = Command::new(&me)
            .args(["images", "installer", "--artifacts"])
            .arg(dir)
            .status()
            .context("running builder images installer")?;
        if !st.success() {
            bail!("building the installer failed (see above); or pass --images DIR");
        }
    }
    Ok(())
}

/// A fresh operator API token, owner-only from creation.
fn write_token(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

/// `pxe serve` in the namespace; ready when it printed its READY line (to DIR/pxe.out).
fn start_pxe(dir: &Path, pxe_bin: &Path, s: &LabState, artifacts: &Path) -> Result<LabProcess> {
    let out_path = dir.join("pxe.out");
    let out = std::fs::File::create(&out_path)?;
    let log = std::fs::File::create(dir.join("pxe.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", &s.netns])
        .arg(pxe_bin)
        .arg("serve")
        .arg("--bundle")
        .arg(&s.bundle)
        .args(["--interface", &s.bridge])
        // The lab is its own LAN: pxe hands out the inventory's addresses.
        .args(["--dhcp", "full"])
        .args(["--http-port", &s.http_port.to_string(), "--tftp-port", "69"])
        .arg("--state")
        .arg(dir.join("pxe-state"))
        .args(["--ipxe-dir", IPXE_DIR, "--efi-file", EFI_FILE])
        .arg("--artifacts")
        .arg(artifacts)
        .arg("--api-token-file")
        .arg(&s.api_token_file)
        .arg("--arm-new")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting pxe serve")?;
    let pid = child.id();
    let p = LabProcess::of(pid).context("pxe serve exited at once")?;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("READY ")) {
            return Ok(p);
        }
        if !p.alive() || Instant::now() > until {
            let log = std::fs::read_to_string(dir.join("pxe.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            bail!(
                "pxe serve did not become ready; the end of {}:\n{}",
                dir.join("pxe.log").display(),
                tail.into_iter()
                    .rev()
                    .map(|l| printable(l, 300))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn up(a: &LabUpArgs) -> Result<()> {
    need_root("up");
    std::fs::create_dir_all(&a.dir.dir)
        .with_context(|| format!("creating {}", a.dir.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir.dir)?;
    match LabState::load(&dir) {
        Ok(old) => {
            let running = running_processes(&old);
            if !running.is_empty() {
                bail!(
                    "{} holds a running lab ({}): `builder lab down --dir {}` first",
                    dir.display(),
                    running.join(", "),
                    dir.display()
                );
            }
            // A stopped lab (a crash, a reboot): its namespace may still be there.
            net::delete(&old.netns)?;
        }
        Err(StateError::Missing { .. }) => {}
        Err(e) => bail!("{e}"),
    }
    let l = commands::load(&a.source)?;
    let inv = &l.inventory;
    for n in &a.only {
        if inv.node(n).is_none() {
            bail!("--only {n}: no such node in the inventory");
        }
    }
    let selected: Vec<&Node> = inv
        .nodes
        .iter()
        .filter(|n| a.only.is_empty() || a.only.iter().any(|o| o == n.hostname.as_str()))
        .collect();
    // Shapes first: a selector that would not match on real hardware of that shape stops
    // everything before anything starts.
    let mut shapes = Vec::new();
    let mut problems = Vec::new();
    for n in &selected {
        let s = vmshape::shape_node(n);
        for m in s.mismatches() {
            let sel = s
                .disks
                .iter()
                .find(|d| d.role == m.role)
                .map(|d| format!("{:?}", d.selector))
                .unwrap_or_default();
            problems.push(format!("  {}: {m}; selector {sel}", n.hostname));
        }
        shapes.push(s);
    }
    if !problems.is_empty() {
        bail!(
            "not starting the lab: these disk selectors would not match their disks on hardware \
             of the profile's shape:\n{}",
            problems.join("\n")
        );
    }
    let (kvm_dev, cpu_virt) = vm::probe_kvm();
    let (accel, warning) =
        vm::choose_accel(a.accel, kvm_dev, cpu_virt).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let pxe_bin = match &a.pxe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the builder binary's folder")?
            .join("pxe"),
    };
    if !pxe_bin.exists() {
        bail!("{}: no pxe binary (pass --pxe FILE)", pxe_bin.display());
    }
    let artifacts = a
        .images
        .clone()
        .unwrap_or_else(images::catalog::default_artifacts_dir);
    ensure_images(&artifacts)?;
    if nix::unistd::User::from_name(PXE_USER)
        .ok()
        .flatten()
        .is_none()
    {
        bail!(
            "pxe serve drops to the `{}` account, which does not exist here: create it \
             (systemd-sysusers pxe/ironseed.sysusers, or useradd --system --no-create-home {})",
            PXE_USER,
            PXE_USER
        );
    }

    // Render with the normal path: validation errors as always, nothing started on error.
    let bundle = dir.join("bundle");
    match &a.from {
        Some(old) => crate::lab_drill_cmd::bundle_from(old, &bundle, inv)?,
        None => commands::render_loaded(
            &crate::cli::RenderArgs {
                source: a.source.clone(),
                out: bundle.clone(),
                secrets: None,
                usb: false,
                usb_format: crate::cli::UsbFormat::Fat,
            },
            &l,
            Instant::now(),
        )?,
    }
    // pxe drops privileges: it must be able to enter the folder.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;

    let ns = net::netns_name(&dir);
    let mut nodes = BTreeMap::new();
    for (i, (n, shape)) in selected.iter().zip(&shapes).enumerate() {
        let name = n.hostname.to_string();
        let [serial, qmp, vars, _] = vm_files(&dir, &name);
        let tap = net::tap_name(i);
        let disks: Vec<PathBuf> = shape.disks.iter().map(|d| dir.join(&d.file)).collect();
        let user_disks: Vec<PathBuf> = disks.iter().filter(|d| d.exists()).cloned().collect();
        let argv = vm::argv(
            shape,
            &vm::VmSpec {
                name: &name,
                secure_boot: n.secure_boot,
                accel,
                smp: a.smp,
                dir: &dir,
                tap: &tap,
                serial: &serial,
                qmp: &qmp,
                vars: &vars,
            },
        );
        nodes.insert(
            name,
            LabVm {
                mac: n.mac.to_string(),
                tap,
                disks,
                serial,
                qmp,
                argv,
                pxe_once: false,
                qemu: None,
                user_disks,
            },
        );
    }
    let mut state = LabState {
        version: builder::lab::state::LAB_STATE_VERSION,
        inventory: match &l.path {
            Some(p) => std::path::absolute(p)?,
            None => PathBuf::new(),
        },
        bundle,
        netns: ns.clone(),
        bridge: net::BRIDGE.into(),
        server_ip: inv.appliance.ip,
        http_port: inv.appliance.http_port,
        api_token_file: dir.join("api-token"),
        accel,
        pxe: None,
        helpers: BTreeMap::new(),
        nodes,
    };
    // Written before anything starts, and again as each thing does: `lab down` cleans up
    // whatever a failed `up` left.
    state.save(&dir)?;

    let prefix = inv.network.subnet.prefix_len();
    let mut addrs = vec![format!("{}/{prefix}", inv.appliance.ip)];
    if inv.network.gateway != inv.appliance.ip {
        addrs.push(format!("{}/{prefix}", inv.network.gateway));
    }
    let taps: Vec<String> = state.nodes.values().map(|v| v.tap.clone()).collect();
    net::create(&ns, &addrs, &taps).context("creating the lab's network")?;
    println!(
        "network: namespace {ns}, bridge {} with {} ({} tap(s)){}",
        net::BRIDGE,
        addrs.join(", "),
        taps.len(),
        if a.nat { ", NAT to the host" } else { "" }
    );
    if a.nat {
        net::add_nat(&ns, &inv.network.subnet.to_string()).context("--nat")?;
    }
    write_token(&state.api_token_file)?;
    state.pxe = Some(start_pxe(&dir, &pxe_bin, &state, &artifacts)?);
    state.save(&dir)?;
    println!(
        "pxe serve: http://{}:{} in {ns} (--dhcp full), log {}",
        state.server_ip,
        state.http_port,
        dir.join("pxe.log").display()
    );

    for (name, vmv) in &state.nodes {
        let shape = &shapes[selected
            .iter()
            .position(|n| n.hostname.as_str() == name)
            .expect("selected")];
        for (d, path) in shape.disks.iter().zip(&vmv.disks) {
            if vmv.user_disks.contains(path) {
                let len = std::fs::metadata(path)?.len();
                println!(
                    "{name}: using {} as it is ({} GB, already in the folder; lab down keeps it)",
                    path.display(),
                    len / 1_000_000_000
                );
                if len < d.size {
                    eprintln!(
                        "warning: {name}: {} is smaller than the shape's {} GB: the selector \
                         may not match",
                        path.display(),
                        d.size / 1_000_000_000
                    );
                }
            } else {
                std::fs::File::create(path)
                    .and_then(|f| f.set_len(d.size))
                    .with_context(|| format!("creating {}", path.display()))?;
            }
        }
        if shape.firmware == Firmware::Uefi {
            let [_, _, vars, _] = vm_files(&dir, name);
            if !vars.exists() {
                let secure = selected
                    .iter()
                    .any(|n| n.hostname.as_str() == name && n.secure_boot);
                let src = if secure {
                    vm::OVMF_VARS_MS
                } else {
                    vm::OVMF_VARS
                };
                std::fs::copy(src, &vars).with_context(|| format!("copying {src}"))?;
            }
        }
    }

    let lab = Lab::open(&dir)?;
    let pxe = lab.pxe()?;
    let drv = Drivers::Lab(dir.clone());
    let deadline = Duration::from_secs(a.timeout.saturating_mul(60));
    let watch = std::io::stdout().is_terminal();
    let (outcomes, r) =
        crate::power_cmd::provision_nodes(inv, &selected, &pxe, &drv, watch, deadline);
    println!();
    // Read again: the power driver recorded the VMs' processes meanwhile.
    let lab = Lab::open(&dir)?;
    print!("{}", status_table(&lab, &pxe, Some(&outcomes)));
    let how = format!(
        "the lab keeps running: `builder lab status --dir {d}`, `builder lab console NODE --dir \
         {d}`, `builder lab down --dir {d}`",
        d = dir.display()
    );
    crate::lab_drill_cmd::cluster_note(&lab, inv, deadline);
    match r {
        Ok(()) => {
            println!("\n{how}");
            Ok(())
        }
        Err(e) => Err(e.context(how)),
    }
}

/// The table from lab.json, the processes and pxe; times from `outcomes` (lab up) or pxe's
/// timeline (arm → booted).
fn status_table(lab: &Lab, pxe: &Pxe, outcomes: Option<&BTreeMap<String, Outcome>>) -> String {
    let (known, note) = match pxe.nodes() {
        Ok(m) => (m, None),
        Err(e) => (BTreeMap::new(), Some(format!("pxe not reachable: {e:#}"))),
    };
    let rows: Vec<table::Row> = lab
        .state
        .nodes
        .iter()
        .map(|(name, vmv)| {
            let rec: Option<&Value> = known.get(name);
            let state = rec
                .and_then(|r| r["state"].as_str())
                .map(|s| printable(s, 32))
                .unwrap_or_else(|| "-".into());
            let notes = rec
                .and_then(|r| r["timeline"].as_array())
                .map(|t| {
                    t.iter()
                        .filter(|e| e["event"] == "note")
                        .filter_map(|e| e["detail"].as_str())
                        .map(|d| printable(d, 300))
                        .take(20)
                        .collect()
                })
                .unwrap_or_default();
            let took = outcomes
                .and_then(|o| o.get(name))
                .and_then(|o| o.took)
                .or_else(|| rec.and_then(crate::rebuild::timeline_duration));
            table::Row {
                node: name.clone(),
                mac: vmv.mac.clone(),
                vm_running: alive(&vmv.qemu),
                state,
                took,
                notes,
            }
        })
        .collect();
    let mut out = table::render(&rows);
    if let Some(n) = note {
        out.push_str(&format!("({n})\n"));
    }
    out
}

pub fn status(a: &LabDirArgs) -> Result<()> {
    let lab = Lab::open(&a.dir)?;
    // Without the token (not root) the table still shows the VMs; pxe's column stays empty.
    let pxe = lab.pxe().unwrap_or_else(|e| {
        eprintln!("warning: {e:#}");
        Pxe {
            url: lab.url(),
            token: None,
        }
    });
    println!(
        "lab {} (namespace {}, {}): pxe serve {}",
        lab.dir.display(),
        lab.state.netns,
        match lab.state.accel {
            builder::lab::state::Accel::Kvm => "kvm",
            builder::lab::state::Accel::Tcg => "tcg",
        },
        if alive(&lab.state.pxe) {
            "running"
        } else {
            "stopped"
        }
    );
    if !nix::unistd::geteuid().is_root() {
        // Entering the namespace needs root; the table then shows no pxe states.
        eprintln!("warning: not root: pxe's states cannot be read from inside the lab");
    }
    print!("{}", status_table(&lab, &pxe, None));
    Ok(())
}

/// Longest console line printed as one (a guest can print without newlines forever).
const CONSOLE_LINE_MAX: usize = 4096;

/// Print complete lines of `buf` escaped, keep the unfinished tail (flushed when too long).
fn print_console(buf: &mut Vec<u8>, out: &mut impl Write, last: bool) -> std::io::Result<()> {
    while let Some(i) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
        writeln!(out, "{}", printable(&text, CONSOLE_LINE_MAX))?;
    }
    if buf.len() >= CONSOLE_LINE_MAX || (last && !buf.is_empty()) {
        let text = String::from_utf8_lossy(buf);
        writeln!(out, "{}", printable(&text, CONSOLE_LINE_MAX))?;
        buf.clear();
    }
    Ok(())
}

pub fn console(a: &LabConsoleArgs) -> Result<()> {
    let dir = std::path::absolute(&a.dir.dir)?;
    let state = LabState::load(&dir)?;
    let vmv = state.nodes.get(&a.node).with_context(|| {
        format!(
            "no node {} in this lab; its nodes: {}",
            a.node,
            state.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut f = match std::fs::File::open(&vmv.serial) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !a.follow => {
            println!("({} has not been started yet)", a.node);
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Follow: wait for the first start.
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if let Ok(f) = std::fs::File::open(&vmv.serial) {
                    break f;
                }
            }
        }
        Err(e) => return Err(e).with_context(|| format!("{}", vmv.serial.display())),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let n = f.read(&mut chunk)?;
        if n > 0 {
            pos += n as u64;
            buf.extend_from_slice(&chunk[..n]);
            print_console(&mut buf, &mut out, false)?;
            continue;
        }
        if !a.follow {
            break;
        }
        out.flush()?;
        // Stop following when the VM is off (as recorded now).
        let running = LabState::load(&dir)
            .ok()
            .and_then(|s| s.nodes.get(&a.node).map(|v| alive(&v.qemu)))
            .unwrap_or(false);
        if !running {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        f.seek(SeekFrom::Start(pos))?;
    }
    print_console(&mut buf, &mut out, true)?;
    Ok(())
}

pub fn down(a: &LabDownArgs) -> Result<()> {
    need_root("down");
    let dir = std::path::absolute(&a.dir.dir)?;
    let mut s = match LabState::load(&dir) {
        Ok(s) => s,
        Err(StateError::Missing { .. }) => {
            println!("no lab in {}: nothing to do", dir.display());
            return Ok(());
        }
        Err(e) => bail!("{e}"),
    };
    let names: Vec<String> = s.nodes.keys().cloned().collect();
    for n in &names {
        let was = alive(&s.nodes[n].qemu);
        power::stop_vm(&mut s, n).map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
        if was {
            println!("{n}: VM stopped");
        }
    }
    if let Some(p) = s.pxe.take()
        && power::stop_process(&p, power::TERM_GRACE)
    {
        println!("pxe serve stopped");
    }
    for (n, p) in std::mem::take(&mut s.helpers) {
        if power::stop_process(&p, power::TERM_GRACE) {
            println!("{n} stopped");
        }
    }
    s.save(&dir)?;
    net::delete(&s.netns).context("deleting the lab's network")?;
    println!("namespace {} deleted", s.netns);
    if a.keep {
        println!(
            "files kept in {} (`builder lab down` again removes them)",
            dir.display()
        );
        return Ok(());
    }
    let (files, dirs) = lab_files(&dir, &s);
    for d in dirs {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", d.display()));
            }
            _ => {}
        }
    }
    for f in files {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", f.display()));
            }
            _ => {}
        }
    }
    let kept: Vec<String> = s
        .nodes
        .values()
        .flat_map(|v| v.user_disks.iter().map(|d| d.display().to_string()))
        .collect();
    if kept.is_empty() {
        // Only when empty: the folder may hold the user's own files.
        let _ = std::fs::remove_dir(&dir);
        println!("lab files removed");
    } else {
        println!(
            "lab files removed; kept the disk files that were there before `lab up`: {}",
            kept.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Protects the user's data: a disk file that was in the folder before `lab up` is not
    /// among the files `lab down` removes; the lab's own are, lab.json last.
    #[test]
    fn down_removes_the_labs_files_but_never_a_users_disk() {
        let dir = Path::new("/lab");
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "nas".to_string(),
            LabVm {
                mac: "52:54:00:00:00:01".into(),
                tap: "isltap0".into(),
                disks: vec![
                    "/lab/nas-install.img".into(),
                    "/lab/nas-data-media.img".into(),
                ],
                serial: "/lab/nas.serial".into(),
                qmp: "/lab/nas.qmp".into(),
                argv: vec![],
                pxe_once: false,
                qemu: None,
                user_disks: vec!["/lab/nas-data-media.img".into()],
            },
        );
        let s = LabState {
            version: builder::lab::state::LAB_STATE_VERSION,
            inventory: "/inv.yaml".into(),
            bundle: "/lab/bundle".into(),
            netns: "isl000000".into(),
            bridge: net::BRIDGE.into(),
            server_ip: "10.0.0.1".parse().unwrap(),
            http_port: 8080,
            api_token_file: "/lab/api-token".into(),
            accel: builder::lab::state::Accel::Tcg,
            pxe: None,
            helpers: BTreeMap::new(),
            nodes,
        };
        let (files, dirs) = lab_files(dir, &s);
        let has = |p: &str| files.iter().any(|f| f == Path::new(p));
        assert!(has("/lab/nas-install.img") && has("/lab/nas.serial") && has("/lab/api-token"));
        assert!(has("/lab/nas.vars.fd") && has("/lab/nas.qmp") && has("/lab/nas.qemu.log"));
        assert!(!has("/lab/nas-data-media.img"), "the user's pool stays");
        assert_eq!(files.last().unwrap(), Path::new("/lab/lab.json"));
        assert_eq!(
            dirs,
            [PathBuf::from("/lab/bundle"), "/lab/pxe-state".into()]
        );
    }

    #[test]
    fn console_lines_are_escaped_and_capped() {
        let mut buf = b"ok line\n\x1b[2Jclear\nunfinished".to_vec();
        let mut out = Vec::new();
        print_console(&mut buf, &mut out, false).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "ok line\n[2Jclear\n"
        );
        assert_eq!(buf, b"unfinished", "kept until its newline comes");
        print_console(&mut buf, &mut out, true).unwrap();
        assert!(buf.is_empty());
        let mut long = vec![b'x'; CONSOLE_LINE_MAX + 10];
        let mut out = Vec::new();
        print_console(&mut long, &mut out, false).unwrap();
        assert!(long.is_empty(), "a line without end is flushed at the cap");
        assert_eq!(out.len(), CONSOLE_LINE_MAX + 1);
    }
}
