//! Who announces each VIP. Alone (one Node in the objects, or no other with an
//! InternalIP): the model's choice, the best-scoring eligible node, as every agent computes
//! it from the objects. With other agents: the cluster's (`gateway-cluster`: membership,
//! claims and leases over UDP at the Nodes' InternalIPs), and the gate that keeps the
//! datapath from answering past the lease. Its inputs in the run loop are the socket and
//! the cluster's timers, one arm each.
//!
//! Every change of what this node answers reaches the maps in one order: the announcements
//! that end are removed, then the gate is written, then the new ones are added (with
//! gratuitous ARP), and only then do the cluster's datagrams leave. A withdrawal reaches the
//! others only once the datapath stopped answering, and the gate never covers a VIP past
//! its lease, not even between two writes.
//!
//! The operator's drain request lives in the pinned `gw_drain` (the CLI writes it): read at
//! start and every [`POLL`], so a drained node stays drained across restarts. The agent's
//! view of the cluster goes to `gw_cluster`, `gw_members` and `gw_claims` for the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use gateway_common::{
    L2Key,
    cluster::{
        CLAIM_F_ANSWERED, CLUSTER_F_ACTIVE, CLUSTER_F_DRAINING, CLUSTER_F_KEYED,
        CLUSTER_F_TAKEOVER_ON_SILENCE, ClaimKey, ClaimRecord, ClusterRecord, Gate, MEMBER_ALIVE,
        MEMBER_DOWN, MEMBER_F_DRAINING, MEMBER_F_HOLDING, MEMBER_SUSPECT, MEMBER_UNKNOWN,
        MEMBERS_MAX, MemberRecord,
    },
    write_text,
};
use log::{error, info, warn};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::cluster::{
    auth::Key,
    identity::{self, Peer},
    membership::Liveness,
    node::{ClusterNode, MemberView, Pinned, Settings},
    transport::Transport,
};
use crate::config::{Config, Selector};
use crate::datapath::{Maps, monotonic_ns};
use crate::model::{Announcement, DesiredState};
use crate::plan::{self, Interface, MapState, Op};

/// How often the drain request is read (and, alone, the view rewritten).
const POLL: Duration = Duration::from_millis(100);
/// How often the view is rewritten when nothing this node answers changed (the members'
/// last-heard times age by as much before `members` shows them).
const VIEW_PERIOD: Duration = Duration::from_millis(250);

/// The `run` flags of the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `--cluster-port` (UDP).
    pub port: u16,
    /// `--cluster-key-file`: the shared secret that authenticates every datagram.
    pub key_file: Option<PathBuf>,
    /// `--cluster-members`: the Nodes whose agents take part (default: every Node).
    pub members: Selector,
    /// `--cluster-two-node-takeover`.
    pub two_node_takeover: bool,
}

/// An announcement that started: where, and the MAC it is answered from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub key: L2Key,
    pub mac: [u8; 6],
}

/// What [`Cluster::settle`] changed.
#[derive(Default)]
pub struct Settled {
    pub started: Vec<Announced>,
    /// Announcements that ended.
    pub ended: usize,
}

pub struct Cluster {
    options: ClusterOptions,
    me: String,
    key: Option<Key>,
    /// The datapath clock's resolution: the gate is written this much early, twice over.
    tick: Duration,
    /// What the model chose (the score), for when this node is alone.
    elected: Vec<Announcement>,
    /// The model's choice for the state being applied, until it is.
    pending_elected: Option<Vec<Announcement>>,
    /// What this node could announce, for when the cluster picks.
    announceable: Vec<Announcement>,
    interfaces: Vec<Interface>,
    draining: bool,
    next_poll: Instant,
    members: Option<Members>,
    /// Members without an address, as last warned about.
    unreachable: Vec<String>,
    /// The VIPs and gate last brought to the maps; `None`: bring them again.
    applied: Option<(BTreeSet<Ipv4Addr>, Gate)>,
    view: Written,
}

/// The cluster proper: there are other agents.
struct Members {
    node: ClusterNode,
    transport: Transport,
    peers: Vec<Peer>,
    addr: SocketAddrV4,
}

