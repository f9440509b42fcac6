//! Every timing of the cluster in one place, and the inequalities that make them safe.
//!
//! The targets (issue 11): a dead announcer's VIPs answered by another node within 1.0 s
//! (median) and 1.5 s (worst) on a LAN, never by two nodes at once. LAN round trips are well
//! under a millisecond, but an agent shares two cores with the node's workloads, so every
//! wait below leaves tens of milliseconds for a busy event loop.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// Each agent probes one member (round robin over a shuffled list) this often. With n
/// agents a member is probed about once per period by someone, so a dead member's first
/// unanswered probe starts within ~0.5 period on average; foca wants it well above
/// [`PROBE_RTT`] so the indirect probes fit inside it.
pub const PROBE_PERIOD: Duration = Duration::from_millis(150);

/// How long a direct probe may go unanswered before members are asked to probe indirectly.
/// A LAN answers in well under 1 ms; 50 ms covers an agent whose loop is briefly busy.
pub const PROBE_RTT: Duration = Duration::from_millis(50);

/// Indirect probes: members asked to ping a silent member on our behalf, so that one lost
/// packet or one broken link does not raise a suspicion.
pub const INDIRECT_PROBES: usize = 3;

/// A suspected member has this long to refute (its incarnation bump reaches everyone in a
/// gossip round or two, [`GOSSIP_PERIOD`]) before it is declared down.
pub const SUSPECT_TO_DOWN: Duration = Duration::from_millis(300);

/// Pending membership updates are also pushed to [`GOSSIP_FANOUT`] members this often, so a
/// suspicion and a death spread in tens of milliseconds rather than with the next probes.
pub const GOSSIP_PERIOD: Duration = Duration::from_millis(50);
pub const GOSSIP_FANOUT: usize = 3;

/// Members not (or no longer) in our view are sent an announce this often: agents that start
/// later, and the other side of a partition that healed.
pub const ANNOUNCE_PERIOD: Duration = Duration::from_secs(1);
/// ... and this often while we know nobody (a cluster starting up).
pub const ANNOUNCE_PERIOD_ALONE: Duration = Duration::from_millis(250);

/// Every agent sends every member a heartbeat this often: it carries the echo that starts a
/// lease, the grants for the receiver's claims, and the claims themselves when the receiver
/// lags. Membership traffic is foca's; this is the fence's.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(100);

/// A grant lets its receiver answer for a VIP until this long after the receiver sent the
/// heartbeat the grant echoes. Five heartbeat periods: four heartbeats in a row may be lost
/// before the lease lapses. A member counts as dead only once it has been silent this long
/// (plus [`lease_bound`]'s margin) as well as declared down, so an agent back within its
/// lease finds its VIPs where it left them; about the usual detection time (half a probe
/// period, a probe period, the suspicion), so the failover rarely waits for it.
pub const LEASE: Duration = Duration::from_millis(500);

/// The granting side measures a lease with its own clock; the holder with its own. Their
/// rates differ by parts per million (NTP disciplines CLOCK_MONOTONIC's rate); one part in
/// a thousand plus a millisecond covers unsynchronised VMs.
pub fn lease_bound(lease: Duration) -> Duration {
    lease + lease / 1000 + Duration::from_millis(1)
}

/// A holder stops answering for a VIP this long before its lease lapses, so that one lapsing
/// lease does not close the gate (which covers all VIPs) for the others.
pub const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// A starting agent without pinned announcements claims nothing until it has every live
/// member's claims, or this long after it started if some never answer.
pub const SETTLE: Duration = Duration::from_secs(2);

/// On SIGTERM an agent asks to be counted alive for this long (a `systemctl restart` or a
/// DaemonSet pod replaced takes seconds), so nobody claims its VIPs meanwhile; if it is not
/// back by then it is failed over. Its datapath stops answering ARP when its leases lapse
/// (the flows through it go on: clients re-ARP only when their cache entry goes stale).
pub const RESTART_HOLD: Duration = Duration::from_secs(10);

/// UDP port of the cluster traffic. Not MetalLB's (or memberlist's, Serf's) 7946, not
/// Cilium's 4240/4244/4245/4250/6081/8472/9962-9965/51871, Calico's 179/4789/5473,
/// flannel's 8285/8472, nor etcd's or the kubelet's.
pub const DEFAULT_PORT: u16 = 7951;

/// The largest datagram either side produces or accepts: below a 1500-byte MTU with room for
/// IP/UDP headers and the authenticator.
pub const MAX_DATAGRAM: usize = 1400;

/// foca's configuration for a LAN cluster of `members` agents (us included).
pub fn foca_config(members: usize) -> foca::Config {
    let mut config = foca::Config::simple();
    config.probe_period = PROBE_PERIOD;
    config.probe_rtt = PROBE_RTT;
    config.num_indirect_probes = NonZeroUsize::new(INDIRECT_PROBES).expect("non-zero");
    config.suspect_to_down_after = SUSPECT_TO_DOWN;
    config.max_transmissions = max_transmissions(members);
    // foca's payload sits inside our envelope (header and tag, see auth).
    config.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM - crate::auth::OVERHEAD_MAX).expect("non-zero");
    // A member declared down learns it (and rejoins under a renewed identity) instead of
    // being ignored until it is forgotten.
    config.notify_down_members = true;
    config.periodic_gossip = Some(foca::PeriodicParams {
        frequency: GOSSIP_PERIOD,
        num_members: NonZeroUsize::new(GOSSIP_FANOUT).expect("non-zero"),
    });
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: ANNOUNCE_PERIOD,
        num_members: NonZeroUsize::new(2).expect("non-zero"),
    });
    config
}

/// How often one update is piggybacked: memberlist's 4 * log10(n + 1), at least 4 so that
/// small clusters are not left to a single lost datagram.
fn max_transmissions(members: usize) -> NonZeroU8 {
    let computed = (4.0 * ((members + 1) as f64).log10()).ceil() as u8;
    NonZeroU8::new(computed.max(4)).expect("at least 4")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foca_accepts_the_configuration_shape() {
        // foca's own rules: probe_rtt < probe_period, with room for the indirect cycle.
        assert!(PROBE_RTT * 2 < PROBE_PERIOD);
        let config = foca_config(3);
        assert_eq!(config.max_transmissions.get(), 4);
        assert_eq!(foca_config(50).max_transmissions.get(), 7);
    }

    #[test]
    fn the_lease_is_renewed_several_times_before_it_lapses() {
        assert!(HEARTBEAT_PERIOD * 4 <= LEASE - LEASE_MARGIN);
    }
}
