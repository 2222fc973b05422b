//! `--help` is documentation: every flag `pxe` shows must be documented in the README.

use std::process::Command;

#[test]
fn readme_documents_every_flag_of_every_subcommand() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for sub in ["serve", "status", "arm", "disarm"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pxe"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            readme.contains(&format!("pxe {sub}")),
            "README does not mention `pxe {sub}`"
        );
        let help = String::from_utf8_lossy(&out.stdout);
        let mut flags = 0;
        for word in help.split_whitespace().filter(|w| w.starts_with("--")) {
            let flag = word
                .trim_end_matches([',', '.', ')', '>'])
                .split(['=', '<', '['])
                .next()
                .unwrap();
            if flag == "--help" || flag == "--version" || flag.len() < 4 {
                continue;
            }
            flags += 1;
            assert!(
                readme.contains(flag),
                "README does not document `{flag}` of `pxe {sub}`"
            );
        }
        assert!(
            flags > 0 || sub != "serve",
            "no flags parsed from `pxe serve --help`"
        );
    }
}
