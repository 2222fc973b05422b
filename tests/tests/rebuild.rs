//! Renders of `builder rebuild` (a node in join form) and `builder recover` (one server in
//! cluster-reset form), parsed back: the k3s HA pitfalls of docs/reference.md "k3s rebuild and
//! restore" must not be possible.

use builder::render::{ClusterReset, RenderOptions};
use ironseed_tests::{
    CRITICAL, FIXTURES, Fixture, assert_critical_identical, k3s, k3s_from_user_data,
    render_fixture, render_fixture_with,
};
use serde_json::Value;

fn joined(hosts: &[&str]) -> RenderOptions {
    let mut o = RenderOptions::default();
    o.joined.extend(hosts.iter().map(|h| h.to_string()));
    o
}

fn first_server(name: &str) -> String {
    render_fixture(name)
        .inventory
        .servers()
        .next()
        .unwrap()
        .hostname
        .to_string()
}

#[test]
fn rebuilt_first_server_joins_through_the_vip_and_never_inits() {
    for name in FIXTURES {
        let first = first_server(name);
        let f = render_fixture_with(name, &joined(&[&first]));
        let vip = format!("https://{}:6443", f.inventory.cluster.api.vip);
        for c in [k3s(&f, &first), k3s_from_user_data(&f, &first)] {
            assert_eq!(c["server"], vip.as_str(), "{name}/{first}");
            assert!(c.get("cluster-init").is_none(), "{name}/{first}: {c}");
            assert!(c.get("cluster-reset").is_none());
        }
        // With the init node rebuilt, nothing in the cluster initialises a new one.
        for n in f.inventory.nodes.iter().filter(|n| n.role.runs_k3s()) {
            let c = k3s(&f, n.hostname.as_str());
            assert!(c.get("cluster-init").is_none(), "{name}/{}", n.hostname);
            assert_eq!(c["server"], vip.as_str(), "{name}/{}", n.hostname);
        }
        let plan: Value = serde_json::from_slice(&f.bundle.files["plan.json"].bytes).unwrap();
        let node = plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == first.as_str())
            .unwrap();
        assert_eq!(node["bootstrap"], false);
        assert_eq!(plan["joined"], serde_json::json!([first]));
    }
}

#[test]
fn critical_flags_stay_identical_across_servers_after_a_rebuild() {
    for name in FIXTURES {
        let first = first_server(name);
        let before = render_fixture(name);
        let after = render_fixture_with(name, &joined(&[&first]));
        assert_critical_identical(&after, &format!("{name} after rebuilding {first}"));
        // And they are the flags the running servers already have.
        for s in after.inventory.servers() {
            let (a, b) = (
                k3s(&after, s.hostname.as_str()),
                k3s(&before, s.hostname.as_str()),
            );
            for key in CRITICAL {
                assert_eq!(a.get(*key), b.get(*key), "{name}/{}: {key}", s.hostname);
            }
        }
    }
}

#[test]
fn rebuilt_agent_keeps_its_labels_and_taints() {
    let plain = render_fixture("homelab");
    let f = render_fixture_with("homelab", &joined(&["k3s3"]));
    let c = k3s(&f, "k3s3");
    let labels: Vec<&str> = c["node-label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(labels.contains(&"homelab/storage=tiered"), "{labels:?}");
    assert_eq!(c["server"], "https://10.0.20.10:6443");
    // An agent always joins: the rebuild changes nothing in what it is served.
    for file in [
        "k3s/config.yaml",
        "user-data",
        "meta-data",
        "network-config",
    ] {
        let p = format!("nodes/k3s3/{file}");
        assert_eq!(f.bundle.files[&p], plain.bundle.files[&p], "{p}");
    }
    for name in FIXTURES {
        let plain = render_fixture(name);
        for n in plain.inventory.nodes.iter().filter(|n| n.role.runs_k3s()) {
            let host = n.hostname.as_str();
            let before = k3s(&plain, host);
            let after = k3s(&render_fixture_with(name, &joined(&[host])), host);
            for key in ["node-label", "node-taint", "node-ip", "node-name", "token"] {
                assert_eq!(before.get(key), after.get(key), "{name}/{host}: {key}");
            }
        }
    }
}

fn recover(name: &str, survivor: &str, path: &str, s3: bool) -> Fixture {
    let mut o = RenderOptions::default();
    let servers: Vec<String> = render_fixture(name)
        .inventory
        .servers()
        .map(|s| s.hostname.to_string())
        .collect();
    o.joined.extend(servers);
    o.reset = Some(ClusterReset {
        node: survivor.into(),
        restore_path: path.into(),
        s3,
    });
    render_fixture_with(name, &o)
}

#[test]
fn recover_renders_the_survivor_in_reset_form_and_the_others_joining() {
    let path = "/var/lib/rancher/k3s/server/db/snapshots/etcd-snapshot-k3s-master2-1732000000";
    let f = recover("homelab", "k3s-master2", path, false);
    let token = &f.secrets.k3s_token;
    for c in [
        k3s(&f, "k3s-master2"),
        k3s_from_user_data(&f, "k3s-master2"),
    ] {
        // k3s refuses a reset while `server:` is set; cluster-init would be wrong too.
        assert!(c.get("server").is_none(), "{c}");
        assert!(c.get("cluster-init").is_none(), "{c}");
        assert_eq!(c["cluster-reset"], true);
        assert_eq!(c["cluster-reset-restore-path"], path);
        // The old token: it decrypts the snapshot's bootstrap data.
        assert_eq!(c["token"], token.as_str());
        // The homelab has no S3, so no S3 key at all.
        assert!(c.get("etcd-s3").is_none());
    }
    for other in ["k3s-master1", "k3s-master3", "k3s1", "k3s3"] {
        let c = k3s(&f, other);
        assert_eq!(c["server"], "https://10.0.20.10:6443", "{other}");
        assert!(c.get("cluster-reset").is_none() && c.get("cluster-init").is_none());
        assert_eq!(c["token"], token.as_str());
    }
    assert_critical_identical(&f, "recover");
}

#[test]
fn recover_with_s3_configured_reads_local_or_s3_snapshots_as_asked() {
    let survivor = first_server("big");
    // A local file: S3 off for the reset, or k3s would look for the name in the bucket.
    let f = recover(
        "big",
        &survivor,
        "/var/lib/rancher/k3s/server/db/snapshots/x",
        false,
    );
    let c = k3s(&f, &survivor);
    assert_eq!(c["etcd-s3"], false);
    assert!(c.get("etcd-s3-bucket").is_none());
    assert!(c.get("server").is_none());
    // An S3 object: the bucket settings and keys stay in the config (the kube-system S3 Secret
    // is not readable during a restore).
    let f = recover("big", &survivor, "etcd-snapshot-cp1-1732000000", true);
    let c = k3s(&f, &survivor);
    assert_eq!(c["etcd-s3"], true);
    assert_eq!(c["etcd-s3-bucket"], "bigrack-etcd");
    assert!(c.get("etcd-s3-access-key").is_some());
    assert_eq!(
        c["cluster-reset-restore-path"],
        "etcd-snapshot-cp1-1732000000"
    );
    // Every other server keeps its normal S3 upload settings and joins.
    for s in f.inventory.servers().skip(1) {
        let c = k3s(&f, s.hostname.as_str());
        assert_eq!(c["etcd-s3"], true);
        assert!(c.get("server").is_some());
    }
}
