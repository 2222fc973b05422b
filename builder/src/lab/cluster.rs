//! Is the cluster up? The parsing of `etcdctl member list -w json` and `kubectl get nodes -o
//! json`, and the decision "ready / not yet / cannot check, and why". Pure; the fixtures are
//! real captures where a capture is possible (builder/testdata/lab/README.md).
//!
//! k3s names an embedded-etcd member `<hostname>-<8 hex digits>` and registers each kubelet
//! under the node's hostname; a member whose `name` is still empty was added by a joining
//! server that has not started it yet, and a learner does not vote (etcd 3.4+).

use std::net::Ipv4Addr;

use images::bundle::cluster::ClusterReport;
use images::bundle::printable;
use serde::Deserialize;

/// The lists come from a cluster's API over the lab network: bounded before parsing.
pub const MAX_LIST_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("{what}: {len} bytes, more than {MAX_LIST_BYTES}: not parsed")]
    TooBig { what: &'static str, len: usize },
    #[error("{what}: not the expected JSON: {message}")]
    Parse { what: &'static str, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EtcdMember {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

impl EtcdMember {
    /// Started: the member process ran and published its name and client URLs.
    pub fn started(&self) -> bool {
        !self.name.is_empty() && !self.client_urls.is_empty()
    }

    /// The host of its first peer URL (`https://10.0.20.11:2380` → 10.0.20.11).
    pub fn peer_ip(&self) -> Option<Ipv4Addr> {
        let u = self.peer_urls.first()?;
        let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
        rest.split(['/', ':']).next()?.parse().ok()
    }

    /// Named for `host`: k3s's `<host>-<8 hex>`, or the bare host name.
    pub fn named(&self, host: &str) -> bool {
        self.name == host
            || self.name.strip_prefix(host).is_some_and(|rest| {
                rest.len() == 9
                    && rest.starts_with('-')
                    && rest[1..].bytes().all(|b| b.is_ascii_hexdigit())
            })
    }

    /// Whether this member is the server `host` at `ip`: by name, or (not started yet, no
    /// name) by its peer address.
    pub fn is(&self, host: &str, ip: Ipv4Addr) -> bool {
        self.named(host) || (self.name.is_empty() && self.peer_ip() == Some(ip))
    }
}

/// The member of server `host`: a named one first, then an unnamed one at its address.
pub fn member_of<'a>(
    members: &'a [EtcdMember],
    host: &str,
    ip: Ipv4Addr,
) -> Option<&'a EtcdMember> {
    members
        .iter()
        .find(|m| m.named(host))
        .or_else(|| members.iter().find(|m| m.is(host, ip)))
}

#[derive(Deserialize)]
struct MemberList {
    members: Vec<EtcdMember>,
}

fn bounded<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], ClusterError> {
    if bytes.len() > MAX_LIST_BYTES {
        return Err(ClusterError::TooBig {
            what,
            len: bytes.len(),
        });
    }
    Ok(bytes)
}

fn parse_err(what: &'static str) -> impl Fn(serde_json::Error) -> ClusterError {
    move |e| ClusterError::Parse {
        what,
        message: printable(&e.to_string(), 200),
    }
}

pub fn parse_members(bytes: &[u8]) -> Result<Vec<EtcdMember>, ClusterError> {
    const WHAT: &str = "etcdctl member list -w json";
    let l: MemberList = serde_json::from_slice(bounded(WHAT, bytes)?).map_err(parse_err(WHAT))?;
    Ok(l.members)
}

/// A node's `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// `False` or `Unknown`, with the kubelet's reason and message.
    NotReady(String),
    /// No Ready condition at all (the kubelet registered, never reported).
    NoCondition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeNode {
    pub name: String,
    pub ready: Readiness,
    pub internal_ip: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct NodeList {
    items: Vec<RawNode>,
}

#[derive(Deserialize)]
struct RawNode {
    metadata: RawMeta,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize)]
struct RawMeta {
    name: String,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    conditions: Vec<RawCondition>,
    #[serde(default)]
    addresses: Vec<RawAddress>,
}

