//! From the desired state to map contents, and from current map contents to the ordered
//! list of writes that gets there make-before-break. Pure: no kernel, no clock.
//!
//! Ids are the long-lived part: conntrack and affinity entries refer to service and backend
//! ids, so a service or backend that survives a plan keeps its id, and a new one takes the
//! lowest id free in both the current and the target state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use gateway_common::{
    BACKEND_F_ACTIVE, Backend, Frontend as RevNatFrontend, Ipv4, L2Key, RevNat, RevNatKey,
    SERVICE_F_AFFINITY, Service, ServiceKey, SlotKey, VipInfo, VipKey, capacity, proto, timeouts,
    vip_filter_bit,
};

use crate::capacity::Capacity;
use crate::model::{DesiredState, Protocol};

/// A network interface of this node, as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// The agent-managed content of the maps. Conntrack, affinity and counters belong to the
/// datapath and are not part of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    /// `gw_vip_filter` words that are not zero.
    pub vip_filter: BTreeMap<u32, u64>,
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub services: BTreeMap<ServiceKey, Service>,
    pub names: BTreeMap<u32, String>,
    pub slots: BTreeMap<SlotKey, u32>,
    /// Active backends by id.
    pub backends: BTreeMap<u32, Backend>,
    pub revnat: BTreeMap<RevNatKey, RevNat>,
    /// Announcements: (interface, VIP) -> the interface's MAC.
    pub l2: BTreeMap<L2Key, [u8; 6]>,
}

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    /// A newly assigned backend id starts with zeroed counters.
    ResetBackendStats(u32),
    PutSlot(SlotKey, u32),
    PutService(ServiceKey, Service),
    PutName(u32, String),
    ResetServiceStats(u32),
    PutRevNat(RevNatKey, RevNat),
    PutVip(VipKey, VipInfo),
    /// A `gw_vip_filter` word gains bits (before the VIPs it covers are added) ...
    PutVipFilter(u32, u64),
    /// ... or loses them (after the VIPs are gone).
    ShrinkVipFilter(u32, u64),
    PutL2(L2Key, [u8; 6]),
    DeleteL2(L2Key),
    DeleteVip(VipKey),
    DeleteService(ServiceKey),
    DeleteName(u32),
    DeleteSlot(SlotKey),
    DeleteRevNat(RevNatKey),
    /// Marks the backend removed: flows still pointing at it are dropped, not moved.
    DeactivateBackend(u32),
    /// These backends (service id, backend id) no longer serve these services: their
    /// affinity entries go, and their tracked flows are marked so the datapath drops them
    /// (the backend may live on for another service, where the flow must not continue
    /// half-NATed) rather than moving them mid-connection.
    EndMemberships(BTreeSet<(u32, u32)>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// One backend address serves more frontends than reverse NAT can tell apart.
    TooManyFrontends {
        backend: String,
        frontends: Vec<String>,
    },
    /// More services or backends than the maps hold.
    Capacity {
        what: &'static str,
        needed: usize,
        max: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::TooManyFrontends { backend, frontends } => write!(
                f,
                "backend {backend} serves {} frontends ({}); at most {} per backend address",
                frontends.len(),
                frontends.join(", "),
                capacity::REVNAT_FRONTENDS
            ),
            PlanError::Capacity { what, needed, max } => {
                write!(
                    f,
                    "{needed} {what} needed but the datapath holds at most {max}"
                )
            }
        }
    }
}

impl std::error::Error for PlanError {}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// Lowest ids in `1..max` not in `used`, handed out in order. `used` comes in increasing
/// order and is read only as far as the ids handed out: a map's keys serve without being
/// collected first (a reload that adds one backend to 80,000 reads the ids up to the first
/// free one instead of copying all of them).
struct IdAllocator<I: Iterator<Item = u32>> {
    used: std::iter::Peekable<I>,
    next: u32,
    max: u32,
    what: &'static str,
}

