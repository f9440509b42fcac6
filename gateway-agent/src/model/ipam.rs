//! LB-IPAM: which VIPs each LoadBalancer service gets, and why a Service gets none.
//!
//! A pure function of the objects (their status and creation times included), so every
//! node, leader or not, computes the same allocation, and nothing depends on the order the
//! objects came in. One Service's trouble stays with it: a request that cannot be met is
//! refused on that Service (its condition says which request and why), and every other
//! Service is allocated as if it were not there.
//!
//! 1. Pools: overlapping pools are settled first (`pools`): a conflicting, disabled or
//!    broken pool allocates nothing new but keeps what Services hold.
//! 2. Claims: a Service that requests VIPs (`spec.loadBalancerIP`, `lbipam.cilium.io/ips`)
//!    claims each of them; one that requests nothing claims the VIPs of its status that a
//!    pool selecting it holds (how a restarted agent, or a new leader, finds the previous
//!    allocation). A claim a pool cannot grant is refused with Cilium's reason.
//! 3. Each claimed address goes to its claimants in order: holders (the address is in
//!    their status) before newcomers, then the oldest `creationTimestamp` (absent last),
//!    then namespace and name. The first takes it; each later one joins it only when all
//!    of them share a sharing key and can share (`compatible`), else its claim is refused
//!    (`AlreadyAllocated`, `IncompatibleSharing`).
//! 4. Every other Service (no request, nothing kept) is allocated in the same order: with
//!    a sharing key, onto the lowest address of that key it can share; otherwise the lowest
//!    free address of the first usable pool (by name) that selects it and has one.
//!
//! Hence: removing a Service never moves a VIP that is requested or in status; adding one
//! never moves another's VIP if it is newer than the Services allocated in step 4 (as a new
//! object is) or they all carry their VIP in status.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;

use super::pools::{PoolState, Pools};
use super::selector::service_labels;
use super::status::PoolStatus;
use crate::config::{
    Config, Diagnostics, FieldAddr, Ipv6Wanted, Reason, Service, Severity, TrafficPolicy,
};

/// A VIP granted to a service.
#[derive(Clone, Copy)]
pub(crate) struct Grant {
    pub vip: Ipv4Addr,
    /// Index into `Config::pools`.
    pub pool: usize,
    /// The service asked for this VIP.
    pub requested: bool,
}

/// What LB-IPAM decided for one Service.
pub(crate) struct Outcome {
    /// Its grants in [`Allocation::grants`], sorted by VIP.
    pub vips: Range<usize>,
    pub satisfied: bool,
    pub reason: Reason,
    pub message: String,
}

/// What LB-IPAM decided for every Service (in `Config::services` order) and pool.
pub(crate) struct Allocation {
    pub services: Vec<Outcome>,
    /// Every grant, by service then VIP.
    pub grants: Vec<Grant>,
    /// The Services (indexes) on each VIP that more than one shares.
    pub shared: BTreeMap<Ipv4Addr, Vec<usize>>,
    pub pools: Vec<PoolStatus>,
}

impl Allocation {
    /// The VIPs granted to service `i`.
    pub(crate) fn grants_of(&self, i: usize) -> &[Grant] {
        &self.grants[self.services[i].vips.clone()]
    }
}

/// A Service's claim on an address in step 2.
struct Claim<'c> {
    service: usize,
    at: &'c FieldAddr,
    pool: usize,
    requested: bool,
    /// The address is in the Service's status.
    held: bool,
}

/// The Services on an address given out: nearly always one.
enum Sharers {
    One(usize),
    Many(Vec<usize>),
}

impl Sharers {
    fn as_slice(&self) -> &[usize] {
        match self {
            Sharers::One(service) => std::slice::from_ref(service),
            Sharers::Many(services) => services,
        }
    }

    fn push(&mut self, service: usize) {
        match self {
            Sharers::One(first) => *self = Sharers::Many(vec![*first, service]),
            Sharers::Many(services) => services.push(service),
        }
    }
}

/// An address given out: its pool and the Services on it.
struct Holder {
    pool: usize,
    services: Sharers,
}

/// The first request of a Service that failed.
struct Failure {
    reason: Reason,
    message: String,
}

