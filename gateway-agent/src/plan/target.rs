//! The full plan: the map contents that serve a desired state.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{Frontend as RevNatFrontend, VipKey, vip_filter_bit};

use super::entries::{
    BackendKey, announced, put_frontend, revnat_entry, revnat_frontend, service_key, with_revnat,
};
use super::ids::IdAllocator;
use super::{Interface, MapState, PlanError};
use crate::capacity::Capacity;
use crate::model::DesiredState;

/// The map contents that serve `desired` on `interfaces`, keeping `current`'s ids.
pub fn target(
    desired: &DesiredState,
    interfaces: &[Interface],
    current: &MapState,
    limits: &Capacity,
) -> Result<MapState, PlanError> {
    let mut next = MapState::default();

    // Backends: one id per distinct (address, port, protocol), draining ones included (their
    // flows go on); on another node if any frontend says so (they all do: an address has
    // one locality).
    let current_backend_ids: BTreeMap<BackendKey, u32> = current
        .backends
        .iter()
        .map(|(&id, b)| (BackendKey::of_entry(b), id))
        .collect();
    let mut wanted: BTreeMap<BackendKey, bool> = BTreeMap::new();
    for f in &desired.frontends {
        for b in f.listed() {
            *wanted.entry(BackendKey::of(f, b)).or_default() |= b.remote;
        }
    }
    let mut backend_ids = IdAllocator::new(
        wanted
            .keys()
            .filter_map(|k| current_backend_ids.get(k).copied())
            .collect::<BTreeSet<_>>(),
        limits.backends,
        "backends",
    );
    let mut backend_id_of = BTreeMap::new();
    for (&backend, &remote) in &wanted {
        let id = match current_backend_ids.get(&backend) {
            Some(&id) => id,
            None => backend_ids.take(wanted.len())?,
        };
        backend_id_of.insert(backend, id);
        next.backends.insert(id, backend.entry(remote));
    }

    // Services (frontends).
    let mut service_ids = IdAllocator::new(
        desired
            .frontends
            .iter()
            .filter_map(|f| current.services.get(&service_key(f)).map(|s| s.id))
            .collect::<BTreeSet<_>>(),
        limits.services,
        "services",
    );
    let mut frontends_of_backend: BTreeMap<BackendKey, BTreeSet<RevNatFrontend>> = BTreeMap::new();
    for f in &desired.frontends {
        let key = service_key(f);
        let id = match current.services.get(&key) {
            Some(s) => s.id,
            None => service_ids.take(desired.frontends.len())?,
        };
        put_frontend(&mut next, f, id, &backend_id_of)?;
        for b in f.listed() {
            frontends_of_backend
                .entry(BackendKey::of(f, b))
                .or_default()
                .insert(revnat_frontend(&key));
        }
        next.vips.entry(VipKey { addr: key.vip }).or_default().ports += 1;
        let bit = vip_filter_bit(key.vip);
        *next.vip_filter.entry(bit / 64).or_default() |= 1 << (bit % 64);
    }
    if next.slots.len() > limits.slots() as usize {
        return Err(PlanError::Capacity {
            what: "backend slots",
            needed: next.slots.len(),
            max: limits.slots(),
        });
    }
    if next.source_ranges.len() > limits.source_ranges() as usize {
        return Err(PlanError::Capacity {
            what: "source ranges",
            needed: next.source_ranges.len(),
            max: limits.source_ranges(),
        });
    }

    for (backend, frontends) in frontends_of_backend {
        let key = backend.revnat_key();
        let revnat = revnat_entry(&frontends, current.revnat.get(&key));
        let id = backend_id_of[&backend];
        next.backends
            .insert(id, with_revnat(next.backends[&id], &revnat));
        next.revnat.insert(key, revnat);
    }
    next.l2 = announced(desired, interfaces);
    next.ifaces = super::remote::ifaces(interfaces);
    next.remote_filter = super::remote::filter(next.backends.values());
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::plan::fixtures::*;
    use crate::plan::{Membership, Op};

    #[test]
    fn surviving_services_and_backends_keep_their_ids() {
        let d1 = desired(vec![
            frontend("a", [192, 168, 10, 49], 80, &[POD_A, POD_B]),
            frontend("b", [192, 168, 10, 50], 80, &[POD_C]),
        ]);
        let (_, s1) = step(&MapState::default(), &d1);
        // Remove service a and backend A; add a new service before b in key order.
        let d2 = desired(vec![
            frontend("new", [192, 168, 10, 40], 80, &[POD_C]),
            frontend("b", [192, 168, 10, 50], 80, &[POD_C, POD_B]),
        ]);
        let (ops, s2) = step(&s1, &d2);
        let id_of = |s: &MapState, vip: [u8; 4]| {
            s.services
                .iter()
                .find(|(k, _)| Ipv4Addr::from(k.vip) == Ipv4Addr::from(vip))
                .unwrap()
                .1
                .id
        };
        assert_eq!(
            id_of(&s1, [192, 168, 10, 50]),
            id_of(&s2, [192, 168, 10, 50])
        );
        let backend_id = |s: &MapState, (a, p): ([u8; 4], u16)| {
            *s.backends
                .iter()
                .find(|(_, b)| Ipv4Addr::from(b.addr) == Ipv4Addr::from(a) && b.port == p)
                .unwrap()
                .0
        };
        assert_eq!(backend_id(&s1, POD_B), backend_id(&s2, POD_B));
        assert_eq!(backend_id(&s1, POD_C), backend_id(&s2, POD_C));
        // The removed service's id is free again and the new service takes the lowest one.
        assert_eq!(
            id_of(&s2, [192, 168, 10, 40]),
            id_of(&s1, [192, 168, 10, 49])
        );
        assert!(ops.contains(&Op::DeactivateBackend(backend_id(&s1, POD_A))));
        // Affinity of ended memberships is cleared: a's members, and nothing of b's survivors.
        let Some(Op::EndMemberships(ended)) = ops.last() else {
            panic!("{ops:?}")
        };
        let a = id_of(&s1, [192, 168, 10, 49]);
        assert_eq!(
            ended,
            &BTreeSet::from([
                Membership {
                    service_id: a,
                    backend_id: backend_id(&s1, POD_A)
                },
                Membership {
                    service_id: a,
                    backend_id: backend_id(&s1, POD_B)
                }
            ])
        );
    }

    #[test]
    fn a_backend_shared_by_two_frontends_reverse_nats_to_both() {
        let d = desired(vec![
            frontend("a", [192, 168, 10, 49], 80, &[POD_A]),
            frontend("b", [192, 168, 10, 50], 80, &[POD_A]),
        ]);
        let (_, s) = step(&MapState::default(), &d);
        assert_eq!(s.backends.len(), 1);
        let rn = s.revnat.values().next().unwrap();
        assert_eq!(rn.count, 2);
    }

    #[test]
    fn a_backend_serving_more_frontends_than_reverse_nat_lists_gets_reply_entries() {
        use gateway_common::{BACKEND_F_REPLY_CT, REVNAT_F_REPLY_CT, capacity::REVNAT_FRONTENDS};
        let vip = |i: u8| [192, 168, 10, 100 + i];
        let fronts = |n: u8| {
            desired(
                (0..n)
                    .map(|i| frontend(&format!("x{i}"), vip(i), 80, &[POD_A]))
                    .collect(),
            )
        };
        let listed = |s: &MapState| {
            let rn = s.revnat.values().next().unwrap();
            let listed: Vec<[u8; 4]> = rn.frontends[..rn.count as usize]
                .iter()
                .map(|f| f.vip)
                .collect();
            let backend = s.backends.values().next().unwrap();
            (
                listed,
                rn.flags & REVNAT_F_REPLY_CT != 0,
                backend.flags & BACKEND_F_REPLY_CT != 0,
            )
        };
        let (_, four) = step(&MapState::default(), &fronts(REVNAT_FRONTENDS as u8));
        assert_eq!(
            listed(&four),
            (vec![vip(0), vip(1), vip(2), vip(3)], false, false)
        );
        // 64 frontends on one backend: no limit, four listed, replies through reply entries.
        let (_, many) = step(&four, &fronts(64));
        assert_eq!(many.services.len(), 64);
        assert_eq!(
            listed(&many),
            (vec![vip(0), vip(1), vip(2), vip(3)], true, true)
        );
        // The listed frontends keep their places while they serve: the first one goes, the
        // others stay where they are and the free place goes to the next frontend.
        let mut fewer = fronts(64);
        fewer.frontends.remove(0);
        fewer.announcements.remove(0);
        let (_, fewer) = step(&many, &fewer);
        assert_eq!(
            listed(&fewer),
            (vec![vip(1), vip(2), vip(3), vip(4)], true, true)
        );
        // Back to four: the mark goes.
        let mut back = fronts(5);
        back.frontends.remove(0);
        back.announcements.remove(0);
        let (_, back) = step(&fewer, &back);
        assert_eq!(
            listed(&back),
            (vec![vip(1), vip(2), vip(3), vip(4)], false, false)
        );
    }

    #[test]
    fn a_state_larger_than_the_maps_is_refused() {
        let d = desired(vec![
            frontend("a", [192, 168, 10, 49], 80, &[POD_A]),
            frontend("b", [192, 168, 10, 50], 80, &[POD_A]),
        ]);
        let small = Capacity {
            services: 2,
            ..Capacity::default()
        };
        let err = target(&d, &ens18(), &MapState::default(), &small).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 services needed but the datapath holds at most 1"
        );
        let small = Capacity {
            backends: 2,
            ..Capacity::default()
        };
        let d = desired(vec![frontend("a", [192, 168, 10, 49], 80, &[POD_A, POD_B])]);
        let err = target(&d, &ens18(), &MapState::default(), &small).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 backends needed but the datapath holds at most 1"
        );
    }

    #[test]
    fn announcements_only_on_known_interfaces() {
        let mut d = desired(vec![frontend("a", [192, 168, 10, 49], 80, &[POD_A])]);
        d.announcements[0].interface = "eno1".into();
        let t = target(&d, &ens18(), &MapState::default(), &Capacity::default()).unwrap();
        assert!(t.l2.is_empty());
    }
}
