//! The cluster's part of the contract (failover between nodes, see `gateway-cluster`): the
//! gate the datapath reads before every ARP answer, and the agent's view of the cluster that
//! the CLI reads from the pins (`members`, `status`, `doctor`, `drain`).

use core::mem::size_of;

use crate::Ipv4;

/// `gw_gate`: the datapath answers ARP only while its clock (see [`crate::Clock`]) reads
/// less than `until_ns`. The agent moves it forward as the other nodes' grants come in; an
/// agent that dies stops doing so, and its node falls silent before anyone may take its
/// VIPs over. [`Gate::OPEN`] without a cluster; a fresh map (zero) answers nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    pub until_ns: u64,
}

const _: () = assert!(size_of::<Gate>() == 8);

impl Gate {
    /// Never closes: a single node answers for its VIPs whatever happens to its agent.
    pub const OPEN: Gate = Gate { until_ns: u64::MAX };

    #[inline(always)]
    pub const fn is_open(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns
    }
}

/// Members `gw_members` holds (us included); a larger cluster shows its first ones.
pub const MEMBERS_MAX: u32 = 1024;

/// `gw_cluster`: this agent's view of the cluster, rewritten on every change and every
/// second. Never read by the datapath. Times on the datapath's clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterRecord {
    /// When the agent last wrote it (0: never; no cluster runs).
    pub updated_ns: u64,
    /// Members in the objects (us included), and how many `gw_members` holds.
    pub members: u32,
    /// Members alive in our view, us included.
    pub alive: u32,
    /// Members whose grants a VIP needs.
    pub quorum: u32,
    /// `CLUSTER_F_*`.
    pub flags: u32,
    /// Datagrams refused by reason: malformed, untagged, bad tag, not for us, replayed.
    pub refused: [u64; 5],
    /// Authentic datagrams from nodes not in the objects, and membership messages refused.
    pub strangers: u64,
    /// Datagrams sent and received, and those the kernel would not take.
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    /// The UDP port the agent listens on.
    pub port: u16,
    pub _pad: [u8; 6],
}

const _: () = assert!(size_of::<ClusterRecord>() == 104);

/// A cluster runs: there are peers.
pub const CLUSTER_F_ACTIVE: u32 = 1 << 0;
/// This node drains: it hands its VIPs over and claims none.
pub const CLUSTER_F_DRAINING: u32 = 1 << 1;
/// A silent member's VIPs are taken over (three or more members, or two told to).
pub const CLUSTER_F_TAKEOVER_ON_SILENCE: u32 = 1 << 2;
/// The datagrams are authenticated (`--cluster-key-file`).
pub const CLUSTER_F_KEYED: u32 = 1 << 3;

/// `gw_members`: member `i` (0 is this node), up to [`ClusterRecord::members`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub name: [u8; 64],
    pub addr: Ipv4,
    pub port: u16,
    /// `MEMBER_*`.
    pub state: u8,
    /// `MEMBER_F_*`.
    pub flags: u8,
    /// Its agent's incarnation (microseconds since the epoch at its start); 0: unknown.
    pub incarnation: u64,
    /// When we last heard from it (0: never), on the datapath's clock.
    pub heard_ns: u64,
    /// VIPs it claims (ours: answers for).
    pub vips: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<MemberRecord>() == 96);

impl Default for MemberRecord {
    fn default() -> Self {
        Self {
            name: [0; 64],
            addr: [0; 4],
            port: 0,
            state: MEMBER_UNKNOWN,
            flags: 0,
            incarnation: 0,
            heard_ns: 0,
            vips: 0,
            _pad: 0,
        }
    }
}

/// Never heard of (its agent never answered).
pub const MEMBER_UNKNOWN: u8 = 0;
pub const MEMBER_ALIVE: u8 = 1;
/// Failed a probe; declared down unless it refutes in time.
pub const MEMBER_SUSPECT: u8 = 2;
pub const MEMBER_DOWN: u8 = 3;

pub const MEMBER_F_DRAINING: u8 = 1 << 0;
/// Restarting: counted alive for the hold it asked for.
pub const MEMBER_F_HOLDING: u8 = 1 << 1;

/// `gw_claims` key: a VIP a member claims.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimKey {
    pub vip: Ipv4,
    /// Its index in `gw_members`.
    pub member: u32,
}

const _: () = assert!(size_of::<ClaimKey>() == 8);

/// `gw_claims` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimRecord {
    /// How often the VIP changed hands.
    pub epoch: u32,
    /// `CLAIM_F_*`.
    pub flags: u32,
}

const _: () = assert!(size_of::<ClaimRecord>() == 8);

/// The member answers for it (holds a quorum's grants).
pub const CLAIM_F_ANSWERED: u32 = 1 << 0;

/// `gw_drain` value: what the operator asked (`drain`, `undrain`); the agent reads it at
/// start and every heartbeat, so a drain outlives agent restarts until `undrain`.
pub const DRAIN_REQUESTED: u32 = 1;
