//! The desired state of THIS node, computed from the objects the store holds (`Config`):
//! VIP allocation (`ipam`), selectors (`selector`), node-local backends (`frontends`), the
//! announcing policy and its interfaces (`announce`) and the announcing node (`election`).
//! Pure functions only: no kernel, no clock, no I/O.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{
    Config, ConfigError, ConfigErrors, ConfigWarning, Diagnostics, EndpointSlice, L2Policy, Name,
    Node, ObjectRef, Service, ServiceWithSlices,
};
use ipam::Grant;
use rustc_hash::FxBuildHasher;

mod announce;
mod election;
mod frontends;
mod ipam;
pub(crate) mod selector;

// The model's output carries them: its users find them here too.
pub use crate::config::{Protocol, TrafficPolicy};
pub use election::announcer_score;
pub use selector::{SERVICE_NAME_PSEUDO_LABEL, SERVICE_NAMESPACE_PSEUDO_LABEL};

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
    pub port_name: Name,
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
    pub interface: Name,
    pub vip: Ipv4Addr,
    pub service: ObjectRef,
    /// The CiliumL2AnnouncementPolicy that selected the service.
    pub policy: Name,
}

/// The VIP of every LoadBalancer service, and who announces it (cluster-wide view).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Allocation {
    pub service: ObjectRef,
    pub vip: Ipv4Addr,
    /// The CiliumLoadBalancerIPPool the VIP belongs to.
    pub pool: Name,
    /// Requested through `spec.loadBalancerIP` or `lbipam.cilium.io/ips`.
    pub requested: bool,
    pub traffic_policy: TrafficPolicy,
    /// The node elected to answer ARP for this VIP, if any node is eligible.
    pub announcer: Option<Name>,
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
    let mut diagnostics = Diagnostics::new(&config.source);
    let mut allocations = Vec::new();
    for allocated in allocated(config, &mut diagnostics) {
        let grant = &allocated.grant;
        let model = model_service(config, grant.service, allocated.slices, grant.vip, None);
        diagnostics.absorb(model.errors, model.warnings);
        allocations.push(allocation(grant, model.announcer));
    }
    let warnings = diagnostics.into_result()?;
    Ok(ClusterState {
        allocations,
        warnings: render(&config.warnings, &warnings),
    })
}

/// What `node_name` must serve and announce. `interfaces` are the node's interface names,
/// which the announcing policy's regexes pick from. Fails like [`cluster_state`].
pub fn desired_state(
    config: &Config,
    node_name: &str,
    interfaces: &[String],
) -> Result<DesiredState, ConfigErrors> {
    desired_state_cached(config, node_name, interfaces, &mut ModelCache::default())
}

/// Like [`desired_state`], reusing what `cache` holds from an earlier run for every service
/// whose objects are the same ones (the agent keeps one across reloads, next to the store
/// that keeps the `Arc` of every object that did not change).
pub fn desired_state_cached(
    config: &Config,
    node_name: &str,
    interfaces: &[String],
    cache: &mut ModelCache,
) -> Result<DesiredState, ConfigErrors> {
    let common = CommonInputs::of(config, node_name, interfaces);
    if cache.common.as_ref() != Some(&common) {
        cache.services.clear();
    }
    let this_node = ThisNode {
        name: node_name,
        interfaces,
    };
    let mut diagnostics = Diagnostics::new(&config.source);
    let services = config.services.len();
    let (mut frontends, mut announcements, mut allocations) = (
        Vec::with_capacity(services),
        Vec::with_capacity(services),
        Vec::with_capacity(services),
    );
    // The entries are updated where they are: a new map of 10,000 each time (megabytes of
    // fresh pages) cost more than the services that changed.
    for AllocatedService { grant, slices } in allocated(config, &mut diagnostics) {
        let key = Arc::as_ptr(grant.service) as usize;
        let modelled = match cache.services.entry(key) {
            Entry::Occupied(entry) if entry.get().fits(grant.service, slices, grant.vip) => {
                entry.into_mut()
            }
            entry => {
                let model =
                    model_service(config, grant.service, slices, grant.vip, Some(&this_node));
                let modelled = ModelledService {
                    service: Arc::clone(grant.service),
                    slices: slices.to_vec(),
                    vip: grant.vip,
                    allocation: allocation(&grant, model.announcer.clone()),
                    model,
                    used: false,
                };
                match entry {
                    Entry::Occupied(entry) => {
                        let slot = entry.into_mut();
                        *slot = modelled;
                        slot
                    }
                    Entry::Vacant(entry) => entry.insert(modelled),
                }
            }
        };
        modelled.used = true;
        // The pool and the request are the grant's, which may change while the VIP stays.
        if modelled.allocation.pool != grant.pool.name
            || modelled.allocation.requested != grant.requested
        {
            modelled.allocation = allocation(&grant, modelled.model.announcer.clone());
        }
        let model = &modelled.model;
        diagnostics.absorb(model.errors.iter().cloned(), model.warnings.iter().cloned());
        frontends.extend(model.frontends.iter().cloned());
        announcements.extend(model.announcements.iter().cloned());
        allocations.push(modelled.allocation.clone());
    }
    // Only the services of this run stay.
    cache
        .services
        .retain(|_, modelled| std::mem::replace(&mut modelled.used, false));
    cache.common = Some(common);
    if !config.nodes.iter().any(|node| node.name == node_name) {
        diagnostics.warn(
            Some(&ObjectRef::cluster_scoped(Node::KIND, node_name)),
            "",
            "this node is not among the Node objects of the file: it announces nothing",
        );
    }
    let warnings = diagnostics.into_result()?;
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
    announcements.sort();
    Ok(DesiredState {
        frontends,
        announcements,
        allocations,
        warnings: render(&config.warnings, &warnings),
    })
}

