//! Every rendered seed checked by the real cloud-init (Debian bookworm ships 22.4, the version
//! the nodes run): `cloud-init schema` for user-data and `devel net-convert` for network-config.
//! CI installs cloud-init (tests/run); elsewhere the test is skipped with a loud message.

use std::process::Command;

use ironseed_tests::{FIXTURES, render_fixture};

fn cloud_init_available() -> bool {
    let ok = Command::new("cloud-init")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ironseed_tests::ci::require(
        ok,
        "cloud-init is not installed (apt-get install cloud-init); seeds NOT checked",
    )
}

#[test]
fn every_user_data_passes_cloud_init_schema() {
    if !cloud_init_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in FIXTURES {
        let f = render_fixture(name);
        for (path, file) in f
            .bundle
            .files
            .iter()
            .filter(|(p, _)| p.ends_with("/user-data"))
        {
            let p = dir.path().join(path.replace('/', "_"));
            std::fs::write(&p, &file.bytes).unwrap();
            let out = Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(&p)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // 22.4 exits 1 on schema errors (without --annotate, which always exits 0).
            assert!(out.status.success(), "{name} {path}: {text}");
            assert!(text.contains("Valid cloud-config"), "{name} {path}: {text}");
            checked += 1;
        }
    }
    assert_eq!(checked, 7 + 11);
}

#[test]
fn every_network_config_converts_with_the_address_applied() {
    if !cloud_init_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let f = render_fixture(name);
        for n in &f.inventory.nodes {
            let src = dir.path().join(format!("{}.yaml", n.hostname));
            std::fs::write(
                &src,
                &f.bundle.files[&format!("nodes/{}/network-config", n.hostname)].bytes,
            )
            .unwrap();
            // eni is what Debian's ifupdown images render; netplan is what Ubuntu's do.
            for (kind, file) in [
                ("eni", "etc/network/interfaces.d/50-cloud-init"),
                ("netplan", "etc/netplan/50-cloud-init.yaml"),
            ] {
                let out_dir = dir.path().join(format!("{}-{kind}", n.hostname));
                let out = Command::new("cloud-init")
                    .args([
                        "devel",
                        "net-convert",
                        "-k",
                        "yaml",
                        "-D",
                        "debian",
                        "-O",
                        kind,
                        "-p",
                    ])
                    .arg(&src)
                    .arg("-d")
                    .arg(&out_dir)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{name} {} {kind}: {}",
                    n.hostname,
                    String::from_utf8_lossy(&out.stderr)
                );
                let rendered = std::fs::read_to_string(out_dir.join(file))
                    .unwrap_or_else(|e| panic!("{name} {} {kind}: no {file}: {e}", n.hostname));
                assert!(
                    rendered.contains(&format!("{}/{}", n.ip, n.prefix_len)),
                    "{name} {} {kind}: address missing:\n{rendered}",
                    n.hostname
                );
                assert!(
                    rendered.contains(&f.inventory.network.gateway.to_string()),
                    "{name} {} {kind}: gateway missing:\n{rendered}",
                    n.hostname
                );
            }
        }
    }
}
