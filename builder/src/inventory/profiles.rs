//! Hardware profiles: the built-in ones from `hardware/` and any the operator adds.

use std::collections::BTreeMap;
use std::path::Path;

use super::model::{BootNic, DataDisk, DiskPurpose, Firmware, Gpu, Profile, Selector};
use super::raw::{RawProfile, RawSelector, S};
use super::types::{Taint, check_label_key, check_label_value};
use crate::diag::{Diagnostics, Span, from_yaml_error};
use images::bundle::{EfiBootFile, KERNEL_ARGS_MAX};

/// Profiles shipped in the binary, from the repository's `hardware/` folder.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "hardware/optiplex.yaml",
        include_str!("../../../hardware/optiplex.yaml"),
    ),
    (
        "hardware/r630.yaml",
        include_str!("../../../hardware/r630.yaml"),
    ),
    (
        "hardware/r730.yaml",
        include_str!("../../../hardware/r730.yaml"),
    ),
    (
        "hardware/vm.yaml",
        include_str!("../../../hardware/vm.yaml"),
    ),
];

/// A loaded profile and the file it came from (for error messages).
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub profile: Profile,
    pub file: String,
}

#[derive(Debug, Default, Clone)]
pub struct ProfileSet {
    pub profiles: BTreeMap<String, LoadedProfile>,
    /// Source text by file name, for diagnostics snippets.
    pub sources: BTreeMap<String, String>,
}

impl ProfileSet {
    /// Built-in profiles, then every `*.yaml` in `dirs` (in order); a later profile of the same
    /// name replaces an earlier one, so an operator can adjust a built-in profile by copying it.
    pub fn load(dirs: &[&Path], diags: &mut Diagnostics) -> ProfileSet {
        let mut set = ProfileSet::default();
        for (file, text) in BUILTIN {
            set.add(file, text, diags);
        }
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                diags.error(
                    Span::new(dir.display().to_string(), 0, 0),
                    "",
                    "cannot read hardware profile folder",
                );
                continue;
            };
            let mut files: Vec<_> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            for p in files {
                let name = p.display().to_string();
                match std::fs::read(&p).map(|b| crate::diag::decode_utf8(&name, b)) {
                    Ok(Ok(text)) => set.add(&name, &text, diags),
                    Ok(Err(d)) => diags.error(d.span, d.path, d.message),
                    Err(e) => diags.error(Span::new(name, 0, 0), "", format!("cannot read: {e}")),
                }
            }
        }
        set
    }

    pub fn add(&mut self, file: &str, text: &str, diags: &mut Diagnostics) {
        self.sources.insert(file.to_string(), text.to_string());
        match serde_saphyr::from_str::<RawProfile>(text) {
            Err(e) => diags.extend(single(from_yaml_error(file, "", &e))),
            Ok(raw) => {
                if let Some(p) = validate_profile(file, &raw, diags) {
                    self.profiles.insert(
                        p.name.clone(),
                        LoadedProfile {
                            profile: p,
                            file: file.to_string(),
                        },
                    );
                }
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name).map(|l| &l.profile)
    }
}

fn single(d: crate::diag::Diagnostic) -> Diagnostics {
    let mut ds = Diagnostics::default();
    match d.severity {
        crate::diag::Severity::Error => ds.error(d.span, d.path, d.message),
        crate::diag::Severity::Warning => ds.warning(d.span, d.path, d.message),
    }
    ds
}

pub(crate) fn span<T>(file: &str, s: &S<T>) -> Span {
    Span::from_location(file, &s.referenced)
}

pub(crate) fn check_selector(
    file: &str,
    path: &str,
    s: &S<RawSelector>,
    diags: &mut Diagnostics,
) -> Selector {
    let r = &s.value;
    if let Some(dev) = &r.device {
        diags.error(
            span(file, s),
            format!("{path}.device"),
            format!(
                "`{dev}` is a kernel device name, which can change between boots; select the disk by model, serial, wwn, by_path, by_id or size instead"
            ),
        );
    }
    let sel = Selector {
        model: r.model.clone(),
        serial: r.serial.clone(),
        wwn: r.wwn.clone(),
        by_path: r.by_path.clone(),
        by_id: r.by_id.clone(),
        min_size_gb: r.min_size_gb,
        max_size_gb: r.max_size_gb,
        rotational: r.rotational,
    };
    for (field, v) in [("by_path", &sel.by_path), ("by_id", &sel.by_id)] {
        if let Some(v) = v
            && (v.starts_with("/dev/sd") || v.starts_with("/dev/nvme") || v.starts_with("/dev/vd"))
        {
            diags.error(
                span(file, s),
                format!("{path}.{field}"),
                format!(
                    "`{v}` is a kernel device name; give the /dev/disk/{} link name",
                    field.replace('_', "-")
                ),
            );
        }
    }
    if sel.is_empty() && r.device.is_none() {
        diags.error(
            span(file, s),
            path,
            "disk selector is empty: set at least one of model, serial, wwn, by_path, by_id, min_size_gb, max_size_gb",
        );
    }
    if let (Some(lo), Some(hi)) = (sel.min_size_gb, sel.max_size_gb)
        && lo > hi
    {
        diags.error(
            span(file, s),
            path,
            format!("min_size_gb {lo} is larger than max_size_gb {hi}"),
        );
    }
    sel
}

