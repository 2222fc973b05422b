//! The catalog format: parsing, every error with file:line:column and field, overlays, and the
//! manifest that fetches and builds record their images in.

use std::path::{Path, PathBuf};

use images::catalog::{self, Catalog, CatalogError, Entry, Kind, Problem, Source, manifest};

const SHA_A: &str = "a3f1c0b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f";
const SHA_B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn problems(r: Result<Vec<Entry>, CatalogError>) -> Vec<Problem> {
    match r {
        Err(CatalogError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

fn entry(name: &str, sha: &str) -> Entry {
    Entry {
        name: name.into(),
        kind: Kind::RawZst,
        source: Source::Url(format!("http://mirror.lan/{name}.raw.zst")),
        sha256: sha.into(),
        size: 42,
        description: None,
    }
}

#[test]
fn the_embedded_catalog_parses() {
    catalog::parse(catalog::EMBEDDED_NAME, catalog::EMBEDDED, None).unwrap();
}

#[test]
fn a_valid_catalog_becomes_entries_with_paths_resolved_beside_the_file() {
    let text = format!(
        "images:\n  - name: debian-12\n    kind: raw.zst\n    source: http://mirror.lan/d.raw.zst\n    sha256: {}\n    size: 123\n    description: golden\n  - name: scratch\n    kind: raw\n    source: builds/scratch.raw\n    sha256: {SHA_B}\n    size: 7\n",
        SHA_A.to_uppercase()
    );
    let es = catalog::parse("c.yaml", &text, Some(Path::new("/srv/cat"))).unwrap();
    assert_eq!(es.len(), 2);
    assert_eq!(es[0].sha256, SHA_A, "lowercased");
    assert_eq!(es[0].kind, Kind::RawZst);
    assert_eq!(es[0].file_name(), "debian-12.raw.zst");
    assert_eq!(es[0].description.as_deref(), Some("golden"));
    assert_eq!(
        es[1].source,
        Source::Path(PathBuf::from("/srv/cat/builds/scratch.raw"))
    );
    assert_eq!(es[1].file_name(), "scratch.raw");
}

#[test]
fn every_problem_is_reported_with_file_line_column_and_field() {
    let text = format!(
        "images:\n  - name: ../etc\n    kind: qcow2\n    source: ftp://x/y\n    sha256: abc\n    size: 0\n  - name: ok\n    kind: raw\n    source: /a\n    sha256: {SHA_A}\n    size: 1\n  - name: ok\n    kind: raw\n    source: /b\n    sha256: {SHA_A}\n    size: 1\n"
    );
    let ps = problems(catalog::parse("bad.yaml", &text, None));
    let at: Vec<(u64, &str)> = ps.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        at,
        [
            (2, "images[0].name"),
            (3, "images[0].kind"),
            (5, "images[0].sha256"),
            (6, "images[0].size"),
            (4, "images[0].source"),
            (12, "images[2].name"),
        ],
        "{ps:#?}"
    );
    assert!(ps.iter().all(|p| p.file == "bad.yaml" && p.column > 0));
    let shown = ps[2].to_string();
    assert!(
        shown.starts_with("bad.yaml:5:13: images[0].sha256: `abc` is not a sha256"),
        "{shown}"
    );
    assert!(
        ps[5].message.contains("also on line 7"),
        "{}",
        ps[5].message
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let text = format!(
        "images:\n  - name: a\n    kind: raw\n    source: /a\n    sha256: {SHA_A}\n    size: 1\n    checksum: nope\n"
    );
    let ps = problems(catalog::parse("k.yaml", &text, None));
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].line, 7, "{}", ps[0]);
    assert!(ps[0].message.contains("checksum"), "{}", ps[0]);
    let ps = problems(catalog::parse("k.yaml", "images: []\nimagez: []\n", None));
    assert_eq!(ps[0].line, 2, "{}", ps[0]);
    assert!(ps[0].message.contains("imagez"), "{}", ps[0]);
    let ps = problems(catalog::parse(
        "k.yaml",
        "images:\n  - name: a\n    kind: raw\n",
        None,
    ));
    assert!(ps[0].message.contains("source"), "missing field: {}", ps[0]);
}

#[test]
fn later_layers_override_earlier_ones_by_name() {
    let art = tempfile::tempdir().unwrap();
    manifest::add_entry(art.path(), entry("debian-12", SHA_A)).unwrap();
    manifest::add_entry(art.path(), entry("other", SHA_A)).unwrap();
    let extra = art.path().join("extra.yaml");
    std::fs::write(
        &extra,
        format!(
            "images:\n  - name: debian-12\n    kind: raw\n    source: local/d.raw\n    sha256: {SHA_B}\n    size: 9\n"
        ),
    )
    .unwrap();
    let c = Catalog::load(art.path(), &[]).unwrap();
    assert_eq!(c.get("debian-12").unwrap().sha256, SHA_A);
    let c = Catalog::load(art.path(), std::slice::from_ref(&extra)).unwrap();
    let d = c.get("debian-12").unwrap();
    assert_eq!((d.sha256.as_str(), d.kind), (SHA_B, Kind::Raw));
    assert_eq!(d.source, Source::Path(art.path().join("local/d.raw")));
    assert_eq!(c.get("other").unwrap().sha256, SHA_A);
    assert_eq!(c.names(), ["debian-12", "other"]);
    let origin = &c.iter().next().unwrap().origin;
    assert_eq!(origin, &extra.display().to_string());
    assert!(c.get("nope").is_none());
}

#[test]
fn problems_of_every_layer_are_reported_together() {
    let art = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(art.path().join("images")).unwrap();
    std::fs::write(
        art.path().join(catalog::MANIFEST),
        "images:\n  - name: x\n    kind: raw\n    source: /x\n    sha256: 12\n    size: 1\n",
    )
    .unwrap();
    let extra = art.path().join("extra.yaml");
    std::fs::write(&extra, "images:\n  - nam: x\n").unwrap();
    let err = Catalog::load(art.path(), std::slice::from_ref(&extra)).unwrap_err();
    let CatalogError::Invalid(ps) = &err else {
        panic!("{err}")
    };
    assert_eq!(ps.len(), 2, "{err}");
    assert!(ps[0].file.ends_with("images/manifest.yaml") && ps[0].line == 5);
    assert!(ps[1].file.ends_with("extra.yaml") && ps[1].line == 2);
    let missing = art.path().join("missing.yaml");
    assert!(matches!(
        Catalog::load(art.path(), &[missing]),
        Err(CatalogError::Read { .. })
    ));
}

#[test]
fn manifest_updates_replace_by_name_keep_the_rest_and_swap_the_file_atomically() {
    use std::os::unix::fs::MetadataExt;
    let art = tempfile::tempdir().unwrap();
    assert_eq!(manifest::read(art.path()).unwrap(), vec![]);
    manifest::add_entry(art.path(), entry("a", SHA_A)).unwrap();
    manifest::add_entry(art.path(), entry("b", SHA_A)).unwrap();
    let path = art.path().join(catalog::MANIFEST);
    let ino = std::fs::metadata(&path).unwrap().ino();
    let mut a2 = entry("a", SHA_B);
    a2.description = Some("rebuilt: with \"quotes\" and: colons".into());
    manifest::add_entry(art.path(), a2.clone()).unwrap();
    assert_eq!(
        manifest::read(art.path()).unwrap(),
        vec![a2, entry("b", SHA_A)]
    );
    // A new inode: the file was replaced by rename, never rewritten in place.
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    let leftovers: Vec<_> = std::fs::read_dir(art.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".ironseed-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# ironseed local image catalog")
    );
}