#[derive(Deserialize)]
struct RawCondition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct RawAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

pub fn parse_nodes(bytes: &[u8]) -> Result<Vec<KubeNode>, ClusterError> {
    const WHAT: &str = "kubectl get nodes -o json";
    let l: NodeList = serde_json::from_slice(bounded(WHAT, bytes)?).map_err(parse_err(WHAT))?;
    Ok(l.items
        .into_iter()
        .map(|n| {
            let ready = match n.status.conditions.iter().find(|c| c.kind == "Ready") {
                None => Readiness::NoCondition,
                Some(c) if c.status == "True" => Readiness::Ready,
                Some(c) => Readiness::NotReady(printable(
                    &format!("Ready={} {}: {}", c.status, c.reason, c.message),
                    200,
                )),
            };
            KubeNode {
                name: printable(&n.metadata.name, 64),
                ready,
                internal_ip: n
                    .status
                    .addresses
                    .iter()
                    .find(|a| a.kind == "InternalIP")
                    .and_then(|a| a.address.parse().ok()),
            }
        })
        .collect())
}

/// What the cluster should hold, from the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Servers (hostname, address): each an etcd voter.
    pub servers: Vec<(String, Ipv4Addr)>,
    /// Every k3s node (servers and agents; not the NFS host): each `Ready`.
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every server a started voting etcd member, every node Ready. `notes`: what is there
    /// besides (a member or node of no inventory node: left from a rebuild).
    Ready { notes: Vec<String> },
    /// What is still missing, one line each.
    NotYet(Vec<String>),
}

pub fn decide(want: &Expected, members: &[EtcdMember], nodes: &[KubeNode]) -> Verdict {
    let mut missing = Vec::new();
    let mut notes = Vec::new();
    for (host, ip) in &want.servers {
        match member_of(members, host, *ip) {
            None => missing.push(format!("{host}: not an etcd member yet")),
            Some(m) if !m.started() => {
                missing.push(format!("{host}: etcd member added, not started yet"))
            }
            Some(m) if m.is_learner => missing.push(format!(
                "{host}: etcd learner, not yet promoted to a voting member"
            )),
            Some(_) => {}
        }
    }
    for m in members {
        if !want.servers.iter().any(|(h, ip)| m.is(h, *ip)) {
            notes.push(format!(
                "etcd member {} ({}) is no server of the inventory: a replaced server's old \
                 member? remove it (etcdctl member remove {:x})",
                if m.name.is_empty() {
                    "unnamed".to_string()
                } else {
                    printable(&m.name, 64)
                },
                printable(
                    m.peer_urls.first().map_or("no peer URL", String::as_str),
                    80
                ),
                m.id
            ));
        }
    }
    for host in &want.nodes {
        match nodes.iter().find(|n| n.name == *host) {
            None => missing.push(format!("{host}: not registered with the API server yet")),
            Some(n) => match &n.ready {
                Readiness::Ready => {}
                Readiness::NotReady(why) => missing.push(format!("{host}: not Ready ({why})")),
                Readiness::NoCondition => {
                    missing.push(format!("{host}: registered, no Ready condition yet"))
                }
            },
        }
    }
    verdict(want, nodes.iter().map(|n| n.name.as_str()), missing, notes)
}

