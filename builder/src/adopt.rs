//! `builder adopt`: the pure half. Which disk a new machine installs on and how to name it
//! stably, which address it gets, and the text of its inventory entry spliced into the
//! operator's file. The command (`main`'s `adopt_cmd`) only reads files and the pxe API.

use std::net::Ipv4Addr;

use images::bundle::facts::DiskFacts;
use images::disk::Selector;

use crate::inventory::model::{DataDisk, Inventory, Profile};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdoptError {
    #[error("the machine reported no disks")]
    NoDisks,
    #[error(
        "cannot tell which disk is the install disk: {0} could each be it (none is a data disk of \
         the profile); make the profile's install_disk pick one, or write the node's install_disk \
         by hand"
    )]
    Ambiguous(String),
    #[error(
        "every disk is a data disk of the profile or removable; there is nothing to install on"
    )]
    NoCandidate,
    #[error(
        "disk {0}: no attribute (wwn, serial, by-id link, model+size) names it alone without \
         also possibly naming a data disk; write the node's install_disk by hand"
    )]
    NoUniqueAttribute(String),
    #[error("no free address left in {0} (gateway, appliance, VIP, DHCP pool and nodes excluded)")]
    NoFreeAddress(String),
    #[error("{file}: the `nodes:` list is not a block list of mappings here; add the node by hand")]
    Layout { file: String },
}

/// A derived install-disk selector and why it was chosen, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub selector: Selector,
    /// The disk it names (kernel name at inspection time, for the message only).
    pub disk: String,
    pub why: String,
}

/// What `adopt` writes for the install disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallChoice {
    /// The profile's selector picks exactly one of the machine's disks: no override.
    Profile { disk: String },
    /// A node-level `install_disk` override.
    Override(Derived),
}

fn matching<'a>(sel: &Selector, disks: &'a [DiskFacts]) -> Vec<&'a DiskFacts> {
    disks.iter().filter(|d| sel.matches(&d.as_disk())).collect()
}

fn is_data_disk(d: &DiskFacts, data: &[DataDisk]) -> bool {
    data.iter().any(|dd| dd.selector.matches(&d.as_disk()))
}

