//! The agent-managed content of the maps, the writes that change it, and a re-plan's
//! before and after.

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{
    Backend, IfaceInfo, L2Key, RevNat, RevNatKey, SERVICE_F_SOURCE_RANGES, Service, ServiceKey,
    SlotKey, VipInfo, VipKey,
};

use super::entries::{slots_of, source_ranges_of};
use crate::config::Ipv4Net;

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
    /// `gw_ifaces`: the interfaces the programs run on, by ifindex.
    pub ifaces: BTreeMap<u32, IfaceInfo>,
    /// `gw_remote_filter` words that are not zero.
    pub remote_filter: BTreeMap<u32, u64>,
    /// `gw_src_ranges`: (service id, prefix) of every frontend with source ranges.
    pub source_ranges: BTreeSet<(u32, Ipv4Net)>,
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
    /// A `gw_remote_filter` word gains bits (before any flow can go to the backends it
    /// covers) ...
    PutRemoteFilter(u32, u64),
    /// ... or loses them (after the backends are gone).
    ShrinkRemoteFilter(u32, u64),
    PutIface(u32, IfaceInfo),
    DeleteIface(u32),
    /// Service id `.0` admits clients in prefix `.1`.
    PutSourceRange(u32, Ipv4Net),
    DeleteSourceRange(u32, Ipv4Net),
    /// These services' source ranges changed: their tracked flows from clients outside the
    /// new ranges are marked so the datapath drops them (`drop_source_range`).
    DenyOutside(BTreeMap<u32, Vec<Ipv4Net>>),
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
    EndMemberships(BTreeSet<Membership>),
    /// These backends no longer take these services' new flows but drain the flows they
    /// have (terminating endpoints): their affinity entries go, so the clients' new
    /// connections go to the backends that take them.
    EndAffinity(BTreeSet<Membership>),
}

/// A backend serving a frontend: the pair whose affinity entries and tracked flows end
/// when the backend leaves the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Membership {
    pub service_id: u32,
    pub backend_id: u32,
}

/// What a re-plan changes: every entry it touches, as the maps hold it now (`before`) and as
/// it must become (`after`; a key missing there goes). [`diff_each`](super::diff_each) of
/// the two is the writes, and `MapState::apply` brings the state along once they are made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub before: MapState,
    pub after: MapState,
}

/// What the datapath-owned entries of the flows (conntrack, affinity) must agree with, as
/// a state lists it: whichever writes a reload made, its last steps (ending memberships,
/// denying clients outside new source ranges, ending affinity to a draining backend) bring
/// the flows in line with this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowRules {
    /// Every backend a service lists: the ones taking its new flows and the ones draining
    /// theirs. A flow of any other pair has lost its backend.
    pub listed: BTreeSet<Membership>,
    /// The backends taking new flows: affinity may point only at these.
    pub taking: BTreeSet<Membership>,
    /// The source ranges of every service that has them (empty: nobody is admitted).
    pub ranges: BTreeMap<u32, Vec<Ipv4Net>>,
}

impl FlowRules {
    /// Whether a flow of `service_id` from `client` may go on.
    pub fn admits(&self, service_id: u32, client: std::net::Ipv4Addr) -> bool {
        self.ranges
            .get(&service_id)
            .is_none_or(|nets| nets.iter().any(|net| net.contains(client)))
    }
}

impl MapState {
    /// The rules the flows of this state's services follow.
    pub fn flow_rules(&self) -> FlowRules {
        let mut rules = FlowRules::default();
        for service in self.services.values() {
            for (slot, &backend_id) in self.slots.range(slots_of(service.id)) {
                let membership = Membership {
                    service_id: service.id,
                    backend_id,
                };
                rules.listed.insert(membership);
                if slot.slot <= u32::from(service.backend_count) {
                    rules.taking.insert(membership);
                }
            }
            if let Some(nets) = self.source_ranges_of(service) {
                rules.ranges.insert(service.id, nets);
            }
        }
        rules
    }

    /// The ranges `service` admits clients from, if it has `loadBalancerSourceRanges`.
    pub fn source_ranges_of(&self, service: &Service) -> Option<Vec<Ipv4Net>> {
        (service.flags & SERVICE_F_SOURCE_RANGES != 0).then(|| {
            self.source_ranges
                .range(source_ranges_of(service.id))
                .map(|&(_, net)| net)
                .collect()
        })
    }

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
        update(&mut self.ifaces, before.ifaces, after.ifaces);
        update(
            &mut self.remote_filter,
            before.remote_filter,
            after.remote_filter,
        );
        for range in &before.source_ranges {
            self.source_ranges.remove(range);
        }
        self.source_ranges.extend(after.source_ranges);
    }
}
