//! `builder validate --facts`: the inventory against what each machine reported about itself
//! from an inspection boot. Every finding points at the inventory line it concerns, like
//! every other rule.

use std::collections::BTreeMap;

use images::bundle::facts::{DiskFacts, Facts};
use images::bundle::{Mac, printable};

use crate::diag::Diagnostics;
use crate::inventory::model::{DiskPurpose, Inventory};
use crate::inventory::profiles::span;
use crate::inventory::raw::RawInventory;

/// The Debian package that ships a firmware file the kernel asked for
/// (`/lib/firmware/<file>`), by the file's folder or prefix. Debian bookworm, non-free-firmware.
pub fn firmware_package(file: &str) -> Option<&'static str> {
    const TABLE: &[(&str, &str)] = &[
        ("bnx2x/", "firmware-bnx2x"),
        ("bnx2/", "firmware-bnx2"),
        ("rtl_nic/", "firmware-realtek"),
        ("rtlwifi/", "firmware-realtek"),
        ("rtl_bt/", "firmware-realtek"),
        ("i915/", "firmware-misc-nonfree"),
        ("nvidia/", "firmware-misc-nonfree"),
        ("mellanox/", "firmware-misc-nonfree"),
        ("tigon/", "firmware-misc-nonfree"),
        ("intel/ice/", "firmware-misc-nonfree"),
        ("amdgpu/", "firmware-amd-graphics"),
        ("radeon/", "firmware-amd-graphics"),
        ("qed/", "firmware-qlogic"),
        ("ql2", "firmware-qlogic"),
        ("iwlwifi-", "firmware-iwlwifi"),
        ("brcm/", "firmware-brcm80211"),
        ("ath10k/", "firmware-atheros"),
        ("ath11k/", "firmware-atheros"),
        ("cxgb4/", "firmware-misc-nonfree"),
        ("liquidio/", "firmware-misc-nonfree"),
    ];
    let f = file.trim_start_matches("/lib/firmware/");
    TABLE
        .iter()
        .find(|(prefix, _)| f.starts_with(prefix))
        .map(|(_, p)| *p)
}