/// What the view maps hold, to write only what changes.
#[derive(Default)]
struct Written {
    members: BTreeMap<u32, MemberRecord>,
    claims: BTreeMap<ClaimKey, ClaimRecord>,
    /// Read from the pins once: what a previous run left.
    adopted: bool,
    next: Option<Instant>,
    vips: BTreeSet<Ipv4Addr>,
    draining: bool,
}

impl Cluster {
    /// `tick`: the datapath clock's resolution.
    pub fn new(options: ClusterOptions, me: &str, tick: Duration) -> Result<Self> {
        let key = options
            .key_file
            .as_deref()
            .map(Key::from_file)
            .transpose()?;
        Ok(Cluster {
            options,
            me: me.to_owned(),
            key,
            tick,
            elected: Vec::new(),
            pending_elected: None,
            announceable: Vec::new(),
            interfaces: Vec::new(),
            draining: false,
            next_poll: Instant::now(),
            members: None,
            unreachable: Vec::new(),
            applied: None,
            view: Written::default(),
        })
    }

    /// The members as this node sees them, us first (none when alone).
    pub fn members(&self) -> Vec<MemberView> {
        match &self.members {
            Some(m) => m.node.members(m.transport.now()),
            None => Vec::new(),
        }
    }

    /// Before a desired state is applied: the announcements it may start. Alone, the
    /// model's (none while drained). With the cluster, only those it already answers, of
    /// the VIPs the cluster still gives it: new ones are added by [`Self::settle`], after
    /// the gate.
    pub fn restrict(&mut self, desired: &mut DesiredState, state: &MapState) {
        let elected = std::mem::take(&mut desired.announcements);
        desired.announcements = match &self.members {
            None if self.draining => Vec::new(),
            None => elected.clone(),
            Some(m) => {
                let answering: BTreeSet<[u8; 4]> = state.l2.keys().map(|k| k.vip).collect();
                let vips = &m.node.announce().vips;
                desired
                    .announceable
                    .iter()
                    .filter(|a| vips.contains(&a.vip) && answering.contains(&a.vip.octets()))
                    .cloned()
                    .collect()
            }
        };
        self.pending_elected = Some(elected);
    }

    /// After a desired state was applied (and at start): the objects' members and
    /// eligibility reach the cluster, which starts or stops with the peers it finds.
    pub fn accept(
        &mut self,
        config: &Config,
        desired: &DesiredState,
        interfaces: &[Interface],
        state: &MapState,
        maps: &Maps,
    ) -> Result<()> {
        if let Some(elected) = self.pending_elected.take() {
            self.elected = elected;
        }
        self.announceable.clone_from(&desired.announceable);
        self.interfaces = interfaces.to_vec();
        self.applied = None;
        let peers = self.peers(config);
        match (&self.members, peers) {
            (_, None) => {
                if self.members.take().is_some() {
                    info!("cluster: no other member in the objects: announcing alone");
                }
            }
            (Some(m), Some((addr, peers))) if m.peers == peers && m.addr == addr => {}
            (_, Some((addr, peers))) => self.join(addr, peers, state, maps)?,
        }
        if let Some(m) = &mut self.members {
            let (eligible, unable) = eligibility(&self.me, desired);
            m.node.set_eligible(m.transport.now(), eligible, unable);
        }
        Ok(())
    }

    /// This node's address and the other members, or `None` when it is alone.
    fn peers(&mut self, config: &Config) -> Option<(SocketAddrV4, Vec<Peer>)> {
        let members: Vec<_> = config
            .nodes
            .iter()
            .filter(|n| self.options.members.matches(&n.labels))
            .collect();
        let me = members.iter().find(|n| n.name == self.me);
        let (peers, unreachable) = identity::peers(
            members.iter().map(|n| (n.name.as_str(), n.internal_ip)),
            &self.me,
            self.options.port,
        );
        if !unreachable.is_empty() && unreachable != self.unreachable {
            warn!(
                "cluster: Nodes without an IPv4 InternalIP take no part: {}",
                unreachable.join(", ")
            );
        }
        self.unreachable = unreachable;
        if peers.is_empty() {
            return None;
        }
        let Some(ip) = me.and_then(|n| n.internal_ip) else {
            warn!(
                "cluster: this node ({}) is {} with an IPv4 InternalIP: announcing alone, as \
                 the score elects (the other agents do not count it)",
                self.me,
                if me.is_some() {
                    "a member but not"
                } else {
                    "not a member (--cluster-members, or no Node object)"
                }
            );
            return None;
        };
        Some((SocketAddrV4::new(ip, self.options.port), peers))
    }

