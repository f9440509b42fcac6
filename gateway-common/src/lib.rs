//! The contract between the gateway datapath (kernel) and the agent (userspace).
//!
//! Everything that crosses the kernel boundary is defined here exactly once: the map table
//! ([`maps`]: names, kinds, key and value types, sizes), map key and value layouts, flag
//! bits, counter indexes, capacities ([`capacity`]) and default timeouts, and the checksum
//! arithmetic both sides use ([`csum`]). All structs are `#[repr(C)]` with explicit padding
//! so both sides (and `bpftool`, which reads the BTF) agree on every byte; their sizes are
//! asserted at compile time, so the eBPF build checks them as well.
//!
//! Representation, chosen so `bpftool map dump` reads naturally: IPv4 addresses are their
//! four bytes as on the wire ([`Ipv4`], printed `[192,168,10,49]`), ports are plain numbers
//! in host byte order (printed `443`); the datapath swaps a port with one instruction.
#![no_std]

pub mod capacity;
pub mod cluster;
pub mod csum;
pub mod maps;
#[cfg(feature = "user")]
mod user;

use core::mem::size_of;

pub use maps::map_names;
#[cfg(feature = "user")]
pub use user::*;

/// An IPv4 address: its four bytes in wire order.
pub type Ipv4 = [u8; 4];

/// EtherTypes (linux/if_ether.h), as numbers: a frame carries them big-endian.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

/// Program names (the `#[classifier]` functions).
pub mod program_names {
    pub const INGRESS: &str = "gw_ingress";
    pub const EGRESS: &str = "gw_egress";
    /// An empty program returning TC_ACT_OK: the benchmarks' floor. Never attached.
    pub const FLOOR: &str = "gw_floor";
    /// Reads jiffies and CLOCK_MONOTONIC_COARSE side by side: run once by the agent at
    /// start through BPF_PROG_TEST_RUN, then unloaded. Never attached.
    pub const CLOCK: &str = "gw_clock";
    /// Hairpin (socket-level load balancing, attached to `--cgroup`): `connect()` to a VIP
    /// this node announces goes to a backend ...
    pub const CONNECT4: &str = "gw_connect4";
    /// ... so does every datagram `sendto()` a VIP ...
    pub const SENDMSG4: &str = "gw_sendmsg4";
    /// ... and the application sees the VIP as the source of the replies ...
    pub const RECVMSG4: &str = "gw_recvmsg4";
    /// ... and as the peer of its socket.
    pub const GETPEERNAME4: &str = "gw_getpeername4";
    /// The hairpin programs, in the order they are attached.
    pub const HAIRPIN: [&str; 4] = [CONNECT4, SENDMSG4, RECVMSG4, GETPEERNAME4];
}

/// The benchmark's frame-restoring wrapper (the `gateway-bench` object, never loaded by the
/// agent): BPF_PROG_TEST_RUN does not restore the frame between repeats, so the wrapper
/// writes this frame back before every pass and tail-calls the measured program.
pub mod bench {
    pub const FRAME_MAP: &str = "gw_bench_frame";
    pub const TARGET_MAP: &str = "gw_bench_target";
    pub const PROGRAM: &str = "gw_bench";
    /// The longest frame the wrapper restores.
    pub const FRAME_MAX: usize = 128;

    /// The frame of the next pass. With `vary_off` set (even offsets only), every pass
    /// first adds one to the 16-bit big-endian field there (a new source port or client
    /// address per pass, so each pass is a new flow) and updates the checksums at
    /// `csum_offs` (0: none) to match.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct BenchFrame {
        pub len: u32,
        pub vary_off: u16,
        pub csum_offs: [u16; 2],
        pub _pad: [u8; 6],
        pub frame: [u8; FRAME_MAX],
    }

    const _: () = assert!(core::mem::size_of::<BenchFrame>() == 16 + FRAME_MAX);
}

