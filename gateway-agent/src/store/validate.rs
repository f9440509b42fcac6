//! Checks across the objects the store holds. Checks that need selectors or allocation
//! (VIP conflicts, exhausted pools, competing L2 policies) are the model's; duplicates
//! cannot happen in a store (one object per `ObjectRef`), a file's are its source's.

use std::sync::Arc;

use crate::config::{Diagnostics, IpBlock, IpPool};

/// Blocks that share an address, within one pool or across pools (disabled ones too): an
/// address must belong to exactly one pool for allocation to be unambiguous. `pools` are
/// sorted by name; the error is reported on the later pool and names the earlier one.
pub(crate) fn overlapping_pools(pools: &[Arc<IpPool>], diagnostics: &mut Diagnostics) {
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

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;

    fn pool(name: &str, blocks: &str) -> String {
        pool_doc(name, &format!("  blocks:\n{blocks}"))
    }

    #[test]
    fn overlapping_pools_name_both() {
        let text = reference_with(&pool(
            "second-pool",
            "    - cidr: 10.0.0.0/24\n    - start: 192.168.10.60\n      stop: 192.168.10.70\n",
        ));
        assert_eq!(
            parse_errors(&text),
            [
                "objects.yaml: CiliumLoadBalancerIPPool/second-pool: spec.blocks[1]: \
                 192.168.10.60-192.168.10.70 overlaps CiliumLoadBalancerIPPool/first-pool \
                 spec.blocks[0] (192.168.10.32/27): overlapping pools"
            ]
        );
    }

    #[test]
    fn a_disabled_pool_still_overlaps() {
        let text = reference_with(
            &pool("old-pool", "    - cidr: 192.168.10.48/28\n")
                .replace("spec:\n", "spec:\n  disabled: true\n"),
        );
        assert_line(
            &parse_errors(&text),
            &[
                "CiliumLoadBalancerIPPool/old-pool: spec.blocks[0]",
                "overlaps CiliumLoadBalancerIPPool/first-pool",
            ],
        );
    }

    #[test]
    fn overlapping_blocks_of_one_pool() {
        let errors = parse_errors(&pool(
            "p",
            "    - cidr: 10.0.0.0/24\n    - start: 10.0.1.0\n      stop: 10.0.1.9\n    - start: 10.0.0.255\n",
        ));
        assert_eq!(
            errors,
            [
                "objects.yaml: CiliumLoadBalancerIPPool/p: spec.blocks[2]: 10.0.0.255/32 overlaps spec.blocks[0] (10.0.0.0/24) of the same pool"
            ]
        );
    }

    #[test]
    fn adjacent_pools_do_not_overlap() {
        let text = reference_with(&pool(
            "next-pool",
            "    - cidr: 192.168.10.64/27\n    - start: 192.168.10.0\n      stop: 192.168.10.31\n",
        ));
        assert_eq!(parse_ok(&text).pools.len(), 2);
    }
}
