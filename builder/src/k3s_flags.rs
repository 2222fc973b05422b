//! Config-file keys accepted by `k3s server` and `k3s agent` (flag names without `--`).
//! Source: k3s-io/k3s pkg/cli/cmds/server.go + pkg/cli/cmds/agent.go (urfave/cli v1 era, ~v1.30/v1.31:
//! has etcd-s3-config-secret, etcd-s3-proxy, supervisor-metrics, node-internal-dns), cross-checked
//! against the k3s-io/docs pages
//! https://github.com/k3s-io/docs/blob/02434960d6d5881e47ae8a1c857c4b51f23deec6/docs/cli/server.md
//! and https://github.com/k3s-io/docs/blob/1f023c058c5f999a8857644625779e7298d13936/docs/cli/agent.md,
//! which add `nonroot-devices` and `secrets-encryption-provider`.
//! k3s drops unknown keys with only a warning,
//! so ironseed checks every key it renders against these lists.
//!
//! Not included: `config` (the config-file path itself; meaningless inside config.yaml) and
//! single-letter aliases (`d`, `t`, `s`, `i`, `o`, `l`, `c`). Hidden/deprecated flags that the
//! source defines are included (e.g. `kine-tls`, `disable-agent`, `kube-controller-arg`,
//! `airgap-extra-registry`, `disable-apiserver`).

/// Keys accepted by `k3s server` (server flags plus the agent flags a server also accepts).
pub const SERVER_KEYS: &[&str] = &[
    "advertise-address",
    "advertise-port",
    "agent-token",
    "agent-token-file",
    "airgap-extra-registry",
    "alsologtostderr",
    "bind-address",
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "cluster-init",
    "cluster-reset",
    "cluster-reset-restore-path",
    "container-runtime-endpoint",
    "data-dir",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-endpoint",
    "datastore-keyfile",
    "debug",
    "default-local-storage-path",
    "default-runtime",
    "disable",
    "disable-agent",
    "disable-apiserver",
    "disable-cloud-controller",
    "disable-controller-manager",
    "disable-default-registry-endpoint",
    "disable-etcd",
    "disable-helm-controller",
    "disable-kube-proxy",
    "disable-network-policy",
    "disable-scheduler",
    "docker",
    "egress-selector-mode",
    "embedded-registry",
    "enable-pprof",
    "etcd-arg",
    "etcd-disable-snapshots",
    "etcd-expose-metrics",
    "etcd-s3",
    "etcd-s3-access-key",
    "etcd-s3-bucket",
    "etcd-s3-config-secret",
    "etcd-s3-endpoint",
    "etcd-s3-endpoint-ca",
    "etcd-s3-folder",
    "etcd-s3-insecure",
    "etcd-s3-proxy",
    "etcd-s3-region",
    "etcd-s3-secret-key",
    "etcd-s3-skip-ssl-verify",
    "etcd-s3-timeout",
    "etcd-snapshot-compress",
    "etcd-snapshot-dir",
    "etcd-snapshot-name",
    "etcd-snapshot-retention",
    "etcd-snapshot-schedule-cron",
    "flannel-backend",
    "flannel-cni-conf",
    "flannel-conf",
    "flannel-external-ip",
    "flannel-iface",
    "flannel-ipv6-masq",
    "helm-job-image",
    "https-listen-port",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "image-service-endpoint",
    "kine-tls",
    "kube-apiserver-arg",
    "kube-cloud-controller-arg",
    "kube-cloud-controller-manager-arg",
    "kube-controller-arg",
    "kube-controller-manager-arg",
    "kube-proxy-arg",
    "kube-scheduler-arg",
    "kubelet-arg",
    "lb-server-port",
    "log",
    "node-external-dns",
    "node-external-ip",
    "node-internal-dns",
    "node-ip",
    "node-label",
    "node-name",
    "node-taint",
    "nonroot-devices",
    "pause-image",
    "prefer-bundled-bin",
    "private-registry",
    "protect-kernel-defaults",
    "resolv-conf",
    "rootless",
    "secrets-encryption",
    "secrets-encryption-provider",
    "selinux",
    "server",
    "service-cidr",
    "service-node-port-range",
    "servicelb-namespace",
    "snapshotter",
    "supervisor-metrics",
    "system-default-registry",
    "tls-san",
    "tls-san-security",
    "token",
    "token-file",
    "v",
    "vmodule",
    "vpn-auth",
    "vpn-auth-file",
    "with-node-id",
    "write-kubeconfig",
    "write-kubeconfig-group",
    "write-kubeconfig-mode",
];

/// Keys accepted by `k3s agent`.
pub const AGENT_KEYS: &[&str] = &[
    "airgap-extra-registry",
    "alsologtostderr",
    "bind-address",
    "container-runtime-endpoint",
    "data-dir",
    "debug",
    "default-runtime",
    "disable-apiserver-lb",
    "disable-default-registry-endpoint",
    "docker",
    "enable-pprof",
    "flannel-cni-conf",
    "flannel-conf",
    "flannel-iface",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "image-service-endpoint",
    "kube-proxy-arg",
    "kubelet-arg",
    "lb-server-port",
    "log",
    "node-external-dns",
    "node-external-ip",
    "node-internal-dns",
    "node-ip",
    "node-label",
    "node-name",
    "node-taint",
    "nonroot-devices",
    "pause-image",
    "prefer-bundled-bin",
    "private-registry",
    "protect-kernel-defaults",
    "resolv-conf",
    "rootless",
    "selinux",
    "server",
    "snapshotter",
    "token",
    "token-file",
    "v",
    "vmodule",
    "vpn-auth",
    "vpn-auth-file",
    "with-node-id",
];

/// Keys that take a list (repeatable flags, `StringSlice`) in either subcommand.
pub const LIST_KEYS: &[&str] = &[
    "airgap-extra-registry",
    "cluster-cidr",
    "cluster-dns",
    "disable",
    "etcd-arg",
    "kube-apiserver-arg",
    "kube-cloud-controller-arg",
    "kube-cloud-controller-manager-arg",
    "kube-controller-arg",
    "kube-controller-manager-arg",
    "kube-proxy-arg",
    "kube-scheduler-arg",
    "kubelet-arg",
    "node-external-dns",
    "node-external-ip",
    "node-internal-dns",
    "node-ip",
    "node-label",
    "node-taint",
    "service-cidr",
    "tls-san",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_sorted_unique(name: &str, keys: &[&str]) {
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{name} not sorted/unique at {:?}", w);
        }
    }

    #[test]
    fn lists_are_sorted_and_unique() {
        assert_sorted_unique("SERVER_KEYS", SERVER_KEYS);
        assert_sorted_unique("AGENT_KEYS", AGENT_KEYS);
        assert_sorted_unique("LIST_KEYS", LIST_KEYS);
    }

    #[test]
    fn list_keys_are_known_keys() {
        for k in LIST_KEYS {
            assert!(
                SERVER_KEYS.binary_search(k).is_ok() || AGENT_KEYS.binary_search(k).is_ok(),
                "{k} is not a server or agent key"
            );
        }
    }

    #[test]
    fn keys_have_no_dashes_prefix() {
        for k in SERVER_KEYS.iter().chain(AGENT_KEYS).chain(LIST_KEYS) {
            assert!(!k.starts_with('-') && !k.is_empty());
        }
    }
}
