//! `gateway-agent check`: judges the objects (the cluster's, or a file's) as `run` would,
//! without touching the kernel, and shows what every Service and pool gets (identical on
//! every node).
//!
//! The same path as `run`: the source (with the same `--load-balancer-class`es) into a
//! store, the model for each node (the one named, or every Node object of the objects), and
//! the plan's full target for that node's state at the same map sizes, which is where `run`
//! refuses a state that does not fit its maps. So whatever `run` would refuse or skip,
//! `check` reports, and both follow one exit status rule ([`Verdict`]):
//!
//! | status | verdict | meaning |
//! | --- | --- | --- |
//! | 0 | valid | everything is served (info findings at most) |
//! | 1 | served in part | some objects, or parts of them, are not served: each warning or error finding says which and why |
//! | 2 | refused | the file does not parse (or the cluster cannot be read), or the state does not fit the maps: nothing of it is served (`run` keeps what it served before, or does not start) |

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::table::Table;
use crate::{
    capacity::Capacity,
    config::{Config, ConfigErrors, Finding, LoadBalancerClasses, Severity},
    model::{self, ClusterState, Frontend, PoolStatus, ServiceStatus},
    plan::{self, MapState, PlanError},
    source::Origin,
};

/// What `check` and `run` make of a read, and the exit status it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Valid,
    ServedInPart,
    Refused,
}

impl Verdict {
    /// A read that was not refused, by its findings: any warning or error means something
    /// is not served.
    pub fn of(findings: &[Finding]) -> Self {
        if findings.iter().any(|f| f.severity > Severity::Info) {
            Verdict::ServedInPart
        } else {
            Verdict::Valid
        }
    }

    /// A command's failure: `Refused` when the objects were (the file does not parse, or
    /// its state does not fit the maps), `None` for any other failure.
    pub fn of_error(error: &anyhow::Error) -> Option<Self> {
        let refused = error.downcast_ref::<ConfigErrors>().is_some()
            || error.downcast_ref::<PlanError>().is_some();
        refused.then_some(Verdict::Refused)
    }

    pub fn exit_status(self) -> u8 {
        match self {
            Verdict::Valid => 0,
            Verdict::ServedInPart => 1,
            Verdict::Refused => 2,
        }
    }
}

/// What `check` was told.
pub struct Check<'a> {
    pub origin: &'a Origin,
    pub node: Option<&'a str>,
    pub classes: LoadBalancerClasses,
    pub capacity: Capacity,
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    verdict: Verdict,
    /// What refuses the file (empty unless refused).
    errors: Vec<String>,
    /// What was found about the objects, the file's and every node's, sorted.
    findings: Vec<Finding>,
    services: Vec<ServiceStatus>,
    pools: Vec<PoolStatus>,
    node: Option<&'a str>,
    /// What `node` serves.
    frontends: Vec<Frontend>,
}

pub fn run(check: &Check<'_>) -> Result<ExitCode> {
    let loaded = check.origin.load(check.classes.clone());
    let file = match &loaded {
        Ok(config) => config.source.clone(),
        Err(errors) => errors.0.first().map(|e| e.file.clone()).unwrap_or_default(),
    };
    let judged = loaded
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        .and_then(|config| judge(&config, check).map_err(|e| vec![format!("{file}: {e}")]));
    let report = match judged {
        Ok((cluster, findings, frontends)) => Report {
            verdict: Verdict::of(&findings),
            file,
            errors: Vec::new(),
            findings,
            services: cluster.services,
            pools: cluster.pools,
            node: check.node,
            frontends,
        },
        Err(errors) => Report {
            file,
            verdict: Verdict::Refused,
            errors,
            findings: Vec::new(),
            services: Vec::new(),
            pools: Vec::new(),
            node: check.node,
            frontends: Vec::new(),
        },
    };
    if check.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        render(&report);
    }
    Ok(ExitCode::from(report.verdict.exit_status()))
}

/// The cluster-wide state, every finding (the file's, and each node's model and plan), and
/// the frontends of the node asked about.
fn judge(
    config: &Config,
    check: &Check<'_>,
) -> Result<(ClusterState, Vec<Finding>, Vec<Frontend>), PlanError> {
    let cluster = model::cluster_state(config);
    let mut findings: BTreeSet<Finding> = cluster.findings.iter().cloned().collect();
    let nodes: Vec<&str> = match check.node {
        Some(node) => vec![node],
        None => config.nodes.iter().map(|node| node.name.as_str()).collect(),
    };
    let mut frontends = Vec::new();
    for node in nodes {
        // No interfaces: `check` judges the objects, not this machine.
        let desired = model::desired_state(config, node, &[]);
        plan::target(&desired, &[], &MapState::default(), &check.capacity)?;
        findings.extend(desired.findings);
        if check.node.is_some() {
            frontends = desired.frontends;
        }
    }
    Ok((cluster, findings.into_iter().collect(), frontends))
}

