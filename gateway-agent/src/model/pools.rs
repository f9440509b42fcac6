//! What each pool may do this run: allocate, only keep what Services hold, or nothing new
//! because it conflicts with another pool.
//!
//! Overlapping pools are settled as Cilium's LB-IPAM settles them: of two pools whose blocks
//! share an address, the newer one (by `creationTimestamp`; a pool without one counts as
//! newest; equal times by name) is marked conflicting, and a pool whose own blocks overlap
//! is conflicting by itself. A pool already conflicting does not make later ones conflict.
//! A conflicting pool, like a disabled or broken one, allocates nothing new but keeps the
//! VIPs Services hold in their status, so a new overlapping pool never moves a VIP.

use std::cmp::Ordering;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{Diagnostics, IpBlock, IpPool, Reason, Severity};

/// What a pool may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PoolState {
    /// Allocates, grants requests and keeps what Services hold.
    Usable,
    /// `spec.disabled`: keeps what Services hold.
    Disabled,
    /// Its serviceSelector cannot be read: keeps what Services hold, whatever the selector.
    Broken,
    /// Overlaps an older pool (or itself): keeps what Services hold. The message says with
    /// what.
    Conflicting(String),
}

impl PoolState {
    pub(crate) fn usable(&self) -> bool {
        *self == PoolState::Usable
    }
}

/// The pools with their states, in the config's order (by name).
pub(crate) struct Pools<'c> {
    pub pools: &'c [Arc<IpPool>],
    pub states: Vec<PoolState>,
    /// The pools (indexes) usable ones first, then older before newer: in an overlap, the
    /// pool that does not conflict is the one an address belongs to.
    preferred: Vec<usize>,
}

impl<'c> Pools<'c> {
    /// Settles conflicts between `pools`; each conflicting pool gets a finding.
    pub(crate) fn of(pools: &'c [Arc<IpPool>], diagnostics: &mut Diagnostics) -> Self {
        let mut states: Vec<PoolState> = (pools.iter())
            .map(|pool| {
                if pool.broken.is_some() {
                    PoolState::Broken
                } else if pool.disabled {
                    PoolState::Disabled
                } else {
                    PoolState::Usable
                }
            })
            .collect();
        let mut by_age: Vec<usize> = (0..pools.len()).collect();
        by_age.sort_by(|&a, &b| age_order(&pools[a], &pools[b]));
        for (at, &i) in by_age.iter().enumerate() {
            let pool = &pools[i];
            let conflict = internal_overlap(pool).or_else(|| {
                by_age[..at]
                    .iter()
                    .filter(|&&j| !matches!(states[j], PoolState::Conflicting(_)))
                    .find_map(|&j| overlap_with(pool, &pools[j]))
            });
            if let Some((field, message)) = conflict {
                diagnostics.find(
                    Severity::Warning,
                    Reason::PoolConflict,
                    Some(&pool.object()),
                    field,
                    format!(
                        "{message}: the pool allocates nothing new (it keeps what Services hold)"
                    ),
                );
                states[i] = PoolState::Conflicting(message);
            }
        }
        let mut preferred = by_age;
        preferred.sort_by_key(|&i| !states[i].usable());
        Self {
            pools,
            states,
            preferred,
        }
    }

    /// The pools (index, pool, block, state) holding `addr` in a block, usable ones first,
    /// then older before newer.
    pub(crate) fn holding(
        &self,
        addr: Ipv4Addr,
    ) -> impl Iterator<Item = (usize, &'c IpPool, &'c IpBlock, &PoolState)> {
        self.preferred.iter().filter_map(move |&i| {
            let pool: &'c IpPool = &self.pools[i];
            Some((i, pool, pool.block_of(addr)?, &self.states[i]))
        })
    }
}

/// Older first; a pool without a creation time counts as newest; then by name.
fn age_order(a: &IpPool, b: &IpPool) -> Ordering {
    (a.created.is_none(), a.created, &a.name).cmp(&(b.created.is_none(), b.created, &b.name))
}

fn overlap(a: &IpBlock, b: &IpBlock) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Two blocks of `pool` that share an address: the later block's field and the message.
fn internal_overlap(pool: &IpPool) -> Option<(String, String)> {
    pool.blocks.iter().enumerate().find_map(|(j, block)| {
        let other = pool.blocks[..j]
            .iter()
            .find(|other| overlap(block, other))?;
        Some((
            block.field.clone(),
            format!(
                "{} overlaps {} ({}) of the same pool",
                block.describe(),
                other.field,
                other.describe()
            ),
        ))
    })
}

