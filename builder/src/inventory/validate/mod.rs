//! Raw inventory → validated model. Every rule adds to one `Diagnostics`, so all problems are
//! reported together. Pure: no host lookups (files named by the inventory are checked at render).

mod cluster;
mod cross;
mod network;
mod nfs;
mod nodes;

use std::str::FromStr;

use super::model::*;
use super::profiles::{ProfileSet, span};
use super::raw::*;
use crate::diag::Diagnostics;

use cluster::{cluster, os, ssh};
use cross::{cross_checks, secure_boot_dhcp};
use network::{appliance, network};
use nfs::nfs;
use nodes::nodes;

/// Templates a node may name; the caller knows which exist (embedded or from an override folder).
pub trait TemplateCatalog {
    fn has_template(&self, name: &str) -> bool;
}

pub const DEFAULT_USER_DATA_TEMPLATE: &str = "cloud-init/user-data.yaml.j2";
pub const DEFAULT_KUBE_VIP_VERSION: &str = "v0.8.9";
pub const DEFAULT_CILIUM_VERSION: &str = "1.16.6";

/// The sysctls the kubelet insists on when `protect-kernel-defaults` is set (k3s hardening guide).
pub const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
];

struct Ctx<'a> {
    file: &'a str,
    d: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn err<T>(&mut self, at: &S<T>, path: impl Into<String>, msg: impl Into<String>) {
        self.d.error(span(self.file, at), path, msg);
    }
    fn warn<T>(&mut self, at: &S<T>, path: impl Into<String>, msg: impl Into<String>) {
        self.d.warning(span(self.file, at), path, msg);
    }
    fn parse<T: FromStr>(&mut self, at: &S<String>, path: &str, what: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        match at.value.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(at, path, format!("`{}` is not {what}: {e}", at.value));
                None
            }
        }
    }
}

pub fn validate(
    file: &str,
    raw: &RawInventory,
    profiles: &ProfileSet,
    templates: &dyn TemplateCatalog,
    diags: &mut Diagnostics,
) -> Option<Inventory> {
    let mut c = Ctx { file, d: diags };
    let network = network(&mut c, &raw.network);
    let cluster = cluster(&mut c, &raw.cluster, network.as_ref());
    let appliance = appliance(&mut c, &raw.appliance, network.as_ref());
    let ssh = ssh(&mut c, &raw.ssh);
    let os = os(&raw.os);
    let (nodes, keys) = nodes(
        &mut c,
        raw,
        profiles,
        templates,
        network.as_ref(),
        cluster.as_ref(),
    );
    let nfs = nfs(&mut c, raw, &nodes, &keys, network.as_ref());
    if let (Some(net), Some(cl), Some(app)) = (&network, &cluster, &appliance) {
        cross_checks(&mut c, raw, net, cl, app, &keys);
        secure_boot_dhcp(&mut c, raw, net, app, &nodes);
    }
    if c.d.has_errors() {
        return None;
    }
    Some(Inventory {
        cluster: cluster?,
        network: network?,
        appliance: appliance?,
        ssh: ssh?,
        os,
        nodes,
        nfs,
    })
}