/// The decision over a server's `cluster` report (`images::bundle::cluster`): every server
/// annotated by k3s as an embedded-etcd member, every node `Ready`. What k3s's annotation
/// cannot show (a learner, an unstarted member) is the etcdctl path's ([`decide`]); a cut
/// report never counts a node it left out as there.
pub fn decide_report(want: &Expected, r: &ClusterReport) -> Verdict {
    use images::bundle::cluster::Ready;
    let mut missing = Vec::new();
    let find = |h: &str| r.nodes.iter().find(|n| n.name == h);
    let why_absent = |h: &str| {
        if r.cut() {
            format!(
                "{h}: not in the report (it lists {} of {} nodes: cut at the note limit)",
                r.nodes.len(),
                r.count
            )
        } else {
            format!("{h}: not registered with the API server yet")
        }
    };
    for (host, _) in &want.servers {
        match find(host) {
            Some(n) if !n.etcd => missing.push(format!(
                "{host}: no embedded-etcd member yet (k3s has not annotated its node)"
            )),
            Some(_) => {}
            None => missing.push(why_absent(host)),
        }
    }
    for host in &want.nodes {
        match find(host).map(|n| n.ready) {
            Some(Ready::True) => {}
            Some(Ready::False) => missing.push(format!("{host}: not Ready (Ready=False)")),
            Some(Ready::Unknown) => missing.push(format!("{host}: not Ready (Ready=Unknown)")),
            Some(Ready::None) => {
                missing.push(format!("{host}: registered, no Ready condition yet"))
            }
            None if want.servers.iter().any(|(h, _)| h == host) && find(host).is_none() => {}
            None => missing.push(why_absent(host)),
        }
    }
    verdict(
        want,
        r.nodes.iter().map(|n| n.name.as_str()),
        missing,
        Vec::new(),
    )
}

/// Both checks end alike: ready when nothing is missing, with a note for each node the cluster
/// has and the inventory does not.
fn verdict<'a>(
    want: &Expected,
    seen: impl Iterator<Item = &'a str>,
    missing: Vec<String>,
    mut notes: Vec<String>,
) -> Verdict {
    if !missing.is_empty() {
        return Verdict::NotYet(missing);
    }
    notes.extend(
        seen.filter(|n| !want.nodes.iter().any(|w| w == n))
            .map(|n| format!("node {n} is no k3s node of the inventory (kubectl delete node {n})")),
    );
    Verdict::Ready { notes }
}

/// The newest `cluster` report among timeline notes `(at_ms, detail)` (of all servers).
pub fn newest_report<'a>(
    notes: impl IntoIterator<Item = (u64, &'a str)>,
) -> Option<(u64, ClusterReport)> {
    notes
        .into_iter()
        .filter_map(|(at, d)| {
            d.starts_with(images::bundle::cluster::NOTE_KIND)
                .then(|| images::bundle::cluster::parse(d))
                .flatten()
                .map(|r| (at, r))
        })
        .max_by_key(|(at, _)| *at)
}

/// Whether the lab's nodes can install k3s at all, so a cluster check means something: they
/// fetch it from the internet (only through `lab up --nat`) or from the inventory's air-gap kit
/// (its files must exist). `Err`: why the check stops at first boot.
pub fn can_install_k3s(nat: bool, airgap: Option<&[(&str, bool)]>) -> Result<(), String> {
    match airgap {
        Some(files) => {
            let gone: Vec<&str> = files
                .iter()
                .filter(|(_, present)| !present)
                .map(|(p, _)| *p)
                .collect();
            if gone.is_empty() {
                Ok(())
            } else if nat {
                // The kit is what the seed installs from; with it broken, NAT does not help.
                Err(format!(
                    "the air-gap kit's files are missing: {}",
                    gone.join(", ")
                ))
            } else {
                Err(format!(
                    "no internet in the lab (lab up without --nat) and the air-gap kit's files \
                     are missing: {}",
                    gone.join(", ")
                ))
            }
        }
        None if nat => Ok(()),
        None => Err(
            "no internet in the lab (lab up without --nat) and no air-gap kit in the inventory \
             (cluster.k3s.airgap): the nodes boot, k3s cannot be installed"
                .into(),
        ),
    }
}

