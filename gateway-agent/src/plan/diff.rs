//! The ordered, make-before-break writes from one map state to another.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{SERVICE_F_SOURCE_RANGES, SlotKey};

use super::entries::slots_of;
use super::{MapState, Membership, Op};
use crate::config::Ipv4Net;

/// The ordered writes that turn `current` into `target` without a moment where a VIP is
/// announced or a service points at something that does not exist yet: additions bottom-up
/// (interfaces and the remote backends' filter, backends, reverse NAT, slots, services,
/// VIPs, announcements), then removals top-down.
pub fn diff(current: &MapState, target: &MapState) -> Vec<Op> {
    let mut ops = Vec::new();
    let _ = diff_each(current, target, |op| {
        ops.push(op);
        Ok::<(), std::convert::Infallible>(())
    });
    ops
}

/// [`diff`], handing each write to `emit` as soon as it is known rather than collecting
/// them (programming 10,000 services from scratch is 400,000 writes). Additions come first,
/// as they are found; removals (few, after a reload) are held back until after them.
pub fn diff_each<E>(
    current: &MapState,
    target: &MapState,
    mut emit: impl FnMut(Op) -> Result<(), E>,
) -> Result<(), E> {
    let iface_deletes = put_or_defer(
        &current.ifaces,
        &target.ifaces,
        |k, v| Op::PutIface(*k, *v),
        |k| Op::DeleteIface(*k),
        &mut emit,
    )?;
    let remote_filter_shrinks = grow_or_defer(
        &current.remote_filter,
        &target.remote_filter,
        Op::PutRemoteFilter,
        Op::ShrinkRemoteFilter,
        &mut emit,
    )?;
    let mut backend_deletes = Vec::new();
    merge(&current.backends, &target.backends, |id, new, old| {
        match new {
            Some(b) => {
                if old.is_none() {
                    emit(Op::ResetBackendStats(*id))?;
                }
                emit(Op::PutBackend(*id, *b))?;
            }
            None => backend_deletes.push(Op::DeactivateBackend(*id)),
        }
        Ok(())
    })?;

    // Reverse NAT before the slots and services that send flows to a backend, so that their
    // first replies are found.
    let revnat_deletes = put_or_defer(
        &current.revnat,
        &target.revnat,
        |k, v| Op::PutRevNat(*k, *v),
        |k| Op::DeleteRevNat(*k),
        &mut emit,
    )?;
    // A slot that changes or goes may end its old backend's membership of the service.
    let mut maybe_ended = BTreeSet::new();
    let mut slot_deletes = Vec::new();
    merge(&current.slots, &target.slots, |k, new, old| {
        if let Some(&old) = old {
            maybe_ended.insert(Membership {
                service_id: k.service_id,
                backend_id: old,
            });
        }
        match new {
            Some(b) => emit(Op::PutSlot(*k, *b))?,
            None => slot_deletes.push(Op::DeleteSlot(*k)),
        }
        Ok(())
    })?;

    // A service's source ranges are in place before it admits by them; ranges that go, go
    // after it stopped using them.
    let mut range_deletes = Vec::new();
    let mut reranged = BTreeSet::new();
    for &(id, net) in current
        .source_ranges
        .symmetric_difference(&target.source_ranges)
    {
        reranged.insert(id);
        if target.source_ranges.contains(&(id, net)) {
            emit(Op::PutSourceRange(id, net))?;
        } else {
            range_deletes.push(Op::DeleteSourceRange(id, net));
        }
    }

    let current_ids: BTreeSet<u32> = current.services.values().map(|s| s.id).collect();
    let mut service_deletes = Vec::new();
    // Services whose backends may have stopped taking new flows: a slot or the backend
    // count changed.
    let mut reshuffled: BTreeSet<u32> = maybe_ended.iter().map(|m| m.service_id).collect();
    merge(&current.services, &target.services, |k, new, old| {
        if let (Some(new), Some(old)) = (new, old)
            && new.id == old.id
        {
            reshuffled.insert(new.id);
            if (new.flags ^ old.flags) & SERVICE_F_SOURCE_RANGES != 0 {
                reranged.insert(new.id);
            }
        }
        match new {
            Some(s) => {
                if !current_ids.contains(&s.id) {
                    emit(Op::ResetServiceStats(s.id))?;
                }
                emit(Op::PutService(*k, *s))?;
            }
            None => service_deletes.push(Op::DeleteService(*k)),
        }
        Ok(())
    })?;
    let name_deletes = put_or_defer(
        &current.names,
        &target.names,
        |k, v| Op::PutName(*k, v.clone()),
        |k| Op::DeleteName(*k),
        &mut emit,
    )?;
    // A filter word first gains the bits of new VIPs (keeping the old ones), and loses the
    // bits of removed VIPs only after they are gone.
    let filter_shrinks = grow_or_defer(
        &current.vip_filter,
        &target.vip_filter,
        Op::PutVipFilter,
        Op::ShrinkVipFilter,
        &mut emit,
    )?;
    let vip_deletes = put_or_defer(
        &current.vips,
        &target.vips,
        |k, v| Op::PutVip(*k, *v),
        |k| Op::DeleteVip(*k),
        &mut emit,
    )?;
    let l2_deletes = put_or_defer(
        &current.l2,
        &target.l2,
        |k, v| Op::PutL2(*k, *v),
        |k| Op::DeleteL2(*k),
        &mut emit,
    )?;

    // Removals top-down: stop announcing first, free backends last.
    for group in [
        l2_deletes,
        vip_deletes,
        filter_shrinks,
        service_deletes,
        range_deletes,
        name_deletes,
        slot_deletes,
        revnat_deletes,
        backend_deletes,
        remote_filter_shrinks,
        iface_deletes,
    ] {
        for op in group {
            emit(op)?;
        }
    }
    // Memberships that really ended: the backend is in none of the service's target slots.
    let ended: BTreeSet<Membership> = maybe_ended
        .into_iter()
        .filter(
            |&Membership {
                 service_id,
                 backend_id,
             }| {
                let slots = SlotKey {
                    service_id,
                    slot: 0,
                }..SlotKey {
                    service_id: service_id + 1,
                    slot: 0,
                };
                !target.slots.range(slots).any(|(_, &b)| b == backend_id)
            },
        )
        .collect();
    if !ended.is_empty() {
        emit(Op::EndMemberships(ended))?;
    }
    let drained = draining(current, target, &reshuffled);
    if !drained.is_empty() {
        emit(Op::EndAffinity(drained))?;
    }
    // Services that admit by other ranges than before: their flows from clients the new
    // ranges leave out end.
    let restricted: BTreeMap<u32, Vec<Ipv4Net>> = target
        .services
        .values()
        .filter(|s| reranged.contains(&s.id))
        .filter_map(|s| Some((s.id, target.source_ranges_of(s)?)))
        .collect();
    if !restricted.is_empty() {
        emit(Op::DenyOutside(restricted))?;
    }
    Ok(())
}

