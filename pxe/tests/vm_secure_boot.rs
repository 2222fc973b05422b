//! Secure Boot end to end over the network (issue 16, items 1 and 4): OVMF with Microsoft's
//! keys enrolled and Secure Boot enforced (`OVMF_CODE_4M.ms.fd` + a copy of
//! `OVMF_VARS_4M.ms.fd`), the real `pxe serve`, the real installer environment and golden
//! image, on the lab segment of `support::vm`.
//!
//! - vm-uefi1, `secure_boot: true` in the inventory: DHCP hands it `shimx64.efi` (Debian's,
//!   Microsoft-signed), shim fetches `grubx64.efi` (Debian's signed network GRUB) from the
//!   same TFTP server, GRUB reads `grub/grub.cfg` and the node's `grub/node/<mac>.cfg` from
//!   pxe, then Debian's signed kernel and the initramfs over TFTP; the kernel says `Secure
//!   boot enabled`; the installer writes the image, reports Secure Boot on with `installing`
//!   (timeline) and reaches `installed`. The installer's reboot ends qemu (`-no-reboot`) and
//!   the machine is power-cycled: a new qemu on the same disk and the same copy of the
//!   firmware's variables (a warm reset of this firmware under TCG hangs before shim; see
//!   `support::vm::secure_boot_machine_args`). It network-boots again, gets the local-boot
//!   config (`ironseed: booting from local disk`), and the network GRUB chainloads the
//!   installed disk's shim (`EFI/BOOT/BOOTX64.EFI`, found by the image's ESP serial) → the
//!   disk's signed GRUB → the image's signed kernel, which says `Secure boot enabled`, with
//!   Secure Boot still enforced. (Handing back to the firmware with GRUB's `exit` stopped in
//!   OVMF's boot menu: Debian's GRUB 2.06 always exits with success.) cloud-init's first boot then posts the node's reports: the timeline gets a
//!   `secure-boot` entry saying `on` and no `secure-boot-off` warning, and the node reaches
//!   `booted`.
//! - Negative, in parallel: a machine not in the inventory under the same firmware gets
//!   `snponly.efi` (unsigned iPXE) and the firmware refuses it (`Access Denied` on the console:
//!   the test firmware really enforces); pxe then reports it in `/metrics`
//!   (`ironseed_pxe_nbp_no_script_total`) and its log (the Secure Boot hint).
//!
//! Needs what vm_install needs plus shim-signed and grub-efi-amd64-signed (tests/packages.txt).
//! Without them: a loud skip, a failure under CI. Cache: `IRONSEED_E2E_CACHE`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::vm::*;

const NODE: &str = "vm-uefi1";
const NODE_MAC: &str = "52:54:00:88:00:21";
/// Not in vmlab.yaml: gets iPXE, which Secure Boot refuses.
const UNKNOWN_MAC: &str = "52:54:00:88:00:98";

