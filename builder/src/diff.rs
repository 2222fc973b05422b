//! `builder diff`: what a render would change in an existing bundle, file by file, with line
//! diffs for text. Secrets are masked in the output.

use std::collections::BTreeMap;

use crate::render::Bundle;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BundleDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Path and its line diff (`-`/`+`/` ` prefixed lines, context trimmed).
    pub changed: Vec<(String, Vec<String>)>,
}

impl BundleDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub fn diff(old: &BTreeMap<String, Vec<u8>>, new: &Bundle, secrets: &[&str]) -> BundleDiff {
    let mut d = BundleDiff::default();
    for (path, f) in &new.files {
        match old.get(path) {
            None => d.added.push(path.clone()),
            Some(o) if *o != f.bytes => {
                match (std::str::from_utf8(o), std::str::from_utf8(&f.bytes)) {
                    (Ok(a), Ok(b)) => {
                        let (a, b) = (mask(a, secrets), mask(b, secrets));
                        d.changed.push((path.clone(), line_diff(&a, &b, 2)));
                    }
                    // Seed images: a line diff of a FAT volume is noise (and could show the token).
                    _ => d
                        .changed
                        .push((path.clone(), vec!["binary file differs".into()])),
                }
            }
            _ => {}
        }
    }
    for path in old.keys() {
        if !new.files.contains_key(path) {
            d.removed.push(path.clone());
        }
    }
    d
}

/// A change between a running cluster's bundle and a new render that breaks that cluster when
/// it reaches a node (by `builder rebuild` or a reinstall): k3s refuses it, starts over beside
/// the old state, or a disk is chosen or read differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Danger {
    /// What changes, with the old and new value (never a secret's).
    pub what: String,
    /// Why it breaks the running cluster.
    pub why: String,
    /// What rebuilding one of `nodes` with the new bundle would do.
    pub rebuild: String,
    /// The nodes concerned, in plan order.
    pub nodes: Vec<String>,
}

/// k3s server flags that must be equal on every server, or a joining server is refused with
/// "critical configuration value mismatch" (the k3s embedded-etcd HA documentation; the list
/// as operators read it: docs/operations.md "Dangerous changes"). `disable` is
/// critical only for `servicelb`, handled apart.
const CRITICAL: &[&str] = &[
    "agent-token",
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "service-cidr",
    "disable-cloud-controller",
    "disable-helm-controller",
    "disable-network-policy",
    "disable-kube-proxy",
    "egress-selector-mode",
    "embedded-registry",
    "flannel-backend",
    "flannel-external-ip",
    "flannel-ipv6-masq",
    "secrets-encryption",
    "secrets-encryption-provider",
];

/// Keys whose values are secrets: their change is reported, never their value.
const SECRET_KEYS: &[&str] = &["token", "agent-token"];

const K3S_DATA_DIR: &str = "/var/lib/rancher/k3s";
const KUBELET_ROOT_DIR: &str = "/var/lib/kubelet";

/// One bundle as `dangers` reads it: each node's role, k3s config and disks.
#[derive(Default)]
struct Side {
    /// Hostnames in plan order.
    order: Vec<String>,
    role: BTreeMap<String, String>,
    k3s: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    plan: BTreeMap<String, serde_json::Value>,
}

impl Side {
    fn read(get: &dyn Fn(&str) -> Option<Vec<u8>>) -> Side {
        let mut s = Side::default();
        // Read loosely (serde_json::Value, not the typed Plan): an old bundle of another plan
        // version must still be compared as far as it can be.
        let plan: serde_json::Value = get("plan.json")
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for n in plan["nodes"].as_array().into_iter().flatten() {
            let Some(h) = n["hostname"].as_str() else {
                continue;
            };
            s.order.push(h.to_string());
            s.role
                .insert(h.into(), n["role"].as_str().unwrap_or("").to_string());
            s.plan.insert(h.into(), n.clone());
            let file = format!("nodes/{h}/k3s/config.yaml");
            let doc = get(&file)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|t| crate::render::parse_yaml(&file, &t, false).ok())
                .and_then(|mut v| v.pop());
            if let Some(serde_json::Value::Object(m)) = doc {
                s.k3s.insert(h.into(), m);
            }
        }
        s
    }
}

