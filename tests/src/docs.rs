//! Checks that keep the documentation honest, shared by `tests/tests/docs.rs` and the `--help`
//! tests of `builder` and `pxe` (they include this file with `#[path]`; std only).
//!
//! - a command's flags are looked for in **its own section** of `docs/` (the heading naming the
//!   command in backticks, e.g. "## `pxe serve`", down to the next heading of the same level),
//!   not anywhere in a file;
//! - every doc a source file cites (`docs/x.md`, `x.md#anchor`, `docs/x.md "Heading"`,
//!   `README "Heading"`) exists inside the repository, with the cited heading;
//! - every relative Markdown link resolves, anchors included (GitHub's heading slugs).
#![allow(dead_code)]

use std::path::{Component, Path, PathBuf};

/// A Markdown heading outside code blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heading {
    /// Index of the heading's line.
    pub line: usize,
    /// 1 for `#`, 2 for `##`, ...
    pub level: usize,
    /// The text after the hashes, as written (backticks kept).
    pub text: String,
}

/// The headings of `md`, skipping fenced code blocks (shell comments start with `#` too).
pub fn headings(md: &str) -> Vec<Heading> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in md.lines().enumerate() {
        let t = line.trim_start();
        if let Some(f) = fence {
            if t.starts_with(f) {
                fence = None;
            }
            continue;
        }
        if t.starts_with("```") {
            fence = Some("```");
            continue;
        }
        if t.starts_with("~~~") {
            fence = Some("~~~");
            continue;
        }
        if !line.starts_with('#') {
            continue;
        }
        let level = line.bytes().take_while(|&b| b == b'#').count();
        if level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        out.push(Heading {
            line: i,
            level,
            text: line[level..]
                .trim()
                .trim_end_matches('#')
                .trim()
                .to_string(),
        });
    }
    out
}

/// Heading text as it reads: backticks and link syntax removed.
pub fn plain(text: &str) -> String {
    let mut s = String::new();
    let mut rest = text;
    // `[label](target)` → label
    while let Some(open) = rest.find('[') {
        s.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find("](")
            .and_then(|c| after[c..].find(')').map(|e| (c, c + e)))
        {
            Some((close, end)) => {
                s.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                s.push('[');
                rest = after;
            }
        }
    }
    s.push_str(rest);
    s.replace('`', "")
}

/// GitHub's anchor for a heading: lower case; letters, digits, `-` and `_` kept; spaces become
/// `-`; everything else dropped.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in plain(text).trim().chars() {
        if c.is_alphanumeric() || c == '-' || c == '_' {
            out.extend(c.to_lowercase());
        } else if c == ' ' {
            out.push('-');
        }
    }
    out
}

/// Every anchor `md` defines, with GitHub's `-1`, `-2` suffixes for repeated headings.
pub fn anchors(md: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in headings(md) {
        let base = slug(&h.text);
        let mut a = base.clone();
        let mut n = 0;
        while out.contains(&a) {
            n += 1;
            a = format!("{base}-{n}");
        }
        out.push(a);
    }
    out
}

