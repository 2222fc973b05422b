//! `builder rebuild` and `builder recover` as an operator runs them: the runbook per role, the
//! in-place `--mac` edit of their inventory, refusals that leave everything untouched, and an
//! unreachable pxe server. (Against a running pxe: pxe/tests/rebuild_flow.rs.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use builder::inventory::DEFAULT_INVENTORY;
use common::{builder_cmd, stderr as err, stdout as out};

/// Nothing listens here (loopback ports 18600–18699 are this project's test range).
const DEAD_PXE: &str = "http://127.0.0.1:18619";

fn builder(args: &[&str], cwd: &Path) -> Output {
    builder_cmd(args).current_dir(cwd).output().unwrap()
}

/// A lab folder: the default inventory (with its comments) as lab.yaml, rendered once.
fn lab() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    std::fs::set_permissions(
        d.path().join("lab.yaml"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let o = builder(&["render", "-i", "lab.yaml", "-o", "out"], d.path());
    assert!(o.status.success(), "{}", err(&o));
    d
}

fn runbook(d: &Path, node: &str) -> String {
    let o = builder(
        &[
            "rebuild",
            node,
            "-i",
            "lab.yaml",
            "-o",
            "out",
            "--runbook-only",
        ],
        d,
    );
    assert!(o.status.success(), "{}", err(&o));
    out(&o)
}

#[test]
fn runbook_for_a_server_checks_quorum_and_the_etcd_member() {
    let d = lab();
    let before = std::fs::read(d.path().join("out/plan.json")).unwrap();
    let r = runbook(d.path(), "k3s-master1");
    for want in [
        "rebuild k3s-master1 (server, 10.0.20.11)",
        "server: https://10.0.20.10:6443",
        "ssh ops@10.0.20.12",
        "2 of 3 etcd members",
        "sudo k3s kubectl get nodes",
        "--cacert=/var/lib/rancher/k3s/server/tls/etcd/server-ca.crt",
        "--cert=/var/lib/rancher/k3s/server/tls/etcd/server-client.crt",
        "--key=/var/lib/rancher/k3s/server/tls/etcd/server-client.key",
        "sudo etcdctl $ETCD endpoint health --cluster",
        "sudo k3s etcd-snapshot save --name pre-rebuild-k3s-master1",
        "sudo k3s kubectl delete node k3s-master1\n",
        "delete secret k3s-master1.node-password.k3s",
        "sudo etcdctl $ETCD member remove",
        "sudo rm -rf /var/lib/rancher/k3s/server/db",
        "pxe arm k3s-master1 --server http://10.0.20.5:8080",
    ] {
        assert!(r.contains(want), "missing {want:?} in:\n{r}");
    }
    for l in r.lines().filter(|l| l.contains("kubectl delete")) {
        assert!(
            !l.contains("--force") && !l.contains("--grace-period"),
            "forced: {l}"
        );
    }
    assert!(!r.contains("longhorn"), "{r}");
    // --runbook-only renders and arms nothing.
    assert_eq!(
        std::fs::read(d.path().join("out/plan.json")).unwrap(),
        before
    );
}

#[test]
fn runbook_for_agents_deletes_the_node_password_and_handles_longhorn() {
    let d = lab();
    let r = runbook(d.path(), "k3s1");
    assert!(r.contains("sudo k3s kubectl delete node k3s1\n"), "{r}");
    assert!(
        r.contains("-n kube-system delete secret k3s1.node-password.k3s"),
        "{r}"
    );
    assert!(
        r.contains("ssh ops@10.0.20.11"),
        "kubectl runs on a server:\n{r}"
    );
    assert!(!r.contains("etcdctl") && !r.contains("longhorn"), "{r}");

    // k3s3 carries the Longhorn tiers of the r630 profile.
    let r = runbook(d.path(), "k3s3");
    for want in [
        r#"patch nodes.longhorn.io k3s3 --type merge -p '{"spec":{"allowScheduling":false,"evictionRequested":true}}'"#,
        "get replicas.longhorn.io -l longhornnode=k3s3",
        "delete nodes.longhorn.io k3s3",
        "/var/lib/longhorn-optane",
        r#""optane":{"allowScheduling":true,"path":"/var/lib/longhorn-optane","tags":["optane"]}"#,
        "delete secret k3s3.node-password.k3s",
    ] {
        assert!(r.contains(want), "missing {want:?} in:\n{r}");
    }
    // Evict before the node object goes.
    assert!(r.find("evictionRequested").unwrap() < r.find("delete node k3s3").unwrap());
}

#[test]
fn runbook_for_the_nfs_host_restores_from_the_secondary() {
    let d = lab();
    let r = runbook(d.path(), "nfs1");
    assert!(r.contains("no nfs.secondary"), "{r}");
    assert!(
        r.contains("hard,nfsvers=4.2 nfs1.lab.home.arpa:/srv/media"),
        "{r}"
    );
    assert!(!r.contains("kubectl"), "{r}");

    let text = DEFAULT_INVENTORY
        .replace("  # secondary:\n", "  secondary:\n")
        .replace(
            "  #   target: backup@nas2.lab.home.arpa:/srv/media-replica\n",
            "    target: backup@nas2.lab.home.arpa:/srv/media-replica\n",
        );
    assert_ne!(text, DEFAULT_INVENTORY);
    std::fs::write(d.path().join("lab.yaml"), text).unwrap();
    let r = runbook(d.path(), "nfs1");
    let stop = r
        .find("sudo systemctl stop ironseed-rsync.timer")
        .expect(&r);
    let copy = r
        .find("sudo rsync -aHAX --numeric-ids backup@nas2.lab.home.arpa:/srv/media-replica/srv/media/ /srv/media/")
        .expect(&r);
    assert!(
        stop < copy,
        "the --delete timer is stopped before the restore:\n{r}"
    );
    assert!(r.contains("sudo exportfs -ra"), "{r}");
}

#[test]
fn mac_edit_changes_only_that_mac_and_keeps_comments_and_mode() {
    let d = lab();
    let p = d.path().join("lab.yaml");
    let o = builder(
        &[
            "rebuild",
            "k3s2",
            "--mac",
            "d8:9e:f3:20:00:99",
            "-i",
            "lab.yaml",
            "-o",
            "out",
            "--server",
            DEAD_PXE,
        ],
        d.path(),
    );
    let edited = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        edited,
        DEFAULT_INVENTORY.replacen("mac: d8:9e:f3:20:00:22", "mac: d8:9e:f3:20:00:99", 1),
        "byte for byte the same outside that MAC"
    );
    assert!(edited.contains("# Workers: Dell OptiPlex."));
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o640
    );
    // pxe is not running: non-zero, said clearly, with the command to retry; the render stays.
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("the pxe server did not answer"), "{e}");
    assert!(
        e.contains("pxe arm k3s2 --server http://127.0.0.1:18619"),
        "{e}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/plan.json")).unwrap()).unwrap();
    assert_eq!(plan["joined"], serde_json::json!(["k3s2"]));
    let k3s2 = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == "k3s2")
        .unwrap();
    assert_eq!(k3s2["mac"], "d8:9e:f3:20:00:99");
    assert!(out(&o).contains("delete secret k3s2.node-password.k3s"));

    // A later plain render keeps the join record.
    let o = builder(&["render", "-i", "lab.yaml", "-o", "out"], d.path());
    assert!(o.status.success(), "{}", err(&o));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/plan.json")).unwrap()).unwrap();
    assert_eq!(plan["joined"], serde_json::json!(["k3s2"]));
}

