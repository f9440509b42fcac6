//! Typed handles on every datapath map (expanded from gateway-common's map table), whether
//! just loaded or opened from their pins by a read-only command in another process; reading
//! the agent-managed state back, and writing plan operations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie},
    util::nr_cpus,
};
use gateway_common::{
    Affinity, AffinityKey, AgentState, BACKEND_F_ACTIVE, Backend, CT_F_DENIED, CT_F_SNAT, Counter,
    CtEntry, CtKey, DatapathConfig, Frontend, GarpCount, HairpinVip, IfaceInfo, L2Entry, L2Key,
    NextHop, ReplyKey, RevNat, RevNatKey, Service, ServiceKey, ServiceName, SlotKey, SnatPort,
    SockRevNatKey, SourceRange, Traffic, VipInfo, VipKey,
    cluster::{ClaimKey, ClaimRecord, ClusterRecord, Gate, MemberRecord},
    map_names, snat,
};

use crate::config::Ipv4Net;
use crate::plan::{FlowRules, MapState, Membership, Op};

/// The `gw_src_ranges` key of prefix `net` of service `service_id`.
fn range_key(service_id: u32, net: &Ipv4Net) -> lpm_trie::Key<SourceRange> {
    lpm_trie::Key::new(
        SourceRange::trie_prefix_len(net.len),
        SourceRange {
            service_id: service_id.to_be_bytes(),
            addr: net.addr.octets(),
        },
    )
}

/// Ends a tracked flow: the datapath keeps a flow only while its backend's address matches
/// the entry's, so clearing the entry's copy ends it the way a removed backend does.
fn end_flow(entry: &mut CtEntry) {
    entry.backend_addr = [0; 4];
    entry.backend_port = 0;
}

/// What [`Maps::settle_flows`] found to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub flows_ended: usize,
    pub flows_denied: usize,
    pub affinity_ended: usize,
}