pub(crate) fn allocate(config: &Config, diagnostics: &mut Diagnostics) -> Allocation {
    let pools = Pools::of(&config.pools, diagnostics);
    let services = &config.services[..];
    // (service, grant), in any order until the end.
    let mut grants: Vec<(usize, Grant)> = Vec::with_capacity(services.len());
    let mut granted = vec![false; services.len()];
    let mut failures: Vec<Option<Failure>> = services.iter().map(|_| None).collect();
    // A request refused: an error finding, and the Service's condition if it is the first.
    let mut fail = |diagnostics: &mut Diagnostics,
                    service: usize,
                    reason: Reason,
                    field: &str,
                    message: String| {
        let object = &services[service].object;
        diagnostics.find(
            Severity::Error,
            reason,
            Some(object),
            field,
            message.clone(),
        );
        failures[service].get_or_insert(Failure { reason, message });
    };

    // Step 2.
    let mut claims = Vec::with_capacity(services.len());
    for (i, service) in services.iter().enumerate() {
        if service.unservable.is_some() {
            continue;
        }
        for requested in &service.requested_vips {
            let held = service.status_vips.iter().any(|s| s.addr == requested.addr);
            match grant_request(&pools, service, requested.addr, held) {
                Ok(pool) => claims.push(Claim {
                    service: i,
                    at: requested,
                    pool,
                    requested: true,
                    held,
                }),
                Err((reason, why)) => fail(
                    diagnostics,
                    i,
                    reason,
                    &requested.field,
                    format!("requested VIP {} {why}", requested.addr),
                ),
            }
        }
        if !service.requested_vips.is_empty() {
            continue;
        }
        let mut kept = false;
        for held in &service.status_vips {
            if let Some(pool) = keep_held(&pools, service, held.addr) {
                kept = true;
                claims.push(Claim {
                    service: i,
                    at: held,
                    pool,
                    requested: false,
                    held: true,
                });
            }
        }
        if !kept && let Some(stale) = service.status_vips.first() {
            diagnostics.find(
                Severity::Warning,
                Reason::StaleStatusIP,
                Some(&service.object),
                stale.field.clone(),
                format!(
                    "{} is not an allocatable address of a pool that selects this service: \
                     a new VIP is allocated",
                    stale.addr
                ),
            );
        }
    }

    // Step 3.
    claims.sort_by(|a, b| {
        (a.at.addr.cmp(&b.at.addr))
            .then_with(|| (!a.held).cmp(&!b.held))
            .then_with(|| allocation_order(&services[a.service], &services[b.service]))
    });
    let mut holders: BTreeMap<Ipv4Addr, Holder> = BTreeMap::new();
    for run in claims.chunk_by(|a, b| a.at.addr == b.at.addr) {
        let addr = run[0].at.addr;
        let mut holder = Holder {
            pool: run[0].pool,
            services: Sharers::One(run[0].service),
        };
        grants.push((run[0].service, grant(addr, &holder, run[0].requested)));
        granted[run[0].service] = true;
        for claim in &run[1..] {
            if holder.services.as_slice().contains(&claim.service) {
                continue;
            }
            match joins(services, holder.services.as_slice(), claim.service) {
                Ok(()) => {
                    holder.services.push(claim.service);
                    grants.push((claim.service, grant(addr, &holder, claim.requested)));
                    granted[claim.service] = true;
                }
                Err(refusal) if claim.requested => fail(
                    diagnostics,
                    claim.service,
                    refusal.reason,
                    &claim.at.field,
                    format!("requested VIP {addr} {}", refusal.why),
                ),
                Err(refusal) => diagnostics.find(
                    Severity::Warning,
                    Reason::StaleStatusIP,
                    Some(&services[claim.service].object),
                    claim.at.field.clone(),
                    format!("{addr} {}; it is not kept", refusal.why),
                ),
            }
        }
        holders.insert(addr, holder);
    }

    // Step 4.
    let mut waiting: Vec<usize> = (0..services.len())
        .filter(|&i| {
            let service = &services[i];
            service.unservable.is_none() && service.requested_vips.is_empty() && !granted[i]
        })
        .collect();
    waiting.sort_by(|&a, &b| allocation_order(&services[a], &services[b]));
    let mut by_key: BTreeMap<&str, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for (addr, holder) in &holders {
        for &i in holder.services.as_slice() {
            if let Some(sharing) = &services[i].sharing {
                by_key.entry(&sharing.key).or_default().insert(*addr);
            }
        }
    }
    let mut free = FreeAddresses::new(&pools, holders.keys().copied().collect());
    for i in waiting {
        let service = &services[i];
        let shared = service.sharing.as_ref().and_then(|sharing| {
            let addrs = by_key.get(sharing.key.as_str())?;
            addrs
                .iter()
                .find(|addr| joins(services, holders[addr].services.as_slice(), i).is_ok())
                .copied()
        });
        if let Some(addr) = shared {
            let holder = holders.get_mut(&addr).expect("a key's address is held");
            holder.services.push(i);
            grants.push((i, grant(addr, holder, false)));
            continue;
        }
        match free.take(service) {
            Ok((vip, pool)) => {
                let holder = Holder {
                    pool,
                    services: Sharers::One(i),
                };
                grants.push((i, grant(vip, &holder, false)));
                holders.insert(vip, holder);
                if let Some(sharing) = &service.sharing {
                    by_key.entry(&sharing.key).or_default().insert(vip);
                }
            }
            Err((reason, message)) => fail(diagnostics, i, reason, "", message),
        }
    }

    grants.sort_by_key(|(service, grant)| (*service, grant.vip));
    let mut outcomes = Vec::with_capacity(services.len());
    let mut from = 0;
    for (i, (service, failure)) in services.iter().zip(failures).enumerate() {
        let to = from + grants[from..].iter().take_while(|(s, _)| *s == i).count();
        outcomes.push(outcome(service, from..to, failure));
        from = to;
    }
    Allocation {
        services: outcomes,
        pools: pool_statuses(&pools, &holders),
        grants: grants.into_iter().map(|(_, grant)| grant).collect(),
        shared: (holders.into_iter())
            .filter_map(|(addr, holder)| match holder.services {
                Sharers::One(_) => None,
                Sharers::Many(services) => Some((addr, services)),
            })
            .collect(),
    }
}

fn grant(vip: Ipv4Addr, holder: &Holder, requested: bool) -> Grant {
    Grant {
        vip,
        pool: holder.pool,
        requested,
    }
}

