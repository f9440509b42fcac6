//! How many entries the maps hold: the `--*-max` flags ([`Capacity`], part of the
//! kernel/user contract in gateway-common) applied to each map's size in the map table.

pub use gateway_common::capacity::Capacity;
use gateway_common::maps::MAPS;

/// `max_entries` of every map at `capacity`, by map name.
pub fn map_sizes(capacity: &Capacity) -> impl Iterator<Item = (&'static str, u32)> + '_ {
    MAPS.iter().map(|m| (m.name, m.size.entries(capacity)))
}

#[cfg(test)]
mod tests {
    use gateway_common::{capacity, map_names};

    use super::*;

    #[test]
    fn every_map_gets_a_size_from_the_flags() {
        let sizes: Vec<_> = map_sizes(&Capacity::default()).collect();
        assert_eq!(sizes.len(), MAPS.len());
        assert!(sizes.iter().all(|(_, n)| *n > 0));
        let small = Capacity {
            services: 10,
            backends: 20,
            conntrack: 30,
            affinity: 40,
        };
        let size = |name| map_sizes(&small).find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(size(map_names::SERVICES), 10);
        assert_eq!(size(map_names::L2), 10);
        assert_eq!(size(map_names::BACKENDS), 20);
        assert_eq!(
            size(map_names::SLOTS),
            20 * capacity::REVNAT_FRONTENDS as u32
        );
        assert_eq!(size(map_names::CONNTRACK), 30);
        assert_eq!(size(map_names::AFFINITY), 40);
        assert_eq!(size(map_names::CONFIG), 1);
    }
}