impl Settled {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// aya's handle on a map of the table's `kind`.
macro_rules! handle {
    (Array<$key:ty => $value:ty>) => { Array<MapData, $value> };
    (Hash<$key:ty => $value:ty>) => { HashMap<MapData, $key, $value> };
    (LruHash<$key:ty => $value:ty>) => { HashMap<MapData, $key, $value> };
    (PerCpuArray<$key:ty => $value:ty>) => { PerCpuArray<MapData, $value> };
    (LpmTrie<$key:ty => $value:ty>) => { LpmTrie<MapData, $key, $value> };
}

macro_rules! handles {
    ($(
        $(#[$doc:meta])*
        $static:ident $handle:ident $name:literal:
            $kind:ident<$key:ty => $value:ty> = $size:ident $(($entries:expr))?,
    )*) => {
        pub struct Maps {
            $(
                $(#[$doc])*
                pub $handle: handle!($kind<$key => $value>),
            )*
        }

        impl Maps {
            /// Every handle, from the map of its name that `get` finds.
            fn build(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
                Ok(Self {
                    $($handle: typed($name, get($name)?)?,)*
                })
            }
        }
    };
}

gateway_common::map_table!(handles);

/// Converts a generic map into its typed handle, naming the map on failure.
fn typed<T: TryFrom<Map, Error = MapError>>(name: &str, map: Map) -> Result<T> {
    T::try_from(map).with_context(|| format!("map {name} does not have the expected type"))
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))
        })
    }

    /// Opens the maps a running (or stopped) agent pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        if !dir.join(map_names::SERVICES).exists() {
            bail!(
                "no gateway datapath is pinned under {} (is the agent running, and is --bpffs right?)",
                dir.display()
            );
        }
        Self::build(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("pinned map {}", path.display()))
        })
    }

    /// The agent-managed content, as a previous run of the agent left it.
    pub fn read_state(&self) -> Result<MapState> {
        let mut state = MapState::default();
        for (word, entry) in self.vip_filter.iter().enumerate() {
            let bits = entry.context("reading gw_vip_filter")?;
            if bits != 0 {
                state.vip_filter.insert(word as u32, bits);
            }
        }
        for entry in self.vips.iter() {
            let (k, v) = entry.context("reading gw_vips")?;
            state.vips.insert(k, v);
        }
        for entry in self.services.iter() {
            let (k, v) = entry.context("reading gw_services")?;
            state.services.insert(k, v);
        }
        for entry in self.names.iter() {
            let (k, v) = entry.context("reading gw_svc_names")?;
            state.names.insert(k, v.as_str().to_owned());
        }
        for entry in self.slots.iter() {
            let (k, v) = entry.context("reading gw_slots")?;
            state.slots.insert(k, v);
        }
        for (id, entry) in self.backends.iter().enumerate() {
            let b = entry.context("reading gw_backends")?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                state.backends.insert(id as u32, b);
            }
        }
        for entry in self.revnat.iter() {
            let (k, v) = entry.context("reading gw_revnat")?;
            state.revnat.insert(k, v);
        }
        for entry in self.l2.iter() {
            let (k, v) = entry.context("reading gw_l2")?;
            state.l2.insert(k, v.mac);
        }
        for (index, entry) in self.ifaces.iter().enumerate() {
            let iface = entry.context("reading gw_ifaces")?;
            if iface != IfaceInfo::default() {
                state.ifaces.insert(index as u32, iface);
            }
        }
        for key in self.source_ranges.keys() {
            let key = key.context("reading gw_src_ranges")?;
            let range = key.data();
            let len = key
                .prefix_len()
                .saturating_sub(SourceRange::trie_prefix_len(0));
            let net = Ipv4Net::new(range.addr.into(), len as u8)
                .context("a prefix longer than 32 bits in gw_src_ranges")?;
            state
                .source_ranges
                .insert((u32::from_be_bytes(range.service_id), net));
        }
        for (word, entry) in self.remote_filter.iter().enumerate() {
            let bits = entry.context("reading gw_remote_filter")?;
            if bits != 0 {
                state.remote_filter.insert(word as u32, bits);
            }
        }
        Ok(state)
    }

    /// Writes one plan operation.
    pub fn apply(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutBackend(id, b) => self
                .backends
                .set(*id, b, 0)
                .context("writing gw_backends")?,
            Op::DeactivateBackend(id) => self
                .backends
                .set(*id, Backend::default(), 0)
                .context("writing gw_backends")?,
            Op::ResetBackendStats(id) => zero(&mut self.backend_stats, *id)?,
            Op::ResetServiceStats(id) => zero(&mut self.service_stats, *id)?,
            Op::PutSlot(k, v) => self.slots.insert(k, v, 0).context("writing gw_slots")?,
            Op::DeleteSlot(k) => remove(&mut self.slots, k, "gw_slots")?,
            Op::PutService(k, v) => self
                .services
                .insert(k, v, 0)
                .context("writing gw_services")?,
            Op::DeleteService(k) => remove(&mut self.services, k, "gw_services")?,
            Op::PutName(k, v) => self
                .names
                .insert(k, ServiceName::new(v), 0)
                .context("writing gw_svc_names")?,
            Op::DeleteName(k) => remove(&mut self.names, k, "gw_svc_names")?,
            Op::PutRevNat(k, v) => self.revnat.insert(k, v, 0).context("writing gw_revnat")?,
            Op::DeleteRevNat(k) => remove(&mut self.revnat, k, "gw_revnat")?,
            Op::PutVip(k, v) => self.vips.insert(k, v, 0).context("writing gw_vips")?,
            Op::PutVipFilter(word, bits) | Op::ShrinkVipFilter(word, bits) => self
                .vip_filter
                .set(*word, bits, 0)
                .context("writing gw_vip_filter")?,
            Op::DeleteVip(k) => remove(&mut self.vips, k, "gw_vips")?,
            Op::PutRemoteFilter(word, bits) | Op::ShrinkRemoteFilter(word, bits) => self
                .remote_filter
                .set(*word, bits, 0)
                .context("writing gw_remote_filter")?,
            Op::PutIface(k, v) => self.ifaces.set(*k, v, 0).context("writing gw_ifaces")?,
            Op::PutSourceRange(id, net) => self
                .source_ranges
                .insert(&range_key(*id, net), 1, 0)
                .context("writing gw_src_ranges")?,
            Op::DeleteSourceRange(id, net) => {
                match self.source_ranges.remove(&range_key(*id, net)) {
                    Ok(()) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context("deleting from gw_src_ranges"),
                }
            }
            Op::DenyOutside(services) => self.deny_outside(services)?,
            Op::DeleteIface(k) => self
                .ifaces
                .set(*k, IfaceInfo::default(), 0)
                .context("writing gw_ifaces")?,
            Op::PutL2(k, mac) => {
                // Keep the counters of an entry that only changes MAC.
                let old = self.l2.get(k, 0).unwrap_or_default();
                let entry = L2Entry { mac: *mac, ..old };
                self.l2.insert(k, entry, 0).context("writing gw_l2")?
            }
            Op::DeleteL2(k) => {
                remove(&mut self.l2, k, "gw_l2")?;
                remove(&mut self.garp, k, "gw_garp")?;
            }
            Op::EndMemberships(ended) => self.end_memberships(ended)?,
            Op::EndAffinity(drained) => self.end_affinity(drained)?,
        }
        Ok(())
    }

    /// Removes the affinity entries of these memberships.
    fn end_affinity(&mut self, ended: &BTreeSet<Membership>) -> Result<()> {
        self.end_affinity_where(|m| ended.contains(m)).map(drop)
    }

    /// Removes the affinity entries whose membership `ends`; returns how many.
    fn end_affinity_where(&mut self, ends: impl Fn(&Membership) -> bool) -> Result<usize> {
        let stale: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, v)| {
                ends(&Membership {
                    service_id: k.service_id,
                    backend_id: v.backend_id,
                })
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            remove(&mut self.affinity, k, "gw_affinity")?;
        }
        self.count(Counter::AffinityRemoved, stale.len() as u64)?;
        Ok(stale.len())
    }

    /// Adds `n` to a counter only the agent writes (the datapath never touches its slot,
    /// so reading and writing it back races with nothing).
    fn count(&mut self, counter: Counter, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut values: Vec<u64> = self
            .counters
            .get(&(counter as u32), 0)
            .context("reading gw_counters")?
            .iter()
            .copied()
            .collect();
        if let Some(first) = values.first_mut() {
            *first += n;
        }
        let values = PerCpuValues::try_from(values).context("building per-CPU counters")?;
        self.counters
            .set(counter as u32, values, 0)
            .context("writing gw_counters")
    }

    /// Marks the tracked flows of these services from clients outside their new ranges:
    /// the datapath drops their packets (a new SYN on the tuple is judged afresh).
    fn deny_outside(&mut self, services: &BTreeMap<u32, Vec<Ipv4Net>>) -> Result<()> {
        let denied: Vec<(CtKey, CtEntry)> = self
            .conntrack
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, v)| {
                services.get(&v.service_id).is_some_and(|ranges| {
                    let client = k.client_addr.into();
                    !ranges.iter().any(|net| net.contains(client))
                })
            })
            .collect();
        self.rewrite_flows(denied, |v| v.flags |= CT_F_DENIED)
    }

    /// Rewrites these tracked flows' entries with `change`, keeping the flows that ended
    /// meanwhile ended (BPF_EXIST: an entry the datapath or LRU removed is not brought back).
    fn rewrite_flows(
        &mut self,
        flows: Vec<(CtKey, CtEntry)>,
        change: impl Fn(&mut CtEntry),
    ) -> Result<()> {
        for (k, mut v) in flows {
            change(&mut v);
            match self.conntrack.insert(k, v, 2) {
                Ok(()) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("writing gw_ct"),
            }
        }
        Ok(())
    }

    fn end_memberships(&mut self, ended: &BTreeSet<Membership>) -> Result<()> {
        self.end_affinity(ended)?;
        let flows: Vec<(CtKey, CtEntry)> = self
            .conntrack
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, v)| {
                ended.contains(&Membership {
                    service_id: v.service_id,
                    backend_id: v.backend_id,
                })
            })
            .collect();
        self.rewrite_flows(flows, end_flow)
    }

    /// Brings the tracked flows and affinity in line with `rules` wherever a reload's last
    /// steps did not run (the agent killed between its writes, or a write that failed):
    /// flows of a backend that left its service end, flows from clients outside their
    /// service's source ranges are denied, and affinity to a backend that takes no new
    /// flows goes. What each step would have done, found from the flows themselves.
    pub fn settle_flows(&mut self, rules: &FlowRules) -> Result<Settled> {
        let (mut ended, mut denied) = (Vec::new(), Vec::new());
        for (k, v) in self.conntrack.iter().filter_map(|e| e.ok()) {
            let membership = Membership {
                service_id: v.service_id,
                backend_id: v.backend_id,
            };
            if v.backend_addr != [0; 4] && !rules.listed.contains(&membership) {
                ended.push((k, v));
            } else if v.flags & CT_F_DENIED == 0
                && !rules.admits(v.service_id, k.client_addr.into())
            {
                denied.push((k, v));
            }
        }
        let settled = Settled {
            flows_ended: ended.len(),
            flows_denied: denied.len(),
            affinity_ended: self.end_affinity_where(|m| !rules.taking.contains(m))?,
        };
        self.rewrite_flows(ended, end_flow)?;
        self.rewrite_flows(denied, |v| v.flags |= CT_F_DENIED)?;
        Ok(settled)
    }

    /// Gives every SNATed flow whose port's slot was never claimed the slot back, and
    /// returns how many: after an upgrade from a version that kept SNAT ports elsewhere (in
    /// `gw_ct_reply`), the replies of the flows it SNATed find their flow again. Slots
    /// already claimed are left alone (a restart of this version finds every flow's slot
    /// claimed). Only before the programs that claim slots are attached: a slot written
    /// here must not be one a new flow is claiming.
    pub fn restore_snat_ports(&mut self) -> Result<usize> {
        let flows: Vec<(CtKey, CtEntry)> = self
            .conntrack
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, v)| v.flags & CT_F_SNAT != 0 && v.backend_addr != [0; 4])
            .collect();
        let mut restored = 0;
        for (k, v) in flows {
            let backend = (v.backend_addr, v.backend_port);
            let index = snat::slot(v.snat_addr, backend, k.proto, v.snat_port);
            let slot = self
                .snat_ports
                .get(&index, 0)
                .context("reading gw_snat_ports")?;
            if slot.generation != 0 {
                continue;
            }
            let claimed = SnatPort {
                generation: 2,
                client_addr: k.client_addr,
                vip: k.vip,
                client_port: k.client_port,
                vip_port: k.vip_port,
            };
            self.snat_ports
                .set(index, claimed, 0)
                .context("writing gw_snat_ports")?;
            restored += 1;
        }
        Ok(restored)
    }

    pub fn read_agent(&self) -> Result<AgentState> {
        self.agent.get(&0, 0).context("reading gw_agent")
    }

    pub fn write_agent(&mut self, state: &AgentState) -> Result<()> {
        self.agent.set(0, state, 0).context("writing gw_agent")
    }

    /// Adds `frames` to the gratuitous ARP count of an announcement.
    pub fn count_garp(&mut self, key: &L2Key, frames: u64) -> Result<()> {
        let sent = self.garp.get(key, 0).unwrap_or(0);
        self.garp
            .insert(key, sent + frames, 0)
            .context("writing gw_garp")
    }

    /// The VIPs the hairpin hooks balance, with the client address of this node's own
    /// connections to each.
    pub fn read_hairpin(&self) -> Result<BTreeMap<VipKey, HairpinVip>> {
        self.hairpin
            .iter()
            .collect::<Result<_, _>>()
            .context("reading gw_hairpin")
    }

    pub fn put_hairpin(&mut self, vip: VipKey, entry: HairpinVip) -> Result<()> {
        self.hairpin
            .insert(vip, entry, 0)
            .context("writing gw_hairpin")
    }

    pub fn remove_hairpin(&mut self, vip: &VipKey) -> Result<()> {
        remove(&mut self.hairpin, vip, "gw_hairpin")
    }

    pub fn write_gate(&mut self, gate: Gate) -> Result<()> {
        self.gate.set(0, gate, 0).context("writing gw_gate")
    }

    pub fn read_gate(&self) -> Result<Gate> {
        self.gate.get(&0, 0).context("reading gw_gate")
    }

    /// The operator's drain request (`drain`/`undrain`), as the CLI last wrote it.
    pub fn drain_requested(&self) -> Result<bool> {
        let value = self.drain.get(&0, 0).context("reading gw_drain")?;
        Ok(value == gateway_common::cluster::DRAIN_REQUESTED)
    }

    pub fn request_drain(&mut self, drain: bool) -> Result<()> {
        let value = if drain {
            gateway_common::cluster::DRAIN_REQUESTED
        } else {
            0
        };
        self.drain.set(0, value, 0).context("writing gw_drain")
    }

    pub fn write_cluster(&mut self, record: &ClusterRecord) -> Result<()> {
        self.cluster.set(0, record, 0).context("writing gw_cluster")
    }

    pub fn read_cluster(&self) -> Result<ClusterRecord> {
        self.cluster.get(&0, 0).context("reading gw_cluster")
    }

    pub fn write_member(&mut self, index: u32, record: &MemberRecord) -> Result<()> {
        self.members
            .set(index, record, 0)
            .context("writing gw_members")
    }

    /// The first `count` members of `gw_members`.
    pub fn read_members(&self, count: u32) -> Result<Vec<MemberRecord>> {
        (0..count)
            .map(|i| self.members.get(&i, 0).context("reading gw_members"))
            .collect()
    }

    pub fn read_claims(&self) -> Result<BTreeMap<ClaimKey, ClaimRecord>> {
        self.claims
            .iter()
            .map(|entry| entry.context("reading gw_claims"))
            .collect()
    }

    pub fn write_claim(&mut self, key: &ClaimKey, claim: &ClaimRecord) -> Result<()> {
        self.claims
            .insert(key, claim, 0)
            .context("writing gw_claims")
    }

    pub fn remove_claim(&mut self, key: &ClaimKey) -> Result<()> {
        remove(&mut self.claims, key, "gw_claims")
    }

    pub fn write_config(&mut self, config: DatapathConfig) -> Result<()> {
        self.config.set(0, config, 0).context("writing gw_config")
    }

    pub fn read_config(&self) -> Result<DatapathConfig> {
        self.config.get(&0, 0).context("reading gw_config")
    }

    /// The datapath counters summed over CPUs, in `Counter::ALL` order.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let per_cpu = self
                    .counters
                    .get(&(c as u32), 0)
                    .context("reading gw_counters")?;
                Ok((c, per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn service_traffic(&self, id: u32) -> Result<Traffic> {
        sum_traffic(&self.service_stats, id)
    }

    pub fn backend_traffic(&self, id: u32) -> Result<Traffic> {
        sum_traffic(&self.backend_stats, id)
    }
}

fn sum_traffic(map: &PerCpuArray<MapData, Traffic>, id: u32) -> Result<Traffic> {
    let per_cpu = map.get(&id, 0).context("reading traffic counters")?;
    Ok(per_cpu.iter().fold(Traffic::default(), |a, t| Traffic {
        fwd_packets: a.fwd_packets + t.fwd_packets,
        fwd_bytes: a.fwd_bytes + t.fwd_bytes,
        rev_packets: a.rev_packets + t.rev_packets,
        rev_bytes: a.rev_bytes + t.rev_bytes,
        denied_packets: a.denied_packets + t.denied_packets,
    }))
}

fn zero(map: &mut PerCpuArray<MapData, Traffic>, id: u32) -> Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let values =
        PerCpuValues::try_from(vec![Traffic::default(); cpus]).context("building per-CPU zeros")?;
    map.set(id, values, 0).context("resetting traffic counters")
}

/// Removes `key`; a key that is already gone is not an error (the state converges).
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &str,
) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("deleting from {name}")),
    }
}