/// The memberships of `services` whose backend took the service's new flows in `current`
/// and only drains in `target` (terminating: still listed, past the
/// service's backend count).
fn draining(
    current: &MapState,
    target: &MapState,
    services: &BTreeSet<u32>,
) -> BTreeSet<Membership> {
    if services.is_empty() {
        return BTreeSet::new();
    }
    // Backends taking new flows, and every backend listed, per service of `services`.
    fn members(
        state: &MapState,
        services: &BTreeSet<u32>,
    ) -> BTreeMap<u32, (BTreeSet<u32>, BTreeSet<u32>)> {
        let mut members = BTreeMap::new();
        for s in state.services.values().filter(|s| services.contains(&s.id)) {
            let (mut taking, mut listed) = (BTreeSet::new(), BTreeSet::new());
            for (slot, &backend) in state.slots.range(slots_of(s.id)) {
                listed.insert(backend);
                if slot.slot <= u32::from(s.backend_count) {
                    taking.insert(backend);
                }
            }
            members.insert(s.id, (taking, listed));
        }
        members
    }
    let (before, after) = (members(current, services), members(target, services));
    let mut drained = BTreeSet::new();
    for (id, (was_taking, _)) in before {
        let Some((taking, listed)) = after.get(&id) else {
            continue;
        };
        for backend in was_taking {
            if !taking.contains(&backend) && listed.contains(&backend) {
                drained.insert(Membership {
                    service_id: id,
                    backend_id: backend,
                });
            }
        }
    }
    drained
}

/// For a map whose entries need no other care: a key that arrives or changes is written
/// now, through `emit`; the deletes of keys that go are returned, to be made after every
/// addition.
fn put_or_defer<K: Ord, V: PartialEq, E>(
    current: &BTreeMap<K, V>,
    target: &BTreeMap<K, V>,
    put: impl Fn(&K, &V) -> Op,
    delete: impl Fn(&K) -> Op,
    emit: &mut impl FnMut(Op) -> Result<(), E>,
) -> Result<Vec<Op>, E> {
    let mut deletes = Vec::new();
    merge(current, target, |k, new, _| {
        match new {
            Some(v) => emit(put(k, v))?,
            None => deletes.push(delete(k)),
        }
        Ok(())
    })?;
    Ok(deletes)
}

