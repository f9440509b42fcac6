//! The incremental plan: what a reload changes, from the previous desired state.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{
    Backend, Frontend as RevNatFrontend, ServiceKey, VipInfo, VipKey, vip_filter_bit,
};

use super::diff::merge;
use super::entries::{
    BackendKey, announced, backend_entry, backend_key, revnat_entry, revnat_frontend, revnat_key,
    service_entry, service_key, service_name, slot_key,
};
use super::ids::IdAllocator;
use super::{Change, Interface, MapState, PlanError};
use crate::capacity::Capacity;
use crate::model::DesiredState;

/// The same as [`target`](super::target()) followed by a [`diff`](super::diff()) against
/// `current`, computed from what changed between `previous` and `desired` only: a reload
/// that changes one service of 10,000 touches that service's entries, not everyone's.
/// `current` must be what `target` made of `previous` (any interfaces: announcements are
/// recomputed in full).
pub fn change(
    current: &MapState,
    previous: &DesiredState,
    desired: &DesiredState,
    interfaces: &[Interface],
    limits: &Capacity,
) -> Result<Change, PlanError> {
    fn by_key(state: &DesiredState) -> Vec<&crate::model::Frontend> {
        let mut frontends: Vec<_> = state.frontends.iter().collect();
        // The model sorts them so already; a hand-made state may not be.
        if !frontends.is_sorted_by_key(|f| service_key(f)) {
            frontends.sort_by_key(|f| service_key(f));
        }
        frontends
    }
    // The frontends that go or change (as they were) and that come or change (as they are).
    let (mut gone, mut coming) = (Vec::new(), Vec::new());
    let (old, new) = (by_key(previous), by_key(desired));
    let mut old = old.into_iter().peekable();
    for f in new {
        while let Some(o) = old.next_if(|o| service_key(o) < service_key(f)) {
            gone.push(o);
        }
        match old.next_if(|o| service_key(o) == service_key(f)) {
            Some(o) if o == f => {}
            Some(o) => {
                gone.push(o);
                coming.push(f);
            }
            None => coming.push(f),
        }
    }
    gone.extend(old);

    let mut change = Change::default();
    let (before, after) = (&mut change.before, &mut change.after);
    // What the frontends that go held, and which backends and VIPs they share with others.
    let mut users: BTreeMap<BackendKey, BTreeSet<RevNatFrontend>> = BTreeMap::new();
    let mut vip_ports: BTreeMap<VipKey, i64> = BTreeMap::new();
    for f in &gone {
        let key = service_key(f);
        let Some(service) = current.services.get(&key) else {
            continue;
        };
        before.services.insert(key, *service);
        if let Some(name) = current.names.get(&service.id) {
            before.names.insert(service.id, name.clone());
        }
        let slots = slot_key(service.id, 0)..slot_key(service.id + 1, 0);
        before
            .slots
            .extend(current.slots.range(slots).map(|(k, v)| (*k, *v)));
        for b in &f.backends {
            users.entry(backend_key(f, b)).or_default();
        }
        *vip_ports.entry(VipKey { addr: key.vip }).or_default() -= 1;
    }
    for f in &coming {
        for b in &f.backends {
            users.entry(backend_key(f, b)).or_default();
        }
        *vip_ports
            .entry(VipKey {
                addr: f.vip.octets(),
            })
            .or_default() += 1;
    }
    // The frontends each affected backend serves afterwards: the current ones, less those
    // that go, plus those that come.
    for (&bkey, frontends) in &mut users {
        if let Some(revnat) = current.revnat.get(&revnat_key(bkey)) {
            let count = revnat.count as usize;
            frontends.extend(&revnat.frontends[..count.min(revnat.frontends.len())]);
        }
    }
    for f in &gone {
        let key = revnat_frontend(&service_key(f));
        for b in &f.backends {
            if let Some(frontends) = users.get_mut(&backend_key(f, b)) {
                frontends.remove(&key);
            }
        }
    }
    for f in &coming {
        let key = revnat_frontend(&service_key(f));
        for b in &f.backends {
            if let Some(frontends) = users.get_mut(&backend_key(f, b)) {
                frontends.insert(key);
            }
        }
    }

    // Backends: affected ones keep their ids; the ones that stop serving free theirs. A
    // backend's id is found through a frontend that uses it, rather than by walking all
    // of them (80,000 at 10,000 services).
    let mut backend_id_of: BTreeMap<BackendKey, u32> = BTreeMap::new();
    for &bkey in users.keys() {
        if let Some((id, b)) = current_backend(current, bkey) {
            backend_id_of.insert(bkey, id);
            before.backends.insert(id, *b);
        }
    }
    let freed: BTreeSet<u32> = users
        .iter()
        .filter(|(_, frontends)| frontends.is_empty())
        .filter_map(|(bkey, _)| backend_id_of.get(bkey).copied())
        .collect();
    let backends_after = current.backends.len() - freed.len()
        + users
            .iter()
            .filter(|(bkey, frontends)| !frontends.is_empty() && !backend_id_of.contains_key(bkey))
            .count();
    let mut backend_ids = None;
    for (&bkey, frontends) in &users {
        if frontends.is_empty() {
            continue;
        }
        let id = match backend_id_of.get(&bkey) {
            Some(&id) => id,
            None => {
                let ids = backend_ids.get_or_insert_with(|| {
                    let used = current.backends.keys().filter(|id| !freed.contains(id));
                    IdAllocator::new(used.copied(), limits.backends, "backends")
                });
                let id = ids.take(backends_after)?;
                backend_id_of.insert(bkey, id);
                id
            }
        };
        after.backends.insert(id, backend_entry(bkey));
    }

    // Services: a frontend that changes keeps its id, one that goes frees it.
    let mut service_ids = None;
    for f in &coming {
        let key = service_key(f);
        let id = match current.services.get(&key) {
            Some(s) => s.id,
            None => {
                let ids = service_ids.get_or_insert_with(|| {
                    let staying: BTreeSet<ServiceKey> =
                        coming.iter().map(|f| service_key(f)).collect();
                    let freed: BTreeSet<u32> = before
                        .services
                        .iter()
                        .filter(|(key, _)| !staying.contains(key))
                        .map(|(_, s)| s.id)
                        .collect();
                    let used = current.services.values().map(|s| s.id);
                    let used: BTreeSet<u32> = used.filter(|id| !freed.contains(id)).collect();
                    IdAllocator::new(used, limits.services, "services")
                });
                ids.take(desired.frontends.len())?
            }
        };
        after.services.insert(key, service_entry(f, id)?);
        after.names.insert(id, service_name(f));
        for (slot, b) in f.backends.iter().enumerate() {
            after
                .slots
                .insert(slot_key(id, slot), backend_id_of[&backend_key(f, b)]);
        }
    }
    let slots = current.slots.len() - before.slots.len() + after.slots.len();
    if slots > limits.slots() as usize {
        return Err(PlanError::Capacity {
            what: "backend slots",
            needed: slots,
            max: limits.slots(),
        });
    }
    for (bkey, frontends) in &users {
        let key = revnat_key(*bkey);
        if let Some(revnat) = current.revnat.get(&key) {
            before.revnat.insert(key, *revnat);
        }
        if !frontends.is_empty() {
            after.revnat.insert(key, revnat_entry(&key, frontends)?);
        }
    }

    // VIPs by their number of ports, and the filter words of those that come or go.
    let mut words = BTreeSet::new();
    for (key, delta) in vip_ports {
        let old = current.vips.get(&key).map_or(0, |v| v.ports);
        let ports = i64::from(old) + delta;
        if old > 0 {
            before.vips.insert(key, VipInfo { ports: old });
        }
        if ports > 0 {
            after.vips.insert(
                key,
                VipInfo {
                    ports: ports as u32,
                },
            );
        }
        if (old > 0) != (ports > 0) {
            words.insert(vip_filter_bit(key.addr) / 64);
        }
    }
    if !words.is_empty() {
        let vips = current
            .vips
            .keys()
            .filter(|k| !before.vips.contains_key(k))
            .chain(after.vips.keys());
        for vip in vips {
            let bit = vip_filter_bit(vip.addr);
            if words.contains(&(bit / 64)) {
                *after.vip_filter.entry(bit / 64).or_default() |= 1 << (bit % 64);
            }
        }
        for word in words {
            if let Some(&bits) = current.vip_filter.get(&word) {
                before.vip_filter.insert(word, bits);
            }
        }
    }

    // Announcements are few and depend on the interfaces as well: compared in full.
    let l2 = announced(desired, interfaces);
    let _ = merge(&current.l2, &l2, |key, new, old| {
        if let Some(&mac) = old {
            before.l2.insert(*key, mac);
        }
        if let Some(&mac) = new {
            after.l2.insert(*key, mac);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    Ok(change)
}

/// The backend `bkey` as `current` holds it, with its id. A state
/// [`target`](super::target()) made lists every frontend of a backend in its reverse NAT
/// entry and points a slot of each at it.
fn current_backend(current: &MapState, bkey: BackendKey) -> Option<(u32, &Backend)> {
    let revnat = current.revnat.get(&revnat_key(bkey))?;
    let count = (revnat.count as usize).min(revnat.frontends.len());
    revnat.frontends[..count].iter().find_map(|frontend| {
        let key = ServiceKey {
            vip: frontend.vip,
            port: frontend.port,
            proto: bkey.2,
            _pad: 0,
        };
        let id = current.services.get(&key)?.id;
        let slots = current.slots.range(slot_key(id, 0)..slot_key(id + 1, 0));
        slots.map(|(_, &backend)| backend).find_map(|backend| {
            let b = current.backends.get(&backend)?;
            ((b.addr, b.port, b.proto) == bkey).then_some((backend, b))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::config::fixtures::XorShift;
    use crate::model::{Announcement, BackendAddr, Frontend, Protocol};
    use crate::plan::fixtures::*;
    use crate::plan::{diff, target};

    /// backends and VIPs, and reverse NAT fills up.
    fn random_desired(random: &mut XorShift, previous: &DesiredState) -> DesiredState {
        let random_frontend = |random: &mut XorShift| {
            let vip = random.below(6) as u8;
            let mut backends: Vec<BackendAddr> = (0..random.below(5))
                .map(|_| BackendAddr {
                    addr: Ipv4Addr::new(10, 244, 1, random.below(8) as u8),
                    port: [8080, 8443][random.below(2)],
                })
                .collect();
            backends.sort();
            backends.dedup();
            Frontend {
                service: svc(&format!("svc-{vip}")),
                port_name: ["http", ""][random.below(2)].into(),
                vip: Ipv4Addr::new(192, 168, 10, 40 + vip),
                port: [80, 443, 53][random.below(3)],
                protocol: [Protocol::Tcp, Protocol::Udp][random.below(2)],
                affinity_timeout_secs: [Some(10800), None][random.below(2)],
                backends,
            }
        };
        let mut frontends = if random.chance(4) {
            (0..random.below(12))
                .map(|_| random_frontend(random))
                .collect()
        } else {
            // A small edit of the previous state: one frontend goes, changes, gains a
            // backend (the usual edit of a file) or comes.
            let mut frontends = previous.frontends.clone();
            match random.below(4) {
                0 if !frontends.is_empty() => {
                    frontends.remove(random.below(frontends.len()));
                }
                1 if !frontends.is_empty() => {
                    let i = random.below(frontends.len());
                    let changed = random_frontend(random);
                    frontends[i].backends = changed.backends;
                    frontends[i].affinity_timeout_secs = changed.affinity_timeout_secs;
                }
                2 if !frontends.is_empty() => {
                    let i = random.below(frontends.len());
                    let backends = &mut frontends[i].backends;
                    backends.push(BackendAddr {
                        addr: Ipv4Addr::new(10, 244, 1, random.below(8) as u8),
                        port: [8080, 8443][random.below(2)],
                    });
                    backends.sort();
                    backends.dedup();
                }
                _ => frontends.push(random_frontend(random)),
            }
            frontends
        };
        frontends.sort_by_key(|f| (f.vip, f.port, f.protocol));
        frontends.dedup_by_key(|f| (f.vip, f.port, f.protocol));
        let announcements = frontends
            .iter()
            .filter_map(|f| {
                let interface = ["ens18", "eth9", "ens18"][random.below(3)];
                (!random.chance(3)).then(|| Announcement {
                    interface: interface.into(),
                    vip: f.vip,
                    service: f.service.clone(),
                    policy: "l2-policy".into(),
                })
            })
            .collect();
        DesiredState {
            frontends,
            announcements,
            ..Default::default()
        }
    }

    #[test]
    fn a_change_is_what_a_full_plan_would_write() {
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        for sequence in 0..40 {
            let (mut state, mut previous) = (MapState::default(), DesiredState::default());
            for round in 0..100 {
                let desired = random_desired(&mut random, &previous);
                let mut interfaces = ens18();
                interfaces[0].index = [2, 3][random.below(2)];
                // Now and then maps too small for it, to compare the refusals too.
                let limits = if random.chance(5) {
                    Capacity {
                        services: 9,
                        backends: 10,
                        ..Capacity::default()
                    }
                } else {
                    Capacity::default()
                };
                let at = format!("sequence {sequence}, round {round}");
                let full = target(&desired, &interfaces, &state, &limits);
                let change = change(&state, &previous, &desired, &interfaces, &limits);
                match (full, change) {
                    (Ok(full), Ok(change)) => {
                        assert_eq!(
                            diff(&change.before, &change.after),
                            diff(&state, &full),
                            "{at}"
                        );
                        state.apply(change);
                        assert_eq!(state, full, "{at}");
                        previous = desired;
                    }
                    (Err(full), Err(change)) => assert_eq!(change, full, "{at}"),
                    (full, change) => panic!("{at}: {full:?} but {change:?}"),
                }
            }
        }
    }
}
