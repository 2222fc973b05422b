//! What the rendered bundle must say, checked by parsing it back: the HA topology, identical
//! critical flags, roles, GPU/Longhorn/NFS specifics, secrets handling and determinism.

use std::collections::BTreeSet;

use builder::render::RenderOptions;
use ironseed_tests::{
    FIXTURES, assert_critical_identical, k3s, k3s_from_user_data, render_fixture,
    render_fixture_with, text, yaml,
};
use serde_json::Value;

#[test]
fn ha_topology_one_bootstrap_server_the_rest_join_through_the_vip() {
    for name in FIXTURES {
        let f = render_fixture(name);
        let vip = format!("https://{}:6443", f.inventory.cluster.api.vip);
        let mut bootstraps = 0;
        for n in &f.inventory.nodes {
            if !n.role.runs_k3s() {
                continue;
            }
            let c = k3s(&f, n.hostname.as_str());
            assert_eq!(c, k3s_from_user_data(&f, n.hostname.as_str()));
            if c.get("cluster-init") == Some(&Value::Bool(true)) {
                bootstraps += 1;
                assert!(
                    c.get("server").is_none(),
                    "{}: init node must not join",
                    n.hostname
                );
            } else {
                assert_eq!(
                    c["server"],
                    vip.as_str(),
                    "{} joins via the VIP",
                    n.hostname
                );
            }
            assert_eq!(c["token"], f.secrets.k3s_token.as_str());
            assert_eq!(c["node-ip"], n.ip.to_string());
        }
        assert_eq!(bootstraps, 1, "{name}: exactly one cluster-init");
        let first = f.inventory.servers().next().unwrap();
        assert_eq!(k3s(&f, first.hostname.as_str())["cluster-init"], true);
    }
}

