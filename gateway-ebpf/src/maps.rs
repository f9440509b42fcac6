//! Every map of the datapath, as BTF maps so `bpftool map dump` prints field names.
//! Names and layouts come from `gateway_common`; the agent pins each map under `--bpffs`
//! by the same name and may resize the capacities at load time.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gateway_common::{
    Affinity, AffinityKey, AgentState, Backend, Counter, CtEntry, CtKey, DatapathConfig, GarpCount,
    L2Entry, L2Key, RevNat, RevNatKey, Service, ServiceKey, ServiceName, SlotKey, Traffic,
    VIP_FILTER_WORDS, VipInfo, VipKey, capacity,
};

#[btf_map(name = "gw_vip_filter")]
pub static VIP_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();

#[btf_map(name = "gw_vips")]
pub static VIPS: HashMap<VipKey, VipInfo, { capacity::VIPS as usize }> = HashMap::new();

#[btf_map(name = "gw_services")]
pub static SERVICES: HashMap<ServiceKey, Service, { capacity::SERVICES as usize }> = HashMap::new();

#[btf_map(name = "gw_slots")]
pub static SLOTS: HashMap<SlotKey, u32, { capacity::SLOTS as usize }> = HashMap::new();

#[btf_map(name = "gw_backends")]
pub static BACKENDS: Array<Backend, { capacity::BACKENDS as usize }> = Array::new();

#[btf_map(name = "gw_revnat")]
pub static REVNAT: HashMap<RevNatKey, RevNat, { capacity::BACKENDS as usize }> = HashMap::new();

/// Per-CPU LRU lists: inserting a new flow never takes a lock shared with other CPUs (as in
/// Katran). Each CPU evicts from its own share of the table.
const NO_COMMON_LRU: usize = aya_ebpf::bindings::BPF_F_NO_COMMON_LRU as usize;

#[btf_map(name = "gw_ct")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry, { capacity::CONNTRACK as usize }, NO_COMMON_LRU> =
    LruHashMap::new();

#[btf_map(name = "gw_affinity")]
pub static AFFINITY: LruHashMap<
    AffinityKey,
    Affinity,
    { capacity::AFFINITY as usize },
    NO_COMMON_LRU,
> = LruHashMap::new();

#[btf_map(name = "gw_l2")]
pub static L2: HashMap<L2Key, L2Entry, { capacity::L2 as usize }> = HashMap::new();

#[btf_map(name = "gw_config")]
pub static CONFIG: Array<DatapathConfig, 1> = Array::new();

#[btf_map(name = "gw_counters")]
pub static COUNTERS: PerCpuArray<u64, { Counter::COUNT as usize }> = PerCpuArray::new();

#[btf_map(name = "gw_svc_stats")]
pub static SERVICE_STATS: PerCpuArray<Traffic, { capacity::SERVICES as usize }> =
    PerCpuArray::new();

#[btf_map(name = "gw_be_stats")]
pub static BACKEND_STATS: PerCpuArray<Traffic, { capacity::BACKENDS as usize }> =
    PerCpuArray::new();

#[btf_map(name = "gw_svc_names")]
pub static SERVICE_NAMES: HashMap<u32, ServiceName, { capacity::SERVICES as usize }> =
    HashMap::new();

/// The agent's own state (see `AgentState`); the programs never touch it.
#[btf_map(name = "gw_agent")]
pub static AGENT: Array<AgentState, 1> = Array::new();

/// Gratuitous ARP counts (see `GarpCount`); the programs never touch it.
#[btf_map(name = "gw_garp")]
pub static GARP: HashMap<L2Key, GarpCount, { capacity::L2 as usize }> = HashMap::new();