/// Oldest `creationTimestamp` first (absent last), then by namespace and name.
fn allocation_order(a: &Service, b: &Service) -> Ordering {
    (a.created.is_none(), a.created, &a.object).cmp(&(b.created.is_none(), b.created, &b.object))
}

/// The condition of a Service, from what it was granted and what failed.
fn outcome(service: &Service, vips: Range<usize>, failure: Option<Failure>) -> Outcome {
    let (satisfied, reason, message) = if let Some(unservable) = &service.unservable {
        (false, unservable.reason, unservable.message.clone())
    } else if let Some(failure) = failure {
        (false, failure.reason, failure.message)
    } else if service.ipv6 == Some(Ipv6Wanted::Required) {
        (
            false,
            Reason::IPv6NotServed,
            "RequireDualStack: the IPv4 VIP is served, IPv6 is not served yet".to_owned(),
        )
    } else if service.ipv6 == Some(Ipv6Wanted::Preferred) {
        (
            true,
            Reason::Satisfied,
            "the IPv6 half is not served yet".to_owned(),
        )
    } else {
        (true, Reason::Satisfied, String::new())
    };
    Outcome {
        vips,
        satisfied,
        reason,
        message,
    }
}

/// Why a claim on an address is refused.
struct Refusal {
    reason: Reason,
    why: String,
}

/// Whether Service `joiner` may join the Services `on` an address: all of them must be able
/// to share with it.
fn joins(services: &[Arc<Service>], on: &[usize], joiner: usize) -> Result<(), Refusal> {
    let service = &services[joiner];
    for &held in on {
        let holder = &services[held];
        if let Err(why) = compatible(holder, service) {
            let reason = if service.sharing.is_none() {
                Reason::AlreadyAllocated
            } else {
                Reason::IncompatibleSharing
            };
            return Err(Refusal {
                reason,
                why: format!("is held by {}, which it cannot share: {why}", holder.object),
            });
        }
    }
    Ok(())
}