#[test]
fn invalid_or_duplicate_mac_is_refused_with_file_line_and_nothing_changes() {
    let d = lab();
    let p = d.path().join("lab.yaml");
    let bundle_before = std::fs::read(d.path().join("out/plan.json")).unwrap();
    let line = DEFAULT_INVENTORY
        .lines()
        .position(|l| l.contains("mac: d8:9e:f3:20:00:22"))
        .unwrap()
        + 1;
    for (mac, why) in [
        ("d8:9e:f3:20:00:21", "duplicate MAC"),
        ("d8:9e:f3:zz:00:22", "not a MAC address"),
    ] {
        let o = builder(
            &[
                "rebuild", "k3s2", "--mac", mac, "-i", "lab.yaml", "--server", DEAD_PXE,
            ],
            d.path(),
        );
        assert_eq!(o.status.code(), Some(1), "{mac}");
        let e = err(&o);
        assert!(e.contains(why), "{e}");
        assert!(e.contains(&format!("lab.yaml:{line}:")), "{e}");
        assert!(e.contains("lab.yaml was not changed"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), DEFAULT_INVENTORY);
        assert_eq!(
            std::fs::read(d.path().join("out/plan.json")).unwrap(),
            bundle_before
        );
    }
    // Text that is not even MAC-shaped never reaches the file.
    let o = builder(
        &[
            "rebuild",
            "k3s2",
            "--mac",
            "x\n  role: server",
            "-i",
            "lab.yaml",
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("is not a MAC address"), "{}", err(&o));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), DEFAULT_INVENTORY);
}