pub(crate) fn check_labels(
    file: &str,
    path: &str,
    labels: &Option<S<BTreeMap<String, String>>>,
    diags: &mut Diagnostics,
) -> BTreeMap<String, String> {
    let Some(l) = labels else {
        return BTreeMap::new();
    };
    for (k, v) in &l.value {
        if let Err(e) = check_label_key(k).and_then(|_| check_label_value(v)) {
            diags.error(span(file, l), format!("{path}.{k}"), e);
        }
        // The kubelet refuses to register with labels in its own reserved namespace.
        if k.starts_with("node-role.kubernetes.io/") || k.starts_with("kubernetes.io/") {
            diags.error(
                span(file, l),
                format!("{path}.{k}"),
                "the kubelet refuses to start with labels under kubernetes.io/ (use your own prefix, e.g. homelab/role)",
            );
        }
    }
    l.value.clone()
}

pub(crate) fn check_taints(
    file: &str,
    path: &str,
    taints: &[S<String>],
    diags: &mut Diagnostics,
) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in taints.iter().enumerate() {
        match t.value.parse::<Taint>() {
            Ok(t) => out.push(t.to_string()),
            Err(e) => diags.error(span(file, t), format!("{path}[{i}]"), e),
        }
    }
    out
}

pub(crate) fn check_sysctls(
    file: &str,
    path: &str,
    s: &Option<S<BTreeMap<String, String>>>,
    diags: &mut Diagnostics,
) -> BTreeMap<String, String> {
    let Some(s) = s else {
        return BTreeMap::new();
    };
    for (k, v) in &s.value {
        let ok = !k.is_empty()
            && k.split('.').all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !ok {
            diags.error(
                span(file, s),
                format!("{path}.{k}"),
                format!("`{k}` is not a sysctl name"),
            );
        }
        if v.contains('\n') {
            diags.error(
                span(file, s),
                format!("{path}.{k}"),
                "sysctl value spans lines",
            );
        }
    }
    s.value.clone()
}

/// Kernel arguments end up in the iPXE install script and the installed system's GRUB command
/// line: each is checked by [`images::bundle::check_kernel_arg`] so none can split into two or
/// inject a script line, and there are at most [`KERNEL_ARGS_MAX`] of them.
pub(crate) fn check_kernel_args(
    file: &str,
    path: &str,
    args: &[S<String>],
    diags: &mut Diagnostics,
) -> Vec<String> {
    for (i, a) in args.iter().enumerate() {
        if let Err(e) = images::bundle::check_kernel_arg(&a.value) {
            diags.error(span(file, a), format!("{path}[{i}]"), e);
        }
        if i == KERNEL_ARGS_MAX {
            diags.error(
                span(file, a),
                format!("{path}[{i}]"),
                format!("more than {KERNEL_ARGS_MAX} kernel arguments"),
            );
        }
    }
    args.iter().map(|a| a.value.clone()).collect()
}

/// The profile's `drivers`: kernel module names. One the installer environment does not pack
/// ([`images::initramfs::DRIVERS`]) is a warning: the machine's NIC or disk would be missing
/// in the installer (no network, no install disk) unless it is added with
/// `builder images installer --driver NAME`.
fn check_drivers(file: &str, drivers: &[S<String>], diags: &mut Diagnostics) -> Vec<String> {
    let norm = |s: &str| s.replace('-', "_");
    let packed: Vec<String> = images::initramfs::DRIVERS.iter().map(|d| norm(d)).collect();
    for (i, d) in drivers.iter().enumerate() {
        let v = &d.value;
        let name_ok = !v.is_empty()
            && v.len() <= 56
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            diags.error(
                span(file, d),
                format!("drivers[{i}]"),
                format!(
                    "`{}` is not a kernel module name (lowercase letters, digits, `_`, `-`)",
                    images::bundle::printable(v, 80)
                ),
            );
        } else if !packed.contains(&norm(v)) {
            diags.warning(
                span(file, d),
                format!("drivers[{i}]"),
                format!(
                    "driver `{v}` is not in the installer environment: the installer will not see this NIC or disk; add it with `builder images installer --driver {v}`"
                ),
            );
        }
    }
    drivers.iter().map(|d| d.value.clone()).collect()
}

