//! `--help` is documentation, and so is docs/pxe.md: every flag `pxe` shows is explained in its
//! command's own section (e.g. "## `pxe serve`"), not merely somewhere in the file.

use std::path::Path;
use std::process::Command;

#[path = "../../tests/src/docs.rs"]
mod doc_check;

/// Protects: a new `pxe` flag (`--api-token-file`, `--arm-new`, `--install-window`, `--all`)
/// cannot ship without its explanation in its command's section of docs/pxe.md.
#[test]
fn docs_document_every_flag_of_every_subcommand_in_its_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs: Vec<(String, String)> = doc_check::load_docs(&root)
        .into_iter()
        .filter(|(name, _)| name == "docs/pxe.md")
        .collect();
    assert_eq!(docs.len(), 1, "docs/pxe.md is missing");
    let mut missing = Vec::new();
    for sub in ["serve", "status", "arm", "disarm", "inspect"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pxe"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        let flags = doc_check::help_flags(&help);
        assert!(
            !flags.is_empty() || sub != "serve",
            "no flags parsed from `pxe serve --help`"
        );
        let (_, _, section) = match doc_check::command_section(&docs, &format!("pxe {sub}")) {
            Ok(s) => s,
            Err(e) => {
                missing.push(e);
                continue;
            }
        };
        for flag in flags {
            if !doc_check::mentions_flag(&section, &flag) {
                missing.push(format!(
                    "docs/pxe.md: the section of `pxe {sub}` does not document `{flag}`"
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
