//! `builder adopt`: a discovered machine becomes a node of the inventory file. The choices are
//! pure functions (`builder::adopt`); this reads the facts, splices the entry into the file and
//! replaces it only once the edited inventory validates, also against the machine's facts.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use builder::adopt::{self, InstallChoice, NewNode};
use builder::diag::Diagnostics;
use builder::fsutil;
use images::bundle::facts::Facts;
use images::bundle::{Mac, printable};

use crate::cli::AdoptArgs;
use crate::commands;

/// The machine's facts: `Some` when it was inspected, `None` when pxe only saw it on DHCP.
fn facts(a: &AdoptArgs, mac: Mac) -> Result<Option<Facts>> {
    if let Some(p) = &a.facts {
        let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        if meta.len() > images::bundle::facts::FACTS_MAX as u64 {
            bail!("{}: larger than a facts document can be", p.display());
        }
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let f = Facts::from_json(&bytes).with_context(|| format!("reading {}", p.display()))?;
        return Ok(Some(f));
    }
    let Some(server) = &a.server else {
        return Ok(None);
    };
    let body = commands::discovered(server, a.api_token_file.as_deref())?;
    let machines = body["machines"].as_array().cloned().unwrap_or_default();
    let Some(m) = machines
        .iter()
        .find(|m| m["mac"].as_str().and_then(|s| s.parse::<Mac>().ok()) == Some(mac))
    else {
        bail!(
            "{server} has not seen {mac} ({} machine{} discovered; `builder discover` lists \
             them): check the MAC, or power the machine on to network-boot once",
            machines.len(),
            if machines.len() == 1 { "" } else { "s" }
        );
    };
    if m["facts"].is_null() {
        return Ok(None);
    }
    let bytes = serde_json::to_vec(&m["facts"]).context("facts")?;
    Ok(Some(
        Facts::from_json(&bytes).with_context(|| format!("{server}: facts of {mac}"))?,
    ))
}

