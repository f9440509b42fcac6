//! Checks across objects of one file: duplicates and overlapping pools. Checks that need
//! selectors or allocation (VIP conflicts, exhausted pools, competing L2 policies) are the
//! model's.

use std::collections::BTreeMap;

use super::ObjectRef;
use super::error::Diagnostics;
use super::pool::{IpBlock, IpPool};

/// The same kind/namespace/name twice: the API server would have kept only one of them,
/// and which one is a guess we refuse to make.
pub(super) fn duplicates(seen: &[(ObjectRef, String)], diagnostics: &mut Diagnostics) {
    let mut first_seen: BTreeMap<&ObjectRef, &str> = BTreeMap::new();
    for (object, origin) in seen {
        match first_seen.get(object) {
            Some(first) => diagnostics.error(
                Some(object),
                "",
                format!("duplicate object: defined in {first} and again in {origin}"),
            ),
            None => {
                first_seen.insert(object, origin);
            }
        }
    }
}

/// Blocks that share an address, within one pool or across pools (disabled ones too): an
/// address must belong to exactly one pool for allocation to be unambiguous. `pools` are
/// sorted by name; the error is reported on the later pool and names the earlier one.
pub(super) fn overlapping_pools(pools: &[IpPool], diagnostics: &mut Diagnostics) {
    let overlap = |a: &IpBlock, b: &IpBlock| a.first <= b.last && b.first <= a.last;
    for (i, pool) in pools.iter().enumerate() {
        for (j, block) in pool.blocks.iter().enumerate() {
            for other in &pool.blocks[..j] {
                if overlap(block, other) {
                    diagnostics.error(
                        Some(&pool.object()),
                        block.field.clone(),
                        format!(
                            "{} overlaps {} ({}) of the same pool",
                            block.describe(),
                            other.field,
                            other.describe()
                        ),
                    );
                }
            }
            for earlier in &pools[..i] {
                for other in earlier.blocks.iter().filter(|other| overlap(block, other)) {
                    diagnostics.error(
                        Some(&pool.object()),
                        block.field.clone(),
                        format!(
                            "{} overlaps {} {} ({}): overlapping pools",
                            block.describe(),
                            earlier.object(),
                            other.field,
                            other.describe()
                        ),
                    );
                }
            }
        }
    }
}