/// How the datapath learns the frame's `ip_summed` (which `__sk_buff` does not show) so it
/// can update L4 checksums itself instead of through two helper calls per rewrite.
///
/// aya cannot emit kfunc calls, so the datapath calls this helper number, which no kernel
/// has; at load time the agent rewrites each such call into a call of the kfunc
/// `bpf_cast_to_kern_ctx` (found in the running kernel's BTF), and writes the bit offset of
/// `ip_summed` in `struct sk_buff` (also from that BTF) into the global [`IP_SUMMED_AT`].
/// Left at 0 (no kernel BTF, no kfunc), the datapath never reaches the call (the verifier
/// prunes it as dead code) and leaves every L4 checksum to the kernel's helpers.
pub mod kern_ctx {
    /// The placeholder helper number of `bpf_cast_to_kern_ctx` in the datapath's code.
    pub const CAST_PLACEHOLDER: i32 = 0x6b63_7478; // "kctx"
    /// The read-only global that holds `ip_summed`'s bit offset in `struct sk_buff`.
    pub const IP_SUMMED_AT: &str = "GW_IP_SUMMED_AT";
    /// `skb->ip_summed` values (include/linux/skbuff.h).
    pub const CHECKSUM_NONE: u8 = 0;
    pub const CHECKSUM_UNNECESSARY: u8 = 1;
    pub const CHECKSUM_COMPLETE: u8 = 2;
    pub const CHECKSUM_PARTIAL: u8 = 3;
}

/// Default timeouts in seconds, as in the reference (`bpf.ctTcpTimeout`, `bpf.ctAnyTimeout`,
/// `sessionAffinityTimeoutSeconds`).
pub mod timeouts {
    /// Established TCP flows.
    pub const CT_TCP: u64 = 21600;
    /// Non-TCP flows (UDP).
    pub const CT_ANY: u64 = 3600;
    /// TCP flow that has only ever sent SYN: a half-open connection must not pin an entry.
    pub const CT_SYN: u64 = 60;
    /// TCP flow after FIN in both directions or an RST.
    pub const CT_CLOSE: u64 = 10;
    /// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
    pub const AFFINITY: u32 = 10800;
    pub const NS_PER_SEC: u64 = 1_000_000_000;
}

/// IP protocol numbers as stored in keys.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// `gw_vip_filter`: a bitmap of 2^20 bits (an array of u64 words) with the bit of every VIP's
/// hash set. An inlined array lookup costs the datapath almost nothing, so the node's own
/// traffic is passed after it alone; only addresses whose bit is set (every VIP, and about
/// one address in a hundred with 10,000 VIPs) are looked up further.
pub const VIP_FILTER_BITS: u32 = 1 << 20;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// The filter bit of `addr`: a multiplicative (Fibonacci) hash, so addresses that differ only
/// in their network part do not share a bit.
#[inline(always)]
pub fn vip_filter_bit(addr: Ipv4) -> u32 {
    u32::from_be_bytes(addr).wrapping_mul(0x9e37_79b1) >> 12
}

/// `gw_remote_filter`: the same kind of bitmap (same size, same [`vip_filter_bit`]) with the
/// bit of every backend on another node set. A packet that is not to a VIP is a reply to a
/// SNATed flow only if it comes from such a backend: the node's own traffic is passed after
/// this second inlined lookup, whatever ports it uses.
pub const REMOTE_FILTER_WORDS: u32 = VIP_FILTER_WORDS;

/// `gw_vips`: every VIP this node serves, keyed by address. A packet to a VIP that matches
/// no service port is dropped (and counted); a packet to any other address is not ours.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: Ipv4,
}

const _: () = assert!(size_of::<VipKey>() == 4);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Number of frontends (ports) on this VIP; informational.
    pub ports: u32,
}

const _: () = assert!(size_of::<VipInfo>() == 4);

/// `gw_services` key: one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: Ipv4,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(size_of::<ServiceKey>() == 8);

/// `gw_services` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// ClientIP affinity lifetime in nanoseconds; meaningful with [`SERVICE_F_AFFINITY`].
    pub affinity_timeout_ns: u64,
    /// Frontend id: indexes `gw_svc_stats` and keys `gw_slots` and `gw_affinity`.
    pub id: u32,
    /// Slots 1..=backend_count of `gw_slots` hold this service's backends.
    pub backend_count: u16,
    pub flags: u16,
}

const _: () = assert!(size_of::<Service>() == 16);

/// The service keeps ClientIP session affinity.
pub const SERVICE_F_AFFINITY: u16 = 1 << 0;
/// The service admits new flows only from the prefixes `gw_src_ranges` holds for its id
/// (`spec.loadBalancerSourceRanges`); without the flag every source is admitted.
pub const SERVICE_F_SOURCE_RANGES: u16 = 1 << 1;

/// `gw_slots` key: backend slot `slot` (1-based) of frontend `service_id`. Value: backend id.
/// Slots `1..=backend_count` take new flows; the slots after them hold the service's draining
/// backends (terminating endpoints still listed), whose flows go on but which take no new
/// ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub slot: u32,
}

