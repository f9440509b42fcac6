//! Who announces each VIP, computed identically by every agent from the same inputs: the
//! nodes eligible for the VIP (from the objects), the nodes alive in the membership view,
//! the draining ones, and every node's last known claims.
//!
//! - A live claimant keeps its VIP: a node that comes back takes nothing back, because
//!   moving a VIP breaks its flows once more. Of two live claimants (a partition healed, or
//!   two took over at once from different views) the one answering for it wins (a claim
//!   made on the wrong side of a partition never was), then the higher epoch, then the
//!   higher [`announcer_score`], then the name that sorts first; the loser stops at once.
//! - A VIP without a live claimant goes to the best-scoring alive, eligible, non-draining
//!   node (rendezvous hashing, as the model's election), at the highest epoch known + 1.
//! - A node claims nothing it is not eligible for, and nothing while it drains.
//! - A node makes no new claim unless a quorum of the members is alive in its view: cut off
//!   with a minority it could not answer anyway, and a claim made there (at a higher epoch)
//!   would take the VIP back from the majority's holder when the partition heals.
//! - Where the cluster does not take over on silence (two nodes, see `lease::Takeover`), a
//!   claimant keeps its VIPs until it withdraws them, dead or alive.
//!
//! Claiming is not answering: a claim is answered only under a quorum's grants (see
//! `lease`), which is what keeps two nodes from answering whatever the views.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::claims::{Claim, Claims};
use crate::score::announcer_score;

pub struct View<'a> {
    pub me: &'a str,
    /// Alive in the membership view (or holding for a restart), `me` included.
    pub alive: &'a BTreeSet<String>,
    pub draining: &'a BTreeSet<String>,
    /// Every node's last known claims, alive or not, `me`'s current ones included.
    pub claims: &'a BTreeMap<String, Claims>,
    /// For each VIP to announce, the nodes eligible for it.
    pub eligible: &'a BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// We hear from a quorum of the members (us included): new claims may be made.
    pub quorate: bool,
    /// Whether a claimant's VIPs are taken over when it dies (else only on withdrawal).
    pub takeover_on_silence: bool,
}

