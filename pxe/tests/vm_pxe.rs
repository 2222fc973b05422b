//! Real-firmware network boot of `pxe serve`: qemu VMs (TCG) on a bridge inside a network
//! namespace PXE-boot through DHCP → TFTP → HTTP and fetch their per-MAC iPXE script.
//!
//! The segment looks like a homelab LAN with ironseed next to a home router:
//!
//! ```text
//!   netns vmtpxeN                                   netns vmtrtrN
//!   vmtbr0 10.88.0.1/24  ── vmtrb0 ═══ veth ═══ vmtrr0 10.88.0.254/24
//!     ├─ vmttap0..2 (qemu NICs)                     dnsmasq: addresses + IPv6 RAs only
//!     └─ pxe serve --dhcp proxy (DHCP 67/4011, TFTP 69, HTTP 8088)
//! ```
//!
//! `pxe serve` runs in proxy mode, as it would beside a router: it never hands out addresses,
//! so the "router" namespace runs dnsmasq with a plain address pool (no boot options). dnsmasq
//! also sends IPv6 router advertisements, because iPXE otherwise waits 13–17 s at
//! "Configuring" for one (docs/reference.md "Firmware behaviour").
//!
//! Cases, all against one server and one bundle rendered by the real `builder`:
//! - BIOS (SeaBIOS + qemu's iPXE NIC ROM), known MAC: the install script is served (serial
//!   `ironseed: installing vm-bios1`), the API shows `booting`. There is no installer kernel
//!   yet, so the kernel fetch 404s; the VM is ended once the marker is seen.
//! - BIOS, unknown MAC: the unknown script (`is not in the inventory`), then the blank disk
//!   (SeaBIOS `No bootable device`); no node changes state.
//! - The same BIOS node walked to `installed` through the events API and booted again:
//!   `booting from local disk`, state stays `installed`.
//! - UEFI (OVMF + EDK2's own PXE client, `romfile=`): arch 7, the EFI boot file over TFTP
//!   (with EDK2's tsize probe), then iPXE DHCPs again with user class iPXE and fetches the
//!   per-MAC script over HTTP. Walked to `installed`, it is sent on to its disk, through
//!   OVMF's UEFI HTTP-boot entry (the iPXE binary over HTTP) first. `IRONSEED_VM_UEFI=0`
//!   leaves the UEFI cases out (a skip: refused under CI).
//!
//! Markers are waited for with 10-minute deadlines, never fixed sleeps: under TCG on a loaded
//! machine a BIOS cycle has taken minutes. Phase timings are printed (`--nocapture`).
//!
//! Needs root, iproute2, qemu-system-x86_64, ipxe-qemu, ipxe, ovmf and dnsmasq (tests/packages.txt).
//! Without them the test is skipped loudly, except under CI (`CI` set to any value), where it
//! fails.

mod support;

use std::time::Instant;

use support::vm::*;

const BIOS_MAC: &str = "52:54:00:88:00:11";
const UEFI_MAC: &str = "52:54:00:88:00:21";
/// Not in vmlab.yaml.
const UNKNOWN_MAC: &str = "52:54:00:88:00:99";