/// For a bitmap's words: a word that gains bits is written now with its old bits and its
/// new ones (`grow`); one that loses bits is returned as its final value (`shrink`), to be
/// written after every addition.
fn grow_or_defer<E>(
    current: &BTreeMap<u32, u64>,
    target: &BTreeMap<u32, u64>,
    grow: impl Fn(u32, u64) -> Op,
    shrink: impl Fn(u32, u64) -> Op,
    emit: &mut impl FnMut(Op) -> Result<(), E>,
) -> Result<Vec<Op>, E> {
    let mut shrinks = Vec::new();
    merge(current, target, |&word, new, old| {
        let (bits, old) = (new.copied().unwrap_or(0), old.copied().unwrap_or(0));
        if old & !bits != 0 {
            shrinks.push(shrink(word, bits));
        }
        if old | bits != old {
            emit(grow(word, old | bits))?;
        }
        Ok(())
    })?;
    Ok(shrinks)
}

/// Walks two maps together in key order (linear, no lookups) and calls `each(key, new,
/// old)` for every key whose value differs: `new` is `None` for a key only in `current`,
/// `old` is `None` for a key only in `target`.
pub(super) fn merge<'a, K: Ord, V: PartialEq, E>(
    current: &'a BTreeMap<K, V>,
    target: &'a BTreeMap<K, V>,
    mut each: impl FnMut(&'a K, Option<&'a V>, Option<&'a V>) -> Result<(), E>,
) -> Result<(), E> {
    let mut old = current.iter().peekable();
    for (k, v) in target {
        while let Some((ok, ov)) = old.next_if(|(ok, _)| *ok < k) {
            each(ok, None, Some(ov))?;
        }
        match old.next_if(|(ok, _)| *ok == k) {
            Some((_, ov)) if ov == v => {}
            ov => each(k, Some(v), ov.map(|(_, ov)| ov))?,
        }
    }
    for (ok, ov) in old {
        each(ok, None, Some(ov))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use gateway_common::{SERVICE_F_AFFINITY, timeouts, vip_filter_bit};

    use crate::plan::fixtures::*;

    #[test]
    fn a_fresh_state_is_built_bottom_up() {
        let d = desired(vec![frontend(
            "gw",
            [192, 168, 10, 49],
            80,
            &[POD_A, POD_B],
        )]);
        let (ops, state) = step(&MapState::default(), &d);
        let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).unwrap();
        let backend = pos(&|o| matches!(o, Op::PutBackend(..)));
        let slot = pos(&|o| matches!(o, Op::PutSlot(..)));
        let service = pos(&|o| matches!(o, Op::PutService(..)));
        let vip = pos(&|o| matches!(o, Op::PutVip(..)));
        let l2 = pos(&|o| matches!(o, Op::PutL2(..)));
        assert!(
            backend < slot && slot < service && service < vip && vip < l2,
            "{ops:?}"
        );
        assert_eq!(state.services.len(), 1);
        let s = state.services.values().next().unwrap();
        assert_eq!((s.id, s.backend_count, s.flags), (1, 2, SERVICE_F_AFFINITY));
        assert_eq!(s.affinity_timeout_ns, 10800 * timeouts::NS_PER_SEC);
        assert_eq!(
            state.backends.keys().copied().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(state.l2.len(), 1);
        assert_eq!(state.names[&1], "gateway/gw:http");
        let rn = state.revnat.values().next().unwrap();
        assert_eq!(rn.count, 1);
        assert_eq!(
            Ipv4Addr::from(rn.frontends[0].vip),
            Ipv4Addr::new(192, 168, 10, 49)
        );
    }

    #[test]
    fn the_same_desired_state_needs_no_writes() {
        let d = desired(vec![frontend(
            "gw",
            [192, 168, 10, 49],
            80,
            &[POD_A, POD_B],
        )]);
        let (_, state) = step(&MapState::default(), &d);
        let (ops, _) = step(&state, &d);
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn removals_stop_the_announcement_first_and_free_backends_last() {
        let d1 = desired(vec![frontend("a", [192, 168, 10, 49], 80, &[POD_A])]);
        let (_, s1) = step(&MapState::default(), &d1);
        let (ops, s2) = step(&s1, &desired(vec![]));
        assert!(matches!(ops.first(), Some(Op::DeleteL2(_))), "{ops:?}");
        let deactivate = ops
            .iter()
            .position(|o| matches!(o, Op::DeactivateBackend(_)))
            .unwrap();
        let slot = ops
            .iter()
            .position(|o| matches!(o, Op::DeleteSlot(_)))
            .unwrap();
        assert!(slot < deactivate);
        let interfaces_only = MapState {
            ifaces: s1.ifaces.clone(),
            ..MapState::default()
        };
        assert_eq!(s2, interfaces_only);
    }

    #[test]
    fn the_vip_filter_gains_bits_before_vips_and_loses_them_after() {
        let (_, s1) = step(
            &MapState::default(),
            &desired(vec![frontend("a", [192, 168, 10, 49], 80, &[POD_A])]),
        );
        let bit = vip_filter_bit([192, 168, 10, 49]);
        assert_eq!(
            s1.vip_filter,
            BTreeMap::from([(bit / 64, 1u64 << (bit % 64))])
        );
        let (ops, s2) = step(&s1, &desired(vec![]));
        let vip = ops
            .iter()
            .position(|o| matches!(o, Op::DeleteVip(_)))
            .unwrap();
        let filter = ops
            .iter()
            .position(|o| matches!(o, Op::ShrinkVipFilter(..)))
            .unwrap();
        assert!(vip < filter, "{ops:?}");
        assert!(s2.vip_filter.is_empty());
    }

    #[test]
    fn remote_backends_are_marked_and_filtered_before_any_flow_can_reach_them() {
        use gateway_common::{BACKEND_F_REMOTE, IfaceInfo};
        let mut f = frontend(
            "a",
            [192, 168, 10, 49],
            80,
            &[POD_A, ([10, 244, 2, 10], 8080)],
        );
        f.backends[1].remote = true;
        let (ops, s1) = step(&MapState::default(), &desired(vec![f]));
        let remote: Vec<_> = s1
            .backends
            .values()
            .map(|b| b.flags & BACKEND_F_REMOTE != 0)
            .collect();
        assert_eq!(remote, [false, true]);
        let bit = vip_filter_bit([10, 244, 2, 10]);
        assert_eq!(
            s1.remote_filter,
            BTreeMap::from([(bit / 64, 1u64 << (bit % 64))])
        );
        assert_eq!(
            s1.ifaces,
            BTreeMap::from([(
                2,
                IfaceInfo {
                    addr: [192, 168, 10, 111]
                }
            )])
        );
        let pos = |ops: &[Op], f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
        let filter = pos(&ops, &|o| matches!(o, Op::PutRemoteFilter(..)));
        let iface = pos(&ops, &|o| matches!(o, Op::PutIface(..)));
        let backend = pos(&ops, &|o| matches!(o, Op::PutBackend(..)));
        assert!(filter < backend && iface < backend, "{ops:?}");
        let (ops, s2) = step(&s1, &desired(vec![]));
        let shrink = pos(&ops, &|o| matches!(o, Op::ShrinkRemoteFilter(..)));
        let gone = pos(&ops, &|o| matches!(o, Op::DeactivateBackend(..)));
        assert!(gone < shrink, "{ops:?}");
        assert!(s2.remote_filter.is_empty());
    }

    #[test]
    fn a_draining_backend_loses_affinity_but_keeps_its_membership() {
        let d1 = desired(vec![frontend("a", [192, 168, 10, 49], 80, &[POD_A, POD_B])]);
        let (_, s1) = step(&MapState::default(), &d1);
        let mut d2 = d1.clone();
        let a = d2.frontends[0].backends.remove(0);
        d2.frontends[0].draining.push(a);
        let (ops, s2) = step(&s1, &d2);
        let service = s2.services.values().next().unwrap();
        assert_eq!(service.backend_count, 1);
        let id_a = *s1
            .backends
            .iter()
            .find(|(_, b)| b.addr == POD_A.0)
            .unwrap()
            .0;
        assert!(
            ops.contains(&Op::EndAffinity(BTreeSet::from([Membership {
                service_id: service.id,
                backend_id: id_a
            }]))),
            "{ops:?}"
        );
        assert!(
            !ops.iter().any(|o| matches!(o, Op::EndMemberships(_))),
            "{ops:?}"
        );
        assert!(
            s2.backends.contains_key(&id_a),
            "still active: its flows go on"
        );
        assert_eq!(s2.slots.len(), 2, "still listed, after the backend count");
        // Gone from the slice: the membership ends.
        d2.frontends[0].draining.clear();
        let (ops, _) = step(&s2, &d2);
        assert!(
            ops.contains(&Op::EndMemberships(BTreeSet::from([Membership {
                service_id: service.id,
                backend_id: id_a
            }]))),
            "{ops:?}"
        );
    }

    #[test]
    fn flow_rules_end_what_the_last_steps_of_a_reload_end() {
        let net = |t: &str| t.parse::<crate::config::Ipv4Net>().unwrap();
        let d1 = desired(vec![
            frontend("a", [192, 168, 10, 49], 80, &[POD_A, POD_B, POD_C]),
            frontend("b", [192, 168, 10, 50], 80, &[POD_A]),
        ]);
        let (_, s1) = step(&MapState::default(), &d1);
        // POD_A leaves "a" (still serving "b"), POD_B drains, "b" admits 10/8 only.
        let mut d2 = d1.clone();
        d2.frontends[0].backends.remove(0);
        let b = d2.frontends[0].backends.remove(0);
        d2.frontends[0].draining.push(b);
        d2.frontends[1].source_ranges = Some(vec![net("10.0.0.0/8")]);
        let (ops, s2) = step(&s1, &d2);
        let rules = s2.flow_rules();
        let mut checked = 0;
        for op in &ops {
            match op {
                Op::EndMemberships(ended) => {
                    assert!(ended.iter().all(|m| !rules.listed.contains(m)), "{ops:?}");
                    checked += ended.len();
                }
                Op::EndAffinity(drained) => {
                    assert!(drained.iter().all(|m| rules.listed.contains(m)));
                    assert!(drained.iter().all(|m| !rules.taking.contains(m)));
                    checked += drained.len();
                }
                Op::DenyOutside(denied) => {
                    for (&id, nets) in denied {
                        assert_eq!(rules.ranges.get(&id), Some(nets));
                        assert!(!rules.admits(id, [192, 168, 10, 10].into()));
                        assert!(rules.admits(id, [10, 1, 2, 3].into()));
                        checked += 1;
                    }
                }
                _ => {}
            }
        }
        assert_eq!(
            checked, 3,
            "POD_A's membership, POD_B's affinity, b's ranges: {ops:?}"
        );
        // The memberships that stay: what the rules list, and nothing else.
        let id = |vip: [u8; 4]| {
            let (_, service) = s2.services.iter().find(|(k, _)| k.vip == vip).unwrap();
            service.id
        };
        let (a, b) = (id([192, 168, 10, 49]), id([192, 168, 10, 50]));
        let listed: Vec<u32> = rules.listed.iter().map(|m| m.service_id).collect();
        assert_eq!(
            listed.iter().filter(|&&id| id == a).count(),
            2,
            "POD_C and POD_B"
        );
        assert_eq!(listed.iter().filter(|&&id| id == b).count(), 1, "POD_A");
        assert_eq!(rules.taking.len(), 2, "POD_C for a, POD_A for b");
        // Ranges of IPv6 prefixes only: nobody is admitted.
        d2.frontends[1].source_ranges = Some(Vec::new());
        let (_, s3) = step(&s2, &d2);
        assert!(!s3.flow_rules().admits(b, [10, 1, 2, 3].into()));
        assert!(s3.flow_rules().admits(a, [10, 1, 2, 3].into()));
    }

    #[test]
    fn source_ranges_are_in_place_before_the_service_uses_them_and_flows_outside_end() {
        let net = |t: &str| t.parse::<crate::config::Ipv4Net>().unwrap();
        let mut f = frontend("a", [192, 168, 10, 49], 80, &[POD_A]);
        let (_, open) = step(&MapState::default(), &desired(vec![f.clone()]));
        f.source_ranges = Some(vec![net("10.0.0.0/8")]);
        let (ops, restricted) = step(&open, &desired(vec![f.clone()]));
        let id = restricted.services.values().next().unwrap().id;
        let pos = |ops: &[Op], f: &dyn Fn(&Op) -> bool| ops.iter().position(f).unwrap();
        let range = pos(&ops, &|o| matches!(o, Op::PutSourceRange(..)));
        let service = pos(&ops, &|o| matches!(o, Op::PutService(..)));
        assert!(range < service, "{ops:?}");
        assert_eq!(
            ops.last(),
            Some(&Op::DenyOutside(BTreeMap::from([(
                id,
                vec![net("10.0.0.0/8")]
            )])))
        );
        // Opened again: the service stops using the range before it goes, nobody is cut.
        f.source_ranges = None;
        let (ops, back) = step(&restricted, &desired(vec![f]));
        let service = pos(&ops, &|o| matches!(o, Op::PutService(..)));
        let range = pos(&ops, &|o| matches!(o, Op::DeleteSourceRange(..)));
        assert!(service < range, "{ops:?}");
        assert!(!ops.iter().any(|o| matches!(o, Op::DenyOutside(_))));
        assert!(back.source_ranges.is_empty());
    }
}
