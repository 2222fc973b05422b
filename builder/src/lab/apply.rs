//! The plan of `builder lab apply`: the bundle the lab runs (lab.json `bundle`) against a fresh
//! render of the changed inventory. Pure over the two bundles: which nodes a rebuild must
//! reinstall (and why), which changes pxe serves without touching a running node, and the
//! dangers `builder diff` names for a running cluster.
//!
//! The new render keeps the old bundle's `joined` list (`commands::options` reads it), so the
//! comparison shows the inventory change only; the rebuild of each node then renders it in join
//! form, as `builder rebuild` always does.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::diff::{self, Danger};
use crate::render::{Bundle, PLAN};

/// One node the change reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub node: String,
    /// Why, one reason per line: the seed files and plan fields that change.
    pub why: Vec<String>,
    /// Named by a [`Danger`]: the rehearsal is what the lab is for, but the operator is told.
    pub dangerous: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    pub dangers: Vec<Danger>,
    /// In cluster order: servers first (the bootstrap server before the others), then agents and
    /// the rest; one at a time, each `booted` before the next (etcd keeps its quorum).
    pub rebuild: Vec<Rebuild>,
    /// Changed files pxe serves that no installed node reads (install scripts, topology,
    /// cluster-wide plan fields): a reload is enough.
    pub served_only: Vec<String>,
    /// Nodes only in the new render: the lab has no VM for them (`lab down`, `lab up`).
    pub added: Vec<String>,
    /// Nodes only in the lab's bundle: their VMs stay until `lab down`.
    pub removed: Vec<String>,
    /// The cluster's only server, when the plan rebuilds it: a reinstall of the one etcd member
    /// starts a new cluster (the runbook's STOP), so `lab apply --yes` refuses it unless told.
    pub sole_server: Option<String>,
}

impl ApplyPlan {
    pub fn is_empty(&self) -> bool {
        self.rebuild.is_empty()
            && self.served_only.is_empty()
            && self.added.is_empty()
            && self.removed.is_empty()
    }
}

/// Plan fields that reach every node's disk when they change.
const IMAGE_FIELDS: &[(&str, &str)] = &[
    ("os_image", "the OS image changes"),
    ("airgap", "the k3s air-gap kit changes"),
];

/// Plan fields of a node that only the boot server reads: a change is served, not installed.
const SERVED_FIELDS: &[&str] = &["install_script", "dhcp_arch"];

