//! A lab VM's qemu command line, from `builder::vmshape` (the disks, the NIC with the node's
//! MAC, the memory) plus what a lab adds: firmware, accelerator, serial log, QMP socket, tap.
//! Pure; `lab up` stores the result in `lab.json` and the lab power driver starts it.

use std::path::Path;

use crate::inventory::model::Firmware;
use crate::lab::state::Accel;
use crate::vmshape::Shape;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF with Microsoft's keys enrolled and Secure Boot enforced (needs SMM).
pub const OVMF_CODE_MS: &str = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when it really works here, else TCG (with a warning about speed).
    Auto,
    Kvm,
    Tcg,
}

/// What the host offers: `/dev/kvm` opens read-write, and the CPU flags show hardware
/// virtualisation. A `/dev/kvm` without `vmx`/`svm` is a software nested layer on which SeaBIOS
/// runs ~15x slower than TCG and OVMF dies ("KVM internal error"): not usable.
pub fn choose_accel(
    want: AccelChoice,
    kvm_dev: bool,
    cpu_virt: bool,
) -> Result<(Accel, Option<String>), String> {
    let tcg_warning = "using TCG (software emulation): installs and first boots take minutes \
                       per node; a host with working KVM is ~10x faster"
        .to_string();
    match want {
        AccelChoice::Tcg => Ok((Accel::Tcg, None)),
        AccelChoice::Kvm if kvm_dev => Ok((Accel::Kvm, None)),
        AccelChoice::Kvm => Err("--accel kvm: /dev/kvm cannot be opened read-write".into()),
        AccelChoice::Auto if kvm_dev && cpu_virt => Ok((Accel::Kvm, None)),
        AccelChoice::Auto if kvm_dev => Ok((
            Accel::Tcg,
            Some(format!(
                "/dev/kvm is there but the CPU shows no vmx/svm (a nested software layer, on \
                 which OVMF fails): {tcg_warning}"
            )),
        )),
        AccelChoice::Auto => Ok((
            Accel::Tcg,
            Some(format!("no usable /dev/kvm: {tcg_warning}")),
        )),
    }
}

/// The host side of [`choose_accel`].
pub fn probe_kvm() -> (bool, bool) {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let virt = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        })
        .unwrap_or(false);
    (dev, virt)
}

/// One lab VM: what the lab adds to its shape, and its files in the lab folder.
pub struct VmSpec<'a> {
    pub name: &'a str,
    pub secure_boot: bool,
    pub accel: Accel,
    pub smp: u32,
    /// The lab folder (disk files).
    pub dir: &'a Path,
    pub tap: &'a str,
    pub serial: &'a Path,
    pub qmp: &'a Path,
    /// The VM's own copy of the OVMF variable store (UEFI only).
    pub vars: &'a Path,
}

/// The whole qemu argument list (without the binary), network first in the boot order (as
/// `Shape::qemu_args` makes it); [`boot_order`] turns it around for a normal start.
pub fn argv(shape: &Shape, f: &VmSpec) -> Vec<String> {
    let (name, secure_boot, accel, smp, dir, tap) =
        (f.name, f.secure_boot, f.accel, f.smp, f.dir, f.tap);
    let accel_s = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let mut a: Vec<String> = vec!["-name".into(), name.into()];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let pflash = |file: &str, ro: bool| {
        format!(
            "if=pflash,format=raw,unit={},{}file={file}",
            if ro { 0 } else { 1 },
            if ro { "readonly=on," } else { "" }
        )
    };
    let vars = f.vars.display().to_string();
    match (shape.firmware, secure_boot) {
        // q35 for BIOS too: the shape's SATA disks are on its AHCI (builder::vmshape).
        (Firmware::Bios, _) => push(&["-machine", &format!("q35,accel={accel_s}")]),
        (Firmware::Uefi, true) => push(&[
            "-machine",
            &format!("q35,accel={accel_s},smm=on"),
            // The variable store writable only from SMM, or the OS could rewrite db.
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
            "-drive",
            &pflash(OVMF_CODE_MS, true),
            "-drive",
            &pflash(&vars, false),
        ]),
        (Firmware::Uefi, false) => push(&[
            "-machine",
            &format!("q35,accel={accel_s}"),
            "-drive",
            &pflash(OVMF_CODE, true),
            "-drive",
            &pflash(&vars, false),
        ]),
    }
    if shape.firmware == Firmware::Uefi {
        // No IPv6 PXE/HTTP boot entries: each waits for a DHCPv6 server the lab does not have.
        push(&[
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6PXESupport,string=no",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6Support,string=no",
        ]);
    }
    if accel == Accel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-smp",
        &smp.to_string(),
        "-nographic",
        "-monitor",
        "none",
        // Appended to across restarts: a drill's console history stays readable.
        "-chardev",
        &format!("file,id=serial0,path={},append=on", f.serial.display()),
        "-serial",
        "chardev:serial0",
        "-qmp",
        &format!("unix:{},server=on,wait=off", f.qmp.display()),
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ]);
    let mut shaped = shape.qemu_args(dir, "n0");
    if secure_boot {
        // Secure Boot refuses qemu's unsigned iPXE option ROM; OVMF's own driver (virtio-net)
        // and PXE client boot shim instead.
        for x in &mut shaped {
            if x.contains("netdev=n0") {
                x.push_str(",romfile=");
            }
        }
    }
    a.extend(shaped);
    a
}

