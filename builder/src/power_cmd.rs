//! `builder power`, `builder provision` and the power step of `builder rebuild --power`. The
//! drivers are in `builder::power`; this is the I/O around them: the pxe API, prompts,
//! progress bars.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use builder::inventory::model::{Inventory, Node, Power};
use builder::power::order::{self, Candidate, Start};
use builder::power::{self as drivers, PowerDriver, PowerError, PowerState, PxeOnce};
use builder::secrets::{self, Secrets};
use images::bundle::printable;

use crate::cli::{PowerAction, PowerArgs, ProvisionArgs, PxeRemote};
use crate::commands::{self, Loaded};
use crate::lab_cmd::Lab;
use crate::rebuild::{api, fmt_duration};

/// The pxe operator API, as the power commands use it.
pub(crate) struct Pxe {
    pub url: String,
    pub token: Option<String>,
}

impl Pxe {
    pub fn new(remote: &PxeRemote, inv: &Inventory) -> Result<Pxe> {
        let url = remote
            .server
            .clone()
            .unwrap_or_else(|| inv.appliance.url.clone())
            .trim_end_matches('/')
            .to_string();
        let token = images::api_token::resolve(remote.api_token_file.as_deref())
            .context("reading the pxe API token")?;
        Ok(Pxe { url, token })
    }

    /// Every node pxe serves, by hostname.
    pub fn nodes(&self) -> Result<BTreeMap<String, Value>> {
        let url = format!("{}/api/v1/nodes", self.url);
        let (status, v) = api("GET", &url, self.token.as_deref())?;
        if status != 200 {
            bail!("{url}: HTTP {status}: {v}");
        }
        Ok(v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| Some((n["hostname"].as_str()?.to_string(), n.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn arm(&self, node: &str) -> Result<()> {
        let url = format!("{}/api/v1/nodes/{node}/arm", self.url);
        let (status, v) = api("POST", &url, self.token.as_deref())?;
        if status != 200 {
            bail!("arming {node} failed: HTTP {status}: {v}");
        }
        Ok(())
    }

    /// Record a power action in the node's pxe timeline. Best effort: the power action
    /// happened whether or not pxe hears of it, so a failure is a warning.
    pub fn record(&self, node: &str, action: &str, result: &str, by: &str) {
        let url = format!("{}/api/v1/nodes/{node}/power", self.url);
        let body = json!({"action": action, "result": printable(result, 200), "by": by});
        match builder::lab::net::exchange("POST", &url, Some(&body), self.token.as_deref()) {
            Ok((200, _)) => {}
            Ok((status, b)) => eprintln!(
                "warning: pxe did not record {action} of {node}: HTTP {status}: {}",
                printable(String::from_utf8_lossy(&b).trim(), 200)
            ),
            Err(e) => eprintln!("warning: pxe did not record {action} of {node}: {e}"),
        }
    }
}

fn state_of(n: Option<&Value>) -> Option<String> {
    n.and_then(|n| n["state"].as_str())
        .map(|s| printable(s, 32))
}

fn load_secrets(path: Option<&Path>, l: &Loaded) -> Result<Option<Secrets>> {
    let p = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| secrets::default_path(l.path.as_deref()));
    Secrets::load(&p).map_err(|e| anyhow::anyhow!("{e}"))
}

fn find<'a>(inv: &'a Inventory, name: &str) -> Result<&'a Node> {
    inv.node(name).with_context(|| {
        let known: Vec<&str> = inv.nodes.iter().map(|n| n.hostname.as_str()).collect();
        format!("no node named `{name}`; known nodes: {}", known.join(", "))
    })
}

/// Where the power drivers come from: the inventory's `power:` blocks, or a lab's VMs (every
/// node of a lab has the lab driver, whatever its inventory says).
pub(crate) enum Drivers<'a> {
    Inventory {
        inv: &'a Inventory,
        secrets: Option<&'a Secrets>,
    },
    Lab(PathBuf),
}