pub(crate) fn check_efi_boot_file(
    file: &str,
    path: &str,
    f: &S<String>,
    firmware: Firmware,
    diags: &mut Diagnostics,
) -> Option<EfiBootFile> {
    if firmware == Firmware::Bios {
        diags.error(
            span(file, f),
            path,
            "a bios machine boots undionly.kpxe; efi_boot_file applies to uefi profiles",
        );
        return None;
    }
    match f.value.parse::<EfiBootFile>() {
        Ok(v) => Some(v),
        Err(e) => {
            diags.error(span(file, f), path, e);
            None
        }
    }
}

fn validate_profile(file: &str, raw: &RawProfile, diags: &mut Diagnostics) -> Option<Profile> {
    let before = diags.errors().count();
    let name = raw.name.value.clone();
    if name.parse::<super::types::Hostname>().is_err() {
        diags.error(
            span(file, &raw.name),
            "name",
            format!("profile name `{name}` must be lowercase letters, digits and `-`"),
        );
    }
    let firmware = match raw.firmware.value.as_str() {
        "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi,
        other => {
            diags.error(
                span(file, &raw.firmware),
                "firmware",
                format!("`{other}` is not a firmware mode (bios or uefi)"),
            );
            Firmware::Uefi
        }
    };
    // RFC 4578 option 93: 0 = BIOS, 6 = EFI IA32, 7 = EFI x64 (9 from old firmware), 16 = HTTP boot.
    let arch = raw.dhcp_arch.value;
    let consistent = match firmware {
        Firmware::Bios => arch == 0,
        Firmware::Uefi => matches!(arch, 6 | 7 | 9 | 16),
    };
    if !consistent {
        diags.error(
            span(file, &raw.dhcp_arch),
            "dhcp_arch",
            format!(
                "client architecture {arch} does not match firmware `{}` (bios sends 0; uefi sends 7, or 9/6/16)",
                raw.firmware.value
            ),
        );
    }
    if let Some(sb) = &raw.secure_boot
        && sb.value
        && firmware == Firmware::Bios
    {
        diags.error(
            span(file, sb),
            "secure_boot",
            "Secure Boot is a UEFI feature: a `bios` profile cannot have `secure_boot: true`",
        );
    }
    let install = check_selector(file, "install_disk", &raw.install_disk, diags);
    let mut data_disks: Vec<DataDisk> = Vec::new();
    for (i, d) in raw.data_disks.iter().enumerate() {
        let path = format!("data_disks[{i}]");
        let dd = &d.value;
        let purpose = match dd.purpose.value.as_str() {
            "longhorn" => DiskPurpose::Longhorn,
            "nfs-pool" => DiskPurpose::NfsPool,
            other => {
                diags.error(
                    span(file, &dd.purpose),
                    format!("{path}.purpose"),
                    format!("`{other}` is not a data disk purpose (longhorn or nfs-pool)"),
                );
                DiskPurpose::Longhorn
            }
        };
        let dname = dd.name.value.clone();
        if dname.parse::<super::types::Hostname>().is_err() {
            diags.error(
                span(file, &dd.name),
                format!("{path}.name"),
                format!("data disk name `{dname}` must be lowercase letters, digits and `-` (it becomes a Longhorn tag and a mount path)"),
            );
        }
        if let Some(prev) = data_disks.iter().find(|p| p.name == dname) {
            diags.error(
                span(file, &dd.name),
                format!("{path}.name"),
                format!("data disk name `{}` is used twice", prev.name),
            );
        }
        let selector = check_selector(file, &format!("{path}.selector"), &dd.selector, diags);
        if selector.may_overlap(&install) {
            diags.error(
                span(file, &dd.selector),
                format!("{path}.selector"),
                "this data disk could be the install disk: no attribute both selectors set tells them apart (add model, serial, wwn, rotational or disjoint sizes to both; by-id and by-path links do not, a disk has several); data disks are never wiped, so they must never match the install selector",
            );
        }
        for (j, other) in data_disks.iter().enumerate() {
            if selector.may_overlap(&other.selector) {
                diags.error(
                    span(file, &dd.selector),
                    format!("{path}.selector"),
                    format!(
                        "could select the same disk as data_disks[{j}] ({})",
                        other.name
                    ),
                );
            }
        }
        let filesystem = dd
            .filesystem
            .as_ref()
            .map(|f| f.value.clone())
            .unwrap_or_else(|| "ext4".into());
        if !matches!(filesystem.as_str(), "ext4" | "xfs") {
            diags.error(
                span(file, dd.filesystem.as_ref().unwrap_or(&dd.name)),
                format!("{path}.filesystem"),
                format!(
                    "`{filesystem}` is not supported (ext4 or xfs; Longhorn needs one of them)"
                ),
            );
        }
        let mount = match &dd.mount {
            Some(m) => {
                if !m.value.starts_with('/') || m.value.contains("..") || m.value.contains(' ') {
                    diags.error(
                        span(file, m),
                        format!("{path}.mount"),
                        format!(
                            "`{}` is not an absolute path without spaces or `..`",
                            m.value
                        ),
                    );
                }
                m.value.clone()
            }
            None => match purpose {
                DiskPurpose::Longhorn => format!("/var/lib/longhorn-{dname}"),
                DiskPurpose::NfsPool => format!("/srv/{dname}"),
            },
        };
        data_disks.push(DataDisk {
            name: dname,
            purpose,
            selector,
            filesystem,
            mount,
        });
    }
    let gpu = raw.gpu.as_ref().map(|g| {
        if g.value.vendor.value != "nvidia" {
            diags.error(
                span(file, &g.value.vendor),
                "gpu.vendor",
                format!("`{}` is not supported (nvidia)", g.value.vendor.value),
            );
        }
        Gpu {
            vendor: g.value.vendor.value.clone(),
            driver_packages: if g.value.driver_packages.is_empty() {
                vec!["nvidia-driver".into(), "firmware-misc-nonfree".into()]
            } else {
                g.value.driver_packages.clone()
            },
        }
    });
    let nic = &raw.boot_nic.name;
    if nic.value.is_empty() || nic.value.len() > 15 || nic.value.contains(['/', ' ']) {
        diags.error(
            span(file, nic),
            "boot_nic.name",
            format!(
                "`{}` is not a Linux interface name (1–15 chars, no `/` or spaces)",
                nic.value
            ),
        );
    }
    let profile = Profile {
        name,
        description: raw.description.clone().unwrap_or_default(),
        firmware,
        dhcp_arch: arch,
        boot_nic: BootNic {
            name: nic.value.clone(),
            port: raw.boot_nic.port.clone(),
        },
        install_disk: install,
        data_disks,
        gpu,
        packages: raw.packages.iter().map(|p| p.value.clone()).collect(),
        kernel_args: check_kernel_args(file, "kernel_args", &raw.kernel_args, diags),
        efi_boot_file: raw
            .efi_boot_file
            .as_ref()
            .and_then(|f| check_efi_boot_file(file, "efi_boot_file", f, firmware, diags)),
        installer_kernel_args: check_kernel_args(
            file,
            "installer_kernel_args",
            &raw.installer_kernel_args,
            diags,
        ),
        drivers: check_drivers(file, &raw.drivers, diags),
        sysctls: check_sysctls(file, "sysctls", &raw.sysctls, diags),
        labels: check_labels(file, "labels", &raw.labels, diags),
        taints: check_taints(file, "taints", &raw.taints, diags),
        power: raw
            .power
            .as_ref()
            .and_then(|p| super::power::check_power(file, "power", p, diags)),
        secure_boot: raw.secure_boot.as_ref().is_some_and(|s| s.value),
    };
    for (i, p) in raw.packages.iter().enumerate() {
        if !is_package_name(&p.value) {
            diags.error(
                span(file, p),
                format!("packages[{i}]"),
                format!("`{}` is not a Debian package name", p.value),
            );
        }
    }
    (diags.errors().count() == before).then_some(profile)
}