/// The stand-in image checksum this test publishes.
const IMAGE_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn pxe_serve_boots_real_firmware() {
    let name = "pxe_serve_boots_real_firmware";
    if !capable(name) {
        return;
    }
    let uefi = uefi_wanted(name);
    let t0 = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("vm_pxe-")
        .tempdir()
        .unwrap();
    // IRONSEED_VM_KEEP=1 keeps the serial consoles and the pxe/dnsmasq logs for a post-mortem,
    // failed run or not; the folder is traversable by pxe serve after it drops root.
    let (dir, _tmp_guard) = lab_dir(tmp);
    let bundle = dir.as_path().join("bundle");
    render_bundle(&bundle);
    eprintln!("timing: render {:>6.1} s", t0.elapsed().as_secs_f64());

    let lab = Lab::new(3);
    let ns = lab.pxe.0.clone();
    let _router = start_router(&lab, dir.as_path());
    // EDK2's PXE client with `romfile=` fetches snponly.efi: it drives the NIC through the
    // firmware's own SNP driver, as there is no iPXE driver ROM for it.
    // The published checksum `installed` must report (no image is served in this test).
    let art = dir.join("artifacts");
    std::fs::create_dir_all(art.join("images")).unwrap();
    std::fs::write(
        art.join("images/debian-12.raw.zst.sha256"),
        format!("{IMAGE_SHA}  debian-12.raw.zst\n"),
    )
    .unwrap();
    let art = art.display().to_string();
    let (mut pxe, pxe_log) = start_pxe_with(
        &lab,
        &bundle,
        dir.as_path(),
        "snponly.efi",
        &["--artifacts", &art],
    );
    eprintln!("timing: lab up {:>6.1} s", t0.elapsed().as_secs_f64());

    let before = states(&ns);
    assert!(
        before.values().all(|s| s == "armed"),
        "fresh state: every node armed: {before:?}"
    );
    let tftp_before = tftp_finished(&ns);

    // Phase 1, in parallel: BIOS known MAC, BIOS unknown MAC, UEFI known MAC.
    let p1 = Instant::now();
    let d = dir.as_path();
    let mut jobs: Vec<Box<dyn FnOnce() -> Vm + Send + '_>> = vec![
        Box::new(|| {
            let mut vm = Vm::start(&lab, d, "bios-known", Firmware::Bios, "vmttap0", BIOS_MAC);
            vm.wait("ironseed: installing vm-bios1");
            vm
        }),
        Box::new(|| {
            let mut vm = Vm::start(
                &lab,
                d,
                "bios-unknown",
                Firmware::Bios,
                "vmttap1",
                UNKNOWN_MAC,
            );
            vm.wait("is not in the inventory");
            // `exit 1` hands control back to SeaBIOS, which tries the blank disk next.
            vm.wait("No bootable device");
            vm
        }),
    ];
    if uefi {
        jobs.push(Box::new(|| {
            let mut vm = Vm::start(&lab, d, "uefi-known", Firmware::Uefi, "vmttap2", UEFI_MAC);
            vm.wait("ironseed: installing vm-uefi1");
            vm
        }));
    }
    let mut vms = parallel(jobs);
    eprintln!(
        "timing: phase 1 (parallel VMs) {:>6.1} s",
        p1.elapsed().as_secs_f64()
    );
    for vm in &mut vms {
        vm.proc.stop();
    }
    assert!(pxe.alive(), "pxe serve died");

    let after = states(&ns);
    assert_eq!(after["vm-bios1"], "booting", "{after:?}");
    // Never booted: proves the unknown MAC changed no node (it is in no node's timeline).
    assert_eq!(after["vm-bios2"], "armed", "{after:?}");
    assert_eq!(after.len(), 3, "only inventory nodes are listed: {after:?}");
    let (_, api) = http(&ns, "GET", "/api/v1/nodes", None);
    assert!(
        !api.contains(UNKNOWN_MAC),
        "the unknown MAC appears in no node's record or timeline: {api}"
    );
    let log = clean(&std::fs::read(&pxe_log).unwrap());
    assert!(
        log.lines().any(
            |l| l.contains(&format!("mac={UNKNOWN_MAC}")) && l.contains("decision=\"unknown\"")
        ),
        "the unknown MAC got the unknown script; pxe log:\n{log}"
    );
    let unknown = vms.iter().find(|v| v.name == "bios-unknown").unwrap();
    assert!(
        !unknown.serial_text().contains("ironseed: installing"),
        "the unknown MAC was never offered an installer"
    );
    if uefi {
        assert_eq!(after["vm-uefi1"], "booting", "{after:?}");
        let tftp_after = tftp_finished(&ns);
        assert!(
            tftp_after > tftp_before,
            "EDK2 fetched its boot file over TFTP: finished transfers {tftp_before} → {tftp_after}"
        );
        // EDK2's PXE client (not iPXE) asked first: arch 7 without user class iPXE, then
        // iPXE asked again with it.
        for want in ["arch=Some(7) ipxe=false", "arch=Some(7) ipxe=true"] {
            assert!(
                log.lines()
                    .any(|l| l.contains(&format!("mac={UEFI_MAC}")) && l.contains(want)),
                "no DHCP exchange with {want} from {UEFI_MAC}; pxe log:\n{log}"
            );
        }
    } else {
        eprintln!("NOTE: UEFI case left out (IRONSEED_VM_UEFI=0)");
    }
    drop(vms);

    // Phase 2: the booted nodes report an install through the API (the installer would),
    // then PXE-boot again and must be sent to their local disk.
    let mut installed = vec!["vm-bios1"];
    if uefi {
        installed.push("vm-uefi1");
    }
    for node in &installed {
        let mac = if *node == "vm-bios1" {
            BIOS_MAC
        } else {
            UEFI_MAC
        };
        let secret = install_secret(&ns, mac);
        post_event(
            &ns,
            node,
            &secret,
            r#"{"event":"installing","disk":"/dev/vda","total":1}"#,
        );
        post_event(
            &ns,
            node,
            &secret,
            &format!(r#"{{"event":"installed","sha256":"{IMAGE_SHA}"}}"#),
        );
        assert_eq!(states(&ns)[*node], "installed");
    }
    let p2 = Instant::now();
    let mut jobs: Vec<Box<dyn FnOnce() -> Vm + Send + '_>> = vec![Box::new(|| {
        let mut vm = Vm::start(
            &lab,
            d,
            "bios-installed",
            Firmware::Bios,
            "vmttap0",
            BIOS_MAC,
        );
        vm.wait("ironseed: booting from local disk");
        // sanboot of the blank disk fails, `exit 1` returns to SeaBIOS, which tries the disk.
        vm.wait("No bootable device");
        vm
    })];
    if uefi {
        jobs.push(Box::new(|| {
            let mut vm = Vm::start(
                &lab,
                d,
                "uefi-installed",
                Firmware::Uefi,
                "vmttap2",
                UEFI_MAC,
            );
            vm.wait("ironseed: booting from local disk");
            // `exit 1`, not `exit`: with status 0 OVMF stays in its boot menu; with an error
            // it goes on through its boot order. The NIC's next entry is UEFI HTTP boot
            // (arch 16, vendor class HTTPClient): pxe serves it the same iPXE binary over
            // HTTP, which asks for its script again and is again sent on...
            let http_boot = "Start HTTP Boot over IPv4";
            vm.wait_after(http_boot, "ironseed: booting from local disk");
            // ... to the disk (OVMF's "Misc Device").
            vm.wait_after(http_boot, "UEFI Misc Device");
            vm
        }));
    }
    let vms = parallel(jobs);
    eprintln!(
        "timing: phase 2 (local boot, parallel VMs) {:>6.1} s",
        p2.elapsed().as_secs_f64()
    );
    for vm in &vms {
        assert!(
            !vm.serial_text().contains("ironseed: installing"),
            "{}: an installed node must never get the installer again",
            vm.name
        );
    }
    drop(vms);
    let end = states(&ns);
    for node in &installed {
        assert_eq!(end[*node], "installed", "{end:?}");
    }
    assert_eq!(end["vm-bios2"], "armed", "{end:?}");
    assert!(pxe.alive(), "pxe serve died");
    pxe.stop();
    eprintln!("timing: total {:>6.1} s", t0.elapsed().as_secs_f64());
}

