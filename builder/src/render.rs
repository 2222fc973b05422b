//! Pure rendering: (validated inventory, secrets, templates) → every file of the bundle, in
//! memory. Nothing here touches the disk; `bundle` is the only writer.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::Value;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::inventory::model::{DiskPurpose, Inventory, Node, Role};
use crate::k3s_flags;
use crate::secrets::Secrets;
use crate::templates::{TemplateError, Templates};
use crate::topology;
use images::bundle::{Artifact, Plan, PlanNode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    pub bytes: Vec<u8>,
    /// Unix permission bits; 0600 for anything carrying a secret.
    pub mode: u32,
}

/// Relative path (always `/`-separated) → file. Sorted, so output order is deterministic.
#[derive(Debug, Default, Clone)]
pub struct Bundle {
    pub files: BTreeMap<String, BundleFile>,
}

impl Bundle {
    fn add(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>, mode: u32) {
        self.files.insert(
            path.into(),
            BundleFile {
                bytes: bytes.into(),
                mode,
            },
        );
    }

    /// `sha256sum -c` format, relative paths, sorted.
    pub fn sha256sums(&self) -> String {
        images::bundle::files::sums_text(
            self.files
                .iter()
                .filter(|(p, _)| p.as_str() != SUMS)
                .map(|(p, f)| (p.as_str(), f.bytes.as_slice())),
        )
    }
}

pub const SUMS: &str = images::bundle::files::SUMS;
pub const PLAN: &str = "plan.json";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{file}: rendered output is not valid YAML ({message}); the template is broken")]
    NotYaml { file: String, message: String },
    #[error("{file}: `{key}` is not a k3s {role} flag; k3s would skip it with only a warning")]
    UnknownK3sKey {
        file: String,
        key: String,
        role: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {message}")]
    SeedImage { file: String, message: String },
    #[error("the secrets file has no {what}, which the inventory needs ({why})")]
    MissingSecret { what: String, why: String },
}

/// sha256 of each air-gap artifact, computed by the caller from the files the inventory names.
#[derive(Debug, Clone, Serialize)]
pub struct AirgapHashes {
    pub binary_sha256: String,
    pub images_sha256: String,
    pub install_script_sha256: String,
}

/// The filesystem of a node's seed image (`usb/<hostname>-cidata.img`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedImage {
    /// FAT12 labelled `CIDATA`: a USB stick, or the golden image's seed partition.
    Fat,
    /// ISO9660 labelled `cidata` with Rock Ridge: a virtual CD-ROM (Proxmox, libvirt).
    Iso,
}

#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Nodes rendered in join form: a rebuilt server never gets `cluster-init` again.
    pub joined: BTreeSet<String>,
    pub airgap: Option<AirgapHashes>,
    /// Also render one seed image per node under `usb/`.
    pub seed_images: Option<SeedImage>,
    /// `builder recover`: this server's k3s config is rendered in cluster-reset form.
    pub reset: Option<ClusterReset>,
}

/// Where a node's seed image goes in the bundle.
pub fn seed_image_path(hostname: &str) -> String {
    format!("usb/{hostname}-cidata.img")
}

/// A disaster restore (docs/reference.md "k3s rebuild and restore"): one surviving server
/// forgets its peers and restores an etcd snapshot. k3s refuses the reset while `server:` is
/// set, so that node's config has no `server:` (and never `cluster-init`), but the cluster's old
/// token.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReset {
    pub node: String,
    /// `cluster-reset-restore-path`: a snapshot file on the survivor, or an S3 object name.
    pub restore_path: String,
    /// The snapshot is fetched from the inventory's S3 bucket; otherwise S3 is switched off for
    /// the reset so k3s reads the local file.
    pub s3: bool,
}

pub use images::bundle::hex;

/// The node's first-boot report token (`images::bundle`): in its seed and in the owner-only
/// plan, so `pxe` can check first-boot reports. Derived from the cluster token under its own
/// label so renders stay byte-deterministic: whoever has the cluster token owns the cluster
/// anyway. The install secret, which guards what can wipe a disk, is never derived: `pxe`
/// mints it at arm time.
pub fn report_token(secrets: &Secrets, hostname: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"ironseed first-boot report\0");
    h.update(secrets.k3s_token.as_bytes());
    h.update(b"\0");
    h.update(hostname.as_bytes());
    hex(&h.finalize())
}

