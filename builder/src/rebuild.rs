//! `builder rebuild` and `builder recover`: the node-replacement and restore workflows. They
//! reuse `render` (same bundle writer) and talk to the running pxe over its HTTP API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use builder::inventory::edit;
use builder::inventory::model::{Inventory, Node, Role};
use builder::render::{self, ClusterReset};
use builder::runbook::{self, RebuildFacts, RecoverFacts};
use builder::{bundle, fsutil};
use images::bundle::printable;

use crate::cli::{RebuildArgs, RecoverArgs};
use crate::commands::{self, Loaded};

fn find_node<'a>(inv: &'a Inventory, name: &str, file: &str) -> Result<&'a Node> {
    inv.node(name).with_context(|| {
        let known: Vec<&str> = inv.nodes.iter().map(|n| n.hostname.as_str()).collect();
        format!(
            "{file} has no node named `{name}`; known nodes: {}",
            known.join(", ")
        )
    })
}

fn inventory_name(l: &Loaded) -> String {
    l.path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| builder::inventory::DEFAULT_INVENTORY_NAME.into())
}

pub fn rebuild(a: &RebuildArgs) -> Result<()> {
    // `--lab DIR`: the lab's inventory (unless -i), its bundle folder (the one its pxe serves),
    // its pxe and its power driver.
    let lab = a
        .lab
        .lab
        .as_deref()
        .map(crate::lab_cmd::Lab::open)
        .transpose()?;
    let lab_args;
    let a = match &lab {
        Some(lab) => {
            lab_args = RebuildArgs {
                node: a.node.clone(),
                mac: a.mac.clone(),
                server: Some(lab.url()),
                api_token_file: Some(lab.state.api_token_file.clone()),
                watch: a.watch,
                runbook_only: a.runbook_only,
                power: a.power,
                lab: crate::cli::LabTarget {
                    lab: a.lab.lab.clone(),
                },
                render: crate::cli::RenderArgs {
                    source: crate::lab_cmd::Lab::source(Some(lab), &a.render.source),
                    out: lab.state.bundle.clone(),
                    secrets: a.render.secrets.clone(),
                    usb: a.render.usb,
                    usb_format: a.render.usb_format,
                },
            };
            &lab_args
        }
        None => a,
    };
    // With --mac the edited text is what gets validated (once) and rendered.
    let (l, old_mac) = match &a.mac {
        Some(mac) => set_mac(a, mac)?,
        None => {
            let l = commands::load(&a.render.source)?;
            let file = inventory_name(&l);
            let old = find_node(&l.inventory, &a.node, &file)?.mac.to_string();
            (l, old)
        }
    };
    let file = inventory_name(&l);
    let server = a
        .server
        .clone()
        .unwrap_or_else(|| l.inventory.appliance.url.clone());
    let server = server.trim_end_matches('/').to_string();
    let facts = RebuildFacts {
        old_mac,
        bundle_dir: a.render.out.display().to_string(),
        pxe_url: server.clone(),
    };

    if a.runbook_only {
        let node = find_node(&l.inventory, &a.node, &file)?;
        print!(
            "{}",
            runbook::rebuild(&l.inventory, &l.templates, node, &facts).context("runbook")?
        );
        return Ok(());
    }

    let node = find_node(&l.inventory, &a.node, &file)?;

    // Render first: the bundle is what pxe serves, and it stays even when arming fails.
    let secrets = commands::existing_secrets(&a.render, &l)?;
    let mut opts = commands::options(&l, &a.render.out)?;
    // Agents always join; recording them anyway makes the bundle say who was rebuilt.
    opts.joined.insert(a.node.clone());
    let b = render::render(&l.inventory, &secrets, &l.templates, &opts).context("rendering")?;
    bundle::write(&a.render.out, &b).context("writing bundle")?;
    // The bundle id pxe reports: the sha256 of plan.json (images::bundle::files::digest).
    let bundle_id = images::bundle::files::digest(&b.files[render::PLAN].bytes);
    println!(
        "rendered {} into {} in join form (server: https://{}:6443{})",
        a.node,
        a.render.out.display(),
        l.inventory.cluster.api.vip,
        if node.role == Role::Server {
            ", no cluster-init"
        } else {
            ""
        }
    );

    print!(
        "\n{}\n",
        runbook::rebuild(&l.inventory, &l.templates, node, &facts).context("runbook")?
    );

    let token = images::api_token::resolve(a.api_token_file.as_deref())
        .context("reading the pxe API token")?;
    let armed_at = Instant::now();
    arm(&server, token.as_deref(), &a.node, &bundle_id).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nthe bundle in {} is rendered; once pxe runs, arm the node with: pxe arm {} --server {server}",
            a.render.out.display(),
            a.node
        )
    })?;
    println!(
        "{}: armed on {server}; its next PXE boot installs it",
        a.node
    );
    if a.power {
        let pxe = crate::power_cmd::Pxe {
            url: server.clone(),
            token: token.clone(),
        };
        let lab_power = lab.is_some();
        match node.power {
            _ if lab_power => {
                let drv = crate::power_cmd::Drivers::Lab(a.lab.lab.clone().expect("--lab"));
                let mut d = drv
                    .driver(node, false)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", a.node))?;
                crate::power_cmd::boot_from_network(d.as_mut(), &pxe, &a.node, "builder rebuild")?;
            }
            None | Some(builder::inventory::model::Power::Manual) => println!(
                "{}: no power control: power it on (or reset it) now, with a one-time network boot (Dell: F12)",
                a.node
            ),
            _ => {
                let mut d = builder::power::driver_for(&l.inventory, node, Some(&secrets), false)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", a.node))?;
                crate::power_cmd::boot_from_network(d.as_mut(), &pxe, &a.node, "builder rebuild")?;
            }
        }
    }
    if a.watch {
        watch(&server, token.as_deref(), &a.node, armed_at)?;
    }
    Ok(())
}

