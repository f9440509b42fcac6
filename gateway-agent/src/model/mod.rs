//! The desired state of THIS node, computed from the validated objects: VIP allocation
//! (IPAM), selectors, node-local backends and which VIPs to announce on which interface.
//! Pure functions only: no kernel, no clock, no I/O.

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::{Config, ConfigErrors, ConfigWarning, Diagnostics, L2Policy, ObjectRef};

mod announce;
mod election;
mod frontends;
mod ipam;
mod selector;

pub use election::announcer_score;
pub use selector::{SERVICE_NAME_PSEUDO_LABEL, SERVICE_NAMESPACE_PSEUDO_LABEL};

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TrafficPolicy {
    Local,
    Cluster,
}

/// One backend of a frontend; its protocol is the frontend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One service port on its VIP, with the backends this node sends it to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Frontend {
    pub service: ObjectRef,
    /// `spec.ports[].name` (may be empty).
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// `Some(seconds)` when `sessionAffinity: ClientIP`.
    pub affinity_timeout_secs: Option<u32>,
    /// Ready endpoints on this node, sorted and deduplicated. May be empty: the VIP is then
    /// still programmed so stray traffic is dropped and counted instead of forwarded.
    pub backends: Vec<BackendAddr>,
}

/// This node answers ARP for `vip` on `interface`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Announcement {
    pub interface: String,
    pub vip: Ipv4Addr,
    pub service: ObjectRef,
    /// The CiliumL2AnnouncementPolicy that selected the service.
    pub policy: String,
}

/// The VIP of every LoadBalancer service, and who announces it (cluster-wide view).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Allocation {
    pub service: ObjectRef,
    pub vip: Ipv4Addr,
    /// The CiliumLoadBalancerIPPool the VIP belongs to.
    pub pool: String,
    /// Requested through `spec.loadBalancerIP` or `lbipam.cilium.io/ips`.
    pub requested: bool,
    pub traffic_policy: TrafficPolicy,
    /// The node elected to answer ARP for this VIP, if any node is eligible.
    pub announcer: Option<String>,
}

/// Everything the datapath needs for this node, plus what `check` and `status` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DesiredState {
    /// Sorted by (vip, port, protocol).
    pub frontends: Vec<Frontend>,
    /// Sorted by (interface, vip).
    pub announcements: Vec<Announcement>,
    /// Sorted by service (namespace, name).
    pub allocations: Vec<Allocation>,
    /// Non-fatal findings, each naming the object (e.g. Cluster services not programmed).
    pub warnings: Vec<String>,
}

/// The cluster-wide view every node computes identically from the same file: what `check`
/// reports without a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterState {
    /// Sorted by service (namespace, name).
    pub allocations: Vec<Allocation>,
    /// The file's warnings and the model's, sorted.
    pub warnings: Vec<String>,
}

/// Allocates every LoadBalancer service's VIP and elects its announcer. Errors: VIP
/// conflicts, requested VIPs no pool grants, exhausted pools, services selected by more than
/// one L2 policy; all of them, not just the first.
pub fn cluster_state(config: &Config) -> Result<ClusterState, ConfigErrors> {
    let cluster = Cluster::compute(config)?;
    Ok(ClusterState {
        allocations: cluster.entries.into_iter().map(|e| e.allocation).collect(),
        warnings: render(&config.warnings, &cluster.warnings),
    })
}