/// The line `lab up`/`lab apply` end with when the check cannot run: never a "ready".
pub fn stopped_at_first_boot(why: &str) -> String {
    format!("cluster check stopped at first boot: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &[u8] = include_bytes!("../../testdata/lab/etcd-members-3.json");
    const LEARNER: &[u8] = include_bytes!("../../testdata/lab/etcd-members-unstarted-learner.json");
    const NODES: &[u8] = include_bytes!("../../testdata/lab/kubectl-nodes.json");

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    fn three_servers() -> Expected {
        Expected {
            servers: ["m1", "m2", "m3"].map(|h| (h.to_string(), LO)).to_vec(),
            nodes: vec![],
        }
    }

    #[test]
    fn parses_a_real_member_list() {
        let m = parse_members(THREE).unwrap();
        assert_eq!(m.len(), 3);
        let m1 = m.iter().find(|m| m.name == "m1").unwrap();
        assert_eq!(m1.id, 6760758810034866226, "IDs above 2^53 survive");
        assert_eq!(m1.peer_ip(), Some(LO));
        assert!(m1.started() && !m1.is_learner);
    }

    #[test]
    fn three_started_voters_are_ready() {
        let m = parse_members(THREE).unwrap();
        assert_eq!(
            decide(&three_servers(), &m, &[]),
            Verdict::Ready { notes: vec![] }
        );
    }

    /// A joining server shows first as an unnamed, unstarted learner: not yet, and an
    /// inventory server that is no member at all is named.
    #[test]
    fn an_unstarted_learner_is_not_yet_a_member() {
        let m = parse_members(LEARNER).unwrap();
        let learner = m.iter().find(|m| m.is_learner).unwrap();
        assert!(!learner.started());
        let mut want = three_servers();
        want.servers.push(("m4".into(), LO));
        let Verdict::NotYet(why) = decide(&want, &m, &[]) else {
            panic!("ready with a learner")
        };
        // All fixture members share 127.0.0.1: m1..m3 are found by name first, m4 (unnamed)
        // by its address.
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with("m4: etcd member added, not started"),
            "{why:?}"
        );
    }

    #[test]
    fn k3s_member_names_match_their_host_and_nothing_longer() {
        let m = EtcdMember {
            id: 1,
            name: "k3s-master1-5d2a7f3c".into(),
            peer_urls: vec!["https://10.0.20.11:2380".into()],
            client_urls: vec!["https://10.0.20.11:2379".into()],
            is_learner: false,
        };
        let ip = Ipv4Addr::new(10, 0, 20, 11);
        assert!(m.is("k3s-master1", ip));
        assert!(!m.is("k3s", ip), "a prefix of the name is another host");
        assert!(!m.is("k3s-master", ip));
        assert_eq!(m.peer_ip(), Some(ip));
    }

    #[test]
    fn a_member_of_no_server_is_a_note_with_its_id_in_hex() {
        let mut m = parse_members(THREE).unwrap();
        m[0].name = "old-server-0badc0de".into();
        let mut want = three_servers();
        want.servers.retain(|(h, _)| h != "m2");
        let Verdict::Ready { notes } = decide(&want, &m, &[]) else {
            panic!()
        };
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("member remove 27854e79475873b9"),
            "{notes:?}"
        );
    }

    #[test]
    fn nodes_ready_not_ready_and_unknown() {
        let n = parse_nodes(NODES).unwrap();
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].name, "k3s-master1");
        assert_eq!(n[0].ready, Readiness::Ready);
        assert_eq!(n[0].internal_ip, Some(Ipv4Addr::new(10, 0, 20, 11)));
        assert!(
            matches!(&n[2].ready, Readiness::NotReady(w) if w.contains("cni plugin not initialized"))
        );
        assert!(matches!(&n[3].ready, Readiness::NotReady(w) if w.starts_with("Ready=Unknown")));
        let want = Expected {
            servers: vec![],
            nodes: ["k3s-master1", "k3s-master2", "k3s-master3", "k3s1", "k3s2"]
                .map(String::from)
                .to_vec(),
        };
        let Verdict::NotYet(why) = decide(&want, &[], &n) else {
            panic!()
        };
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].starts_with("k3s-master3: not registered"));
        assert!(why[1].starts_with("k3s1: not Ready"));
        assert!(why[2].starts_with("k3s2: not Ready (Ready=Unknown"));
        let ready = Expected {
            servers: vec![],
            nodes: vec!["k3s-master1".into(), "k3s-master2".into()],
        };
        let two: Vec<KubeNode> = n[..2].to_vec();
        assert_eq!(decide(&ready, &[], &two), Verdict::Ready { notes: vec![] });
    }

    /// Protects the bound on what a cluster's API may make builder parse, and terminals from
    /// what it returns.
    #[test]
    fn oversized_and_hostile_lists_are_bounded() {
        let big = vec![b' '; MAX_LIST_BYTES + 1];
        assert!(matches!(
            parse_members(&big),
            Err(ClusterError::TooBig { .. })
        ));
        assert!(matches!(
            parse_nodes(&big),
            Err(ClusterError::TooBig { .. })
        ));
        let evil = br#"{"items":[{"metadata":{"name":"x\u001b[2J"},"status":{"conditions":[{"type":"Ready","status":"False","reason":"\u001b]0;t\u0007","message":"m"}]}}]}"#;
        let n = parse_nodes(evil).unwrap();
        let text = format!("{n:?}");
        assert!(!n[0].name.contains('\x1b'));
        assert!(
            !text.contains("\\u{1b}") && !text.contains("\\u{7}"),
            "{text}"
        );
        assert!(matches!(
            parse_nodes(b"[]"),
            Err(ClusterError::Parse { .. })
        ));
    }

    #[test]
    fn without_internet_or_air_gap_kit_the_check_stops_at_first_boot() {
        let e = can_install_k3s(false, None).unwrap_err();
        assert!(
            e.contains("no internet") && e.contains("no air-gap kit"),
            "{e}"
        );
        assert!(stopped_at_first_boot(&e).starts_with("cluster check stopped at first boot: "));
        assert_eq!(can_install_k3s(true, None), Ok(()));
        assert_eq!(can_install_k3s(false, Some(&[("k3s", true)])), Ok(()));
        let e =
            can_install_k3s(true, Some(&[("k3s", true), ("/kit/images.tar", false)])).unwrap_err();
        assert!(e.contains("/kit/images.tar"), "{e}");
    }

    fn want_report() -> Expected {
        Expected {
            servers: vec![("s1".into(), LO)],
            nodes: vec!["s1".into(), "a1".into()],
        }
    }

    #[test]
    fn a_report_decides_ready_only_with_every_server_in_etcd_and_every_node_ready() {
        let p = |d: &str| images::bundle::cluster::parse(d).unwrap();
        assert_eq!(
            decide_report(&want_report(), &p("cluster: 2 s1:True:e a1:True:-")),
            Verdict::Ready { notes: vec![] }
        );
        let Verdict::NotYet(why) =
            decide_report(&want_report(), &p("cluster: 2 s1:True:- a1:False:-"))
        else {
            panic!()
        };
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with("s1: no embedded-etcd member"), "{why:?}");
        assert!(why[1].starts_with("a1: not Ready (Ready=False)"), "{why:?}");
        let Verdict::NotYet(why) = decide_report(&want_report(), &p("cluster: 1 s1:True:e")) else {
            panic!()
        };
        assert_eq!(why, ["a1: not registered with the API server yet"]);
        // An old node left from a rebuild is a note, not a reason to wait.
        let Verdict::Ready { notes } = decide_report(
            &want_report(),
            &p("cluster: 3 s1:True:e a1:True:- old:False:-"),
        ) else {
            panic!()
        };
        assert!(notes[0].contains("kubectl delete node old"), "{notes:?}");
    }

    /// Protects against a cut or hostile report reading as a ready cluster: a node the report
    /// left out is missing, named as cut; escapes and oversized entries never count.
    #[test]
    fn a_cut_or_hostile_report_is_never_ready() {
        let p = |d: &str| images::bundle::cluster::parse(d).unwrap();
        let Verdict::NotYet(why) = decide_report(&want_report(), &p("cluster: 2 s1:True:e a1:Tr"))
        else {
            panic!()
        };
        assert!(why[0].contains("cut at the note limit"), "{why:?}");
        let evil = format!(
            "cluster: 2 s1:True:e a1\x1b[2J:True:- {}:True:-",
            "a".repeat(300)
        );
        assert!(matches!(
            decide_report(&want_report(), &p(&evil)),
            Verdict::NotYet(_)
        ));
        let newest = newest_report([
            (5, "cluster: 1 s1:True:e"),
            (9, "data-disk: x"),
            (7, "cluster: 2 s1:True:e a1:True:-"),
        ])
        .unwrap();
        assert_eq!(newest.0, 7);
    }
}