fn metric(ns: &str, name: &str) -> u64 {
    let (st, body) = http(ns, "GET", "/metrics", None);
    assert_eq!(st, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn secure_boot_netboot_installs_through_shim_grub_and_the_signed_kernel() {
    let name = "secure_boot_netboot_installs_through_shim_grub_and_the_signed_kernel";
    if !capable(name) {
        return;
    }
    let missing: Vec<String> = [
        (OVMF_CODE_MS, "ovmf"),
        (OVMF_VARS_MS, "ovmf"),
        (pxe::secure_boot::SHIM_PATH, "shim-signed"),
        (pxe::secure_boot::GRUB_PATH, "grub-efi-amd64-signed"),
    ]
    .iter()
    .filter(|(f, _)| !Path::new(f).exists())
    .map(|(f, p)| format!("{f} ({p})"))
    .collect();
    if !missing.is_empty() && !support::skip(&format!("{name}: missing {}", missing.join(", "))) {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new().prefix("sbn-").tempdir().unwrap();
    let (dir, _guard) = lab_dir(tmp);

    // The inventory override: this one node keeps Secure Boot on (its profile does not).
    let inv = inventory_copy(&dir);
    let yaml = inv.join("vmlab.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let anchor = format!("    mac: {NODE_MAC}\n");
    assert!(text.contains(&anchor), "{NODE} in vmlab.yaml");
    // pxe is the DHCP server of these two machines (`--dhcp full`, a pool for the unknown
    // one): Debian's signed GRUB 2.06 takes its TFTP server from the firmware's DHCP ACK only,
    // never from a ProxyDHCP offer (docs/secure-boot.md).
    let text = text
        .replace(&anchor, &format!("{anchor}    secure_boot: true\n"))
        .replace(
            "  gateway: 10.88.0.254\n",
            "  gateway: 10.88.0.254\n  dhcp_pool: {start: 10.88.0.200, end: 10.88.0.220}\n",
        );
    assert!(text.contains("dhcp_pool"), "vmlab.yaml gateway line moved");
    std::fs::write(&yaml, text).unwrap();
    let bundle = dir.join("bundle");
    let st = Command::new(support::builder_bin())
        .args(["render", "-i"])
        .arg(&yaml)
        .arg("-o")
        .arg(&bundle)
        .arg("--secrets")
        .arg(inv.join("vmlab.secrets.yaml"))
        .status()
        .unwrap();
    assert!(st.success(), "builder render");
    let plan = std::fs::read_to_string(bundle.join("plan.json")).unwrap();
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let sb: Vec<(&str, bool)> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap(),
                n["secure_boot"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(sb.contains(&(NODE, true)), "{sb:?}");
    assert!(sb.iter().filter(|(_, s)| *s).count() == 1, "{sb:?}");

    let artifacts = artifacts();
    eprintln!("timing: artifacts {:>6.1} s", t0.elapsed().as_secs_f64());
    let lab = Lab::new(2);
    let ns = lab.pxe.0.clone();
    let ignore: Vec<String> = [NODE_MAC, UNKNOWN_MAC]
        .iter()
        .map(|m| format!("--dhcp-host={m},ignore"))
        .collect();
    let ignore: Vec<&str> = ignore.iter().map(String::as_str).collect();
    let _router = start_router_with(&lab, &dir, &ignore);
    let art = artifacts.display().to_string();
    let (mut pxe, pxe_log) = start_pxe_with(
        &lab,
        &bundle,
        &dir,
        "snponly.efi",
        &["--artifacts", &art, "--dhcp", "full"],
    );
    assert_eq!(states(&ns)[NODE], "armed");

    // Phase 1, in parallel: the Secure Boot install, and the refused iPXE.
    let p1 = Instant::now();
    let d = dir.as_path();
    let labr = &lab;
    let jobs: Vec<Box<dyn FnOnce() -> Vm + Send + '_>> = vec![
        Box::new(move || {
            let mut o = VmOpts::new(Firmware::Uefi, "vmttap0", NODE_MAC);
            o.secure_boot = true;
            o.disk_size = 4 << 30;
            o.mem_mb = 1024;
            o.smp = 2;
            let mut vm = Vm::start_with(labr, d, "sb-install", &o);
            vm.wait(&format!("ironseed: installing {NODE} from"));
            vm.wait("Secure boot enabled");
            vm.wait(&format!("ironseed: installed {NODE}"));
            // -no-reboot: the installer's reboot ends qemu.
            vm.wait_exit();
            vm
        }),
        Box::new(move || {
            let mut o = VmOpts::new(Firmware::Uefi, "vmttap1", UNKNOWN_MAC);
            o.secure_boot = true;
            let mut vm = Vm::start_with(labr, d, "sb-refused", &o);
            vm.wait("Access Denied");
            vm
        }),
    ];
    let mut vms = parallel(jobs);
    eprintln!("timing: phase 1 {:>6.1} s", p1.elapsed().as_secs_f64());
    for vm in &mut vms {
        vm.proc.stop();
    }
    assert!(pxe.alive(), "pxe serve died");
    let serial = vms[0].serial_text();
    // The whole signed chain, in order, on the console.
    let mut at = 0;
    for want in [
        "NBP filename is shimx64.efi",
        "Fetching Netboot Image grubx64.efi",
        &format!("ironseed: installing {NODE} from"),
        "EFI stub: UEFI Secure Boot is enabled.",
        "Secure boot enabled",
        "ironseed-installer: starting",
        &format!("ironseed: installed {NODE}"),
    ] {
        match serial[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("{want:?} missing (in this order) from the console:\n{serial}"),
        }
    }
    let node = nodes(&ns)
        .into_iter()
        .find(|n| n["hostname"] == NODE)
        .unwrap();
    assert_eq!(node["state"], "installed", "{node}");
    let timeline = node["timeline"].to_string();
    assert!(
        timeline.contains("(secure boot on)"),
        "the installer reported Secure Boot on with `installing`: {timeline}"
    );
    let log = clean(&std::fs::read(&pxe_log).unwrap());
    assert!(
        log.lines().any(|l| l.contains("grub config")
            && l.contains(&format!("mac={NODE_MAC}"))
            && l.contains("decision=\"install\"")),
        "pxe served the install GRUB config; log:\n{log}"
    );

    // The negative: the firmware's own refusal of unsigned iPXE, and pxe noticing.
    let refused = vms[1].serial_text();
    let line = refused
        .lines()
        .find(|l| l.contains("Access Denied"))
        .unwrap()
        .to_string();
    eprintln!("firmware refusing snponly.efi: {line}");
    assert!(
        refused.contains("NBP filename is snponly.efi"),
        "the unknown MAC was handed unsigned iPXE:\n{refused}"
    );
    assert!(!refused.contains("iPXE initialising"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(&ns, "ironseed_pxe_nbp_no_script_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "pxe never counted the silent iPXE fetch"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    let log = clean(&std::fs::read(&pxe_log).unwrap());
    assert!(
        log.lines()
            .any(|l| l.contains("never asked for its boot script") && l.contains("Secure Boot")),
        "the Secure Boot hint in pxe's log:\n{log}"
    );
    drop(vms);

    // Phase 2: the installed node, power-cycled, boots the network again and GRUB chainloads
    // its disk's shim: the installed system boots through shim, Secure Boot on.
    let p2 = Instant::now();
    let mut o = VmOpts::new(Firmware::Uefi, "vmttap0", NODE_MAC);
    o.secure_boot = true;
    o.reuse_disk = true;
    o.disk_size = 4 << 30;
    o.mem_mb = 1024;
    o.smp = 2;
    let local = "ironseed: booting from local disk";
    let mut again = Vm::start_with(&lab, &dir, "sb-local", &o);
    again.wait(local);
    again.wait_after(local, "secureboot: Secure boot enabled");
    again.wait_after(local, &format!("ironseed: {NODE} finished first boot"));
    eprintln!("timing: phase 2 {:>6.1} s", p2.elapsed().as_secs_f64());
    let log = clean(&std::fs::read(&pxe_log).unwrap());
    assert!(
        log.lines().any(|l| l.contains("grub config")
            && l.contains(&format!("mac={NODE_MAC}"))
            && l.contains("decision=\"local\"")),
        "pxe served the local GRUB config; log:\n{log}"
    );
    let serial = again.serial_text();
    let booted = &serial[serial.find(local).unwrap()..];
    // The installed system, not the installer again: its kernel under Secure Boot, then
    // cloud-init's first boot with this node's seed.
    let mut at = 0;
    for want in [
        "EFI stub: UEFI Secure Boot is enabled.",
        "secureboot: Secure boot enabled",
        &format!("ironseed-firstboot: node={NODE} "),
        &format!("ironseed: {NODE} finished first boot"),
    ] {
        match booted[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("{want:?} missing (in this order) after {local:?}:\n{booted}"),
        }
    }
    assert!(
        !booted.contains("ironseed-installer"),
        "the disk booted, not the installer:\n{booted}"
    );
    assert_eq!(summary(&serial, NODE)["hostname"], NODE);

    // The installed OS's own report (firstboot.sh reads efivars' SecureBoot): on, and so no
    // secure-boot-off warning. phone_home at the end of cloud-init's run makes it `booted`.
    let deadline = Instant::now() + Duration::from_secs(300);
    let node = loop {
        let n = nodes(&ns)
            .into_iter()
            .find(|n| n["hostname"] == NODE)
            .unwrap();
        let has = |e: &str| {
            n["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["event"] == e)
        };
        if n["state"] == "booted" && has("secure-boot") {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "{NODE} never reported its first boot and Secure Boot state: {n:#}"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    again.proc.stop();
    let timeline = node["timeline"].as_array().unwrap();
    let sb: Vec<&str> = timeline
        .iter()
        .filter(|t| t["event"] == "secure-boot")
        .map(|t| t["detail"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        sb,
        ["on"],
        "the installed OS reports Secure Boot on: {timeline:?}"
    );
    assert!(
        !timeline.iter().any(|t| t["event"] == "note"
            && t["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("secure-boot-off"))),
        "no secure-boot-off warning: {timeline:?}"
    );
    let log = clean(&std::fs::read(&pxe_log).unwrap());
    assert!(
        !log.contains("reports Secure Boot off"),
        "no Secure Boot warning in pxe's log:\n{log}"
    );
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}
