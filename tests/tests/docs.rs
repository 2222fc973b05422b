//! The documentation a newcomer reads, checked like code: every doc a source file cites exists in
//! the repository (with the cited heading), every relative link and anchor resolves, and the
//! README stays short and keeps the test command CI runs.

use std::path::{Path, PathBuf};

use ironseed_tests::docs::{
    Citation, anchors, check_citations, citations, command_section, help_flags, md_links,
    mentions_flag, slug,
};
use ironseed_tests::repo_root;

/// Source kinds whose comments cite docs.
const SOURCE_EXT: &[&str] = &["rs", "j2", "sh", "service", "conf", "sysusers", "toml"];
/// The checker and its tests hold example citations on purpose.
const CHECKER: &[&str] = &["tests/src/docs.rs", "tests/tests/docs.rs"];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            // Build output, fuzz corpora and VCS data are not documentation or source.
            if !matches!(name.as_str(), "target" | "corpus" | ".git" | "artifacts") {
                walk(&p, out);
            }
        } else {
            out.push(p);
        }
    }
}

fn repo_files() -> (PathBuf, Vec<PathBuf>) {
    let root = repo_root().canonicalize().unwrap();
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    (root, files)
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or("")
}

/// Protects: a code comment never points a reader at a doc that is not in the repository (the
/// notes of `../shared/docs/` were cited for months), nor at a section that is gone.
#[test]
fn every_doc_cited_in_the_source_exists_with_its_section() {
    let (root, files) = repo_files();
    let mut errs = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !SOURCE_EXT.contains(&ext(f)) || CHECKER.contains(&rel.as_str()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let cites = citations(&text);
        checked += cites.len();
        errs.extend(check_citations(&root, f, &cites));
    }
    assert!(
        checked > 10,
        "only {checked} citations found: is the scanner still reading the source?"
    );
    assert!(errs.is_empty(), "cited docs missing:\n{}", errs.join("\n"));
}

/// Protects: every relative link of README.md and docs/ (and any other Markdown file) reaches a
/// file of the repository and, with `#anchor`, a heading that exists.
#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let (root, files) = repo_files();
    let mut errs = Vec::new();
    let mut links = 0;
    for f in files.iter().filter(|f| ext(f) == "md") {
        let md = std::fs::read_to_string(f).unwrap();
        let l = md_links(&md);
        links += l.len();
        errs.extend(check_citations(&root, f, &l));
    }
    assert!(links > 20, "only {links} links found");
    assert!(errs.is_empty(), "broken links:\n{}", errs.join("\n"));
}

/// Protects: the README stays a five-minute read, its test command is the one CI runs, and the
/// security model keeps its section (code comments cite it).
#[test]
fn the_readme_is_short_and_runs_what_ci_runs() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(
        n <= 200,
        "README.md has {n} lines: move reference text to docs/"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.contains("bash tests/run"),
        ".ci/run no longer runs `bash tests/run`"
    );
    assert!(
        readme.contains("\nbash tests/run "),
        "README's set-up commands must show the test command CI runs: `bash tests/run`"
    );
    assert!(anchors(&readme).contains(&"security-model".to_string()));
}

// The checker itself: each of these fails if the check it names is removed.

#[test]
fn a_doc_outside_the_repository_is_reported_even_when_it_exists_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("repo");
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(d.path().join("shared/docs")).unwrap();
    std::fs::write(d.path().join("shared/docs/lab.md"), "# Lab\n").unwrap();
    std::fs::write(root.join("docs/ref.md"), "# Ref\n\n## qemu: TCG, not KVM\n").unwrap();
    std::fs::write(root.join("README.md"), "# x\n\n## Security model\n").unwrap();
    let src = root.join("src/lib.rs");
    let text = "\
//! see ../shared/docs/lab.md and ../../shared/docs/lab.md and lab.md
//! (docs/ref.md \"qemu: TCG,
//! not KVM\") and ref.md#qemu-tcg-not-kvm and README \"Security model\"
//! but docs/ref.md \"Gone\", ref.md#gone, README \"Nope\", docs/missing.md
//! https://github.com/k3s-io/docs/blob/main/docs/cli/server.md is a URL
";
    let cites = citations(text);
    let errs = check_citations(&root, &src, &cites);
    let joined = errs.join("\n");
    assert!(
        joined.contains("`../shared/docs/lab.md` is not a file"),
        "{joined}"
    );
    assert!(
        joined.contains("`../../shared/docs/lab.md` is not a file"),
        "{joined}"
    );
    assert!(joined.contains("`lab.md` is not a file"), "{joined}");
    assert!(joined.contains("no heading \"Gone\""), "{joined}");
    assert!(joined.contains("`ref.md#gone`"), "{joined}");
    assert!(
        joined.contains("`README.md` has no heading \"Nope\""),
        "{joined}"
    );
    assert!(
        joined.contains("`docs/missing.md` is not a file"),
        "{joined}"
    );
    assert_eq!(errs.len(), 7, "{joined}");
    assert!(!joined.contains("cli/server.md"));
    assert!(cites.contains(&Citation {
        line: 2,
        target: "docs/ref.md".into(),
        anchor: None,
        heading: Some("qemu: TCG, not KVM".into()),
    }));
}

#[test]
fn anchors_are_githubs_slugs() {
    assert_eq!(
        slug("`builder images build`: the golden image"),
        "builder-images-build-the-golden-image"
    );
    assert_eq!(
        slug("Seed images: `builder render --usb`"),
        "seed-images-builder-render---usb"
    );
    assert_eq!(slug("`plan.json`"), "planjson");
    assert_eq!(slug("[Link](x.md) and `nodes[]`"), "link-and-nodes");
    let md = "# A\n\n```sh\n# not a heading\n```\n## A\n";
    assert_eq!(anchors(md), ["a", "a-1"]);
}

#[test]
fn a_commands_section_ends_at_the_next_heading_of_its_level() {
    let docs = vec![(
        "docs/x.md".to_string(),
        "# X\n\n## `tool run`\n\n--fast\n\n```sh\n# a comment, not a heading\ntool run --quiet\n```\n\n### Detail\n\n--deep\n\n## `tool stop`\n\n--late\n"
            .to_string(),
    )];
    let (_, heading, s) = command_section(&docs, "tool run").unwrap();
    assert_eq!(heading, "`tool run`");
    for f in ["--fast", "--quiet", "--deep"] {
        assert!(mentions_flag(&s, f), "{f}");
    }
    assert!(
        !mentions_flag(&s, "--late"),
        "the next command's section leaked in"
    );
    assert!(!mentions_flag("--forceful", "--force"));
    assert!(command_section(&docs, "tool jump").is_err());
    let twice = vec![
        docs[0].clone(),
        ("docs/y.md".into(), "## `tool run`\n".into()),
    ];
    assert!(
        command_section(&twice, "tool run")
            .unwrap_err()
            .contains("2 headings")
    );
    assert_eq!(
        help_flags(
            "  -o, --out <DIR>  the folder\n      --usb-format <FMT>  [default: fat]\n  -h, --help"
        ),
        ["--out", "--usb-format"]
    );
}
