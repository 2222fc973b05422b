//! Fact collection over the fixture trees of `tests/fixtures/inspect/` (made by `gen.sh` there).

use std::path::{Path, PathBuf};

use super::*;
use crate::bundle::facts::Facts;

fn fixture(shape: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inspect")
        .join(shape)
}

fn facts(shape: &str) -> Facts {
    let root = fixture(shape);
    let log = std::fs::read_to_string(root.join("kmsg")).unwrap();
    let f = collect(&root, &log, Some("24:6e:96:0a:1b:2c".parse().unwrap()));
    // Whatever the collector found goes through the contract's JSON and back.
    let back = Facts::from_json(&serde_json::to_vec(&f).unwrap()).unwrap();
    assert_eq!(back, f);
    f
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_dell_poweredge_with_a_perc_virtual_disk_and_a_sata_ssd() {
    let f = facts("dell");
    assert_eq!(f.dmi.sys_vendor.as_deref(), Some("Dell Inc."));
    assert_eq!(f.dmi.product_name.as_deref(), Some("PowerEdge R730"));
    assert_eq!(f.dmi.product_serial.as_deref(), Some("7XK4Q42"));
    assert_eq!(f.dmi.bios_version.as_deref(), Some("2.17.0"));
    assert_eq!(f.dmi.board_name.as_deref(), Some("0WCJNT"));
    assert_eq!(f.firmware, Some(Firmware::Uefi));
    assert_eq!(f.secure_boot, Some(false));
    assert_eq!(f.cpu.count, 4);
    assert_eq!(
        f.cpu.model.as_deref(),
        Some("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz")
    );
    assert_eq!(f.memory_bytes, 131916164 * 1024);

    let names: Vec<_> = f.nics.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["eno1", "eno2", "eno3"], "lo has no device");
    let eno1 = &f.nics[0];
    assert_eq!(eno1.mac.to_string(), "24:6e:96:0a:1b:2c");
    assert_eq!(eno1.driver.as_deref(), Some("bnx2x"));
    assert_eq!(eno1.pci_id.as_deref(), Some("14e4:168e"));
    assert!(eno1.carrier);
    assert_eq!(eno1.speed_mbps, Some(10000));
    // Link down: no speed, whatever the driver leaves in the file.
    assert!(!f.nics[1].carrier);
    assert_eq!(f.nics[1].speed_mbps, None);
    assert_eq!(f.nics[2].driver.as_deref(), Some("tg3"));
    assert_eq!(f.nics[2].speed_mbps, Some(1000));

    assert_eq!(f.disks.len(), 2);
    let perc = &f.disks[0];
    assert_eq!(perc.name, "sda");
    assert_eq!(perc.model.as_deref(), Some("PERC H730 Mini"));
    assert_eq!(
        perc.wwn.as_deref(),
        Some("naa.6d0946606f1b2c002a8c3b5e1c0e4f21")
    );
    assert_eq!(perc.size, 7812499456 * 512);
    assert!(perc.rotational);
    assert_eq!(
        perc.transport.as_deref(),
        Some("sas"),
        "behind megaraid_sas"
    );
    assert_eq!(perc.partition_table.as_deref(), Some("gpt"));
    assert_eq!(strs(&perc.signatures), ["xfs"]);
    assert!(perc.by_id.is_empty() && perc.by_path.is_empty(), "no udev");
    let ssd = &f.disks[1];
    assert_eq!(ssd.model.as_deref(), Some("SSDSC2KB480G8R"));
    assert_eq!(ssd.transport.as_deref(), Some("sata"));
    assert_eq!(
        ssd.serial.as_deref(),
        Some("PHYF812300AB480BGN"),
        "from VPD page 0x80"
    );
    assert!(!ssd.rotational);
    assert_eq!(ssd.partition_table, None);
    assert_eq!(strs(&ssd.signatures), ["linux_raid_member"]);
    // The facts' disks are what the installer's selectors see.
    assert!(
        crate::disk::Selector {
            model: Some("PERC H730 Mini".into()),
            ..Default::default()
        }
        .matches(&perc.as_disk())
    );

    let pci: Vec<_> = f
        .pci
        .iter()
        .map(|p| {
            (
                p.address.as_str(),
                p.class.as_str(),
                p.id.as_str(),
                p.driver.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        pci,
        [
            ("0000:01:00.0", "0x020000", "14e4:168e", Some("bnx2x")),
            ("0000:01:00.1", "0x020000", "14e4:168e", Some("bnx2x")),
            ("0000:02:00.0", "0x020000", "14e4:165f", Some("tg3")),
            (
                "0000:03:00.0",
                "0x010400",
                "1000:005d",
                Some("megaraid_sas")
            ),
            ("0000:09:00.0", "0x030000", "102b:0534", None),
        ],
        "the AHCI controller (0x0106) is not of interest"
    );
    assert_eq!(
        strs(&f.missing_firmware),
        ["bnx2x/bnx2x-e2-7.13.21.0.fw", "tigon/tg357766.bin"]
    );
    assert_eq!(f.boot_mac.unwrap().to_string(), "24:6e:96:0a:1b:2c");
}

#[test]
fn an_optiplex_with_one_nvme_drive() {
    let f = facts("optiplex");
    assert_eq!(f.dmi.product_name.as_deref(), Some("OptiPlex 7070"));
    assert_eq!(f.firmware, Some(Firmware::Uefi));
    assert_eq!(f.secure_boot, Some(true));
    assert_eq!(f.cpu.count, 8);
    assert_eq!(f.memory_bytes, 32594532 * 1024);
    assert_eq!(f.nics.len(), 1, "br0 is virtual: {:?}", f.nics);
    assert_eq!(f.nics[0].driver.as_deref(), Some("e1000e"));
    assert_eq!(f.nics[0].pci_id.as_deref(), Some("8086:15bc"));
    assert_eq!(f.disks.len(), 1);
    let d = &f.disks[0];
    assert_eq!(d.name, "nvme0n1");
    assert_eq!(d.model.as_deref(), Some("Samsung SSD 970 EVO Plus 500GB"));
    assert_eq!(d.serial.as_deref(), Some("S4EVNX0N123456A"));
    assert_eq!(d.wwn.as_deref(), Some("eui.0025385891b12345"));
    assert_eq!(d.size, 976773168 * 512);
    assert_eq!(d.transport.as_deref(), Some("nvme"));
    assert_eq!(d.partition_table.as_deref(), Some("gpt"));
    assert_eq!(strs(&d.signatures), ["ext4", "vfat"]);
    // Captured with udev: the links to the disk, not its partitions'.
    assert_eq!(
        strs(&d.by_id),
        [
            "nvme-Samsung_SSD_970_EVO_Plus_500GB_S4EVNX0N123456A",
            "nvme-eui.0025385891b12345"
        ]
    );
    assert_eq!(strs(&d.by_path), ["pci-0000:01:00.0-nvme-1"]);
    assert!(f.missing_firmware.is_empty());
    let gpu: Vec<_> = f
        .pci
        .iter()
        .filter(|p| p.class.starts_with("0x03"))
        .collect();
    assert_eq!(gpu.len(), 1);
    assert_eq!(gpu[0].id, "8086:3e98");
}

#[test]
fn a_gpu_node_with_three_nvme_drives_booted_by_bios() {
    let f = facts("gpu");
    assert_eq!(f.dmi.sys_vendor.as_deref(), Some("Supermicro"));
    assert_eq!(
        f.dmi.bios_vendor.as_deref(),
        Some("American Megatrends Inc.")
    );
    assert_eq!(f.firmware, Some(Firmware::Bios));
    assert_eq!(f.secure_boot, None);
    assert_eq!(f.memory_bytes, 395950000 * 1024);
    let nvidia: Vec<_> = f.pci.iter().filter(|p| p.id.starts_with("10de:")).collect();
    assert_eq!(
        nvidia.len(),
        1,
        "the GPU's audio function (0x0403) is not listed"
    );
    assert_eq!(nvidia[0].class, "0x030000");
    assert_eq!(nvidia[0].address, "0000:1a:00.0");
    assert_eq!(nvidia[0].driver, None);
    let disks: Vec<_> = f
        .disks
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.serial.as_deref().unwrap(),
                d.transport.as_deref().unwrap(),
                d.partition_table.as_deref(),
                strs(&d.signatures),
            )
        })
        .collect();
    assert_eq!(
        disks,
        [
            ("nvme0n1", "S64HNE0R100000", "nvme", Some("dos"), vec![]),
            ("nvme1n1", "S64HNE0R100001", "nvme", None, vec![]),
            (
                "nvme2n1",
                "S64HNE0R100002",
                "nvme",
                None,
                vec!["LVM2_member"]
            ),
        ]
    );
    assert!(f.disks.iter().all(|d| d.size == 7501476528 * 512));
}