/// Whether two Services can share a VIP, as Cilium's LB-IPAM decides it, except that ports
/// clash only with the same protocol too (the datapath keys frontends by VIP, port and
/// protocol, so the DNS pair of a TCP and a UDP Service on port 53 shares).
pub(crate) fn compatible(a: &Service, b: &Service) -> Result<(), String> {
    let (Some(a_key), Some(b_key)) = (&a.sharing, &b.sharing) else {
        return Err("no lbipam.cilium.io/sharing-key on both".to_owned());
    };
    if a_key.key != b_key.key {
        return Err(format!(
            "a different sharing key ({:?}, {:?})",
            a_key.key, b_key.key
        ));
    }
    let (a_ns, b_ns) = (&a.object.namespace, &b.object.namespace);
    if !a_key.allows(a_ns, b_ns) || !b_key.allows(b_ns, a_ns) {
        return Err(format!(
            "namespaces {a_ns} and {b_ns} are not both allowed by \
             lbipam.cilium.io/sharing-cross-namespace"
        ));
    }
    if let Some(port) = (a.ports.iter())
        .find(|p| (b.ports.iter()).any(|q| q.port == p.port && q.protocol == p.protocol))
    {
        return Err(format!("both serve {}/{}", port.port, port.protocol));
    }
    if a.traffic_policy != b.traffic_policy {
        return Err("different externalTrafficPolicy".to_owned());
    }
    if a.traffic_policy == TrafficPolicy::Local
        && (a.selector.is_empty() || a.selector != b.selector)
    {
        return Err(
            "externalTrafficPolicy Local, but they do not select the same pods (spec.selector)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Step 2 for a request: the pool (index) that grants `addr` to `service`, or why none
/// does.
fn grant_request(
    pools: &Pools<'_>,
    service: &Service,
    addr: Ipv4Addr,
    held: bool,
) -> Result<usize, (Reason, String)> {
    let labels = service_labels(service);
    let mut refusal = None;
    for (i, pool, block, state) in pools.holding(addr) {
        let why = if !pool.service_selector.matches(&labels) || *state == PoolState::Broken {
            (
                Reason::PoolSelectorMismatch,
                format!(
                    "is in {} whose serviceSelector does not select this service",
                    pool.object()
                ),
            )
        } else if block.is_reserved(addr) {
            (
                Reason::RequestedIPReserved,
                format!(
                    "is the first or last address of {} {} ({}), reserved by \
                     allowFirstLastIPs: No",
                    pool.object(),
                    block.field,
                    block.describe()
                ),
            )
        } else if state.usable() || held {
            // A disabled or conflicting pool keeps what the Service already holds.
            return Ok(i);
        } else if let PoolState::Conflicting(why) = state {
            (
                Reason::PoolConflict,
                format!("is in {}, which conflicts: {why}", pool.object()),
            )
        } else {
            (
                Reason::PoolDisabled,
                format!("is in {} which is disabled", pool.object()),
            )
        };
        refusal.get_or_insert(why);
    }
    Err(refusal.unwrap_or_else(|| {
        (
            Reason::RequestedIPNotInPool,
            "is outside every CiliumLoadBalancerIPPool".to_owned(),
        )
    }))
}

/// Step 2 without a request: the pool (index) that keeps `addr`, which `service` holds in
/// its status.
fn keep_held(pools: &Pools<'_>, service: &Service, addr: Ipv4Addr) -> Option<usize> {
    let labels = service_labels(service);
    pools.holding(addr).find_map(|(i, pool, block, state)| {
        let selects = *state == PoolState::Broken || pool.service_selector.matches(&labels);
        (selects && !block.is_reserved(addr)).then_some(i)
    })
}

/// The free addresses of the usable pools, lowest first. Step 4 only ever takes
/// addresses, so each block's search resumes where its last one ended: allocating
/// thousands of Services walks each block once.
struct FreeAddresses<'p, 'c> {
    pools: &'p Pools<'c>,
    taken: BTreeSet<Ipv4Addr>,
    /// Per pool and block, the lowest address that may still be free.
    from: Vec<Vec<u64>>,
}

impl<'p, 'c> FreeAddresses<'p, 'c> {
    fn new(pools: &'p Pools<'c>, taken: BTreeSet<Ipv4Addr>) -> Self {
        let from = (pools.pools.iter())
            .map(|pool| {
                (pool.blocks.iter())
                    .map(|block| u64::from(u32::from(block.first)))
                    .collect()
            })
            .collect();
        Self { pools, taken, from }
    }

    /// The lowest free address of the first usable pool (by name) that selects `service`
    /// and has one, with the pool's index.
    fn take(&mut self, service: &Service) -> Result<(Ipv4Addr, usize), (Reason, String)> {
        let labels = service_labels(service);
        let mut candidates = Vec::new();
        for (i, (pool, state)) in self.pools.pools.iter().zip(&self.pools.states).enumerate() {
            if !state.usable() || !pool.service_selector.matches(&labels) {
                continue;
            }
            candidates.push(pool.object().to_string());
            if let Some(addr) = self.lowest_free(i) {
                self.taken.insert(addr);
                return Ok((addr, i));
            }
        }
        if candidates.is_empty() {
            Err((
                Reason::NoPool,
                "no enabled, non-conflicting CiliumLoadBalancerIPPool selects this service: it \
                 gets no VIP"
                    .to_owned(),
            ))
        } else {
            Err((
                Reason::OutOfIPs,
                format!(
                    "every pool that selects this service is full ({}): it gets no VIP",
                    candidates.join(", ")
                ),
            ))
        }
    }

    fn lowest_free(&mut self, pool: usize) -> Option<Ipv4Addr> {
        let blocks = &self.pools.pools[pool].blocks;
        let mut lowest: Option<Ipv4Addr> = None;
        for (b, block) in blocks.iter().enumerate() {
            let last = u64::from(u32::from(block.last));
            let mut at = self.from[pool][b];
            while at <= last {
                let addr = Ipv4Addr::from(at as u32);
                if !block.is_reserved(addr) && !self.taken.contains(&addr) {
                    break;
                }
                at += 1;
            }
            self.from[pool][b] = at;
            if at <= last {
                let addr = Ipv4Addr::from(at as u32);
                if lowest.is_none_or(|low| addr < low) {
                    lowest = Some(addr);
                }
            }
        }
        lowest
    }
}

/// Each pool's counts and conflict, as `kubectl get ippools` shows them with Cilium.
fn pool_statuses(pools: &Pools<'_>, holders: &BTreeMap<Ipv4Addr, Holder>) -> Vec<PoolStatus> {
    let mut used = vec![0u64; pools.pools.len()];
    for holder in holders.values() {
        used[holder.pool] += 1;
    }
    (pools.pools.iter().zip(&pools.states).zip(used))
        .map(|((pool, state), used)| {
            let total: u64 = pool.blocks.iter().map(|block| block.allocatable()).sum();
            PoolStatus {
                pool: pool.name.as_str().into(),
                disabled: pool.disabled,
                conflict: match state {
                    PoolState::Conflicting(why) => Some(why.clone()),
                    _ => None,
                },
                broken: pool.broken.clone(),
                total,
                used,
                available: total.saturating_sub(used),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::fixtures::*;
    use crate::config::{Reason, Severity};
    use crate::model::{ClusterState, cluster_state};

    const POOL_ONLY: &str = "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n\
                             metadata:\n  name: first-pool\nspec:\n  blocks:\n\
                             \x20   - cidr: \"192.168.10.32/27\"\n  allowFirstLastIPs: \"No\"\n";

    fn documents(docs: &[String]) -> String {
        docs.join("---\n")
    }

    /// (service name, VIP, pool, requested) of every VIP granted.
    fn allocations(text: &str) -> Vec<(String, String, String, bool)> {
        (cluster_state(&parse_ok(text)).services.into_iter())
            .flat_map(|s| {
                s.vips.into_iter().map(move |v| {
                    let name = s.service.name.to_string();
                    (name, v.vip.to_string(), v.pool.to_string(), v.requested)
                })
            })
            .collect()
    }

    /// `namespace/name` -> VIP, for the services that get one (their first).
    fn vips(text: &str) -> BTreeMap<String, String> {
        (cluster_state(&parse_ok(text)).services.into_iter())
            .filter_map(|s| {
                let vip = s.vips.first()?.vip.to_string();
                Some((format!("{}/{}", s.service.namespace, s.service.name), vip))
            })
            .collect()
    }

    /// LB-IPAM's findings of `severity` (not the announcement's: most fixtures have no L2
    /// policy).
    fn of_severity(state: &ClusterState, severity: Severity) -> Vec<String> {
        (state.findings.iter())
            .filter(|f| f.severity == severity && f.reason != Reason::NoAnnouncementPolicy)
            .map(ToString::to_string)
            .collect()
    }

    /// The error findings: what is not served.
    fn model_errors(text: &str) -> Vec<String> {
        of_severity(&cluster_state(&parse_ok(text)), Severity::Error)
    }

    fn model_warnings(text: &str) -> Vec<String> {
        of_severity(&cluster_state(&parse_ok(text)), Severity::Warning)
    }

    fn with_pool(services: &[ServiceDoc]) -> String {
        let mut docs = vec![POOL_ONLY.to_owned()];
        docs.extend(services.iter().map(ServiceDoc::yaml));
        documents(&docs)
    }

    #[test]
    fn the_reference_services_get_their_requested_vips() {
        assert_eq!(
            allocations(REFERENCE),
            [
                (
                    "cilium-gateway-gateway-external".into(),
                    "192.168.10.50".into(),
                    "first-pool".into(),
                    true
                ),
                (
                    "cilium-gateway-gateway-internal".into(),
                    "192.168.10.49".into(),
                    "first-pool".into(),
                    true
                ),
            ]
        );
    }

    #[test]
    fn dynamic_allocation_takes_the_oldest_service_first_and_skips_reserved_ends() {
        let text = with_pool(&[
            service_doc("web", "a").created("2025-01-02T00:00:00Z"),
            service_doc("web", "b").created("2025-01-01T00:00:00Z"),
            service_doc("web", "c"),
            service_doc("api", "z").created("2025-01-02T00:00:00Z"),
        ]);
        assert_eq!(
            vips(&text),
            BTreeMap::from([
                // .32 is the reserved first address (allowFirstLastIPs: No).
                ("web/b".into(), "192.168.10.33".into()),
                // Same timestamp: namespace, then name.
                ("api/z".into(), "192.168.10.34".into()),
                ("web/a".into(), "192.168.10.35".into()),
                // No timestamp: last.
                ("web/c".into(), "192.168.10.36".into()),
            ])
        );
        assert!(allocations(&text).iter().all(|a| !a.3));
    }

    #[test]
    fn requested_and_held_vips_come_before_dynamic_ones() {
        let text = with_pool(&[
            service_doc("web", "old").created("2020-01-01T00:00:00Z"),
            service_doc("web", "wants-33").requests("192.168.10.33"),
            service_doc("web", "holds-34").holds("192.168.10.34"),
        ]);
        let vips = vips(&text);
        assert_eq!(vips["web/wants-33"], "192.168.10.33");
        assert_eq!(vips["web/holds-34"], "192.168.10.34");
        assert_eq!(vips["web/old"], "192.168.10.35");
        let held = allocations(&text)
            .into_iter()
            .find(|a| a.0 == "holds-34")
            .expect("allocated");
        assert!(!held.3);
    }

    #[test]
    fn a_status_vip_outside_the_selecting_pools_is_replaced_with_a_warning() {
        for stale in ["10.9.9.9", "192.168.10.32"] {
            let text = with_pool(&[service_doc("web", "moved").holds(stale)]);
            assert_eq!(vips(&text)["web/moved"], "192.168.10.33", "{stale}");
            assert_line(
                &model_warnings(&text),
                &[
                    "objects.yaml: Service/web/moved: status.loadBalancer.ingress[0].ip:",
                    &format!("{stale} is not an allocatable address of a pool"),
                    "a new VIP is allocated",
                ],
            );
            let state = cluster_state(&parse_ok(&text));
            assert!(
                state
                    .findings
                    .iter()
                    .any(|f| f.reason == Reason::StaleStatusIP)
            );
        }
    }

    #[test]
    fn a_disabled_pool_keeps_what_is_held_and_allocates_nothing_new() {
        let disabled = edit(POOL_ONLY, "spec:\n", "spec:\n  disabled: true\n");
        let spare = pool_doc("second-pool", "  blocks:\n    - cidr: 10.0.0.0/24\n");
        let text = documents(&[
            disabled,
            spare,
            service_doc("web", "held").holds("192.168.10.40").yaml(),
            service_doc("web", "held-and-requested")
                .requests("192.168.10.41")
                .holds("192.168.10.41")
                .yaml(),
            service_doc("web", "new").yaml(),
        ]);
        let vips = vips(&text);
        assert_eq!(vips["web/held"], "192.168.10.40");
        assert_eq!(vips["web/held-and-requested"], "192.168.10.41");
        assert_eq!(vips["web/new"], "10.0.0.0");
    }

    #[test]
    fn the_first_selecting_pool_by_name_is_used_until_exhausted() {
        let pools = [
            pool_doc("b-pool", "  blocks:\n    - cidr: 10.0.2.0/24\n"),
            pool_doc("a-pool", "  blocks:\n    - start: 10.0.1.7\n"),
            pool_doc(
                "0-pool",
                "  blocks:\n    - cidr: 10.0.0.0/24\n  serviceSelector:\n    matchLabels:\n      tier: db\n",
            ),
        ];
        let mut docs = pools.to_vec();
        docs.push(
            service_doc("web", "one")
                .created("2025-01-01T00:00:00Z")
                .yaml(),
        );
        docs.push(
            service_doc("web", "two")
                .created("2025-01-02T00:00:00Z")
                .yaml(),
        );
        assert_eq!(
            vips(&documents(&docs)),
            BTreeMap::from([
                ("web/one".into(), "10.0.1.7".into()),
                ("web/two".into(), "10.0.2.0".into()),
            ])
        );
        let pools: Vec<String> = allocations(&documents(&docs))
            .into_iter()
            .map(|a| a.2)
            .collect();
        assert_eq!(pools, ["a-pool", "b-pool"]);
    }

    #[test]
    fn the_lowest_free_address_across_blocks() {
        let pool = pool_doc(
            "p",
            "  blocks:\n    - cidr: 10.0.1.0/30\n    - start: 10.0.0.5\n      stop: 10.0.0.6\n",
        );
        let text = documents(&[
            pool,
            service_doc("web", "a")
                .created("2025-01-01T00:00:00Z")
                .yaml(),
            service_doc("web", "b")
                .created("2025-01-02T00:00:00Z")
                .yaml(),
            service_doc("web", "c")
                .created("2025-01-03T00:00:00Z")
                .yaml(),
        ]);
        let vips = vips(&text);
        assert_eq!(
            [&vips["web/a"], &vips["web/b"], &vips["web/c"]],
            ["10.0.0.5", "10.0.0.6", "10.0.1.0"]
        );
    }

    /// (block, the addresses handed out in order until exhausted) with allowFirstLastIPs: No.
    #[test]
    fn allow_first_last_ips_no_edge_cases() {
        let cases: [(&str, &[&str]); 4] = [
            ("cidr: 10.0.0.0/30", &["10.0.0.1", "10.0.0.2"]),
            ("cidr: 10.0.0.0/31", &["10.0.0.0", "10.0.0.1"]),
            ("cidr: 10.0.0.9/32", &["10.0.0.9"]),
            (
                "start: 10.0.0.0\n      stop: 10.0.0.2",
                &["10.0.0.0", "10.0.0.1", "10.0.0.2"],
            ),
        ];
        for (block, expected) in cases {
            let pool = pool_doc(
                "p",
                &format!("  allowFirstLastIPs: \"No\"\n  blocks:\n    - {block}\n"),
            );
            let mut docs = vec![pool];
            for i in 0..expected.len() {
                docs.push(
                    service_doc("web", &format!("s{i}"))
                        .created(&format!("2025-01-0{}T00:00:00Z", i + 1))
                        .yaml(),
                );
            }
            let handed_out: Vec<String> = (0..expected.len())
                .map(|i| vips(&documents(&docs))[&format!("web/s{i}")].clone())
                .collect();
            assert_eq!(handed_out, expected, "{block}");

            docs.push(service_doc("web", "one-too-many").yaml());
            assert_eq!(
                model_errors(&documents(&docs)),
                [
                    "objects.yaml: Service/web/one-too-many: every pool that selects this service \
                     is full (CiliumLoadBalancerIPPool/p): it gets no VIP",
                ],
            );
        }
    }

    #[test]
    fn service_selectors_choose_the_pool() {
        let pools = [
            pool_doc(
                "db-pool",
                "  blocks:\n    - cidr: 10.0.2.0/24\n  serviceSelector:\n    matchLabels:\n      tier: db\n",
            ),
            pool_doc(
                "gateway-pool",
                "  blocks:\n    - cidr: 10.0.0.0/24\n  serviceSelector:\n    matchExpressions:\n\
                 \x20     - key: io.kubernetes.service.namespace\n        operator: In\n        values: [gateway]\n",
            ),
            pool_doc(
                "other-pool",
                "  blocks:\n    - cidr: 10.0.1.0/24\n  serviceSelector:\n    matchExpressions:\n\
                 \x20     - key: io.kubernetes.service.namespace\n        operator: NotIn\n        values: [gateway]\n",
            ),
        ];
        let mut docs = pools.to_vec();
        docs.push(service_doc("gateway", "gw").yaml());
        docs.push(service_doc("web", "shop").yaml());
        // Selected by db-pool and other-pool: the first by name.
        docs.push(service_doc("web", "db").label("tier", "db").yaml());
        assert_eq!(
            vips(&documents(&docs)),
            BTreeMap::from([
                ("gateway/gw".into(), "10.0.0.0".into()),
                ("web/db".into(), "10.0.2.0".into()),
                ("web/shop".into(), "10.0.1.0".into()),
            ])
        );
    }

    /// (documents, the service refused, its reason, its finding).
    #[test]
    fn a_refused_request_names_object_field_and_reason() {
        let annotation = "metadata.annotations[\"lbipam.cilium.io/ips\"]";
        let db_pool = pool_doc(
            "db-pool",
            "  blocks:\n    - cidr: 10.0.0.0/24\n  serviceSelector:\n    matchLabels:\n      tier: db\n",
        );
        let off_pool = pool_doc(
            "off-pool",
            "  disabled: true\n  blocks:\n    - cidr: 10.0.1.0/24\n",
        );
        let clashing = pool_doc(
            "zz-clashing",
            "  blocks:\n    - cidr: 192.168.10.32/29\n    - cidr: 10.0.2.0/24\n",
        );
        let pool = POOL_ONLY.to_owned();
        let cases: Vec<(Vec<String>, &str, Reason, String)> = vec![
            (
                vec![pool.clone(), service_doc("web", "x").requests("10.9.9.9").yaml()],
                "x",
                Reason::RequestedIPNotInPool,
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.9.9.9 is outside every CiliumLoadBalancerIPPool"
                ),
            ),
            (
                vec![pool.clone(), db_pool.clone(), service_doc("web", "x").requests("10.0.0.7").yaml()],
                "x",
                Reason::PoolSelectorMismatch,
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.0.0.7 is in CiliumLoadBalancerIPPool/db-pool whose serviceSelector does not select this service"
                ),
            ),
            (
                vec![pool.clone(), off_pool.clone(), service_doc("web", "x").requests("10.0.1.7").yaml()],
                "x",
                Reason::PoolDisabled,
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.0.1.7 is in CiliumLoadBalancerIPPool/off-pool which is disabled"
                ),
            ),
            (
                vec![pool.clone(), clashing, service_doc("web", "x").requests("10.0.2.7").yaml()],
                "x",
                Reason::PoolConflict,
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.0.2.7 is in CiliumLoadBalancerIPPool/zz-clashing, which conflicts: 192.168.10.32/29 overlaps CiliumLoadBalancerIPPool/first-pool spec.blocks[0] (192.168.10.32/27), an older pool"
                ),
            ),
            (
                vec![pool.clone(), service_doc("web", "x").requests("192.168.10.63").yaml()],
                "x",
                Reason::RequestedIPReserved,
                format!(
                    "Service/web/x: {annotation}: requested VIP 192.168.10.63 is the first or last address of CiliumLoadBalancerIPPool/first-pool spec.blocks[0] (192.168.10.32/27), reserved by allowFirstLastIPs: No"
                ),
            ),
            (
                vec![
                    pool.clone(),
                    service_doc("web", "a").requests("192.168.10.40").yaml(),
                    service_doc("web", "b").requests("192.168.10.40").yaml(),
                ],
                "b",
                Reason::AlreadyAllocated,
                format!(
                    "Service/web/b: {annotation}: requested VIP 192.168.10.40 is held by Service/web/a, which it cannot share: no lbipam.cilium.io/sharing-key on both"
                ),
            ),
            // The holder keeps its VIP; the newcomer's request is refused.
            (
                vec![
                    pool.clone(),
                    service_doc("web", "a").requests("192.168.10.40").yaml(),
                    service_doc("web", "b").holds("192.168.10.40").yaml(),
                ],
                "a",
                Reason::AlreadyAllocated,
                format!(
                    "Service/web/a: {annotation}: requested VIP 192.168.10.40 is held by Service/web/b, which it cannot share"
                ),
            ),
            (
                vec![db_pool.clone(), off_pool.clone(), service_doc("web", "x").yaml()],
                "x",
                Reason::NoPool,
                "Service/web/x: no enabled, non-conflicting CiliumLoadBalancerIPPool selects this service: it gets no VIP".to_owned(),
            ),
        ];
        for (docs, refused, reason, expected) in cases {
            let text = documents(&docs);
            let errors = model_errors(&text);
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_line(&errors, &[&format!("objects.yaml: {expected}")]);
            let state = cluster_state(&parse_ok(&text));
            let status = state
                .services
                .iter()
                .find(|s| s.service.name == refused)
                .unwrap();
            assert!(!status.satisfied && status.vips.is_empty(), "{status:?}");
            assert_eq!(status.reason, reason);
            assert!(errors[0].ends_with(&status.message), "{status:?}");
            // Every other service is allocated as if this one were not there.
            assert!(
                state
                    .services
                    .iter()
                    .filter(|s| s.service.name != refused)
                    .all(|s| s.satisfied)
            );
        }
    }

    #[test]
    fn two_holders_of_one_vip_the_older_keeps_it_and_the_other_moves() {
        let text = with_pool(&[
            service_doc("web", "a")
                .holds("192.168.10.40")
                .created("2025-01-02T00:00:00Z"),
            service_doc("web", "b")
                .holds("192.168.10.40")
                .created("2025-01-01T00:00:00Z"),
        ]);
        assert_eq!(
            vips(&text),
            BTreeMap::from([
                ("web/a".into(), "192.168.10.33".into()),
                ("web/b".into(), "192.168.10.40".into()),
            ])
        );
        assert_eq!(
            model_warnings(&text),
            [
                "objects.yaml: Service/web/a: status.loadBalancer.ingress[0].ip: 192.168.10.40 is held \
              by Service/web/b, which it cannot share: no lbipam.cilium.io/sharing-key on both; it is \
              not kept"
            ]
        );
        assert_eq!(model_errors(&text), Vec::<String>::new());
    }

    #[test]
    fn every_refusal_is_reported() {
        let text = with_pool(&[
            service_doc("web", "a").requests("10.9.9.9"),
            service_doc("web", "b").requests("192.168.10.32"),
            service_doc("web", "c").holds("192.168.10.40"),
            service_doc("web", "d").holds("192.168.10.40"),
        ]);
        assert_eq!(model_errors(&text).len(), 2);
        assert_eq!(model_warnings(&text).len(), 1);
        assert_eq!(vips(&text).len(), 2, "c keeps its VIP, d gets another");
    }

    #[test]
    fn every_later_claimant_of_a_vip_is_reported_against_the_holder() {
        let text = with_pool(&[
            service_doc("web", "a").requests("192.168.10.40"),
            service_doc("web", "b").requests("192.168.10.40"),
            service_doc("web", "c").holds("192.168.10.40"),
        ]);
        let errors = model_errors(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_line(&errors, &["Service/web/a: ", "is held by Service/web/c"]);
        assert_line(&errors, &["Service/web/b: ", "is held by Service/web/c"]);
    }

    #[test]
    fn a_refused_request_gets_no_other_vip() {
        // One address left after `held`; the refused service must not take it.
        let tiny = pool_doc("tiny", "  blocks:\n    - cidr: 10.0.0.0/31\n");
        let text = documents(&[
            tiny,
            service_doc("web", "held").holds("10.0.0.0").yaml(),
            service_doc("web", "refused").requests("10.9.9.9").yaml(),
            service_doc("web", "new").yaml(),
        ]);
        assert_eq!(
            model_errors(&text),
            [
                "objects.yaml: Service/web/refused: metadata.annotations[\"lbipam.cilium.io/ips\"]: \
              requested VIP 10.9.9.9 is outside every CiliumLoadBalancerIPPool"
            ]
        );
        assert_eq!(
            vips(&text),
            BTreeMap::from([
                ("web/held".into(), "10.0.0.0".into()),
                ("web/new".into(), "10.0.0.1".into()),
            ])
        );
    }

    #[test]
    fn pools_count_what_they_hand_out_as_kubectl_get_ippools_shows_it() {
        let text = documents(&[
            POOL_ONLY.to_owned(),
            pool_doc(
                "spare",
                "  disabled: true\n  blocks:\n    - start: 10.0.0.1\n      stop: 10.0.0.10\n",
            ),
            service_doc("web", "a").yaml(),
            service_doc("web", "b").yaml(),
            service_doc("web", "held").holds("10.0.0.5").yaml(),
        ]);
        let pools: Vec<(String, bool, u64, u64, u64)> =
            (cluster_state(&parse_ok(&text)).pools.iter())
                .map(|p| (p.pool.to_string(), p.disabled, p.total, p.used, p.available))
                .collect();
        assert_eq!(
            pools,
            [
                ("first-pool".into(), false, 30, 2, 28),
                ("spare".into(), true, 10, 1, 9),
            ]
        );
    }

    #[test]
    fn a_conflicting_pool_keeps_what_services_hold_and_allocates_nothing_new() {
        let newer = pool_doc(
            "newer",
            "  blocks:\n    - cidr: 192.168.10.48/28\n    - cidr: 10.0.0.0/30\n",
        );
        let text = documents(&[
            POOL_ONLY.to_owned(),
            newer,
            service_doc("web", "held").holds("10.0.0.1").yaml(),
            service_doc("web", "new").yaml(),
        ]);
        assert_eq!(
            vips(&text),
            BTreeMap::from([
                ("web/held".into(), "10.0.0.1".into()),
                ("web/new".into(), "192.168.10.33".into()),
            ])
        );
    }

    /// A mixture of requested, held and dynamically allocated services.
    fn base() -> Vec<ServiceDoc> {
        vec![
            service_doc("web", "requested").requests("192.168.10.45"),
            service_doc("web", "held").holds("192.168.10.34"),
            service_doc("web", "dyn-1").created("2025-01-01T00:00:00Z"),
            service_doc("web", "dyn-2").created("2025-01-02T00:00:00Z"),
            service_doc("api", "dyn-3").created("2025-01-02T00:00:00Z"),
            service_doc("api", "held-2").holds("192.168.10.33"),
        ]
    }

    #[test]
    fn adding_a_service_never_moves_another_vip() {
        let before = vips(&with_pool(&base()));
        let additions = [
            service_doc("web", "new"),
            service_doc("web", "newer").created("2025-06-01T00:00:00Z"),
            service_doc("aaa", "first-by-name"),
            service_doc("web", "new-requested").requests("192.168.10.60"),
            service_doc("web", "new-held").holds("192.168.10.50"),
        ];
        for (i, added) in additions.into_iter().enumerate() {
            let mut services = base();
            services.push(added);
            let after = vips(&with_pool(&services));
            assert_eq!(after.len(), before.len() + 1, "addition #{i}");
            for (service, vip) in &before {
                assert_eq!(&after[service], vip, "{service} moved by addition #{i}");
            }
        }
    }

    #[test]
    fn removing_a_service_never_moves_a_requested_or_held_vip() {
        let before = vips(&with_pool(&base()));
        let pinned = ["web/requested", "web/held", "api/held-2"];
        for removed in 0..base().len() {
            let mut services = base();
            services.remove(removed);
            let after = vips(&with_pool(&services));
            for service in pinned {
                if let Some(vip) = after.get(service) {
                    assert_eq!(
                        vip, &before[service],
                        "{service} moved when #{removed} left"
                    );
                }
            }
        }
    }

    #[test]
    fn with_every_vip_in_status_nothing_moves_whatever_is_added() {
        let held = vips(&with_pool(&base()));
        let all_held = || -> Vec<ServiceDoc> {
            held.iter()
                .map(|(key, vip)| {
                    let (namespace, name) = key.split_once('/').expect("namespace/name");
                    service_doc(namespace, name).holds(vip)
                })
                .collect()
        };
        let services = all_held();
        let mut grown = all_held();
        // Older than all of them: it would come first in pass 3, but there is no pass 3 left.
        grown.push(service_doc("aaa", "ancient").created("1999-01-01T00:00:00Z"));
        assert_eq!(vips(&with_pool(&services)), held);
        let after = vips(&with_pool(&grown));
        for (service, vip) in &held {
            assert_eq!(&after[service], vip);
        }
    }
}