pub fn adopt(a: &AdoptArgs) -> Result<()> {
    let src = &a.source;
    if src.inventory.is_none() && !a.dry_run {
        bail!(
            "adopt edits the inventory file, and this run uses the embedded default inventory: \
             write it out with `builder init lab.yaml`, then pass --inventory lab.yaml"
        );
    }
    let mac = Mac::parse_nic(a.mac.trim()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let l = commands::load(src)?;
    let inv = &l.inventory;
    if let Some(n) = inv
        .nodes
        .iter()
        .find(|n| n.mac == mac || n.extra_macs.contains(&mac))
    {
        bail!(
            "{mac} is already in {} as node {}; nothing was changed (new hardware for an existing \
             node is `builder rebuild {} --mac MAC`)",
            l.name,
            n.hostname,
            n.hostname
        );
    }
    let hostname: builder::inventory::model::Hostname = a
        .hostname
        .parse()
        .map_err(|e| anyhow::anyhow!("--hostname: {e}"))?;
    if inv.node(hostname.as_str()).is_some() {
        bail!("{} already has a node named {hostname}", l.name);
    }
    let Some(profile) = l.profiles.get(&a.profile) else {
        bail!(
            "unknown hardware profile `{}` (known: {})",
            a.profile,
            l.profiles
                .profiles
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };

    let facts = facts(a, mac)?;
    if let Some(f) = &facts
        && let Some(b) = f.boot_mac
        && b != mac
    {
        bail!("these facts are of the machine that booted from {b}, not {mac}");
    }
    let mut notes = Vec::new();
    let install = match &facts {
        None => {
            notes.push(format!(
                "install disk: profile `{}`'s selector, UNVERIFIED: this machine was not inspected; \
                 run `pxe inspect {mac}` (or `pxe serve --inspect unknown`), power it on, then \
                 `builder validate --server URL` before arming it",
                profile.name
            ));
            None
        }
        Some(f) => match adopt::choose_install(profile, &f.disks)
            .with_context(|| format!("choosing the install disk of {mac}"))?
        {
            InstallChoice::Profile { disk } => {
                notes.push(format!(
                    "install disk: {} — profile `{}`'s selector matches exactly this disk; no override",
                    printable(&disk, 64),
                    profile.name
                ));
                None
            }
            InstallChoice::Override(d) => {
                let named = f
                    .disks
                    .iter()
                    .find(|x| x.name == d.disk)
                    .map(adopt::describe)
                    .unwrap_or_default();
                let by_profile = f
                    .disks
                    .iter()
                    .filter(|x| profile.install_disk.matches(&x.as_disk()))
                    .count();
                notes.push(format!(
                    "install disk: {named} — profile `{}`'s selector matches {by_profile} of this \
                     machine's {} disks (it must match exactly one), so the node gets its own \
                     install_disk, chosen because {}",
                    profile.name,
                    f.disks.len(),
                    printable(&d.why, 400)
                ));
                Some(d)
            }
        },
    };
    let (ip, ip_why) = match a.ip {
        Some(ip) => (ip, "given with --ip"),
        None => (
            adopt::next_free_ip(inv)?,
            "the first free address after the highest node address",
        ),
    };
    notes.push(format!("address: {ip} ({ip_why})"));

    let machine = facts
        .as_ref()
        .map(|f| {
            let v = [&f.dmi.sys_vendor, &f.dmi.product_name]
                .iter()
                .filter_map(|x| x.as_deref())
                .collect::<Vec<_>>()
                .join(" ");
            if v.is_empty() {
                "inspected".to_string()
            } else {
                printable(&v, 80)
            }
        })
        .unwrap_or_else(|| "seen on DHCP only: install disk unverified".into());
    let (at, indent) = adopt::insertion_point(&l.name, &l.text)?;
    let mac_text = mac.to_string();
    let entry = adopt::entry_yaml(
        &NewNode {
            hostname: hostname.as_str(),
            role: images::bundle::Role::from(a.role).as_str(),
            profile: &profile.name,
            mac: &mac_text,
            ip,
            install: install.as_ref(),
            comment: &format!("adopted by `builder adopt` ({machine})"),
        },
        indent,
    );
    let edited = adopt::splice(&l.text, at, &entry);

    // The edited text is what must validate: with the new entry among the others, and against
    // the machine's own facts.
    let checked = commands::load_text(src, l.name.clone(), edited.clone()).map_err(|_| {
        anyhow::anyhow!(
            "the inventory with {hostname} added is not valid (see above); {} was not changed",
            l.name
        )
    })?;
    // The entry must have landed in the `nodes:` list as written, not elsewhere.
    if !checked
        .inventory
        .node(hostname.as_str())
        .is_some_and(|n| n.mac == mac && n.ip == ip)
    {
        bail!(
            "{}: the entry for {hostname} did not end up in the `nodes:` list; add it by hand; \
             the file was not changed",
            l.name
        );
    }
    if let Some(f) = facts {
        let mut diags = Diagnostics::default();
        commands::check_facts(&checked, &BTreeMap::from([(mac, f)]), &mut diags)?;
        if diags.has_errors() {
            bail!(
                "{hostname} would not install as written (see above); {} was not changed",
                l.name
            );
        }
    }
    for n in &notes {
        println!("{n}");
    }
    if a.dry_run {
        print!("\n{entry}");
        println!("\n--dry-run: {} was not changed", l.name);
        return Ok(());
    }
    let path = src.inventory.as_ref().expect("checked above");
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .with_context(|| format!("reading {}", path.display()))?;
    fsutil::write_atomic(path, edited.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{}: added {hostname} ({}, profile {}, {mac}, {ip}); next: builder render, then pxe arm {hostname}",
        l.name,
        images::bundle::Role::from(a.role).as_str(),
        profile.name
    );
    Ok(())
}