fn list(ds: &[&DiskFacts]) -> String {
    if ds.is_empty() {
        return "none".into();
    }
    ds.iter()
        .map(|d| crate::adopt::describe(d))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check every node that has facts (by its boot MAC, else an extra MAC). Returns the
/// hostnames checked.
pub fn check(
    file: &str,
    raw: &RawInventory,
    inv: &Inventory,
    facts: &BTreeMap<Mac, Facts>,
    d: &mut Diagnostics,
) -> Vec<String> {
    let mut checked = Vec::new();
    for (i, sn) in raw.nodes.iter().enumerate() {
        let n = &sn.value;
        let Some(node) = inv.node(&n.hostname.value) else {
            continue;
        };
        let Some(f) = std::iter::once(&node.mac)
            .chain(&node.extra_macs)
            .find_map(|m| facts.get(m))
        else {
            continue;
        };
        checked.push(node.hostname.to_string());
        let p = |x: &str| format!("nodes[{i}].{x}");
        let pr = &node.profile;
        let disks: Vec<&DiskFacts> = f.disks.iter().collect();
        let pick = |sel: &images::disk::Selector| -> Vec<&DiskFacts> {
            disks
                .iter()
                .copied()
                .filter(|x| sel.matches(&x.as_disk()))
                .collect()
        };
        let all = list(&disks);

        // Install disk: the node's own selector when it has one, else the profile's.
        let install = pick(&pr.install_disk);
        if install.len() != 1 {
            let (at, path, whose) = match &n.install_disk {
                Some(s) => (span(file, s), p("install_disk"), "this node's".to_string()),
                None => (
                    span(file, &n.profile),
                    p("profile"),
                    format!("profile `{}`'s", pr.name),
                ),
            };
            d.error(
                at,
                path,
                format!(
                    "{whose} install_disk selector matches {} of this machine's disks ({}); it must match exactly one. Its disks: {all}. `builder adopt` derives a selector from these facts",
                    install.len(),
                    list(&install)
                ),
            );
        }
        for (j, dd) in pr.data_disks.iter().enumerate() {
            let m = pick(&dd.selector);
            let what = match dd.purpose {
                DiskPurpose::Longhorn => "Longhorn tier disk",
                DiskPurpose::NfsPool => "NFS pool disk",
            };
            if m.is_empty() {
                d.error(
                    span(file, &n.profile),
                    p("profile"),
                    format!(
                        "{what} `{}` (profile `{}` data_disks[{j}]) does not exist on this machine: its selector matches none of its disks ({all})",
                        dd.name, pr.name
                    ),
                );
            } else if m.len() > 1 {
                d.error(
                    span(file, &n.profile),
                    p("profile"),
                    format!(
                        "{what} `{}` (profile `{}` data_disks[{j}]) matches {} disks ({}); it must match exactly one",
                        dd.name,
                        pr.name,
                        m.len(),
                        list(&m)
                    ),
                );
            }
            if let Some(x) = m.iter().find(|x| install.iter().any(|y| y.name == x.name)) {
                d.error(
                    span(file, &n.profile),
                    p("profile"),
                    format!(
                        "data disk `{}` (profile `{}` data_disks[{j}]) selects {}, which the install selector also selects: installing would wipe it",
                        dd.name,
                        pr.name,
                        crate::adopt::describe(x)
                    ),
                );
            }
        }

        // The boot NIC: present, and a driver bound to it (else the installer has no network).
        match f.nics.iter().find(|x| x.mac == node.mac) {
            None => d.error(
                span(file, &n.mac),
                p("mac"),
                format!(
                    "{} is not among the NICs this machine reported ({})",
                    node.mac,
                    printable(
                        &f.nics
                            .iter()
                            .map(|x| format!("{} {}", x.name, x.mac))
                            .collect::<Vec<_>>()
                            .join(", "),
                        400
                    )
                ),
            ),
            Some(nic) if nic.driver.is_none() => d.error(
                span(file, &n.mac),
                p("mac"),
                format!(
                    "NIC {} ({}{}) has no driver bound in the installer kernel: it cannot install over it",
                    printable(&nic.name, 32),
                    node.mac,
                    nic.pci_id
                        .as_deref()
                        .map(|id| format!(", PCI {}", printable(id, 16)))
                        .unwrap_or_default()
                ),
            ),
            Some(_) => {}
        }

        if let Some(fw) = f.firmware
            && fw != pr.firmware
        {
            d.error(
                span(file, &n.profile),
                p("profile"),
                format!(
                    "the machine booted in {fw} mode, profile `{}` says {}: its DHCP answer would name the wrong boot file; switch the firmware's boot mode or use a {fw} profile",
                    pr.name, pr.firmware
                ),
            );
        }

        if let Some(g) = &pr.gpu
            && !has_gpu(&g.vendor, &f.pci)
        {
            d.error(
                n.gpu
                    .as_ref()
                    .map(|g| span(file, g))
                    .unwrap_or_else(|| span(file, &n.profile)),
                p(if n.gpu.is_some() { "gpu" } else { "profile" }),
                format!(
                    "profile `{}` has a {} GPU, and this machine reported none (no PCI display controller of that vendor; a BMC's VGA does not count)",
                    pr.name, g.vendor
                ),
            );
        }

        let mut seen = BTreeMap::new();
        for fwf in &f.missing_firmware {
            let pkg = firmware_package(fwf);
            let installed = |pkg: &str| {
                node.packages.iter().any(|x| x == pkg)
                    || node
                        .gpu
                        .as_ref()
                        .is_some_and(|g| g.driver_packages.iter().any(|x| x == pkg))
            };
            if pkg.is_some_and(installed) {
                continue;
            }
            seen.entry(pkg)
                .or_insert_with(Vec::new)
                .push(printable(fwf, 120));
        }
        for (pkg, files) in seen {
            let fix = match pkg {
                Some(pkg) => format!(
                    "Debian package `{pkg}` ships it: add it to the node's overrides.packages (or the profile's packages)"
                ),
                None => "find its package with `apt-file search`, and add it to the node's overrides.packages".into(),
            };
            d.error(
                span(file, &n.hostname),
                p("hostname"),
                format!(
                    "the kernel failed to load firmware {}; {fix}",
                    files.join(", ")
                ),
            );
        }
    }
    checked
}

/// Facts files of a folder: `<mac-dashed>.json` each (other files are ignored).
pub fn read_dir(dir: &std::path::Path) -> Result<BTreeMap<Mac, Facts>, String> {
    let mut out = BTreeMap::new();
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in rd {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Ok(mac) = stem.parse::<Mac>() else {
            continue;
        };
        let p = e.path();
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.len() > images::bundle::facts::FACTS_MAX as u64 {
            return Err(format!(
                "{}: larger than a facts document can be",
                p.display()
            ));
        }
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let f = Facts::from_json(&bytes).map_err(|e| format!("{}: {e}", p.display()))?;
        out.insert(mac, f);
    }
    Ok(out)
}

/// The facts of a `GET /api/v1/discovered` answer, by MAC (machines without facts left out).
pub fn from_discovered(body: &serde_json::Value) -> Result<BTreeMap<Mac, Facts>, String> {
    let machines = body["machines"]
        .as_array()
        .ok_or("the answer has no `machines` list")?;
    let mut out = BTreeMap::new();
    for m in machines {
        let Some(mac) = m["mac"].as_str().and_then(|s| s.parse::<Mac>().ok()) else {
            continue;
        };
        if m["facts"].is_null() {
            continue;
        }
        let bytes = serde_json::to_vec(&m["facts"]).map_err(|e| e.to_string())?;
        let f = Facts::from_json(&bytes).map_err(|e| format!("facts of {mac}: {e}"))?;
        out.insert(mac, f);
    }
    Ok(out)
}

/// Whether `pci` has a display controller (class 0x03) of the profile's GPU vendor. A server's
/// BMC (iDRAC's Matrox, ASPEED) is a display controller too: the vendor tells them apart.
pub fn has_gpu(vendor: &str, pci: &[images::bundle::facts::PciDevice]) -> bool {
    let want = match vendor.to_ascii_lowercase().as_str() {
        "nvidia" => Some("10de"),
        "amd" | "ati" => Some("1002"),
        "intel" => Some("8086"),
        _ => None,
    };
    pci.iter().any(|x| {
        x.class.starts_with("0x03")
            && match want {
                Some(id) => x.id.starts_with(&format!("{id}:")),
                // An unknown vendor name: a 3D controller (0x0302) at least is no BMC.
                None => x.class.starts_with("0x0302"),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bmc_vga_is_not_a_gpu() {
        let dev = |class: &str, id: &str| images::bundle::facts::PciDevice {
            address: "0000:03:00.0".into(),
            class: class.into(),
            id: id.into(),
            driver: None,
        };
        let matrox = [dev("0x030000", "102b:0534")];
        assert!(!has_gpu("nvidia", &matrox));
        let tesla = [dev("0x030200", "10de:1db4"), dev("0x030000", "102b:0534")];
        assert!(has_gpu("nvidia", &tesla));
        assert!(!has_gpu("amd", &tesla));
        assert!(
            has_gpu("somebody", &tesla),
            "a 3D controller counts for an unknown vendor"
        );
    }

    #[test]
    fn firmware_files_name_their_package() {
        assert_eq!(
            firmware_package("bnx2x/bnx2x-e2-7.13.21.0.fw"),
            Some("firmware-bnx2x")
        );
        assert_eq!(
            firmware_package("/lib/firmware/rtl_nic/rtl8168h-2.fw"),
            Some("firmware-realtek")
        );
        assert_eq!(
            firmware_package("i915/kbl_dmc_ver1_04.bin"),
            Some("firmware-misc-nonfree")
        );
        assert_eq!(
            firmware_package("amdgpu/polaris10_mc.bin"),
            Some("firmware-amd-graphics")
        );
        assert_eq!(firmware_package("unknown/x.bin"), None);
    }
}