fn plan_of(get: &dyn Fn(&str) -> Option<Vec<u8>>) -> Value {
    get(PLAN)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn nodes_of(plan: &Value) -> Vec<(String, Value)> {
    plan["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["hostname"].as_str()?.to_string(), n.clone())))
        .collect()
}

/// The node a bundle file belongs to, if it is part of what that node installs.
fn seed_owner(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("nodes/")?;
    rest.split_once('/').map(|(h, _)| h)
}

/// Servers first (bootstrap before the others), then everyone else; plan order within.
fn rank(n: &Value) -> u8 {
    match (n["role"].as_str(), n["bootstrap"].as_bool()) {
        (Some("server"), Some(true)) => 0,
        (Some("server"), _) => 1,
        _ => 2,
    }
}

pub fn plan(old: &BTreeMap<String, Vec<u8>>, new: &Bundle) -> ApplyPlan {
    let get_old = |p: &str| old.get(p).cloned();
    let get_new = |p: &str| new.files.get(p).map(|f| f.bytes.clone());
    let (po, pn) = (plan_of(&get_old), plan_of(&get_new));
    let old_nodes: BTreeMap<String, Value> = nodes_of(&po).into_iter().collect();
    let new_nodes = nodes_of(&pn);
    let dangers = diff::dangers(old, new);
    let dangerous: BTreeSet<&str> = dangers
        .iter()
        .flat_map(|d| d.nodes.iter().map(String::as_str))
        .collect();

    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut served_only = Vec::new();

    // Files: seed files belong to their node; everything else is served only.
    let paths: BTreeSet<&String> = old.keys().chain(new.files.keys()).collect();
    for p in paths {
        let (a, b) = (old.get(p), new.files.get(p).map(|f| &f.bytes));
        if a == b {
            continue;
        }
        match seed_owner(p) {
            Some(h) => why.entry(h.to_string()).or_default().push(format!(
                "{p} {}",
                match (a, b) {
                    (None, _) => "is new",
                    (_, None) => "is gone",
                    _ => "changes",
                }
            )),
            // plan.json and SHA256SUMS change with anything; their parts are judged below.
            None if p == PLAN || p == "SHA256SUMS" => {}
            None => served_only.push(p.clone()),
        }
    }

    // Plan fields: per node, and the cluster-wide ones that reach every disk.
    let mut added = Vec::new();
    for (h, n) in &new_nodes {
        let Some(o) = old_nodes.get(h) else {
            added.push(h.clone());
            why.remove(h);
            continue;
        };
        let keys: BTreeSet<&String> = o
            .as_object()
            .into_iter()
            .chain(n.as_object())
            .flat_map(|m| m.keys())
            .collect();
        for k in keys {
            if o.get(k) == n.get(k) {
                continue;
            }
            if SERVED_FIELDS.contains(&k.as_str()) {
                served_only.push(format!("plan.json: {h}.{k}"));
            } else {
                why.entry(h.clone())
                    .or_default()
                    .push(format!("plan.json: {k} changes"));
            }
        }
        for (field, reason) in IMAGE_FIELDS {
            if po.get(*field) != pn.get(*field) {
                why.entry(h.clone()).or_default().push((*reason).into());
            }
        }
    }
    if let (Some(a), Some(b)) = (po.as_object(), pn.as_object()) {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let skip = ["nodes", "joined"].contains(&k.as_str())
                || IMAGE_FIELDS.iter().any(|(f, _)| f == k);
            if !skip && a.get(k) != b.get(k) {
                served_only.push(format!("plan.json: {k}"));
            }
        }
    }
    let removed: Vec<String> = old_nodes
        .keys()
        .filter(|h| !new_nodes.iter().any(|(n, _)| n == *h))
        .cloned()
        .collect();
    for h in &removed {
        why.remove(h);
    }

    let mut order: Vec<&(String, Value)> = new_nodes
        .iter()
        .filter(|(h, _)| why.contains_key(h))
        .collect();
    order.sort_by_key(|(_, n)| rank(n));
    let rebuild: Vec<Rebuild> = order
        .into_iter()
        .map(|(h, _)| Rebuild {
            node: h.clone(),
            why: why.remove(h).unwrap_or_default(),
            dangerous: dangerous.contains(h.as_str()),
        })
        .collect();
    let servers: Vec<&String> = new_nodes
        .iter()
        .filter(|(_, n)| n["role"].as_str() == Some("server"))
        .map(|(h, _)| h)
        .collect();
    let sole_server = match servers[..] {
        [only] if rebuild.iter().any(|r| &r.node == only) => Some(only.clone()),
        _ => None,
    };
    ApplyPlan {
        dangers,
        rebuild,
        served_only,
        added,
        removed,
        sole_server,
    }
}

/// The plan as `lab apply` prints it before doing anything.
pub fn describe(p: &ApplyPlan) -> String {
    use images::bundle::printable;
    let mut out = String::new();
    if p.is_empty() {
        out.push_str("the lab runs this render already: nothing to apply\n");
        return out;
    }
    if !p.dangers.is_empty() {
        out.push_str(&format!(
            "DANGEROUS for a running cluster ({}): the lab is where to find out\n",
            p.dangers.len()
        ));
        for d in &p.dangers {
            out.push_str(&format!("  ! {}\n", d.what));
            out.push_str(&format!("    nodes:     {}\n", d.nodes.join(", ")));
            out.push_str(&format!("    why:       {}\n", d.why));
            out.push_str(&format!("    a rebuild: {}\n", d.rebuild));
        }
    }
    if let Some(h) = &p.sole_server {
        out.push_str(&format!(
            "STOP: {} is the cluster's only server: rebuilding it starts a new, empty cluster \
             (on the rack: restore from an etcd snapshot instead, `builder recover`); \
             `--yes` refuses this without `--rebuild-sole-server`\n",
            printable(h, 64)
        ));
    }
    if !p.rebuild.is_empty() {
        out.push_str("rebuild, one at a time in this order:\n");
        for (i, r) in p.rebuild.iter().enumerate() {
            out.push_str(&format!(
                "  {}. {}{}\n",
                i + 1,
                printable(&r.node, 64),
                if r.dangerous {
                    " (dangerous, see above)"
                } else {
                    ""
                }
            ));
            for w in &r.why {
                out.push_str(&format!("       {}\n", printable(w, 200)));
            }
        }
    }
    if !p.served_only.is_empty() {
        out.push_str("served by pxe after a reload, no rebuild:\n");
        for s in &p.served_only {
            out.push_str(&format!("  {}\n", printable(s, 200)));
        }
    }
    for h in &p.added {
        out.push_str(&format!(
            "new node {h}: the lab has no VM for it (lab down, then lab up with this inventory)\n"
        ));
    }
    for h in &p.removed {
        out.push_str(&format!(
            "node {h} is gone from the inventory: its VM keeps running until lab down\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::inventory::Inventory;
    use crate::render::{RenderOptions, render};
    use crate::secrets::Secrets;
    use crate::templates::Templates;

    fn homelab() -> crate::inventory::model::Inventory {
        crate::inventory::seed_homelab()
    }

    fn secrets() -> Secrets {
        let mut s = Secrets::generate();
        s.k3s_token = "K10-lab-token-0123456789".into();
        s
    }

    fn bundle(inv: &Inventory, s: &Secrets) -> Bundle {
        render(inv, s, &Templates::embedded(), &RenderOptions::default()).unwrap()
    }

    fn on_disk(b: &Bundle) -> BTreeMap<String, Vec<u8>> {
        b.files
            .iter()
            .map(|(p, f)| (p.clone(), f.bytes.clone()))
            .collect()
    }

    fn node_mut<'a>(inv: &'a mut Inventory, h: &str) -> &'a mut crate::inventory::model::Node {
        inv.nodes
            .iter_mut()
            .find(|n| n.hostname.as_str() == h)
            .unwrap()
    }

    fn plan_after(edit: impl FnOnce(&mut Inventory)) -> ApplyPlan {
        let s = secrets();
        let old = on_disk(&bundle(&homelab(), &s));
        let mut inv = homelab();
        edit(&mut inv);
        plan(&old, &bundle(&inv, &s))
    }

    fn names(p: &ApplyPlan) -> Vec<&str> {
        p.rebuild.iter().map(|r| r.node.as_str()).collect()
    }

    /// Protects the sole-server guard of `lab apply --yes`: a change that rebuilds the only
    /// server is named in the plan (and the command refuses it without the flag).
    #[test]
    fn rebuilding_the_only_server_is_named() {
        let one_server = |inv: &mut Inventory| {
            inv.nodes.retain(|n| {
                n.role != crate::inventory::model::Role::Server
                    || n.hostname.as_str() == "k3s-master1"
            });
        };
        let s = secrets();
        let mut base = homelab();
        one_server(&mut base);
        let old = on_disk(&bundle(&base, &s));
        let mut changed = base.clone();
        node_mut(&mut changed, "k3s-master1")
            .labels
            .insert("homelab/zone".into(), "b".into());
        let p = plan(&old, &bundle(&changed, &s));
        assert_eq!(p.sole_server.as_deref(), Some("k3s-master1"), "{p:#?}");
        assert!(describe(&p).contains("STOP: k3s-master1 is the cluster's only server"));
        // Three servers: rebuilding one keeps quorum, no STOP.
        let p = plan_after(|inv| {
            node_mut(inv, "k3s-master1")
                .labels
                .insert("homelab/zone".into(), "b".into());
        });
        assert_eq!(p.sole_server, None, "{p:#?}");
    }

    #[test]
    fn the_same_render_plans_nothing() {
        let p = plan_after(|_| {});
        assert!(p.is_empty(), "{p:#?}");
        assert!(describe(&p).contains("nothing to apply"));
    }

    #[test]
    fn a_label_on_one_agent_rebuilds_that_agent_only_and_is_not_dangerous() {
        let p = plan_after(|inv| {
            node_mut(inv, "k3s2")
                .labels
                .insert("homelab/zone".into(), "b".into());
        });
        assert_eq!(names(&p), ["k3s2"], "{p:#?}");
        assert!(p.dangers.is_empty());
        assert!(!p.rebuild[0].dangerous);
        assert!(
            p.rebuild[0]
                .why
                .iter()
                .any(|w| w.starts_with("nodes/k3s2/")),
            "{:?}",
            p.rebuild[0].why
        );
    }

    /// A cluster-wide critical flag: every server, bootstrap first, each marked dangerous; the
    /// agents are rebuilt after the servers when their seeds change too.
    #[test]
    fn a_cluster_cidr_change_rebuilds_servers_first_and_marks_them_dangerous() {
        let p = plan_after(|inv| inv.cluster.pod_cidr = "10.44.0.0/16".parse().unwrap());
        assert_eq!(p.dangers.len(), 1, "{:#?}", p.dangers);
        let n = names(&p);
        assert_eq!(
            &n[..3],
            ["k3s-master1", "k3s-master2", "k3s-master3"],
            "{n:?}"
        );
        assert!(p.rebuild[..3].iter().all(|r| r.dangerous));
        assert!(p.rebuild[3..].iter().all(|r| !r.dangerous), "{p:#?}");
        let text = describe(&p);
        assert!(text.contains("DANGEROUS"), "{text}");
        assert!(text.contains("1. k3s-master1 (dangerous"), "{text}");
    }

    #[test]
    fn a_new_token_never_shows_a_secret_in_the_plan() {
        let s = secrets();
        let old = on_disk(&bundle(&homelab(), &s));
        let mut s2 = secrets();
        s2.k3s_token = "K10-other-token-9876543210".into();
        let new = bundle(&homelab(), &s2);
        let p = plan(&old, &new);
        assert!(!p.rebuild.is_empty());
        let text = format!("{}{p:?}", describe(&p));
        assert!(!text.contains("lab-token") && !text.contains("other-token"));
        // Report tokens derive from the secrets: plan fields are named, never shown.
        assert!(text.contains("plan.json: report_token changes"), "{text}");
        let rt = crate::render::report_token(&s2, "k3s1");
        assert!(!text.contains(&rt), "{text}");
    }

    #[test]
    fn added_and_removed_nodes_are_not_rebuilt() {
        let s = secrets();
        let full = bundle(&homelab(), &s);
        let mut small = homelab();
        small.nodes.retain(|n| n.hostname.as_str() != "k3s3");
        let smaller = bundle(&small, &s);
        let p = plan(&on_disk(&smaller), &full);
        assert_eq!(p.added, ["k3s3"]);
        assert!(!names(&p).contains(&"k3s3"));
        let p = plan(&on_disk(&full), &smaller);
        assert_eq!(p.removed, ["k3s3"]);
        assert!(!names(&p).contains(&"k3s3"));
        assert!(describe(&p).contains("node k3s3 is gone"));
    }

    #[test]
    fn files_outside_a_nodes_seed_are_served_only() {
        let s = secrets();
        let b = bundle(&homelab(), &s);
        let mut old = on_disk(&b);
        old.insert("topology.svg".into(), b"<svg/>".to_vec());
        old.insert("ipxe/k3s1.ipxe".into(), b"#!ipxe\n".to_vec());
        let p = plan(&old, &b);
        assert!(p.rebuild.is_empty(), "{p:#?}");
        assert_eq!(p.served_only, ["ipxe/k3s1.ipxe", "topology.svg"]);
    }
}