const _: () = assert!(size_of::<SlotKey>() == 8);

/// `gw_backends`: array indexed by backend id. An entry with [`BACKEND_F_ACTIVE`] clear is a
/// removed backend: flows still pointing at it are dropped, never moved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Ipv4,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

const _: () = assert!(size_of::<Backend>() == 8);

pub const BACKEND_F_ACTIVE: u8 = 1 << 0;
/// The backend runs on another node: new flows to it are SNATed to this node's address on
/// the interface they arrived on, so its replies come back through this node.
pub const BACKEND_F_REMOTE: u8 = 1 << 1;
/// The backend serves more frontends than its `gw_revnat` entry lists: each new flow to it
/// also gets a `gw_ct_reply` entry, through which its replies find their frontend.
pub const BACKEND_F_REPLY_CT: u8 = 1 << 2;

/// `gw_revnat` key: a backend as it appears as the source of a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RevNatKey {
    pub addr: Ipv4,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(size_of::<RevNatKey>() == 8);

/// A frontend a reply may have to be rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub vip: Ipv4,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<Frontend>() == 8);

/// `gw_revnat` value: up to [`capacity::REVNAT_FRONTENDS`] of the frontends this backend
/// serves; the conntrack entry decides which one a reply belongs to.
///
/// Why a short list and not a reply-keyed conntrack entry for every flow: a reply then costs
/// one conntrack lookup per listed frontend (most backends serve one to four: a gateway's
/// envoy serves its ports on one or two VIPs), where a reply entry costs every new flow a
/// second LRU insert (~110-250 ns, measured by `cargo xtask bench`). A backend serving more
/// frontends than fit is marked [`REVNAT_F_REPLY_CT`] (and its `gw_backends` entry
/// [`BACKEND_F_REPLY_CT`]): its new flows pay for a `gw_ct_reply` entry, its replies look
/// there first. There is no limit on frontends per backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    /// Frontends listed, at most [`capacity::REVNAT_FRONTENDS`].
    pub count: u16,
    /// `REVNAT_F_*` bits.
    pub flags: u16,
    pub frontends: [Frontend; capacity::REVNAT_FRONTENDS],
}

/// The backend serves frontends that are not listed: look its replies up in `gw_ct_reply`.
pub const REVNAT_F_REPLY_CT: u16 = 1 << 0;

const _: () = assert!(size_of::<RevNat>() == 4 + 8 * capacity::REVNAT_FRONTENDS);

/// `gw_ct` key: the flow as the client sent it (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub client_addr: Ipv4,
    pub vip: Ipv4,
    pub client_port: u16,
    pub vip_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<CtKey>() == 16);

/// `gw_ct` value: one per flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The datapath's clock (see [`Clock`]; reads as CLOCK_MONOTONIC_COARSE) at the last packet either way.
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub service_id: u32,
    /// The backend's address and port when the flow was created: a backend id reused for
    /// another address must not capture the flow.
    pub backend_addr: Ipv4,
    pub backend_port: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// With [`CT_F_SNAT`]: the source the backend sees, this node's address on the interface
    /// the flow arrived on and the port chosen for the flow (its `gw_snat_ports` slot names
    /// the flow).
    pub snat_addr: Ipv4,
    pub snat_port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<CtEntry>() == 32);

/// TCP: a packet other than a bare SYN came from the client (the handshake completed).
pub const CT_F_ESTABLISHED: u16 = 1 << 0;
/// TCP: FIN from the client.
pub const CT_F_FIN_CLIENT: u16 = 1 << 1;
/// TCP: FIN from the backend.
pub const CT_F_FIN_BACKEND: u16 = 1 << 2;
/// TCP: RST in either direction.
pub const CT_F_RST: u16 = 1 << 3;
/// The flow is TCP (lifetimes follow the TCP state); otherwise `ct_any`.
pub const CT_F_TCP: u16 = 1 << 4;
/// The flow goes to a backend on another node, SNATed to `snat_addr:snat_port`; its packets
/// are routed out by the datapath (the FIB) rather than handed to the stack.
pub const CT_F_SNAT: u16 = 1 << 5;
/// The client lost its place in the service's `loadBalancerSourceRanges` (a reload changed
/// them): the flow's packets are dropped; a new SYN on the tuple is judged afresh.
pub const CT_F_DENIED: u16 = 1 << 6;

