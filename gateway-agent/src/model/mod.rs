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

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{
    Config, Diagnostics, EndpointSlice, Finding, Ipv4Net, L2Policy, Name, Node, ObjectRef, Reason,
    Service, ServiceWithSlices, Severity,
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
    /// The endpoint runs on another node (or names none): a Cluster service reaches it
    /// through SNAT to this node's address. An address has one locality at a time.
    pub remote: bool,
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
    /// The endpoints new flows go to, sorted and deduplicated: the ready ones (on this node
    /// for a Local service, anywhere for a Cluster one), or failing those the serving and
    /// terminating ones. May be empty: the VIP is then still programmed so stray traffic is
    /// dropped and counted instead of forwarded.
    pub backends: Vec<BackendAddr>,
    /// The other endpoints still listed (terminating, or not ready): they take no new flows,
    /// but the flows already on them go on until they leave the EndpointSlice. Sorted.
    pub draining: Vec<BackendAddr>,
    /// `spec.loadBalancerSourceRanges`: `Some` admits only the clients in these prefixes
    /// (none at all when it is empty); `None` admits every client.
    pub source_ranges: Option<Vec<Ipv4Net>>,
}

impl Frontend {
    /// Every backend the frontend lists: those taking new flows, then the draining ones.
    pub fn listed(&self) -> impl Iterator<Item = &BackendAddr> {
        self.backends.iter().chain(&self.draining)
    }
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
    /// What this node would announce were it elected for every address it is eligible for
    /// (on its interfaces the policies select): with other agents alive, the cluster picks
    /// among these instead of the score. Sorted by (interface, vip).
    pub announceable: Vec<Announcement>,
    /// For each address announced, the nodes eligible to announce it (by the objects: every
    /// node computes the same), in name order.
    pub eligible: BTreeMap<Ipv4Addr, Vec<Name>>,
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

impl Announcing {
    /// Who may announce `service`'s addresses of `kind`.
    fn of(
        config: &Config,
        service: &Service,
        slices: &[Arc<EndpointSlice>],
        kind: AddressKind,
    ) -> Self {
        if kind == AddressKind::External && service.external_ips.is_empty() {
            return Self::default();
        }
        let policies = announce::policies_for(config, service, kind);
        let eligible = election::eligible(config, service, slices, &policies);
        Self { policies, eligible }
    }
}

/// The election of one address with the service alone on it, as nearly every address is:
/// a function of the service's own objects, so it is kept with them.
struct Solo {
    /// The elected node (index into `config.nodes`).
    announcer: Option<usize>,
    /// The nodes eligible (indexes into `config.nodes`), when a policy announces it.
    eligible: Option<Vec<usize>>,
    /// This node's announcements, when it is elected.
    announcements: Vec<Announcement>,
    /// This node's announcements were it elected, when it is eligible.
    announceable: Vec<Announcement>,
    /// Why no node is, when none is.
    finding: Option<Box<Finding>>,
}

/// What one service makes of the objects: on a node, its frontends there, and each of its
/// addresses' election when it is alone on it, with the findings on the way.
struct ServiceModel {
    /// On every address of the service, this node's backends; none in the cluster-wide
    /// view.
    frontends: Vec<Frontend>,
    /// Per address (in `ModelledService::addresses` order), its election when the service
    /// is alone on it.
    solo: Vec<Solo>,
    findings: Vec<Finding>,
}

/// The node the model is computed for.
struct ThisNode<'n> {
    name: &'n str,
    /// Its interfaces' names.
    interfaces: &'n [String],
}

/// What every service's model reads besides its own objects, made once a run: the names
/// it hands out are shared, not copied.
struct Context<'c> {
    config: &'c Config,
    node: Option<&'c ThisNode<'c>>,
    /// This node's index in `config.nodes`.
    node_index: Option<usize>,
    node_names: Vec<Name>,
    policy_names: Vec<Name>,
    /// Per policy, the interfaces of this node it announces on (none when it does not
    /// select this node).
    interfaces: Vec<Vec<Name>>,
}

