//! Shared helpers for the cross-crate tests in `tests/tests/`: render the test fixtures through
//! the builder library exactly as the CLI does, without touching the disk.

use std::path::{Path, PathBuf};

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::render::{self, AirgapHashes, Bundle, RenderOptions};
use builder::secrets::Secrets;
use builder::templates::Templates;
use sha2::{Digest, Sha256};

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