/// The serial cleaner against what EDK2 and iPXE write (CSI redraws, charset selection).
#[test]
fn serial_cleaner_strips_escapes() {
    let raw = b"\x1b[2J\x1b[01;01H>>Start PXE over IPv4.\r\x1b[0m\x1b(Bironseed: installing x\r\n";
    let t = clean(raw);
    assert!(t.contains(">>Start PXE over IPv4."), "{t:?}");
    assert!(t.contains("ironseed: installing x"), "{t:?}");
}

/// The waits' patience: a quiet guest fails at DEADLINE as before; one still printing gets
/// more time, but never past HARD_DEADLINE.
#[test]
fn waits_give_a_printing_guest_more_time_but_not_a_silent_one() {
    use std::time::Duration;
    let s = Duration::from_secs;
    assert_eq!(expired_at(DEADLINE - s(1), DEADLINE - s(1)), None);
    let silent = expired_at(DEADLINE, DEADLINE).expect("a silent guest times out at DEADLINE");
    assert!(silent.contains("without new console output"), "{silent}");
    assert_eq!(expired_at(DEADLINE + s(300), s(10)), None, "still printing");
    assert!(
        expired_at(DEADLINE + s(300), STALL).is_some(),
        "stalled past DEADLINE"
    );
    let cap = expired_at(HARD_DEADLINE, s(0)).expect("the cap holds for a chatty guest");
    assert!(cap.contains("cap"), "{cap}");
}
