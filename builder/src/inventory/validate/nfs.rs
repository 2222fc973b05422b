//! `nfs:`: exports on the nfs nodes, and the optional secondary copy.

use super::Ctx;
use super::nodes::NodeKeys;
use crate::inventory::model::*;
use crate::inventory::raw::*;

pub(super) fn nfs(
    c: &mut Ctx,
    raw: &RawInventory,
    nodes: &[Node],
    keys: &[NodeKeys],
    net: Option<&Network>,
) -> Option<Nfs> {
    let nfs_nodes: Vec<(usize, &S<RawNode>)> = raw
        .nodes
        .iter()
        .zip(keys)
        .enumerate()
        .filter(|(_, (_, k))| k.role == Some(Role::Nfs))
        .map(|(i, (n, _))| (i, n))
        .collect();
    let Some(r) = &raw.nfs else {
        if let Some((i, n)) = nfs_nodes.first() {
            c.warn(
                &n.value.role,
                format!("nodes[{i}].role"),
                "an nfs node but no `nfs:` section: nothing will be exported",
            );
        }
        return None;
    };
    if nfs_nodes.is_empty() {
        c.err(
            &r.exports[0],
            "nfs",
            "an `nfs:` section but no node has role nfs",
        );
    }
    let nfs_node = nodes.iter().find(|n| n.role == Role::Nfs);
    let mut exports = Vec::new();
    for (i, e) in r.exports.iter().enumerate() {
        let e = &e.value;
        if !e.path.value.starts_with('/') || e.path.value.contains(' ') {
            c.err(
                &e.path,
                format!("nfs.exports[{i}].path"),
                format!("`{}` is not an absolute path without spaces", e.path.value),
            );
        }
        if let Some(node) = nfs_node {
            match node
                .profile
                .data_disks
                .iter()
                .find(|d| d.name == e.pool.value)
            {
                Some(d) if d.purpose == DiskPurpose::NfsPool => {
                    if !e.path.value.starts_with(&d.mount) {
                        c.err(
                            &e.path,
                            format!("nfs.exports[{i}].path"),
                            format!(
                                "`{}` is not on pool `{}`, which is mounted at {}",
                                e.path.value, d.name, d.mount
                            ),
                        );
                    }
                }
                _ => c.err(
                    &e.pool,
                    format!("nfs.exports[{i}].pool"),
                    format!(
                        "profile `{}` of {} has no data disk `{}` with purpose nfs-pool",
                        node.profile.name, node.hostname, e.pool.value
                    ),
                ),
            }
        }
        let clients = e
            .clients
            .as_ref()
            .map(|x| x.value.clone())
            .or_else(|| net.map(|n| n.subnet.to_string()))
            .unwrap_or_default();
        let options = e
            .options
            .as_ref()
            .map(|x| x.value.clone())
            .unwrap_or_else(|| "rw,sync,no_subtree_check,root_squash".into());
        if options.contains(char::is_whitespace) {
            c.err(e.options.as_ref().unwrap_or(&e.path), format!("nfs.exports[{i}].options"), "export options must not contain spaces (exports(5) would read them as another client)");
        }
        exports.push(Export {
            path: e.path.value.clone(),
            pool: e.pool.value.clone(),
            clients,
            options,
        });
    }
    let secondary = r.secondary.as_ref().map(|s| {
        if !s.target.value.contains(':') {
            c.err(
                &s.target,
                "nfs.secondary.target",
                format!(
                    "`{}` is not an rsync target like backup@nas2:/srv/media",
                    s.target.value
                ),
            );
        }
        Secondary {
            target: s.target.value.clone(),
            schedule: s
                .schedule
                .as_ref()
                .map(|x| x.value.clone())
                .unwrap_or_else(|| "daily".into()),
        }
    });
    Some(Nfs { exports, secondary })
}