    /// Starts (again) as a member at `addr` among `peers`, taking over what the datapath
    /// answers and its gate.
    fn join(
        &mut self,
        addr: SocketAddrV4,
        peers: Vec<Peer>,
        state: &MapState,
        maps: &Maps,
    ) -> Result<()> {
        if self.key.is_none() {
            warn!(
                "cluster: NO --cluster-key-file: datagrams are not authenticated, and anyone on \
                 the segment can claim this cluster's VIPs. Give every agent the same key \
                 (e.g. `head -c 32 /dev/urandom | base64 > /etc/gateway/cluster.key`)"
            );
        }
        let transport = Transport::bind(addr)?;
        let now = transport.now();
        let gate = maps.read_gate()?;
        let coarse = monotonic_ns();
        let pinned = Pinned {
            vips: state.l2.keys().map(|k| Ipv4Addr::from(k.vip)).collect(),
            until: (gate.until_ns > coarse)
                .then(|| now.saturating_add(Duration::from_nanos(gate.until_ns - coarse))),
        };
        let members = peers.len() + 1;
        let mut node = ClusterNode::new(
            &self.me,
            addr,
            incarnation(),
            peers.clone(),
            self.key.clone(),
            Settings {
                two_node_takeover: self.options.two_node_takeover,
                ..Settings::default()
            },
            &pinned,
            now,
        );
        if self.draining {
            node.set_draining(now, true);
        }
        info!(
            "cluster: member {} at {addr} with {}; quorum {}, {}; {} answered from before",
            self.me,
            peers
                .iter()
                .map(|p| format!("{} ({})", p.name, p.addr.ip()))
                .collect::<Vec<_>>()
                .join(", "),
            node.quorum(),
            if node.takes_over_on_silence() {
                "a silent member's VIPs are taken over"
            } else {
                "two members: a silent member's VIPs are not taken over \
                 (--cluster-two-node-takeover), only withdrawn or drained ones"
            },
            pinned.vips.len(),
        );
        if members == 2 && self.options.two_node_takeover {
            warn!(
                "cluster: two members with --cluster-two-node-takeover: while the link between \
                 them is cut, both answer ARP for the same VIPs"
            );
        }
        self.members = Some(Members {
            node,
            transport,
            peers,
            addr,
        });
        self.applied = None;
        Ok(())
    }

    /// Reads the operator's drain request (at start, before [`Self::accept`]).
    pub fn read_drain(&mut self, maps: &Maps) -> Result<()> {
        let draining = maps.drain_requested()?;
        if draining != self.draining {
            info!(
                "{}",
                if draining {
                    "drained (`gateway-agent drain`): handing every VIP over, announcing none"
                } else {
                    "undrained: announcing again"
                }
            );
            self.draining = draining;
            self.applied = None;
            if let Some(m) = &mut self.members {
                m.node.set_draining(m.transport.now(), draining);
            }
        }
        Ok(())
    }

    /// The socket to receive from, while there is a cluster.
    pub fn socket(&self) -> Option<Arc<UdpSocket>> {
        self.members.as_ref().map(|m| m.transport.socket())
    }

    /// A datagram arrived.
    pub fn received(&mut self, datagram: &[u8]) {
        if let Some(m) = &mut self.members {
            m.node.receive(m.transport.now(), datagram);
        }
    }

    /// When [`Self::wake`] is next due.
    pub fn next_wake(&self) -> Instant {
        match &self.members {
            Some(m) => m.transport.instant(m.node.next_wake()).min(self.next_poll),
            None => self.next_poll,
        }
    }

    /// Timers: the cluster's, and the drain request.
    pub fn wake(&mut self, maps: &Maps) -> Result<()> {
        let now = Instant::now();
        if now >= self.next_poll {
            self.next_poll = now + POLL;
            self.read_drain(maps)?;
        }
        if let Some(m) = &mut self.members {
            m.node.poll(m.transport.now());
        }
        Ok(())
    }

