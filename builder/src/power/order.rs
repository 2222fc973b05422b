//! The order `builder provision` powers machines in, as a pure function of the inventory and
//! the states pxe reports: the bootstrap server first (it creates the cluster; everyone else
//! joins through it), wait until it is `booted`, then the other servers (etcd quorum before
//! workloads), then agents and the NFS host.

use crate::inventory::model::Role;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub role: Role,
    pub bootstrap: bool,
    /// A power driver other than `manual` is configured.
    pub powered: bool,
    /// pxe's state for it (`armed`, `installing`, `booted`, …); `None`: pxe does not know it.
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// One-time network boot, then power on / cycle.
    Power,
    /// No power control: the operator is told to power it on now.
    Operator,
    /// Already on its way (installing, installed): only wait.
    Wait,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub label: &'static str,
    pub start: Vec<(String, Start)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Run in order; each stage's nodes must all be `booted` before the next stage starts.
    pub stages: Vec<Stage>,
    /// Already booted: nothing to do (re-running provision is a no-op for them).
    pub skipped: Vec<String>,
    /// Not armed (nor on the way): powering them would boot whatever is on their disk, or a
    /// network boot pxe answers with nothing. Provision refuses to run while there are any.
    pub refused: Vec<(String, String)>,
}

pub fn plan(nodes: &[Candidate]) -> Plan {
    let mut p = Plan::default();
    let mut bootstrap = Vec::new();
    let mut servers = Vec::new();
    let mut rest = Vec::new();
    for n in nodes {
        let start = match n.state.as_deref() {
            Some("booted") => {
                p.skipped.push(n.name.clone());
                continue;
            }
            Some("installing" | "booting" | "installed") => Start::Wait,
            Some("armed") if n.powered => Start::Power,
            Some("armed") => Start::Operator,
            other => {
                p.refused.push((
                    n.name.clone(),
                    format!(
                        "pxe reports it {}, not armed",
                        other.unwrap_or("unknown (not in the bundle pxe serves)")
                    ),
                ));
                continue;
            }
        };
        let entry = (n.name.clone(), start);
        match (n.role, n.bootstrap) {
            (Role::Server, true) => bootstrap.push(entry),
            (Role::Server, false) => servers.push(entry),
            _ => rest.push(entry),
        }
    }
    for (label, start) in [
        ("bootstrap server", bootstrap),
        ("servers", servers),
        ("agents and nfs", rest),
    ] {
        if !start.is_empty() {
            p.stages.push(Stage { label, start });
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, role: Role, bootstrap: bool, powered: bool, state: &str) -> Candidate {
        Candidate {
            name: name.into(),
            role,
            bootstrap,
            powered,
            state: (!state.is_empty()).then(|| state.into()),
        }
    }

    fn names(s: &Stage) -> Vec<&str> {
        s.start.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn bootstrap_first_then_servers_then_agents_and_nfs() {
        // Inventory order deliberately mixed: the order comes from roles, not from the file.
        let p = plan(&[
            c("w1", Role::Agent, false, true, "armed"),
            c("s2", Role::Server, false, true, "armed"),
            c("nas", Role::Nfs, false, true, "armed"),
            c("s1", Role::Server, true, true, "armed"),
            c("s3", Role::Server, false, false, "armed"),
        ]);
        assert!(p.refused.is_empty() && p.skipped.is_empty());
        let got: Vec<_> = p.stages.iter().map(|s| (s.label, names(s))).collect();
        assert_eq!(
            got,
            vec![
                ("bootstrap server", vec!["s1"]),
                ("servers", vec!["s2", "s3"]),
                ("agents and nfs", vec!["w1", "nas"]),
            ]
        );
        assert_eq!(
            p.stages[1].start[1].1,
            Start::Operator,
            "no power control: ask"
        );
        assert_eq!(p.stages[0].start[0].1, Start::Power);
    }

    #[test]
    fn booted_nodes_are_skipped_and_in_flight_ones_only_waited_for() {
        let p = plan(&[
            c("s1", Role::Server, true, true, "booted"),
            c("s2", Role::Server, false, true, "installing"),
            c("w1", Role::Agent, false, true, "armed"),
        ]);
        assert_eq!(p.skipped, vec!["s1"]);
        assert_eq!(
            p.stages.len(),
            2,
            "no bootstrap stage when it is already booted"
        );
        assert_eq!(p.stages[0].start, vec![("s2".into(), Start::Wait)]);
        assert_eq!(p.stages[1].start, vec![("w1".into(), Start::Power)]);
    }

    #[test]
    fn nodes_not_armed_are_refused() {
        let p = plan(&[
            c("s1", Role::Server, true, true, "disarmed"),
            c("w1", Role::Agent, false, true, ""),
            c("w2", Role::Agent, false, true, "failed"),
        ]);
        let r: Vec<&str> = p.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(r, vec!["s1", "w1", "w2"]);
        assert!(p.refused[0].1.contains("disarmed"));
        assert!(p.stages.is_empty());
    }
}