/// What `view.me` should claim: VIP -> epoch.
pub fn claims_for(view: &View) -> BTreeMap<Ipv4Addr, u32> {
    let mut by_vip: BTreeMap<Ipv4Addr, Vec<(&str, Claim)>> = BTreeMap::new();
    for (node, claims) in view.claims {
        for (vip, claim) in claims {
            by_vip.entry(*vip).or_default().push((node, *claim));
        }
    }
    let draining = view.draining.contains(view.me);
    let mut mine = BTreeMap::new();
    for (vip, eligible) in view.eligible {
        if draining || !eligible.contains(view.me) {
            continue;
        }
        let claimants = by_vip.get(vip).map(Vec::as_slice).unwrap_or_default();
        let live = claimants
            .iter()
            .filter(|(node, _)| !view.takeover_on_silence || view.alive.contains(*node));
        let holder = live.max_by_key(|(node, claim)| {
            (
                claim.answered,
                claim.epoch,
                announcer_score(*vip, node),
                Reverse(*node),
            )
        });
        match holder {
            Some((node, claim)) if *node == view.me => {
                mine.insert(*vip, claim.epoch);
            }
            Some(_) => {}
            None if view.quorate => {
                let best = eligible
                    .iter()
                    .filter(|node| view.alive.contains(*node) && !view.draining.contains(*node))
                    .max_by_key(|node| (announcer_score(*vip, node), Reverse(*node)));
                if best.is_some_and(|node| node == view.me) {
                    let epoch = claimants
                        .iter()
                        .map(|(_, c)| c.epoch)
                        .max()
                        .map_or(0, |e| e + 1);
                    mine.insert(*vip, epoch);
                }
            }
            None => {}
        }
    }
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP_49: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
    const VIP_50: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 50);
    const NODES: [&str; 3] = ["cp-1", "worker-1", "worker-2"];

    struct Case {
        alive: BTreeSet<String>,
        draining: BTreeSet<String>,
        claims: BTreeMap<String, Claims>,
        eligible: BTreeMap<Ipv4Addr, BTreeSet<String>>,
        takeover_on_silence: bool,
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    impl Case {
        fn new() -> Self {
            Case {
                alive: set(&NODES),
                draining: BTreeSet::new(),
                claims: BTreeMap::new(),
                eligible: [VIP_49, VIP_50].map(|vip| (vip, set(&NODES))).into(),
                takeover_on_silence: true,
            }
        }

        fn claim(mut self, node: &str, vip: Ipv4Addr, epoch: u32) -> Self {
            let claim = Claim {
                epoch,
                answered: false,
            };
            self.claims
                .entry(node.into())
                .or_default()
                .insert(vip, claim);
            self
        }

        fn answering(mut self, node: &str, vip: Ipv4Addr) -> Self {
            let claim = self.claims.get_mut(node).and_then(|c| c.get_mut(&vip));
            claim.expect("claimed").answered = true;
            self
        }

        /// VIP -> (node, epoch) for every node's decision; each VIP claimed by one node.
        fn decide(&self) -> BTreeMap<Ipv4Addr, (String, u32)> {
            let mut decided = BTreeMap::new();
            for me in &self.alive {
                let view = View {
                    me,
                    alive: &self.alive,
                    draining: &self.draining,
                    claims: &self.claims,
                    eligible: &self.eligible,
                    quorate: self.alive.len() >= 2,
                    takeover_on_silence: self.takeover_on_silence,
                };
                for (vip, epoch) in claims_for(&view) {
                    let previous = decided.insert(vip, (me.clone(), epoch));
                    assert!(previous.is_none(), "{vip} claimed twice");
                }
            }
            decided
        }
    }

    fn best(vip: Ipv4Addr, among: &[&str]) -> String {
        among
            .iter()
            .max_by_key(|n| (announcer_score(vip, n), Reverse(**n)))
            .map(|n| n.to_string())
            .expect("a node")
    }

    #[test]
    fn unclaimed_vips_go_to_the_best_scoring_node_at_epoch_zero() {
        let decided = Case::new().decide();
        for vip in [VIP_49, VIP_50] {
            assert_eq!(decided[&vip], (best(vip, &NODES), 0));
        }
    }

    #[test]
    fn a_live_claimant_keeps_its_vip_even_against_a_better_score() {
        let weakest = NODES
            .iter()
            .min_by_key(|n| announcer_score(VIP_49, n))
            .expect("a node");
        let decided = Case::new().claim(weakest, VIP_49, 3).decide();
        assert_eq!(decided[&VIP_49], (weakest.to_string(), 3));
    }

    #[test]
    fn a_dead_claimants_vip_goes_to_the_best_live_node_at_the_next_epoch() {
        let holder = best(VIP_49, &NODES);
        let mut case = Case::new().claim(&holder, VIP_49, 4);
        case.alive.remove(&holder);
        let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != holder).collect();
        assert_eq!(case.decide()[&VIP_49], (best(VIP_49, &rest), 5));
        // Back alive with its old claim, and the new holder's: the later epoch stays.
        let new_holder = best(VIP_49, &rest);
        let mut back = case.claim(&new_holder, VIP_49, 5);
        back.alive.insert(holder.clone());
        assert_eq!(back.decide()[&VIP_49], (new_holder, 5));
    }

    #[test]
    fn two_live_claimants_at_one_epoch_keep_the_better_score() {
        let decided = Case::new()
            .claim("worker-1", VIP_50, 2)
            .claim("worker-2", VIP_50, 2)
            .decide();
        assert_eq!(
            decided[&VIP_50],
            (best(VIP_50, &["worker-1", "worker-2"]), 2)
        );
    }

    #[test]
    fn of_two_live_claimants_the_one_answering_keeps_the_vip() {
        // Claimed at a higher epoch by a node cut off with a minority, which never answered.
        let decided = Case::new()
            .claim("worker-1", VIP_50, 0)
            .answering("worker-1", VIP_50)
            .claim("worker-2", VIP_50, 1)
            .decide();
        assert_eq!(decided[&VIP_50], ("worker-1".to_owned(), 0));
    }

    #[test]
    fn draining_and_ineligible_nodes_claim_nothing_and_release_their_claims() {
        let holder = best(VIP_49, &NODES);
        let mut case = Case::new().claim(&holder, VIP_49, 0);
        case.draining.insert(holder.clone());
        // The drainer lets go; the others still see its claim until it is withdrawn.
        let view = View {
            me: &holder,
            alive: &case.alive,
            draining: &case.draining,
            claims: &case.claims,
            eligible: &case.eligible,
            quorate: true,
            takeover_on_silence: true,
        };
        assert!(claims_for(&view).is_empty());
        case.claims.remove(&holder);
        let rest: Vec<&str> = NODES.iter().copied().filter(|n| *n != holder).collect();
        assert_eq!(case.decide()[&VIP_49].0, best(VIP_49, &rest));
        // Not eligible: the same.
        let mut case = Case::new().claim(&holder, VIP_49, 0);
        case.eligible.get_mut(&VIP_49).expect("vip").remove(&holder);
        assert!(!case.decide().contains_key(&VIP_49));
    }

    #[test]
    fn a_minority_makes_no_new_claim_but_keeps_its_own() {
        let holder = best(VIP_49, &NODES);
        let mut case = Case::new().claim(&holder, VIP_49, 1);
        case.alive = set(&[&holder]);
        // Alone of three: keeps .49, does not take .50.
        assert_eq!(
            case.decide(),
            BTreeMap::from([(VIP_49, (holder.clone(), 1))])
        );
    }

    #[test]
    fn without_takeover_on_silence_a_dead_claimant_keeps_its_vip() {
        let holder = best(VIP_49, &NODES);
        let mut case = Case::new().claim(&holder, VIP_49, 1);
        case.takeover_on_silence = false;
        case.alive.remove(&holder);
        assert!(!case.decide().contains_key(&VIP_49));
        // Its withdrawal frees it.
        case.claims.remove(&holder);
        assert!(case.decide().contains_key(&VIP_49));
    }

    #[test]
    fn no_eligible_live_node_means_no_claim() {
        let mut case = Case::new();
        case.eligible.insert(VIP_49, set(&["gone"]));
        assert!(!case.decide().contains_key(&VIP_49));
    }
}