/// Debian policy §5.6.1: lowercase alphanumerics and `+-.`, at least two chars, starting alnum.
pub(crate) fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod secure_boot_tests {
    use super::*;

    /// Secure Boot is on by default only where it ships on (OptiPlex), and a BIOS profile
    /// claiming it is refused: pxe would hand a BIOS machine shim.
    #[test]
    fn secure_boot_defaults_and_bios_is_refused() {
        let mut d = Diagnostics::default();
        let set = ProfileSet::load(&[], &mut d);
        assert_eq!(d.errors().count(), 0);
        let sb = |n: &str| set.profiles[n].profile.secure_boot;
        assert!(sb("optiplex"));
        for n in ["r630", "r730", "vm"] {
            assert!(!sb(n), "{n}");
        }
        let mut set = ProfileSet::default();
        let bios = BUILTIN
            .iter()
            .find(|(_, t)| t.contains("firmware: bios"))
            .map(|(_, t)| format!("{t}\nsecure_boot: true\n"))
            .expect("a built-in BIOS profile");
        let mut d = Diagnostics::default();
        set.add("bios.yaml", &bios, &mut d);
        assert!(
            d.errors().any(|e| e.path == "secure_boot"),
            "a bios profile with secure_boot: true must be refused"
        );
    }
}
