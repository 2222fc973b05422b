//! Shared helpers for the cross-crate tests in `tests/tests/`: render the test fixtures through
//! the builder library exactly as the CLI does, without touching the disk.

pub mod docs;

use std::path::{Path, PathBuf};

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::render::{self, AirgapHashes, Bundle, RenderOptions};
use builder::secrets::Secrets;
use builder::templates::Templates;
use sha2::{Digest, Sha256};

/// The workspace's rule for skips and golden files (CI set to any value: no skip; golden files
/// rewritten only with `UPDATE_GOLDEN=1` outside CI).
#[path = "../../images/tests/support/ci.rs"]
pub mod ci;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The fixtures with golden snapshots: the embedded seed homelab and a rack of another shape.
pub const FIXTURES: &[&str] = &["homelab", "big"];

pub struct Fixture {
    pub inventory: inventory::Inventory,
    pub secrets: Secrets,
    pub bundle: Bundle,
}

fn sha_file(p: &Path) -> String {
    render::hex(&Sha256::digest(std::fs::read(p).expect("fixture file")))
}

pub fn render_fixture(name: &str) -> Fixture {
    render_fixture_with(name, &RenderOptions::default())
}

pub fn render_fixture_with(name: &str, base_opts: &RenderOptions) -> Fixture {
    let (text, hw): (String, Vec<PathBuf>) = match name {
        "homelab" => (DEFAULT_INVENTORY.to_string(), vec![]),
        other => (
            std::fs::read_to_string(fixtures().join(format!("{other}.yaml"))).unwrap(),
            vec![fixtures().join("hardware")],
        ),
    };
    render_text(name, &text, &hw, base_opts)
}

/// The seed homelab with `edit` applied to its text (with the homelab's secrets).
pub fn render_homelab_edited(edit: impl FnOnce(&str) -> String) -> Fixture {
    let text = edit(DEFAULT_INVENTORY);
    assert_ne!(text, DEFAULT_INVENTORY, "the edit changed nothing");
    render_text("homelab", &text, &[], &RenderOptions::default())
}

fn render_text(name: &str, text: &str, hw: &[PathBuf], base_opts: &RenderOptions) -> Fixture {
    let mut d = Diagnostics::default();
    let hw_refs: Vec<&Path> = hw.iter().map(PathBuf::as_path).collect();
    let profiles = ProfileSet::load(&hw_refs, &mut d);
    let templates = Templates::embedded();
    let (inv, more) = inventory::load(&format!("{name}.yaml"), text, &profiles, &templates);
    d.extend(more);
    let inv = inv.unwrap_or_else(|| panic!("fixture {name} invalid:\n{}", d.render(&|_| None)));
    let secrets_text =
        std::fs::read_to_string(fixtures().join(format!("{name}.secrets.yaml"))).unwrap();
    let secrets: Secrets = serde_saphyr::from_str(&secrets_text).unwrap();
    let mut opts = base_opts.clone();
    if let Some(a) = &inv.cluster.k3s.airgap {
        let f = |p: &Path| sha_file(&fixtures().join(p));
        opts.airgap = Some(AirgapHashes {
            binary_sha256: f(&a.binary),
            images_sha256: f(&a.images),
            install_script_sha256: f(&a.install_script),
        });
    }
    let bundle = render::render(&inv, &secrets, &templates, &opts).expect("render");
    Fixture {
        inventory: inv,
        secrets,
        bundle,
    }
}

/// Parse a rendered YAML file (one document).
pub fn yaml(bytes: &[u8]) -> serde_json::Value {
    serde_saphyr::from_str(std::str::from_utf8(bytes).unwrap()).unwrap()
}

/// A rendered file as text; panics with its path when it was not rendered.
pub fn text(f: &Fixture, path: &str) -> String {
    String::from_utf8(
        f.bundle
            .files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not rendered"))
            .bytes
            .clone(),
    )
    .unwrap()
}

/// A node's rendered k3s config.
pub fn k3s(f: &Fixture, host: &str) -> serde_json::Value {
    yaml(text(f, &format!("nodes/{host}/k3s/config.yaml")).as_bytes())
}

/// The k3s config as delivered inside user-data (what the node actually gets), 0600.
pub fn k3s_from_user_data(f: &Fixture, host: &str) -> serde_json::Value {
    let ud = yaml(text(f, &format!("nodes/{host}/user-data")).as_bytes());
    let file = ud["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["path"] == "/etc/rancher/k3s/config.yaml")
        .expect("k3s config in write_files");
    assert_eq!(file["permissions"], "0600");
    yaml(file["content"].as_str().unwrap().as_bytes())
}

/// Flags that must match on every server: a joining server compares them with the cluster's
/// ("critical configuration value mismatch", docs/reference.md "k3s rebuild and restore").
pub const CRITICAL: &[&str] = &[
    "agent-token",
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "service-cidr",
    "disable-cloud-controller",
    "disable-helm-controller",
    "disable-network-policy",
    "disable-kube-proxy",
    "disable",
    "egress-selector-mode",
    "embedded-registry",
    "flannel-backend",
    "flannel-external-ip",
    "flannel-ipv6-masq",
    "secrets-encryption",
    "secrets-encryption-provider",
    "token",
    "etcd-snapshot-schedule-cron",
    "kube-apiserver-arg",
];

/// Every CRITICAL flag identical on every server of `f`.
pub fn assert_critical_identical(f: &Fixture, what: &str) {
    let servers: Vec<(String, serde_json::Value)> = f
        .inventory
        .servers()
        .map(|s| (s.hostname.to_string(), k3s(f, s.hostname.as_str())))
        .collect();
    for key in CRITICAL {
        for (h, c) in &servers {
            assert_eq!(
                c.get(*key),
                servers[0].1.get(*key),
                "{what}: `{key}` on {h} differs from {}",
                servers[0].0
            );
        }
    }
}