fn names(ds: &[&DiskFacts]) -> String {
    ds.iter()
        .map(|d| describe(d))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sda (PERC H730 Mini, 4000 GB)`, escaped: the model came over the network.
pub fn describe(d: &DiskFacts) -> String {
    let model = d.model.as_deref().unwrap_or("no model");
    images::bundle::printable(
        &format!("{} ({model}, {} GB)", d.name, d.size / 1_000_000_000),
        200,
    )
}

/// The install disk of a machine with `disks`, for `profile`. When the profile's selector
/// already picks exactly one disk (and it is not a data disk) nothing is overridden; otherwise
/// the one disk that is neither a data disk nor removable gets its own selector.
pub fn choose_install(profile: &Profile, disks: &[DiskFacts]) -> Result<InstallChoice, AdoptError> {
    if disks.is_empty() {
        return Err(AdoptError::NoDisks);
    }
    let by_profile = matching(&profile.install_disk, disks);
    if let [d] = by_profile[..]
        && !is_data_disk(d, &profile.data_disks)
    {
        return Ok(InstallChoice::Profile {
            disk: d.name.clone(),
        });
    }
    let free: Vec<&DiskFacts> = disks
        .iter()
        .filter(|d| !d.removable && !is_data_disk(d, &profile.data_disks))
        .collect();
    // Several candidates the profile's selector narrows to one are still that one.
    let narrowed: Vec<&DiskFacts> = free
        .iter()
        .copied()
        .filter(|d| by_profile.iter().any(|p| p.name == d.name))
        .collect();
    let target = match (&free[..], &narrowed[..]) {
        ([], _) => return Err(AdoptError::NoCandidate),
        ([d], _) | (_, [d]) => *d,
        _ => return Err(AdoptError::Ambiguous(names(&free))),
    };
    derive_selector(target, disks, &profile.data_disks).map(InstallChoice::Override)
}

/// The most stable selector that matches `target` and no other of `disks`, and that the
/// inventory's own rule can prove never picks a data disk (`Selector::may_overlap`): wwn, then
/// serial, then a by-id link, then model + exact size. Attributes a data-disk selector sets
/// (model, rotational, size) are added from `target`'s own facts where that separates them.
pub fn derive_selector(
    target: &DiskFacts,
    disks: &[DiskFacts],
    data: &[DataDisk],
) -> Result<Derived, AdoptError> {
    let gb = target.size / 1_000_000_000;
    let mut tries: Vec<(Selector, String)> = Vec::new();
    if let Some(w) = &target.wwn {
        tries.push((
            Selector {
                wwn: Some(w.clone()),
                ..Default::default()
            },
            "its WWN is burnt into the device and unique".into(),
        ));
    }
    if let Some(s) = &target.serial {
        tries.push((
            Selector {
                serial: Some(s.clone()),
                ..Default::default()
            },
            "its serial number is unique among the machine's disks".into(),
        ));
    }
    for l in &target.by_id {
        tries.push((
            Selector {
                by_id: Some(l.clone()),
                ..Default::default()
            },
            format!("its /dev/disk/by-id link `{l}` is unique"),
        ));
    }
    if let Some(m) = &target.model {
        tries.push((
            Selector {
                model: Some(m.clone()),
                min_size_gb: Some(gb),
                max_size_gb: Some(gb),
                ..Default::default()
            },
            "no other disk has its model and size (it has no unique WWN, serial or by-id link)"
                .into(),
        ));
    }
    for (sel, why) in tries {
        let m = matching(&sel, disks);
        if !(m.len() == 1 && m[0].name == target.name) {
            continue;
        }
        let Some((sel, added)) = separate(sel, target, data) else {
            continue;
        };
        let why = if added.is_empty() {
            why
        } else {
            format!(
                "{why}; with its {} too, so the inventory can prove it never picks data disk {}",
                added
                    .iter()
                    .map(|(a, _)| *a)
                    .collect::<Vec<_>>()
                    .join(" and "),
                added
                    .iter()
                    .map(|(_, d)| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Ok(Derived {
            selector: sel,
            disk: target.name.clone(),
            why,
        });
    }
    Err(AdoptError::NoUniqueAttribute(describe(target)))
}

/// `sel` plus whatever of `target`'s own attributes makes it provably disjoint from every data
/// disk selector (and which attribute was added for which data disk), or `None` when nothing
/// does.
#[allow(clippy::type_complexity)]
fn separate(
    mut sel: Selector,
    target: &DiskFacts,
    data: &[DataDisk],
) -> Option<(Selector, Vec<(&'static str, String)>)> {
    let gb = target.size / 1_000_000_000;
    let mut added = Vec::new();
    for dd in data {
        if !sel.may_overlap(&dd.selector) {
            continue;
        }
        let s = &dd.selector;
        let what = if s.model.is_some() && target.model.is_some() && target.model != s.model {
            sel.model = target.model.clone();
            "model"
        } else if s.rotational.is_some_and(|r| r != target.rotational) {
            sel.rotational = Some(target.rotational);
            "rotational flag"
        } else if s.min_size_gb.is_some() || s.max_size_gb.is_some() {
            sel.min_size_gb = Some(gb);
            sel.max_size_gb = Some(gb);
            "exact size"
        } else {
            return None;
        };
        if sel.may_overlap(s) || !sel.matches(&target.as_disk()) {
            return None;
        }
        added.push((what, dd.name.clone()));
    }
    Some((sel, added))
}

/// The next address for a new node: the first free host address after the highest node
/// address (addresses then follow the plan's order), else the first free one in the subnet.
/// Never the network/broadcast address, the gateway, the appliance, the VIP, a DNS server, an
/// address of the DHCP pool or of another node.
pub fn next_free_ip(inv: &Inventory) -> Result<Ipv4Addr, AdoptError> {
    let net = &inv.network.subnet;
    let taken = |ip: Ipv4Addr| {
        ip == net.network()
            || (net.prefix_len() < 31 && ip == net.broadcast())
            || ip == inv.network.gateway
            || ip == inv.appliance.ip
            || ip == inv.cluster.api.vip
            || inv.network.dns.contains(&ip)
            || inv
                .network
                .dhcp_pool
                .as_ref()
                .is_some_and(|p| p.contains(ip))
            || inv.nodes.iter().any(|n| n.ip == ip)
    };
    let lo = u32::from(net.network());
    let hi = u32::from(net.broadcast());
    let after = inv
        .nodes
        .iter()
        .map(|n| u32::from(n.ip))
        .max()
        .unwrap_or(lo);
    (after..=hi)
        .chain(lo..after)
        .map(Ipv4Addr::from)
        .find(|ip| !taken(*ip))
        .ok_or_else(|| AdoptError::NoFreeAddress(net.to_string()))
}

/// A YAML scalar that is always read back as this exact string: JSON's string syntax is a
/// YAML double-quoted scalar, and it escapes everything that could end it or start a line.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The new `nodes:` entry. `indent` is the column of the list's `-`. Every value is either
/// already validated (hostname, role, profile, MAC, address) or quoted (selector strings
/// from the machine's own facts), so nothing here can change the document's structure.
pub struct NewNode<'a> {
    pub hostname: &'a str,
    pub role: &'a str,
    pub profile: &'a str,
    pub mac: &'a str,
    pub ip: Ipv4Addr,
    pub install: Option<&'a Derived>,
    pub comment: &'a str,
}

pub fn entry_yaml(n: &NewNode, indent: usize) -> String {
    let d = " ".repeat(indent);
    let k = " ".repeat(indent + 2);
    let mut s = String::new();
    // The comment is ours (a date-free note), one line, no newline can reach it.
    let comment: String = n.comment.chars().filter(|c| !c.is_control()).collect();
    if !comment.is_empty() {
        s += &format!("{d}# {comment}\n");
    }
    s += &format!("{d}- hostname: {}\n", n.hostname);
    s += &format!("{k}role: {}\n", n.role);
    s += &format!("{k}profile: {}\n", n.profile);
    s += &format!("{k}mac: {}\n", n.mac);
    s += &format!("{k}ip: {}\n", n.ip);
    if let Some(i) = n.install {
        s += &format!("{k}install_disk:\n");
        let sel = &i.selector;
        let kk = " ".repeat(indent + 4);
        for (key, v) in [
            ("wwn", &sel.wwn),
            ("serial", &sel.serial),
            ("by_id", &sel.by_id),
            ("by_path", &sel.by_path),
            ("model", &sel.model),
        ] {
            if let Some(v) = v {
                s += &format!("{kk}{key}: {}\n", quoted(v));
            }
        }
        if let Some(r) = sel.rotational {
            s += &format!("{kk}rotational: {r}\n");
        }
        if let Some(v) = sel.min_size_gb {
            s += &format!("{kk}min_size_gb: {v}\n");
        }
        if let Some(v) = sel.max_size_gb {
            s += &format!("{kk}max_size_gb: {v}\n");
        }
    }
    s
}

/// A line that ends a top-level block: the next key, or a document marker (`---`, `...`).
fn top_level_key(line: &str) -> bool {
    line.starts_with(|c: char| !c.is_whitespace() && c != '#' && c != '-')
        || line.starts_with("---")
        || line.starts_with("...")
}

fn content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// Where the new entry goes and the column of the list's `-`: after the last line of the
/// last entry of the top-level block list `nodes:` (comments after it, which usually
/// introduce the next section, stay where they are).
pub fn insertion_point(file: &str, text: &str) -> Result<(usize, usize), AdoptError> {
    let layout = || AdoptError::Layout { file: file.into() };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let start = lines
        .iter()
        .position(|l| {
            l.strip_prefix("nodes:")
                .is_some_and(|r| r.trim().is_empty() || r.trim_start().starts_with('#'))
        })
        .ok_or_else(layout)?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| top_level_key(l))
        .map_or(lines.len(), |p| start + 1 + p);
    let body = &lines[start + 1..end];
    let dash = body
        .iter()
        .find(|l| content(l))
        .filter(|l| l.trim_start().starts_with("- "))
        .ok_or_else(layout)?;
    let indent = dash.len() - dash.trim_start().len();
    // The entry ends at the last content line of the block.
    let last = body.iter().rposition(|l| content(l)).ok_or_else(layout)?;
    let at: usize = lines[..start + 1 + last + 1].iter().map(|l| l.len()).sum();
    Ok((at, indent))
}

/// `text` with `entry` (from [`entry_yaml`]) inserted at `at`; a missing final newline before
/// it is supplied.
pub fn splice(text: &str, at: usize, entry: &str) -> String {
    let mut out = String::with_capacity(text.len() + entry.len() + 1);
    out.push_str(&text[..at]);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(entry);
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn disk(name: &str, model: &str, gb: u64) -> DiskFacts {
        DiskFacts {
            name: name.into(),
            model: Some(model.into()),
            serial: None,
            wwn: None,
            size: gb * 1_000_000_000,
            rotational: false,
            removable: false,
            transport: None,
            by_id: vec![],
            by_path: vec![],
            partition_table: None,
            signatures: vec![],
        }
    }

    fn data(name: &str, sel: Selector) -> DataDisk {
        DataDisk {
            name: name.into(),
            purpose: crate::inventory::model::DiskPurpose::Longhorn,
            selector: sel,
            filesystem: "ext4".into(),
            mount: "/x".into(),
        }
    }

    #[test]
    fn wwn_wins_over_serial_and_model() {
        let mut a = disk("sda", "SSD", 240);
        a.wwn = Some("0x5000c500aaaa".into());
        a.serial = Some("S1".into());
        let b = disk("sdb", "SSD", 240);
        let d = derive_selector(&a, &[a.clone(), b], &[]).unwrap();
        assert_eq!(d.selector.wwn.as_deref(), Some("0x5000c500aaaa"));
        assert!(d.selector.serial.is_none() && d.selector.model.is_none());
        assert!(d.why.contains("WWN"), "{}", d.why);
    }

    #[test]
    fn a_shared_serial_falls_through_to_by_id_then_model_and_size() {
        // Cheap bridges report one serial for every disk behind them.
        let mut a = disk("sda", "SSD", 240);
        a.serial = Some("000000".into());
        a.by_id = vec!["ata-SSD_A1".into()];
        let mut b = disk("sdb", "SSD", 480);
        b.serial = Some("000000".into());
        let d = derive_selector(&a, &[a.clone(), b.clone()], &[]).unwrap();
        assert_eq!(d.selector.by_id.as_deref(), Some("ata-SSD_A1"));
        a.by_id.clear();
        let d = derive_selector(&a, &[a.clone(), b], &[]).unwrap();
        assert_eq!(
            (
                d.selector.model.as_deref(),
                d.selector.min_size_gb,
                d.selector.max_size_gb
            ),
            (Some("SSD"), Some(240), Some(240))
        );
    }

    /// Protects against an ambiguous selector: two identical disks cannot be told apart.
    #[test]
    fn identical_disks_are_an_error() {
        let a = disk("sda", "SSD", 240);
        let b = disk("sdb", "SSD", 240);
        assert!(matches!(
            derive_selector(&a, &[a.clone(), b], &[]),
            Err(AdoptError::NoUniqueAttribute(_))
        ));
    }

    /// Protects the data disks: a selector the validator cannot prove disjoint from a data
    /// disk's is never chosen; the target's own model is added to separate them.
    #[test]
    fn a_data_disk_overlap_is_never_chosen() {
        let mut boot = disk("sda", "BOOT SSD", 240);
        boot.serial = Some("B1".into());
        let media = disk("sdb", "PERC H730 Mini", 4000);
        let dd = data(
            "media",
            Selector {
                model: Some("PERC H730 Mini".into()),
                min_size_gb: Some(2000),
                ..Default::default()
            },
        );
        let d = derive_selector(
            &boot,
            &[boot.clone(), media.clone()],
            std::slice::from_ref(&dd),
        )
        .unwrap();
        assert_eq!(d.selector.serial.as_deref(), Some("B1"));
        assert_eq!(d.selector.model.as_deref(), Some("BOOT SSD"));
        assert!(!d.selector.may_overlap(&dd.selector));
        assert!(!d.selector.matches(&media.as_disk()));
        // A data disk selector with only a size range that includes the boot disk: exact
        // size added, and still disjoint.
        let dd2 = data(
            "big",
            Selector {
                min_size_gb: Some(200),
                ..Default::default()
            },
        );
        let mut only = boot.clone();
        only.model = None;
        assert!(matches!(
            derive_selector(&only, std::slice::from_ref(&only), &[dd2]),
            Err(AdoptError::NoUniqueAttribute(_))
        ));
    }

    fn profile(install: Selector, data: Vec<DataDisk>) -> Profile {
        Profile {
            name: "p".into(),
            description: String::new(),
            firmware: images::bundle::Firmware::Uefi,
            dhcp_arch: 7,
            boot_nic: crate::inventory::model::BootNic {
                name: "eno1".into(),
                port: None,
            },
            install_disk: install,
            data_disks: data,
            gpu: None,
            packages: vec![],
            kernel_args: vec![],
            efi_boot_file: None,
            installer_kernel_args: vec![],
            drivers: vec![],
            sysctls: Default::default(),
            labels: Default::default(),
            taints: vec![],
            power: None,
            secure_boot: false,
        }
    }

    #[test]
    fn the_profile_selector_is_kept_when_it_picks_one_disk() {
        let p = profile(
            Selector {
                max_size_gb: Some(500),
                ..Default::default()
            },
            vec![],
        );
        let disks = [disk("sda", "SSD", 240), disk("sdb", "HDD", 4000)];
        assert_eq!(
            choose_install(&p, &disks).unwrap(),
            InstallChoice::Profile { disk: "sda".into() }
        );
        // Two small disks: the profile is ambiguous, and so is the machine.
        let disks = [disk("sda", "SSD", 240), disk("sdb", "SSD2", 120)];
        assert!(matches!(
            choose_install(&p, &disks),
            Err(AdoptError::Ambiguous(_))
        ));
    }

    #[test]
    fn the_one_disk_that_is_no_data_disk_gets_an_override() {
        let p = profile(
            Selector {
                model: Some("SOMETHING ELSE".into()),
                ..Default::default()
            },
            vec![data(
                "media",
                Selector {
                    model: Some("PERC H730 Mini".into()),
                    ..Default::default()
                },
            )],
        );
        let mut boot = disk("sdb", "SSDSC2KB240G8", 240);
        boot.wwn = Some("0x55cd2e4150".into());
        let mut usb = disk("sdc", "Cruzer", 16);
        usb.removable = true;
        let disks = [disk("sda", "PERC H730 Mini", 4000), boot, usb];
        let InstallChoice::Override(d) = choose_install(&p, &disks).unwrap() else {
            panic!()
        };
        assert_eq!(d.disk, "sdb");
        assert_eq!(d.selector.wwn.as_deref(), Some("0x55cd2e4150"));
    }

    fn inventory(text: &str) -> Inventory {
        let mut d = crate::diag::Diagnostics::default();
        let set = crate::inventory::ProfileSet::load(&[], &mut d);
        let (inv, d) = crate::inventory::load(
            "inv.yaml",
            text,
            &set,
            &crate::templates::Templates::embedded(),
        );
        inv.unwrap_or_else(|| panic!("{}", d.render(&|_| None)))
    }

    /// Protects the addresses others use: the VIP, the DHCP pool, the appliance, the gateway
    /// and other nodes are never handed out.
    #[test]
    fn the_next_address_skips_everything_taken() {
        use crate::inventory::DEFAULT_INVENTORY;
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            next_free_ip(&inventory(DEFAULT_INVENTORY)).unwrap(),
            ip("10.0.20.31")
        );
        // After .199 comes the pool (.200–.249): the next one is .250.
        let t = DEFAULT_INVENTORY.replace("ip: 10.0.20.30", "ip: 10.0.20.199");
        assert_eq!(next_free_ip(&inventory(&t)).unwrap(), ip("10.0.20.250"));
        // After .254 (the last host) it wraps to the lowest free one, past the gateway (.1),
        // the appliance (.5) and the VIP (.10) when they are in the way.
        let t = DEFAULT_INVENTORY
            .replace("ip: 10.0.20.30", "ip: 10.0.20.254")
            .replace("ip: 10.0.20.11", "ip: 10.0.20.2")
            .replace("ip: 10.0.20.12", "ip: 10.0.20.3")
            .replace("ip: 10.0.20.13", "ip: 10.0.20.4")
            .replace("ip: 10.0.20.21", "ip: 10.0.20.6")
            .replace("ip: 10.0.20.22", "ip: 10.0.20.7")
            .replace("ip: 10.0.20.23", "ip: 10.0.20.8");
        let t = t.replace("vip: 10.0.20.10", "vip: 10.0.20.9");
        assert_eq!(next_free_ip(&inventory(&t)).unwrap(), ip("10.0.20.10"));
    }

    #[test]
    fn entries_quote_what_the_machine_reported() {
        let d = Derived {
            selector: Selector {
                model: Some("EVIL\n  role: server # x".into()),
                min_size_gb: Some(1),
                max_size_gb: Some(1),
                ..Default::default()
            },
            disk: "sda".into(),
            why: String::new(),
        };
        let y = entry_yaml(
            &NewNode {
                hostname: "n1",
                role: "agent",
                profile: "vm",
                mac: "52:54:00:00:00:01",
                ip: "10.0.0.9".parse().unwrap(),
                install: Some(&d),
                comment: "adopted\nrole: x",
            },
            2,
        );
        assert_eq!(y.lines().count(), 10, "{y}");
        assert!(
            y.contains(r#"      model: "EVIL\n  role: server # x""#),
            "{y}"
        );
        assert!(
            y.starts_with("  # adoptedrole: x\n  - hostname: n1\n"),
            "{y}"
        );
    }

    #[test]
    fn insertion_goes_after_the_last_node_before_the_next_section() {
        let text = "a: 1\nnodes:\n  # c\n  - hostname: x\n    ip: 1\n\n# next\nnfs:\n  x: 1\n";
        let (at, indent) = insertion_point("f", text).unwrap();
        assert_eq!(indent, 2);
        assert_eq!(
            &text[..at],
            "a: 1\nnodes:\n  # c\n  - hostname: x\n    ip: 1\n"
        );
        let marker = "nodes:\n- hostname: x\n---\n";
        assert_eq!(
            insertion_point("f", marker).unwrap().0,
            "nodes:\n- hostname: x\n".len()
        );
        let at_end = "nodes:\n- hostname: x\n  ip: 1";
        let (at, indent) = insertion_point("f", at_end).unwrap();
        assert_eq!((at, indent), (at_end.len(), 0));
        assert_eq!(
            splice(at_end, at, "- y\n"),
            "nodes:\n- hostname: x\n  ip: 1\n- y\n"
        );
        for bad in ["nodes: []\n", "a: 1\n", "nodes:\n  x: 1\n"] {
            assert!(insertion_point("f", bad).is_err(), "{bad}");
        }
    }
}
