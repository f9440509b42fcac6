//! The desired state of THIS node, computed from the objects the store holds (`Config`):
//! VIP allocation (`ipam`, over the pools `pools` settles), selectors (`selector`),
//! node-local backends (`frontends`), the announcing policies and their interfaces
//! (`announce`), the announcing node (`election`), and what a status writer puts on the
//! objects (`status`). Pure functions only: no kernel, no clock, no I/O.
//!
//! The model refuses nothing: every object's trouble stays with that object, as a
//! [`Finding`] and, for a Service or pool, in its [`ServiceStatus`] or [`PoolStatus`]. A
//! Service is served on each address it has: the VIPs LB-IPAM granted it, and its
//! `spec.externalIPs` where a policy with `externalIPs: true` selects it. An address
//! several Services share is announced once, by a node eligible for all of them; a port
//! an external IP shares with another Service's is served by the first (LoadBalancer VIPs
//! before external IPs, then the oldest Service) and skipped on the others.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{
    Config, Diagnostics, EndpointSlice, Finding, L2Policy, Name, Node, ObjectRef, Reason, Service,
    ServiceWithSlices, Severity,
};
use announce::AddressKind;
use rustc_hash::FxBuildHasher;

mod announce;
mod election;
mod frontends;
mod ipam;
mod pools;
pub(crate) mod selector;
mod status;

// The model's output carries them: its users find them here too.
pub use crate::config::{Protocol, TrafficPolicy};
pub use election::announcer_score;
pub use selector::{SERVICE_NAME_PSEUDO_LABEL, SERVICE_NAMESPACE_PSEUDO_LABEL};
pub use status::{
    POOL_CONFLICT_CONDITION, POOL_IPS_AVAILABLE_CONDITION, POOL_IPS_TOTAL_CONDITION,
    POOL_IPS_USED_CONDITION, PoolStatus, SERVICE_CONDITION, ServiceStatus, ServiceVip,
};

/// One backend of a frontend; its protocol is the frontend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One service port on one of its addresses (a VIP or an external IP), with the backends
/// this node sends it to.
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
    /// The service on the address (the first, when several share it).
    pub service: ObjectRef,
    /// The CiliumL2AnnouncementPolicy that puts the address on this interface (the first
    /// by name, when several do).
    pub policy: Name,
}

/// Everything the datapath needs for this node, plus what `check`, `status` and a status
/// writer report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DesiredState {
    /// Sorted by (vip, port, protocol).
    pub frontends: Vec<Frontend>,
    /// Sorted by (interface, vip).
    pub announcements: Vec<Announcement>,
    /// Every LoadBalancer Service of a class this agent serves, sorted by (namespace, name):
    /// its VIPs, or why it has none.
    pub services: Vec<ServiceStatus>,
    /// Every pool, by name.
    pub pools: Vec<PoolStatus>,
    /// What the source and the model found, sorted.
    pub findings: Vec<Finding>,
}

/// The cluster-wide view every node computes identically from the same objects: what
/// `check` reports without a node, and what a status writer writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterState {
    pub services: Vec<ServiceStatus>,
    pub pools: Vec<PoolStatus>,
    pub findings: Vec<Finding>,
}

/// Allocates every LoadBalancer service's VIPs and elects each address's announcer.
pub fn cluster_state(config: &Config) -> ClusterState {
    let state = compute(config, None, &mut ModelCache::default());
    ClusterState {
        services: state.services,
        pools: state.pools,
        findings: state.findings,
    }
}

/// What `node_name` must serve and announce. `interfaces` are the node's interface names,
/// which the announcing policies' regexes pick from.
pub fn desired_state(config: &Config, node_name: &str, interfaces: &[String]) -> DesiredState {
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
) -> DesiredState {
    let node = ThisNode {
        name: node_name,
        interfaces,
    };
    compute(config, Some(&node), cache)
}

