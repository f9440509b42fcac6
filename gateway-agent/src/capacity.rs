//! How many entries the maps hold. The sizes compiled into the eBPF object are the defaults;
//! the agent sets the real ones at load time from its `--*-max` flags.

use gateway_common::{Counter, VIP_FILTER_WORDS, capacity, map_names};

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

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            conntrack: capacity::CONNTRACK,
            affinity: capacity::AFFINITY,
        }
    }
}

impl Capacity {
    /// Backend slots over all services: a backend serves at most `REVNAT_FRONTENDS`
    /// frontends, so this bound is never the one that is hit first.
    pub fn slots(&self) -> u32 {
        self.backends
            .saturating_mul(capacity::REVNAT_FRONTENDS as u32)
    }

    /// `max_entries` of every map.
    pub fn map_sizes(&self) -> [(&'static str, u32); 16] {
        [
            (map_names::GARP, self.services),
            (map_names::AGENT, 1),
            (map_names::VIP_FILTER, VIP_FILTER_WORDS),
            (map_names::VIPS, self.services),
            (map_names::SERVICES, self.services),
            (map_names::SERVICE_NAMES, self.services),
            (map_names::SERVICE_STATS, self.services),
            (map_names::L2, self.services),
            (map_names::SLOTS, self.slots()),
            (map_names::BACKENDS, self.backends),
            (map_names::BACKEND_STATS, self.backends),
            (map_names::REVNAT, self.backends),
            (map_names::CONNTRACK, self.conntrack),
            (map_names::AFFINITY, self.affinity),
            (map_names::CONFIG, 1),
            (map_names::COUNTERS, Counter::COUNT),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_gets_a_size() {
        let sizes = Capacity::default().map_sizes();
        let mut names: Vec<&str> = sizes.iter().map(|(n, _)| *n).collect();
        names.sort();
        let mut all = map_names::ALL.to_vec();
        all.sort();
        assert_eq!(names, all);
        assert!(sizes.iter().all(|(_, n)| *n > 0));
    }
}
