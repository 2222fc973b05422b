//! Editing the operator's inventory file in place. The file is theirs: comments, quoting and
//! layout are kept by splicing new text at a value's exact location (from the raw layer's spans)
//! instead of re-serialising the document, which would drop every comment.

use super::raw::RawInventory;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{file}: cannot be parsed, so it cannot be edited: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: no node named `{node}` (known nodes: {known})")]
    UnknownNode {
        file: String,
        node: String,
        known: String,
    },
    #[error(
        "{file}:{line}:{column}: the MAC of {node} is not a plain or quoted scalar here \
         (an alias or multi-line value?); edit it by hand"
    )]
    Locate {
        file: String,
        line: u64,
        column: u64,
        node: String,
    },
    #[error("`{0}` is not a MAC address (expected six hex pairs like 52:54:00:12:34:56)")]
    BadText(String),
}

/// The hostnames of an inventory text, in file order (for "known nodes" messages).
pub fn hostnames(text: &str) -> Vec<String> {
    serde_saphyr::from_str::<RawInventory>(text)
        .map(|r| {
            r.nodes
                .iter()
                .map(|n| n.value.hostname.value.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// An edited inventory text, and the value it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    pub old: String,
}

/// `text` with node `node`'s boot MAC (`nodes[].mac`) replaced by `new_mac`, byte for byte the
/// same everywhere else. The quoting style of the old value is kept. `new_mac` is written as
/// given; the caller validates the edited document as a whole (an unparsable MAC or one that
/// another node already has is then reported with file:line like any other inventory error).
pub fn set_mac(file: &str, text: &str, node: &str, new_mac: &str) -> Result<Edited, EditError> {
    // Only characters a MAC can be written with: nothing that could end the scalar, start a
    // comment or a new line, so the splice can never change the document's structure.
    if new_mac.is_empty()
        || !new_mac
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '.'))
    {
        return Err(EditError::BadText(new_mac.into()));
    }
    let raw = serde_saphyr::from_str::<RawInventory>(text).map_err(|e| EditError::Parse {
        file: file.into(),
        message: e.without_snippet().to_string(),
    })?;
    let Some(n) = raw.nodes.iter().find(|n| n.value.hostname.value == node) else {
        return Err(EditError::UnknownNode {
            file: file.into(),
            node: node.into(),
            known: raw
                .nodes
                .iter()
                .map(|n| n.value.hostname.value.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let mac = &n.value.mac;
    let (line, column) = (mac.referenced.line(), mac.referenced.column());
    let locate = || EditError::Locate {
        file: file.into(),
        line,
        column,
        node: node.into(),
    };
    let start = byte_at(text, line, column).ok_or_else(locate)?;
    let (inner_start, inner_end) = scalar_extent(text, start).ok_or_else(locate)?;
    // The text found there must be the value serde read, or we are looking at the wrong place
    // (e.g. an alias whose value is defined elsewhere).
    if text[inner_start..inner_end] != *mac.value {
        return Err(locate());
    }
    let mut out = String::with_capacity(text.len() + new_mac.len());
    out.push_str(&text[..inner_start]);
    out.push_str(new_mac);
    out.push_str(&text[inner_end..]);
    Ok(Edited {
        text: out,
        old: mac.value.clone(),
    })
}

/// Byte index of 1-based (line, character column).
fn byte_at(text: &str, line: u64, column: u64) -> Option<usize> {
    if line == 0 || column == 0 {
        return None;
    }
    let mut off = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            let col = usize::try_from(column - 1).ok()?;
            return l.char_indices().nth(col).map(|(b, _)| off + b);
        }
        off += l.len();
    }
    None
}

/// The value bytes (inside the quotes, if any) of the scalar starting at `start`.
fn scalar_extent(text: &str, mut start: usize) -> Option<(usize, usize)> {
    // Skip an anchor (`&name`) or a tag (`!!str`) written before the value.
    while matches!(text[start..].chars().next(), Some('&' | '!')) {
        let tok = text[start..].find([' ', '\t', '\n'])?;
        start += tok;
        start += text[start..].len() - text[start..].trim_start_matches([' ', '\t']).len();
    }
    let rest = &text[start..];
    let first = rest.chars().next()?;
    if first == '"' || first == '\'' {
        // A MAC never contains quotes or escapes, so the next quote closes the scalar.
        let end = rest[1..].find(first)?;
        if rest[1..1 + end].contains('\n') {
            return None;
        }
        return Some((start + 1, start + 1 + end));
    }
    // Plain scalar: up to the end of the line, a comment (` #`), or a flow indicator.
    let line_end = rest.find('\n').unwrap_or(rest.len());
    let line = &rest[..line_end];
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        if matches!(c, ',' | ']' | '}') || (c == '#' && line[..i].ends_with([' ', '\t'])) {
            end = i;
            break;
        }
    }
    let value = line[..end].trim_end_matches([' ', '\t', '\r']);
    if value.is_empty() {
        return None;
    }
    Some((start, start + value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::DEFAULT_INVENTORY;

    fn changed_lines(a: &str, b: &str) -> Vec<(String, String)> {
        assert_eq!(a.lines().count(), b.lines().count());
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.to_string(), y.to_string()))
            .collect()
    }

    #[test]
    fn changes_only_that_mac_in_the_default_inventory() {
        let out = set_mac("inv.yaml", DEFAULT_INVENTORY, "k3s3", "24:6e:96:99:00:23").unwrap();
        assert_eq!(out.old, "24:6e:96:20:00:23");
        let out = out.text;
        assert_eq!(
            changed_lines(DEFAULT_INVENTORY, &out),
            [(
                "    mac: 24:6e:96:20:00:23".to_string(),
                "    mac: 24:6e:96:99:00:23".to_string()
            )]
        );
        // extra_macs of the same node and the comments around it are untouched.
        assert!(out.contains("extra_macs: [24:6e:96:20:00:24]     # second onboard port"));
    }

    #[test]
    fn keeps_quotes_and_trailing_comments() {
        let base = DEFAULT_INVENTORY
            .replace(
                "mac: 52:54:00:20:00:12",
                "mac: \"52:54:00:20:00:12\"   # swapped 2024",
            )
            .replace("mac: 52:54:00:20:00:13", "mac: '52:54:00:20:00:13'");
        let out = set_mac("inv.yaml", &base, "k3s-master2", "52:54:00:aa:00:12")
            .unwrap()
            .text;
        assert_eq!(
            changed_lines(&base, &out)[0].1,
            "    mac: \"52:54:00:aa:00:12\"   # swapped 2024"
        );
        let out = set_mac("inv.yaml", &base, "k3s-master3", "52:54:00:aa:00:13")
            .unwrap()
            .text;
        assert_eq!(
            changed_lines(&base, &out)[0].1,
            "    mac: '52:54:00:aa:00:13'"
        );
        let plain = base.replace(
            "mac: 52:54:00:20:00:11",
            "mac: 52:54:00:20:00:11 # the first",
        );
        let out = set_mac("inv.yaml", &plain, "k3s-master1", "52:54:00:aa:00:11")
            .unwrap()
            .text;
        assert_eq!(
            changed_lines(&plain, &out)[0].1,
            "    mac: 52:54:00:aa:00:11 # the first"
        );
    }

    #[test]
    fn flow_mapping_nodes_are_edited_too() {
        let base = DEFAULT_INVENTORY.replace(
            "  - hostname: k3s2\n    role: agent\n    profile: optiplex\n    mac: d8:9e:f3:20:00:22\n    ip: 10.0.20.22\n",
            "  - {hostname: k3s2, role: agent, profile: optiplex, mac: d8:9e:f3:20:00:22, ip: 10.0.20.22}\n",
        );
        assert_ne!(base, DEFAULT_INVENTORY);
        let out = set_mac("inv.yaml", &base, "k3s2", "d8:9e:f3:20:00:99")
            .unwrap()
            .text;
        assert_eq!(
            changed_lines(&base, &out)[0].1,
            "  - {hostname: k3s2, role: agent, profile: optiplex, mac: d8:9e:f3:20:00:99, ip: 10.0.20.22}"
        );
    }

    #[test]
    fn unknown_node_lists_the_known_ones() {
        let e = set_mac("inv.yaml", DEFAULT_INVENTORY, "k3s9", "52:54:00:00:00:01").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no node named `k3s9`"), "{msg}");
        assert!(msg.contains("k3s-master1, k3s-master2"), "{msg}");
    }

    #[test]
    fn text_that_could_change_the_structure_is_refused() {
        for bad in ["", "aa bb", "x\n  role: server", "a#b c", "\"q\""] {
            assert!(
                matches!(
                    set_mac("inv.yaml", DEFAULT_INVENTORY, "k3s1", bad),
                    Err(EditError::BadText(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_aliased_mac_is_not_guessed() {
        let base = DEFAULT_INVENTORY
            .replace("mac: d8:9e:f3:20:00:21", "mac: &m d8:9e:f3:20:00:21")
            .replace(
                "    extra_macs: [24:6e:96:20:00:24]",
                "    extra_macs: [*m]",
            );
        // k3s1 defines the anchor: its value is right there and can be edited.
        let out = set_mac("inv.yaml", &base, "k3s1", "d8:9e:f3:20:00:77")
            .unwrap()
            .text;
        assert!(out.contains("mac: &m d8:9e:f3:20:00:77"));
        // A MAC that is only an alias has its text elsewhere: refused, not guessed.
        let aliased = base.replace("mac: d8:9e:f3:20:00:22", "mac: *m");
        assert!(matches!(
            set_mac("inv.yaml", &aliased, "k3s2", "d8:9e:f3:20:00:78"),
            Err(EditError::Locate { .. })
        ));
    }
}