fn sha(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Protects: inspection never writes a disk. Every disk stand-in of every shape (copied, with
/// known content) hashes the same before and after collecting, and its mtime is unchanged.
#[test]
fn collecting_facts_leaves_every_disk_byte_for_byte_unchanged() {
    for shape in ["dell", "optiplex", "gpu"] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join(shape);
        assert!(
            std::process::Command::new("cp")
                .args(["-a"])
                .arg(fixture(shape))
                .arg(&root)
                .status()
                .unwrap()
                .success()
        );
        let mut disks: Vec<PathBuf> = std::fs::read_dir(root.join("dev"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        disks.sort();
        // Fill the stand-ins with random bytes beyond their signatures: a write anywhere shows.
        for d in &disks {
            let mut b = std::fs::read(d).unwrap();
            let n = b.len();
            b.resize(n + (256 << 10), 0);
            rand::fill(&mut b[n..]);
            std::fs::write(d, &b).unwrap();
        }
        let before: Vec<_> = disks
            .iter()
            .map(|d| (sha(d), std::fs::metadata(d).unwrap().modified().unwrap()))
            .collect();
        let f = collect(&root, "", None);
        assert!(!f.disks.is_empty());
        let after: Vec<_> = disks
            .iter()
            .map(|d| (sha(d), std::fs::metadata(d).unwrap().modified().unwrap()))
            .collect();
        assert_eq!(before, after, "{shape}: a disk changed");
    }
}

#[test]
fn a_disk_that_cannot_be_opened_says_so() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("dell");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(fixture("dell"))
            .arg(&root)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(root.join("dev/sdb")).unwrap();
    let f = collect(&root, "", None);
    assert_eq!(strs(&f.disks[1].signatures), ["unreadable"]);
}

#[test]
fn missing_firmware_from_both_kernel_messages_once_each() {
    let log = "\
bnx2x 0000:01:00.0: Direct firmware load for bnx2x/e2.fw failed with error -2
bnx2x 0000:01:00.0: firmware: failed to load bnx2x/e2.fw (-2)
i915 0000:00:02.0: firmware: failed to load i915/kbl_dmc_ver1_04.bin (-2)
r8169 0000:02:00.0: firmware: failed to load \x1b[31mevil (-2)
nothing here
";
    assert_eq!(
        missing_firmware(log),
        ["bnx2x/e2.fw", "i915/kbl_dmc_ver1_04.bin"],
        "a name with control characters is not a firmware path"
    );
    let many: String = (0..500)
        .map(|i| format!("x: firmware: failed to load f{i}.bin (-2)\n"))
        .collect();
    assert_eq!(missing_firmware(&many).len(), FIRMWARE_MAX);
}

#[test]
fn cpu_and_memory_from_procfs() {
    let c = cpu("processor\t: 0\nmodel name\t: A\n\nprocessor\t: 1\nmodel name\t: A\n");
    assert_eq!((c.model.as_deref(), c.count), (Some("A"), 2));
    assert_eq!(memory("MemFree: 1 kB\nMemTotal:  2048 kB\n"), 2 << 20);
    assert_eq!(memory("garbage"), 0);
}

/// Protects: one pathological sysfs string cannot blow the facts document's size limit.
#[test]
fn long_strings_are_cut() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("class/dmi/id/sys_vendor");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, "é".repeat(10_000)).unwrap();
    let v = dmi(t.path()).sys_vendor.unwrap();
    assert!(v.len() <= STR_MAX && v.starts_with('é'));
}

#[test]
fn transports_from_sysfs_device_paths() {
    let t = |p: &str| transport(Path::new(p));
    assert_eq!(
        t("/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc")
            .as_deref(),
        Some("usb")
    );
    assert_eq!(
        t("/sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda").as_deref(),
        Some("virtio")
    );
    assert_eq!(
        t("/sys/devices/pci0000:00/0000:00:04.0/virtio1/host2/target2:0:0/2:0:0:0/block/sda")
            .as_deref(),
        Some("scsi")
    );
    assert_eq!(
        t("/sys/devices/pci0000:00/0000:00:03.0/0000:05:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sdb")
            .as_deref(),
        Some("sas")
    );
    assert_eq!(
        t("/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1").as_deref(),
        Some("nvme")
    );
    assert_eq!(t("/sys/devices/virtual/block/loop0"), None);
}

/// A one-shot HTTP server on loopback: answers `status` to one request and hands it back.
fn serve_once(status: u16) -> (String, std::thread::JoinHandle<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/inspect/24-6e-96-0a-1b-2c/s3cret/facts",
        l.local_addr().unwrap()
    );
    let h = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s);
        let mut head = String::new();
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        write!(
            r.get_mut(),
            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        (head, body)
    });
    (url, h)
}

