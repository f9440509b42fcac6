//! The incremental plan: what a reload changes, from the previous desired state.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{
    BACKEND_F_REMOTE, Backend, Frontend as RevNatFrontend, REVNAT_F_REPLY_CT, ServiceKey, VipInfo,
    VipKey, vip_filter_bit,
};

use super::diff::merge;
use super::entries::{
    BackendKey, announced, put_frontend, revnat_entry, revnat_frontend, revnat_frontends,
    service_key, slots_of, source_ranges_of, with_revnat,
};
use super::ids::IdAllocator;
use super::{Change, Interface, MapState, PlanError};
use crate::capacity::Capacity;
use crate::model::{DesiredState, Frontend};

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
    let edits = edits(current, previous, desired);
    let mut change = Change::default();
    release_services(current, &edits.gone, &mut change.before);
    let served = frontends_of_affected_backends(current, &edits);
    let backend_ids = plan_backends(current, &served, &edits.coming, limits, &mut change)?;
    let services_needed = desired.frontends.len();
    plan_services(
        current,
        &edits.coming,
        services_needed,
        &backend_ids,
        limits,
        &mut change,
    )?;
    check_capacity(current, &change, limits)?;
    plan_revnat(current, &served, &backend_ids, &mut change);
    plan_vips(current, vip_port_changes(&edits), &mut change);
    plan_announcements(current, desired, interfaces, &mut change);
    super::remote::plan(current, interfaces, &mut change);
    Ok(change)
}

/// The frontends a reload edits. A frontend that changes is in both lists.
struct Edits<'a> {
    /// Those that go or change, as they were (the maps hold their services).
    gone: Vec<&'a Frontend>,
    /// Those that come or change, as they are.
    coming: Vec<&'a Frontend>,
}

/// Each backend a gone or coming frontend lists, with the frontends it serves once the
/// change is made (none: it stops serving).
type FrontendsOfBackend = BTreeMap<BackendKey, BTreeSet<RevNatFrontend>>;

/// Compares the two desired states frontend by frontend, in service key order.
fn edits<'a>(
    current: &MapState,
    previous: &'a DesiredState,
    desired: &'a DesiredState,
) -> Edits<'a> {
    let (mut gone, mut coming) = (Vec::new(), Vec::new());
    let mut old = by_service_key(previous).into_iter().peekable();
    for f in by_service_key(desired) {
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
    gone.retain(|f| current.services.contains_key(&service_key(f)));
    Edits { gone, coming }
}

fn by_service_key(state: &DesiredState) -> Vec<&Frontend> {
    let mut frontends: Vec<_> = state.frontends.iter().collect();
    // The model sorts them so already; a hand-made state may not be.
    if !frontends.is_sorted_by_key(|f| service_key(f)) {
        frontends.sort_by_key(|f| service_key(f));
    }
    frontends
}

/// Records the service entries, names and backend slots of the frontends that go.
fn release_services(current: &MapState, gone: &[&Frontend], before: &mut MapState) {
    for f in gone {
        let key = service_key(f);
        let Some(service) = current.services.get(&key) else {
            continue;
        };
        before.services.insert(key, *service);
        if let Some(name) = current.names.get(&service.id) {
            before.names.insert(service.id, name.clone());
        }
        let slots = current.slots.range(slots_of(service.id));
        before.slots.extend(slots.map(|(k, v)| (*k, *v)));
        let ranges = current.source_ranges.range(source_ranges_of(service.id));
        before.source_ranges.extend(ranges.copied());
    }
}

/// The frontends each affected backend serves afterwards: those it serves now, less those
/// that go, plus those that come.
fn frontends_of_affected_backends(current: &MapState, edits: &Edits) -> FrontendsOfBackend {
    fn frontends_of<'s>(
        served: &'s mut FrontendsOfBackend,
        current: &MapState,
        backend: BackendKey,
    ) -> &'s mut BTreeSet<RevNatFrontend> {
        served
            .entry(backend)
            .or_insert_with(|| served_now(current, backend))
    }
    let mut served = FrontendsOfBackend::new();
    for f in &edits.gone {
        let frontend = revnat_frontend(&service_key(f));
        for b in f.listed() {
            frontends_of(&mut served, current, BackendKey::of(f, b)).remove(&frontend);
        }
    }
    for f in &edits.coming {
        let frontend = revnat_frontend(&service_key(f));
        for b in f.listed() {
            frontends_of(&mut served, current, BackendKey::of(f, b)).insert(frontend);
        }
    }
    served
}

