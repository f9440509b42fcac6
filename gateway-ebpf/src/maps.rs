//! Every map of the datapath, expanded from gateway-common's map table (`map_table!`): as BTF
//! maps, so `bpftool map dump` prints field names, with the sizes of the default capacity
//! (the agent sets its own at load time and pins each map under `--bpffs` by its name).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gateway_common::{
    Affinity, AffinityKey, AgentState, Backend, Counter, CtEntry, CtKey, DatapathConfig, Frontend,
    GarpCount, HairpinVip, IfaceInfo, L2Entry, L2Key, NEXTHOP_SLOTS, NextHop, REMOTE_FILTER_WORDS,
    ReplyKey, RevNat, RevNatKey, SNAT_SLOTS, Service, ServiceKey, ServiceName, SlotKey, SnatPort,
    SockRevNatKey, SourceRange, Traffic, VIP_FILTER_WORDS, VipInfo, VipKey,
    capacity::Capacity,
    cluster::{ClaimKey, ClaimRecord, ClusterRecord, Gate, MEMBERS_MAX, MemberRecord},
    maps::{IFACES_MAX, Kind, Size},
};

/// One BTF map static of the table's `kind`, holding `entries`.
macro_rules! btf_map_static {
    ($(#[$doc:meta])* $static:ident $name:tt Array<$key:ty => $value:ty> $entries:expr) => {
        $(#[$doc])*
        #[btf_map(name = $name)]
        pub static $static: Array<$value, { $entries }> = Array::new();
    };
    ($(#[$doc:meta])* $static:ident $name:tt Hash<$key:ty => $value:ty> $entries:expr) => {
        $(#[$doc])*
        #[btf_map(name = $name)]
        pub static $static: HashMap<$key, $value, { $entries }> = HashMap::new();
    };
    ($(#[$doc:meta])* $static:ident $name:tt LruHash<$key:ty => $value:ty> $entries:expr) => {
        $(#[$doc])*
        #[btf_map(name = $name)]
        pub static $static: LruHashMap<$key, $value, { $entries }, { Kind::LruHash.flags() as usize }> =
            LruHashMap::new();
    };
    ($(#[$doc:meta])* $static:ident $name:tt LpmTrie<$key:ty => $value:ty> $entries:expr) => {
        $(#[$doc])*
        #[btf_map(name = $name)]
        pub static $static: LpmTrie<$key, $value, { $entries }, { Kind::LpmTrie.flags() as usize }> =
            LpmTrie::new();
    };
    ($(#[$doc:meta])* $static:ident $name:tt PerCpuArray<$key:ty => $value:ty> $entries:expr) => {
        $(#[$doc])*
        #[btf_map(name = $name)]
        pub static $static: PerCpuArray<$value, { $entries }> = PerCpuArray::new();
    };
}

macro_rules! btf_maps {
    ($(
        $(#[$doc:meta])*
        $static:ident $handle:ident $name:tt:
            $kind:ident<$key:ty => $value:ty> = $size:ident $(($entries:expr))?,
    )*) => {
        $(
            btf_map_static!(
                $(#[$doc])* $static $name $kind<$key => $value>
                Size::$size $(($entries))?.entries(&Capacity::DEFAULT) as usize
            );
        )*
    };
}

gateway_common::map_table!(btf_maps);
