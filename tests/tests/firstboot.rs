//! The rendered first-boot script, taken from the user-data a node receives and run for real:
//! `prepare_disk` against disk images in plain files (no loop devices, no root), and the
//! Longhorn annotation evaluated by the shell and parsed as Longhorn parses it.

use std::path::{Path, PathBuf};
use std::process::Command;

use builder::inventory::model::DiskPurpose;
use ironseed_tests::{FIXTURES, Fixture, render_fixture, text, yaml};
use serde_json::Value;

/// The first-boot script exactly as it sits in the node's user-data.
fn firstboot(f: &Fixture, host: &str) -> String {
    let ud = yaml(text(f, &format!("nodes/{host}/user-data")).as_bytes());
    ud["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["path"] == "/usr/local/sbin/ironseed-firstboot")
        .unwrap_or_else(|| panic!("{host}: no first-boot script in write_files"))["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The text of shell function `name` (from `name() {` to the first line that is `}`).
fn shell_function(script: &str, name: &str) -> String {
    let start = script
        .find(&format!("\n{name}() {{\n"))
        .unwrap_or_else(|| panic!("no function {name}"))
        + 1;
    let end = start + script[start..].find("\n}\n").expect("end of function") + 3;
    script[start..end].to_string()
}

/// The `prepare_disk NAME FS ...` lines of a script: (name, filesystem, mount).
fn prepare_calls(script: &str) -> Vec<(String, String, String)> {
    script
        .lines()
        .filter(|l| l.starts_with("prepare_disk '"))
        .map(|l| {
            let q: Vec<&str> = l.split('\'').collect();
            (q[1].to_string(), q[3].to_string(), q[5].to_string())
        })
        .collect()
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The tools the disk test runs for real; a missing one skips the test loudly (fails under CI).
fn disk_tools() -> Option<Vec<(&'static str, PathBuf)>> {
    let tools = [
        "blkid",
        "wipefs",
        "mkfs.xfs",
        "mkfs.ext4",
        "cmp",
        "dd",
        "stat",
    ];
    let found: Vec<_> = tools.iter().map(|t| (*t, find_in_path(t))).collect();
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| *t)
        .collect();
    if !missing.is_empty() {
        ironseed_tests::ci::skip(&format!(
            "{missing:?} not installed (tests/packages.txt: util-linux, xfsprogs, e2fsprogs); \
             prepare_disk NOT exercised"
        ));
        return None;
    }
    Some(found.into_iter().map(|(t, p)| (t, p.unwrap())).collect())
}

const MIB: u64 = 1 << 20;
/// Above mkfs.xfs's 300 MB minimum; sparse, so it costs only what is written.
const DISK: u64 = 512 * MIB;

/// Deterministic noise (xorshift): data no probe recognises.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// A ZFS-like vdev label pair at the end of the disk: the L2/L3 labels sit in the last 512 KiB
/// (each 256 KiB: an XDR nvlist at +16 KiB, uberblocks with magic 0x00bab10c from +128 KiB).
fn zfs_like_tail(path: &Path) {
    let mut nvlist = vec![1u8, 1, 0, 0, 0, 0, 0, 0];
    for s in ["version", "name", "tank", "state", "pool_guid", "vdev_tree"] {
        nvlist.extend((s.len() as u32).to_be_bytes());
        nvlist.extend(s.as_bytes());
    }
    for label in [DISK - 512 * 1024, DISK - 256 * 1024] {
        write_at(path, label + 16 * 1024, &nvlist);
        write_at(path, label + 128 * 1024, &0x00ba_b10c_u64.to_le_bytes());
    }
}

/// An MBR with one Linux partition: a disk someone partitioned.
fn dos_partitioned(path: &Path) {
    let mut mbr = vec![0u8; 512];
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    write_at(path, 0, &mbr);
}

/// What one run of `prepare_disk` did.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    formatted: bool,
    mounted: bool,
    fstab: String,
    reports: Vec<String>,
    log: String,
}

/// Run the rendered `prepare_disk` (as `shell`) on image `img` for a disk `name`/`fs`, with the
/// real blkid/wipefs/mkfs and shims that record mkfs and mount calls. `find_disk` answers the
/// image (lsblk has no view of a file); /etc/fstab is a file in `work`.
fn run_prepare(
    shell: &str,
    function: &str,
    tools: &[(&str, PathBuf)],
    work: &Path,
    img: &Path,
    name: &str,
    fs: &str,
) -> Outcome {
    let case = work.join(img.file_name().unwrap()).with_extension("run");
    let _ = std::fs::remove_dir_all(&case);
    let bin = case.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = case.join("calls");
    let fstab = case.join("fstab");
    std::fs::write(&fstab, "").unwrap();
    let shim = |tool: &str, body: &str| {
        let p = bin.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >> \"$CALLS\"\n{body}\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    for (tool, real) in tools {
        if tool.starts_with("mkfs.") {
            shim(tool, &format!("exec {} \"$@\"", real.display()));
        }
    }
    shim("mount", "exit 0");
    shim("mountpoint", "exit 1");
    assert!(
        function.contains("/etc/fstab"),
        "prepare_disk no longer writes /etc/fstab: update this harness"
    );
    let function = function.replace("/etc/fstab", "\"$FSTAB\"");
    let script = format!(
        "set -eu\n\
         report() {{ echo \"report $1: $2\" >> \"$CALLS\"; }}\n\
         find_disk() {{ echo \"$IMG\"; }}\n\
         {function}\n\
         prepare_disk \"$NAME\" \"$FS\" \"$MNT\" '' '' '' '' '' '' '' '' || exit 3\n"
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(shell)
        .arg("-c")
        .arg(&script)
        .env("PATH", format!("{path}:/usr/sbin:/sbin"))
        .env("CALLS", &calls)
        .env("FSTAB", &fstab)
        .env("IMG", img)
        .env("NAME", name)
        .env("FS", fs)
        .env("MNT", case.join("mnt"))
        .output()
        .unwrap();
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    let status = out.status.code();
    assert!(
        matches!(status, Some(0) | Some(3)),
        "{shell} prepare_disk on {} ended with {status:?}\nstdout: {}\nstderr: {}\ncalls: {log}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Outcome {
        ok: status == Some(0),
        formatted: log.lines().any(|l| l.starts_with("mkfs.")),
        mounted: log.lines().any(|l| l.starts_with("mount ")),
        fstab: std::fs::read_to_string(&fstab).unwrap(),
        reports: log
            .lines()
            .filter(|l| l.starts_with("report "))
            .map(String::from)
            .collect(),
        log: format!("{log}{}", String::from_utf8_lossy(&out.stdout)),
    }
}

/// Protects data disks from being formatted (issue 12: a PERC pool with data no blkid signature
/// describes was formatted by the NFS host's first boot). Only a provably blank disk is
/// formatted; a disk already carrying the pool's filesystem is kept and mounted; anything else
/// (data in the first or last MiB, another filesystem, a partition table, a ZFS-like label at
/// the end) is left alone, not mounted, and reported as `first-boot-failed` naming the disk and
/// why. Fails if any of the blkid/wipefs/head/tail checks is dropped from `prepare_disk`.
#[test]
fn prepare_disk_formats_only_provably_blank_disks() {
    let Some(tools) = disk_tools() else {
        return;
    };
    let f = render_fixture("homelab");
    let nfs = firstboot(&f, "nfs1");
    let function = shell_function(&nfs, "prepare_disk");
    // The Longhorn tiers run the same function as the NFS pool.
    let gpu = firstboot(&f, "k3s3");
    assert_eq!(shell_function(&gpu, "prepare_disk"), function);
    let pool = prepare_calls(&nfs);
    assert_eq!(pool.len(), 1, "{pool:?}");
    let (pool_name, pool_fs, _) = &pool[0];
    assert_eq!(pool_fs, "xfs");
    let tiers = prepare_calls(&gpu);
    assert_eq!(tiers.len(), 3, "{tiers:?}");
    let (tier_name, tier_fs, _) = &tiers[0];

    let work = tempfile::tempdir().unwrap();
    let image = |name: &str, fill: &dyn Fn(&Path)| {
        let p = work.path().join(format!("{name}.img"));
        let file = std::fs::File::create(&p).unwrap();
        file.set_len(DISK).unwrap();
        drop(file);
        fill(&p);
        p
    };
    let real = |tool: &str| tools.iter().find(|(t, _)| *t == tool).unwrap().1.clone();
    let mkfs = |tool: &str, p: &Path| {
        let o = Command::new(real(tool)).arg("-q").arg(p).output().unwrap();
        assert!(o.status.success(), "{tool}: {o:?}");
    };
    let head = image("random-head", &|p| write_at(p, 0, &noise(MIB as usize, 1)));
    let tail = image("random-tail", &|p| {
        write_at(p, DISK - MIB, &noise(MIB as usize, 2))
    });
    let xfs = image("xfs", &|p| mkfs("mkfs.xfs", p));
    let ext4 = image("ext4", &|p| mkfs("mkfs.ext4", p));
    let zfs = image("zfs-label-at-end", &|p| zfs_like_tail(p));
    let dos = image("dos-partitioned", &|p| dos_partitioned(p));

    for shell in ["sh", "bash"] {
        let run = |img: &Path, name: &str, fs: &str| {
            run_prepare(shell, &function, &tools, work.path(), img, name, fs)
        };
        // Blank: formatted with the pool's filesystem, listed in fstab and mounted.
        let blank = image(&format!("blank-pool-{shell}"), &|_| {});
        let o = run(&blank, pool_name, pool_fs);
        assert!(o.ok && o.formatted && o.mounted, "{shell} blank: {o:?}");
        assert!(
            o.log.contains(&format!("mkfs.xfs -q -L {pool_name}")),
            "{o:?}"
        );
        assert!(o.fstab.contains(" xfs defaults,nofail 0 2"), "{o:?}");
        // What it did is reported too, not only failures (the node's timeline in pxe status).
        assert_eq!(o.reports.len(), 1, "{o:?}");
        assert!(
            o.reports[0].starts_with(&format!(
                "report data-disk: {pool_name}: {} formatted (xfs UUID=",
                blank.display()
            )) && o.reports[0].contains("), mounted at "),
            "{o:?}"
        );
        // The pool's own filesystem from an earlier install: kept and mounted, not formatted.
        let o = run(&xfs, pool_name, pool_fs);
        assert!(o.ok && !o.formatted && o.mounted, "{shell} xfs: {o:?}");
        assert!(
            o.reports.len() == 1
                && o.reports[0].starts_with(&format!(
                    "report data-disk: {pool_name}: {} kept (xfs UUID=",
                    xfs.display()
                )),
            "{o:?}"
        );
        // Everything else: untouched, unmounted, reported with the disk and the reason.
        for (img, why) in [
            (&head, "first MiB is not all zeros"),
            (&tail, "last MiB is not all zeros"),
            (&ext4, "holds a ext4 signature"),
            (&zfs, "last MiB is not all zeros"),
            (&dos, "holds a dos partition table"),
        ] {
            let before = std::fs::read(img).unwrap();
            let o = run(img, pool_name, pool_fs);
            let what = format!("{shell} {}", img.display());
            assert!(!o.ok && !o.formatted && !o.mounted, "{what}: {o:?}");
            assert!(o.fstab.is_empty(), "{what}: {o:?}");
            assert_eq!(o.reports.len(), 1, "{what}: {o:?}");
            let r = &o.reports[0];
            assert!(
                r.starts_with(&format!(
                    "report first-boot-failed: data disk {pool_name}: {} is not blank",
                    img.display()
                )),
                "{what}: {r}"
            );
            assert!(r.contains(why), "{what}: {r}");
            assert!(
                std::fs::read(img).unwrap() == before,
                "{what}: image changed"
            );
        }
        // Run again (first boot is re-run after a failure): the pool it made is kept.
        let o = run(&blank, pool_name, pool_fs);
        assert!(
            o.ok && !o.formatted && o.mounted,
            "{shell} blank again: {o:?}"
        );
        // A Longhorn tier goes through the same checks.
        let blank = image(&format!("blank-tier-{shell}"), &|_| {});
        let o = run(&blank, tier_name, tier_fs);
        assert!(
            o.ok && o.formatted && o.mounted,
            "{shell} tier blank: {o:?}"
        );
        assert!(
            o.log.contains(&format!("mkfs.ext4 -q -L {tier_name}")),
            "{o:?}"
        );
        let o = run(&tail, tier_name, tier_fs);
        assert!(
            !o.ok && !o.formatted && !o.mounted,
            "{shell} tier tail: {o:?}"
        );
    }
}

/// The value `kubectl annotate` receives for `node.longhorn.io/default-disks-config` on `host`,
/// evaluated by the shell from the rendered command (k3s replaced by a stub printing its argv).
fn longhorn_annotations(script: &str, host: &str) -> Vec<String> {
    let lines: Vec<&str> = script.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !l.contains(" annotate ") {
            continue;
        }
        let mut cmd = String::new();
        for l in &lines[i..] {
            cmd.push_str(l);
            cmd.push('\n');
            if !l.ends_with('\\') {
                break;
            }
        }
        assert!(cmd.starts_with("/usr/local/bin/k3s kubectl "), "{cmd}");
        let cmd = cmd.replacen("/usr/local/bin/k3s", "k3s", 1);
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "k3s() {{ printf '%s\\0' \"$@\"; }}\nKCFG=/kubelet.kubeconfig NODE={host}\n{cmd}"
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let argv: Vec<String> = o
            .stdout
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8(a.to_vec()).unwrap())
            .collect();
        assert_eq!(
            &argv[..3],
            ["kubectl", "--kubeconfig", "/kubelet.kubeconfig"]
        );
        assert!(argv.contains(&host.to_string()), "{argv:?}");
        out.extend(
            argv.iter()
                .filter_map(|a| a.strip_prefix("node.longhorn.io/default-disks-config="))
                .map(String::from),
        );
    }
    out
}

/// Protects Longhorn tier registration (issue 12: the list was JSON-encoded twice, so Longhorn
/// got a quoted string and never created the disks). The annotation value, as kubectl receives
/// it, must parse as a JSON array of disk objects matching the profile's tier disks.
#[test]
fn longhorn_annotation_is_the_json_array_longhorn_parses() {
    for fixture in FIXTURES {
        let f = render_fixture(fixture);
        let mut annotated = 0;
        for n in &f.inventory.nodes {
            let host = n.hostname.as_str();
            let want: Vec<_> = n
                .profile
                .data_disks
                .iter()
                .filter(|d| d.purpose == DiskPurpose::Longhorn)
                .collect();
            let values = longhorn_annotations(&firstboot(&f, host), host);
            if want.is_empty() {
                assert!(values.is_empty(), "{fixture}/{host}: {values:?}");
                continue;
            }
            assert_eq!(values.len(), 1, "{fixture}/{host}: {values:?}");
            let v: Value = serde_json::from_str(&values[0])
                .unwrap_or_else(|e| panic!("{fixture}/{host}: {e}: {}", values[0]));
            let disks = v
                .as_array()
                .unwrap_or_else(|| panic!("{fixture}/{host}: not a JSON array: {v}"));
            assert_eq!(disks.len(), want.len(), "{fixture}/{host}: {v}");
            for (got, d) in disks.iter().zip(&want) {
                assert!(got.is_object(), "{fixture}/{host}: {got}");
                assert_eq!(got["path"], d.mount.as_str(), "{fixture}/{host}");
                assert_eq!(got["allowScheduling"], true, "{fixture}/{host}");
                assert_eq!(got["tags"], serde_json::json!([d.name]), "{fixture}/{host}");
                assert_eq!(got["name"], d.name.as_str(), "{fixture}/{host}");
            }
            annotated += 1;
        }
        assert!(annotated > 0, "{fixture}: no node with Longhorn tiers");
    }
}

/// Protects pxe's timeline and builder's cluster check from what a cluster's API returns
/// (issue 18 item 4): the rendered `cluster_line`, run by the shell against a stub `k3s`
/// printing hostile node names (escapes, a colon, 3000 nodes), yields a line of name
/// characters only, whole entries under the note limit with the true count, that
/// `images::bundle::cluster::parse` reads; and an honest listing is read back exactly. Fails if
/// the character filter, the entry cap or the field check is dropped.
#[test]
fn cluster_line_is_capped_escaped_and_parsed_by_builder() {
    use images::bundle::cluster::{LINE_MAX, Ready, parse};
    let f = render_fixture("homelab");
    let server = f
        .inventory
        .nodes
        .iter()
        .find(|n| n.role == builder::inventory::model::Role::Server)
        .unwrap();
    let script = firstboot(&f, server.hostname.as_str());
    let agent = f
        .inventory
        .nodes
        .iter()
        .find(|n| n.role == builder::inventory::model::Role::Agent)
        .unwrap();
    assert!(
        !firstboot(&f, agent.hostname.as_str()).contains("cluster_line"),
        "only servers hold the admin kubeconfig"
    );
    let function = shell_function(&script, "cluster_line");
    assert!(function.contains("/usr/local/bin/k3s kubectl --kubeconfig /etc/rancher/k3s/k3s.yaml"));
    let run = |listing: &str| -> String {
        let function = function.replacen("/usr/local/bin/k3s", "k3s", 1);
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "k3s() {{ printf '%b' \"$LISTING\"; }}\n{function}\ncluster_line"
            ))
            .env("LISTING", listing)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout)
            .unwrap()
            .trim_end_matches('\n')
            .to_string()
    };
    let honest = run("k3s-master1:True:k3s-master1-5babfb2c\\nk3s1:False:\\nk3s2::\\n");
    let r = parse(&honest).unwrap();
    assert_eq!(r.count, 3, "{honest}");
    assert_eq!(r.nodes.len(), 3, "{honest}");
    assert!(r.nodes[0].etcd && r.nodes[0].ready == Ready::True);
    assert!(!r.nodes[1].etcd && r.nodes[1].ready == Ready::False);
    assert_eq!(r.nodes[2].ready, Ready::None);

    let mut hostile = String::from("evil\\033[2J\\033]0;t\\007:True:x\\nco:lon:True:\\n");
    for i in 0..3000 {
        hostile.push_str(&format!("node{i}:True:\\n"));
    }
    let line = run(&hostile);
    assert!(
        line.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
        "{line:?}"
    );
    let (count, entries) = line.split_once(' ').unwrap();
    assert_eq!(
        count, "3000",
        "the escaped name and the colon entry dropped"
    );
    assert!(entries.len() <= LINE_MAX, "{}", entries.len());
    assert!(line.len() + "cluster: ".len() <= images::bundle::NOTE_MAX);
    let r = parse(&line).unwrap();
    assert!(r.cut());
    assert_eq!(
        r.nodes.len(),
        entries.split(' ').count(),
        "every kept entry is whole"
    );
    assert_eq!(r.nodes[0].name, "node0", "{line}");
}