impl CtEntry {
    /// The TCP connection is over: an RST, or a FIN both ways. A new SYN on the same tuple is
    /// a new connection, balanced afresh.
    #[inline(always)]
    pub fn is_closed(&self) -> bool {
        self.flags & CT_F_RST != 0
            || self.flags & (CT_F_FIN_CLIENT | CT_F_FIN_BACKEND)
                == CT_F_FIN_CLIENT | CT_F_FIN_BACKEND
    }

    /// The lifetime of this entry after its last packet, in nanoseconds, given `config`.
    #[inline(always)]
    pub fn lifetime_ns(&self, config: &DatapathConfig) -> u64 {
        if self.flags & CT_F_TCP == 0 {
            config.ct_any_ns
        } else if self.is_closed() {
            config.ct_close_ns
        } else if self.flags & CT_F_ESTABLISHED != 0 {
            config.ct_tcp_ns
        } else {
            config.ct_syn_ns
        }
    }

    #[inline(always)]
    pub fn is_alive(&self, now_ns: u64, config: &DatapathConfig) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) <= self.lifetime_ns(config)
    }
}

/// `gw_ct_reply` key: a reply as it arrives, from the backend to the client, of a DNAT-only
/// flow on a backend with more frontends than `gw_revnat` lists. Value: the flow's
/// [`CtKey`], whose entry says whether the reply still belongs to it. One tuple is one
/// connection at the backend, so a newer flow on it takes the entry over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyKey {
    pub src_addr: Ipv4,
    pub dst_addr: Ipv4,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(size_of::<ReplyKey>() == 16);

/// `gw_snat_ports` value: a SNAT port's slot (see [`snat::slot`]) and the flow that holds
/// it. Claiming a port is an atomic compare-and-swap on `generation` in an array, instead of
/// a hash-map insert on every new SNATed flow; a reply finds its flow from its slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPort {
    /// 0: never claimed; odd: being claimed (the claimer alone writes the fields below);
    /// even: claimed by the flow below, which holds the port while its conntrack entry is
    /// alive and says it does. Rises by one per claim and release, so a claim never mistakes
    /// a slot's newer owner for the one it looked at.
    pub generation: u32,
    /// The holder's [`CtKey`] (its protocol is the slot's).
    pub client_addr: Ipv4,
    pub vip: Ipv4,
    pub client_port: u16,
    pub vip_port: u16,
}

const _: () = assert!(size_of::<SnatPort>() == 16);

impl SnatPort {
    /// The key of the flow that holds (or held) the slot, for a slot of protocol `proto`.
    #[inline(always)]
    pub fn holder(&self, proto: u8) -> CtKey {
        CtKey {
            client_addr: self.client_addr,
            vip: self.vip,
            client_port: self.client_port,
            vip_port: self.vip_port,
            proto,
            _pad: [0; 3],
        }
    }
}

/// `gw_src_ranges` key data (after the LPM trie's prefix length, which counts its bits): the
/// 32 bits of a frontend's id, then a source prefix. A frontend with
/// [`SERVICE_F_SOURCE_RANGES`] admits a new flow when (id, client address) matches an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    /// Big-endian, so that the trie compares the id's bytes in a fixed order.
    pub service_id: [u8; 4],
    pub addr: Ipv4,
}

const _: () = assert!(size_of::<SourceRange>() == 8);

impl SourceRange {
    /// The LPM trie's prefix length of a `prefix_len`-bit range of a service: the id's 32
    /// bits always match.
    pub const fn trie_prefix_len(prefix_len: u8) -> u32 {
        32 + prefix_len as u32
    }
}

/// `gw_ifaces` value: what the datapath needs of an interface it is attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The interface's (first) IPv4 address: the source of flows SNATed to a backend on
    /// another node when they arrive here; all zeros when it has none.
    pub addr: Ipv4,
}

const _: () = assert!(size_of::<IfaceInfo>() == 4);

/// `gw_nexthops`: a per-CPU cache of the FIB's answers for the frames the datapath sends
/// on itself (SNATed flows and their replies): a `bpf_fib_lookup` costs about 170 ns on the
/// benchmark VM, more than the rest of an established flow, so each CPU keeps the answer
/// for a destination (asked from an interface) for [`NEXTHOP_TTL_NS`]. Slots are chosen by
/// a hash of the destination; a slot holding another destination, or an older answer, is
/// asked again. Only complete answers (neighbour resolved) are kept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// The datapath's clock when the FIB answered.
    pub asked_ns: u64,
    /// The destination and the interface the question was asked from.
    pub dst: Ipv4,
    pub ifindex: u32,
    /// The answer: the way out, and the frame's new MACs.
    pub out_ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

