//! The cluster-side runbooks of `builder rebuild` and `builder recover`: the exact commands an
//! operator runs around a node replacement or a restore, rendered from the validated model
//! (hostnames, addresses, VIP, disks filled in) through the `runbook/*.j2` templates.
//! Pure: text out, nothing run.

use minijinja::Value;
use serde_json::json;

use crate::inventory::model::{DiskPurpose, Inventory, Node, Role};
use crate::render::{ClusterReset, RenderError};
use crate::templates::Templates;

/// Where k3s keeps local etcd snapshots (`${data-dir}/server/db/snapshots`).
pub const SNAPSHOT_DIR: &str = "/var/lib/rancher/k3s/server/db/snapshots";

/// What the runbook says about the appliance side of a rebuild.
#[derive(Debug, Clone, Default)]
pub struct RebuildFacts {
    /// The boot MAC before `--mac` changed it (same as the node's MAC otherwise).
    pub old_mac: String,
    /// The bundle folder and the pxe server the node is armed on.
    pub bundle_dir: String,
    pub pxe_url: String,
}

fn host_entry(n: &Node) -> serde_json::Value {
    json!({"hostname": n.hostname, "ip": n.ip, "fqdn": n.fqdn})
}

/// Longhorn tier disks of a node, and the `nodes.longhorn.io` patch that re-adds them.
fn longhorn(node: &Node) -> (Vec<serde_json::Value>, Option<String>) {
    let disks: Vec<_> = node
        .profile
        .data_disks
        .iter()
        .filter(|d| d.purpose == DiskPurpose::Longhorn)
        .collect();
    if disks.is_empty() {
        return (Vec::new(), None);
    }
    let list = disks
        .iter()
        .map(|d| json!({"name": d.name, "path": d.mount}))
        .collect();
    let spec: serde_json::Map<String, serde_json::Value> = disks
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                json!({"path": d.mount, "allowScheduling": true, "tags": [d.name]}),
            )
        })
        .collect();
    let patch = json!({"spec": {"disks": spec}}).to_string();
    (list, Some(patch))
}

fn base(inv: &Inventory) -> serde_json::Value {
    json!({
        "cluster": inv.cluster,
        "ssh": inv.ssh,
        "appliance": inv.appliance,
        "nfs": inv.nfs,
        "snapshot_dir": SNAPSHOT_DIR,
    })
}

/// Where `builder recover` put things, for its runbook.
#[derive(Debug, Clone, Default)]
pub struct RecoverFacts {
    pub bundle_dir: String,
    pub secrets_file: String,
    /// The `builder render` command line that re-renders the same bundle without the reset.
    pub render_cmd: String,
}

/// The runbook for replacing `node`'s hardware, by role.
pub fn rebuild(
    inv: &Inventory,
    templates: &Templates,
    node: &Node,
    facts: &RebuildFacts,
) -> Result<String, RenderError> {
    let peers: Vec<_> = inv
        .servers()
        .filter(|s| s.hostname != node.hostname)
        .map(host_entry)
        .collect();
    let servers = inv.servers().count();
    let (disks, patch) = longhorn(node);
    let mut ctx = base(inv);
    let extra = json!({
        "node": node,
        "peers": peers,
        // kubectl and etcdctl run on a surviving server.
        "helper": peers.first(),
        "servers": servers,
        "quorum": servers / 2 + 1,
        "longhorn_disks": disks,
        "longhorn_patch": patch,
        "old_mac": facts.old_mac,
        "mac_changed": facts.old_mac != node.mac.to_string(),
        "bundle_dir": facts.bundle_dir,
        "pxe_url": facts.pxe_url,
        "nfs_host": node.role == Role::Nfs,
    });
    merge(&mut ctx, extra);
    Ok(templates.render(
        "runbook/rebuild.txt.j2",
        &Value::from(minijinja::value::Serde(&ctx)),
    )?)
}

/// The disaster runbook: restore `reset.node` from a snapshot, rejoin the other servers.
pub fn recover(
    inv: &Inventory,
    templates: &Templates,
    reset: &ClusterReset,
    facts: &RecoverFacts,
) -> Result<String, RenderError> {
    let survivor = inv.node(&reset.node).ok_or_else(|| RenderError::Invalid {
        file: "recover".into(),
        message: format!("no server named {}", reset.node),
    })?;
    let others: Vec<_> = inv
        .servers()
        .filter(|s| s.hostname != survivor.hostname)
        .map(host_entry)
        .collect();
    let mut ctx = base(inv);
    merge(
        &mut ctx,
        json!({
            "survivor": host_entry(survivor),
            "others": others,
            "reset": reset,
            "bundle_dir": facts.bundle_dir,
            "secrets_file": facts.secrets_file,
            "render_cmd": facts.render_cmd,
        }),
    );
    Ok(templates.render(
        "runbook/recover.txt.j2",
        &Value::from(minijinja::value::Serde(&ctx)),
    )?)
}

/// `cluster-reset-restore-path` for `--from-snapshot NAME`: with `s3`, an object name in the
/// inventory's bucket; otherwise a file name in [`SNAPSHOT_DIR`] or an absolute path on the
/// survivor. Refuses what could not be a snapshot (whitespace, `..`, relative paths).
pub fn restore_path(name: &str, s3: bool, inv: &Inventory) -> Result<String, String> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a snapshot name has no spaces or control characters".into());
    }
    if name.split('/').any(|c| c == "..") {
        return Err("`..` is not allowed in a snapshot path".into());
    }
    if s3 {
        if inv.cluster.snapshots.s3.is_none() {
            return Err("--s3, but the inventory has no cluster.etcd_snapshots.s3".into());
        }
        if name.starts_with('/') {
            return Err("an S3 snapshot is an object name, not a path".into());
        }
        return Ok(name.into());
    }
    if name.starts_with('/') {
        return Ok(name.into());
    }
    if name.contains('/') {
        return Err(format!(
            "a local snapshot is a file name in {SNAPSHOT_DIR} or an absolute path"
        ));
    }
    Ok(format!("{SNAPSHOT_DIR}/{name}"))
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}