#[test]
fn facts_are_posted_as_json_to_the_facts_url() {
    let (url, h) = serve_once(204);
    let root = fixture("dell");
    let mut lines = Vec::new();
    let f = post(&root, "", &url, Some("24:6e:96:0a:1b:2c"), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    let (head, body) = h.join().unwrap();
    assert!(
        head.starts_with("POST /inspect/24-6e-96-0a-1b-2c/s3cret/facts HTTP/1.1"),
        "{head}"
    );
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert_eq!(Facts::from_json(&body).unwrap(), f);
    assert_eq!(f.boot_mac.unwrap().to_string(), "24:6e:96:0a:1b:2c");
    assert!(
        lines[0].contains("Dell Inc. PowerEdge R730, 2 disks"),
        "{lines:?}"
    );
}

#[test]
fn a_refused_post_is_an_error_and_not_retried() {
    let (url, h) = serve_once(403);
    let r = post(&fixture("gpu"), "", &url, None, &mut |_| {});
    h.join().unwrap();
    assert!(matches!(r, Err(InspectError::Rejected { status: 403, .. })));
}

#[test]
fn inspection_ends_in_power_off_unless_told_to_reboot() {
    use crate::plan::After;
    use nix::sys::reboot::RebootMode;
    assert_eq!(reboot_mode(After::default()), RebootMode::RB_POWER_OFF);
    assert_eq!(reboot_mode(After::Reboot), RebootMode::RB_AUTOBOOT);
}

#[test]
fn secure_boot_from_efivars_or_else_the_kernel_log() {
    let t = tempfile::tempdir().unwrap();
    let v = t
        .path()
        .join("firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c");
    std::fs::create_dir_all(v.parent().unwrap()).unwrap();
    assert_eq!(secure_boot(t.path()), None);
    std::fs::write(&v, [6, 0, 0, 0, 1]).unwrap();
    assert_eq!(secure_boot(t.path()), Some(true));
    std::fs::write(&v, [6, 0, 0, 0, 0]).unwrap();
    assert_eq!(secure_boot(t.path()), Some(false));
    std::fs::write(&v, [6, 0, 0, 0]).unwrap();
    assert_eq!(secure_boot(t.path()), None, "truncated");
    assert_eq!(
        secure_boot_from_log("x\nsecureboot: Secure boot enabled\n"),
        Some(true)
    );
    assert_eq!(
        secure_boot_from_log("secureboot: Secure boot disabled"),
        Some(false)
    );
    assert_eq!(
        secure_boot_from_log("secureboot: Secure boot could not be determined"),
        None
    );
}

/// A qemu virtio NIC: the driver is on the virtio device, the PCI id on its parent function.
#[test]
fn a_virtio_nic_reports_its_pci_function() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let s = t.path();
    let w = |p: &str, v: &str| {
        let p = s.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    let pci = "devices/pci0000:00/0000:00:03.0";
    w(&format!("{pci}/class"), "0x020000\n");
    w(&format!("{pci}/vendor"), "0x1af4\n");
    w(&format!("{pci}/device"), "0x1041\n");
    w(&format!("{pci}/virtio0/vendor"), "0x1af4\n");
    w(&format!("{pci}/virtio0/device"), "0x0001\n");
    w(
        &format!("{pci}/virtio0/net/eth0/address"),
        "52:54:00:12:34:56\n",
    );
    w(&format!("{pci}/virtio0/net/eth0/carrier"), "1\n");
    w(&format!("{pci}/virtio0/net/eth0/speed"), "-1\n");
    std::fs::create_dir_all(s.join("bus/virtio/drivers/virtio_net")).unwrap();
    symlink(
        "../../../../../bus/virtio/drivers/virtio_net",
        s.join(format!("{pci}/virtio0/driver")),
    )
    .unwrap();
    symlink(
        "../../../virtio0",
        s.join(format!("{pci}/virtio0/net/eth0/device")),
    )
    .unwrap();
    std::fs::create_dir_all(s.join("class/net")).unwrap();
    symlink(
        format!("../../{pci}/virtio0/net/eth0"),
        s.join("class/net/eth0"),
    )
    .unwrap();
    let n = nics(s);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].driver.as_deref(), Some("virtio_net"));
    assert_eq!(n[0].pci_id.as_deref(), Some("1af4:1041"));
    assert_eq!(n[0].speed_mbps, None, "-1 is no speed");
}

