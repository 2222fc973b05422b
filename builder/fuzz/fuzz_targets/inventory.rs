//! Fuzz the inventory parser and validator (`builder::inventory::load`).
//!
//! Two input shapes:
//! - UTF-8 text: parsed as a whole inventory (seeds: the default inventory
//!   and tests/fixtures/big.yaml, so mutations start from real documents);
//! - `0xFF` followed by edits (never valid UTF-8, so no overlap): each edit
//!   is a line index byte and a replacement line up to `\n`, applied to the
//!   embedded default inventory. Most of the document stays valid, which
//!   reaches the validation rules behind the YAML parser.
//!
//! Invariants: never panics; a model is returned iff there is no error;
//! every diagnostic names a known file, and a line, when given, lies inside
//! that file (+1 for an error at end of input); rendering the report with
//! its snippets does not panic.
//!
//! Run: `cargo +nightly fuzz run inventory -- -max_total_time=60`
//! (from builder/), or `pxe/fuzz/run.sh` for every target.
#![no_main]

use std::sync::LazyLock;

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::templates::Templates;
use libfuzzer_sys::fuzz_target;

const FILE: &str = "inv.yaml";

static PROFILES: LazyLock<ProfileSet> = LazyLock::new(|| {
    let mut d = Diagnostics::default();
    let set = ProfileSet::load(&[], &mut d);
    assert!(!d.has_errors(), "built-in profiles are valid");
    set
});
static TEMPLATES: LazyLock<Templates> = LazyLock::new(Templates::embedded);

/// Applies `(line index, replacement)` edits to the default inventory.
fn edited_default(mut edits: &[u8]) -> String {
    let mut lines: Vec<String> = DEFAULT_INVENTORY.lines().map(str::to_owned).collect();
    while let Some((&idx, rest)) = edits.split_first() {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        let i = idx as usize % (lines.len() + 1);
        if i == lines.len() {
            lines.push(line);
        } else {
            lines[i] = line;
        }
        edits = rest.get(end + 1..).unwrap_or_default();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn check(text: &str) {
    let (inv, diags) = inventory::load(FILE, text, &PROFILES, &*TEMPLATES);
    assert_eq!(
        inv.is_some(),
        !diags.has_errors(),
        "model returned iff no errors:\n{}",
        diags.render(&|_| None)
    );
    let source = |file: &str| -> Option<String> {
        if file == FILE {
            Some(text.to_owned())
        } else {
            PROFILES.sources.get(file).cloned()
        }
    };
    for d in diags.iter() {
        assert!(!d.span.file.is_empty(), "diagnostic without a file: {d}");
        let src =
            source(&d.span.file).unwrap_or_else(|| panic!("diagnostic names an unknown file: {d}"));
        if d.span.line > 0 {
            // Lines as YAML numbers them (a lone '\r' is a line break too).
            let lines = builder::diag::source_lines(&src).count() as u64;
            assert!(
                d.span.line <= lines + 1,
                "line {} past the end ({lines} lines): {d}",
                d.span.line
            );
        }
    }
    let _ = diags.render(&source);
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0xFF, edits)) => check(&edited_default(edits)),
        _ => {
            if let Ok(text) = std::str::from_utf8(data) {
                check(text);
            }
        }
    }
});
