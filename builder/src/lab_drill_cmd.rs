//! `builder lab fail|drill|apply` and `lab up --from` (docs/lab.md "Drill a failure", "Try a
//! change first"): the I/O around `builder::lab::{fail, drill, apply, cluster}`. The recovery
//! is the normal one, called as a function: `builder rebuild NODE [--mac NEW] --power --lab DIR`
//! (`rebuild::rebuild`), which re-renders, reloads pxe, arms and powers the VM through the lab
//! power driver.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use builder::lab::apply;
use builder::lab::cluster;
use builder::lab::drill::{self, DrillRecord, FailureKind, TimelineEntry};
use builder::lab::fail::{self, FailureRecord};
use builder::lab::power::{stop_vm, with_state};
use builder::lab::state::LabState;
use builder::{bundle, render};
use images::bundle::printable;

use crate::cli::{
    FailureArgs, LabApplyArgs, LabDrillArgs, LabFailArgs, LabTarget, RebuildArgs, RenderArgs,
    SourceArgs, UsbFormat,
};
use crate::commands;
use crate::lab_cmd::Lab;
use crate::rebuild::api;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn kind_of(f: &FailureArgs) -> Result<FailureKind> {
    match (f.disk, f.power, f.nic) {
        (true, false, false) => Ok(FailureKind::Disk),
        (false, true, false) => Ok(FailureKind::Power),
        (false, false, true) => Ok(FailureKind::Nic),
        _ => bail!("say which failure: exactly one of --disk, --power, --nic"),
    }
}

/// The lab's secrets file: the one `lab up` rendered with (beside the lab's inventory), so a
/// re-render under another `-i` keeps the running cluster's token.
fn lab_secrets(lab: &Lab, given: Option<&Path>) -> Option<PathBuf> {
    given.map(Path::to_path_buf).or_else(|| {
        let inv = &lab.state.inventory;
        (!inv.as_os_str().is_empty()).then(|| builder::secrets::default_path(Some(inv)))
    })
}

/// `--nic` ends in `builder rebuild --mac NEW`, which edits the inventory file in place, as it
/// must on metal. In the lab that file would then name a made-up MAC: only an inventory inside
/// the lab folder (a copy made for the lab) may be edited.
fn nic_inventory_ok(lab: &Lab) -> Result<()> {
    let inv = &lab.state.inventory;
    let inside = !inv.as_os_str().is_empty()
        && inv
            .canonicalize()
            .is_ok_and(|p| p.starts_with(lab.dir.canonicalize().unwrap_or_default()));
    if !inside {
        bail!(
            "--nic ends with `builder rebuild --mac NEW`, which edits the lab's inventory file; \
             the lab runs {}, outside {}: a drill must not write a made-up MAC into your rack's \
             inventory. Copy the inventory into the lab folder and start the lab from the copy \
             (builder lab up -i {}/lab.yaml --dir {})",
            if inv.as_os_str().is_empty() {
                "the embedded inventory".to_string()
            } else {
                inv.display().to_string()
            },
            lab.dir.display(),
            lab.dir.display(),
            lab.dir.display()
        );
    }
    Ok(())
}

/// What `lab fail` did.
struct Failed {
    at_ms: u64,
    new_mac: Option<String>,
}