impl<I: Iterator<Item = u32>> IdAllocator<I> {
    fn new(used: impl IntoIterator<IntoIter = I>, max: u32, what: &'static str) -> Self {
        Self {
            used: used.into_iter().peekable(),
            next: 1,
            max,
            what,
        }
    }

    fn take(&mut self, needed: usize) -> Result<u32, PlanError> {
        while let Some(id) = self.used.next_if(|&id| id <= self.next) {
            if id == self.next {
                self.next += 1;
            }
        }
        if self.next >= self.max {
            return Err(PlanError::Capacity {
                what: self.what,
                needed,
                max: self.max - 1,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// The map contents that serve `desired` on `interfaces`, keeping `current`'s ids.
pub fn target(
    desired: &DesiredState,
    interfaces: &[Interface],
    current: &MapState,
    limits: &Capacity,
) -> Result<MapState, PlanError> {
    let mut next = MapState::default();

    // Backends: one id per distinct (address, port, protocol).
    let current_backend_ids: BTreeMap<BackendKey, u32> = current
        .backends
        .iter()
        .map(|(&id, b)| ((b.addr, b.port, b.proto), id))
        .collect();
    let wanted: BTreeSet<BackendKey> = desired
        .frontends
        .iter()
        .flat_map(|f| f.backends.iter().map(move |b| backend_key(f, b)))
        .collect();
    let mut backend_ids = IdAllocator::new(
        wanted
            .iter()
            .filter_map(|k| current_backend_ids.get(k).copied())
            .collect::<BTreeSet<_>>(),
        limits.backends,
        "backends",
    );
    let mut backend_id_of = BTreeMap::new();
    for &key in &wanted {
        let id = match current_backend_ids.get(&key) {
            Some(&id) => id,
            None => backend_ids.take(wanted.len())?,
        };
        backend_id_of.insert(key, id);
        next.backends.insert(id, backend_entry(key));
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
    let mut frontends_of_backend: BTreeMap<RevNatKey, BTreeSet<RevNatFrontend>> = BTreeMap::new();
    for f in &desired.frontends {
        let key = service_key(f);
        let id = match current.services.get(&key) {
            Some(s) => s.id,
            None => service_ids.take(desired.frontends.len())?,
        };
        next.services.insert(key, service_entry(f, id)?);
        next.names.insert(id, service_name(f));
        for (slot, b) in f.backends.iter().enumerate() {
            let bkey = backend_key(f, b);
            next.slots.insert(slot_key(id, slot), backend_id_of[&bkey]);
            frontends_of_backend
                .entry(revnat_key(bkey))
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

    for (key, frontends) in frontends_of_backend {
        next.revnat.insert(key, revnat_entry(&key, &frontends)?);
    }
    next.l2 = announced(desired, interfaces);
    Ok(next)
}

/// What a re-plan changes: every entry it touches, as the maps hold it now (`before`) and as
/// it must become (`after`; a key missing there goes). [`diff_each`] of the two is the
/// writes, and `MapState::apply` brings the state along once they are made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub before: MapState,
    pub after: MapState,
}

/// The same as [`target`] followed by a [`diff`] against `current`, computed from what
/// changed between `previous` and `desired` only: a reload that changes one service of
/// 10,000 touches that service's entries, not everyone's. `current` must be what `target`
/// made of `previous` (any interfaces: announcements are recomputed in full).
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

/// The backend `bkey` as `current` holds it, with its id. A state [`target`] made lists
/// every frontend of a backend in its reverse NAT entry and points a slot of each at it.
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

impl MapState {
    /// Brings the state along with a [`Change`] whose writes reached the maps.
    pub fn apply(&mut self, change: Change) {
        fn update<K: Ord, V>(
            map: &mut BTreeMap<K, V>,
            before: BTreeMap<K, V>,
            after: BTreeMap<K, V>,
        ) {
            for key in before.keys() {
                map.remove(key);
            }
            map.extend(after);
        }
        let Change { before, after } = change;
        update(&mut self.vip_filter, before.vip_filter, after.vip_filter);
        update(&mut self.vips, before.vips, after.vips);
        update(&mut self.services, before.services, after.services);
        update(&mut self.names, before.names, after.names);
        update(&mut self.slots, before.slots, after.slots);
        update(&mut self.backends, before.backends, after.backends);
        update(&mut self.revnat, before.revnat, after.revnat);
        update(&mut self.l2, before.l2, after.l2);
    }
}

/// A backend as the maps key it: (address, port, protocol).
type BackendKey = (Ipv4, u16, u8);

fn backend_key(f: &crate::model::Frontend, b: &crate::model::BackendAddr) -> BackendKey {
    (b.addr.octets(), b.port, proto_number(f.protocol))
}

fn service_key(f: &crate::model::Frontend) -> ServiceKey {
    ServiceKey {
        vip: f.vip.octets(),
        port: f.port,
        proto: proto_number(f.protocol),
        _pad: 0,
    }
}

/// Backend `slot` (0-based) of a service; slot 0 of the map is the service's own.
fn slot_key(service_id: u32, slot: usize) -> SlotKey {
    SlotKey {
        service_id,
        slot: slot as u32 + 1,
    }
}

fn revnat_key((addr, port, proto): BackendKey) -> RevNatKey {
    RevNatKey {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

fn revnat_frontend(key: &ServiceKey) -> RevNatFrontend {
    RevNatFrontend {
        vip: key.vip,
        port: key.port,
        _pad: 0,
    }
}

/// The `gw_backends` value of a backend in use.
fn backend_entry((addr, port, proto): BackendKey) -> Backend {
    Backend {
        addr,
        port,
        proto,
        flags: BACKEND_F_ACTIVE,
    }
}

fn service_entry(f: &crate::model::Frontend, id: u32) -> Result<Service, PlanError> {
    let affinity = f.affinity_timeout_secs;
    Ok(Service {
        affinity_timeout_ns: affinity.map_or(0, |s| u64::from(s) * timeouts::NS_PER_SEC),
        id,
        backend_count: u16::try_from(f.backends.len()).map_err(|_| PlanError::Capacity {
            what: "backends in one service",
            needed: f.backends.len(),
            max: u16::MAX.into(),
        })?,
        flags: if affinity.is_some() {
            SERVICE_F_AFFINITY
        } else {
            0
        },
    })
}

/// What `lb list` and the counters call the frontend: `namespace/name:port-name`.
fn service_name(f: &crate::model::Frontend) -> String {
    if f.port_name.is_empty() {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port)
    } else {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port_name)
    }
}

/// The frontends one backend serves, as reverse NAT holds them.
fn revnat_entry(
    key: &RevNatKey,
    frontends: &BTreeSet<RevNatFrontend>,
) -> Result<RevNat, PlanError> {
    if frontends.len() > capacity::REVNAT_FRONTENDS {
        return Err(PlanError::TooManyFrontends {
            backend: format!("{}:{}", Ipv4Addr::from(key.addr), key.port),
            frontends: frontends
                .iter()
                .map(|f| format!("{}:{}", Ipv4Addr::from(f.vip), f.port))
                .collect(),
        });
    }
    let mut revnat = RevNat {
        count: frontends.len() as u32,
        ..Default::default()
    };
    for (slot, f) in revnat.frontends.iter_mut().zip(frontends) {
        *slot = *f;
    }
    Ok(revnat)
}

/// The announcements on the interfaces this node has.
fn announced(desired: &DesiredState, interfaces: &[Interface]) -> BTreeMap<L2Key, [u8; 6]> {
    let by_name: BTreeMap<&str, &Interface> =
        interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
    desired
        .announcements
        .iter()
        .filter_map(|a| {
            let iface = by_name.get(a.interface.as_str())?;
            let key = L2Key {
                ifindex: iface.index,
                vip: a.vip.octets(),
            };
            Some((key, iface.mac))
        })
        .collect()
}

/// The ordered writes that turn `current` into `target` without a moment where a VIP is
/// announced or a service points at something that does not exist yet: additions bottom-up
/// (backends, slots, services, reverse NAT, VIPs, announcements), then removals top-down.
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

    // A slot that changes or goes may end its old backend's membership of the service.
    let mut maybe_ended = BTreeSet::new();
    let mut slot_deletes = Vec::new();
    merge(&current.slots, &target.slots, |k, new, old| {
        if let Some(&old) = old {
            maybe_ended.insert((k.service_id, old));
        }
        match new {
            Some(b) => emit(Op::PutSlot(*k, *b))?,
            None => slot_deletes.push(Op::DeleteSlot(*k)),
        }
        Ok(())
    })?;

    let current_ids: BTreeSet<u32> = current.services.values().map(|s| s.id).collect();
    let mut service_deletes = Vec::new();
    merge(&current.services, &target.services, |k, new, _| {
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
    let revnat_deletes = put_or_defer(
        &current.revnat,
        &target.revnat,
        |k, v| Op::PutRevNat(*k, *v),
        |k| Op::DeleteRevNat(*k),
        &mut emit,
    )?;
    // A filter word first gains the bits of new VIPs (keeping the old ones), and loses the
    // bits of removed VIPs only after they are gone.
    let mut filter_shrinks = Vec::new();
    merge(
        &current.vip_filter,
        &target.vip_filter,
        |&word, new, old| {
            let (bits, old) = (new.copied().unwrap_or(0), old.copied().unwrap_or(0));
            if old & !bits != 0 {
                filter_shrinks.push(Op::ShrinkVipFilter(word, bits));
            }
            if old | bits != old {
                emit(Op::PutVipFilter(word, old | bits))?;
            }
            Ok(())
        },
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
        name_deletes,
        slot_deletes,
        revnat_deletes,
        backend_deletes,
    ] {
        for op in group {
            emit(op)?;
        }
    }
    // Memberships that really ended: the backend is in none of the service's target slots.
    let ended: BTreeSet<(u32, u32)> = maybe_ended
        .into_iter()
        .filter(|&(service_id, backend)| {
            let slots = SlotKey {
                service_id,
                slot: 0,
            }..SlotKey {
                service_id: service_id + 1,
                slot: 0,
            };
            !target.slots.range(slots).any(|(_, &b)| b == backend)
        })
        .collect();
    if !ended.is_empty() {
        emit(Op::EndMemberships(ended))?;
    }
    Ok(())
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

/// Walks two maps together in key order (linear, no lookups) and calls `each(key, new,
/// old)` for every key whose value differs: `new` is `None` for a key only in `current`,
/// `old` is `None` for a key only in `target`.
fn merge<'a, K: Ord, V: PartialEq, E>(
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

/// Applies `ops` to an in-memory state, as the maps would see them: the tests check that a
/// diff's writes reach its target.
#[cfg(test)]
fn apply(state: &mut MapState, ops: &[Op]) {
    for op in ops {
        match op {
            Op::PutBackend(id, b) => {
                state.backends.insert(*id, *b);
            }
            Op::PutSlot(k, v) => {
                state.slots.insert(*k, *v);
            }
            Op::PutService(k, v) => {
                state.services.insert(*k, *v);
            }
            Op::PutName(k, v) => {
                state.names.insert(*k, v.clone());
            }
            Op::PutRevNat(k, v) => {
                state.revnat.insert(*k, *v);
            }
            Op::PutVip(k, v) => {
                state.vips.insert(*k, *v);
            }
            Op::PutVipFilter(word, bits) | Op::ShrinkVipFilter(word, bits) => {
                if *bits == 0 {
                    state.vip_filter.remove(word);
                } else {
                    state.vip_filter.insert(*word, *bits);
                }
            }
            Op::PutL2(k, v) => {
                state.l2.insert(*k, *v);
            }
            Op::DeleteL2(k) => {
                state.l2.remove(k);
            }
            Op::DeleteVip(k) => {
                state.vips.remove(k);
            }
            Op::DeleteService(k) => {
                state.services.remove(k);
            }
            Op::DeleteName(k) => {
                state.names.remove(k);
            }
            Op::DeleteSlot(k) => {
                state.slots.remove(k);
            }
            Op::DeleteRevNat(k) => {
                state.revnat.remove(k);
            }
            Op::DeactivateBackend(k) => {
                state.backends.remove(k);
            }
            Op::ResetBackendStats(_) | Op::ResetServiceStats(_) | Op::EndMemberships(_) => {}
        }
    }
}

/// Human name of a frontend key, e.g. `192.168.10.49:443/TCP`.
pub fn frontend_label(key: &ServiceKey) -> String {
    format!(
        "{}:{}/{}",
        Ipv4Addr::from(key.vip),
        key.port,
        gateway_common::proto_name(key.proto)
    )
}

/// Human name of a backend, e.g. `10.244.1.10:8443`.
pub fn backend_label(b: &Backend) -> String {
    format!("{}:{}", Ipv4Addr::from(b.addr), b.port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectRef;
    use crate::config::fixtures::XorShift;
    use crate::model::{Announcement, BackendAddr, Frontend};

    fn svc(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Service".into(),
            namespace: "gateway".into(),
            name: name.into(),
        }
    }

    fn frontend(name: &str, vip: [u8; 4], port: u16, backends: &[([u8; 4], u16)]) -> Frontend {
        Frontend {
            service: svc(name),
            port_name: "http".into(),
            vip: Ipv4Addr::from(vip),
            port,
            protocol: Protocol::Tcp,
            affinity_timeout_secs: Some(10800),
            backends: backends
                .iter()
                .map(|&(a, p)| BackendAddr {
                    addr: Ipv4Addr::from(a),
                    port: p,
                })
                .collect(),
        }
    }

    fn ens18() -> Vec<Interface> {
        vec![Interface {
            name: "ens18".into(),
            index: 2,
            mac: [2, 0, 0, 0, 0, 0x11],
        }]
    }

    fn desired(frontends: Vec<Frontend>) -> DesiredState {
        let announcements = frontends
            .iter()
            .map(|f| Announcement {
                interface: "ens18".into(),
                vip: f.vip,
                service: f.service.clone(),
                policy: "l2-policy".into(),
            })
            .collect();
        DesiredState {
            frontends,
            announcements,
            ..Default::default()
        }
    }

    const POD_A: ([u8; 4], u16) = ([10, 244, 1, 10], 8080);
    const POD_B: ([u8; 4], u16) = ([10, 244, 1, 11], 8080);
    const POD_C: ([u8; 4], u16) = ([10, 244, 1, 12], 8080);

    /// Applies a desired state on top of `current` and returns the ops and the new state.
    fn step(current: &MapState, d: &DesiredState) -> (Vec<Op>, MapState) {
        let t = target(d, &ens18(), current, &Capacity::default()).unwrap();
        let ops = diff(current, &t);
        let mut s = current.clone();
        apply(&mut s, &ops);
        assert_eq!(s, t, "applying the diff reaches the target");
        (ops, t)
    }

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
            &BTreeSet::from([(a, backend_id(&s1, POD_A)), (a, backend_id(&s1, POD_B))])
        );
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
        assert_eq!(s2, MapState::default());
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
    fn too_many_frontends_on_one_backend_is_refused() {
        let fronts = (0..5)
            .map(|i| frontend("x", [192, 168, 10, 40 + i], 80, &[POD_A]))
            .collect();
        let err = target(
            &desired(fronts),
            &ens18(),
            &MapState::default(),
            &Capacity::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("10.244.1.10:8080 serves 5 frontends"),
            "{err}"
        );
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

    /// A random desired state over few VIPs, ports and backends, so that frontends share
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
