//! The desired state of THIS node, computed from the validated objects: VIP allocation
//! (IPAM), selectors, node-local backends and which VIPs to announce on which interface.
//! Pure functions only: no kernel, no clock, no I/O.

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::{
    Config, ConfigErrors, ConfigWarning, Diagnostics, L2Policy, Node, ObjectRef, Service,
};

mod announce;
mod election;
mod frontends;
mod ipam;
pub(crate) mod selector;

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
            Some(&ObjectRef::cluster_scoped(Node::KIND, node_name)),
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
    service: &'c Service,
    allocation: Allocation,
    /// The L2 policy announcing the VIP, if one selects the service.
    policy: Option<&'c L2Policy>,
}

/// What every node computes alike: allocations, policies, announcers.
struct Cluster<'c> {
    entries: Vec<Entry<'c>>,
    warnings: Vec<ConfigWarning>,
}

impl<'c> Cluster<'c> {
    fn compute(config: &'c Config) -> Result<Self, ConfigErrors> {
        let mut diagnostics = Diagnostics::new(&config.source);
        let mut entries = Vec::new();
        for grant in ipam::allocate(config, &mut diagnostics) {
            let service = grant.service;
            // Checked for Cluster services too: two policies selecting one is wrong whatever
            // its traffic policy.
            let policy = announce::policy_for(config, service, &mut diagnostics);
            let announcer = match service.traffic_policy {
                TrafficPolicy::Local => {
                    announcer(config, service, grant.vip, policy, &mut diagnostics)
                }
                TrafficPolicy::Cluster => {
                    diagnostics.warn(
                        Some(&service.object),
                        "spec.externalTrafficPolicy",
                        "Cluster is not supported yet, the service is not programmed: Cluster \
                         SNATs and loses the client source IP; use Local",
                    );
                    None
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

/// The node that announces a Local service's VIP; `None`, with a warning, when no policy
/// selects the service or no node is eligible.
fn announcer<'c>(
    config: &'c Config,
    service: &Service,
    vip: Ipv4Addr,
    policy: Option<&L2Policy>,
    diagnostics: &mut Diagnostics,
) -> Option<&'c Node> {
    let Some(policy) = policy else {
        diagnostics.warn(
            Some(&service.object),
            "",
            format!(
                "no CiliumL2AnnouncementPolicy with loadBalancerIPs: true selects this service: \
                 VIP {vip} is not announced"
            ),
        );
        return None;
    };
    election::announcer(config, service, vip, policy, diagnostics)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;

    const UPLINKS: [&str; 3] = ["lo", "ens18", "cilium_host"];

    fn uplinks() -> Vec<String> {
        UPLINKS.map(String::from).to_vec()
    }

    fn state(text: &str, node: &str) -> DesiredState {
        desired_state(&parse_ok(text), node, &uplinks()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_reference_on_worker_2() {
        let state = state(REFERENCE, "worker-2");
        assert_eq!(state.frontends.len(), 4);
        assert!(state.frontends.iter().all(|f| f.backends
            == [BackendAddr {
                addr: Ipv4Addr::new(10, 0, 2, 10),
                port: if f.port == 80 { 10080 } else { 10443 },
            }]));
        let internal = ObjectRef {
            kind: "Service".into(),
            namespace: "gateway".into(),
            name: "cilium-gateway-gateway-internal".into(),
        };
        assert_eq!(
            state.announcements,
            [Announcement {
                interface: "ens18".into(),
                vip: Ipv4Addr::new(192, 168, 10, 49),
                service: internal.clone(),
                policy: "l2-policy".into(),
            }]
        );
        assert_eq!(
            state.allocations[1],
            Allocation {
                service: internal,
                vip: Ipv4Addr::new(192, 168, 10, 49),
                pool: "first-pool".into(),
                requested: true,
                traffic_policy: TrafficPolicy::Local,
                announcer: Some("worker-2".into()),
            }
        );
        assert_eq!(state.warnings, Vec::<String>::new());
    }

    #[test]
    fn cluster_state_matches_every_node_view() {
        let config = reference();
        let cluster = cluster_state(&config).unwrap_or_else(|e| panic!("{e}"));
        for node in ["cp-1", "worker-1", "worker-2"] {
            let state = desired_state(&config, node, &uplinks()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(state.allocations, cluster.allocations, "{node}");
        }
    }

    #[test]
    fn cluster_services_are_allocated_but_not_programmed() {
        let text = edit(
            REFERENCE,
            "  externalTrafficPolicy: Local\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n\
             \x20   clientIP:\n      timeoutSeconds: 10800\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external",
            "  externalTrafficPolicy: Cluster\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external",
        );
        let state = state(&text, "worker-1");
        let external = &state.allocations[0];
        assert_eq!(external.service.name, "cilium-gateway-gateway-external");
        assert_eq!(external.traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(external.vip, Ipv4Addr::new(192, 168, 10, 50));
        assert_eq!(external.announcer, None);
        assert!(state.frontends.iter().all(|f| f.vip != external.vip));
        assert!(state.announcements.iter().all(|a| a.vip != external.vip));
        assert_eq!(
            state.warnings,
            [
                "objects.yaml: Service/gateway/cilium-gateway-gateway-external: spec.externalTrafficPolicy: \
                 Cluster is not supported yet, the service is not programmed: Cluster SNATs and loses the \
                 client source IP; use Local"
            ]
        );
    }

    #[test]
    fn a_node_missing_from_the_file_announces_nothing() {
        let state = state(REFERENCE, "worker-9");
        assert!(state.announcements.is_empty());
        assert_eq!(state.frontends.len(), 4);
        assert!(state.frontends.iter().all(|f| f.backends.is_empty()));
        assert_line(
            &state.warnings,
            &[
                "objects.yaml: Node/worker-9: this node is not among the Node objects of the file: it announces nothing",
            ],
        );
    }

    #[test]
    fn config_warnings_are_carried() {
        let text = reference_with(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  namespace: y\n",
        );
        assert_line(
            &state(&text, "worker-1").warnings,
            &["Deployment/y/x: skipped"],
        );
        assert_line(
            &cluster_state(&parse_ok(&text))
                .unwrap_or_else(|e| panic!("{e}"))
                .warnings,
            &["Deployment/y/x: skipped"],
        );
    }

    /// A small deterministic generator: the test must fail the same way every run.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    #[test]
    fn document_order_does_not_matter() {
        // The reference plus services allocated in every pass, and a skipped kind.
        let extra = [
            service_doc("web", "dyn-a").local().created("2025-01-02T00:00:00Z").yaml(),
            service_doc("web", "dyn-b").local().created("2025-01-01T00:00:00Z").yaml(),
            service_doc("web", "dyn-c").local().yaml(),
            service_doc("api", "held").local().holds("192.168.10.40").yaml(),
            service_doc("api", "cluster").yaml(),
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: cilium-envoy\n  namespace: kube-system\n"
                .to_owned(),
        ];
        let mut documents: Vec<String> = REFERENCE
            .split("\n---\n")
            .map(|doc| format!("{}\n", doc.trim_end()))
            .collect();
        documents.extend(extra);
        let expected: Vec<DesiredState> = ["cp-1", "worker-1", "worker-2"]
            .iter()
            .map(|node| state(&documents.join("---\n"), node))
            .collect();
        assert_eq!(expected[0].allocations.len(), 7);

        let mut random = XorShift(0x5eed_1234_abcd_ef01);
        for round in 0..25 {
            for i in (1..documents.len()).rev() {
                documents.swap(i, random.below(i + 1));
            }
            let text = documents.join("---\n");
            for (node, expected) in ["cp-1", "worker-1", "worker-2"].iter().zip(&expected) {
                assert_eq!(&state(&text, node), expected, "round {round}, {node}");
            }
        }
    }
}
