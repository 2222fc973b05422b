//! The `builder` binary as an operator uses it: exit codes, error text, files on disk.

mod common;
#[path = "../../tests/src/docs.rs"]
mod doc_check;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use builder::inventory::DEFAULT_INVENTORY;
use common::{builder_cmd, stderr, stdout};

fn builder(args: &[&str], cwd: &Path) -> Output {
    builder_cmd(args).current_dir(cwd).output().unwrap()
}

fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>, u32)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                out.push((
                    p.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                    mode,
                ));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn validate_default_inventory_succeeds() {
    let d = tempfile::tempdir().unwrap();
    let o = builder(&["validate"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("valid — cluster homelab with 7 nodes (3 servers"));
    assert!(
        stderr(&o).contains("warning:"),
        "the example-key warning is printed"
    );
}

#[test]
fn bad_inventory_exits_nonzero_naming_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("lab.yaml");
    let text = DEFAULT_INVENTORY.replacen("mac: d8:9e:f3:20:00:22", "mac: d8:9e:f3:20:00:21", 1);
    std::fs::write(&inv, &text).unwrap();
    let o = builder(&["validate", "-i", "lab.yaml"], d.path());
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let line = text
        .lines()
        .position(|l| l.contains("mac: d8:9e:f3:20:00:21"))
        .unwrap();
    let line2 = text[..]
        .lines()
        .skip(line + 1)
        .position(|l| l.contains("mac: d8:9e:f3:20:00:21"))
        .unwrap()
        + line
        + 2;
    assert!(
        e.contains(&format!("lab.yaml:{line2}:10: nodes[4].mac: duplicate MAC")),
        "{e}"
    );
    assert!(e.contains("`k3s1`") && e.contains("`k3s2`"), "{e}");
    assert!(e.contains("inventory is not valid"), "{e}");
}

#[test]
fn yaml_syntax_error_names_its_line() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("x.yaml"),
        "cluster:\n  name: a\n  domain: [b\nnodes: []\n",
    )
    .unwrap();
    let o = builder(&["validate", "-i", "x.yaml"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("x.yaml:4:"), "{}", stderr(&o));
}