impl Drivers<'_> {
    /// The node has power control (not `manual`).
    pub fn powered(&self, node: &Node) -> bool {
        match self {
            Drivers::Inventory { .. } => !matches!(node.power, None | Some(Power::Manual)),
            Drivers::Lab(_) => true,
        }
    }

    pub fn driver(
        &self,
        node: &Node,
        interactive: bool,
    ) -> Result<Box<dyn PowerDriver>, PowerError> {
        match self {
            Drivers::Inventory { inv, secrets } => {
                drivers::driver_for(inv, node, *secrets, interactive)
            }
            Drivers::Lab(dir) => Ok(Box::new(builder::lab::power::LabPower {
                dir: dir.clone(),
                node: node.hostname.to_string(),
            })),
        }
    }

    fn describe(&self, inv: &Inventory, node: &Node) -> String {
        match self {
            Drivers::Inventory { .. } => describe(inv, node),
            Drivers::Lab(dir) => format!("the lab VM (qemu) of {}", dir.display()),
        }
    }
}

/// How the driver of `node` reaches it, for "what I am about to do".
fn describe(inv: &Inventory, node: &Node) -> String {
    match node.power.as_ref().unwrap_or(&Power::Manual) {
        Power::Wol {
            broadcast,
            interface,
        } => format!(
            "wake-on-LAN packet for {} to {}:9{}",
            node.mac,
            broadcast.unwrap_or_else(|| drivers::default_broadcast(inv)),
            interface
                .as_ref()
                .map(|i| format!(" via {i}"))
                .unwrap_or_default()
        ),
        Power::Ipmi { address } => format!("IPMI (ipmitool) at {address}"),
        Power::Redfish(r) => format!("Redfish at {}", r.address),
        Power::Manual => "no power control: you do it by hand".into(),
    }
}

/// "pxe says: state booted; last power action on: ok (by …)" for a node, or why not.
fn pxe_view(pxe: &Pxe, name: &str) -> String {
    match pxe.nodes() {
        Ok(m) => match m.get(name) {
            Some(n) => {
                let state = state_of(Some(n)).unwrap_or_else(|| "-".into());
                let last = &n["last_power"];
                let power = match (last["action"].as_str(), last["result"].as_str()) {
                    (Some(a), Some(r)) => {
                        format!(
                            "last power action {}: {}",
                            printable(a, 32),
                            printable(r, 200)
                        )
                    }
                    _ => "no power action recorded".into(),
                };
                format!("pxe at {} says: state {state}; {power}", pxe.url)
            }
            None => format!("pxe at {} does not know it", pxe.url),
        },
        Err(e) => format!("pxe at {} not reachable: {e:#}", pxe.url),
    }
}

fn outcome(r: &Result<(), PowerError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed: {e}"),
    }
}