const _: () = assert!(size_of::<NextHop>() == 32);

/// Slots of `gw_nexthops` per CPU (a power of two).
pub const NEXTHOP_SLOTS: u32 = 1024;
/// How long a FIB answer is used: a changed route or neighbour is followed within it.
pub const NEXTHOP_TTL_NS: u64 = timeouts::NS_PER_SEC;

/// The `gw_nexthops` slot of destination `dst` asked from interface `ifindex`.
#[inline(always)]
pub fn nexthop_slot(dst: Ipv4, ifindex: u32) -> u32 {
    (u32::from_be_bytes(dst) ^ ifindex.rotate_left(16)).wrapping_mul(0x9e37_79b1)
        >> (32 - NEXTHOP_SLOTS.trailing_zeros())
}

/// `gw_affinity` key: ClientIP affinity is per frontend, as in kube-proxy and Cilium.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub client_addr: Ipv4,
    pub service_id: u32,
}

const _: () = assert!(size_of::<AffinityKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The datapath's clock (see [`Clock`]) at the last new flow that used this entry.
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<Affinity>() == 16);

/// `gw_hairpin` value: this node announces the VIP, so its own processes and pods reach it
/// through the socket hooks (hairpin) rather than across the segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HairpinVip {
    /// The client address a process or pod on this node counts as, for ClientIP affinity and
    /// `loadBalancerSourceRanges`: this node's address on the interface that announces the
    /// VIP (the lowest-numbered one, when several do), as a client across the segment would
    /// see the node. `0.0.0.0` when that interface has no IPv4 address.
    pub client_addr: Ipv4,
}

const _: () = assert!(size_of::<HairpinVip>() == 4);

/// `gw_sock_revnat` key: a socket the hairpin hooks sent to a backend instead of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockRevNatKey {
    /// The socket's cookie (`bpf_get_socket_cookie`): unique for the kernel's uptime.
    pub cookie: u64,
    pub backend_addr: Ipv4,
    pub backend_port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(size_of::<SockRevNatKey>() == 16);

/// `gw_l2` key: this node answers ARP for `vip` on interface `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L2Key {
    pub ifindex: u32,
    pub vip: Ipv4,
}