/// Every frontend `backend` serves in `current`. Its reverse NAT entry lists them all, unless
/// it is marked as serving more: those are found through the slots that point at it (a walk
/// over every slot, for such backends only).
fn served_now(current: &MapState, backend: BackendKey) -> BTreeSet<RevNatFrontend> {
    let Some(revnat) = current.revnat.get(&backend.revnat_key()) else {
        return BTreeSet::new();
    };
    let mut frontends: BTreeSet<RevNatFrontend> =
        revnat_frontends(revnat).iter().copied().collect();
    if revnat.flags & REVNAT_F_REPLY_CT != 0
        && let Some(held) = held_backend(current, backend)
    {
        let ids: BTreeSet<u32> = current
            .slots
            .iter()
            .filter(|&(_, &id)| id == held.id)
            .map(|(slot, _)| slot.service_id)
            .collect();
        let services = current.services.iter();
        frontends.extend(
            services
                .filter(|(key, s)| key.proto == backend.proto && ids.contains(&s.id))
                .map(|(key, _)| revnat_frontend(key)),
        );
    }
    frontends
}

/// Backends: an affected one the maps hold keeps its id, one that stops serving frees it,
/// and one that starts serving takes the lowest free id. Returns every affected backend's id.
/// Whether a backend is on another node comes from a coming frontend that lists it, else
/// from its entry (an address has one locality: every frontend says the same).
fn plan_backends(
    current: &MapState,
    served: &FrontendsOfBackend,
    coming: &[&Frontend],
    limits: &Capacity,
    change: &mut Change,
) -> Result<BTreeMap<BackendKey, u32>, PlanError> {
    let mut remote: BTreeMap<BackendKey, bool> = BTreeMap::new();
    for f in coming {
        for b in f.listed() {
            *remote.entry(BackendKey::of(f, b)).or_default() |= b.remote;
        }
    }
    let mut ids = held_backend_ids(current, served, &mut change.before);
    let freed: BTreeSet<u32> = served
        .iter()
        .filter(|(_, frontends)| frontends.is_empty())
        .filter_map(|(backend, _)| ids.get(backend).copied())
        .collect();
    let starting = served
        .iter()
        .filter(|(backend, frontends)| !frontends.is_empty() && !ids.contains_key(backend));
    let needed = current.backends.len() - freed.len() + starting.count();
    let mut allocator = None;
    for (&backend, frontends) in served {
        if frontends.is_empty() {
            continue;
        }
        let id = match ids.get(&backend) {
            Some(&id) => id,
            None => {
                let allocator = allocator.get_or_insert_with(|| {
                    let used = current.backends.keys().filter(|id| !freed.contains(id));
                    IdAllocator::new(used.copied(), limits.backends, "backends")
                });
                let id = allocator.take(needed)?;
                ids.insert(backend, id);
                id
            }
        };
        let remote = remote.get(&backend).copied().unwrap_or_else(|| {
            let held = change.before.backends.get(&id);
            held.is_some_and(|b| b.flags & BACKEND_F_REMOTE != 0)
        });
        change.after.backends.insert(id, backend.entry(remote));
    }
    Ok(ids)
}

/// The ids the maps hold for the affected backends, which `before` records. Each is found
/// through a frontend that uses it rather than by walking every backend (80,000 at 10,000
/// services).
fn held_backend_ids(
    current: &MapState,
    served: &FrontendsOfBackend,
    before: &mut MapState,
) -> BTreeMap<BackendKey, u32> {
    let mut ids = BTreeMap::new();
    for &backend in served.keys() {
        if let Some(held) = held_backend(current, backend) {
            ids.insert(backend, held.id);
            before.backends.insert(held.id, held.entry);
        }
    }
    ids
}

/// A backend as the maps hold it.
struct HeldBackend {
    id: u32,
    entry: Backend,
}

