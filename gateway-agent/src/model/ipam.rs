//! LB-IPAM: which VIP each LoadBalancer service gets.
//!
//! A pure function of the file, so every node computes the same allocation. Three passes:
//! 1. a requested VIP (`spec.loadBalancerIP` or the LB-IPAM annotation) is granted if a pool
//!    that selects the service holds it; anything else is an error;
//! 2. a service that requests nothing keeps the first VIP of its status that lies in a pool
//!    selecting it (how an export carries a previous allocation, and how Cilium re-reads it
//!    after a restart); a disabled pool still honours what services already hold;
//! 3. every other service gets the lowest free address of the first enabled pool (by name)
//!    that selects it and has one, services taken oldest `creationTimestamp` first (absent
//!    last), then by namespace and name.
//!
//! Two services claiming one VIP (by request or status, in any combination) is an error, not
//! a race to win: that is what makes passes 1 and 2 independent of every other service.
//! Hence: removing a service never moves a VIP that is requested or in status; adding a
//! service never moves another's VIP if it is newer than the services allocated in pass 3
//! (as a new object is) or they all carry their VIP in status; and document order never
//! matters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::selector::service_labels;
use crate::config::{Config, Diagnostics, FieldAddr, IpBlock, IpPool, Service};

/// A VIP granted to a service.
pub(crate) struct Grant<'c> {
    pub service: &'c Service,
    pub vip: Ipv4Addr,
    pub pool: &'c IpPool,
    /// Pass 1: the service asked for this VIP.
    pub requested: bool,
}

/// The VIP of every service that gets one, in service (namespace, name) order. Services
/// that get none have an error recorded in `diagnostics`.
pub(crate) fn allocate<'c>(config: &'c Config, diagnostics: &mut Diagnostics) -> Vec<Grant<'c>> {
    let allocator = Allocator { config };
    let mut grants: Vec<Option<Grant<'c>>> = config.services.iter().map(|_| None).collect();
    // Services that requested or hold a VIP, granted or not: pass 3 is not for them.
    let mut claimed = vec![false; config.services.len()];
    let mut claims: BTreeMap<Ipv4Addr, Vec<(usize, &FieldAddr)>> = BTreeMap::new();

    for (i, service) in config.services.iter().enumerate() {
        claimed[i] = service.requested_vip.is_some();
        let claim = match &service.requested_vip {
            Some(requested) => allocator
                .grant_requested(service, requested, diagnostics)
                .map(|pool| (requested, pool, true)),
            None => allocator
                .kept_from_status(service, diagnostics)
                .map(|(held, pool)| (held, pool, false)),
        };
        let Some((at, pool, requested)) = claim else {
            continue;
        };
        claimed[i] = true;
        let holders = claims.entry(at.addr).or_default();
        holders.push((i, at));
        if let [(first, first_at), ..] = holders.as_slice()
            && *first != i
        {
            diagnostics.error(
                Some(&service.object),
                at.field.clone(),
                format!(
                    "VIP {} is also claimed by {} ({}): two services cannot share a VIP \
                     (lbipam.cilium.io/sharing-key is not supported)",
                    at.addr, config.services[*first].object, first_at.field
                ),
            );
            continue;
        }
        grants[i] = Some(Grant {
            service,
            vip: at.addr,
            pool,
            requested,
        });
    }

    let mut taken: BTreeSet<Ipv4Addr> = claims.into_keys().collect();
    let mut waiting: Vec<(usize, &Service)> = config
        .services
        .iter()
        .enumerate()
        .filter(|(i, _)| !claimed[*i])
        .collect();
    waiting.sort_by(|(_, a), (_, b)| {
        (a.created.is_none(), a.created, &a.object).cmp(&(
            b.created.is_none(),
            b.created,
            &b.object,
        ))
    });
    for (i, service) in waiting {
        if let Some((vip, pool)) = allocator.allocate_free(service, &taken, diagnostics) {
            taken.insert(vip);
            grants[i] = Some(Grant {
                service,
                vip,
                pool,
                requested: false,
            });
        }
    }
    grants.into_iter().flatten().collect()
}

struct Allocator<'c> {
    config: &'c Config,
}