pub fn power(a: &PowerArgs) -> Result<()> {
    let lab = a.lab.lab.as_deref().map(Lab::open).transpose()?;
    let l = commands::load(&Lab::source(lab.as_ref(), &a.source))?;
    let inv = &l.inventory;
    let node = find(inv, &a.node)?;
    let pxe = match &lab {
        Some(lab) => lab.pxe()?,
        None => Pxe::new(&a.remote, inv)?,
    };
    let name = node.hostname.to_string();
    let action = match a.action {
        PowerAction::Status => "status",
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::Cycle => "cycle",
    };
    if matches!(a.action, PowerAction::Off | PowerAction::Cycle) && !a.force {
        let state = pxe.nodes().map(|m| state_of(m.get(&name))).map_err(|e| {
            anyhow::anyhow!(
                "cannot ask pxe whether {name} is a booted cluster member ({e:#}); pass --force to {action} it anyway"
            )
        })?;
        if state.as_deref() == Some("booted") {
            bail!(
                "{name} is booted (a running cluster member, per pxe); powering it {action} \
                 would cut it off without a drain: pass --force if you mean it"
            );
        }
    }
    if a.pxe_once && matches!(a.action, PowerAction::Status | PowerAction::Off) {
        bail!("--pxe-once goes with `on` or `cycle`");
    }
    let secrets = match &lab {
        Some(_) => None,
        None => load_secrets(a.secrets.as_deref(), &l)?,
    };
    let drv = match &lab {
        Some(lab) => Drivers::Lab(lab.dir.clone()),
        None => Drivers::Inventory {
            inv,
            secrets: secrets.as_ref(),
        },
    };
    let interactive = std::io::stdin().is_terminal();
    let mut driver = drv
        .driver(node, interactive)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    if a.action == PowerAction::Status {
        let s = match driver.status() {
            Ok(s) => s,
            Err(e @ PowerError::Unsupported { .. }) => {
                // WoL and manual cannot ask the machine; pxe's view is the next best thing.
                println!("{name}: {e}");
                println!("{name}: {}", pxe_view(&pxe, &name));
                return Ok(());
            }
            Err(e) => bail!("{name}: {e}"),
        };
        println!(
            "{name}: {}",
            match s {
                PowerState::On => "on",
                PowerState::Off => "off",
            }
        );
        return Ok(());
    }
    println!(
        "{name}: power {action}{} with {}",
        if a.pxe_once {
            " after setting a one-time network boot"
        } else {
            ""
        },
        drv.describe(inv, node)
    );
    if !a.yes {
        if !interactive {
            bail!("stdin is not a terminal, so nobody can confirm: pass --yes");
        }
        eprint!("proceed? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            bail!("not confirmed; nothing done");
        }
    }
    let by = "builder power";
    if a.pxe_once {
        let r = driver.pxe_once();
        pxe.record(
            &name,
            "pxe-once",
            &match &r {
                Ok(_) => "ok".into(),
                Err(e) => format!("failed: {e}"),
            },
            by,
        );
        match r.map_err(|e| anyhow::anyhow!("{name}: one-time network boot: {e}"))? {
            PxeOnce::Set => println!("{name}: one-time network boot set"),
            PxeOnce::Firmware(how) => println!("{name}: {how}"),
        }
    }
    let r = match a.action {
        PowerAction::On => driver.on(),
        PowerAction::Off => driver.off(),
        _ => driver.cycle(),
    };
    pxe.record(&name, action, &outcome(&r), by);
    r.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    println!("{name}: power {action}: done");
    Ok(())
}

/// One-time network boot, then on (or cycle when the BMC says it is on). `by` goes into the
/// pxe timeline.
pub(crate) fn boot_from_network(
    driver: &mut dyn PowerDriver,
    pxe: &Pxe,
    name: &str,
    by: &str,
) -> Result<()> {
    let r = driver.pxe_once();
    pxe.record(
        name,
        "pxe-once",
        &match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("failed: {e}"),
        },
        by,
    );
    if let PxeOnce::Firmware(how) = r.map_err(|e| anyhow::anyhow!("{name}: {e}"))? {
        println!("{name}: {how}");
    }
    // A machine that is on (an old OS, a firmware menu) must restart to take the override.
    let (action, r) = match driver.status() {
        Ok(PowerState::On) => ("cycle", driver.cycle()),
        _ => ("on", driver.on()),
    };
    pxe.record(name, action, &outcome(&r), by);
    r.map_err(|e| anyhow::anyhow!("{name}: power {action}: {e}"))?;
    println!("{name}: power {action} ({})", driver.name());
    Ok(())
}

/// What provision did with one node, for the summary.
pub(crate) struct Outcome {
    pub how: &'static str,
    pub started: Option<Instant>,
    pub took: Option<Duration>,
}

pub fn provision(a: &ProvisionArgs) -> Result<()> {
    let lab = a.lab.lab.as_deref().map(Lab::open).transpose()?;
    let l = commands::load(&Lab::source(lab.as_ref(), &a.source))?;
    let inv = &l.inventory;
    let selected: Vec<&Node> = if a.all {
        inv.nodes.iter().collect()
    } else {
        a.nodes
            .iter()
            .map(|n| find(inv, n))
            .collect::<Result<_>>()?
    };
    let (pxe, secrets) = match &lab {
        Some(lab) => (lab.pxe()?, None),
        None => (
            Pxe::new(&a.remote, inv)?,
            load_secrets(a.secrets.as_deref(), &l)?,
        ),
    };
    let drv = match &lab {
        Some(lab) => Drivers::Lab(lab.dir.clone()),
        None => Drivers::Inventory {
            inv,
            secrets: secrets.as_ref(),
        },
    };
    let deadline = Duration::from_secs(a.timeout.saturating_mul(60));
    let (outcomes, r) = provision_nodes(inv, &selected, &pxe, &drv, a.watch, deadline);
    if !outcomes.is_empty() {
        summary(&outcomes);
    }
    r
}

