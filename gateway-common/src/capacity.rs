//! How many entries the maps hold: the agent's `--*-max` flags. Each map's size follows from
//! these by its [`Size`](crate::maps::Size) in the map table; the eBPF object is compiled with
//! the sizes of [`Capacity::DEFAULT`], and the agent sets the real ones at load time.

/// `--services-max`: frontends (VIP, port, protocol); also bounds VIPs and announcements.
/// Service ids index per-CPU arrays, so they are bounded by it. Id 0 is never used.
pub const SERVICES: u32 = 16384;
/// `--backends-max`: distinct backends (address, port, protocol). Id 0 is never used.
pub const BACKENDS: u32 = 65536;
/// `--ct-max`: tracked flows (LRU).
pub const CONNTRACK: u32 = 262144;
/// `--affinity-max`: ClientIP affinity entries (LRU).
pub const AFFINITY: u32 = 65536;
/// Frontends a backend's `gw_revnat` entry lists: a reply is matched against each listed
/// frontend's conntrack entry. A backend serving more has its flows' replies found through
/// `gw_ct_reply` (see `RevNat`); there is no limit.
pub const REVNAT_FRONTENDS: usize = 4;
/// `loadBalancerSourceRanges` prefixes per frontend, on average, that `gw_src_ranges` holds.
pub const SOURCE_RANGES_PER_SERVICE: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Frontends (VIP, port, protocol); also bounds VIPs and announcements.
    pub services: u32,
    /// Distinct backends (address, port, protocol).
    pub backends: u32,
    /// Tracked flows (LRU: the least recently used flow is evicted when full).
    pub conntrack: u32,
    /// ClientIP affinity entries (LRU).
    pub affinity: u32,
}

impl Capacity {
    /// The flags' defaults.
    pub const DEFAULT: Self = Self {
        services: SERVICES,
        backends: BACKENDS,
        conntrack: CONNTRACK,
        affinity: AFFINITY,
    };

    /// Backend slots over all services: on average `REVNAT_FRONTENDS` frontends per backend
    /// (a gateway's envoy serves a few ports on one or two VIPs).
    pub const fn slots(&self) -> u32 {
        self.backends.saturating_mul(REVNAT_FRONTENDS as u32)
    }

    /// Source range prefixes over all frontends.
    pub const fn source_ranges(&self) -> u32 {
        self.services.saturating_mul(SOURCE_RANGES_PER_SERVICE)
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::DEFAULT
    }
}
