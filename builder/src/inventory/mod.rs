//! The inventory: one YAML file describing the rack. `load` parses it in two layers (raw serde
//! with locations → validated model) and reports every problem at once.

pub mod edit;
pub mod model;
pub mod power;
pub mod profiles;
pub mod raw;
pub mod types;
pub mod validate;

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::diag::{Diagnostics, from_yaml_error};
pub use model::Inventory;
pub use profiles::ProfileSet;
pub use validate::TemplateCatalog;

/// The seed homelab, shipped in the binary; `builder init` writes it out for editing.
pub const DEFAULT_INVENTORY: &str = include_str!("../../default-inventory.yaml");
pub const DEFAULT_INVENTORY_NAME: &str = "default-inventory.yaml (embedded)";

/// The seed homelab validated with the built-in profiles and embedded templates: what unit
/// tests start from. Panics with the diagnostics when it stops validating (a build defect).
pub fn seed_homelab() -> Inventory {
    let mut d = Diagnostics::default();
    let profiles = ProfileSet::load(&[], &mut d);
    let templates = crate::templates::Templates::embedded();
    let (inv, d) = load("inv.yaml", DEFAULT_INVENTORY, &profiles, &templates);
    inv.unwrap_or_else(|| panic!("{}", d.render(&|_| None)))
}

/// Parse and validate. Returns the model when there are no errors; warnings and errors are in
/// the diagnostics either way.
pub fn load(
    file: &str,
    text: &str,
    profiles: &ProfileSet,
    templates: &dyn TemplateCatalog,
) -> (Option<Inventory>, Diagnostics) {
    let mut diags = Diagnostics::default();
    match serde_saphyr::from_str::<raw::RawInventory>(text) {
        Ok(raw) => {
            let inv = validate::validate(file, &raw, profiles, templates, &mut diags);
            (inv, diags)
        }
        Err(first) => {
            structural_errors(file, text, &first, &mut diags);
            (None, diags)
        }
    }
}

/// serde stops at the first structural error. To report them all, parse again once per section
/// and once per node, each pass strict about one part and blind to the rest. Only runs when the
/// document is already known to be broken, so the cost does not matter.
fn structural_errors(file: &str, text: &str, first: &serde_saphyr::Error, diags: &mut Diagnostics) {
    let mut found = Diagnostics::default();
    let pass = |found: &mut Diagnostics, path: &str, r: Result<(), serde_saphyr::Error>| {
        if let Err(e) = r {
            let d = from_yaml_error(file, path, &e);
            found.error(d.span, d.path, d.message);
        }
    };
    // The document must at least parse as YAML with a list of nodes; otherwise it is a syntax
    // error and every pass would report the same thing.
    let count = match serde_saphyr::from_str::<NodesCount>(text) {
        Ok(c) => c.nodes.map(|n| n.len()).unwrap_or(0),
        Err(e) => {
            let d = from_yaml_error(file, "", &e);
            diags.error(d.span, d.path, d.message);
            return;
        }
    };
    pass(
        &mut found,
        "",
        serde_saphyr::from_str::<TopOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "cluster",
        serde_saphyr::from_str::<ClusterOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "network",
        serde_saphyr::from_str::<NetworkOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "appliance",
        serde_saphyr::from_str::<ApplianceOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "ssh",
        serde_saphyr::from_str::<SshOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "os",
        serde_saphyr::from_str::<OsOnly>(text).map(|_| ()),
    );
    pass(
        &mut found,
        "nfs",
        serde_saphyr::from_str::<NfsOnly>(text).map(|_| ()),
    );
    for i in 0..count {
        FOCUS.with(|f| f.set(Some(i)));
        let r = serde_saphyr::from_str::<NodesFocus>(text).map(|_| ());
        FOCUS.with(|f| f.set(None));
        pass(&mut found, &format!("nodes[{i}]"), r);
        if found.len() >= 50 {
            break;
        }
    }
    if found.is_empty() {
        let d = from_yaml_error(file, "", first);
        found.error(d.span, d.path, d.message);
    }
    diags.extend(found);
}

#[derive(Deserialize)]
struct NodesCount {
    nodes: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TopOnly {
    cluster: IgnoredAny,
    network: IgnoredAny,
    appliance: IgnoredAny,
    ssh: IgnoredAny,
    #[serde(default)]
    os: Option<IgnoredAny>,
    nodes: IgnoredAny,
    #[serde(default)]
    nfs: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ClusterOnly {
    cluster: Option<raw::RawCluster>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct NetworkOnly {
    network: Option<raw::RawNetwork>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct ApplianceOnly {
    appliance: Option<raw::RawAppliance>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct SshOnly {
    ssh: Option<raw::RawSsh>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct OsOnly {
    os: Option<raw::RawOs>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct NfsOnly {
    nfs: Option<raw::RawNfs>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct NodesFocus {
    nodes: Option<FocusNodes>,
}

thread_local! {
    /// Which node the current `NodesFocus` pass checks strictly.
    static FOCUS: Cell<Option<usize>> = const { Cell::new(None) };
}

struct FocusNodes;

impl<'de> Deserialize<'de> for FocusNodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FocusNodes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of nodes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FocusNodes, A::Error> {
                let focus = FOCUS.with(|f| f.get());
                let mut i = 0;
                loop {
                    let more = if Some(i) == focus {
                        seq.next_element::<raw::RawNode>()?.is_some()
                    } else {
                        seq.next_element::<IgnoredAny>()?.is_some()
                    };
                    if !more {
                        return Ok(FocusNodes);
                    }
                    i += 1;
                }
            }
        }
        d.deserialize_seq(V)
    }
}