/// Pull the plug, and for `Disk` wipe the install disk, for `Nic` give the VM a new MAC.
/// Recorded in DIR/failures.jsonl.
fn inflict(lab: &Lab, node: &str, kind: FailureKind) -> Result<Failed> {
    if !lab.state.nodes.contains_key(node) {
        bail!(
            "{node} is not a node of the lab in {}; its nodes: {}",
            lab.dir.display(),
            lab.state
                .nodes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if kind == FailureKind::Nic {
        nic_inventory_ok(lab)?;
    }
    // Checked before the plug is pulled: a refused wipe leaves the VM running.
    let disk = match kind {
        FailureKind::Disk => Some(fail::install_disk_to_wipe(&lab.dir, &lab.state, node)?),
        _ => None,
    };
    let dir = lab.dir.clone();
    let (at_ms, new_mac) = with_state(&dir, |s: &mut LabState| {
        let at_ms = now_ms();
        // QMP `quit`: qemu exits at once, the guest gets no shutdown (a pulled plug).
        stop_vm(s, node)?;
        let mut new_mac = None;
        if kind == FailureKind::Nic {
            let taken: BTreeSet<String> = s.nodes.values().map(|v| v.mac.to_lowercase()).collect();
            let mut rng = rand::rng();
            let mac = fail::new_mac(&taken, || rand::Rng::random(&mut rng));
            let vm = s.nodes.get_mut(node).expect("checked");
            vm.argv = fail::with_mac(&vm.argv, &vm.mac, &mac).ok_or_else(|| {
                builder::power::PowerError::Failed(format!(
                    "{node}: lab.json's MAC {} is not in the VM's qemu arguments; not changing it",
                    vm.mac
                ))
            })?;
            vm.mac = mac.clone();
            new_mac = Some(mac);
        }
        Ok(((at_ms, new_mac), true))
    })
    .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
    if let Some(d) = &disk {
        fail::wipe(d)?;
    }
    drill::append(
        &lab.dir.join(fail::FAILURES_FILE),
        &FailureRecord {
            node: node.to_string(),
            kind,
            at_ms,
            new_mac: new_mac.clone(),
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )?;
    Ok(Failed { at_ms, new_mac })
}

pub fn fail(a: &LabFailArgs) -> Result<()> {
    crate::lab_cmd::need_root("fail");
    let kind = kind_of(&a.failure)?;
    let lab = Lab::open(&a.dir.dir)?;
    let f = inflict(&lab, &a.node, kind)?;
    let d = lab.dir.display();
    match kind {
        FailureKind::Power => println!("{}: plug pulled (VM stopped)", a.node),
        FailureKind::Disk => println!(
            "{}: plug pulled, install disk wiped (first and last MiB zeroed, the rest punched out)",
            a.node
        ),
        FailureKind::Nic => println!(
            "{}: plug pulled; its NIC is now {} (was the inventory's MAC)",
            a.node,
            f.new_mac.as_deref().unwrap_or("?")
        ),
    }
    let mac = f
        .new_mac
        .as_deref()
        .map(|m| format!(" --mac {m}"))
        .unwrap_or_default();
    println!(
        "recover it as on metal: builder rebuild {}{mac} --power --watch --lab {d}\n\
         (or measure the whole thing: builder lab drill {} --{} --dir {d})",
        a.node,
        a.node,
        kind.as_str()
    );
    Ok(())
}

/// The node's timeline from pxe (`GET /api/v1/nodes/NODE`), or why not.
fn timeline(url: &str, token: Option<&str>, node: &str) -> Result<Vec<TimelineEntry>> {
    let (status, v) = api("GET", &format!("{url}/api/v1/nodes/{node}"), token)?;
    if status != 200 {
        bail!("HTTP {status}: {v}");
    }
    serde_json::from_value(v["timeline"].clone()).context("pxe's node timeline")
}

pub fn drill(a: &LabDrillArgs) -> Result<()> {
    let path = a.dir.dir.join(drill::DRILLS_FILE);
    if a.history {
        let h = drill::read_history(&path)?;
        for w in &h.warnings {
            eprintln!("warning: {}: {w}", path.display());
        }
        if h.records.is_empty() {
            println!("no drills recorded in {}", path.display());
            return Ok(());
        }
        print!("{}", drill::table(&drill::summarize(&h.records)));
        return Ok(());
    }
    crate::lab_cmd::need_root("drill");
    let Some(node) = a.node.as_deref() else {
        bail!("which node? builder lab drill NODE --disk|--power|--nic (or --history)");
    };
    let kind = kind_of(&a.failure)?;
    let lab = Lab::open(&a.dir.dir)?;
    let pxe = lab.pxe()?;
    let started = Instant::now();
    let f = inflict(&lab, node, kind)?;
    println!("{node}: {} failure at +0m00s", kind.as_str());

    // The normal recovery path, unchanged: what the operator would type.
    let r = crate::rebuild::rebuild(&RebuildArgs {
        node: node.to_string(),
        mac: f.new_mac.clone(),
        server: None,
        api_token_file: None,
        watch: false,
        runbook_only: false,
        power: true,
        lab: LabTarget {
            lab: Some(lab.dir.clone()),
        },
        render: RenderArgs {
            source: SourceArgs {
                inventory: None,
                hardware: vec![],
                templates: None,
            },
            out: lab.state.bundle.clone(),
            secrets: lab_secrets(&lab, None),
            usb: false,
            usb_format: UsbFormat::Fat,
        },
    });
    let deadline = Duration::from_secs(a.timeout.saturating_mul(60));
    let mut m = drill::Measured::default();
    let mut timed_out = false;
    if let Err(e) = &r {
        m.outcome = Some(drill::Outcome::Failed);
        m.detail = Some(format!("builder rebuild: {e:#}"));
    } else {
        let mut shown = 0;
        let mut misses = 0u32;
        loop {
            match timeline(&pxe.url, pxe.token.as_deref(), node) {
                Ok(t) => {
                    misses = 0;
                    m = drill::measure(&t, f.at_ms);
                }
                Err(e) => {
                    misses += 1;
                    if misses >= 60 {
                        m.outcome = Some(drill::Outcome::Failed);
                        m.detail = Some(format!("lost pxe for 60 s: {e:#}"));
                    }
                }
            }
            let steps = m.phases.steps();
            let reached = steps.iter().take_while(|(_, t)| t.is_some()).count();
            for (name, t) in &steps[shown..reached] {
                let off = t.map(|t| t.saturating_sub(f.at_ms) as f64 / 1000.0);
                println!("{node}: {name} at +{}", drill::fmt_secs(off));
            }
            shown = shown.max(reached);
            if m.outcome.is_some() {
                break;
            }
            if started.elapsed() > deadline {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let rec = DrillRecord::new(node, kind, f.at_ms, &m, timed_out, lab.state.accel);
    drill::append(&path, &rec)?;
    println!(
        "\n{node}: {} drill, recovery phases (from the failure):",
        kind.as_str()
    );
    for l in drill::phase_lines(&rec) {
        println!("{l}");
    }
    match rec.outcome {
        drill::Outcome::Booted => {
            println!(
                "{node}: back (booted) {} after the failure; recorded in {}",
                drill::fmt_secs(rec.recovery_s),
                path.display()
            );
            Ok(())
        }
        drill::Outcome::TimedOut => bail!(
            "{node}: not booted within --timeout {} min; recorded in {}",
            a.timeout,
            path.display()
        ),
        drill::Outcome::Failed => bail!(
            "{node}: the recovery failed: {}; recorded in {}",
            printable(rec.detail.as_deref().unwrap_or("no reason reported"), 600),
            path.display()
        ),
    }
}

pub fn apply(a: &LabApplyArgs) -> Result<()> {
    let lab = Lab::open(&a.dir.dir)?;
    let source = Lab::source(Some(&lab), &a.source);
    let l = commands::load(&source)?;
    let secrets_file = lab_secrets(&lab, a.secrets.as_deref());
    let render_args = RenderArgs {
        source: source.clone(),
        out: lab.state.bundle.clone(),
        secrets: secrets_file.clone(),
        usb: false,
        usb_format: UsbFormat::Fat,
    };
    let secrets = commands::existing_secrets(&render_args, &l)?;
    let old = bundle::read(&lab.state.bundle).context("reading the lab's bundle")?;
    // The old bundle's `joined` list carries over (commands::options reads it), so the plan
    // shows the inventory change only.
    let opts = commands::options(&l, &lab.state.bundle)?;
    let new = render::render(&l.inventory, &secrets, &l.templates, &opts).context("rendering")?;
    let plan = apply::plan(&old, &new);
    print!("{}", apply::describe(&plan));
    if plan.is_empty() {
        return Ok(());
    }
    if !a.yes {
        println!(
            "\nnothing changed yet: run again with --yes to apply this to the lab in {}",
            lab.dir.display()
        );
        return Ok(());
    }
    if let Some(h) = &plan.sole_server
        && !a.rebuild_sole_server
    {
        bail!(
            "not applied: {h} is the only server; rebuilding it starts a new cluster (see STOP \
             above); pass --rebuild-sole-server to rehearse exactly that"
        );
    }
    crate::lab_cmd::need_root("apply");
    let inv_path = source.inventory.clone();
    if plan.rebuild.is_empty() {
        // Served-only changes: the new bundle and a reload.
        bundle::write(&lab.state.bundle, &new).context("writing the lab's bundle")?;
        let pxe = lab.pxe()?;
        let (status, v) = api(
            "POST",
            &format!("{}/api/v1/reload", pxe.url),
            pxe.token.as_deref(),
        )?;
        if status != 200 {
            bail!("reloading pxe: HTTP {status}: {v}");
        }
        println!("bundle written and reloaded; no node needed a rebuild");
    }
    let mut results: Vec<(String, Result<Duration>)> = Vec::new();
    for r in &plan.rebuild {
        println!("\n== {}: rebuilding ==", r.node);
        let t = Instant::now();
        let res = crate::rebuild::rebuild(&RebuildArgs {
            node: r.node.clone(),
            mac: None,
            server: None,
            api_token_file: None,
            watch: true,
            runbook_only: false,
            power: true,
            lab: LabTarget {
                lab: Some(lab.dir.clone()),
            },
            render: RenderArgs {
                source: source.clone(),
                out: lab.state.bundle.clone(),
                secrets: secrets_file.clone(),
                usb: false,
                usb_format: UsbFormat::Fat,
            },
        })
        .map(|()| t.elapsed());
        let failed = res.is_err();
        results.push((r.node.clone(), res));
        if failed {
            break;
        }
    }
    // The lab runs this inventory from now on (status, drills, the next apply).
    if let Some(p) = &inv_path {
        let p = std::path::absolute(p)?;
        with_state(&lab.dir, |s| {
            s.inventory = p.clone();
            Ok(((), true))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    println!("\nlab apply:");
    let mut bad = 0;
    for (n, r) in &results {
        match r {
            Ok(d) => println!(
                "  {n:<16} rebuilt, booted after {}",
                crate::rebuild::fmt_duration(*d)
            ),
            Err(e) => {
                bad += 1;
                println!("  {n:<16} FAILED: {}", printable(&format!("{e:#}"), 400));
            }
        }
    }
    for r in plan.rebuild.iter().skip(results.len()) {
        println!("  {:<16} not rebuilt (an earlier node failed)", r.node);
    }
    cluster_note(&lab, &l.inventory, APPLY_CLUSTER_WAIT);
    if bad > 0 {
        bail!("{bad} node(s) did not come back; the lab keeps running as it is");
    }
    Ok(())
}

/// How long `lab apply` waits for the cluster after its rebuilds (`lab up` waits `--timeout`).
pub(crate) const APPLY_CLUSTER_WAIT: Duration = Duration::from_secs(30 * 60);

/// The end of `lab up` and `lab apply`: whether the cluster can be checked, and if not why;
/// if it can, wait (up to `wait`) for the servers' `cluster` reports to say every server runs
/// an etcd member and every k3s node is Ready (`cluster::decide_report`). Never prints
/// "ready" without a report from the cluster.
pub(crate) fn cluster_note(lab: &Lab, inv: &builder::inventory::model::Inventory, wait: Duration) {
    let (host_if, _, _) = builder::lab::net::nat_link(&lab.state.netns);
    let nat = Path::new("/sys/class/net").join(&host_if).exists();
    let kit = inv.cluster.k3s.airgap.as_ref().map(|a| {
        [&a.binary, &a.images, &a.install_script]
            .map(|p| (p.display().to_string(), p.exists()))
            .to_vec()
    });
    let kit_ref: Option<Vec<(&str, bool)>> = kit
        .as_ref()
        .map(|k| k.iter().map(|(p, ok)| (p.as_str(), *ok)).collect());
    if let Err(why) = cluster::can_install_k3s(nat, kit_ref.as_deref()) {
        println!("{}", cluster::stopped_at_first_boot(&why));
        return;
    }
    let pxe = match lab.pxe() {
        Ok(p) => p,
        Err(e) => {
            println!("cluster check: cannot ask pxe: {e:#}");
            return;
        }
    };
    let want = expected(inv);
    println!(
        "cluster check: waiting up to {} for the servers' cluster reports",
        crate::rebuild::fmt_duration(wait)
    );
    let until = Instant::now() + wait;
    let mut last: Option<Vec<String>> = None;
    loop {
        let mut notes: Vec<(u64, String)> = Vec::new();
        for (host, _) in &want.servers {
            if let Ok(t) = timeline(&pxe.url, pxe.token.as_deref(), host) {
                notes.extend(
                    t.into_iter()
                        .filter(|e| e.event == "note")
                        .map(|e| (e.at_ms, e.detail)),
                );
            }
        }
        let newest = cluster::newest_report(notes.iter().map(|(at, d)| (*at, d.as_str())));
        let verdict = newest
            .as_ref()
            .map(|(_, r)| cluster::decide_report(&want, r));
        match verdict {
            Some(cluster::Verdict::Ready { notes }) => {
                println!(
                    "cluster check: ready (every server an etcd member, every k3s node Ready)"
                );
                for n in notes {
                    println!("  note: {n}");
                }
                return;
            }
            Some(cluster::Verdict::NotYet(missing)) if last.as_ref() != Some(&missing) => {
                for m in &missing {
                    println!("  missing: {m}");
                }
                last = Some(missing);
            }
            _ => {}
        }
        if Instant::now() >= until {
            match &last {
                Some(m) => println!(
                    "cluster check: NOT ready after {}: {} thing(s) missing (above)",
                    crate::rebuild::fmt_duration(wait),
                    m.len()
                ),
                None => println!(
                    "cluster check: no cluster report from any server after {} (k3s not \
                     installed? see builder lab console SERVER)",
                    crate::rebuild::fmt_duration(wait)
                ),
            }
            return;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// What the cluster should hold: the inventory's servers and every k3s node (not NFS hosts).
fn expected(inv: &builder::inventory::model::Inventory) -> cluster::Expected {
    use builder::inventory::model::Role;
    cluster::Expected {
        servers: inv
            .nodes
            .iter()
            .filter(|n| n.role == Role::Server)
            .map(|n| (n.hostname.to_string(), n.ip))
            .collect(),
        nodes: inv
            .nodes
            .iter()
            .filter(|n| n.role != Role::Nfs)
            .map(|n| n.hostname.to_string())
            .collect(),
    }
}

/// `lab up --from OLD_BUNDLE`: the lab starts from a bundle rendered earlier (the running
/// cluster before a change) instead of a fresh render. Its nodes must be the inventory's (the
/// VMs are shaped from the inventory), with the same MACs.
pub(crate) fn bundle_from(
    old: &Path,
    out: &Path,
    inv: &builder::inventory::model::Inventory,
) -> Result<()> {
    let files = bundle::read(old).with_context(|| format!("reading {}", old.display()))?;
    let plan: serde_json::Value = files
        .get(render::PLAN)
        .and_then(|b| serde_json::from_slice(b).ok())
        .with_context(|| format!("{}: not a bundle (no readable plan.json)", old.display()))?;
    if !files.contains_key(render::SUMS) {
        bail!("{}: not a bundle (no {})", old.display(), render::SUMS);
    }
    let mut problems = Vec::new();
    for n in &inv.nodes {
        let h = n.hostname.as_str();
        let entry = plan["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["hostname"] == h);
        match entry {
            None => problems.push(format!("{h} is not in it")),
            Some(e)
                if !e["mac"]
                    .as_str()
                    .is_some_and(|m| m.eq_ignore_ascii_case(&n.mac.to_string())) =>
            {
                problems.push(format!(
                    "{h} has MAC {} there, {} in the inventory",
                    printable(e["mac"].as_str().unwrap_or("none"), 32),
                    n.mac
                ))
            }
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!(
            "--from {}: the bundle does not hold the inventory's nodes (the VMs are shaped from \
             the inventory): {}",
            old.display(),
            problems.join("; ")
        );
    }
    let mut b = render::Bundle::default();
    for (rel, bytes) in files {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(old.join(&rel))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        b.files.insert(rel, render::BundleFile { bytes, mode });
    }
    bundle::write(out, &b).with_context(|| format!("copying {} into the lab", old.display()))?;
    println!(
        "lab bundle: {} as it was (--from), not re-rendered",
        old.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use builder::templates::Templates;

    fn homelab() -> builder::inventory::model::Inventory {
        builder::inventory::seed_homelab()
    }

    /// `lab up --from`: the old bundle arrives byte for byte with its modes (the secret-bearing
    /// files stay owner-only), and a bundle of other machines is refused.
    #[test]
    fn a_bundle_from_before_is_copied_as_it_is_or_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let inv = homelab();
        let s = builder::secrets::Secrets::generate();
        let b = render::render(
            &inv,
            &s,
            &Templates::embedded(),
            &render::RenderOptions::default(),
        )
        .unwrap();
        let old = d.path().join("old");
        bundle::write(&old, &b).unwrap();
        let lab = d.path().join("lab-bundle");
        bundle_from(&old, &lab, &inv).unwrap();
        assert_eq!(bundle::read(&lab).unwrap(), bundle::read(&old).unwrap());
        for (rel, f) in &b.files {
            let mode = std::fs::metadata(lab.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, f.mode, "{rel}");
        }
        let mut other = homelab();
        other.nodes[0].mac = "52:54:00:aa:bb:cc".parse().unwrap();
        let e = bundle_from(&old, &d.path().join("x"), &other).unwrap_err();
        assert!(format!("{e:#}").contains("has MAC"), "{e:#}");
        assert!(
            bundle_from(d.path(), &d.path().join("y"), &inv).is_err(),
            "not a bundle"
        );
    }
}