/// `builder provision`'s work, shared with `builder lab up`: arm what was never installed,
/// refuse when a node is not armed, check every driver, then power the nodes on stage by
/// stage in cluster order and wait for each stage to be booted. Returns what happened to each
/// node (also when it fails halfway: the caller prints it).
pub(crate) fn provision_nodes(
    inv: &Inventory,
    selected: &[&Node],
    pxe: &Pxe,
    drv: &Drivers,
    watch: bool,
    deadline: Duration,
) -> (BTreeMap<String, Outcome>, Result<()>) {
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let r = provision_into(inv, selected, pxe, drv, watch, deadline, &mut outcomes);
    (outcomes, r)
}

fn provision_into(
    inv: &Inventory,
    selected: &[&Node],
    pxe: &Pxe,
    drv: &Drivers,
    watch: bool,
    deadline: Duration,
    outcomes: &mut BTreeMap<String, Outcome>,
) -> Result<()> {
    // Arm what has never been installed. A node installed before and not booted now is left
    // alone: reinstalling a machine is `builder rebuild`'s decision, not a side effect.
    let states = pxe.nodes()?;
    for n in selected {
        let name = n.hostname.as_str();
        let Some(rec) = states.get(name) else {
            continue;
        };
        let state = state_of(Some(rec)).unwrap_or_default();
        let installs = rec["installs"].as_u64().unwrap_or(0);
        if installs == 0 && matches!(state.as_str(), "disarmed" | "failed") {
            pxe.arm(name)?;
            println!("{name}: armed on {}", pxe.url);
        }
    }
    let states = pxe.nodes()?;
    let candidates: Vec<Candidate> = selected
        .iter()
        .map(|n| Candidate {
            name: n.hostname.to_string(),
            role: n.role,
            bootstrap: n.bootstrap,
            powered: drv.powered(n),
            state: state_of(states.get(n.hostname.as_str())),
        })
        .collect();
    let plan = order::plan(&candidates);
    if !plan.refused.is_empty() {
        let list: Vec<String> = plan
            .refused
            .iter()
            .map(|(n, why)| format!("  {n}: {why}"))
            .collect();
        bail!(
            "not powering anything: these nodes are not armed\n{}\n(an installed node is \
             reinstalled only with `builder rebuild NODE`; a node pxe does not know is missing \
             from the bundle it serves)",
            list.join("\n")
        );
    }
    // Every driver before any power action: a missing BMC account or an unimplemented driver
    // found halfway would leave the cluster half powered.
    let mut problems = Vec::new();
    for stage in &plan.stages {
        for (name, start) in &stage.start {
            if *start == Start::Power
                && let Err(e) = drv.driver(find(inv, name)?, false)
            {
                problems.push(format!("  {name}: {e}"));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "not powering anything: no usable power driver for\n{}",
            problems.join("\n")
        );
    }
    for n in &plan.skipped {
        println!("{n}: already booted, skipped");
        outcomes.insert(
            n.clone(),
            Outcome {
                how: "already booted",
                started: None,
                took: None,
            },
        );
    }
    let by = "builder provision";
    for stage in &plan.stages {
        println!("== {} ==", stage.label);
        for (name, start) in &stage.start {
            let node = find(inv, name)?;
            let how = match start {
                Start::Power => {
                    let mut d = drv
                        .driver(node, false)
                        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                    boot_from_network(d.as_mut(), pxe, name, by)?;
                    "powered"
                }
                Start::Operator => {
                    println!(
                        "{name}: no power control: power it on now, with a one-time network boot (Dell: F12)"
                    );
                    "by hand"
                }
                Start::Wait => {
                    println!("{name}: already on its way, waiting");
                    "was installing"
                }
            };
            outcomes.insert(
                name.clone(),
                Outcome {
                    how,
                    started: Some(Instant::now()),
                    took: None,
                },
            );
        }
        let names: Vec<&str> = stage.start.iter().map(|(n, _)| n.as_str()).collect();
        wait_booted(pxe, &names, watch, deadline, outcomes)?;
    }
    Ok(())
}

/// Poll pxe until every node of `names` is booted; fail on `failed`/`disarmed` or timeout.
fn wait_booted(
    pxe: &Pxe,
    names: &[&str],
    watch: bool,
    deadline: Duration,
    outcomes: &mut BTreeMap<String, Outcome>,
) -> Result<()> {
    let multi = MultiProgress::new();
    if !watch {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:<14} {bar:30} {bytes:>10}/{total_bytes:<10} {msg} [{elapsed}]",
    )
    .expect("static template")
    .progress_chars("=> ");
    let bars: BTreeMap<&str, ProgressBar> = names
        .iter()
        .map(|n| {
            let b = multi.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(n.to_string());
            (*n, b)
        })
        .collect();
    let start = Instant::now();
    let mut last: BTreeMap<&str, String> = BTreeMap::new();
    // Without bars (no --watch, or not a terminal): the install's progress as a line per
    // quarter written.
    let mut quarter: BTreeMap<&str, u64> = BTreeMap::new();
    let mut misses = 0u32;
    loop {
        let states = match pxe.nodes() {
            Ok(s) => {
                misses = 0;
                s
            }
            Err(e) => {
                misses += 1;
                if misses >= 60 {
                    bail!("lost the pxe server at {} for 30 s: {e:#}", pxe.url);
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let mut all = true;
        for n in names {
            let rec = states.get(*n);
            let state = state_of(rec).unwrap_or_else(|| "-".into());
            let bar = &bars[n];
            if let Some(r) = rec {
                let (total, written) = (
                    r["bytes_total"].as_u64().unwrap_or(0),
                    r["bytes_written"].as_u64().unwrap_or(0),
                );
                bar.set_length(total);
                bar.set_position(written);
                if !watch && state == "installing" && total > 0 {
                    let q = (written.min(total) * 4 / total).min(3);
                    if q > quarter.get(n).copied().unwrap_or(0) {
                        quarter.insert(n, q);
                        println!("{n}: installing {}%", q * 25);
                    }
                }
            }
            bar.set_message(state.clone());
            let o = outcomes.get_mut(*n).expect("started");
            if last.get(n) != Some(&state) {
                let since = o.started.map(|s| s.elapsed()).unwrap_or_default();
                multi.suspend(|| println!("{n}: {state} after {}", fmt_duration(since)));
                last.insert(n, state.clone());
            }
            match state.as_str() {
                "booted" => {
                    if o.took.is_none() {
                        o.took = o.started.map(|s| s.elapsed());
                        bar.finish();
                    }
                }
                "failed" => {
                    let why = rec
                        .and_then(|r| r["last_error"].as_str())
                        .map(|e| printable(e, 512))
                        .unwrap_or_else(|| "no reason reported".into());
                    bail!("{n} failed: {why}");
                }
                "disarmed" => bail!("{n} was disarmed while being provisioned"),
                _ => all = false,
            }
        }
        if all {
            return Ok(());
        }
        if start.elapsed() > deadline {
            let waiting: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| outcomes[*n].took.is_none())
                .collect();
            bail!(
                "not booted after {} min: {} (check the console; a WoL/BMC power-on that did \
                 nothing looks like this)",
                deadline.as_secs() / 60,
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn summary(outcomes: &BTreeMap<String, Outcome>) {
    println!("\nsummary:");
    for (n, o) in outcomes {
        let t = match (o.took, o.started) {
            (Some(d), _) => format!("booted after {}", fmt_duration(d)),
            (None, Some(_)) => "not booted".into(),
            (None, None) => "-".into(),
        };
        println!("  {n:<16} {:<16} {t}", o.how);
    }
}