pub fn render(
    inv: &Inventory,
    secrets: &Secrets,
    templates: &Templates,
    opts: &RenderOptions,
) -> Result<Bundle, RenderError> {
    check_secrets(inv, secrets)?;
    if inv.cluster.k3s.airgap.is_some() && opts.airgap.is_none() {
        return Err(RenderError::Invalid {
            file: "cluster.k3s.airgap".into(),
            message: "air-gap artifacts were not hashed".into(),
        });
    }
    // Nodes render independently: split them across the cores, then merge in node order so the
    // output is the same bytes as a sequential render.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = inv.nodes.len().div_ceil(threads).max(1);
    let parts: Vec<Result<(Bundle, Vec<PlanNode>), RenderError>> = std::thread::scope(|s| {
        let handles: Vec<_> = inv
            .nodes
            .chunks(chunk)
            .map(|nodes| {
                s.spawn(move || {
                    let mut b = Bundle::default();
                    let mut plans = Vec::with_capacity(nodes.len());
                    for node in nodes {
                        plans.push(render_node(inv, secrets, templates, opts, node, &mut b)?);
                    }
                    Ok((b, plans))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("render thread panicked"))
            .collect()
    });
    let mut bundle = Bundle::default();
    let mut plan_nodes = Vec::new();
    for part in parts {
        let (b, plans) = part?;
        bundle.files.extend(b.files);
        plan_nodes.extend(plans);
    }
    let base = json!({ "cluster": inv.cluster, "appliance": inv.appliance });
    let ctx = Value::from(minijinja::value::Serde(&base));
    bundle.add(
        "ipxe/local.ipxe",
        templates.render("ipxe/local.ipxe.j2", &ctx)?,
        0o644,
    );
    bundle.add(
        "ipxe/unknown.ipxe",
        templates.render("ipxe/unknown.ipxe.j2", &ctx)?,
        0o644,
    );
    let artifact = |path: &std::path::Path, sha256: &str| Artifact {
        path: path.to_path_buf(),
        sha256: sha256.to_string(),
    };
    let plan = Plan {
        version: images::bundle::PLAN_VERSION,
        cluster: inv.cluster.name.clone(),
        domain: inv.cluster.domain.clone(),
        api_vip: inv.cluster.api.vip,
        appliance: inv.appliance.clone(),
        network: inv.network.clone(),
        os_image: inv.os.image.clone(),
        local_boot_script: "ipxe/local.ipxe".into(),
        unknown_script: "ipxe/unknown.ipxe".into(),
        airgap: inv
            .cluster
            .k3s
            .airgap
            .as_ref()
            .zip(opts.airgap.as_ref())
            .map(|(a, h)| {
                BTreeMap::from([
                    ("k3s".to_string(), artifact(&a.binary, &h.binary_sha256)),
                    (
                        "k3s-airgap-images.tar.zst".to_string(),
                        artifact(&a.images, &h.images_sha256),
                    ),
                    (
                        "install.sh".to_string(),
                        artifact(&a.install_script, &h.install_script_sha256),
                    ),
                ])
            }),
        joined: opts.joined.iter().cloned().collect(),
        nodes: plan_nodes,
    };
    // The plan holds each node's report token: private like the seeds themselves.
    bundle.add(PLAN, plan.to_json(), 0o600);
    // The picture is parsed back like every rendered YAML file: the dashboard finds each node
    // by its group, so one that is missing or malformed fails the render, not the page.
    let svg = topology::svg(inv, &opts.joined);
    topology::check_svg(&svg, inv.nodes.iter().map(|n| n.hostname.as_str())).map_err(|e| {
        RenderError::Invalid {
            file: topology::FILE.into(),
            message: e.to_string(),
        }
    })?;
    bundle.add(topology::FILE, svg, 0o644);
    let sums = bundle.sha256sums();
    bundle.add(SUMS, sums, 0o644);
    Ok(bundle)
}

fn check_secrets(inv: &Inventory, s: &Secrets) -> Result<(), RenderError> {
    if inv.cluster.snapshots.s3.is_some()
        && (s.etcd_s3_access_key.is_none() || s.etcd_s3_secret_key.is_none())
    {
        return Err(RenderError::MissingSecret {
            what: "etcd_s3_access_key / etcd_s3_secret_key".into(),
            why: "cluster.etcd_snapshots.s3 is set".into(),
        });
    }
    if inv.cluster.flux.as_ref().is_some_and(|f| f.sops_age) && s.sops_age_key.is_none() {
        return Err(RenderError::MissingSecret {
            what: "sops_age_key".into(),
            why: "cluster.flux.sops_age is true".into(),
        });
    }
    Ok(())
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    mode: String,
    content: String,
}

fn base_packages(inv: &Inventory, node: &Node) -> Vec<String> {
    let mut p: Vec<String> = ["curl", "ca-certificates", "e2fsprogs", "cloud-guest-utils"]
        .map(String::from)
        .to_vec();
    if node.role.runs_k3s() {
        // Longhorn prerequisites: iSCSI initiator and an NFSv4 client for RWX volumes.
        p.extend(["open-iscsi", "nfs-common"].map(String::from));
    }
    if node
        .profile
        .data_disks
        .iter()
        .any(|d| d.filesystem == "xfs")
    {
        p.push("xfsprogs".into());
    }
    if let Some(g) = &node.gpu {
        p.push("gnupg".into());
        p.extend(g.driver_packages.iter().cloned());
    }
    if node.role == Role::Nfs && inv.nfs.is_some() {
        p.push("nfs-kernel-server".into());
    }
    p.extend(node.packages.iter().cloned());
    let mut seen = BTreeSet::new();
    p.retain(|x| seen.insert(x.clone()));
    p
}

fn render_node(
    inv: &Inventory,
    secrets: &Secrets,
    t: &Templates,
    opts: &RenderOptions,
    node: &Node,
    bundle: &mut Bundle,
) -> Result<PlanNode, RenderError> {
    let host = node.hostname.as_str();
    let dir = format!("nodes/{host}");
    let token = report_token(secrets, host);
    let report_url = format!(
        "{}{}",
        inv.appliance.url,
        images::bundle::paths::report(host, &token)
    );
    let longhorn: Vec<serde_json::Value> = node
        .profile
        .data_disks
        .iter()
        .filter(|d| d.purpose == DiskPurpose::Longhorn)
        .map(
            |d| json!({"name": d.name, "path": d.mount, "allowScheduling": true, "tags": [d.name]}),
        )
        .collect();
    let mut ctx = json!({
        "node": node,
        "cluster": inv.cluster,
        "network": inv.network,
        "appliance": inv.appliance,
        "ssh": inv.ssh,
        "os": inv.os,
        "nfs": inv.nfs,
        "join": opts.joined.contains(host),
        "reset": opts.reset.as_ref().filter(|r| r.node == host),
        "token": secrets.k3s_token,
        "s3_access_key": secrets.etcd_s3_access_key,
        "s3_secret_key": secrets.etcd_s3_secret_key,
        "sops_age_key": secrets.sops_age_key,
        "airgap": opts.airgap,
        "report_url": report_url,
        "install_secret": images::bundle::INSTALL_SECRET_PLACEHOLDER,
        // The cluster report's "all there" (servers and agents; not the NFS host).
        "k3s_nodes": inv.nodes.iter().filter(|n| n.role != Role::Nfs).count(),
        "cluster_note_kind": images::bundle::cluster::NOTE_KIND,
        // The list itself: the template serialises it once (`tojson`) into the annotation value,
        // the JSON array Longhorn parses. A pre-serialised string would be encoded twice.
        "longhorn_disks": if longhorn.is_empty() { serde_json::Value::Null } else { serde_json::Value::Array(longhorn) },
    });
    // Converted once per stage: building a minijinja value from JSON per template dominated
    // render time.
    let mctx = Value::from(minijinja::value::Serde(&ctx));
    let render = |name: &str, ctx: &Value| t.render(name, ctx);

    let mut files: Vec<WriteFile> = Vec::new();
    let mut add = |path: &str, mode: &str, content: String| {
        files.push(WriteFile {
            path: path.into(),
            mode: mode.into(),
            content,
        })
    };
    add(
        "/etc/sysctl.d/90-ironseed.conf",
        "0644",
        render("node/sysctl.conf.j2", &mctx)?,
    );
    if node.role.runs_k3s() {
        add(
            "/etc/modules-load.d/ironseed.conf",
            "0644",
            render("node/modules.conf.j2", &mctx)?,
        );
        add(
            "/etc/multipath.conf",
            "0644",
            render("node/multipath.conf.j2", &mctx)?,
        );
        let k3s = render("k3s/config.yaml.j2", &mctx)?;
        let k3s_file = format!("{dir}/k3s/config.yaml");
        check_k3s_keys(&k3s_file, &k3s, node.role)?;
        bundle.add(k3s_file, k3s.clone(), 0o600);
        add("/etc/rancher/k3s/config.yaml", "0600", k3s);
    }
    if node.role == Role::Server {
        for (tpl, path, mode) in [
            (
                "k3s/psa.yaml.j2",
                "/var/lib/rancher/k3s/server/psa.yaml",
                "0600",
            ),
            (
                "k3s/kube-vip.yaml.j2",
                "/var/lib/rancher/k3s/agent/pod-manifests/kube-vip.yaml",
                "0644",
            ),
            (
                "k3s/cilium.yaml.j2",
                "/var/lib/rancher/k3s/server/manifests/cilium.yaml",
                "0644",
            ),
        ] {
            let text = render(tpl, &mctx)?;
            parse_yaml(&format!("{dir}{path}"), &text, false)?;
            add(path, mode, text);
        }
        if inv.cluster.flux.is_some() {
            let text = render("k3s/flux.yaml.j2", &mctx)?;
            parse_yaml(&format!("{dir}/flux.yaml"), &text, true)?;
            add(
                "/var/lib/rancher/k3s/server/manifests/flux.yaml",
                "0600",
                text,
            );
        }
    }
    if node.role == Role::Nfs && inv.nfs.is_some() {
        add("/etc/exports", "0644", render("nfs/exports.j2", &mctx)?);
        if inv.nfs.as_ref().is_some_and(|n| n.secondary.is_some()) {
            add(
                "/etc/systemd/system/ironseed-rsync.service",
                "0644",
                render("nfs/rsync.service.j2", &mctx)?,
            );
            add(
                "/etc/systemd/system/ironseed-rsync.timer",
                "0644",
                render("nfs/rsync.timer.j2", &mctx)?,
            );
        }
    }
    if node.gpu.is_some() {
        // Debian ships the NVIDIA driver in non-free; cloud-init writes this before it installs
        // packages (write_files runs in the init stage, packages in the final stage).
        add(
            "/etc/apt/sources.list.d/ironseed-nonfree.list",
            "0644",
            format!(
                "# ironseed: non-free components for the NVIDIA driver\ndeb {} {} main contrib non-free non-free-firmware\n",
                inv.os.mirror, inv.os.suite
            ),
        );
    }
    // The report URL carries the node's report token: owner-only on the node too (the
    // first-boot script that reads it is world-readable).
    add(
        "/etc/ironseed/report-url",
        "0600",
        format!("{report_url}\n"),
    );
    add(
        "/usr/local/sbin/ironseed-firstboot",
        "0755",
        render("node/firstboot.sh.j2", &mctx)?,
    );

    ctx["files"] = serde_json::to_value(&files).unwrap();
    ctx["packages"] = json!(base_packages(inv, node));
    let mctx = Value::from(minijinja::value::Serde(&ctx));
    let network_config = render("cloud-init/network-config.yaml.j2", &mctx)?;
    parse_yaml(&format!("{dir}/network-config"), &network_config, false)?;
    let user_data = render(&node.template, &mctx)?;
    if !user_data.starts_with("#cloud-config\n") {
        return Err(RenderError::Invalid {
            file: format!("{dir}/user-data"),
            message: "does not start with `#cloud-config` (cloud-init would ignore it)".into(),
        });
    }
    parse_yaml(&format!("{dir}/user-data"), &user_data, false)?;
    let mut h = Sha256::new();
    h.update(user_data.as_bytes());
    h.update(network_config.as_bytes());
    ctx["instance_id"] = json!(format!("iid-{host}-{}", &hex(&h.finalize())[..12]));
    let mctx = Value::from(minijinja::value::Serde(&ctx));
    let meta = render("cloud-init/meta-data.yaml.j2", &mctx)?;
    parse_yaml(&format!("{dir}/meta-data"), &meta, false)?;
    let install_ipxe = render("ipxe/install.ipxe.j2", &mctx)?;

    if let Some(kind) = opts.seed_images {
        let path = seed_image_path(host);
        let seed: [(&str, &[u8]); 3] = [
            ("user-data", user_data.as_bytes()),
            ("meta-data", meta.as_bytes()),
            ("network-config", network_config.as_bytes()),
        ];
        debug_assert_eq!(seed.map(|s| s.0), images::cidata::SEED_FILES);
        // Same node, same volume id, same bytes: re-renders leave SHA256SUMS unchanged.
        let vid = images::cidata::volume_id_for(host);
        let img = match kind {
            SeedImage::Fat => images::cidata::build(&seed, vid, images::cidata::DEFAULT_SIZE)
                .map_err(|e| e.to_string()),
            SeedImage::Iso => images::cidata::build_iso(&seed, vid).map_err(|e| e.to_string()),
        }
        .map_err(|message| RenderError::SeedImage {
            file: path.clone(),
            message,
        })?;
        // Always 0600, even for the NFS host: a stick gets copied and lent; keep the habit.
        bundle.add(path, img, 0o600);
    }
    // user-data carries the report token, the cluster token (and S3/age keys when set):
    // owner-only, for every role.
    bundle.add(format!("{dir}/user-data"), user_data, 0o600);
    bundle.add(format!("{dir}/meta-data"), meta, 0o644);
    bundle.add(format!("{dir}/network-config"), network_config, 0o644);
    let ipxe_path = format!("ipxe/{host}.ipxe");
    // World-readable on purpose: it holds no secret, only the placeholder pxe fills in.
    debug_assert!(install_ipxe.contains(images::bundle::INSTALL_SECRET_PLACEHOLDER));
    bundle.add(ipxe_path.clone(), install_ipxe, 0o644);

    Ok(PlanNode {
        hostname: node.hostname.clone(),
        fqdn: node.fqdn.clone(),
        role: node.role,
        bootstrap: node.bootstrap && !opts.joined.contains(host),
        mac: node.mac,
        extra_macs: node.extra_macs.clone(),
        ip: node.ip,
        prefix_len: node.prefix_len,
        profile: node.profile.name.clone(),
        firmware: node.profile.firmware,
        dhcp_arch: node.profile.dhcp_arch,
        efi_boot_file: node.efi_boot_file,
        boot_nic: node.profile.boot_nic.name.clone(),
        install_disk: node.profile.install_disk.clone(),
        data_disks: node
            .profile
            .data_disks
            .iter()
            .map(|d| images::plan::DataDisk {
                name: d.name.clone(),
                purpose: match d.purpose {
                    DiskPurpose::Longhorn => "longhorn",
                    DiskPurpose::NfsPool => "nfs-pool",
                }
                .into(),
                selector: d.selector.clone(),
                filesystem: d.filesystem.clone(),
                mount: d.mount.clone(),
            })
            .collect(),
        kernel_args: node.kernel_args.clone(),
        seed_dir: dir,
        report_token: token,
        install_script: ipxe_path,
        secure_boot: node.secure_boot,
    })
}

/// Parse a rendered YAML file back; a template that produces broken YAML fails the render.
pub fn parse_yaml(
    file: &str,
    text: &str,
    multi: bool,
) -> Result<Vec<serde_json::Value>, RenderError> {
    let r = if multi {
        serde_saphyr::from_str_multiple::<serde_json::Value, Vec<_>>(text)
    } else {
        serde_saphyr::from_str::<serde_json::Value>(text).map(|v| vec![v])
    };
    r.map_err(|e| RenderError::NotYaml {
        file: file.into(),
        message: e.without_snippet().to_string(),
    })
}

fn check_k3s_keys(file: &str, text: &str, role: Role) -> Result<(), RenderError> {
    let doc = parse_yaml(file, text, false)?.remove(0);
    let map = doc.as_object().ok_or_else(|| RenderError::Invalid {
        file: file.into(),
        message: "k3s config is not a mapping".into(),
    })?;
    let (keys, role_name) = match role {
        Role::Server => (k3s_flags::SERVER_KEYS, "server"),
        _ => (k3s_flags::AGENT_KEYS, "agent"),
    };
    for key in map.keys() {
        if !keys.contains(&key.trim_end_matches('+')) {
            return Err(RenderError::UnknownK3sKey {
                file: file.into(),
                key: key.clone(),
                role: role_name.into(),
            });
        }
    }
    Ok(())
}
