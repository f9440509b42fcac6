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
/// Backends sharing one (address, port, protocol) across services that reverse NAT can tell
/// apart: a reply is matched against each candidate frontend's conntrack entry.
pub const REVNAT_FRONTENDS: usize = 4;

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

    /// Backend slots over all services: a backend serves at most `REVNAT_FRONTENDS`
    /// frontends, so this bound is never the one that is hit first.
    pub const fn slots(&self) -> u32 {
        self.backends.saturating_mul(REVNAT_FRONTENDS as u32)
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self::DEFAULT
    }
}