    /// Brings the maps to what the cluster (or, alone, the model) lets this node answer,
    /// then sends the cluster's datagrams.
    pub fn settle(&mut self, maps: &mut Maps, state: &mut MapState) -> Result<Settled> {
        let (vips, gate) = match &self.members {
            None => (
                if self.draining {
                    BTreeSet::new()
                } else {
                    self.elected.iter().map(|a| a.vip).collect()
                },
                Gate::OPEN,
            ),
            Some(m) => (m.node.announce().vips.clone(), self.gate(m)),
        };
        let mut settled = Settled::default();
        let changed = self.applied.as_ref().is_none_or(|(v, _)| *v != vips);
        if changed {
            let source = if self.members.is_some() {
                &self.announceable
            } else {
                &self.elected
            };
            let wanted = plan::l2_entries(
                source.iter().filter(|a| vips.contains(&a.vip)),
                &self.interfaces,
            );
            let ending: Vec<L2Key> = state
                .l2
                .iter()
                .filter(|(key, mac)| wanted.get(key) != Some(mac))
                .map(|(key, _)| *key)
                .collect();
            for key in ending {
                maps.apply(&Op::DeleteL2(key))?;
                state.l2.remove(&key);
                settled.ended += 1;
            }
            self.write_gate(maps, gate)?;
            for (key, mac) in wanted {
                if state.l2.get(&key) != Some(&mac) {
                    maps.apply(&Op::PutL2(key, mac))?;
                    state.l2.insert(key, mac);
                    settled.started.push(Announced { key, mac });
                }
            }
        } else {
            self.write_gate(maps, gate)?;
        }
        self.applied = Some((vips, gate));
        if let Some(m) = &mut self.members {
            m.transport.flush(&mut m.node);
        }
        self.publish(maps, state)?;
        Ok(settled)
    }

    fn write_gate(&mut self, maps: &mut Maps, gate: Gate) -> Result<()> {
        if self.applied.as_ref().is_none_or(|(_, g)| *g != gate) {
            maps.write_gate(gate)?;
        }
        Ok(())
    }

    /// The cluster's gate on the datapath's clock.
    fn gate(&self, m: &Members) -> Gate {
        match m.node.announce().gate {
            Some(until) => gate_at(
                until.saturating_sub(m.transport.now()),
                monotonic_ns(),
                self.tick,
            ),
            None => Gate::default(),
        }
    }

    /// SIGTERM: asks the others to count this node alive while it restarts. The datapath
    /// keeps answering until its gate closes; nothing is withdrawn.
    pub fn stop(&mut self) {
        if let Some(m) = &mut self.members {
            m.node.stop_for_restart(m.transport.now());
            m.transport.flush(&mut m.node);
            info!(
                "cluster: asked the other members to hold this node's VIPs for {:?} while it restarts",
                Settings::default().restart_hold
            );
        }
    }

    /// Rewrites the view maps when what this node answers changed, or every [`VIEW_PERIOD`].
    fn publish(&mut self, maps: &mut Maps, state: &MapState) -> Result<()> {
        let now = Instant::now();
        let vips: BTreeSet<Ipv4Addr> = state.l2.keys().map(|k| Ipv4Addr::from(k.vip)).collect();
        if self.view.next.is_some_and(|next| now < next)
            && vips == self.view.vips
            && self.draining == self.view.draining
        {
            return Ok(());
        }
        if !self.view.adopted {
            self.view.adopted = true;
            self.view.claims = maps.read_claims()?;
        }
        let coarse = monotonic_ns();
        let (record, members, claims) = match &self.members {
            Some(m) => self.cluster_view(m, coarse),
            None => self.alone_view(&vips, coarse),
        };
        maps.write_cluster(&record)?;
        for (index, member) in members.iter().enumerate() {
            let index = index as u32;
            if self.view.members.get(&index) != Some(member) {
                maps.write_member(index, member)?;
                self.view.members.insert(index, *member);
            }
        }
        let gone: Vec<ClaimKey> = self
            .view
            .claims
            .keys()
            .filter(|k| !claims.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            maps.remove_claim(&key)?;
            self.view.claims.remove(&key);
        }
        for (key, claim) in claims {
            if self.view.claims.get(&key) != Some(&claim) {
                // A full map (more claims than --services-max, briefly, while VIPs move)
                // leaves the view short, not the agent stopped.
                if let Err(e) = maps.write_claim(&key, &claim) {
                    warn!("cluster view: {e:#}");
                    continue;
                }
                self.view.claims.insert(key, claim);
            }
        }
        self.view.next = Some(now + VIEW_PERIOD);
        self.view.vips = vips;
        self.view.draining = self.draining;
        Ok(())
    }