const _: () = assert!(size_of::<L2Key>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Entry {
    /// ARP replies sent (atomically incremented by the datapath).
    pub arp_replies: u64,
    /// The interface's MAC, the sender hardware address of every reply.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<L2Entry>() == 16);

/// `gw_config`: one-element array written by the agent at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    pub ct_tcp_ns: u64,
    pub ct_any_ns: u64,
    pub ct_syn_ns: u64,
    pub ct_close_ns: u64,
    pub clock: Clock,
    /// The source ports SNATed flows may take, inclusive (`--snat-ports`).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub _pad: u32,
}

const _: () = assert!(size_of::<DatapathConfig>() == 56);

impl DatapathConfig {
    /// Timeouts in seconds, the default SNAT ports.
    pub const fn from_secs(ct_tcp: u64, ct_any: u64, clock: Clock) -> Self {
        Self {
            ct_tcp_ns: ct_tcp * timeouts::NS_PER_SEC,
            ct_any_ns: ct_any * timeouts::NS_PER_SEC,
            ct_syn_ns: timeouts::CT_SYN * timeouts::NS_PER_SEC,
            ct_close_ns: timeouts::CT_CLOSE * timeouts::NS_PER_SEC,
            clock,
            snat_port_min: snat::PORT_MIN,
            snat_port_max: snat::PORT_MAX,
            _pad: 0,
        }
    }

    pub const fn with_snat_ports(mut self, min: u16, max: u16) -> Self {
        self.snat_port_min = min;
        self.snat_port_max = max;
        self
    }
}

/// `gw_snat_ports` entries (see [`snat::SLOTS`]).
pub const SNAT_SLOTS: u32 = snat::SLOTS;

/// Source NAT of flows to backends on other nodes (externalTrafficPolicy Cluster).
pub mod snat {
    /// The default `--snat-ports`: every unprivileged port. A flow keeps the client's own
    /// source port when it is free in its row (as netfilter's masquerading does), so
    /// the backend sees a client's reused ports as that client reuses them (its TIME_WAIT
    /// sockets then take the new SYNs as they would without the load balancer); other ports
    /// are tried at random. Narrow the range to one outside the node's
    /// `net.ipv4.ip_local_port_range` if the node itself opens connections to backend pods.
    pub const PORT_MIN: u16 = 1024;
    pub const PORT_MAX: u16 = 65535;
    /// Ports tried for a new flow before it is dropped as `drop_snat_exhausted`: a port is
    /// taken while a live flow holds it in its slot.
    pub const TRIES: u32 = 16;

    use crate::{Ipv4, proto};

    /// Rows of `gw_snat_ports` per protocol: flows go to a row by a hash of (SNAT address,
    /// backend), so flows to backends in different rows may share a port number, and a port
    /// is unique within its row (a stricter rule than the tuple's: never two live flows on
    /// one tuple). One backend's flows have all the ports of their row: 64,512 at once
    /// with the default `--snat-ports`, as before; the node's SNATed flows together up to
    /// `ROWS` times that, spread over backends.
    pub const ROWS: u32 = 4;
    /// Every slot: `ROWS` rows of 65,536 ports for TCP and for UDP (16 bytes each: 8 MiB).
    pub const SLOTS: u32 = ROWS * 2 * 65536;

    /// The `gw_snat_ports` slot of port `port` on `snat_addr` for flows of `protocol` (TCP or
    /// UDP) to `backend`. A reply computes the same from its own tuple.
    #[inline(always)]
    pub const fn slot(snat_addr: Ipv4, backend: (Ipv4, u16), protocol: u8, port: u16) -> u32 {
        let mixed = (u32::from_ne_bytes(snat_addr) ^ u32::from_ne_bytes(backend.0))
            .wrapping_add(backend.1 as u32)
            .wrapping_mul(0x9e37_79b1);
        let row = mixed >> (32 - ROWS.trailing_zeros());
        let udp = (protocol == proto::UDP) as u32;
        ((row * 2 + udp) << 16) | port as u32
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_slot_is_the_port_within_a_row_of_its_protocol() {
            let node = [192, 168, 10, 111];
            let mut rows = [[0u32; 2]; ROWS as usize];
            for i in 0..4096u32 {
                let backend = ([10, 244, (i >> 8) as u8, i as u8], 8080 + (i % 3) as u16);
                for (p, protocol) in [proto::TCP, proto::UDP].into_iter().enumerate() {
                    let port = (i * 7919 % 65536) as u16;
                    let s = slot(node, backend, protocol, port);
                    assert!(s < SLOTS);
                    assert_eq!(s & 0xffff, port as u32, "the port is the slot's low half");
                    assert_eq!((s >> 16) % 2, p as u32, "TCP and UDP never share a slot");
                    // The reply computes the same slot from its own tuple.
                    assert_eq!(s, slot(node, backend, protocol, port));
                    rows[(s >> 17) as usize][p] += 1;
                }
            }
            // Backends spread over every row (each gets at least half its share).
            for row in rows {
                assert!(row.iter().all(|&n| n > 4096 / ROWS / 2), "{rows:?}");
            }
        }
    }
}

/// The datapath's clock, which stamps conntrack and affinity entries: the kernel's jiffies
/// scaled to nanoseconds and offset so it reads as CLOCK_MONOTONIC_COARSE (to within a tick,
/// the resolution of both). The verifier inlines `bpf_jiffies64` into one load, where every
/// ktime helper is a call (about 16 ns per packet on the benchmark VM); timeouts are seconds,
/// so a tick's resolution will do. The agent measures `offset_ns` at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Nanoseconds per jiffy (the resolution of CLOCK_MONOTONIC_COARSE).
    pub tick_ns: u64,
    /// CLOCK_MONOTONIC_COARSE minus jiffies x `tick_ns`, modulo 2^64.
    pub offset_ns: u64,
}

const _: () = assert!(size_of::<Clock>() == 16);

impl Clock {
    #[inline(always)]
    pub const fn at(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns)
            .wrapping_add(self.offset_ns)
    }
}

/// `gw_svc_names`: service id -> `namespace/name:port-name`, NUL-padded. Never read by the
/// datapath; it lets `lb list` and `bpftool` name a frontend from the pinned maps alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub name: [u8; 96],
}

const _: () = assert!(size_of::<ServiceName>() == 96);