impl<'c> Context<'c> {
    fn of(config: &'c Config, node: Option<&'c ThisNode<'c>>) -> Self {
        let node_index =
            node.and_then(|node| config.nodes.iter().position(|n| n.name == node.name));
        let interfaces = match node {
            Some(node) => announce::interfaces_by_policy(
                config,
                node_index.map(|i| &*config.nodes[i]),
                node.interfaces,
            ),
            None => vec![Vec::new(); config.l2_policies.len()],
        };
        Self {
            config,
            node,
            node_index,
            node_names: (config.nodes.iter())
                .map(|n| n.name.as_str().into())
                .collect(),
            policy_names: (config.l2_policies.iter())
                .map(|p| p.name.as_str().into())
                .collect(),
            interfaces: (interfaces.into_iter())
                .map(|names| names.iter().map(|n| n.as_str().into()).collect())
                .collect(),
        }
    }

    /// The announcements of `addr` on this node under `policies`, when `eligible` (node
    /// indexes) holds this node: one per interface, from the first policy (by name) that
    /// puts it there.
    fn announcements(
        &self,
        addr: Ipv4Addr,
        service: &ObjectRef,
        policies: &[usize],
        eligible: &[usize],
    ) -> Vec<Announcement> {
        if !self.node_index.is_some_and(|me| eligible.contains(&me)) {
            return Vec::new();
        }
        let announcement = |interface: &Name, policy: usize| Announcement {
            interface: interface.clone(),
            vip: addr,
            service: service.clone(),
            policy: self.policy_names[policy].clone(),
        };
        if let [policy] = policies {
            let interfaces = &self.interfaces[*policy];
            return (interfaces.iter())
                .map(|interface| announcement(interface, *policy))
                .collect();
        }
        let mut on: BTreeMap<&Name, usize> = BTreeMap::new();
        for &policy in policies {
            for interface in &self.interfaces[policy] {
                on.entry(interface).or_insert(policy);
            }
        }
        (on.into_iter())
            .map(|(interface, policy)| announcement(interface, policy))
            .collect()
    }

    /// Why no node announces `addr` of the services `on` it under `policies`.
    fn no_eligible_node(
        &self,
        addr: Ipv4Addr,
        service: &Service,
        policies: &[usize],
        shared: bool,
    ) -> Finding {
        let names: Vec<String> = (policies.iter())
            .map(|&p| self.config.l2_policies[p].object().to_string())
            .collect();
        let whose = if shared {
            "every service on it"
        } else {
            "the service"
        };
        Finding {
            file: self.config.source.clone(),
            object: Some(service.object.clone()),
            field: String::new(),
            message: format!(
                "no node can announce {addr}: none is Ready, selected by the nodeSelector of {} \
                 and running a ready endpoint of {whose}",
                names.join(" or "),
            ),
            reason: Reason::NoEligibleNode,
            severity: Severity::Warning,
        }
    }
}