/// Per-service results of earlier runs of [`desired_state_cached`]. A service's result is
/// a function of its own objects (the service, its slices, its VIP) and of objects every
/// service depends on (nodes, L2 policies, this node's name and interfaces): it is reused
/// while all of them are the very same `Arc`s, and everything is dropped when one of the
/// latter changes. VIP allocation is global and always runs in full.
#[derive(Default)]
pub struct ModelCache {
    common: Option<CommonInputs>,
    /// By the address of the service's `Arc`, which the entry holds so that no other object
    /// takes that address while the entry lives.
    services: HashMap<usize, ModelledService, FxBuildHasher>,
}

/// What every service's result depends on besides its own objects.
#[derive(PartialEq)]
struct CommonInputs {
    nodes: Vec<ByAddress<Node>>,
    l2_policies: Vec<ByAddress<L2Policy>>,
    node_name: String,
    interfaces: Vec<String>,
}

impl CommonInputs {
    fn of(config: &Config, node_name: &str, interfaces: &[String]) -> Self {
        Self {
            nodes: config.nodes.iter().cloned().map(ByAddress).collect(),
            l2_policies: config.l2_policies.iter().cloned().map(ByAddress).collect(),
            node_name: node_name.to_owned(),
            interfaces: interfaces.to_vec(),
        }
    }
}

/// An object compared by identity: the store keeps the same `Arc` for an object that did
/// not change, and a new one for anything that did.
struct ByAddress<T>(Arc<T>);

impl<T> PartialEq for ByAddress<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A service as last modelled: the objects and VIP it was modelled from, and the result.
struct ModelledService {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    vip: Ipv4Addr,
    /// The service's allocation as of its last grant.
    allocation: Allocation,
    model: ServiceModel,
    /// Found by the current run (the others are dropped at its end).
    used: bool,
}

impl ModelledService {
    /// The entry was made from these very objects and VIP.
    fn fits(&self, service: &Arc<Service>, slices: &[Arc<EndpointSlice>], vip: Ipv4Addr) -> bool {
        Arc::ptr_eq(&self.service, service)
            && self.vip == vip
            && self.slices.len() == slices.len()
            && self
                .slices
                .iter()
                .zip(slices)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// What one allocated service makes of the objects: its announcer and, on a node, its
/// frontends and announcements there, with the findings on the way.
struct ServiceModel {
    announcer: Option<Name>,
    frontends: Vec<Frontend>,
    announcements: Vec<Announcement>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

/// A service that gets a VIP: its grant and its slices.
struct AllocatedService<'c> {
    grant: Grant<'c>,
    slices: &'c [Arc<EndpointSlice>],
}

/// The node the model is computed for.
struct ThisNode<'n> {
    name: &'n str,
    /// Its interfaces' names.
    interfaces: &'n [String],
}

/// Every service that gets a VIP, in service order.
fn allocated<'c>(config: &'c Config, diagnostics: &mut Diagnostics) -> Vec<AllocatedService<'c>> {
    let mut grants = ipam::allocate(config, diagnostics).into_iter().peekable();
    config
        .services_with_slices()
        .filter_map(|ServiceWithSlices { service, slices }| {
            let grant = grants.next_if(|grant| Arc::ptr_eq(grant.service, service))?;
            Some(AllocatedService { grant, slices })
        })
        .collect()
}

fn allocation(grant: &Grant<'_>, announcer: Option<Name>) -> Allocation {
    Allocation {
        service: grant.service.object.clone(),
        vip: grant.vip,
        pool: grant.pool.name.as_str().into(),
        requested: grant.requested,
        traffic_policy: grant.service.traffic_policy,
        announcer,
    }
}