/// `backend` as `current` holds it. A state [`target`](super::target()) made lists every
/// frontend of a backend in its reverse NAT entry and points a slot of each at it.
fn held_backend(current: &MapState, backend: BackendKey) -> Option<HeldBackend> {
    let revnat = current.revnat.get(&backend.revnat_key())?;
    revnat_frontends(revnat).iter().find_map(|frontend| {
        let key = ServiceKey {
            vip: frontend.vip,
            port: frontend.port,
            proto: backend.proto,
            _pad: 0,
        };
        let service = current.services.get(&key)?;
        let slots = current.slots.range(slots_of(service.id));
        slots.map(|(_, &id)| id).find_map(|id| {
            let entry = *current.backends.get(&id)?;
            (BackendKey::of_entry(&entry) == backend).then_some(HeldBackend { id, entry })
        })
    })
}

/// Services: a frontend that changes keeps its id, one that comes takes the lowest id free
/// once the frontends that go have freed theirs.
fn plan_services(
    current: &MapState,
    coming: &[&Frontend],
    services_needed: usize,
    backend_ids: &BTreeMap<BackendKey, u32>,
    limits: &Capacity,
    change: &mut Change,
) -> Result<(), PlanError> {
    let mut allocator = None;
    for f in coming {
        let id = match current.services.get(&service_key(f)) {
            Some(s) => s.id,
            None => {
                let allocator = allocator.get_or_insert_with(|| {
                    let freed = freed_service_ids(&change.before, coming);
                    let used = current.services.values().map(|s| s.id);
                    let used: BTreeSet<u32> = used.filter(|id| !freed.contains(id)).collect();
                    IdAllocator::new(used, limits.services, "services")
                });
                allocator.take(services_needed)?
            }
        };
        put_frontend(&mut change.after, f, id, backend_ids)?;
    }
    Ok(())
}

/// The ids of the services that go and do not come back changed.
fn freed_service_ids(before: &MapState, coming: &[&Frontend]) -> BTreeSet<u32> {
    let staying: BTreeSet<ServiceKey> = coming.iter().map(|f| service_key(f)).collect();
    before
        .services
        .iter()
        .filter(|(key, _)| !staying.contains(key))
        .map(|(_, s)| s.id)
        .collect()
}

fn check_capacity(current: &MapState, change: &Change, limits: &Capacity) -> Result<(), PlanError> {
    let slots = current.slots.len() - change.before.slots.len() + change.after.slots.len();
    if slots > limits.slots() as usize {
        return Err(PlanError::Capacity {
            what: "backend slots",
            needed: slots,
            max: limits.slots(),
        });
    }
    let ranges = current.source_ranges.len() - change.before.source_ranges.len()
        + change.after.source_ranges.len();
    if ranges > limits.source_ranges() as usize {
        return Err(PlanError::Capacity {
            what: "source ranges",
            needed: ranges,
            max: limits.source_ranges(),
        });
    }
    Ok(())
}

/// Reverse NAT: each affected backend's entry, as it is and (unless the backend stops
/// serving) as it becomes, and the mark its backend entry takes from it.
fn plan_revnat(
    current: &MapState,
    served: &FrontendsOfBackend,
    backend_ids: &BTreeMap<BackendKey, u32>,
    change: &mut Change,
) {
    for (&backend, frontends) in served {
        let key = backend.revnat_key();
        let held = current.revnat.get(&key);
        if let Some(revnat) = held {
            change.before.revnat.insert(key, *revnat);
        }
        if !frontends.is_empty() {
            let revnat = revnat_entry(frontends, held);
            if let Some(entry) = backend_ids
                .get(&backend)
                .and_then(|id| change.after.backends.get_mut(id))
            {
                *entry = with_revnat(*entry, &revnat);
            }
            change.after.revnat.insert(key, revnat);
        }
    }
}

/// How many ports each VIP of a gone or coming frontend gains (or, negative, loses).
fn vip_port_changes(edits: &Edits) -> BTreeMap<VipKey, i64> {
    let mut changes = BTreeMap::new();
    for f in &edits.gone {
        *changes
            .entry(VipKey {
                addr: f.vip.octets(),
            })
            .or_default() -= 1;
    }
    for f in &edits.coming {
        *changes
            .entry(VipKey {
                addr: f.vip.octets(),
            })
            .or_default() += 1;
    }
    changes
}