/// The Markdown files of `docs/`, by file name, sorted.
pub fn load_docs(root: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let name = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// A command's section: the one heading in `docs` that names `command` in backticks (e.g.
/// "### `pxe serve`" or "## `builder rebuild`: replacing a node"), down to the next heading of
/// its level or above. Returns (file, heading, section text).
pub fn command_section(
    docs: &[(String, String)],
    command: &str,
) -> Result<(String, String, String), String> {
    let want = format!("`{command}`");
    let mut found = Vec::new();
    for (name, md) in docs {
        let hs = headings(md);
        let lines: Vec<&str> = md.lines().collect();
        for (i, h) in hs.iter().enumerate() {
            if !h.text.contains(&want) {
                continue;
            }
            let end = hs[i + 1..]
                .iter()
                .find(|n| n.level <= h.level)
                .map_or(lines.len(), |n| n.line);
            found.push((name.clone(), h.text.clone(), lines[h.line..end].join("\n")));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no heading in docs/ names {want}: give the command its own section, e.g. \"## {want}\""
        )),
        _ => Err(format!(
            "{} headings in docs/ name {want} ({}): keep one section per command",
            found.len(),
            found
                .iter()
                .map(|f| format!("{}: {}", f.0, f.1))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// The long flags a `--help` text shows (`--help` and `--version` left out).
pub fn help_flags(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = word
            .trim_end_matches([',', '.', ')', '>', ':', ';', '`', '\'', '"'])
            .split(['=', '<', '['])
            .next()
            .unwrap();
        if flag == "--help" || flag == "--version" || flag.len() < 4 {
            continue;
        }
        if !out.iter().any(|f| f == flag) {
            out.push(flag.to_string());
        }
    }
    out
}

/// Whether `section` mentions `flag` as a whole word (`--force` is not found in `--forceful`).
pub fn mentions_flag(section: &str, flag: &str) -> bool {
    section.match_indices(flag).any(|(i, _)| {
        let next = section[i + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// A doc cited by a source file or linked from a Markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citation {
    /// 1-based line of the citing file.
    pub line: usize,
    /// The path as written (`docs/x.md`, `README.md`, `../shared/docs/y.md`).
    pub target: String,
    /// `#anchor` after the path, if any.
    pub anchor: Option<String>,
    /// `"Heading"` after the path, if any.
    pub heading: Option<String>,
}

/// Strip a comment's leading marker (`//!`, `///`, `//`, `#`, `*`) from a continuation line.
fn uncomment(line: &str) -> &str {
    let t = line.trim_start();
    for m in ["//!", "///", "//", "#", "*"] {
        if let Some(r) = t.strip_prefix(m) {
            return r.trim_start();
        }
    }
    t
}

/// `"Heading"` at the start of `after` (possibly continued on the next comment line).
fn quoted_heading(after: &str, next_line: Option<&str>) -> Option<String> {
    let rest = after.strip_prefix(' ')?.strip_prefix('"')?;
    if let Some(end) = rest.find('"') {
        return Some(rest[..end].to_string());
    }
    let cont = uncomment(next_line?);
    let end = cont.find('"')?;
    Some(format!("{} {}", rest.trim_end(), &cont[..end]))
}

const DELIMS: &[char] = &[
    '(', ')', '`', ',', ';', ':', '\'', '"', '[', ']', '<', '>', '{', '}',
];

/// The docs `text` (a source file) cites: every word naming a `.md` file (URLs left out, they
/// are not in the repository), and `README "Heading"`.
pub fn citations(text: &str) -> Vec<Citation> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut pos = 0;
        for word in line.split_whitespace() {
            let start = pos + line[pos..].find(word).unwrap();
            pos = start + word.len();
            if word.contains("://") {
                continue;
            }
            let mut off = start;
            for part in word.split(DELIMS) {
                let at = off + line[off..].find(part).unwrap_or(0);
                off = at + part.len();
                let part_t = part.trim_end_matches('.');
                let (path, anchor) = match part_t.split_once('#') {
                    Some((p, a)) => (p, Some(a.to_string())),
                    None => (part_t, None),
                };
                let is_md = path.ends_with(".md") && path.len() > 3;
                // `README "Heading"`: the README by its bare name, with a section.
                let bare_readme = path == "README" && anchor.is_none();
                if !(is_md || bare_readme) {
                    continue;
                }
                let end = at + part_t.len();
                let after = &line[end..];
                let after = after.strip_prefix('`').unwrap_or(after);
                let heading = quoted_heading(after, lines.get(i + 1).copied());
                if !is_md && heading.is_none() {
                    continue; // the word "README" without a section
                }
                out.push(Citation {
                    line: i + 1,
                    target: if is_md {
                        path.into()
                    } else {
                        "README.md".into()
                    },
                    anchor: anchor.filter(|a| !a.is_empty()),
                    heading,
                });
            }
        }
    }
    out
}

/// Relative link targets of a Markdown text, outside code: `](target)`.
pub fn md_links(md: &str) -> Vec<Citation> {
    let mut out = Vec::new();
    let mut fence = false;
    for (i, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        // Inline code spans do not hold links.
        let mut visible = String::new();
        for (k, seg) in line.split('`').enumerate() {
            if k % 2 == 0 {
                visible.push_str(seg);
            }
            visible.push(' ');
        }
        let mut rest = visible.as_str();
        while let Some(p) = rest.find("](") {
            let after = &rest[p + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].trim();
            rest = &after[end..];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p.to_string(), Some(a.to_string())),
                None => (target.to_string(), None),
            };
            out.push(Citation {
                line: i + 1,
                target: path,
                anchor,
                heading: None,
            });
        }
    }
    out
}

/// `p` with `.` and `..` folded, without touching the file system (a `..` above the start
/// stays, so a path that leaves the repository stays recognisable).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

/// Where a cited path lives in the repository `root`: relative to the citing file's folder or
/// any folder above it up to `root`, or a bare name in `docs/`. Never outside `root`.
pub fn resolve(root: &Path, citing_dir: &Path, target: &str) -> Option<PathBuf> {
    let root = normalize(root);
    let mut dir = normalize(citing_dir);
    let mut candidates = Vec::new();
    loop {
        candidates.push(normalize(&dir.join(target)));
        if dir == root || !dir.starts_with(&root) || !dir.pop() {
            break;
        }
    }
    if !target.contains('/') {
        candidates.push(root.join("docs").join(target));
    }
    candidates
        .into_iter()
        .find(|c| c.starts_with(&root) && c.is_file())
}

/// Whether `md` has a heading reading `heading` (backticks ignored, case-insensitive).
pub fn has_heading(md: &str, heading: &str) -> bool {
    let want = plain(heading).to_lowercase();
    headings(md)
        .iter()
        .any(|h| plain(&h.text).to_lowercase() == want)
}

/// Problems with `citations` made from the file at `citing` (inside `root`).
pub fn check_citations(root: &Path, citing: &Path, cites: &[Citation]) -> Vec<String> {
    let rel = citing.strip_prefix(root).unwrap_or(citing).display();
    let dir = citing.parent().unwrap_or(root);
    let mut errs = Vec::new();
    for c in cites {
        let path = if c.target.is_empty() {
            Some(citing.to_path_buf())
        } else {
            resolve(root, dir, &c.target)
        };
        let Some(path) = path else {
            errs.push(format!(
                "{rel}:{}: `{}` is not a file in this repository (bring the facts into docs/ or state them in place)",
                c.line, c.target
            ));
            continue;
        };
        if c.anchor.is_none() && c.heading.is_none() {
            continue;
        }
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let md = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(a) = &c.anchor
            && !anchors(&md).contains(a)
        {
            errs.push(format!(
                "{rel}:{}: `{}#{a}`: no heading with that anchor",
                c.line, c.target
            ));
        }
        if let Some(h) = &c.heading
            && !has_heading(&md, h)
        {
            errs.push(format!(
                "{rel}:{}: `{}` has no heading \"{h}\"",
                c.line, c.target
            ));
        }
    }
    errs
}