impl Default for ServiceName {
    fn default() -> Self {
        Self { name: [0; 96] }
    }
}

/// `gw_garp`: (ifindex, VIP) -> gratuitous ARP frames the agent sent for that announcement.
/// Kept apart from `gw_l2`, whose reply counter the datapath increments concurrently.
pub type GarpCount = u64;

/// `gw_agent`: one-element array the agent keeps its own state in, so `status` and `doctor`
/// in another process (or after the agent stopped) can tell what it runs with and how its
/// last reload went. Never read by the datapath. Times are UNIX seconds; texts NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentState {
    pub pid: u32,
    /// Reloads applied since the agent started.
    pub reloads: u32,
    /// 1 while the file on disk is refused: the last reload failed, the state applied
    /// before it is what is served.
    pub refused: u32,
    /// `AGENT_F_*` bits: how the datapath it loaded runs.
    pub flags: u32,
    pub started_unix: u64,
    pub last_applied_unix: u64,
    /// 0 when the last reload succeeded.
    pub last_error_unix: u64,
    /// Warning and error findings about the objects served: what of them is not served.
    pub findings: u32,
    pub _pad: u32,
    pub node_name: [u8; 64],
    pub config: [u8; 256],
    pub last_error: [u8; 1024],
    /// The findings about the objects served, one per line, the most severe first:
    /// `severity Reason file: object: field: message`, each cut at `FINDING_LINE` bytes; as
    /// many as fit.
    pub findings_text: [u8; 16384],
    /// With [`AGENT_F_HAIRPIN`], the cgroup the hairpin programs are attached to; without,
    /// why hairpin is off.
    pub hairpin: [u8; 256],
}

/// The longest line of `AgentState::findings_text`.
pub const FINDING_LINE: usize = 200;

const _: () = assert!(size_of::<AgentState>() == 48 + 64 + 256 + 1024 + 16384 + 256);

/// The datapath updates TCP/UDP checksums in place (it reads `ip_summed`, see [`kern_ctx`]);
/// without it, through the kernel's helpers.
pub const AGENT_F_CHECKSUMS_IN_PLACE: u32 = 1 << 0;
/// The hairpin programs are attached (see `AgentState::hairpin`).
pub const AGENT_F_HAIRPIN: u32 = 1 << 1;

impl Default for AgentState {
    fn default() -> Self {
        Self {
            pid: 0,
            reloads: 0,
            refused: 0,
            flags: 0,
            started_unix: 0,
            last_applied_unix: 0,
            last_error_unix: 0,
            findings: 0,
            _pad: 0,
            node_name: [0; 64],
            config: [0; 256],
            last_error: [0; 1024],
            findings_text: [0; 16384],
            hairpin: [0; 256],
        }
    }
}

/// `gw_svc_stats` / `gw_be_stats`: per-CPU arrays indexed by service / backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Client -> backend (DNATed) packets and bytes.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Backend -> client (reverse NATed) packets and bytes.
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// Packets from clients outside the service's `loadBalancerSourceRanges`, dropped.
    pub denied_packets: u64,
}

const _: () = assert!(size_of::<Traffic>() == 40);

