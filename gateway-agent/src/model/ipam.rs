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
use std::sync::Arc;

use super::selector::service_labels;
use crate::config::{Config, Diagnostics, FieldAddr, IpBlock, IpPool, Service};

/// A VIP granted to a service.
pub(crate) struct Grant<'c> {
    pub service: &'c Arc<Service>,
    pub vip: Ipv4Addr,
    pub pool: &'c IpPool,
    /// Pass 1: the service asked for this VIP.
    pub requested: bool,
}

/// A service's claim on a VIP in pass 1 or 2.
struct Claim<'c> {
    /// Index into `Config::services`.
    service: usize,
    at: &'c FieldAddr,
    pool: &'c IpPool,
    requested: bool,
}

/// The VIP of every service that gets one, in service (namespace, name) order. Services
/// that get none have an error recorded in `diagnostics`.
pub(crate) fn allocate<'c>(config: &'c Config, diagnostics: &mut Diagnostics) -> Vec<Grant<'c>> {
    let allocator = Allocator { config };
    let services = &config.services;

    // Passes 1 and 2, requests first: when one service requests the VIP another holds in
    // its status, the holder is the one reported.
    let mut claims = Vec::new();
    for (i, service) in services.iter().enumerate() {
        if let Some(requested) = &service.requested_vip
            && let Some(pool) = allocator.grant_requested(service, requested, diagnostics)
        {
            claims.push(Claim {
                service: i,
                at: requested,
                pool,
                requested: true,
            });
        }
    }
    for (i, service) in services.iter().enumerate() {
        if service.requested_vip.is_none()
            && let Some((held, pool)) = allocator.kept_from_status(service, diagnostics)
        {
            claims.push(Claim {
                service: i,
                at: held,
                pool,
                requested: false,
            });
        }
    }

    let mut grants: Vec<Option<Grant<'c>>> = services.iter().map(|_| None).collect();
    let mut holders: BTreeMap<Ipv4Addr, &Claim<'c>> = BTreeMap::new();
    for claim in &claims {
        let service = &services[claim.service];
        if let Some(first) = holders.get(&claim.at.addr) {
            diagnostics.error(
                Some(&service.object),
                claim.at.field.clone(),
                format!(
                    "VIP {} is also claimed by {} ({}): two services cannot share a VIP \
                     (lbipam.cilium.io/sharing-key is not supported)",
                    claim.at.addr, services[first.service].object, first.at.field
                ),
            );
            continue;
        }
        holders.insert(claim.at.addr, claim);
        grants[claim.service] = Some(Grant {
            service,
            vip: claim.at.addr,
            pool: claim.pool,
            requested: claim.requested,
        });
    }

    // Pass 3, for the services that neither request a VIP nor keep one.
    let mut claimed = vec![false; services.len()];
    for claim in &claims {
        claimed[claim.service] = true;
    }
    let mut waiting: Vec<(usize, &Arc<Service>)> = services
        .iter()
        .enumerate()
        .filter(|(i, service)| service.requested_vip.is_none() && !claimed[*i])
        .collect();
    waiting
        .sort_by_key(|&(_, service)| (service.created.is_none(), service.created, &service.object));
    let mut taken: BTreeSet<Ipv4Addr> = holders.into_keys().collect();
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
            .find_map(|pool| pool.block_of(addr).map(|block| (&**pool, block)))
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
            .map(|pool| &**pool)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::fixtures::*;
    use crate::model::{Allocation, cluster_state};

    const POOL_ONLY: &str = "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\n\
                             metadata:\n  name: first-pool\nspec:\n  blocks:\n\
                             \x20   - cidr: \"192.168.10.32/27\"\n  allowFirstLastIPs: \"No\"\n";

    fn documents(docs: &[String]) -> String {
        docs.join("---\n")
    }

    fn allocations(text: &str) -> Vec<Allocation> {
        cluster_state(&parse_ok(text))
            .unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"))
            .allocations
    }

    /// `namespace/name` -> VIP.
    fn vips(text: &str) -> BTreeMap<String, String> {
        allocations(text)
            .into_iter()
            .map(|a| {
                (
                    format!("{}/{}", a.service.namespace, a.service.name),
                    a.vip.to_string(),
                )
            })
            .collect()
    }

    fn model_errors(text: &str) -> Vec<String> {
        match cluster_state(&parse_ok(text)) {
            Ok(_) => panic!("expected errors, got none"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn model_warnings(text: &str) -> Vec<String> {
        cluster_state(&parse_ok(text))
            .unwrap_or_else(|errors| panic!("unexpected errors:\n{errors}"))
            .warnings
    }

    fn with_pool(services: &[ServiceDoc]) -> String {
        let mut docs = vec![POOL_ONLY.to_owned()];
        docs.extend(services.iter().map(ServiceDoc::yaml));
        documents(&docs)
    }

    #[test]
    fn the_reference_services_get_their_requested_vips() {
        let allocations = allocations(REFERENCE);
        let summary: Vec<(String, String, &str, bool)> = allocations
            .iter()
            .map(|a| {
                (
                    a.service.name.to_string(),
                    a.vip.to_string(),
                    a.pool.as_str(),
                    a.requested,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "cilium-gateway-gateway-external".into(),
                    "192.168.10.50".into(),
                    "first-pool",
                    true
                ),
                (
                    "cilium-gateway-gateway-internal".into(),
                    "192.168.10.49".into(),
                    "first-pool",
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
        assert!(allocations(&text).iter().all(|a| !a.requested));
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
            .find(|a| a.service.name == "holds-34")
            .expect("allocated");
        assert!(!held.requested);
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
            .map(|a| a.pool.to_string())
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
            assert_line(
                &model_errors(&documents(&docs)),
                &[
                    "objects.yaml: Service/web/one-too-many: pool exhausted: no free address left in CiliumLoadBalancerIPPool/p",
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

    #[test]
    fn allocation_errors_name_object_and_field() {
        let annotation = "metadata.annotations[\"lbipam.cilium.io/ips\"]";
        let db_pool = pool_doc(
            "db-pool",
            "  blocks:\n    - cidr: 10.0.0.0/24\n  serviceSelector:\n    matchLabels:\n      tier: db\n",
        );
        let off_pool = pool_doc(
            "off-pool",
            "  disabled: true\n  blocks:\n    - cidr: 10.0.1.0/24\n",
        );
        let pool = POOL_ONLY.to_owned();
        let cases: Vec<(Vec<String>, String)> = vec![
            (
                vec![pool.clone(), service_doc("web", "x").requests("10.9.9.9").yaml()],
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.9.9.9 is outside every CiliumLoadBalancerIPPool"
                ),
            ),
            (
                vec![pool.clone(), db_pool.clone(), service_doc("web", "x").requests("10.0.0.7").yaml()],
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.0.0.7 is in CiliumLoadBalancerIPPool/db-pool whose serviceSelector does not select this service"
                ),
            ),
            (
                vec![pool.clone(), off_pool.clone(), service_doc("web", "x").requests("10.0.1.7").yaml()],
                format!(
                    "Service/web/x: {annotation}: requested VIP 10.0.1.7 is in CiliumLoadBalancerIPPool/off-pool which is disabled"
                ),
            ),
            (
                vec![pool.clone(), service_doc("web", "x").requests("192.168.10.63").yaml()],
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
                format!(
                    "Service/web/b: {annotation}: VIP 192.168.10.40 is also claimed by Service/web/a ({annotation}): two services cannot share a VIP"
                ),
            ),
            (
                vec![
                    pool.clone(),
                    service_doc("web", "a").holds("192.168.10.40").yaml(),
                    service_doc("web", "b").holds("192.168.10.40").yaml(),
                ],
                "Service/web/b: status.loadBalancer.ingress[0].ip: VIP 192.168.10.40 is also claimed by Service/web/a (status.loadBalancer.ingress[0].ip)".to_owned(),
            ),
            (
                vec![
                    pool.clone(),
                    service_doc("web", "a").holds("192.168.10.40").yaml(),
                    service_doc("web", "b").requests("192.168.10.40").yaml(),
                ],
                format!(
                    "Service/web/a: status.loadBalancer.ingress[0].ip: VIP 192.168.10.40 is also claimed by Service/web/b ({annotation})"
                ),
            ),
            (
                vec![db_pool.clone(), off_pool.clone(), service_doc("web", "x").yaml()],
                "Service/web/x: metadata.labels: no enabled CiliumLoadBalancerIPPool selects this service: it gets no VIP".to_owned(),
            ),
        ];
        for (docs, expected) in cases {
            let text = documents(&docs);
            let errors = model_errors(&text);
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_line(&errors, &[&format!("objects.yaml: {expected}")]);
        }
    }

    #[test]
    fn every_allocation_error_is_reported() {
        let text = with_pool(&[
            service_doc("web", "a").requests("10.9.9.9"),
            service_doc("web", "b").requests("192.168.10.32"),
            service_doc("web", "c").holds("192.168.10.40"),
            service_doc("web", "d").holds("192.168.10.40"),
        ]);
        assert_eq!(model_errors(&text).len(), 3);
    }

    #[test]
    fn every_later_claimant_of_a_vip_is_reported_against_the_first() {
        let text = with_pool(&[
            service_doc("web", "a").requests("192.168.10.40"),
            service_doc("web", "b").requests("192.168.10.40"),
            service_doc("web", "c").holds("192.168.10.40"),
        ]);
        let errors = model_errors(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_line(
            &errors,
            &["Service/web/b: ", "also claimed by Service/web/a"],
        );
        assert_line(
            &errors,
            &["Service/web/c: ", "also claimed by Service/web/a"],
        );
    }

    #[test]
    fn a_refused_request_gets_no_other_vip() {
        // One address left after `held`; the refused service must not take it (or fail to).
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