/// VIPs by their number of ports; a VIP that comes or goes changes its filter word too.
fn plan_vips(current: &MapState, port_changes: BTreeMap<VipKey, i64>, change: &mut Change) {
    let mut words = BTreeSet::new();
    for (key, delta) in port_changes {
        let old = current.vips.get(&key).map_or(0, |v| v.ports);
        let ports = i64::from(old) + delta;
        if old > 0 {
            change.before.vips.insert(key, VipInfo { ports: old });
        }
        if ports > 0 {
            let ports = ports as u32;
            change.after.vips.insert(key, VipInfo { ports });
        }
        if (old > 0) != (ports > 0) {
            words.insert(vip_filter_bit(key.addr) / 64);
        }
    }
    plan_vip_filter(current, &words, change);
}

/// The `gw_vip_filter` `words`, rebuilt from the VIPs the change leaves.
fn plan_vip_filter(current: &MapState, words: &BTreeSet<u32>, change: &mut Change) {
    if words.is_empty() {
        return;
    }
    let (before, after) = (&mut change.before, &mut change.after);
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
    for &word in words {
        if let Some(&bits) = current.vip_filter.get(&word) {
            before.vip_filter.insert(word, bits);
        }
    }
}

/// Announcements are few and depend on the interfaces as well: compared in full.
fn plan_announcements(
    current: &MapState,
    desired: &DesiredState,
    interfaces: &[Interface],
    change: &mut Change,
) {
    let wanted = announced(desired, interfaces);
    let _ = merge(&current.l2, &wanted, |key, new, old| {
        if let Some(&mac) = old {
            change.before.l2.insert(*key, mac);
        }
        if let Some(&mac) = new {
            change.after.l2.insert(*key, mac);
        }
        Ok::<(), std::convert::Infallible>(())
    });
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
            let mut backends: Vec<BackendAddr> =
                (0..random.below(6)).map(|_| backend(random)).collect();
            backends.sort();
            backends.dedup();
            // Some listed endpoints drain.
            let draining = backends.extract_if(.., |_| random.chance(4)).collect();
            Frontend {
                service: svc(&format!("svc-{vip}")),
                port_name: ["http", ""][random.below(2)].into(),
                vip: Ipv4Addr::new(192, 168, 10, 40 + vip),
                port: [80, 443, 53][random.below(3)],
                protocol: [Protocol::Tcp, Protocol::Udp][random.below(2)],
                affinity_timeout_secs: [Some(10800), None][random.below(2)],
                backends,
                draining,
                source_ranges: source_ranges(random),
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
                    frontends[i].source_ranges = changed.source_ranges;
                }
                2 if !frontends.is_empty() => {
                    let i = random.below(frontends.len());
                    let backends = &mut frontends[i].backends;
                    backends.push(backend(random));
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

    /// No ranges, none admitted, or a few prefixes of a small pool.
    fn source_ranges(random: &mut XorShift) -> Option<Vec<crate::config::Ipv4Net>> {
        match random.below(3) {
            0 => None,
            1 => Some(Vec::new()),
            _ => {
                let mut nets: Vec<_> = (0..1 + random.below(3))
                    .map(|_| {
                        let addr = Ipv4Addr::new(10, random.below(3) as u8, 0, 0);
                        crate::config::Ipv4Net::new(addr, [8, 16, 24][random.below(3)]).unwrap()
                    })
                    .collect();
                nets.sort();
                nets.dedup();
                Some(nets)
            }
        }
    }

    /// A backend from a small pool, so that many frontends share one (more than reverse NAT
    /// lists, often); those in 10.244.2.0/24 run on another node.
    fn backend(random: &mut XorShift) -> BackendAddr {
        let node = random.below(2) as u8 + 1;
        BackendAddr {
            addr: Ipv4Addr::new(10, 244, node, random.below(3) as u8),
            port: [8080, 8443][random.below(2)],
            remote: node == 2,
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
