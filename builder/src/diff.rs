//! `builder diff`: what a render would change in an existing bundle, file by file, with line
//! diffs for text. Secrets are masked in the output.

use std::collections::BTreeMap;

use crate::render::Bundle;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct BundleDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Path and its line diff (`-`/`+`/` ` prefixed lines, context trimmed).
    pub changed: Vec<(String, Vec<String>)>,
}

impl BundleDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub fn diff(old: &BTreeMap<String, Vec<u8>>, new: &Bundle, secrets: &[&str]) -> BundleDiff {
    let mut d = BundleDiff::default();
    for (path, f) in &new.files {
        match old.get(path) {
            None => d.added.push(path.clone()),
            Some(o) if *o != f.bytes => {
                match (std::str::from_utf8(o), std::str::from_utf8(&f.bytes)) {
                    (Ok(a), Ok(b)) => {
                        let (a, b) = (mask(a, secrets), mask(b, secrets));
                        d.changed.push((path.clone(), line_diff(&a, &b, 2)));
                    }
                    // Seed images: a line diff of a FAT volume is noise (and could show the token).
                    _ => d
                        .changed
                        .push((path.clone(), vec!["binary file differs".into()])),
                }
            }
            _ => {}
        }
    }
    for path in old.keys() {
        if !new.files.contains_key(path) {
            d.removed.push(path.clone());
        }
    }
    d
}

fn mask(text: &str, secrets: &[&str]) -> String {
    let mut t = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        t = t.replace(s, "<redacted>");
    }
    t
}

/// Line diff by longest common subsequence, with `context` unchanged lines around each change.
pub fn line_diff(a: &str, b: &str, context: usize) -> Vec<String> {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let keep: Vec<bool> = (0..ops.len())
        .map(|k| {
            let lo = k.saturating_sub(context);
            let hi = (k + context + 1).min(ops.len());
            ops[lo..hi].iter().any(|(c, _)| *c != ' ')
        })
        .collect();
    let mut out = Vec::new();
    let mut skipped = false;
    for (k, (c, l)) in ops.iter().enumerate() {
        if keep[k] {
            if skipped {
                out.push("@@".to_string());
                skipped = false;
            }
            out.push(format!("{c}{l}"));
        } else {
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_changes_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\nf\n", "a\nb\nC\nd\ne\nf\n", 1);
        let want: Vec<String> = ["@@", " b", "-c", "+C", " d"].map(String::from).to_vec();
        assert_eq!(d, want);
    }

    #[test]
    fn binary_files_are_not_line_diffed() {
        let mut old = BTreeMap::new();
        old.insert("usb/a.img".to_string(), vec![0xff, b't', b'o', b'k']);
        let mut new = Bundle::default();
        new.files.insert(
            "usb/a.img".into(),
            crate::render::BundleFile {
                bytes: vec![0xff, b't', b'o', b'x'],
                mode: 0o600,
            },
        );
        let d = diff(&old, &new, &[]);
        assert_eq!(
            d.changed,
            [(
                "usb/a.img".to_string(),
                vec!["binary file differs".to_string()]
            )]
        );
    }

    #[test]
    fn secrets_are_masked() {
        let mut old = BTreeMap::new();
        old.insert("f".to_string(), b"token: abcdefgh123\nx: 1\n".to_vec());
        let mut new = Bundle::default();
        new.files.insert(
            "f".into(),
            crate::render::BundleFile {
                bytes: b"token: abcdefgh123\nx: 2\n".to_vec(),
                mode: 0o600,
            },
        );
        let d = diff(&old, &new, &["abcdefgh123"]);
        let text = d.changed[0].1.join("\n");
        assert!(!text.contains("abcdefgh123"));
        assert!(text.contains("<redacted>"));
        assert!(text.contains("+x: 2"));
    }
}