fn render(report: &Report<'_>) {
    if report.verdict == Verdict::Refused {
        for error in &report.errors {
            eprintln!("{error}");
        }
        eprintln!("{}: refused: nothing of it is served", report.file);
        return;
    }
    for f in &report.findings {
        eprintln!("{}: {f} ({})", f.severity, f.reason);
    }
    match report.verdict {
        Verdict::Valid => println!("{}: valid", report.file),
        _ => {
            let count = |severity| {
                report
                    .findings
                    .iter()
                    .filter(|f| f.severity == severity)
                    .count()
            };
            println!(
                "{}: served in part: {} errors, {} warnings (objects or parts of them not served, \
                 each named above)",
                report.file,
                count(Severity::Error),
                count(Severity::Warning)
            );
        }
    }
    let mut t = Table::new(vec![
        "SERVICE",
        "VIP",
        "POOL",
        "POLICY",
        "ANNOUNCER",
        "IPAM",
    ]);
    for s in &report.services {
        let name = format!("{}/{}", s.service.namespace, s.service.name);
        let policy = format!("{:?}", s.traffic_policy);
        let ipam = if s.satisfied && s.message.is_empty() {
            s.reason.to_string()
        } else {
            format!("{}: {}", s.reason, s.message)
        };
        if s.vips.is_empty() {
            t.row(vec![name, "-".into(), "-".into(), policy, "-".into(), ipam]);
            continue;
        }
        for v in &s.vips {
            let mut vip = v.vip.to_string();
            if v.requested {
                vip.push_str(" (requested)");
            }
            if !v.shared_with.is_empty() {
                vip.push_str(" (shared)");
            }
            t.row(vec![
                name.clone(),
                vip,
                v.pool.to_string(),
                policy.clone(),
                v.announcer.as_deref().unwrap_or("-").to_owned(),
                ipam.clone(),
            ]);
        }
    }
    print!("{}", t.render());
    if !report.pools.is_empty() {
        println!();
        let mut t = Table::new(vec![
            "POOL",
            "DISABLED",
            "CONFLICTING",
            "IPS AVAILABLE",
            "USED",
        ]);
        for p in &report.pools {
            t.row(vec![
                p.pool.to_string(),
                p.disabled.to_string(),
                if p.conflict.is_some() {
                    "True"
                } else {
                    "False"
                }
                .into(),
                p.available.to_string(),
                p.used.to_string(),
            ]);
        }
        print!("{}", t.render());
    }
    if let Some(node) = report.node {
        println!("\nnode {node} serves:");
        let mut t = Table::new(vec!["FRONTEND", "SERVICE", "AFFINITY", "LOCAL BACKENDS"]);
        for f in &report.frontends {
            t.row(vec![
                format!("{}:{}/{:?}", f.vip, f.port, f.protocol).to_uppercase(),
                format!("{}/{}", f.service.namespace, f.service.name),
                f.affinity_timeout_secs
                    .map_or("-".into(), |s| format!("ClientIP {s}s")),
                if f.backends.is_empty() {
                    "(none)".into()
                } else {
                    f.backends
                        .iter()
                        .map(|b| format!("{}:{}", b.addr, b.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]);
        }
        print!("{}", t.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ObjectRef, Reason};

    fn finding(severity: Severity) -> Finding {
        Finding {
            file: "f.yaml".into(),
            object: Some(ObjectRef::cluster_scoped("Node", "n")),
            field: String::new(),
            message: "m".into(),
            reason: Reason::NodeNotFound,
            severity,
        }
    }

    #[test]
    fn the_exit_status_rule() {
        assert_eq!(Verdict::of(&[]).exit_status(), 0);
        assert_eq!(Verdict::of(&[finding(Severity::Info)]).exit_status(), 0);
        for worse in [Severity::Warning, Severity::Error] {
            let findings = [finding(Severity::Info), finding(worse)];
            assert_eq!(Verdict::of(&findings), Verdict::ServedInPart);
            assert_eq!(Verdict::of(&findings).exit_status(), 1);
        }
        let refused = anyhow::Error::new(ConfigErrors(Vec::new())).context("reading the file");
        assert_eq!(Verdict::of_error(&refused), Some(Verdict::Refused));
        assert_eq!(Verdict::Refused.exit_status(), 2);
        let plan = anyhow::Error::new(PlanError::Capacity {
            what: "services",
            needed: 2,
            max: 1,
        });
        assert_eq!(Verdict::of_error(&plan), Some(Verdict::Refused));
        assert_eq!(Verdict::of_error(&anyhow::anyhow!("no interface")), None);
    }
}