#[test]
fn concurrent_manifest_updates_lose_nothing() {
    let art = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let dir = art.path().to_path_buf();
            std::thread::spawn(move || {
                for j in 0..5 {
                    manifest::add_entry(&dir, entry(&format!("img-{i}-{j}"), SHA_A)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(manifest::read(art.path()).unwrap().len(), 40);
}

#[test]
fn a_broken_manifest_is_reported_and_never_overwritten() {
    let art = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(art.path().join("images")).unwrap();
    let path = art.path().join(catalog::MANIFEST);
    std::fs::write(&path, "images: [\n").unwrap();
    let err = manifest::add_entry(art.path(), entry("a", SHA_A)).unwrap_err();
    assert!(matches!(err, CatalogError::Invalid(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "images: [\n");
}

#[test]
fn names_must_be_safe_file_names() {
    for ok in ["debian-12", "a", "ubuntu_24.04", "X1"] {
        assert!(catalog::valid_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-x",
        ".hidden",
        "a/b",
        "a..b",
        "sp ace",
        "é",
        &"a".repeat(101),
    ] {
        assert!(!catalog::valid_name(bad), "{bad}");
    }
}

#[test]
fn relative_sources_are_made_absolute_so_the_manifest_means_the_same_file() {
    let text = format!(
        "images:\n  - name: a\n    kind: raw\n    source: x/a.raw\n    sha256: {SHA_A}\n    size: 1\n"
    );
    let es = catalog::parse("c.yaml", &text, Some(Path::new("rel"))).unwrap();
    let want = std::env::current_dir().unwrap().join("rel/x/a.raw");
    assert_eq!(es[0].source, Source::Path(want.clone()));
    // The embedded catalog has no folder: its relative paths stay relative (to the working
    // directory), but the manifest records them absolute.
    let mut e = entry("b", SHA_A);
    e.source = Source::Path(PathBuf::from("b.raw"));
    let yaml = manifest::to_yaml(&[e]);
    let cwd = std::env::current_dir().unwrap();
    assert!(
        yaml.contains(&format!("source: {}", cwd.join("b.raw").display())),
        "{yaml}"
    );
}
