//! The bundle contract end to end: what `builder render` writes is what `pxe` and the installer
//! read (`images::bundle::Plan`), and the shape of `plan.json` is pinned by a golden file, so a
//! change to the contract is a reviewed diff (and a version bump), not an accident.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p ironseed-tests --test contract`.

use images::bundle::Plan;
use images::plan::{ImageRef, SeedUrls, Sources};
use ironseed_tests::{FIXTURES, render_fixture, repo_root};
use serde_json::Value;

fn plan_of(name: &str) -> (Plan, Vec<u8>, builder::secrets::Secrets) {
    let f = render_fixture(name);
    let bytes = f.bundle.files["plan.json"].bytes.clone();
    let plan = Plan::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    (plan, bytes, f.secrets)
}

#[test]
fn rendered_plans_read_back_and_make_every_install_plan() {
    for name in FIXTURES {
        let (plan, bytes, secrets) = plan_of(name);
        assert_eq!(plan.version, images::bundle::PLAN_VERSION);
        // Byte-identical when written again: one serialisation on every side.
        assert_eq!(plan.to_json().as_bytes(), &bytes[..], "{name}");
        for n in &plan.nodes {
            let src = Sources {
                image: ImageRef {
                    name: plan.os_image.clone(),
                    url: "u".into(),
                    sha256: None,
                    size: None,
                },
                seed: SeedUrls {
                    user_data: "a".into(),
                    meta_data: "b".into(),
                    network_config: "c".into(),
                },
                report: "r".into(),
            };
            let ip = plan.install_plan(&n.hostname, src).unwrap();
            assert_eq!(ip.hostname, n.hostname.as_str());
            assert_eq!(ip.mac, n.mac.to_string());
            assert_eq!(ip.role, n.role.to_string());
            assert_eq!(ip.install_disk, n.install_disk);
            assert_eq!(plan.node_by_mac(&n.mac).unwrap().hostname, n.hostname);
            assert_eq!(
                n.report_token,
                builder::render::report_token(&secrets, &n.hostname)
            );
            assert_eq!(n.install_script, format!("ipxe/{}.ipxe", n.hostname));
        }
    }
}

/// Every key path of a JSON value with its type: the shape of the contract without its values.
fn shape(v: &Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            out.insert(format!("{path}: object"));
            for (k, x) in m {
                // Maps keyed by name (air-gap files) are one shape, whatever the names.
                shape(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            out.insert(format!("{path}: array"));
            for x in a {
                shape(x, &format!("{path}[]"), out);
            }
        }
        Value::String(_) => {
            out.insert(format!("{path}: string"));
        }
        Value::Number(_) => {
            out.insert(format!("{path}: number"));
        }
        Value::Bool(_) => {
            out.insert(format!("{path}: bool"));
        }
        Value::Null => {
            out.insert(format!("{path}: null"));
        }
    }
}

#[test]
fn plan_json_has_the_shape_of_its_golden_schema() {
    let mut all = std::collections::BTreeSet::new();
    for name in FIXTURES {
        let (_, bytes, _) = plan_of(name);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        shape(&v, "$", &mut all);
    }
    let got: String = all.iter().map(|l| format!("{l}\n")).collect();
    let path = repo_root().join("tests/golden/plan.schema.txt");
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        if ironseed_tests::ci::update_golden() {
            std::fs::write(&path, &got).unwrap();
            eprintln!("rewrote {}", path.display());
            return;
        }
        panic!(
            "plan.json's shape changed (a contract change: bump images::bundle::PLAN_VERSION and \
             regenerate with UPDATE_GOLDEN=1):\n--- want\n{want}\n--- got\n{got}"
        );
    }
}
