//! `builder discover`: the machines a pxe server saw that are not in the inventory, with what
//! their inspection boots reported. Every string in it came from the network (DHCP options,
//! facts a machine posted): printed only through `printable`.

use anyhow::{Context, Result, bail};
use images::bundle::discovered::{Discovered, DiscoveredList};
use images::bundle::facts::Facts;
use images::bundle::printable;
use images::http;

use crate::cli::DiscoverArgs;

pub fn discover(a: &DiscoverArgs) -> Result<()> {
    let token =
        images::api_token::resolve(a.api_token_file.as_deref()).context("reading the API token")?;
    let url = format!("{}/api/v1/discovered", a.server.trim_end_matches('/'));
    let (status, body) = http::exchange("GET", &url, None, token.as_deref())
        .map_err(|e| anyhow::anyhow!("the pxe server did not answer: {e}"))?;
    if status == 401 {
        bail!(
            "{url}: HTTP 401: the pxe server wants its operator API token: pass --api-token-file \
             FILE or set IRONSEED_API_TOKEN (pxe serve keeps it in STATE/api-token)"
        );
    }
    if status != 200 {
        bail!(
            "{url}: HTTP {status}: {}",
            printable(String::from_utf8_lossy(&body).trim(), 512)
        );
    }
    let list: DiscoveredList =
        serde_json::from_slice(&body).with_context(|| format!("{url}: not a discovered list"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.machines.is_empty() {
        println!(
            "no machines discovered yet: power on new machines with network boot first (pxe \
             serve --inspect unknown reports their hardware)"
        );
        return Ok(());
    }
    print!("{}", table(&list.machines));
    Ok(())
}

/// `64G`, `4T`, `512M`: a disk size in binary units, rounded, as an operator reads a spec sheet.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 10.0 || v.fract() < 0.05 {
        format!("{:.0}{}", v, UNITS[u])
    } else {
        format!("{:.1}{}", v, UNITS[u])
    }
}

/// `3 disks: 64G nvme, 4T sas, 480G sata`.
pub fn disks(f: &Facts) -> String {
    let each: Vec<String> = f
        .disks
        .iter()
        .map(|d| {
            let t = d
                .transport
                .as_deref()
                .unwrap_or(if d.rotational { "hdd" } else { "ssd" });
            format!("{} {}", size(d.size), printable(t, 16))
        })
        .collect();
    let n = f.disks.len();
    format!(
        "{n} disk{}{}{}",
        if n == 1 { "" } else { "s" },
        if n > 0 { ": " } else { "" },
        each.join(", ")
    )
}

/// `eno1 e1000e up 1000M, eno2 igb down`.
pub fn nics(f: &Facts) -> String {
    let each: Vec<String> = f
        .nics
        .iter()
        .map(|n| {
            let mut s = format!(
                "{} {}",
                printable(&n.name, 16),
                printable(n.driver.as_deref().unwrap_or("?"), 24)
            );
            s.push_str(if n.carrier { " up" } else { " down" });
            if let Some(sp) = n.speed_mbps.filter(|_| n.carrier) {
                s.push_str(&format!(" {sp}M"));
            }
            s
        })
        .collect();
    if each.is_empty() {
        "-".into()
    } else {
        each.join(", ")
    }
}

/// The machine as one row: from facts when it has them, else from DHCP only.
pub fn table(machines: &[Discovered]) -> String {
    let row = |c: [&str; 5]| {
        format!(
            "{:<18} {:<5} {:<28} {:<36} {}\n",
            c[0], c[1], c[2], c[3], c[4]
        )
    };
    let mut out = row(["MAC", "BOOT", "VENDOR / PRODUCT", "DISKS", "NICS"]);
    for m in machines {
        let mac = m.mac.to_string();
        match &m.facts {
            Some(f) => {
                let d = |s: &Option<String>| printable(s.as_deref().unwrap_or("?"), 24);
                let product = format!("{} {}", d(&f.dmi.sys_vendor), d(&f.dmi.product_name));
                let boot = match f.firmware {
                    Some(images::bundle::Firmware::Uefi) => "uefi",
                    Some(images::bundle::Firmware::Bios) => "bios",
                    None => m.boot_mode(),
                };
                out.push_str(&row([&mac, boot, &product, &disks(f), &nics(f)]));
            }
            None => {
                let vc = printable(m.vendor_class.as_deref().unwrap_or("-"), 40);
                let what = if m.inspect {
                    "inspection armed, no facts yet".to_string()
                } else {
                    "not inspected (pxe inspect MAC)".to_string()
                };
                out.push_str(&row([&mac, m.boot_mode(), &vc, &what, "-"]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use images::bundle::facts::{DiskFacts, Nic};

    fn disk(size: u64, transport: &str) -> DiskFacts {
        DiskFacts {
            name: "sda".into(),
            model: None,
            serial: None,
            wwn: None,
            size,
            rotational: false,
            removable: false,
            transport: Some(transport.into()),
            by_id: vec![],
            by_path: vec![],
            partition_table: None,
            signatures: vec![],
        }
    }

    #[test]
    fn sizes_read_like_spec_sheets() {
        assert_eq!(size(64 << 30), "64G");
        assert_eq!(size(4 << 40), "4T");
        assert_eq!(size(480_103_981_056), "447G");
        assert_eq!(size(1536 << 20), "1.5G");
        assert_eq!(size(512), "512B");
    }

    /// Protects the operator's terminal: DMI strings and NIC names a machine posted cannot
    /// carry escape sequences or line breaks into the table.
    #[test]
    fn the_table_summarises_facts_and_strips_control_characters() {
        let f = Facts {
            version: 1,
            dmi: images::bundle::facts::Dmi {
                sys_vendor: Some("Dell Inc.\x1b[2J".into()),
                product_name: Some("PowerEdge R630\nfake".into()),
                ..Default::default()
            },
            firmware: Some(images::bundle::Firmware::Uefi),
            disks: vec![
                disk(64 << 30, "nvme"),
                disk(4 << 40, "sas"),
                disk(480 << 30, "sata"),
            ],
            nics: vec![Nic {
                name: "eno1".into(),
                mac: "52:54:00:00:00:01".parse().unwrap(),
                driver: Some("tg3".into()),
                pci_id: None,
                carrier: true,
                speed_mbps: Some(1000),
            }],
            ..Facts::default()
        };
        let m = |facts, arch| Discovered {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            arch,
            vendor_class: Some("PXEClient\x1b]0;x\x07".into()),
            uuid: None,
            first_seen_ms: 0,
            last_seen_ms: 0,
            count: 1,
            interface: None,
            inspect: false,
            facts,
        };
        let t = table(&[m(Some(f), None), m(None, Some(0))]);
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.contains("3 disks: 64G nvme, 4T sas, 480G sata"), "{t}");
        assert!(t.contains("Dell Inc.[2J PowerEdge R630fake"), "{t}");
        assert!(t.contains("eno1 tg3 up 1000M"), "{t}");
        assert!(t.contains("uefi") && t.contains("bios"), "{t}");
        assert!(t.contains("not inspected"), "{t}");
    }
}
