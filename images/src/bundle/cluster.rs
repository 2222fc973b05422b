//! The `cluster` note a k3s server's first boot posts to its report URL (kind [`NOTE_KIND`]):
//! the cluster as that server's API sees it, for `builder lab up`/`lab apply`. One definition
//! for both ends: the first-boot script writes it (templates/node/firstboot.sh.j2,
//! `cluster_line`), pxe stores it as a note (printable, cut to [`super::NOTE_MAX`]), builder
//! parses it here.
//!
//! Wire form: `COUNT NAME:READY:ETCD ...`. COUNT is how many nodes the API lists (entries that
//! did not fit under the note limit are left out, so fewer entries than COUNT means a cut
//! report); READY the node's `Ready` condition (`True`, `False`, `Unknown`, `-` for none);
//! ETCD `e` when k3s annotated the node with its embedded-etcd member name
//! (`etcd.k3s.cattle.io/node-name`, which k3s's etcd controller sets on a server once its
//! member runs; k3s ships no etcdctl, so this is what "in etcd" can be read from), else `-`.

/// The note kind.
pub const NOTE_KIND: &str = "cluster";

/// Longest entry list the first boot sends (bytes after COUNT), under pxe's note limit with
/// room for `cluster: ` and COUNT.
pub const LINE_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    True,
    False,
    Unknown,
    /// No Ready condition yet (registered, never reported).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedNode {
    pub name: String,
    pub ready: Ready,
    /// k3s runs an embedded-etcd member for it (the annotation is set).
    pub etcd: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterReport {
    /// Nodes the API listed.
    pub count: usize,
    /// The entries the report carries (fewer than `count` when cut).
    pub nodes: Vec<ReportedNode>,
}

impl ClusterReport {
    pub fn cut(&self) -> bool {
        self.nodes.len() < self.count
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The report in a timeline note's detail (`cluster: COUNT ...`, or the bare line). `None`
/// when it is not one; an entry that is not well formed (cut by a limit, hostile) is dropped,
/// so the report reads as cut, never as more than it says.
pub fn parse(detail: &str) -> Option<ClusterReport> {
    let line = detail
        .strip_prefix(NOTE_KIND)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(detail);
    let mut words = line.split(' ');
    let count: usize = words.next()?.parse().ok()?;
    let mut nodes: Vec<ReportedNode> = Vec::new();
    for w in words {
        let mut f = w.split(':');
        let (Some(name), Some(ready), Some(etcd), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let ready = match ready {
            "True" => Ready::True,
            "False" => Ready::False,
            "Unknown" => Ready::Unknown,
            "-" => Ready::None,
            _ => continue,
        };
        let etcd = match etcd {
            "e" => true,
            "-" => false,
            _ => continue,
        };
        if !valid_name(name) || nodes.iter().any(|n| n.name == name) || nodes.len() == count {
            continue;
        }
        nodes.push(ReportedNode {
            name: name.to_string(),
            ready,
            etcd,
        });
    }
    Some(ClusterReport { count, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wire_form_and_drops_what_is_not_an_entry() {
        let r = parse("cluster: 3 k3s-master1:True:e k3s1:False:- k3s2:-:-").unwrap();
        assert_eq!(r.count, 3);
        assert!(!r.cut());
        assert_eq!(
            r.nodes[0],
            ReportedNode {
                name: "k3s-master1".into(),
                ready: Ready::True,
                etcd: true
            }
        );
        assert_eq!(r.nodes[2].ready, Ready::None);
        // Cut by pxe's limit mid-entry, a made-up state, a name no node can have, a repeat.
        let r = parse("4 a:True:e b:Maybe:- C_D:True:- a:False:- b:Tr").unwrap();
        assert_eq!(r.nodes.len(), 1);
        assert!(r.cut());
        // More entries than the count it claims: never more than the count.
        assert_eq!(parse("1 a:True:- b:True:-").unwrap().nodes.len(), 1);
        assert_eq!(parse("data-disk: x"), None);
        assert_eq!(parse("cluster: many a:True:-"), None);
    }
}
