//! The map table: every map of the datapath, declared once. The eBPF statics
//! (gateway-ebpf `maps`), the agent's typed handles (`datapath::Maps`), [`MAPS`] (which the
//! agent checks pinned maps against and sizes maps from) and [`map_names`] are all expanded
//! from [`map_table!`], so a map added, renamed or retyped there changes every side at once.

use core::mem::size_of;

use crate::{
    Affinity, AffinityKey, AgentState, Backend, Counter, CtEntry, CtKey, DatapathConfig, Frontend,
    GarpCount, HairpinVip, IfaceInfo, L2Entry, L2Key, NEXTHOP_SLOTS, NextHop, REMOTE_FILTER_WORDS,
    ReplyKey, RevNat, RevNatKey, SNAT_SLOTS, Service, ServiceKey, ServiceName, SlotKey, SnatPort,
    SockRevNatKey, SourceRange, Traffic, VIP_FILTER_WORDS, VipInfo, VipKey,
    capacity::Capacity,
    cluster::{ClaimKey, ClaimRecord, ClusterRecord, Gate, MEMBERS_MAX, MemberRecord},
};

/// Every map, one line each:
///
/// ```text
/// STATIC handle "name": Kind<Key => Value> = Size,
/// ```
///
/// the eBPF static, the field of the agent's `Maps`, the map's name (in the object, and of
/// its pin under `--bpffs`; under 16 bytes so `bpftool` shows it whole), its [`Kind`], key
/// and value types, and its [`Size`]. Arrays are indexed by `u32`; an LPM trie's key is the
/// data after the trie's own 32-bit prefix length.
///
/// `map_table!(callback)` expands to `callback! { <the lines> }`. The names in the lines are
/// resolved where the callback expands them: import the key and value types there (a
/// missing one is a compile error naming it).
#[macro_export]
macro_rules! map_table {
    ($callback:ident) => {
        $callback! {
            /// A bitmap of 2^20 bits with the bit of every VIP's hash set (see
            /// `vip_filter_bit`): the node's own traffic is passed after this one lookup.
            VIP_FILTER vip_filter "gw_vip_filter": Array<u32 => u64> = Fixed(VIP_FILTER_WORDS),
            /// VIP -> number of frontends; a VIP packet that matches no frontend is dropped.
            VIPS vips "gw_vips": Hash<VipKey => VipInfo> = Services,
            /// (VIP, port, protocol) -> the frontend: id, backend count, affinity.
            SERVICES services "gw_services": Hash<ServiceKey => Service> = Services,
            /// (service id, slot 1..n) -> backend id.
            SLOTS slots "gw_slots": Hash<SlotKey => u32> = Slots,
            /// Backend id -> address, port, protocol, active.
            BACKENDS backends "gw_backends": Array<u32 => Backend> = Backends,
            /// Backend (address, port, protocol) -> up to four frontends it serves.
            REVNAT revnat "gw_revnat": Hash<RevNatKey => RevNat> = Backends,
            /// Conntrack: the flow as the client sent it -> backend, state, last seen, SNAT.
            CONNTRACK conntrack "gw_ct": LruHash<CtKey => CtEntry> = Conntrack,
            /// Conntrack, reply side: a reply as it arrives -> its flow's `gw_ct` key, for
            /// flows on backends with more frontends than `gw_revnat` lists.
            CT_REPLY ct_reply "gw_ct_reply": LruHash<ReplyKey => CtKey> = Conntrack,
            /// SNAT ports: slot (`snat::slot`: row of SNAT address and backend, protocol,
            /// port) -> the flow holding the port, found by replies to it.
            SNAT_PORTS snat_ports "gw_snat_ports": Array<u32 => SnatPort> = Fixed(SNAT_SLOTS),
            /// A bitmap with the bit of every backend on another node set (see
            /// `REMOTE_FILTER_WORDS`): only packets from those may be replies to SNAT.
            REMOTE_FILTER remote_filter "gw_remote_filter": Array<u32 => u64> = Fixed(REMOTE_FILTER_WORDS),
            /// Ifindex -> the interface's address, the source of flows SNATed on it (an
            /// array: the verifier inlines its lookup, where a hash lookup is a call).
            IFACES ifaces "gw_ifaces": Array<u32 => IfaceInfo> = Fixed(IFACES_MAX),
            /// (service id, source prefix) of every service with `loadBalancerSourceRanges`.
            SOURCE_RANGES source_ranges "gw_src_ranges": LpmTrie<SourceRange => u8> = SourceRanges,
            /// Per CPU, the FIB's recent answers for the frames the datapath routes itself;
            /// the agent never touches it.
            NEXTHOPS nexthops "gw_nexthops": PerCpuArray<u32 => NextHop> = Fixed(NEXTHOP_SLOTS),
            /// ClientIP affinity: (client, service id) -> backend, last used.
            AFFINITY affinity "gw_affinity": LruHash<AffinityKey => Affinity> = Affinity,
            /// (ifindex, VIP) -> the interface's MAC, ARP replies sent.
            L2 l2 "gw_l2": Hash<L2Key => L2Entry> = Services,
            /// Conntrack timeouts and the datapath's clock, written by the agent at start.
            CONFIG config "gw_config": Array<u32 => DatapathConfig> = Fixed(1),
            /// Per-CPU counters, indexed by `Counter`.
            COUNTERS counters "gw_counters": PerCpuArray<u32 => u64> = Fixed(Counter::COUNT),
            /// Per-CPU traffic per service id.
            SERVICE_STATS service_stats "gw_svc_stats": PerCpuArray<u32 => Traffic> = Services,
            /// Per-CPU traffic per backend id.
            BACKEND_STATS backend_stats "gw_be_stats": PerCpuArray<u32 => Traffic> = Backends,
            /// Service id -> `namespace/name:port-name`; the programs never touch it.
            SERVICE_NAMES names "gw_svc_names": Hash<u32 => ServiceName> = Services,
            /// The agent's own state (see `AgentState`); the programs never touch it.
            AGENT agent "gw_agent": Array<u32 => AgentState> = Fixed(1),
            /// Gratuitous ARP frames sent per announcement; the programs never touch it.
            GARP garp "gw_garp": Hash<L2Key => GarpCount> = Services,
            /// Until when ARP is answered (see `Gate`), written by the agent.
            GATE gate "gw_gate": Array<u32 => Gate> = Fixed(1),
            /// The agent's view of the cluster; the programs never touch it.
            CLUSTER cluster "gw_cluster": Array<u32 => ClusterRecord> = Fixed(1),
            /// The cluster's members as the agent sees them; the programs never touch it.
            MEMBERS members "gw_members": Array<u32 => MemberRecord> = Fixed(MEMBERS_MAX),
            /// The VIPs each member claims; the programs never touch it.
            CLAIMS claims "gw_claims": Hash<ClaimKey => ClaimRecord> = Services,
            /// `DRAIN_REQUESTED` while the operator drains this node (`drain`), written by
            /// the CLI and read by the agent; the programs never touch it.
            DRAIN drain "gw_drain": Array<u32 => u32> = Fixed(1),
            /// Hairpin: the VIPs this node announces -> the address its own processes and
            /// pods count as (affinity); the socket hooks balance connections to these only.
            HAIRPIN hairpin "gw_hairpin": Hash<VipKey => HairpinVip> = Services,
            /// Hairpin: (socket cookie, backend) -> the frontend the socket asked for, so
            /// `getpeername()` and `recvfrom()` show the VIP. One per socket of this node
            /// sent to a backend, far fewer than the flows through the node: sized as
            /// affinity (an entry evicted only shows the backend to `getpeername()`).
            SOCK_REVNAT sock_revnat "gw_sock_revnat": LruHash<SockRevNatKey => Frontend> = Affinity,
        }
    };
}