/// `gw_counters`: per-CPU array of u64 indexed by these. Every drop has a named reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    /// ARP requests for an announced VIP, answered.
    ArpReply = 0,
    /// New flows created (a backend was chosen).
    CtCreated,
    /// New flows whose backend came from a live affinity entry.
    AffinityHit,
    /// Replies rewritten back to the VIP.
    RevNat,
    /// Drop: VIP packet to a port/protocol the VIP does not serve.
    DropUnknownPort,
    /// Drop: the service has no backends on this node.
    DropNoBackend,
    /// Drop: the flow's backend was removed; the flow is not moved mid-connection.
    DropBackendGone,
    /// Drop: IPv4 fragment addressed to a VIP (ports unknown, cannot be balanced).
    DropFragment,
    /// Drop: VIP packet whose headers are truncated or inconsistent.
    DropMalformed,
    /// Drop: a rewrite helper failed.
    DropNatFailed,
    /// A new connection took over the conntrack entry of a closed one with the same tuple
    /// (so `ct_created` minus this minus the entries present is what LRU evicted).
    CtReplaced,
    /// Drop: ICMP addressed to a VIP that is neither an echo request the datapath answers
    /// nor an error it translates (echo replies, redirects, timestamps, echo requests with
    /// IP options or to a multicast MAC, ...).
    DropIcmp,
    /// ARP requests for an announced VIP left unanswered: the gate was closed (the agent
    /// holds no lease for it from the cluster, or stopped renewing it).
    ArpGated,
    /// Drop: a client outside the service's `loadBalancerSourceRanges`.
    DropSourceRange,
    /// New flows SNATed to a backend on another node.
    SnatCreated,
    /// Drop: a new flow to a backend on another node found no free SNAT port (every port
    /// tried is held by another flow to that backend).
    DropSnatExhausted,
    /// Drop: a flow to a backend on another node arrived on an interface without an IPv4
    /// address to SNAT it to.
    DropNoSnatAddr,
    /// Drop: the FIB has no usable route for a SNATed flow (or its reply): unreachable,
    /// blackholed, forwarding disabled on the interface, or a frame above the route's MTU.
    DropNoRoute,
    /// Connections (`connect()`) and datagrams (`sendto()`) from this node's processes and
    /// pods to a VIP it announces, sent to a backend by the hairpin socket hooks.
    Hairpin,
    /// ICMP echo requests to a VIP answered, from the VIP.
    IcmpEchoReply,
    /// ICMP errors (destination unreachable, time exceeded, parameter problem) about a
    /// tracked flow, translated (outer and inner headers) and passed on.
    IcmpErrorNat,
    /// Drop: an ICMP error to a VIP whose inner header is truncated, malformed or names no
    /// live tracked flow: never translated.
    DropIcmpError,
    /// ICMP errors not to a VIP whose inner header names a backend (a local one at egress,
    /// one on another node at ingress) but no live tracked flow: passed on untouched.
    IcmpErrorPassed,
    /// ClientIP affinity entries created (a client's first new flow to a service, or its
    /// first since its entry was evicted or removed).
    AffinityCreated,
    /// ClientIP affinity entries the agent removed (their backend left the service). The
    /// agent, not the datapath, counts these, so that `affinity_created` minus this minus
    /// the entries present is what LRU evicted.
    AffinityRemoved,
}

impl Counter {
    pub const COUNT: u32 = Counter::AffinityRemoved as u32 + 1;
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::ArpReply,
        Counter::CtCreated,
        Counter::AffinityHit,
        Counter::RevNat,
        Counter::DropUnknownPort,
        Counter::DropNoBackend,
        Counter::DropBackendGone,
        Counter::DropFragment,
        Counter::DropMalformed,
        Counter::DropNatFailed,
        Counter::CtReplaced,
        Counter::DropIcmp,
        Counter::ArpGated,
        Counter::DropSourceRange,
        Counter::SnatCreated,
        Counter::DropSnatExhausted,
        Counter::DropNoSnatAddr,
        Counter::DropNoRoute,
        Counter::Hairpin,
        Counter::IcmpEchoReply,
        Counter::IcmpErrorNat,
        Counter::DropIcmpError,
        Counter::IcmpErrorPassed,
        Counter::AffinityCreated,
        Counter::AffinityRemoved,
    ];

    /// Stable, human and JSON name.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::ArpReply => "arp_reply",
            Counter::CtCreated => "ct_created",
            Counter::AffinityHit => "affinity_hit",
            Counter::RevNat => "rev_nat",
            Counter::DropUnknownPort => "drop_unknown_port",
            Counter::DropNoBackend => "drop_no_backend",
            Counter::DropBackendGone => "drop_backend_gone",
            Counter::DropFragment => "drop_fragment",
            Counter::DropMalformed => "drop_malformed",
            Counter::DropNatFailed => "drop_nat_failed",
            Counter::CtReplaced => "ct_replaced",
            Counter::DropIcmp => "drop_icmp",
            Counter::ArpGated => "arp_gated",
            Counter::DropSourceRange => "drop_source_range",
            Counter::SnatCreated => "snat_created",
            Counter::DropSnatExhausted => "drop_snat_exhausted",
            Counter::DropNoSnatAddr => "drop_no_snat_addr",
            Counter::DropNoRoute => "drop_no_route",
            Counter::Hairpin => "hairpin",
            Counter::IcmpEchoReply => "icmp_echo_reply",
            Counter::IcmpErrorNat => "icmp_error_nat",
            Counter::DropIcmpError => "drop_icmp_error",
            Counter::IcmpErrorPassed => "icmp_error_passed",
            Counter::AffinityCreated => "affinity_created",
            Counter::AffinityRemoved => "affinity_removed",
        }
    }
}
