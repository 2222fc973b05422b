//! Replacing a node's hardware against the real `pxe serve` on loopback: the bundle is
//! re-rendered under a running server, `POST /api/v1/reload` makes it live (the new MAC gets
//! the installer, the old one does not), and the real `builder rebuild` drives it all, with
//! `--watch` following the node to booted. Loopback ports 18610–18619.

mod support;

use support::builder_bin;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use builder::diag::Diagnostics;
use builder::inventory::{self, ProfileSet};
use builder::render::{self, RenderOptions};
use builder::secrets::Secrets;
use builder::templates::Templates;
use serde_json::Value;
use support::serve::{self, Lab, Server};

fn render_into(bundle: &Path, text: &str, secrets: &Secrets, opts: &RenderOptions) {
    let templates = Templates::embedded();
    let mut d = Diagnostics::default();
    let profiles = ProfileSet::load(&[], &mut d);
    let (inv, more) = inventory::load("lab.yaml", text, &profiles, &templates);
    let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
    let b = render::render(&inv, secrets, &templates, opts).unwrap();
    builder::bundle::write(bundle, &b).unwrap();
}

/// A lab whose bundle is rendered by the library from `text`, with fixed secrets.
fn lab_from(text: &str, secrets: &Secrets) -> Lab {
    let lab = serve::lab();
    render_into(&lab.bundle, text, secrets, &RenderOptions::default());
    let plan =
        serde_json::from_slice(&std::fs::read(lab.bundle.join("plan.json")).unwrap()).unwrap();
    Lab { plan, ..lab }
}

/// Drive a node from armed to booted as iPXE, the installer and cloud-init would.
fn install(s: &Server, lab: &Lab, host: &str, mac: &str) {
    s.install_node(lab, host, mac);
}

/// The install script as served: the bundle's file with the live secret where its placeholder
/// is.
fn served_form(file: &str, served: &str) -> String {
    let secret = serve::secret_in(served).expect("an install script");
    file.replace("@IRONSEED_INSTALL_SECRET@", &secret)
}

#[test]
fn reload_serves_the_new_mac_and_keeps_node_states() {
    let secrets = Secrets::generate();
    let inv = serve::loopback_inventory();
    let lab = lab_from(&inv, &secrets);
    let s = Server::start_on(&lab, 18610, 18611, &[]);
    let old = "d8:9e:f3:20:00:21";
    let new = "d8:9e:f3:20:00:99";
    install(&s, &lab, "k3s1", old);
    install(&s, &lab, "k3s2", "d8:9e:f3:20:00:22");
    let install_script =
        String::from_utf8(std::fs::read(lab.bundle.join("ipxe/k3s1.ipxe")).unwrap()).unwrap();

    // Re-render with k3s1's new MAC while the server runs: nothing changes until a reload.
    render_into(
        &lab.bundle,
        &inv.replace(old, new),
        &secrets,
        &RenderOptions::default(),
    );
    assert!(s.boot_script(new).contains("not in the inventory"));
    let (st, body) = s.post("/api/v1/reload", "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(v["bundle"], v["previous"]);
    assert_eq!(v["restart_needed"], false);
    let (_, nodes) = s.get("/api/v1/nodes");
    assert_eq!(
        serde_json::from_str::<Value>(&nodes).unwrap()["bundle"],
        v["bundle"]
    );

    // States carried over: nothing was re-armed by the reload itself.
    assert_eq!(s.state("k3s1"), "booted");
    assert_eq!(s.state("k3s2"), "booted");
    assert_eq!(s.node("k3s1")["mac"], new);
    assert!(s.boot_script(new).contains("booting from local disk"));
    assert_eq!(s.post("/api/v1/nodes/k3s1/arm", "").0, 200);
    let served = s.boot_script(new);
    assert_eq!(
        served,
        served_form(&install_script, &served),
        "the new MAC gets the installer"
    );
    let old_answer = s.boot_script(old);
    assert!(
        old_answer.contains("not in the inventory") && !old_answer.contains("plan"),
        "the old MAC is no longer installed: {old_answer}"
    );
    // The new MAC reached the DHCP-facing lookup too: k3s2 is untouched and still local.
    assert!(!s.boot_script("d8:9e:f3:20:00:22").contains("plan"));

    // A broken bundle is refused and the last good one stays live.
    std::fs::write(lab.bundle.join("ipxe/k3s2.ipxe"), "#!ipxe\ntampered\n").unwrap();
    let (st, body) = s.post("/api/v1/reload", "");
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("still serving the old bundle"), "{body}");
    assert_eq!(s.node("k3s1")["mac"], new);
    assert_eq!(s.state("k3s1"), "booting");
}