/// Protects: the facts document always fits what the appliance accepts (`FACTS_MAX`), however
/// many disks, links and long strings a machine has. Fails without `fit` or the string caps.
#[test]
fn a_huge_machine_still_fits_the_facts_limit() {
    use std::os::unix::fs::symlink;
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let long = |c: char| c.to_string().repeat(1000);
    std::fs::create_dir_all(r.join("dev/disk/by-id")).unwrap();
    for i in 0..300 {
        let name = format!("sd{i:03}");
        let b = r.join("sys/block").join(&name);
        std::fs::create_dir_all(b.join("device")).unwrap();
        std::fs::write(b.join("size"), "1000000\n").unwrap();
        std::fs::write(b.join("device/model"), long('"')).unwrap();
        std::fs::write(b.join("device/serial"), long('\\')).unwrap();
        std::fs::write(b.join("device/wwid"), long('\u{7f}') + "x").unwrap();
        std::fs::write(r.join("dev").join(&name), b"").unwrap();
        for l in 0..20 {
            symlink(
                format!("../../{name}"),
                r.join(format!("dev/disk/by-id/{}-{name}-{l}", "q".repeat(230))),
            )
            .unwrap();
        }
    }
    let f = collect(r, "", None);
    let json = serde_json::to_vec(&f).unwrap();
    assert!(json.len() <= FACTS_MAX, "{} bytes", json.len());
    // Each of these disks carries 16 links of 256 bytes (~4 KiB): dozens still fit.
    assert!(
        f.disks.len() > 40,
        "{} disks: most of what fits is reported",
        f.disks.len()
    );
    assert!(f.disks.iter().all(|d| d.by_id.len() == LINKS_MAX));
    assert_eq!(
        f.disks[0].wwn.as_deref(),
        Some("x"),
        "control characters dropped"
    );
    assert_eq!(Facts::from_json(&json).unwrap(), f);
}