#[test]
fn render_writes_a_verifiable_bundle_and_reuses_the_token() {
    let d = tempfile::tempdir().unwrap();
    let o = builder(&["render", "--out", "b"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let secrets = d.path().join("ironseed.secrets.yaml");
    let mode = std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token_line = std::fs::read_to_string(&secrets).unwrap();
    let token = token_line
        .lines()
        .find_map(|l| l.strip_prefix("k3s_token: "))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string();
    assert!(
        !stdout(&o).contains(&token) && !stderr(&o).contains(&token),
        "token printed"
    );
    // The bundle verifies with the real sha256sum.
    let check = Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(d.path().join("b"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let first = read_tree(&d.path().join("b"));
    let ud = first
        .iter()
        .find(|(p, _, _)| p == "nodes/k3s-master1/user-data")
        .unwrap();
    assert_eq!(ud.2, 0o600);
    assert!(String::from_utf8_lossy(&ud.1).contains(&token));
    // Second render: same secrets file, byte-identical bundle.
    let o = builder(&["render", "--out", "b"], d.path());
    assert!(o.status.success());
    assert_eq!(first, read_tree(&d.path().join("b")));
}

#[test]
fn failed_render_leaves_the_previous_bundle_untouched() {
    let d = tempfile::tempdir().unwrap();
    assert!(
        builder(&["render", "--out", "b"], d.path())
            .status
            .success()
    );
    let before = read_tree(&d.path().join("b"));
    // A template override that renders broken YAML: render must fail after validation.
    let t = d.path().join("tpl/cloud-init");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("user-data.yaml.j2"),
        "#cloud-config\nhostname: [broken\n",
    )
    .unwrap();
    let o = builder(&["render", "--out", "b", "--templates", "tpl"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not valid YAML"), "{}", stderr(&o));
    assert_eq!(before, read_tree(&d.path().join("b")));
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".b.new"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn render_refuses_to_replace_a_folder_that_is_not_a_bundle() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("home")).unwrap();
    std::fs::write(d.path().join("home/precious.txt"), "keep me").unwrap();
    let o = builder(&["render", "--out", "home"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not an ironseed bundle"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("home/precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn init_writes_the_default_and_refuses_to_overwrite() {
    let d = tempfile::tempdir().unwrap();
    assert!(builder(&["init", "lab.yaml"], d.path()).status.success());
    assert_eq!(
        std::fs::read_to_string(d.path().join("lab.yaml")).unwrap(),
        DEFAULT_INVENTORY
    );
    std::fs::write(d.path().join("lab.yaml"), "mine").unwrap();
    let o = builder(&["init", "lab.yaml"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(d.path().join("lab.yaml")).unwrap(),
        "mine"
    );
    assert!(
        builder(&["init", "lab.yaml", "--force"], d.path())
            .status
            .success()
    );
    // The written file validates, and its secrets go beside it.
    let o = builder(&["render", "-i", "lab.yaml", "-o", "out"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.path().join("lab.secrets.yaml").exists());
}

#[test]
fn diff_shows_what_a_render_would_change_without_secrets() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    assert!(
        builder(&["render", "-i", "lab.yaml", "-o", "b"], d.path())
            .status
            .success()
    );
    let o = builder(&["diff", "-i", "lab.yaml", "-o", "b"], d.path());
    assert!(stdout(&o).contains("up to date"), "{}", stdout(&o));
    std::fs::write(
        d.path().join("lab.yaml"),
        DEFAULT_INVENTORY.replacen("ip: 10.0.20.22", "ip: 10.0.20.27", 1),
    )
    .unwrap();
    let before = read_tree(&d.path().join("b"));
    let o = builder(&["diff", "-i", "lab.yaml", "-o", "b"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("changed  nodes/k3s2/network-config"), "{out}");
    assert!(
        out.contains("-      - \"10.0.20.22/24\"") && out.contains("+      - \"10.0.20.27/24\""),
        "{out}"
    );
    let secrets = std::fs::read_to_string(d.path().join("lab.secrets.yaml")).unwrap();
    let token = secrets
        .lines()
        .find_map(|l| l.strip_prefix("k3s_token: "))
        .unwrap()
        .trim()
        .trim_matches('"');
    assert!(!out.contains(token), "diff printed the token");
    assert!(
        !out.contains("DANGEROUS"),
        "a new address is not dangerous: {out}"
    );
    assert_eq!(
        before,
        read_tree(&d.path().join("b")),
        "diff writes nothing"
    );
}

/// `builder diff` marks a change a running cluster refuses, names the nodes and what a rebuild
/// would do (the classification itself: builder/src/diff.rs unit tests).
#[test]
fn diff_marks_a_cidr_change_as_dangerous_naming_the_servers() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    assert!(
        builder(&["render", "-i", "lab.yaml", "-o", "b"], d.path())
            .status
            .success()
    );
    std::fs::write(
        d.path().join("lab.yaml"),
        DEFAULT_INVENTORY.replacen(
            "service_cidr: 10.43.0.0/16",
            "service_cidr: 10.53.0.0/16",
            1,
        ),
    )
    .unwrap();
    let o = builder(&["diff", "-i", "lab.yaml", "-o", "b"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("DANGEROUS for a running cluster: "), "{out}");
    assert!(
        out.contains(
            "! critical server flag service-cidr changes from 10.43.0.0/16 to 10.53.0.0/16"
        ),
        "{out}"
    );
    assert!(
        out.contains("nodes:     k3s-master1, k3s-master2, k3s-master3\n"),
        "{out}"
    );
    assert!(out.contains("a rebuild: "), "{out}");
}

/// Protects "diff writes nothing" (issue 12: diff created the secrets file when it was
/// missing). On a fresh folder diff says what render would create and leaves the folder empty.
#[test]
fn diff_on_a_fresh_folder_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    let o = builder(&["diff", "-i", "lab.yaml", "-o", "b"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("lab.secrets.yaml does not exist")
            && err.contains("`builder render` would create it"),
        "{err}"
    );
    assert!(stdout(&o).contains("added    plan.json"), "{}", stdout(&o));
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["lab.yaml"], "diff wrote files");
}

/// `builder topology` through a pipe: every node of the inventory, no colour (stdout is not a
/// terminal), the default width of 100 columns, `--width` honoured.
#[test]
fn topology_prints_every_node_for_a_pipe_without_colour() {
    let d = tempfile::tempdir().unwrap();
    let o = builder(&["topology"], d.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    for h in [
        "k3s-master1",
        "k3s-master2",
        "k3s-master3",
        "k3s1",
        "k3s2",
        "k3s3",
        "nfs1",
        "API VIP",
        "10.0.20.10",
    ] {
        assert!(out.contains(h), "{h} missing:\n{out}");
    }
    assert!(!out.contains('\x1b'), "colour through a pipe");
    assert!(out.lines().all(|l| l.chars().count() <= 100));
    assert!(out.lines().any(|l| l.chars().count() > 60));
    let narrow = stdout(&builder(&["topology", "--width", "40"], d.path()));
    assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
    assert!(
        !builder(&["topology", "--width", "5"], d.path())
            .status
            .success()
    );
}

/// Protects: `--help` is documentation, and so is docs/: every flag a `builder` command shows
/// is explained in that command's own section of docs/ (the heading naming it, e.g.
/// "## `builder render`"), not merely somewhere in some file.
#[test]
fn help_documents_every_flag_in_its_commands_section_of_the_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = doc_check::load_docs(&root);
    let d = tempfile::tempdir().unwrap();
    let mut missing = Vec::new();
    for sub in [
        "init",
        "validate",
        "render",
        "diff",
        "topology",
        "images list",
        "images fetch",
        "images build",
        "images installer",
        "usb write",
        "rebuild",
        "recover",
        "usb image",
        "adopt",
        "discover",
        "power",
        "provision",
        "lab up",
        "lab status",
        "lab console",
        "lab down",
        "lab fail",
        "lab drill",
        "lab apply",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let o = builder(&args, d.path());
        assert!(o.status.success());
        let (file, _, section) = match doc_check::command_section(&docs, &format!("builder {sub}"))
        {
            Ok(s) => s,
            Err(e) => {
                missing.push(e);
                continue;
            }
        };
        for flag in doc_check::help_flags(&stdout(&o)) {
            if !doc_check::mentions_flag(&section, &flag) {
                missing.push(format!(
                    "{file}: the section of `builder {sub}` does not document `{flag}`"
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Protects the BMC accounts and addresses: a `power:` block and the secrets file's `power:`
/// credentials reach nothing `render` writes or prints (the bundle is served to the network).
#[test]
fn power_settings_and_credentials_never_reach_the_bundle() {
    let d = tempfile::tempdir().unwrap();
    let inv = DEFAULT_INVENTORY.replacen(
        "    profile: optiplex\n",
        "    profile: optiplex\n    power:\n      ipmi: {address: bmc-k3s1-unique.example}\n",
        1,
    );
    std::fs::write(d.path().join("lab.yaml"), inv).unwrap();
    std::fs::write(
        d.path().join("lab.secrets.yaml"),
        "k3s_token: 0123456789abcdef0123456789\npower:\n  k3s1:\n    username: bmc-user-unique\n    password: bmc-pass-unique\n",
    )
    .unwrap();
    std::fs::set_permissions(
        d.path().join("lab.secrets.yaml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let o = builder(&["render", "-i", "lab.yaml", "--out", "b"], d.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let printed = stdout(&o) + &stderr(&o);
    for (path, bytes, _) in read_tree(&d.path().join("b")).into_iter().chain([(
        "output".to_string(),
        printed.into_bytes(),
        0,
    )]) {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["bmc-k3s1-unique", "bmc-user-unique", "bmc-pass-unique"] {
            assert!(!text.contains(secret), "{path} contains `{secret}`");
        }
    }
}

/// Protects `lab up`'s promise that a disk selector which would not match on hardware of the
/// profile's shape stops everything before anything starts: the error names node, disk and
/// selector, and no lab state, namespace or disk file is created. Without root, `lab up` exits 2
/// before reading anything.
#[test]
fn lab_up_refuses_a_selector_the_shape_would_not_match_before_starting_anything() {
    let d = tempfile::tempdir().unwrap();
    let inv = d.path().join("inv");
    std::fs::create_dir_all(inv.join("hardware")).unwrap();
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pxe/tests/fixtures");
    let text = std::fs::read_to_string(fx.join("lab/lab.yaml"))
        .unwrap()
        .replace("profile: qemu-uefi", "profile: long-model");
    std::fs::write(inv.join("lab.yaml"), text).unwrap();
    std::fs::copy(
        fx.join("hardware/qemu-bios.yaml"),
        inv.join("hardware/qemu-bios.yaml"),
    )
    .unwrap();
    // A SATA model longer than the 40 characters of ATA IDENTIFY's model field: no kernel ever
    // reports it, on a real disk as on the shaped one.
    let profile = std::fs::read_to_string(fx.join("hardware/qemu-uefi.yaml"))
        .unwrap()
        .replace("name: qemu-uefi", "name: long-model")
        .replace(
            "  min_size_gb: 0",
            "  model: SAMSUNG MZ7LH480HAHQ-00005 ENTERPRISE SSD 480GB",
        );
    std::fs::write(inv.join("hardware/long-model.yaml"), profile).unwrap();
    let lab = d.path().join("lab");
    let o = builder(
        &[
            "lab",
            "up",
            "-i",
            "inv/lab.yaml",
            "--dir",
            "lab",
            "--accel",
            "tcg",
        ],
        d.path(),
    );
    if !nix::unistd::geteuid().is_root() {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
        return;
    }
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "lab-agent: install disk: the selector matches 0 disk(s) as the installer sees them"
        ) && err.contains("SAMSUNG MZ7LH480HAHQ-00005 ENTERPRISE SSD 480GB"),
        "{err}"
    );
    assert!(!lab.join("lab.json").exists(), "nothing started");
    assert!(!lab.join("bundle").exists(), "not even rendered");
    assert!(
        !lab.join("lab-agent-install.img").exists() && !lab.join("lab-server-install.img").exists()
    );
}