impl<'c> Allocator<'c> {
    /// The pool and block holding `addr` (pools do not overlap: validation saw to it).
    fn locate(&self, addr: Ipv4Addr) -> Option<(&'c IpPool, &'c IpBlock)> {
        self.config
            .pools
            .iter()
            .find_map(|pool| pool.block_of(addr).map(|block| (pool, block)))
    }

    /// Pass 1: the pool that grants `requested`, or an error saying why none does.
    fn grant_requested(
        &self,
        service: &Service,
        requested: &FieldAddr,
        diagnostics: &mut Diagnostics,
    ) -> Option<&'c IpPool> {
        let addr = requested.addr;
        let refuse = |diagnostics: &mut Diagnostics, why: String| {
            diagnostics.error(
                Some(&service.object),
                requested.field.clone(),
                format!("requested VIP {addr} {why}"),
            );
            None
        };
        let Some((pool, block)) = self.locate(addr) else {
            return refuse(
                diagnostics,
                "is outside every CiliumLoadBalancerIPPool".to_owned(),
            );
        };
        if !pool.service_selector.matches(&service_labels(service)) {
            return refuse(
                diagnostics,
                format!(
                    "is in {} whose serviceSelector does not select this service",
                    pool.object()
                ),
            );
        }
        if block.is_reserved(addr) {
            return refuse(
                diagnostics,
                format!(
                    "is the first or last address of {} {} ({}), reserved by \
                     allowFirstLastIPs: No",
                    pool.object(),
                    block.field,
                    block.describe()
                ),
            );
        }
        let already_held = service.status_vips.iter().any(|s| s.addr == addr);
        if pool.disabled && !already_held {
            return refuse(
                diagnostics,
                format!("is in {} which is disabled", pool.object()),
            );
        }
        Some(pool)
    }

    /// Pass 2: the status VIP the service keeps, with its pool.
    fn kept_from_status<'s>(
        &self,
        service: &'s Service,
        diagnostics: &mut Diagnostics,
    ) -> Option<(&'s FieldAddr, &'c IpPool)> {
        let labels = service_labels(service);
        let kept = service.status_vips.iter().find_map(|held| {
            let (pool, block) = self.locate(held.addr)?;
            (pool.service_selector.matches(&labels) && !block.is_reserved(held.addr))
                .then_some((held, pool))
        });
        if kept.is_none()
            && let Some(stale) = service.status_vips.first()
        {
            diagnostics.warn(
                Some(&service.object),
                stale.field.clone(),
                format!(
                    "{} is not an allocatable address of a pool that selects this service: \
                     a new VIP is allocated",
                    stale.addr
                ),
            );
        }
        kept
    }

    /// Pass 3: the lowest free address of the first selecting enabled pool that has one.
    fn allocate_free(
        &self,
        service: &Service,
        taken: &BTreeSet<Ipv4Addr>,
        diagnostics: &mut Diagnostics,
    ) -> Option<(Ipv4Addr, &'c IpPool)> {
        let labels = service_labels(service);
        let candidates: Vec<&IpPool> = self
            .config
            .pools
            .iter()
            .filter(|pool| !pool.disabled && pool.service_selector.matches(&labels))
            .collect();
        if candidates.is_empty() {
            diagnostics.error(
                Some(&service.object),
                "metadata.labels",
                "no enabled CiliumLoadBalancerIPPool selects this service: it gets no VIP",
            );
            return None;
        }
        let found = candidates
            .iter()
            .find_map(|pool| lowest_free(pool, taken).map(|vip| (vip, *pool)));
        if found.is_none() {
            let names: Vec<String> = candidates.iter().map(|p| p.object().to_string()).collect();
            diagnostics.error(
                Some(&service.object),
                "",
                format!(
                    "pool exhausted: no free address left in {}",
                    names.join(", ")
                ),
            );
        }
        found
    }
}

/// The numerically lowest address of `pool` that is neither reserved nor taken. Walks each
/// block from its start, so the work is bounded by the number of taken addresses.
fn lowest_free(pool: &IpPool, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    pool.blocks
        .iter()
        .filter_map(|block| {
            (u32::from(block.first)..=u32::from(block.last))
                .map(Ipv4Addr::from)
                .find(|addr| !block.is_reserved(*addr) && !taken.contains(addr))
        })
        .min()
}