#[test]
fn mac_without_an_inventory_file_and_unknown_nodes_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let o = builder(&["rebuild", "k3s1", "--mac", "d8:9e:f3:20:00:99"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("embedded default inventory"),
        "{}",
        err(&o)
    );
    assert!(err(&o).contains("builder init"), "{}", err(&o));
    assert!(!d.path().join("out").exists());

    let o = builder(&["rebuild", "k3s9", "--runbook-only"], d.path());
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("no node named `k3s9`"), "{e}");
    assert!(
        e.contains("known nodes: k3s-master1, k3s-master2, k3s-master3, k3s1"),
        "{e}"
    );
}

#[test]
fn rebuild_refuses_to_invent_a_token_for_an_existing_cluster() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("lab.yaml"), DEFAULT_INVENTORY).unwrap();
    let o = builder(
        &["rebuild", "k3s1", "-i", "lab.yaml", "--server", DEAD_PXE],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("lab.secrets.yaml does not exist"),
        "{}",
        err(&o)
    );
    assert!(!d.path().join("lab.secrets.yaml").exists());
    assert!(!d.path().join("out").exists());
}

#[test]
fn recover_renders_the_reset_config_and_prints_the_disaster_runbook() {
    let d = lab();
    let o = builder(
        &[
            "recover",
            "--from-snapshot",
            "etcd-snapshot-k3s-master1-1732000000",
            "-i",
            "lab.yaml",
            "-o",
            "out",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", err(&o));
    let r = out(&o);
    let cfg =
        std::fs::read_to_string(d.path().join("out/nodes/k3s-master1/k3s/config.yaml")).unwrap();
    assert!(cfg.contains("cluster-reset: true"), "{cfg}");
    assert!(cfg.contains(
        "cluster-reset-restore-path: \"/var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-k3s-master1-1732000000\""
    ));
    assert!(
        !cfg.contains("\nserver:") && !cfg.contains("cluster-init"),
        "{cfg}"
    );
    for want in [
        "ssh ops@10.0.20.11 sudo systemctl stop k3s",
        "ssh ops@10.0.20.13 sudo systemctl stop k3s",
        "scp out/nodes/k3s-master1/k3s/config.yaml ops@10.0.20.11:",
        "ssh -t ops@10.0.20.11 sudo k3s server",
        "builder render --inventory lab.yaml --secrets lab.secrets.yaml --out out",
        "sudo rm -rf /var/lib/rancher/k3s/server/db/",
        "scp out/nodes/k3s-master2/k3s/config.yaml ops@10.0.20.12:",
    ] {
        assert!(r.contains(want), "missing {want:?} in:\n{r}");
    }
    // Stop everything before the reset; wipe the others only after the survivor is back.
    assert!(r.find("systemctl stop k3s").unwrap() < r.find("sudo k3s server").unwrap());
    assert!(r.find("sudo k3s server").unwrap() < r.find("rm -rf").unwrap());

    // The follow-up plain render drops the reset form; every server stays joined.
    let o = builder(&["render", "-i", "lab.yaml", "-o", "out"], d.path());
    assert!(o.status.success(), "{}", err(&o));
    for s in ["k3s-master1", "k3s-master2", "k3s-master3"] {
        let cfg = std::fs::read_to_string(d.path().join(format!("out/nodes/{s}/k3s/config.yaml")))
            .unwrap();
        assert!(
            cfg.contains("server: \"https://10.0.20.10:6443\""),
            "{s}: {cfg}"
        );
        assert!(!cfg.contains("cluster-reset") || cfg.contains("# "), "{s}");
        assert!(!cfg.contains("cluster-init"), "{s}");
    }
}

#[test]
fn recover_refuses_agents_as_survivor_bad_names_and_s3_without_s3() {
    let d = lab();
    let cases: [(&[&str], &str); 4] = [
        (&["--survivor", "k3s1"], "--survivor k3s1 is not a server"),
        (
            &["--from-snapshot", "../../etc/shadow"],
            "`..` is not allowed",
        ),
        (&["--from-snapshot", "a b"], "no spaces"),
        (&["--s3"], "the inventory has no cluster.etcd_snapshots.s3"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["recover", "-i", "lab.yaml", "-o", "out"];
        if !extra.contains(&"--from-snapshot") {
            args.extend(["--from-snapshot", "snap"]);
        }
        args.extend(extra);
        let o = builder(&args, d.path());
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(err(&o).contains(want), "{args:?}: {}", err(&o));
    }
}