/// `--mac`: edit the inventory file in place, but only once the edited text validates.
/// Returns the loaded, edited inventory and the MAC it replaced.
fn set_mac(a: &RebuildArgs, mac: &str) -> Result<(Loaded, String)> {
    let src = &a.render.source;
    let Some(path) = &src.inventory else {
        bail!(
            "--mac edits the inventory file, and this run uses the embedded default inventory: \
             write it out with `builder init lab.yaml`, then pass --inventory lab.yaml"
        );
    };
    let (name, text) = commands::inventory_text(src)?;
    let edited = edit::set_mac(&name, &text, &a.node, mac)?;
    let l = commands::load_text(src, name.clone(), edited.text.clone()).map_err(|_| {
        anyhow::anyhow!(
            "--mac {mac}: the edited inventory is not valid (see above); {name} was not changed"
        )
    })?;
    if edited.text != text {
        let mode = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .with_context(|| format!("reading {}", path.display()))?;
        fsutil::write_atomic(path, edited.text.as_bytes(), mode)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "{name}: {} now boots from {mac} (was {})",
            a.node, edited.old
        );
    }
    Ok((l, edited.old))
}

pub(crate) fn api(method: &str, url: &str, token: Option<&str>) -> Result<(u16, Value)> {
    // The error's own text already names the URL; its source chain would repeat the cause.
    let (status, body) = builder::lab::net::exchange(method, url, None, token)
        .map_err(|e| anyhow::anyhow!("the pxe server did not answer: {e}"))?;
    if status == 401 {
        bail!(
            "{url}: HTTP 401: the pxe server wants its operator API token: pass --api-token-file \
             FILE or set IRONSEED_API_TOKEN (pxe serve keeps it in STATE/api-token)"
        );
    }
    // Text from the network reaches the terminal: no control characters.
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(printable(String::from_utf8_lossy(&body).trim(), 512)));
    Ok((status, v))
}