#[test]
fn critical_flags_are_identical_on_every_server() {
    for name in FIXTURES {
        let f = render_fixture(name);
        let servers: Vec<Value> = f
            .inventory
            .servers()
            .map(|s| k3s(&f, s.hostname.as_str()))
            .collect();
        assert!(servers.len() >= 3);
        assert_critical_identical(&f, name);
        let s = &servers[0];
        assert_eq!(s["flannel-backend"], "none");
        assert_eq!(s["disable-network-policy"], true);
        assert_eq!(s["secrets-encryption"], true);
        let vip = f.inventory.cluster.api.vip.to_string();
        let sans: Vec<&str> = s["tls-san"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(sans.contains(&vip.as_str()));
        assert!(sans.contains(&f.inventory.cluster.api.dns_name.as_str()));
    }
}

#[test]
fn kube_proxy_replacement_and_cilium_agree() {
    // homelab replaces kube-proxy; the big fixture keeps it.
    for (name, kpr) in [("homelab", true), ("big", false)] {
        let f = render_fixture(name);
        let s = f.inventory.servers().next().unwrap().hostname.to_string();
        let c = k3s(&f, &s);
        assert_eq!(c.get("disable-kube-proxy").is_some(), kpr, "{name}");
        let ud = yaml(text(&f, &format!("nodes/{s}/user-data")).as_bytes());
        let cilium = ud["write_files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["path"] == "/var/lib/rancher/k3s/server/manifests/cilium.yaml")
            .expect("cilium HelmChart on servers");
        let chart = yaml(cilium["content"].as_str().unwrap().as_bytes());
        assert_eq!(chart["kind"], "HelmChart");
        let values = yaml(chart["spec"]["valuesContent"].as_str().unwrap().as_bytes());
        assert_eq!(values["kubeProxyReplacement"], kpr);
        assert_eq!(values["k8sServicePort"], 6444);
    }
}

#[test]
fn servers_carry_kube_vip_static_pod_psa_and_taint() {
    let f = render_fixture("homelab");
    for s in f.inventory.servers() {
        let ud = text(&f, &format!("nodes/{}/user-data", s.hostname));
        assert!(ud.contains("path: \"/var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml\""));
        assert!(ud.contains("path: \"/var/lib/rancher/k3s/server/psa.yaml\""));
        assert!(
            ud.contains("value: \"10.0.20.10\""),
            "kube-vip announces the VIP"
        );
        let c = k3s(&f, s.hostname.as_str());
        let taints = c["node-taint"].as_array().unwrap();
        assert!(taints.contains(&Value::from(
            "node-role.kubernetes.io/control-plane:NoSchedule"
        )));
    }
    for a in f
        .inventory
        .nodes
        .iter()
        .filter(|n| n.role == builder::inventory::model::Role::Agent)
    {
        let ud = text(&f, &format!("nodes/{}/user-data", a.hostname));
        assert!(!ud.contains("kube-vip.yaml"), "{} is an agent", a.hostname);
        assert!(
            ud.contains("INSTALL_K3S_EXEC='agent'"),
            "{}: explicit agent install",
            a.hostname
        );
    }
}

#[test]
fn gpu_node_gets_driver_toolkit_label_and_longhorn_tiers() {
    let f = render_fixture("homelab");
    let ud_text = text(&f, "nodes/k3s3/user-data");
    let ud = yaml(ud_text.as_bytes());
    let pk: Vec<&str> = ud["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        pk.contains(&"nvidia-driver") && pk.contains(&"open-iscsi") && pk.contains(&"nfs-common")
    );
    assert!(ud_text.contains("nvidia-container-toolkit"));
    // Toolkit before k3s: k3s only detects the runtime when it starts.
    assert!(
        ud_text
            .find("apt-get install -y -q nvidia-container-toolkit")
            .unwrap()
            < ud_text.find("sh /run/k3s-install.sh").unwrap()
    );
    let c = k3s(&f, "k3s3");
    let labels: Vec<&str> = c["node-label"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(labels.contains(&"nvidia.com/gpu.present=true"));
    assert!(labels.contains(&"node.longhorn.io/create-default-disk=config"));
    for tier in ["optane", "nvme", "sas-ssd"] {
        assert!(
            ud_text.contains(&format!(
                "prepare_disk '{tier}' 'ext4' '/var/lib/longhorn-{tier}'"
            )),
            "{tier}"
        );
        // tests/tests/firstboot.rs parses the annotation as Longhorn does.
        assert!(
            ud_text.contains(&format!("\"path\": \"/var/lib/longhorn-{tier}\"")),
            "annotation has {tier}"
        );
    }
    // Blank-only formatting: the script checks blkid before mkfs.
    assert!(ud_text.contains("blkid -p -o value -s TYPE"));
}

#[test]
fn nfs_host_exports_the_pool_and_runs_no_k3s() {
    let f = render_fixture("homelab");
    assert!(!f.bundle.files.contains_key("nodes/nfs1/k3s/config.yaml"));
    let ud = text(&f, "nodes/nfs1/user-data");
    assert!(!ud.contains("k3s-install"));
    assert!(
        !ud.contains(&f.secrets.k3s_token) && !ud.contains("token:"),
        "the NFS host never sees the cluster token"
    );
    // Its own first-boot report token, owner-only on the node.
    let report = builder::render::report_token(&f.secrets, "nfs1");
    assert!(ud.contains(&format!("/report/nfs1/{report}")), "{ud}");
    assert_eq!(f.bundle.files["nodes/nfs1/user-data"].mode, 0o600);
    assert!(ud.contains("/srv/media 10.0.20.0/24(rw,sync,no_subtree_check,root_squash)"));
    assert!(ud.contains("\"nfs-kernel-server\""));
    assert!(ud.contains("prepare_disk 'media' 'xfs' '/srv/media'"));
}

#[test]
fn nfs_replication_never_mirrors_an_empty_pool_over_the_secondary() {
    let f = ironseed_tests::render_homelab_edited(|t| {
        t.replace("  # secondary:\n", "  secondary:\n").replace(
            "  #   target: backup@nas2.lab.home.arpa:/srv/media-replica\n",
            "    target: backup@nas2.lab.home.arpa:/srv/media-replica\n",
        )
    });
    let ud = text(&f, "nodes/nfs1/user-data");
    let guard = ud
        .find("ExecStartPre=/bin/sh -c \"find '/srv/media' -mindepth 1 -maxdepth 1 ! -name lost+found | grep -q . || {")
        .unwrap_or_else(|| panic!("no empty-pool guard in:\n{ud}"));
    let mirror = ud
        .find("ExecStart=/usr/bin/rsync -aHAXR --delete --numeric-ids /srv/media backup@nas2")
        .unwrap_or_else(|| panic!("no mirror in:\n{ud}"));
    assert!(guard < mirror, "the guard runs before the mirror");
}

#[test]
fn network_config_is_static_v2_matching_the_inventory() {
    for name in FIXTURES {
        let f = render_fixture(name);
        for n in &f.inventory.nodes {
            let nc = yaml(text(&f, &format!("nodes/{}/network-config", n.hostname)).as_bytes());
            assert_eq!(nc["version"], 2);
            let eth = &nc["ethernets"][&n.profile.boot_nic.name];
            assert_eq!(eth["match"]["macaddress"], n.mac.to_string());
            assert_eq!(eth["addresses"][0], format!("{}/{}", n.ip, n.prefix_len));
            // `to: default` crashes cloud-init < 25.3's eni/networkd renderers.
            assert_eq!(eth["routes"][0]["to"], "0.0.0.0/0");
            assert_eq!(
                eth["routes"][0]["via"],
                f.inventory.network.gateway.to_string()
            );
        }
    }
}

#[test]
fn every_user_data_is_cloud_config_and_secrets_are_owner_only() {
    for name in FIXTURES {
        let f = render_fixture(name);
        for (path, file) in &f.bundle.files {
            let t = String::from_utf8_lossy(&file.bytes);
            if path.ends_with("/user-data") {
                assert!(t.starts_with("#cloud-config\n"), "{path}");
            }
            if t.contains(&f.secrets.k3s_token) {
                assert_eq!(file.mode, 0o600, "{path} carries the token");
            }
        }
        assert_eq!(f.bundle.files["plan.json"].mode, 0o600);
    }
}

#[test]
fn big_fixture_s3_flux_sops_and_airgap() {
    let f = render_fixture("big");
    let c = k3s(&f, "cp3");
    assert_eq!(c["etcd-s3"], true);
    assert_eq!(c["etcd-s3-bucket"], "bigrack-etcd");
    assert_eq!(
        c["etcd-s3-secret-key"],
        f.secrets.etcd_s3_secret_key.clone().unwrap()
    );
    let ud = text(&f, "nodes/cp1/user-data");
    assert!(ud.contains("kind: GitRepository") && ud.contains("name: sops-age"));
    let age = f.secrets.sops_age_key.clone().unwrap();
    assert!(ud.contains(&age));
    let worker = text(&f, "nodes/worker1/user-data");
    assert!(!worker.contains(&age), "agents never get the age key");
    assert!(worker.contains("INSTALL_K3S_SKIP_DOWNLOAD=true"));
    assert!(
        worker.contains("$APPLIANCE/artifacts/k3s/$1")
            && worker.contains("fetch k3s /usr/local/bin/k3s")
    );
    let wc = k3s(&f, "worker1");
    assert_eq!(wc["kubelet-arg"][0], "max-pods=200");
    let gpu1 = k3s(&f, "gpu1");
    assert_eq!(gpu1["default-runtime"], "nvidia");
    let plan: Value = serde_json::from_slice(&f.bundle.files["plan.json"].bytes).unwrap();
    assert_eq!(plan["nodes"].as_array().unwrap().len(), 11);
    assert_eq!(plan["airgap"]["k3s"]["sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn rendering_is_byte_deterministic() {
    for name in FIXTURES {
        let a = render_fixture(name);
        let b = render_fixture(name);
        assert_eq!(a.bundle.files, b.bundle.files, "{name}");
    }
}

#[test]
fn sha256sums_lists_every_file() {
    let f = render_fixture("homelab");
    let sums = text(&f, "SHA256SUMS");
    let listed: BTreeSet<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    let files: BTreeSet<&str> = f
        .bundle
        .files
        .keys()
        .map(String::as_str)
        .filter(|p| *p != "SHA256SUMS")
        .collect();
    assert_eq!(listed, files);
}

#[test]
fn joined_nodes_render_without_cluster_init() {
    let mut opts = RenderOptions::default();
    opts.joined.insert("k3s-master1".into());
    let f = render_fixture_with("homelab", &opts);
    let c = k3s(&f, "k3s-master1");
    assert!(c.get("cluster-init").is_none());
    assert_eq!(c["server"], "https://10.0.20.10:6443");
    let plan: Value = serde_json::from_slice(&f.bundle.files["plan.json"].bytes).unwrap();
    assert_eq!(plan["joined"][0], "k3s-master1");
}