    fn cluster_view(
        &self,
        m: &Members,
        coarse: u64,
    ) -> (
        ClusterRecord,
        Vec<MemberRecord>,
        BTreeMap<ClaimKey, ClaimRecord>,
    ) {
        let views = self.members();
        let refusals = m.node.refusals();
        let traffic = m.node.traffic();
        let mut flags = CLUSTER_F_ACTIVE;
        if self.draining {
            flags |= CLUSTER_F_DRAINING;
        }
        if m.node.takes_over_on_silence() {
            flags |= CLUSTER_F_TAKEOVER_ON_SILENCE;
        }
        if self.key.is_some() {
            flags |= CLUSTER_F_KEYED;
        }
        let record = ClusterRecord {
            updated_ns: coarse,
            members: views.len() as u32,
            alive: views
                .iter()
                .filter(|v| v.liveness == Some(Liveness::Alive))
                .count() as u32,
            quorum: m.node.quorum() as u32,
            flags,
            refused: [
                refusals.malformed,
                refusals.untagged,
                refusals.bad_tag,
                refusals.not_for_us,
                refusals.replayed,
            ],
            strangers: m.node.strangers(),
            sent: traffic.membership + traffic.heartbeats,
            received: traffic.received,
            send_errors: m.transport.send_errors,
            port: self.options.port,
            _pad: [0; 6],
        };
        let index: BTreeMap<&str, u32> = views
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), i as u32))
            .collect();
        let members = views
            .iter()
            .take(MEMBERS_MAX as usize)
            .enumerate()
            .map(|(i, v)| member_record(v, coarse, i == 0))
            .collect();
        let mut claims = BTreeMap::new();
        for (name, held) in m.node.claims() {
            let Some(&member) = index.get(name.as_str()) else {
                continue;
            };
            for (vip, claim) in held {
                let key = ClaimKey {
                    vip: vip.octets(),
                    member,
                };
                let flags = if claim.answered { CLAIM_F_ANSWERED } else { 0 };
                claims.insert(
                    key,
                    ClaimRecord {
                        epoch: claim.epoch,
                        flags,
                    },
                );
            }
        }
        (record, members, claims)
    }

    fn alone_view(
        &self,
        vips: &BTreeSet<Ipv4Addr>,
        coarse: u64,
    ) -> (
        ClusterRecord,
        Vec<MemberRecord>,
        BTreeMap<ClaimKey, ClaimRecord>,
    ) {
        let record = ClusterRecord {
            updated_ns: coarse,
            members: 1,
            alive: 1,
            quorum: 1,
            flags: if self.draining { CLUSTER_F_DRAINING } else { 0 },
            port: self.options.port,
            ..ClusterRecord::default()
        };
        let mut me = MemberRecord {
            state: MEMBER_ALIVE,
            flags: if self.draining { MEMBER_F_DRAINING } else { 0 },
            heard_ns: coarse,
            vips: vips.len() as u32,
            ..MemberRecord::default()
        };
        write_text(&mut me.name, &self.me);
        let claims = vips
            .iter()
            .map(|vip| {
                let key = ClaimKey {
                    vip: vip.octets(),
                    member: 0,
                };
                let claim = ClaimRecord {
                    epoch: 0,
                    flags: CLAIM_F_ANSWERED,
                };
                (key, claim)
            })
            .collect();
        (record, vec![me], claims)
    }
}

/// The gate for a lease that ends `left` from now, the datapath's clock reading `now_ns`:
/// two of its ticks early, as that clock (CLOCK_MONOTONIC_COARSE, through jiffies) lags the
/// agent's by up to a tick and matches the coarse clock to within one; closed when no more
/// than that is left.
/// What the cluster learns from the objects: each announced address's eligible nodes (the
/// same on every node: any selected node for a Cluster service, those with an endpoint
/// taking new flows for a Local one), and the addresses `me` is eligible for but cannot
/// announce (no interface its policies select here), which it tells the others.
fn eligibility(
    me: &str,
    desired: &DesiredState,
) -> (BTreeMap<Ipv4Addr, BTreeSet<String>>, BTreeSet<Ipv4Addr>) {
    let eligible: BTreeMap<Ipv4Addr, BTreeSet<String>> = desired
        .eligible
        .iter()
        .map(|(vip, nodes)| (*vip, nodes.iter().map(|n| n.to_string()).collect()))
        .collect();
    let can: BTreeSet<Ipv4Addr> = desired.announceable.iter().map(|a| a.vip).collect();
    let unable = eligible
        .iter()
        .filter(|(vip, nodes)| nodes.contains(me) && !can.contains(vip))
        .map(|(vip, _)| *vip)
        .collect();
    (eligible, unable)
}