/// A block of `pool` that shares an address with one of `older`'s.
fn overlap_with(pool: &IpPool, older: &IpPool) -> Option<(String, String)> {
    pool.blocks.iter().find_map(|block| {
        let other = older.blocks.iter().find(|other| overlap(block, other))?;
        Some((
            block.field.clone(),
            format!(
                "{} overlaps {} {} ({}), an older pool",
                block.describe(),
                older.object(),
                other.field,
                other.describe()
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::model::cluster_state;

    fn pool(name: &str, created: Option<&str>, blocks: &str) -> String {
        let doc = pool_doc(name, &format!("  blocks:\n{blocks}"));
        match created {
            Some(at) => doc.replace(
                &format!("  name: {name}\n"),
                &format!("  name: {name}\n  creationTimestamp: \"{at}\"\n"),
            ),
            None => doc,
        }
    }

    /// (pool, conflicting?) of the cluster-wide state, and every pool finding.
    fn conflicts(docs: &[String]) -> (Vec<(String, bool)>, Vec<String>) {
        let state = cluster_state(&parse_ok(&docs.join("---\n")));
        let pools = (state.pools.iter())
            .map(|p| (p.pool.to_string(), p.conflict.is_some()))
            .collect();
        let findings = (state.findings.iter())
            .filter(|f| f.reason == crate::config::Reason::PoolConflict)
            .map(ToString::to_string)
            .collect();
        (pools, findings)
    }

    #[test]
    fn the_newer_of_two_overlapping_pools_conflicts_and_names_the_older() {
        let (pools, findings) = conflicts(&[
            pool(
                "a-new",
                Some("2025-02-01T00:00:00Z"),
                "    - cidr: 10.0.0.0/24\n",
            ),
            pool(
                "b-old",
                Some("2025-01-01T00:00:00Z"),
                "    - start: 10.0.0.200\n      stop: 10.0.1.9\n",
            ),
            pool("c-apart", None, "    - cidr: 10.0.2.0/24\n"),
        ]);
        assert_eq!(
            pools,
            [
                ("a-new".into(), true),
                ("b-old".into(), false),
                ("c-apart".into(), false)
            ]
        );
        assert_eq!(
            findings,
            [
                "objects.yaml: CiliumLoadBalancerIPPool/a-new: spec.blocks[0]: 10.0.0.0/24 overlaps \
                 CiliumLoadBalancerIPPool/b-old spec.blocks[0] (10.0.0.200-10.0.1.9), an older \
                 pool: the pool allocates nothing new (it keeps what Services hold)"
            ]
        );
    }

    #[test]
    fn equal_times_go_by_name_and_no_time_counts_as_newest() {
        let blocks = "    - cidr: 10.0.0.0/24\n";
        let (pools, _) = conflicts(&[pool("b", None, blocks), pool("a", None, blocks)]);
        assert_eq!(pools, [("a".into(), false), ("b".into(), true)]);
        let (pools, _) = conflicts(&[
            pool("a", None, blocks),
            pool("b", Some("2030-01-01T00:00:00Z"), blocks),
        ]);
        assert_eq!(pools, [("a".into(), true), ("b".into(), false)]);
    }

    #[test]
    fn a_conflicting_pool_does_not_make_a_third_conflict() {
        // b overlaps a and c; a and c do not overlap: only b conflicts.
        let (pools, _) = conflicts(&[
            pool(
                "a",
                Some("2025-01-01T00:00:00Z"),
                "    - cidr: 10.0.0.0/25\n",
            ),
            pool(
                "b",
                Some("2025-01-02T00:00:00Z"),
                "    - cidr: 10.0.0.0/24\n",
            ),
            pool(
                "c",
                Some("2025-01-03T00:00:00Z"),
                "    - cidr: 10.0.0.128/25\n",
            ),
        ]);
        assert_eq!(
            pools,
            [("a".into(), false), ("b".into(), true), ("c".into(), false)]
        );
    }

    #[test]
    fn disabled_pools_overlap_too_and_a_pool_can_conflict_with_itself() {
        let disabled = pool(
            "old",
            Some("2024-01-01T00:00:00Z"),
            "    - cidr: 192.168.10.48/28\n",
        )
        .replace("spec:\n", "spec:\n  disabled: true\n");
        let (pools, _) = conflicts(&[REFERENCE.to_owned(), disabled]);
        assert_eq!(pools, [("first-pool".into(), true), ("old".into(), false)]);
        let (pools, findings) = conflicts(&[pool(
            "p",
            None,
            "    - cidr: 10.0.0.0/24\n    - start: 10.0.1.0\n      stop: 10.0.1.9\n    - start: 10.0.0.255\n",
        )]);
        assert_eq!(pools, [("p".into(), true)]);
        assert_line(
            &findings,
            &[
                "CiliumLoadBalancerIPPool/p: spec.blocks[2]: 10.0.0.255/32 overlaps spec.blocks[0] (10.0.0.0/24) of the same pool",
            ],
        );
    }

    #[test]
    fn adjacent_pools_do_not_overlap() {
        let (pools, findings) = conflicts(&[
            REFERENCE.to_owned(),
            pool(
                "next",
                None,
                "    - cidr: 192.168.10.64/27\n    - start: 192.168.10.0\n      stop: 192.168.10.31\n",
            ),
        ]);
        assert!(
            pools.iter().all(|(_, conflicting)| !conflicting),
            "{findings:?}"
        );
    }
}