/// A value for the terminal. An old bundle on disk may hold anything: control and bidi
/// characters are dropped and the value is cut.
fn show(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "unset".into(),
        Some(serde_json::Value::String(s)) => images::bundle::printable(s, 200),
        Some(v) => images::bundle::printable(&v.to_string(), 200),
    }
}

/// The kubelet's `--root-dir` from a k3s config (`kubelet-arg`, `kubelet-arg+`).
fn kubelet_root(cfg: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut root = KUBELET_ROOT_DIR.to_string();
    for key in ["kubelet-arg", "kubelet-arg+"] {
        let args: Vec<&serde_json::Value> = match cfg.get(key) {
            Some(serde_json::Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => vec![],
        };
        for a in args.iter().filter_map(|a| a.as_str()) {
            if let Some(v) = a.trim_start_matches("--").strip_prefix("root-dir=") {
                root = v.to_string();
            }
        }
    }
    root
}

/// Dangerous changes from the bundle a cluster runs (`old`, as read from disk) to a new render.
/// Pure: what a running cluster would suffer, from the two bundles alone. Nodes only in one of
/// them are not running with both configs and are left out, except that a server newly given
/// `cluster-init` next to a running cluster is flagged.
pub fn dangers(old: &BTreeMap<String, Vec<u8>>, new: &Bundle) -> Vec<Danger> {
    let a = Side::read(&|p| old.get(p).cloned());
    let b = Side::read(&|p| new.files.get(p).map(|f| f.bytes.clone()));
    // (what, why, rebuild) → hosts: the same change on several nodes is one danger.
    let mut found: Vec<((String, String, String), Vec<String>)> = Vec::new();
    let mut add = |what: String, why: &str, rebuild: &str, host: &str| {
        let key = (what, why.to_string(), rebuild.to_string());
        match found.iter_mut().find(|(k, _)| *k == key) {
            Some((_, hosts)) => hosts.push(host.to_string()),
            None => found.push((key, vec![host.to_string()])),
        }
    };
    let both: Vec<&String> = b.order.iter().filter(|h| a.plan.contains_key(*h)).collect();
    for h in &both {
        let server = b.role.get(*h).map(String::as_str) == Some("server");
        if let (Some(o), Some(n)) = (a.k3s.get(*h), b.k3s.get(*h)) {
            if o.get("token") != n.get("token") {
                add(
                    "the k3s token changes".into(),
                    "the token encrypts the cluster's bootstrap data: a server with another token cannot join or read it, an agent with another token is refused",
                    "reinstalls k3s with the new token: the node cannot join the running cluster",
                    h,
                );
            }
            let data_dir = |c: &serde_json::Map<String, serde_json::Value>| {
                c.get("data-dir")
                    .map_or(K3S_DATA_DIR.to_string(), |v| show(Some(v)))
            };
            let (od, nd) = (data_dir(o), data_dir(n));
            if od != nd {
                add(
                    format!("k3s data-dir changes from {od} to {nd}"),
                    "k3s keeps its certificates, etcd and containerd state in the data dir: k3s restarted with another one starts empty beside the old state",
                    if server {
                        "reinstalls the server with an empty data dir: it joins as a new etcd member; the old member must be removed first (kubectl delete node)"
                    } else {
                        "reinstalls the agent with an empty data dir: it registers again and pulls every image again"
                    },
                    h,
                );
            }
            let (or, nr) = (kubelet_root(o), kubelet_root(n));
            if or != nr {
                add(
                    format!("the kubelet root dir changes from {or} to {nr}"),
                    "every pod volume and CSI (Longhorn) mount lives under it: a running node with another root dir loses its mounted volumes",
                    "reinstalls the node with the new root dir; Longhorn rebuilds its replicas from the other nodes",
                    h,
                );
            }
            if server {
                for key in CRITICAL {
                    if o.get(*key) != n.get(*key) {
                        let what = if SECRET_KEYS.contains(key) {
                            format!("critical server flag {key} changes")
                        } else {
                            format!(
                                "critical server flag {key} changes from {} to {}",
                                show(o.get(*key)),
                                show(n.get(*key))
                            )
                        };
                        let cidr = matches!(*key, "cluster-cidr" | "service-cidr" | "cluster-dns");
                        add(
                            what,
                            if cidr {
                                "every pod and Service address was allocated from it: a running cluster cannot change it, and servers that differ refuse each other (critical configuration value mismatch)"
                            } else {
                                "it must be equal on every server: a server with another value is refused (critical configuration value mismatch)"
                            },
                            if cidr {
                                "the rebuilt server cannot join the others; the change takes a new cluster"
                            } else {
                                "the rebuilt server cannot join until every server has the new value"
                            },
                            h,
                        );
                    }
                }
                let servicelb = |c: &serde_json::Map<String, serde_json::Value>| {
                    c.get("disable")
                        .and_then(|d| d.as_array())
                        .is_some_and(|d| d.iter().any(|x| x == "servicelb"))
                };
                if servicelb(o) != servicelb(n) {
                    add(
                        format!(
                            "critical server flag disable: servicelb is {}",
                            if servicelb(n) { "added" } else { "removed" }
                        ),
                        "it must be equal on every server: a server with another value is refused (critical configuration value mismatch)",
                        "the rebuilt server cannot join until every server has the new value",
                        h,
                    );
                }
            }
        }
        let (po, pn) = (&a.plan[*h], &b.plan[*h]);
        if po["install_disk"] != pn["install_disk"] {
            add(
                format!(
                    "the install disk selector changes from {} to {}",
                    show(Some(&po["install_disk"])),
                    show(Some(&pn["install_disk"]))
                ),
                "the installer erases the disk the selector matches",
                "installs onto (and erases) whatever disk the new selector matches, which may not be the old system disk",
                h,
            );
        }
        let disks = |p: &serde_json::Value| -> Vec<serde_json::Value> {
            p["data_disks"].as_array().cloned().unwrap_or_default()
        };
        for nd in disks(pn) {
            let name = nd["name"].as_str().unwrap_or("");
            let Some(od) = disks(po).into_iter().find(|d| d["name"] == nd["name"]) else {
                continue;
            };
            if od["selector"] != nd["selector"] {
                add(
                    format!(
                        "data disk {name}: selector changes from {} to {}",
                        show(Some(&od["selector"])),
                        show(Some(&nd["selector"]))
                    ),
                    "first boot finds the data disk by its selector",
                    "first boot looks for another disk: none or several stops it; a blank one is formatted and used instead of the disk holding the data",
                    h,
                );
            }
            if od["filesystem"] != nd["filesystem"] {
                add(
                    format!(
                        "data disk {name}: filesystem changes from {} to {}",
                        show(Some(&od["filesystem"])),
                        show(Some(&nd["filesystem"]))
                    ),
                    "first boot keeps a data disk only when it holds the profile's filesystem",
                    "first boot finds the old filesystem, leaves the disk untouched and unmounted, and stops (first-boot-failed): the data is not lost, but not used",
                    h,
                );
            }
        }
    }
    // A second cluster-init next to a running cluster starts a second, separate cluster.
    let init = |s: &Side, h: &str| {
        s.k3s
            .get(h)
            .and_then(|c| c.get("cluster-init"))
            .is_some_and(|v| v == true)
    };
    let running = a
        .k3s
        .keys()
        .any(|h| a.role.get(h).is_some_and(|r| r == "server"));
    let was: Vec<&String> = a.order.iter().filter(|h| init(&a, h)).collect();
    for h in b.order.iter().filter(|h| init(&b, h) && !init(&a, h)) {
        if running {
            add(
                format!(
                    "cluster-init moves to {h} (was {})",
                    if was.is_empty() {
                        "none".to_string()
                    } else {
                        was.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                "a server installed with cluster-init starts a new, separate cluster (split brain) instead of joining the running one",
                "bootstraps a second cluster on this server; rebuild it in join form instead (builder rebuild does)",
                h,
            );
        }
    }
    found
        .into_iter()
        .map(|((what, why, rebuild), nodes)| Danger {
            what,
            why,
            rebuild,
            nodes,
        })
        .collect()
}

fn mask(text: &str, secrets: &[&str]) -> String {
    let mut t = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        t = t.replace(s, "<redacted>");
    }
    t
}

/// Line diff by longest common subsequence, with `context` unchanged lines around each change.
pub fn line_diff(a: &str, b: &str, context: usize) -> Vec<String> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let keep: Vec<bool> = (0..ops.len())
        .map(|k| {
            let lo = k.saturating_sub(context);
            let hi = (k + context + 1).min(ops.len());
            ops[lo..hi].iter().any(|(c, _)| *c != ' ')
        })
        .collect();
    let mut out = Vec::new();
    let mut skipped = false;
    for (k, (c, l)) in ops.iter().enumerate() {
        if keep[k] {
            if skipped {
                out.push("@@".to_string());
                skipped = false;
            }
            out.push(format!("{c}{l}"));
        } else {
            skipped = true;
        }
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

    fn secrets(token: &str) -> Secrets {
        let mut s = Secrets::generate();
        s.k3s_token = token.into();
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

    /// The dangers of going from the seed homelab to the homelab edited by `edit`.
    fn dangers_after(edit: impl FnOnce(&mut Inventory)) -> Vec<Danger> {
        let s = secrets("K10-old-token-0123456789");
        let old = bundle(&homelab(), &s);
        let mut inv = homelab();
        edit(&mut inv);
        dangers(&on_disk(&old), &bundle(&inv, &s))
    }

    fn node_mut<'a>(inv: &'a mut Inventory, h: &str) -> &'a mut crate::inventory::model::Node {
        inv.nodes
            .iter_mut()
            .find(|n| n.hostname.as_str() == h)
            .unwrap()
    }

    const SERVERS: [&str; 3] = ["k3s-master1", "k3s-master2", "k3s-master3"];

    #[test]
    fn the_same_render_and_harmless_changes_are_not_dangerous() {
        assert_eq!(dangers_after(|_| {}), []);
        // A label, an extra package, a new node: nothing the running cluster refuses.
        let d = dangers_after(|inv| {
            let n = node_mut(inv, "k3s1");
            n.labels.insert("homelab/zone".into(), "a".into());
            n.packages.push("htop".into());
        });
        assert_eq!(d, []);
        // A first render (nothing on disk) has nothing to break.
        let s = secrets("K10-old-token-0123456789");
        assert_eq!(dangers(&BTreeMap::new(), &bundle(&homelab(), &s)), []);
    }

    #[test]
    fn a_cluster_cidr_change_names_every_server_and_no_agent() {
        let d = dangers_after(|inv| inv.cluster.pod_cidr = "10.44.0.0/16".parse().unwrap());
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(
            d[0].what,
            "critical server flag cluster-cidr changes from 10.42.0.0/16 to 10.44.0.0/16"
        );
        assert_eq!(d[0].nodes, SERVERS);
        assert!(d[0].rebuild.contains("new cluster"), "{}", d[0].rebuild);
    }

    #[test]
    fn a_critical_flag_change_says_the_rebuilt_server_cannot_join() {
        let d =
            dangers_after(|inv| inv.cluster.secrets_encryption = !inv.cluster.secrets_encryption);
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(
            d[0].what
                .starts_with("critical server flag secrets-encryption changes")
        );
        assert!(d[0].why.contains("critical configuration value mismatch"));
        assert_eq!(d[0].nodes, SERVERS);
    }

    #[test]
    fn a_new_token_concerns_every_k3s_node_and_never_shows_the_token() {
        let s = secrets("K10-old-token-0123456789");
        let old = on_disk(&bundle(&homelab(), &s));
        let d = dangers(
            &old,
            &bundle(&homelab(), &secrets("K10-new-token-9876543210")),
        );
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(d[0].what, "the k3s token changes");
        assert_eq!(
            d[0].nodes,
            [SERVERS.as_slice(), &["k3s1", "k3s2", "k3s3"]].concat(),
            "the NFS host has no token"
        );
        let text = format!("{d:?}");
        assert!(!text.contains("old-token") && !text.contains("new-token"));
    }

    #[test]
    fn data_dir_and_kubelet_root_dir_changes_name_their_node() {
        let d = dangers_after(|inv| {
            node_mut(inv, "k3s2")
                .k3s_extra
                .insert("data-dir".into(), serde_json::json!("/data/k3s"));
            node_mut(inv, "k3s1").k3s_extra.insert(
                "kubelet-arg".into(),
                serde_json::json!(["max-pods=200", "root-dir=/data/kubelet"]),
            );
        });
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(
            d[0].what,
            "the kubelet root dir changes from /var/lib/kubelet to /data/kubelet"
        );
        assert_eq!(d[0].nodes, ["k3s1"]);
        assert_eq!(
            d[1].what,
            "k3s data-dir changes from /var/lib/rancher/k3s to /data/k3s"
        );
        assert_eq!(d[1].nodes, ["k3s2"]);
        assert!(d[1].rebuild.contains("agent"));
    }

    #[test]
    fn moving_cluster_init_to_another_server_is_a_split_brain() {
        let d = dangers_after(|inv| {
            node_mut(inv, "k3s-master1").bootstrap = false;
            node_mut(inv, "k3s-master2").bootstrap = true;
        });
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(
            d[0].what,
            "cluster-init moves to k3s-master2 (was k3s-master1)"
        );
        assert_eq!(d[0].nodes, ["k3s-master2"]);
        assert!(d[0].why.contains("split brain"));
        // The render `builder rebuild` makes (master1 in join form) is not a danger.
        let s = secrets("K10-old-token-0123456789");
        let old = on_disk(&bundle(&homelab(), &s));
        let opts = RenderOptions {
            joined: ["k3s-master1".to_string()].into(),
            ..Default::default()
        };
        let joined = render(&homelab(), &s, &Templates::embedded(), &opts).unwrap();
        assert_eq!(dangers(&old, &joined), []);
    }

    #[test]
    fn a_data_disk_selector_or_filesystem_change_says_what_first_boot_does() {
        let d = dangers_after(|inv| {
            let disks = &mut node_mut(inv, "k3s3").profile.data_disks;
            disks[0].filesystem = "xfs".into();
            disks[1].selector.model = Some("Samsung SSD 990 PRO 2TB".into());
        });
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(
            d[0].what,
            "data disk optane: filesystem changes from ext4 to xfs"
        );
        assert!(d[0].rebuild.contains("untouched"));
        assert!(
            d[1].what
                .starts_with("data disk nvme: selector changes from"),
            "{}",
            d[1].what
        );
        assert!(d[1].what.contains("990 PRO"));
        assert!(d[1].rebuild.contains("formatted"));
        assert!(d.iter().all(|x| x.nodes == ["k3s3"]));
    }

    #[test]
    fn an_install_disk_selector_change_is_dangerous() {
        let d = dangers_after(|inv| {
            node_mut(inv, "nfs1").profile.install_disk.max_size_gb = Some(1024)
        });
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(d[0].what.starts_with("the install disk selector changes"));
        assert_eq!(d[0].nodes, ["nfs1"]);
    }

    #[test]
    fn line_diff_marks_changes_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\nf\n", "a\nb\nC\nd\ne\nf\n", 1);
        let want: Vec<String> = ["@@", " b", "-c", "+C", " d"].map(String::from).to_vec();
        assert_eq!(d, want);
    }

    #[test]
    fn binary_files_are_not_line_diffed() {
        let mut old = BTreeMap::new();
        old.insert("usb/a.img".to_string(), vec![0xff, b't', b'o', b'k']);
        let mut new = Bundle::default();
        new.files.insert(
            "usb/a.img".into(),
            crate::render::BundleFile {
                bytes: vec![0xff, b't', b'o', b'x'],
                mode: 0o600,
            },
        );
        let d = diff(&old, &new, &[]);
        assert_eq!(
            d.changed,
            [(
                "usb/a.img".to_string(),
                vec!["binary file differs".to_string()]
            )]
        );
    }

    #[test]
    fn secrets_are_masked() {
        let mut old = BTreeMap::new();
        old.insert("f".to_string(), b"token: abcdefgh123\nx: 1\n".to_vec());
        let mut new = Bundle::default();
        new.files.insert(
            "f".into(),
            crate::render::BundleFile {
                bytes: b"token: abcdefgh123\nx: 2\n".to_vec(),
                mode: 0o600,
            },
        );
        let d = diff(&old, &new, &["abcdefgh123"]);
        let text = d.changed[0].1.join("\n");
        assert!(!text.contains("abcdefgh123"));
        assert!(text.contains("<redacted>"));
        assert!(text.contains("+x: 2"));
    }
}