/// `builder adopt` and `builder validate` compare selectors with these facts; the installer
/// matches the same selectors on `system::sysfs_disks`. For a SATA disk both must say the
/// whole ATA model (IDENTIFY data), not the 16-character sysfs one, or an adopted selector
/// would never match in the installer (or the reverse). Fails if the two read it differently.
#[test]
fn facts_and_the_installer_agree_on_a_long_sata_model() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let dev = root.join("sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0");
    let w = |p: &Path, v: &str| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    w(&dev.join("block/sda/size"), "468862128\n");
    w(&dev.join("block/sda/device/vendor"), "ATA     \n");
    w(&dev.join("block/sda/device/model"), "INTEL SSDSC2KB24\n");
    w(
        &root.join("sys/devices/pci0000:00/0000:00:1f.2/ata1/link1/dev1.0/ata_device/dev1.0/id"),
        include_str!("../../tests/fixtures/ata/qemu-ide-hd-sysfs-id.txt"),
    );
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink(dev.join("block/sda"), root.join("sys/block/sda")).unwrap();
    let facts = disks(root);
    let installer = crate::system::sysfs_disks(&root.join("sys"), "");
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].model.as_deref(), Some("INTEL SSDSC2KB240G8"));
    assert_eq!(installer[0].model, facts[0].model);
    let sel = crate::disk::Selector {
        model: facts[0].model.clone(),
        ..Default::default()
    };
    assert!(sel.matches(&facts[0].as_disk()) && sel.matches(&installer[0]));
}
