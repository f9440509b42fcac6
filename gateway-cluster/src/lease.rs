//! The fence: a node answers ARP for a VIP only while a quorum of the members (itself
//! included) grants it that VIP, each grant being a lease that lapses unless renewed.
//!
//! Each agent keeps a holder table: for each VIP, the one node it grants it to. It moves a
//! VIP to another claimant only when the holder withdrew its claim (having stopped
//! answering first), or when every lease it could have given the holder has lapsed: a
//! grant echoes the holder's latest sequence number, and a lease runs from when the holder
//! sent that datagram, so it ends at the latest [`lease_bound`] after we last heard from the
//! holder (or after the hold we granted it). Two nodes answering at once would each need a
//! quorum; two quorums share a member, and that member never grants one VIP to two nodes
//! with overlapping leases. No clock is compared across nodes, only durations, and a
//! datagram's delay only shortens the lease it renews.
//!
//! The holder enforces its side in the datapath: the gate closes at the earliest lease
//! among the VIPs it answers, so a holder whose agent dies stops answering on time.
//!
//! [`lease_bound`]: super::timing::lease_bound

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The members needed to answer: a majority of `members` (us included). Two members cannot
/// have a majority without each other, so a two-node cluster needs only itself, which is
/// safe only because it never takes over on silence unless told to (see [`Takeover`]).
pub fn quorum(members: usize) -> usize {
    if members <= 2 { 1 } else { members / 2 + 1 }
}

/// When a VIP may be granted away from a silent holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Once its leases have lapsed: three or more members, where the quorum fences it.
    OnSilence,
    /// Only when it withdraws: a two-node cluster, where a dead peer and a cut link look
    /// the same and the quorum cannot tell them apart.
    OnWithdrawal,
}

impl Takeover {
    pub fn for_members(members: usize, two_node_takeover: bool) -> Self {
        if members >= 3 || two_node_takeover {
            Takeover::OnSilence
        } else {
            Takeover::OnWithdrawal
        }
    }
}

/// What the holder table needs to know of a VIP's current holder.
pub struct HolderState {
    /// Its claims (as far as we hold them in full) no longer include the VIP.
    pub withdrawn: bool,
    /// Until when it may hold a lease from our grants.
    pub bound: Duration,
}

/// VIP -> the node we grant it to.
#[derive(Debug, Default)]
pub struct Holders(HashMap<Ipv4Addr, String>);

impl Holders {
    /// Whether `claimant` gets `vip` from us now; the VIP changes hands here when allowed.
    pub fn grant(
        &mut self,
        vip: Ipv4Addr,
        claimant: &str,
        now: Duration,
        takeover: Takeover,
        holder: impl FnOnce(&str) -> HolderState,
    ) -> bool {
        match self.0.get_mut(&vip) {
            None => {
                self.0.insert(vip, claimant.to_owned());
                true
            }
            Some(current) if current == claimant => true,
            Some(current) => {
                let state = holder(current);
                let free =
                    state.withdrawn || (takeover == Takeover::OnSilence && now > state.bound);
                if free {
                    claimant.clone_into(current);
                }
                free
            }
        }
    }

    pub fn holder(&self, vip: Ipv4Addr) -> Option<&str> {
        self.0.get(&vip).map(String::as_str)
    }
}

/// A grant we received for our claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub version: u32,
    pub denied: BTreeSet<Ipv4Addr>,
    /// When the lease (or hold) it gives ends, on our clock.
    pub until: Duration,
}

impl Received {
    /// Whether it covers a VIP we have claimed without a break since claims `since`.
    pub fn covers(&self, vip: Ipv4Addr, since: u32, now: Duration) -> bool {
        self.until > now && self.version >= since && !self.denied.contains(&vip)
    }
}

/// The lease a VIP has from its votes (ends of the leases granting it): the `quorum`-th
/// latest, or `None` without a quorum.
pub fn lease(mut ends: Vec<Duration>, quorum: usize) -> Option<Duration> {
    if ends.len() < quorum || quorum == 0 {
        return None;
    }
    ends.sort_unstable_by(|a, b| b.cmp(a));
    Some(ends[quorum - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quorums_are_majorities_except_for_two_nodes() {
        let quorums: Vec<usize> = (1..=7).map(quorum).collect();
        assert_eq!(quorums, [1, 1, 2, 3, 3, 4, 4]);
        // Any two majorities of three or more share a member.
        for n in 3..=9 {
            assert!(2 * quorum(n) > n, "{n}");
        }
        assert_eq!(Takeover::for_members(2, false), Takeover::OnWithdrawal);
        assert_eq!(Takeover::for_members(2, true), Takeover::OnSilence);
        assert_eq!(Takeover::for_members(3, false), Takeover::OnSilence);
    }

    #[test]
    fn a_vip_changes_hands_only_when_withdrawn_or_its_holder_silent() {
        let mut holders = Holders::default();
        let live = |_: &str| HolderState {
            withdrawn: false,
            bound: 500 * MS,
        };
        assert!(holders.grant(VIP, "a", Duration::ZERO, Takeover::OnSilence, live));
        assert!(holders.grant(VIP, "a", 100 * MS, Takeover::OnSilence, live));
        assert!(!holders.grant(VIP, "b", 500 * MS, Takeover::OnSilence, live));
        assert_eq!(holders.holder(VIP), Some("a"));
        // Past the bound: b gets it, and from now on a is refused.
        assert!(holders.grant(VIP, "b", 501 * MS, Takeover::OnSilence, live));
        assert!(
            !holders.grant(VIP, "a", 502 * MS, Takeover::OnSilence, |_| HolderState {
                withdrawn: false,
                bound: 1_000 * MS,
            })
        );
        // A withdrawal frees it at once; on withdrawal only, silence does not.
        let withdrawn = |_: &str| HolderState {
            withdrawn: true,
            bound: 10_000 * MS,
        };
        assert!(holders.grant(VIP, "a", 503 * MS, Takeover::OnWithdrawal, withdrawn));
        assert!(!holders.grant(VIP, "b", 99_999 * MS, Takeover::OnWithdrawal, live));
    }

    #[test]
    fn the_lease_is_the_quorum_th_latest_vote() {
        let ends = vec![300 * MS, 900 * MS, 500 * MS];
        assert_eq!(lease(ends.clone(), 1), Some(900 * MS));
        assert_eq!(lease(ends.clone(), 2), Some(500 * MS));
        assert_eq!(lease(ends.clone(), 3), Some(300 * MS));
        assert_eq!(lease(ends, 4), None);
    }

    #[test]
    fn a_grant_covers_what_was_claimed_by_its_version() {
        let grant = Received {
            version: 5,
            denied: [Ipv4Addr::new(192, 168, 10, 50)].into(),
            until: 400 * MS,
        };
        assert!(grant.covers(VIP, 5, 399 * MS));
        assert!(!grant.covers(VIP, 5, 400 * MS), "lapsed");
        assert!(
            !grant.covers(VIP, 6, Duration::ZERO),
            "claimed after the grant's version"
        );
        assert!(!grant.covers(Ipv4Addr::new(192, 168, 10, 50), 1, Duration::ZERO));
    }
}