/// Per-service results of earlier runs. A service's result is a function of its own
/// objects (the service, its slices, its addresses) and of objects every service depends
/// on (nodes, L2 policies, this node's name and interfaces): it is reused while all of them
/// are the very same `Arc`s, and everything is dropped when one of the latter changes.
/// VIP allocation and what addresses make of each other (election, shared ports) are global
/// and always run in full.
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
    node_name: Option<String>,
    interfaces: Vec<String>,
}

impl CommonInputs {
    fn of(config: &Config, node: Option<&ThisNode<'_>>) -> Self {
        Self {
            nodes: config.nodes.iter().cloned().map(ByAddress).collect(),
            l2_policies: config.l2_policies.iter().cloned().map(ByAddress).collect(),
            node_name: node.map(|node| node.name.to_owned()),
            interfaces: node
                .map(|node| node.interfaces.to_vec())
                .unwrap_or_default(),
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

/// A service as last modelled: the objects and addresses it was modelled from, and the
/// result.
struct ModelledService {
    service: Arc<Service>,
    slices: Vec<Arc<EndpointSlice>>,
    addresses: Vec<Address>,
    model: ServiceModel,
    /// Found by the current run (the others are dropped at its end).
    used: bool,
}

impl ModelledService {
    /// The entry was made from these very objects and addresses.
    fn fits(
        &self,
        service: &Arc<Service>,
        slices: &[Arc<EndpointSlice>],
        addresses: &[Address],
    ) -> bool {
        Arc::ptr_eq(&self.service, service)
            && self.addresses == addresses
            && self.slices.len() == slices.len()
            && (self.slices.iter().zip(slices)).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// An address a service is served on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Address {
    addr: Ipv4Addr,
    kind: AddressKind,
}

/// Who may announce a service's addresses of one kind.
#[derive(Default)]
struct Announcing {
    /// The policies that announce them (indexes into `config.l2_policies`).
    policies: Vec<usize>,
    /// The nodes eligible to (indexes into `config.nodes`).
    eligible: Vec<usize>,
}

/// What one service makes of the objects: who may announce its addresses and, on a node,
/// its frontends there, with the findings on the way.
struct ServiceModel {
    load_balancer: Announcing,
    external: Announcing,
    /// On every address of the service, this node's backends; none in the cluster-wide
    /// view.
    frontends: Vec<Frontend>,
    findings: Vec<Finding>,
}

impl ServiceModel {
    fn announcing(&self, kind: AddressKind) -> &Announcing {
        match kind {
            AddressKind::LoadBalancer => &self.load_balancer,
            AddressKind::External => &self.external,
        }
    }
}

/// The node the model is computed for.
struct ThisNode<'n> {
    name: &'n str,
    /// Its interfaces' names.
    interfaces: &'n [String],
}

/// The whole model; `node` adds what that node programs and announces.
fn compute(config: &Config, node: Option<&ThisNode<'_>>, cache: &mut ModelCache) -> DesiredState {
    let common = CommonInputs::of(config, node);
    if cache.common.as_ref() != Some(&common) {
        cache.services.clear();
    }
    let mut diagnostics = Diagnostics::new(&config.source);
    let allocation = ipam::allocate(config, &mut diagnostics);

    // Each service with its addresses, modelled or taken from the cache. The entries are
    // updated where they are: a new map of 10,000 each time (megabytes of fresh pages)
    // cost more than the services that changed.
    let mut modelled: Vec<(&Arc<Service>, &ModelledService)> =
        Vec::with_capacity(config.services.len());
    let mut keys = Vec::with_capacity(config.services.len());
    for (i, ServiceWithSlices { service, slices }) in config.services_with_slices().enumerate() {
        let addresses = addresses(config, service, &allocation.services[i]);
        let key = Arc::as_ptr(service) as usize;
        match cache.services.entry(key) {
            Entry::Occupied(entry) if entry.get().fits(service, slices, &addresses) => {
                entry.into_mut().used = true;
            }
            entry => {
                let fresh = ModelledService {
                    model: model_service(config, service, slices, &addresses, node),
                    service: Arc::clone(service),
                    slices: slices.to_vec(),
                    addresses,
                    used: true,
                };
                match entry {
                    Entry::Occupied(entry) => *entry.into_mut() = fresh,
                    Entry::Vacant(entry) => {
                        entry.insert(fresh);
                    }
                }
            }
        }
        keys.push(key);
    }
    // Only the services of this run stay.
    cache
        .services
        .retain(|_, modelled| std::mem::replace(&mut modelled.used, false));
    cache.common = Some(common);
    for (service, key) in config.services.iter().zip(&keys) {
        modelled.push((service, &cache.services[key]));
    }

    let node_object = node.and_then(|node| config.nodes.iter().find(|n| n.name == node.name));
    if let Some(node) = node
        && node_object.is_none()
    {
        diagnostics.find(
            Severity::Warning,
            Reason::NodeNotFound,
            Some(&ObjectRef::cluster_scoped(Node::KIND, node.name)),
            "",
            "this node is not among the Node objects: it announces nothing",
        );
    }
    let this_node = node.map(|node| {
        let interfaces =
            announce::interfaces_by_policy(config, node_object.map(|n| &**n), node.interfaces);
        (node.name, interfaces)
    });
    let served = addresses_served(config, &modelled, this_node.as_ref(), &mut diagnostics);

    let mut frontends = Vec::with_capacity(config.services.len());
    for (i, (_, modelled)) in modelled.iter().enumerate() {
        diagnostics.absorb([], modelled.model.findings.iter().cloned());
        frontends.extend(
            (modelled.model.frontends.iter())
                .filter(|f| !served.skipped.contains(&(i, f.vip, f.port, f.protocol)))
                .cloned(),
        );
    }
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
    let mut announcements = served.announcements;
    announcements.sort();
    let services = service_statuses(config, &allocation, &served.announcers);
    let mut findings = diagnostics.into_findings();
    findings.extend(config.findings.iter().cloned());
    findings.sort();
    findings.dedup();
    DesiredState {
        frontends,
        announcements,
        services,
        pools: allocation.pools,
        findings,
    }
}

/// The addresses `service` is served on: the VIPs it was granted and, when a policy with
/// `externalIPs: true` selects it, its external IPs; sorted.
fn addresses(config: &Config, service: &Service, outcome: &ipam::Outcome<'_>) -> Vec<Address> {
    let mut addresses: Vec<Address> = (outcome.vips.iter())
        .map(|grant| Address {
            addr: grant.vip,
            kind: AddressKind::LoadBalancer,
        })
        .collect();
    if !service.external_ips.is_empty()
        && !announce::policies_for(config, service, AddressKind::External).is_empty()
    {
        addresses.extend(service.external_ips.iter().map(|ip| Address {
            addr: ip.addr,
            kind: AddressKind::External,
        }));
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

/// The service's part of the model; `node` adds what that node programs.
fn model_service(
    config: &Config,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    addresses: &[Address],
    node: Option<&ThisNode<'_>>,
) -> ServiceModel {
    let mut diagnostics = Diagnostics::new(&config.source);
    let object = Some(&service.object);
    let announcing = |kind| {
        let policies = announce::policies_for(config, service, kind);
        let eligible = election::eligible(config, service, slices, &policies);
        Announcing { policies, eligible }
    };
    let (load_balancer, external) = (
        announcing(AddressKind::LoadBalancer),
        announcing(AddressKind::External),
    );
    for (i, ip) in service.external_ips.iter().enumerate() {
        if external.policies.is_empty() {
            diagnostics.find(
                Severity::Warning,
                Reason::NoAnnouncementPolicy,
                object,
                format!("spec.externalIPs[{i}]"),
                format!(
                    "no CiliumL2AnnouncementPolicy with externalIPs: true selects this service: \
                     {} is neither announced nor served",
                    ip.addr
                ),
            );
        }
    }
    let mut frontends = Vec::new();
    match service.traffic_policy {
        TrafficPolicy::Cluster => diagnostics.find(
            Severity::Error,
            Reason::ClusterTrafficPolicy,
            object,
            "spec.externalTrafficPolicy",
            "Cluster is not supported yet, the service is not programmed: Cluster SNATs and \
             loses the client source IP; use Local",
        ),
        TrafficPolicy::Local => {
            for address in addresses {
                if address.kind == AddressKind::LoadBalancer && load_balancer.policies.is_empty() {
                    diagnostics.find(
                        Severity::Warning,
                        Reason::NoAnnouncementPolicy,
                        object,
                        "",
                        format!(
                            "no CiliumL2AnnouncementPolicy with loadBalancerIPs: true selects \
                             this service: VIP {} is not announced",
                            address.addr
                        ),
                    );
                }
                if let Some(node) = node {
                    frontends.extend(frontends::frontends(
                        service,
                        slices,
                        address.addr,
                        node.name,
                        &mut diagnostics,
                    ));
                }
            }
        }
    }
    let (_, findings) = diagnostics.into_parts();
    ServiceModel {
        load_balancer,
        external,
        frontends,
        findings,
    }
}

/// What the addresses make of each other.
struct Served {
    /// This node's announcements.
    announcements: Vec<Announcement>,
    /// Each address's elected node (index into `config.nodes`).
    announcers: BTreeMap<Ipv4Addr, usize>,
    /// Frontends (service index, address, port, protocol) skipped: another service serves
    /// that port on that address.
    skipped: BTreeSet<(usize, Ipv4Addr, u16, Protocol)>,
}

/// Elects each address's announcer among the nodes eligible for every service on it, and
/// gives each port of an address to one service. `this_node` is the node's name with, per
/// policy, the interfaces it announces on there.
fn addresses_served(
    config: &Config,
    modelled: &[(&Arc<Service>, &ModelledService)],
    this_node: Option<&(&str, Vec<Vec<String>>)>,
    diagnostics: &mut Diagnostics,
) -> Served {
    let mut served = Served {
        announcements: Vec::new(),
        announcers: BTreeMap::new(),
        skipped: BTreeSet::new(),
    };
    // (address, kind, service): LoadBalancer VIPs before external IPs, then the oldest.
    let mut claims: Vec<(Address, usize)> = (modelled.iter().enumerate())
        .filter(|(_, (service, _))| service.traffic_policy == TrafficPolicy::Local)
        .flat_map(|(i, (_, m))| m.addresses.iter().map(move |a| (*a, i)))
        .collect();
    claims.sort_by(|(a, i), (b, j)| {
        (a.addr, a.kind)
            .cmp(&(b.addr, b.kind))
            .then_with(|| service_age(modelled[*i].0, modelled[*j].0))
    });
    let this_node_index =
        this_node.and_then(|(name, _)| config.nodes.iter().position(|node| node.name == *name));
    for run in claims.chunk_by(|(a, _), (b, _)| a.addr == b.addr) {
        let addr = run[0].0.addr;
        // One service on the address, as nearly always: its own policies and nodes.
        let (policies, eligible): (Cow<'_, [usize]>, Cow<'_, [usize]>) = match run {
            [(address, i)] => {
                let announcing = modelled[*i].1.model.announcing(address.kind);
                (
                    Cow::Borrowed(&announcing.policies),
                    Cow::Borrowed(&announcing.eligible),
                )
            }
            _ => {
                let (policies, eligible) = shared_address(modelled, run, &mut served, diagnostics);
                (Cow::Owned(policies), Cow::Owned(eligible))
            }
        };
        if policies.is_empty() {
            continue;
        }
        let Some(announcer) = election::elect(&config.nodes, addr, eligible.iter().copied()) else {
            let names: Vec<String> = (policies.iter())
                .map(|&p| config.l2_policies[p].object().to_string())
                .collect();
            let whose = if run.len() > 1 {
                "every service on it"
            } else {
                "the service"
            };
            for &(_, i) in run {
                diagnostics.find(
                    Severity::Warning,
                    Reason::NoEligibleNode,
                    Some(&modelled[i].0.object),
                    "",
                    format!(
                        "no node can announce {addr}: none is Ready, selected by the nodeSelector \
                         of {} and running a ready endpoint of {whose}",
                        names.join(" or "),
                    ),
                );
            }
            continue;
        };
        served.announcers.insert(addr, announcer);
        if let Some((_, interfaces)) = this_node
            && this_node_index == Some(announcer)
        {
            let service = &modelled[run[0].1].0.object;
            let mut on: BTreeMap<&str, usize> = BTreeMap::new();
            for &policy in policies.iter() {
                for interface in &interfaces[policy] {
                    on.entry(interface).or_insert(policy);
                }
            }
            served
                .announcements
                .extend(on.into_iter().map(|(interface, policy)| Announcement {
                    interface: interface.into(),
                    vip: addr,
                    service: service.clone(),
                    policy: config.l2_policies[policy].name.as_str().into(),
                }));
        }
    }
    served
}

/// An address several services are on (`run`, in claim order): each port goes to the first
/// service that serves it, the others skip it there; the policies of any of them announce
/// it, from the nodes eligible for all of them. Returns (policies, eligible nodes).
fn shared_address(
    modelled: &[(&Arc<Service>, &ModelledService)],
    run: &[(Address, usize)],
    served: &mut Served,
    diagnostics: &mut Diagnostics,
) -> (Vec<usize>, Vec<usize>) {
    let addr = run[0].0.addr;
    let mut ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    let mut policies: BTreeSet<usize> = BTreeSet::new();
    let mut eligible: Option<BTreeSet<usize>> = None;
    for &(address, i) in run {
        let (service, model) = (modelled[i].0, &modelled[i].1.model);
        for port in &service.ports {
            let first = *ports.entry((port.port, port.protocol)).or_insert(i);
            if first != i {
                served.skipped.insert((i, addr, port.port, port.protocol));
                diagnostics.find(
                    Severity::Warning,
                    Reason::PortConflict,
                    Some(&service.object),
                    "",
                    format!(
                        "{addr}:{}/{} is already served by {}: the port is skipped on {addr}",
                        port.port, port.protocol, modelled[first].0.object
                    ),
                );
            }
        }
        let announcing = model.announcing(address.kind);
        policies.extend(&announcing.policies);
        let nodes: BTreeSet<usize> = announcing.eligible.iter().copied().collect();
        eligible = Some(match eligible {
            None => nodes,
            Some(before) => before.intersection(&nodes).copied().collect(),
        });
    }
    (
        policies.into_iter().collect(),
        eligible.unwrap_or_default().into_iter().collect(),
    )
}

/// Oldest `creationTimestamp` first (absent last), then by namespace and name.
fn service_age(a: &Service, b: &Service) -> std::cmp::Ordering {
    (a.created.is_none(), a.created, &a.object).cmp(&(b.created.is_none(), b.created, &b.object))
}

/// Every service's status: its VIPs with their announcers and sharers, or why it has none.
fn service_statuses(
    config: &Config,
    allocation: &ipam::Allocation<'_>,
    announcers: &BTreeMap<Ipv4Addr, usize>,
) -> Vec<ServiceStatus> {
    (config.services.iter().zip(&allocation.services).enumerate())
        .map(|(i, (service, outcome))| ServiceStatus {
            service: service.object.clone(),
            traffic_policy: service.traffic_policy,
            vips: (outcome.vips.iter())
                .map(|grant| ServiceVip {
                    vip: grant.vip,
                    pool: grant.pool.name.as_str().into(),
                    requested: grant.requested,
                    shared_with: (allocation.holders.get(&grant.vip).into_iter().flatten())
                        .filter(|&&other| other != i)
                        .map(|&other| config.services[other].object.clone())
                        .collect::<BTreeSet<ObjectRef>>()
                        .into_iter()
                        .collect(),
                    announcer: (announcers.get(&grant.vip))
                        .map(|&node| config.nodes[node].name.as_str().into()),
                })
                .collect(),
            satisfied: outcome.satisfied,
            reason: outcome.reason,
            message: outcome.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