fn gate_at(left: Duration, now_ns: u64, tick: Duration) -> Gate {
    match left.checked_sub(tick * 2) {
        Some(left) if !left.is_zero() => Gate {
            until_ns: now_ns.saturating_add(left.as_nanos() as u64),
        },
        _ => Gate::default(),
    }
}

/// `view` (`me`: this node's own) as `gw_members` holds it.
fn member_record(view: &MemberView, coarse: u64, me: bool) -> MemberRecord {
    let mut record = MemberRecord {
        addr: view.addr.ip().octets(),
        port: view.addr.port(),
        state: match view.liveness {
            None => MEMBER_UNKNOWN,
            Some(Liveness::Alive) => MEMBER_ALIVE,
            Some(Liveness::Suspect) => MEMBER_SUSPECT,
            Some(Liveness::Down) => MEMBER_DOWN,
        },
        flags: (if view.draining { MEMBER_F_DRAINING } else { 0 })
            | (if view.holding { MEMBER_F_HOLDING } else { 0 }),
        incarnation: view.incarnation.unwrap_or(0),
        heard_ns: match view.heard_ago {
            Some(ago) => coarse.saturating_sub(ago.as_nanos() as u64),
            None if me => coarse,
            None => 0,
        },
        vips: view.vips.len() as u32,
        ..MemberRecord::default()
    };
    write_text(&mut record.name, &view.name);
    record
}

/// This start of the agent: microseconds since the epoch, larger at every start.
fn incarnation() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// The cluster's two inputs to the run loop: a datagram from another agent, and a timer.
impl super::Agent {
    /// A datagram from another agent.
    pub(super) fn cluster_received(&mut self, datagram: &[u8]) {
        self.cluster.received(datagram);
        self.cluster_changed();
    }

    /// The cluster's timers, and the drain request.
    pub(super) fn cluster_woke(&mut self) {
        if let Err(e) = self.cluster.wake(&self.datapath.maps) {
            warn!("cluster: {e:#}");
        }
        self.cluster_changed();
        let members = self.cluster.members();
        if !members.is_empty() {
            self.metrics.members(&members);
        }
    }