/// The whole model; `node` adds what that node programs and announces.
fn compute(config: &Config, node: Option<&ThisNode<'_>>, cache: &mut ModelCache) -> DesiredState {
    let common = CommonInputs::of(config, node);
    if cache.common.as_ref() != Some(&common) {
        cache.services.clear();
    }
    let context = Context::of(config, node);
    let mut diagnostics = Diagnostics::new(&config.source);
    let allocation = ipam::allocate(config, &mut diagnostics);

    // Each service with its addresses, modelled or taken from the cache. The entries are
    // updated where they are: a new map of 10,000 each time (megabytes of fresh pages)
    // cost more than the services that changed.
    let mut keys = Vec::with_capacity(config.services.len());
    let mut addresses = Vec::new();
    for (i, ServiceWithSlices { service, slices }) in config.services_with_slices().enumerate() {
        addresses_of(config, service, allocation.grants_of(i), &mut addresses);
        let key = Arc::as_ptr(service) as usize;
        match cache.services.entry(key) {
            Entry::Occupied(entry) if entry.get().fits(service, slices, &addresses) => {
                entry.into_mut().used = true;
            }
            entry => {
                let fresh = ModelledService {
                    model: model_service(&context, service, slices, &addresses),
                    service: Arc::clone(service),
                    slices: slices.to_vec(),
                    addresses: addresses.clone(),
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
    let modelled: Vec<&ModelledService> = keys.iter().map(|key| &cache.services[key]).collect();

    if let Some(node) = node
        && context.node_index.is_none()
    {
        diagnostics.find(
            Severity::Warning,
            Reason::NodeNotFound,
            Some(&ObjectRef::cluster_scoped(Node::KIND, node.name)),
            "",
            "this node is not among the Node objects: it announces nothing",
        );
    }
    let served = addresses_served(&context, &modelled, &mut diagnostics);

    let mut frontends = Vec::with_capacity(config.services.len());
    for (i, modelled) in modelled.iter().enumerate() {
        diagnostics.absorb([], modelled.model.findings.iter().cloned());
        let frontends_of = modelled.model.frontends.iter();
        if served.skipped.is_empty() {
            frontends.extend(frontends_of.cloned());
        } else {
            frontends.extend(
                frontends_of
                    .filter(|f| !served.skipped.contains(&(i, f.vip, f.port, f.protocol)))
                    .cloned(),
            );
        }
    }
    frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
    let mut announcements = served.announcements;
    announcements.sort();
    let mut announceable = served.announceable;
    announceable.sort();
    let services = service_statuses(&context, &allocation, &served.announcers);
    let mut findings = diagnostics.into_findings();
    findings.extend(config.findings.iter().cloned());
    findings.sort();
    findings.dedup();
    DesiredState {
        frontends,
        announcements,
        announceable,
        eligible: served.eligible,
        services,
        pools: allocation.pools,
        findings,
    }
}

/// The addresses `service` is served on, into `addresses`: the VIPs it was `granted` and,
/// when a policy with `externalIPs: true` selects it, its external IPs; sorted.
fn addresses_of(
    config: &Config,
    service: &Service,
    granted: &[ipam::Grant],
    addresses: &mut Vec<Address>,
) {
    addresses.clear();
    addresses.extend(granted.iter().map(|grant| Address {
        addr: grant.vip,
        kind: AddressKind::LoadBalancer,
    }));
    if !service.external_ips.is_empty()
        && !announce::policies_for(config, service, AddressKind::External).is_empty()
    {
        addresses.extend(service.external_ips.iter().map(|ip| Address {
            addr: ip.addr,
            kind: AddressKind::External,
        }));
        addresses.sort();
        addresses.dedup();
    }
}

/// The service's part of the model; a node in `context` adds what that node programs.
fn model_service(
    context: &Context<'_>,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    addresses: &[Address],
) -> ServiceModel {
    let config = context.config;
    let mut diagnostics = Diagnostics::new(&config.source);
    let object = Some(&service.object);
    let load_balancer = Announcing::of(config, service, slices, AddressKind::LoadBalancer);
    let external = Announcing::of(config, service, slices, AddressKind::External);
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
    // Exactly as large as they get: 10,000 services keep them between reloads.
    let mut frontends = Vec::with_capacity(match context.node {
        Some(_) => addresses.len() * service.ports.len(),
        None => 0,
    });
    let mut solo = Vec::with_capacity(addresses.len());
    // Both traffic policies: Local keeps to this node's endpoints, Cluster reaches every
    // endpoint (`frontends`), and any node the policies select may announce it.
    for address in addresses {
        let announcing = match address.kind {
            AddressKind::LoadBalancer => &load_balancer,
            AddressKind::External => &external,
        };
        if address.kind == AddressKind::LoadBalancer && announcing.policies.is_empty() {
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
        solo.push(elect(context, address.addr, service, announcing, false));
        if let Some(node) = context.node {
            frontends.extend(frontends::frontends(
                service,
                slices,
                address.addr,
                node.name,
                &mut diagnostics,
            ));
        }
    }
    let (_, findings) = diagnostics.into_parts();
    ServiceModel {
        frontends,
        solo,
        findings,
    }
}

/// The election of `addr` among `announcing`'s eligible nodes, for the first of the
/// services on it (`shared` when there are others).
fn elect(
    context: &Context<'_>,
    addr: Ipv4Addr,
    service: &Service,
    announcing: &Announcing,
    shared: bool,
) -> Solo {
    let policies = &announcing.policies;
    if policies.is_empty() {
        return Solo {
            announcer: None,
            eligible: None,
            announcements: Vec::new(),
            announceable: Vec::new(),
            finding: None,
        };
    }
    let nodes = &context.config.nodes;
    let eligible = &announcing.eligible;
    let announceable = context.announcements(addr, &service.object, policies, eligible);
    match election::elect(nodes, addr, eligible.iter().copied()) {
        Some(announcer) => Solo {
            announcer: Some(announcer),
            eligible: Some(eligible.clone()),
            announcements: if context.node_index == Some(announcer) {
                announceable.clone()
            } else {
                Vec::new()
            },
            announceable,
            finding: None,
        },
        None => Solo {
            announcer: None,
            eligible: Some(Vec::new()),
            announcements: Vec::new(),
            announceable: Vec::new(),
            finding: Some(Box::new(
                context.no_eligible_node(addr, service, policies, shared),
            )),
        },
    }
}

/// What the addresses make of each other.
struct Served {
    /// This node's announcements.
    announcements: Vec<Announcement>,
    /// This node's announcements were it elected everywhere it is eligible.
    announceable: Vec<Announcement>,
    /// Each announced address's eligible nodes.
    eligible: BTreeMap<Ipv4Addr, Vec<Name>>,
    /// Each address's elected node (index into `config.nodes`), sorted by address.
    announcers: Vec<(Ipv4Addr, usize)>,
    /// Frontends (service index, address, port, protocol) skipped: another service serves
    /// that port on that address.
    skipped: BTreeSet<(usize, Ipv4Addr, u16, Protocol)>,
}

/// Elects each address's announcer among the nodes eligible for every service on it, and
/// gives each port of an address to one service.
fn addresses_served(
    context: &Context<'_>,
    modelled: &[&ModelledService],
    diagnostics: &mut Diagnostics,
) -> Served {
    let mut served = Served {
        announcements: Vec::new(),
        announceable: Vec::new(),
        eligible: BTreeMap::new(),
        announcers: Vec::new(),
        skipped: BTreeSet::new(),
    };
    // (address, service, its index among the service's addresses): LoadBalancer VIPs
    // before external IPs, then the oldest service.
    let mut claims: Vec<(Address, usize, usize)> = (modelled.iter().enumerate())
        .flat_map(|(i, m)| (m.addresses.iter().enumerate()).map(move |(j, a)| (*a, i, j)))
        .collect();
    claims.sort_by(|(a, i, _), (b, j, _)| {
        (a.addr, a.kind)
            .cmp(&(b.addr, b.kind))
            .then_with(|| service_age(&modelled[*i].service, &modelled[*j].service))
    });
    for run in claims.chunk_by(|(a, _, _), (b, _, _)| a.addr == b.addr) {
        let shared;
        let solo = match run {
            // Alone on the address, as nearly always: the election kept with the service.
            [(_, i, j)] => &modelled[*i].model.solo[*j],
            _ => {
                let (address, first, _) = run[0];
                let announcing = shared_address(context, modelled, run, &mut served, diagnostics);
                shared = elect(
                    context,
                    address.addr,
                    &modelled[first].service,
                    &announcing,
                    true,
                );
                &shared
            }
        };
        if let Some(announcer) = solo.announcer {
            served.announcers.push((run[0].0.addr, announcer));
        }
        served
            .announcements
            .extend(solo.announcements.iter().cloned());
        served
            .announceable
            .extend(solo.announceable.iter().cloned());
        if let Some(eligible) = &solo.eligible {
            let names = eligible.iter().map(|&i| context.node_names[i].clone());
            served.eligible.insert(run[0].0.addr, names.collect());
        }
        if let Some(finding) = &solo.finding {
            for &(_, i, _) in run {
                let mut finding = Finding::clone(finding);
                finding.object = Some(modelled[i].service.object.clone());
                diagnostics.absorb([], [finding]);
            }
        }
    }
    served
}

/// An address several services are on (`run`, in claim order): each port goes to the first
/// service that serves it, the others skip it there; the policies of any of them announce
/// it, from the nodes eligible for all of them.
fn shared_address(
    context: &Context<'_>,
    modelled: &[&ModelledService],
    run: &[(Address, usize, usize)],
    served: &mut Served,
    diagnostics: &mut Diagnostics,
) -> Announcing {
    let addr = run[0].0.addr;
    let mut ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    let mut policies: BTreeSet<usize> = BTreeSet::new();
    let mut eligible: Option<BTreeSet<usize>> = None;
    for &(address, i, _) in run {
        let (service, slices) = (&modelled[i].service, &modelled[i].slices);
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
                        port.port, port.protocol, modelled[first].service.object
                    ),
                );
            }
        }
        let announcing = Announcing::of(context.config, service, slices, address.kind);
        policies.extend(&announcing.policies);
        let nodes: BTreeSet<usize> = announcing.eligible.iter().copied().collect();
        eligible = Some(match eligible {
            None => nodes,
            Some(before) => before.intersection(&nodes).copied().collect(),
        });
    }
    Announcing {
        policies: policies.into_iter().collect(),
        eligible: eligible.unwrap_or_default().into_iter().collect(),
    }
}

/// Oldest `creationTimestamp` first (absent last), then by namespace and name.
fn service_age(a: &Service, b: &Service) -> std::cmp::Ordering {
    (a.created.is_none(), a.created, &a.object).cmp(&(b.created.is_none(), b.created, &b.object))
}

/// Every service's status: its VIPs with their announcers and sharers, or why it has none.
fn service_statuses(
    context: &Context<'_>,
    allocation: &ipam::Allocation,
    announcers: &[(Ipv4Addr, usize)],
) -> Vec<ServiceStatus> {
    let config = context.config;
    let pool_names: Vec<Name> = (config.pools.iter())
        .map(|p| p.name.as_str().into())
        .collect();
    let announcer = |vip: Ipv4Addr| {
        let at = announcers
            .binary_search_by_key(&vip, |(addr, _)| *addr)
            .ok()?;
        Some(context.node_names[announcers[at].1].clone())
    };
    (config.services.iter().zip(&allocation.services).enumerate())
        .map(|(i, (service, outcome))| ServiceStatus {
            service: service.object.clone(),
            traffic_policy: service.traffic_policy,
            vips: (allocation.grants_of(i).iter())
                .map(|grant| ServiceVip {
                    vip: grant.vip,
                    pool: pool_names[grant.pool].clone(),
                    requested: grant.requested,
                    shared_with: match allocation.shared.get(&grant.vip) {
                        None => Vec::new(),
                        Some(sharers) => {
                            let mut others: Vec<ObjectRef> = (sharers.iter())
                                .filter(|&&other| other != i)
                                .map(|&other| config.services[other].object.clone())
                                .collect();
                            others.sort();
                            others
                        }
                    },
                    announcer: announcer(grant.vip),
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