/// What `node_name` must serve and announce. `interfaces` are the node's interface names,
/// which the announcing policy's regexes pick from. Fails like [`cluster_state`].
pub fn desired_state(
    config: &Config,
    node_name: &str,
    interfaces: &[String],
) -> Result<DesiredState, ConfigErrors> {
    let Cluster {
        entries,
        warnings: mut model_warnings,
    } = Cluster::compute(config)?;
    let mut diagnostics = Diagnostics::new(&config.source);
    if !config.nodes.iter().any(|node| node.name == node_name) {
        diagnostics.warn(
            Some(&ObjectRef::cluster_scoped(
                crate::config::Node::KIND,
                node_name,
            )),
            "",
            "this node is not among the Node objects of the file: it announces nothing",
        );
    }

    let mut frontends = Vec::new();
    let mut announcements = Vec::new();
    for entry in &entries {
        if entry.allocation.traffic_policy != TrafficPolicy::Local {
            continue;
        }
        frontends.extend(frontends::frontends(
            config,
            entry.service,
            entry.allocation.vip,
            node_name,
            &mut diagnostics,
        ));
        if let Some(policy) = entry.policy
            && entry.allocation.announcer.as_deref() == Some(node_name)
        {
            announcements.extend(announce::interfaces(policy, interfaces).map(|interface| {
                Announcement {
                    interface: interface.to_owned(),
                    vip: entry.allocation.vip,
                    service: entry.service.object.clone(),
                    policy: policy.name.clone(),
                }
            }));
        }
    }
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
    announcements.sort();
    model_warnings.extend(diagnostics.into_result()?);

    Ok(DesiredState {
        frontends,
        announcements,
        allocations: entries.into_iter().map(|e| e.allocation).collect(),
        warnings: render(&config.warnings, &model_warnings),
    })
}

/// One allocated service with what the node-specific part needs.
struct Entry<'c> {
    service: &'c crate::config::Service,
    allocation: Allocation,
    /// The L2 policy announcing the VIP (Local services only).
    policy: Option<&'c L2Policy>,
}

struct Cluster<'c> {
    entries: Vec<Entry<'c>>,
    warnings: Vec<ConfigWarning>,
}

impl<'c> Cluster<'c> {
    fn compute(config: &'c Config) -> Result<Self, ConfigErrors> {
        let mut diagnostics = Diagnostics::new(&config.source);
        let grants = ipam::allocate(config, &mut diagnostics);
        let mut entries = Vec::new();
        for grant in grants {
            let service = grant.service;
            // Checked for every service: two policies selecting one is wrong whatever its
            // traffic policy.
            let policy = announce::policy_for(config, service, &mut diagnostics);
            let (policy, announcer) = match service.traffic_policy {
                TrafficPolicy::Local => {
                    let announcer = match policy {
                        Some(policy) => election::announcer(
                            config,
                            service,
                            grant.vip,
                            policy,
                            &mut diagnostics,
                        ),
                        None => {
                            diagnostics.warn(
                                Some(&service.object),
                                "",
                                format!(
                                    "no CiliumL2AnnouncementPolicy with loadBalancerIPs: true \
                                     selects this service: VIP {} is not announced",
                                    grant.vip
                                ),
                            );
                            None
                        }
                    };
                    (policy, announcer)
                }
                TrafficPolicy::Cluster => {
                    diagnostics.warn(
                        Some(&service.object),
                        "spec.externalTrafficPolicy",
                        "Cluster is not supported yet, the service is not programmed: Cluster \
                         SNATs and loses the client source IP; use Local",
                    );
                    (None, None)
                }
            };
            entries.push(Entry {
                service,
                allocation: Allocation {
                    service: service.object.clone(),
                    vip: grant.vip,
                    pool: grant.pool.name.clone(),
                    requested: grant.requested,
                    traffic_policy: service.traffic_policy,
                    announcer: announcer.map(|node| node.name.clone()),
                },
                policy,
            });
        }
        let warnings = diagnostics.into_result()?;
        Ok(Self { entries, warnings })
    }
}

/// The file's and the model's warnings as sorted lines.
fn render(config: &[ConfigWarning], model: &[ConfigWarning]) -> Vec<String> {
    let mut lines: Vec<String> = config
        .iter()
        .chain(model)
        .map(ToString::to_string)
        .collect();
    lines.sort();
    lines.dedup();
    lines
}