/// The argument list for one start: `network_first` (a `pxe_once`) keeps the NIC at boot
/// index 1 and the install disk at 2; otherwise the disk boots first, as an installed machine's
/// firmware is set up (a blank disk falls through to the network anyway).
pub fn boot_order(argv: &[String], network_first: bool) -> Vec<String> {
    let (nic, disk) = if network_first { (1, 2) } else { (2, 1) };
    argv.iter()
        .map(|x| {
            if !x.contains(",bootindex=") {
                return x.clone();
            }
            let want = if x.contains("netdev=") { nic } else { disk };
            let (head, tail) = x.split_once(",bootindex=").expect("checked");
            let rest = tail.split_once(',').map(|(_, r)| r);
            match rest {
                Some(r) => format!("{head},bootindex={want},{r}"),
                None => format!("{head},bootindex={want}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diagnostics;
    use crate::inventory::ProfileSet;
    use crate::inventory::model::Mac;

    fn shape(profile: &str) -> Shape {
        let mut d = Diagnostics::default();
        let set = ProfileSet::load(&[], &mut d);
        crate::vmshape::shape(
            set.get(profile).unwrap(),
            Mac::parse_nic("52:54:00:aa:00:01").unwrap(),
            Some(512),
        )
        .with_file_prefix("n1")
    }

    fn spec(secure_boot: bool, accel: Accel, smp: u32, tap: &str) -> VmSpec<'_> {
        VmSpec {
            name: "n1",
            secure_boot,
            accel,
            smp,
            dir: Path::new("/lab"),
            tap,
            serial: Path::new("/lab/n1.serial"),
            qmp: Path::new("/lab/n1.qmp"),
            vars: Path::new("/lab/n1.vars.fd"),
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn accel_is_kvm_only_when_it_really_works() {
        use AccelChoice::*;
        assert_eq!(choose_accel(Auto, true, true).unwrap(), (Accel::Kvm, None));
        let (a, w) = choose_accel(Auto, true, false).unwrap();
        assert_eq!(a, Accel::Tcg, "a nested software /dev/kvm is not used");
        assert!(w.unwrap().contains("vmx/svm"));
        let (a, w) = choose_accel(Auto, false, false).unwrap();
        assert_eq!(a, Accel::Tcg);
        assert!(w.unwrap().contains("TCG"), "a warning about speed");
        assert_eq!(choose_accel(Tcg, true, true).unwrap(), (Accel::Tcg, None));
        assert!(choose_accel(Kvm, false, true).is_err());
        assert_eq!(
            choose_accel(Kvm, true, false).unwrap().0,
            Accel::Kvm,
            "asked for"
        );
    }

    #[test]
    fn uefi_vm_has_its_own_vars_serial_log_qmp_and_tap() {
        let a = argv(&shape("r730"), &spec(false, Accel::Tcg, 1, "isltap2"));
        assert_eq!(after(&a, "-machine"), ["q35,accel=tcg"]);
        let drives = after(&a, "-drive");
        assert!(drives.contains(
            &"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(drives.contains(&"if=pflash,format=raw,unit=1,file=/lab/n1.vars.fd"));
        assert_eq!(after(&a, "-smp"), ["1"]);
        assert_eq!(
            after(&a, "-chardev"),
            ["file,id=serial0,path=/lab/n1.serial,append=on"]
        );
        assert_eq!(after(&a, "-qmp"), ["unix:/lab/n1.qmp,server=on,wait=off"]);
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=n0,ifname=isltap2,script=no,downscript=no"]
        );
        let nic = after(&a, "-device")
            .into_iter()
            .find(|d| d.contains("netdev=n0"))
            .unwrap();
        assert!(nic.contains("mac=52:54:00:aa:00:01"), "{nic}");
        assert!(
            !nic.contains("romfile"),
            "qemu's ROM drives the e1000e under OVMF"
        );
        assert!(!a.iter().any(|x| x == "-cpu"), "no -cpu host under TCG");
    }

    #[test]
    fn bios_secure_boot_and_kvm_machines() {
        let bios = argv(&shape("vm"), &spec(false, Accel::Kvm, 2, "t"));
        assert_eq!(after(&bios, "-machine"), ["q35,accel=kvm"]);
        assert_eq!(after(&bios, "-cpu"), ["host"]);
        assert!(!bios.iter().any(|x| x.contains("pflash")));
        let sb = argv(&shape("r730"), &spec(true, Accel::Tcg, 1, "t"));
        assert_eq!(after(&sb, "-machine"), ["q35,accel=tcg,smm=on"]);
        assert!(
            after(&sb, "-drive")
                .iter()
                .any(|d| d.ends_with("OVMF_CODE_4M.ms.fd"))
        );
        assert!(
            after(&sb, "-device")
                .iter()
                .any(|d| d.contains("netdev=n0") && d.ends_with(",romfile="))
        );
    }

    #[test]
    fn pxe_once_puts_the_network_first_for_one_start() {
        let a = argv(&shape("r730"), &spec(false, Accel::Tcg, 1, "t"));
        let idx = |a: &[String], what: &str| -> String {
            after(a, "-device")
                .into_iter()
                .find(|d| d.contains(what) && d.contains("bootindex="))
                .map(|d| d.split("bootindex=").nth(1).unwrap()[..1].to_string())
                .unwrap()
        };
        let net = boot_order(&a, true);
        assert_eq!(
            (idx(&net, "netdev=n0"), idx(&net, "drive=disk0")),
            ("1".into(), "2".into())
        );
        let disk = boot_order(&a, false);
        assert_eq!(
            (idx(&disk, "netdev=n0"), idx(&disk, "drive=disk0")),
            ("2".into(), "1".into())
        );
        assert_eq!(boot_order(&disk, true), net, "reversible");
        assert_eq!(disk.len(), a.len());
    }
}