/// `gw_ifaces` is indexed by ifindex: an interface whose ifindex is this or above has no
/// SNAT address (its flows to backends on other nodes are dropped as `drop_no_snat_addr`).
/// Uplinks exist from boot and have small ones.
pub const IFACES_MAX: u32 = 4096;

/// The kind of a map, as the kernel knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Array,
    Hash,
    /// An LRU hash with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): inserting a new entry never
    /// takes a lock shared with other CPUs (as in Katran); each CPU evicts from its own share
    /// of the table.
    LruHash,
    PerCpuArray,
    /// A longest-prefix-match trie (`BPF_F_NO_PREALLOC`, which the kernel requires of one).
    LpmTrie,
}

impl Kind {
    /// `BPF_MAP_TYPE_*`.
    pub const fn map_type(self) -> u32 {
        match self {
            Kind::Hash => 1,
            Kind::Array => 2,
            Kind::PerCpuArray => 6,
            Kind::LruHash => 9,
            Kind::LpmTrie => 11,
        }
    }

    /// `map_flags`.
    pub const fn flags(self) -> u32 {
        const BPF_F_NO_PREALLOC: u32 = 1 << 0;
        const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
        match self {
            Kind::LruHash => BPF_F_NO_COMMON_LRU,
            Kind::LpmTrie => BPF_F_NO_PREALLOC,
            Kind::Array | Kind::Hash | Kind::PerCpuArray => 0,
        }
    }

    /// The size of the kernel's key for a table key of `size` bytes: an LPM trie's key starts
    /// with its 32-bit prefix length.
    pub const fn key_size(self, size: usize) -> usize {
        match self {
            Kind::LpmTrie => size + 4,
            _ => size,
        }
    }
}

/// How a map's `max_entries` follows from the capacity flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Always this many, whatever the flags.
    Fixed(u32),
    /// One per frontend (`--services-max`): VIPs and announcements are bounded by it too.
    Services,
    /// One per backend (`--backends-max`).
    Backends,
    /// Backend slots over all services ([`Capacity::slots`]).
    Slots,
    /// `--ct-max`.
    Conntrack,
    /// `--affinity-max`.
    Affinity,
    /// Source ranges over all frontends ([`Capacity::source_ranges`]).
    SourceRanges,
}

impl Size {
    pub const fn entries(self, capacity: &Capacity) -> u32 {
        match self {
            Size::Fixed(n) => n,
            Size::Services => capacity.services,
            Size::Backends => capacity.backends,
            Size::Slots => capacity.slots(),
            Size::Conntrack => capacity.conntrack,
            Size::Affinity => capacity.affinity,
            Size::SourceRanges => capacity.source_ranges(),
        }
    }
}

/// One map of the table, as the agent checks and sizes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub name: &'static str,
    pub kind: Kind,
    pub key_size: usize,
    pub value_size: usize,
    pub size: Size,
}

macro_rules! map_defs {
    ($(
        $(#[$doc:meta])*
        $static:ident $handle:ident $name:literal:
            $kind:ident<$key:ty => $value:ty> = $size:ident $(($entries:expr))?,
    )*) => {
        /// Every map of the datapath; the agent pins each under `--bpffs` by its name.
        pub const MAPS: &[MapDef] = &[$(
            MapDef {
                name: $name,
                kind: Kind::$kind,
                key_size: Kind::$kind.key_size(size_of::<$key>()),
                value_size: size_of::<$value>(),
                size: Size::$size $(($entries))?,
            },
        )*];

        /// Map names, as defined in the eBPF object and used as pin file names.
        pub mod map_names {
            $(
                $(#[$doc])*
                pub const $static: &str = $name;
            )*
        }
    };
}

map_table!(map_defs);