/// The service's part of the model; `node` adds what that node programs and announces.
fn model_service(
    config: &Config,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    vip: Ipv4Addr,
    node: Option<&ThisNode<'_>>,
) -> ServiceModel {
    let mut diagnostics = Diagnostics::new(&config.source);
    // Checked for Cluster services too: two policies selecting one is wrong whatever its
    // traffic policy.
    let policy = announce::policy_for(config, service, &mut diagnostics);
    let announcer = match service.traffic_policy {
        TrafficPolicy::Local => announcer(config, service, slices, vip, policy, &mut diagnostics),
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
    let (mut frontends, mut announcements) = (Vec::new(), Vec::new());
    if let Some(node) = node
        && service.traffic_policy == TrafficPolicy::Local
    {
        frontends = frontends::frontends(service, slices, vip, node.name, &mut diagnostics);
        if let Some(policy) = policy
            && announcer.is_some_and(|announcer| announcer.name == node.name)
        {
            announcements = announce::interfaces(policy, node.interfaces)
                .map(|interface| Announcement {
                    interface: interface.into(),
                    vip,
                    service: service.object.clone(),
                    policy: policy.name.as_str().into(),
                })
                .collect();
        }
    }
    let (errors, warnings) = diagnostics.into_parts();
    ServiceModel {
        announcer: announcer.map(|node| node.name.as_str().into()),
        frontends,
        announcements,
        errors,
        warnings,
    }
}

/// The node that announces a Local service's VIP; `None`, with a warning, when no policy
/// selects the service or no node is eligible.
fn announcer<'c>(
    config: &'c Config,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
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
    election::announcer(config, service, slices, vip, policy, diagnostics)
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
    use crate::source::file::{FileSource, parse};
    use crate::store::Store;

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

    /// Each slot of a file: the versions of one document it may hold ("" for none).
    fn slots() -> Vec<Vec<String>> {
        let mut slots: Vec<Vec<String>> = REFERENCE
            .split("\n---\n")
            .map(|doc| {
                let doc = format!("{}\n", doc.trim_end());
                let mut versions = vec![doc.clone()];
                for (from, to) in [
                    ("status: \"True\"", "status: \"False\""),
                    ("    - ^e.*", "    - ^eth1$"),
                    ("10.0.1.10", "10.0.1.11"),
                    ("ready: true", "ready: false"),
                ] {
                    if doc.contains(from) {
                        versions.push(doc.replacen(from, to, 1));
                    }
                }
                versions
            })
            .collect();
        for i in 0..4 {
            let name = format!("svc-{i}");
            let service = service_doc("web", &name).local();
            slots.push(vec![
                service.yaml(),
                // The same objects a line further down, and what follows too.
                format!("# moved down\n{}", service.yaml()),
                service_doc("web", &name)
                    .local()
                    .requests("192.168.10.40")
                    .yaml(),
                service_doc("web", &name).yaml(),
                String::new(),
            ]);
            let slice = |node: &str, ready: bool| {
                format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-a\n\
                     \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: {name}\n\
                     addressType: IPv4\nendpoints:\n  - addresses: [10.0.{i}.20]\n    nodeName: {node}\n\
                     \x20   conditions:\n      ready: {ready}\nports:\n  - name: http\n    port: 8080\n"
                )
            };
            slots.push(vec![
                slice("worker-1", true),
                // One more endpoint: the usual edit, which moves every line after it.
                slice("worker-1", true).replace(
                    "endpoints:\n",
                    &format!("endpoints:\n  - addresses: [10.0.{i}.21]\n    nodeName: worker-1\n"),
                ),
                slice("worker-2", true),
                slice("worker-1", false),
                String::new(),
            ]);
        }
        slots
    }

    #[test]
    fn reusing_earlier_results_is_the_same_as_starting_over() {
        let slots = slots();
        let interfaces = ["ens18".to_owned(), "eth1".to_owned()];
        let mut random = XorShift(0x0dd_ba11_c0ff_ee00);
        // As the agent keeps them: a refused state is taken back out of the store.
        let source = std::path::Path::new(FILE);
        let (mut source, mut store) = (FileSource::new(source), Store::new(FILE));
        let mut caches = ModelCache::default();
        let mut chosen = vec![0; slots.len()];
        for round in 0..400 {
            // Mostly one document changes, as in a reload; sometimes several.
            for _ in 0..1 + 3 * usize::from(random.chance(5)) {
                let slot = random.below(slots.len());
                chosen[slot] = random.below(slots[slot].len());
            }
            let text: String = chosen
                .iter()
                .zip(&slots)
                .map(|(&v, versions)| versions[v].as_str())
                .filter(|doc| !doc.is_empty())
                .collect::<Vec<_>>()
                .join("---\n");
            let node = ["worker-1", "worker-2"][random.below(2)];
            let update = source.read_text(&text);
            let fresh = parse(FILE, &text);
            let (Ok(update), Ok(fresh)) = (update, fresh) else {
                panic!("round {round}: the file does not parse:\n{text}");
            };
            let Ok(undo) = store.apply(update.batch) else {
                panic!("round {round}: the store refuses the file:\n{text}");
            };
            let cached = desired_state_cached(store.config(), node, &interfaces, &mut caches);
            let expected = desired_state(&fresh, node, &interfaces);
            // Only this run's services are remembered.
            if let Ok(state) = &cached {
                assert_eq!(
                    caches.services.len(),
                    state.allocations.len(),
                    "round {round}"
                );
            }
            let refused = cached.is_err();
            assert_eq!(
                cached.map_err(|e| e.to_string()),
                expected.map_err(|e| e.to_string()),
                "round {round} on {node}:\n{text}"
            );
            if refused {
                store.undo(undo);
            } else {
                source.accept(update.documents);
            }
        }
    }
}
