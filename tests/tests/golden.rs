//! Golden snapshots of the whole bundle for each fixture. A template change shows up here as a
//! reviewable diff. Regenerate with `UPDATE_GOLDEN=1 cargo test -p ironseed-tests --test golden`.

use std::collections::BTreeMap;
use std::path::Path;

use ironseed_tests::{FIXTURES, render_fixture, repo_root};

fn read_tree(dir: &Path, base: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            read_tree(&p, base, out);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            out.insert(rel, std::fs::read(&p).unwrap());
        }
    }
}

/// Protects every rendered file against unreviewed change. Always compares first; only
/// `UPDATE_GOLDEN=1` outside CI then rewrites the snapshots that differ (and says which), so a
/// stray value or a CI run can never turn the comparison off.
#[test]
fn bundles_match_golden_snapshots() {
    let update = ironseed_tests::ci::update_golden();
    let mut failures = Vec::new();
    let mut stale = Vec::new();
    for name in FIXTURES {
        let f = render_fixture(name);
        let dir = repo_root().join("tests/golden").join(name);
        let mut want: BTreeMap<String, Vec<u8>> = f
            .bundle
            .files
            .iter()
            .map(|(p, f)| (p.clone(), f.bytes.clone()))
            .collect();
        let modes: String = f
            .bundle
            .files
            .iter()
            .map(|(p, f)| format!("{:04o} {p}\n", f.mode))
            .collect();
        want.insert("MODES".into(), modes.into_bytes());
        let mut have = BTreeMap::new();
        read_tree(&dir, &dir, &mut have);
        let before = failures.len();
        compare(name, &want, &have, &mut failures);
        if failures.len() > before {
            stale.push((dir, want, have));
        }
    }
    if update && !failures.is_empty() {
        for (dir, want, have) in &stale {
            rewrite(dir, want, have);
        }
        eprintln!(
            "UPDATED the golden snapshots (review `git diff tests/golden`):\n\n{}",
            failures.join("\n\n")
        );
        return;
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p ironseed-tests --test golden",
        failures.join("\n\n")
    );
}

/// Every difference between the rendered files and the snapshot of fixture `name`.
fn compare(
    name: &str,
    want: &BTreeMap<String, Vec<u8>>,
    have: &BTreeMap<String, Vec<u8>>,
    failures: &mut Vec<String>,
) {
    for (p, bytes) in want {
        match have.get(p) {
            None => failures.push(format!("{name}: {p} is new (not in the golden)")),
            Some(h) if h != bytes => failures.push(format!(
                "{name}: {p} differs from the golden:\n{}",
                builder::diff::line_diff(
                    &String::from_utf8_lossy(h),
                    &String::from_utf8_lossy(bytes),
                    2
                )
                .join("\n")
            )),
            _ => {}
        }
    }
    for p in have.keys() {
        if !want.contains_key(p) {
            failures.push(format!(
                "{name}: {p} is in the golden but no longer rendered"
            ));
        }
    }
}

/// Make the snapshot in `dir` equal to `want`, touching only the files that differ.
fn rewrite(dir: &Path, want: &BTreeMap<String, Vec<u8>>, have: &BTreeMap<String, Vec<u8>>) {
    for p in have.keys().filter(|p| !want.contains_key(*p)) {
        std::fs::remove_file(dir.join(p)).unwrap();
    }
    for (p, bytes) in want.iter().filter(|(p, b)| have.get(*p) != Some(*b)) {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// The width `builder topology` uses when its output is not a terminal.
const TOPOLOGY_WIDTH: usize = 100;

/// Protects the terminal picture (`builder topology`) against unreviewed change, for each
/// fixture at the default width, without colour. Same rule as the bundle snapshots: compared
/// first, rewritten only with `UPDATE_GOLDEN=1` outside CI. (The SVG is a bundle file: the
/// bundle snapshots above pin it.)
#[test]
fn topology_ascii_matches_golden() {
    let update = ironseed_tests::ci::update_golden();
    let mut failures = Vec::new();
    for name in FIXTURES {
        let f = render_fixture(name);
        let want = builder::topology::ascii(&f.inventory, TOPOLOGY_WIDTH, false);
        let path = repo_root().join(format!("tests/golden/topology/{name}.txt"));
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            failures.push(format!(
                "{}: differs from the golden:\n{}",
                path.display(),
                builder::diff::line_diff(&have, &want, 2).join("\n")
            ));
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &want).unwrap();
            }
        }
    }
    if update && !failures.is_empty() {
        eprintln!(
            "UPDATED (review `git diff tests/golden/topology`):\n\n{}",
            failures.join("\n\n")
        );
        return;
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: UPDATE_GOLDEN=1 cargo test -p ironseed-tests --test golden",
        failures.join("\n\n")
    );
}

/// Protects the dashboard contract of the bundle's topology.svg for every fixture: an SVG root
/// with a viewBox, and exactly one `<g id="node-H" class="node role-R" data-node="H">` with a
/// `<rect>` per inventory node, with the node's role.
#[test]
fn topology_svg_is_svg_and_names_every_node() {
    for name in FIXTURES {
        let f = render_fixture(name);
        let file = &f.bundle.files[builder::topology::FILE];
        assert_eq!(file.mode, 0o644, "{name}");
        let svg = std::str::from_utf8(&file.bytes).unwrap();
        builder::topology::check_svg(svg, f.inventory.nodes.iter().map(|n| n.hostname.as_str()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for n in &f.inventory.nodes {
            let h = n.hostname.as_str();
            let group = format!(
                r#"<g id="node-{h}" class="node role-{}" data-node="{h}">"#,
                n.role.as_str()
            );
            assert!(svg.contains(&group), "{name}: no {group}");
        }
        assert!(
            f.bundle.sha256sums().contains("  topology.svg\n"),
            "{name}: topology.svg is not in SHA256SUMS"
        );
    }
}

/// Protects determinism: two renders of a fixture give the same picture, byte for byte (it is
/// in SHA256SUMS, so a drifting picture would make every render look like a change).
#[test]
fn topology_is_byte_identical_across_renders() {
    for name in FIXTURES {
        let a = render_fixture(name);
        let b = render_fixture(name);
        assert_eq!(
            a.bundle.files[builder::topology::FILE].bytes,
            b.bundle.files[builder::topology::FILE].bytes,
            "{name}"
        );
        assert_eq!(
            builder::topology::ascii(&a.inventory, TOPOLOGY_WIDTH, false),
            builder::topology::ascii(&b.inventory, TOPOLOGY_WIDTH, false),
            "{name}"
        );
    }
}

/// Protects docs/topology.md from going stale: the seed homelab's picture shown there is the
/// one `builder topology` prints (the golden above).
#[test]
fn the_docs_show_the_current_homelab_picture() {
    let f = render_fixture("homelab");
    let want = builder::topology::ascii(&f.inventory, TOPOLOGY_WIDTH, false);
    let doc = std::fs::read_to_string(repo_root().join("docs/topology.md")).unwrap();
    assert!(
        doc.contains(&format!("```\n{want}```\n")),
        "docs/topology.md does not show the current `builder topology` output; paste tests/golden/topology/homelab.txt"
    );
}