fn wait_for(s: &Server, host: &str, state: &str) {
    let t = Instant::now();
    while s.state(host) != state {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{host} never got to {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real builder in `dir`, with the pxe's API token when one is given.
fn builder(bin: &Path, dir: &Path, args: &[&str], token: Option<&str>) -> Output {
    let mut c = Command::new(bin);
    c.args(args)
        .current_dir(dir)
        .env_remove("IRONSEED_INVENTORY")
        .env_remove("IRONSEED_SECRETS")
        .env_remove("IRONSEED_PXE")
        .env_remove("IRONSEED_API_TOKEN");
    if let Some(t) = token {
        c.env("IRONSEED_API_TOKEN", t);
    }
    c.output().unwrap()
}

#[test]
fn builder_rebuild_with_a_new_mac_re_arms_the_node_and_watches_it_boot() {
    let bin = builder_bin();
    let lab = serve::lab();
    let dir = lab.dir.path();
    let inv = serve::loopback_inventory();
    std::fs::write(dir.join("lab.yaml"), &inv).unwrap();
    std::fs::remove_dir_all(&lab.bundle).unwrap();
    let o = builder(
        &bin,
        dir,
        &["render", "-i", "lab.yaml", "-o", "bundle"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = Server::start_on(&lab, 18612, 18613, &[]);
    let url = "http://127.0.0.1:18612";
    let (old, new) = ("52:54:00:20:00:11", "52:54:00:20:00:99");
    install(&s, &lab, "k3s-master1", old);

    let o = builder(
        &bin,
        dir,
        &[
            "rebuild",
            "k3s-master1",
            "--mac",
            new,
            "-i",
            "lab.yaml",
            "-o",
            "bundle",
            "--server",
            url,
        ],
        Some(&s.token),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("k3s-master1: armed on http://127.0.0.1:18612"),
        "{out}"
    );
    assert!(
        out.contains("sudo k3s kubectl delete node k3s-master1"),
        "{out}"
    );

    // Armed, with the new MAC live in the running server: no restart.
    assert_eq!(s.state("k3s-master1"), "armed");
    assert_eq!(s.node("k3s-master1")["mac"], new);
    let script = s.boot_script(new);
    let want = std::fs::read_to_string(lab.bundle.join("ipxe/k3s-master1.ipxe")).unwrap();
    assert_eq!(
        script,
        served_form(&want, &script),
        "the new MAC gets the install script"
    );
    assert!(
        !s.boot_script(old).contains("plan"),
        "the old MAC gets no installer"
    );
    // The seed it installs with is the join form.
    let cfg =
        std::fs::read_to_string(lab.bundle.join("nodes/k3s-master1/k3s/config.yaml")).unwrap();
    assert!(cfg.contains("server: \"https://127.0.20.10:6443\"") && !cfg.contains("cluster-init"));
    // Only the MAC changed in the operator's file.
    let edited = std::fs::read_to_string(dir.join("lab.yaml")).unwrap();
    assert_eq!(edited, inv.replacen(old, new, 1));

    // pxe serving another folder than the one rendered into: nothing is armed, since the
    // served bundle still has the old config and MACs.
    install(&s, &lab, "k3s2", "d8:9e:f3:20:00:22");
    let o = builder(
        &bin,
        dir,
        &[
            "rebuild",
            "k3s2",
            "-i",
            "lab.yaml",
            "-o",
            "elsewhere",
            "--server",
            url,
        ],
        Some(&s.token),
    );
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("serves another bundle folder") && e.contains("not arming k3s2"),
        "{e}"
    );
    assert!(
        e.contains("pxe arm k3s2 --server http://127.0.0.1:18612"),
        "{e}"
    );
    assert_eq!(s.state("k3s2"), "booted");

    // --watch: follow k3s-master1 through a whole install, driven like the real clients.
    let child = watch_rebuild(&s, &bin, dir, url, "k3s-master1");
    // The first install ended in `booted`; the rebuild re-arms it.
    install_after_rearm(&s, &lab, "k3s-master1", new);
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}\n{out}");
    for state in ["installing after", "installed after", "booted after"] {
        assert!(out.contains(state), "{state}: {out}");
    }
    assert!(
        out.contains("k3s-master1: booted ") && out.contains(" after arming"),
        "{out}"
    );

    // A failed install ends the watch with the reason and a non-zero exit.
    let child = watch_rebuild(&s, &bin, dir, url, "k3s-master1");
    wait_rearmed(&s, "k3s-master1");
    let secret = s.secret_from_boot(new);
    assert_eq!(
        s.install_event(
            "k3s-master1",
            &secret,
            r#"{"event":"failed","reason":"no disk matches the install selector"}"#
        ),
        200
    );
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("k3s-master1 failed: no disk matches the install selector"),
        "{err}"
    );
}

/// `builder rebuild NODE --watch` against the pxe at `url`, in the background, output piped.
fn watch_rebuild(s: &Server, bin: &Path, dir: &Path, url: &str, node: &str) -> std::process::Child {
    Command::new(bin)
        .args([
            "rebuild", node, "-i", "lab.yaml", "-o", "bundle", "--server", url, "--watch",
        ])
        .current_dir(dir)
        .env_remove("IRONSEED_PXE")
        .env("IRONSEED_API_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until `builder rebuild` re-armed a booted node (its state leaves `booted`).
fn wait_rearmed(s: &Server, host: &str) {
    let t = Instant::now();
    while s.state(host) == "booted" || s.state(host) == "failed" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{host} was never re-armed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(s, host, "armed");
}

fn install_after_rearm(s: &Server, lab: &Lab, host: &str, mac: &str) {
    wait_rearmed(s, host);
    // Give the watcher a poll or two in each state, as a real install would.
    let pause = || std::thread::sleep(Duration::from_millis(700));
    let secret = s.secret_from_boot(mac);
    pause();
    for ev in [
        r#"{"event":"installing","disk":"/dev/vda","total":1000}"#.to_string(),
        r#"{"event":"progress","written":500,"total":1000}"#.to_string(),
        format!(
            r#"{{"event":"installed","sha256":"{}"}}"#,
            serve::IMAGE_SHA256
        ),
    ] {
        assert_eq!(s.install_event(host, &secret, &ev), 200, "{ev}");
        pause();
    }
    assert_eq!(s.report(lab, host, "phone-home", "hostname=x"), 200);
}