/// Make pxe serve the new bundle, then arm the node. Never arms a node while pxe serves
/// anything but the bundle just rendered: an old bundle would install the old config (for the
/// first server: cluster-init, a split cluster) or answer the old MAC.
fn arm(server: &str, token: Option<&str>, node: &str, bundle_id: &str) -> Result<()> {
    let (status, v) = api("POST", &format!("{server}/api/v1/reload"), token)?;
    match status {
        200 if v["bundle"].as_str() == Some(bundle_id) => {}
        200 => bail!(
            "{server} serves another bundle folder than the one just rendered (its bundle {}, \
             this render {}); not arming {node}: render into the folder pxe serve --bundle \
             points at, or point it here",
            short(v["bundle"].as_str().unwrap_or("?")),
            short(bundle_id)
        ),
        404 => bail!(
            "{server} has no reload endpoint (an older pxe); not arming {node} on the old \
             bundle: restart pxe (systemctl restart ironseed-pxe) so it serves the new one"
        ),
        _ => bail!("{server}: reloading the bundle failed, not arming {node}: HTTP {status}: {v}"),
    }
    let (status, v) = api("POST", &format!("{server}/api/v1/nodes/{node}/arm"), token)?;
    if status != 200 {
        bail!("{server}: arming {node} failed: HTTP {status}: {v}");
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Arm → booted as the pxe timeline recorded it (the server's clock), when it has both.
pub(crate) fn timeline_duration(n: &Value) -> Option<Duration> {
    let t = n["timeline"].as_array()?;
    let armed = t.iter().rev().find(|e| e["event"] == "arm")?["at_ms"].as_u64()?;
    let booted = t.iter().rev().find(|e| e["event"] == "booted")?["at_ms"].as_u64()?;
    booted.checked_sub(armed).map(Duration::from_millis)
}

/// Follow one node through the install until it boots (or fails).
fn watch(server: &str, token: Option<&str>, node: &str, armed_at: Instant) -> Result<()> {
    let url = format!("{server}/api/v1/nodes");
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:<14} {bar:30} {bytes:>10}/{total_bytes:<10} {msg} [{elapsed}]",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(node.to_string());
    let mut last = String::new();
    let mut misses = 0u32;
    loop {
        let n = match api("GET", &url, token) {
            Ok((200, v)) => v["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["hostname"] == node).cloned()),
            _ => None,
        };
        let Some(n) = n else {
            // pxe restarting or the network blinking: keep watching for a while.
            misses += 1;
            if misses >= 60 {
                bar.abandon();
                bail!("lost the pxe server at {url} for 30 s while watching {node}");
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        misses = 0;
        let state = printable(n["state"].as_str().unwrap_or("-"), 32);
        bar.set_length(n["bytes_total"].as_u64().unwrap_or(0));
        bar.set_position(n["bytes_written"].as_u64().unwrap_or(0));
        bar.set_message(state.clone());
        if state != last {
            // Printed outside the bar so it also shows when stdout is not a terminal.
            bar.suspend(|| println!("{node}: {state} after {}", fmt_duration(armed_at.elapsed())));
            last = state.clone();
        }
        match state.as_str() {
            "booted" => {
                bar.finish_and_clear();
                let took = timeline_duration(&n).unwrap_or_else(|| armed_at.elapsed());
                println!("{node}: booted {} after arming", fmt_duration(took));
                return Ok(());
            }
            "failed" => {
                bar.abandon();
                bail!(
                    "{node} failed: {}",
                    printable(
                        n["last_error"].as_str().unwrap_or("no reason reported"),
                        512
                    )
                );
            }
            "disarmed" => {
                bar.abandon();
                bail!("{node} was disarmed while being watched");
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn recover(a: &RecoverArgs) -> Result<()> {
    let l = commands::load(&a.render.source)?;
    let inv = &l.inventory;
    let file = inventory_name(&l);
    let servers: Vec<&str> = inv.servers().map(|s| s.hostname.as_str()).collect();
    let survivor = match &a.survivor {
        Some(s) => {
            let n = find_node(inv, s, &file)?;
            if n.role != Role::Server {
                bail!(
                    "--survivor {s} is not a server; servers: {}",
                    servers.join(", ")
                );
            }
            n
        }
        None => inv
            .servers()
            .next()
            .with_context(|| format!("{file} has no server"))?,
    };
    let restore_path = runbook::restore_path(&a.from_snapshot, a.s3, inv)
        .map_err(|e| anyhow::anyhow!("--from-snapshot {}: {e}", a.from_snapshot))?;
    let secrets = commands::existing_secrets(&a.render, &l)?;
    let mut opts = commands::options(&l, &a.render.out)?;
    // After a restore the cluster exists: no server may ever cluster-init again.
    opts.joined
        .extend(inv.servers().map(|s| s.hostname.to_string()));
    let reset = ClusterReset {
        node: survivor.hostname.to_string(),
        restore_path,
        s3: a.s3,
    };
    opts.reset = Some(reset.clone());
    let b = render::render(inv, &secrets, &l.templates, &opts).context("rendering")?;
    bundle::write(&a.render.out, &b).context("writing bundle")?;
    let secrets_file = commands::secrets_path(&a.render, &l);
    println!(
        "rendered the restore bundle into {}\n",
        a.render.out.display()
    );
    let src = &a.render.source;
    let mut render_cmd = String::from("builder render");
    if let Some(p) = &src.inventory {
        render_cmd.push_str(&format!(" --inventory {}", display(p)));
    }
    for h in &src.hardware {
        render_cmd.push_str(&format!(" --hardware {}", display(h)));
    }
    if let Some(t) = &src.templates {
        render_cmd.push_str(&format!(" --templates {}", display(t)));
    }
    render_cmd.push_str(&format!(
        " --secrets {} --out {}",
        display(&secrets_file),
        display(&a.render.out)
    ));
    let facts = RecoverFacts {
        bundle_dir: display(&a.render.out),
        secrets_file: display(&secrets_file),
        render_cmd,
    };
    print!(
        "{}",
        runbook::recover(inv, &l.templates, &reset, &facts).context("runbook")?
    );
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