    /// After an input of the cluster: the maps follow what it lets this node answer, the
    /// announcements that started get gratuitous ARP (a takeover is announced at once).
    fn cluster_changed(&mut self) {
        match self
            .cluster
            .settle(&mut self.datapath.maps, &mut self.state)
        {
            Ok(settled) => {
                self.metrics
                    .announcements(settled.started.len(), settled.ended);
                if let Err(e) = self
                    .hairpin
                    .sync(&mut self.datapath.maps, &self.state.l2, false)
                {
                    error!("hairpin: bringing the announced VIPs to gw_hairpin: {e:#}");
                }
                let now = std::time::Instant::now();
                for Announced { key, mac } in settled.started {
                    info!(
                        "cluster: answering for {} on ifindex {}",
                        Ipv4Addr::from(key.vip),
                        key.ifindex
                    );
                    self.garp.announce(key, mac, now);
                }
            }
            Err(e) => error!("cluster: bringing the announcements to the maps: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{
        claims::{Claim, Claims},
        election::{View, claims_for},
    };
    use crate::config::fixtures::{REFERENCE, edit, parse_ok};
    use crate::model::desired_state;

    const MS: Duration = Duration::from_millis(1);
    const INTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
    const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 50);

    fn names(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    /// The reference with the external gateway's only endpoint on worker-2, under `policy`.
    fn external_on_worker_2(policy: &str) -> String {
        let remote_only = edit(
            REFERENCE,
            "endpoints:\n  - addresses: [\"10.0.1.10\"]\n    nodeName: worker-1\n    conditions:\n      ready: true\n  - addresses: [\"10.0.2.10\"]",
            "endpoints:\n  - addresses: [\"10.0.2.10\"]",
        );
        edit(
            &remote_only,
            "  externalTrafficPolicy: Local\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n\
             \x20   clientIP:\n      timeoutSeconds: 10800\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external",
            &format!(
                "  externalTrafficPolicy: {policy}\n  selector:\n    io.cilium.gateway/owning-gateway: gateway-external"
            ),
        )
    }

    #[test]
    fn any_selected_node_may_take_over_a_cluster_service_a_local_one_needs_an_endpoint() {
        for (policy, external_eligible) in [
            ("Local", names(&["worker-2"])),
            ("Cluster", names(&["worker-1", "worker-2"])),
        ] {
            let config = parse_ok(&external_on_worker_2(policy));
            let uplinks = ["ens18".to_owned()];
            let expected = BTreeMap::from([
                (INTERNAL, names(&["worker-1", "worker-2"])),
                (EXTERNAL, external_eligible.clone()),
            ]);
            // Every node tells the cluster the same eligible nodes, and none is unable.
            for node in ["cp-1", "worker-1", "worker-2"] {
                let desired = desired_state(&config, node, &uplinks);
                assert_eq!(
                    eligibility(node, &desired),
                    (expected.clone(), BTreeSet::new()),
                    "{policy} on {node}"
                );
            }
            // Without an interface the policy selects, worker-1 is unable for all it is
            // eligible for, and says so.
            let desired = desired_state(&config, "worker-1", &["lo".to_owned()]);
            let (eligible, unable) = eligibility("worker-1", &desired);
            assert_eq!(eligible, expected, "{policy}");
            let unable_expected: BTreeSet<Ipv4Addr> = (expected.iter())
                .filter(|(_, nodes)| nodes.contains("worker-1"))
                .map(|(vip, _)| *vip)
                .collect();
            assert_eq!(unable, unable_expected, "{policy}");

            // worker-2 held both VIPs and died: worker-1 takes over what it is eligible
            // for, a Cluster service without any endpoint of its own included.
            let dead_holder: Claims = [INTERNAL, EXTERNAL]
                .into_iter()
                .map(|vip| {
                    let claim = Claim {
                        epoch: 1,
                        answered: true,
                    };
                    (vip, claim)
                })
                .collect();
            let claims = BTreeMap::from([
                ("worker-2".to_owned(), dead_holder),
                ("worker-1".to_owned(), Claims::new()),
            ]);
            let wanted = claims_for(&View {
                me: "worker-1",
                alive: &names(&["cp-1", "worker-1"]),
                draining: &BTreeSet::new(),
                claims: &claims,
                eligible: &expected,
                quorate: true,
                takeover_on_silence: true,
            });
            let taken: BTreeSet<Ipv4Addr> = wanted.keys().copied().collect();
            let expected_taken = if policy == "Cluster" {
                BTreeSet::from([INTERNAL, EXTERNAL])
            } else {
                BTreeSet::from([INTERNAL])
            };
            assert_eq!(taken, expected_taken, "{policy}");
            // The control plane, alive but not selected, takes nothing.
            let wanted = claims_for(&View {
                me: "cp-1",
                alive: &names(&["cp-1", "worker-1"]),
                draining: &BTreeSet::new(),
                claims: &claims,
                eligible: &expected,
                quorate: true,
                takeover_on_silence: true,
            });
            assert!(wanted.is_empty(), "{policy}: {wanted:?}");
        }
    }

    #[test]
    fn the_gate_closes_two_ticks_before_the_lease_and_is_closed_without_room() {
        let tick = 4 * MS;
        let now = 1_000_000_000;
        assert_eq!(gate_at(480 * MS, now, tick).until_ns, now + 472_000_000);
        assert!(gate_at(480 * MS, now, tick).is_open(now + 471_999_999));
        assert!(!gate_at(480 * MS, now, tick).is_open(now + 472_000_000));
        // No more than the margin left: closed now, and a zero gate stays closed.
        for left in [8 * MS, 3 * MS, Duration::ZERO] {
            assert_eq!(gate_at(left, now, tick), Gate::default());
            assert!(!Gate::default().is_open(0));
        }
        assert!(Gate::OPEN.is_open(u64::MAX - 1));
    }
}
