//! This node's part in the cluster: membership (foca), the heartbeats of the fence, the
//! claims it makes and the VIPs it may answer for, as one state machine without I/O.
//!
//! The caller feeds it datagrams ([`ClusterNode::receive`]) and time ([`ClusterNode::poll`]
//! at [`ClusterNode::next_wake`]), and after each call, in this order:
//! 1. applies [`ClusterNode::announce`] to the datapath: VIPs no longer answered are
//!    removed, then the gate is written, then new VIPs are added (the gate never covers a
//!    VIP beyond its lease, not even between two writes);
//! 2. sends [`ClusterNode::take_outbox`]. A withdrawn claim is published only after step
//!    1 stopped answering it, which is what lets the others take it at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::auth::{Envelope, Key, Kind, Refusals, node_id};
use super::claims::{self, Claim, Claims, PeerClaims};
use super::election::{self, View};
use super::heartbeat::{Grant, Heartbeat};
use super::identity::{Member, Peer};
use super::lease::{self, HolderState, Holders, Received, Takeover};
use super::membership::{Liveness, Membership};
use super::timing::{self, lease_bound};

/// Choices an operator makes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A two-node cluster takes over a silent peer's VIPs (`--cluster-two-node-takeover`):
    /// failover, at the price of both answering while the link between them is cut.
    pub two_node_takeover: bool,
    pub restart_hold: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            two_node_takeover: false,
            restart_hold: timing::RESTART_HOLD,
        }
    }
}

/// What the datapath answered when the agent started: the VIPs and the gate a previous run
/// of the agent left in its pinned maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    pub vips: BTreeSet<Ipv4Addr>,
    /// The gate, on the caller's clock. A lease the previous run held from a quorum: the
    /// others' holder tables keep the VIPs ours until then, so the new run answers under it
    /// until its own grants arrive. `None` (or one further off than a lease, as a single
    /// node's open gate): no lease to carry over.
    pub until: Option<Duration>,
}

/// What the datapath must answer ARP for, and until when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    pub vips: BTreeSet<Ipv4Addr>,
    /// The gate: no answer at or after this instant (on the caller's clock). `None`: closed.
    pub gate: Option<Duration>,
}

/// Datagrams and bytes sent, by kind (for the measurements and `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub membership: u64,
    pub heartbeats: u64,
    pub bytes: u64,
    pub received: u64,
}

/// One member as `members` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberView {
    pub name: String,
    pub addr: SocketAddrV4,
    /// `None`: never heard of.
    pub liveness: Option<Liveness>,
    pub incarnation: Option<u64>,
    pub draining: bool,
    pub holding: bool,
    /// The VIPs it claims (ours: the ones we answer for).
    pub vips: Vec<Ipv4Addr>,
    pub heard_ago: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Mine {
    epoch: u32,
    /// The claims version from which this VIP has been claimed without a break.
    since: u32,
}

struct PeerState {
    peer: Peer,
    /// Its agent's incarnation (the envelope's), and the highest sequence number from it.
    incarnation: Option<u64>,
    highest_seq: u64,
    last_heard: Option<Duration>,
    claims: PeerClaims,
    /// The version of our claims it holds in full.
    acked: Option<(u64, u32)>,
    draining: bool,
    hold_until: Option<Duration>,
    /// Its latest grant for our claims.
    grant: Option<Received>,
    next_chunk: u16,
}

impl PeerState {
    /// Until when it may hold a lease from our grants: a grant echoes its latest datagram,
    /// and a lease runs from when it sent that one.
    fn bound(&self) -> Duration {
        self.last_heard
            .map_or(Duration::ZERO, |heard| heard + lease_bound(timing::LEASE))
    }

    fn holding(&self, now: Duration) -> bool {
        self.hold_until.is_some_and(|until| until > now)
    }
}

pub struct ClusterNode {
    me: String,
    addr: SocketAddrV4,
    incarnation: u64,
    started: Duration,
    settings: Settings,
    envelope: Envelope,
    membership: Membership,
    peers: BTreeMap<String, PeerState>,
    ids: HashMap<u64, String>,
    holders: Holders,
    takeover: Takeover,
    quorum: usize,
    claims: BTreeMap<Ipv4Addr, Mine>,
    version: u32,
    draining: bool,
    stopping: bool,
    synced: bool,
    eligible: BTreeMap<Ipv4Addr, BTreeSet<String>>,
    /// VIPs the objects make us eligible for but no interface of ours can announce.
    unable: BTreeSet<Ipv4Addr>,
    /// What the previous run answered, until its lease ends.
    pinned: Pinned,
    announce: Announce,
    /// When each of our recent datagrams left, by sequence number: a lease starts there.
    sent: VecDeque<(u64, Duration)>,
    next_heartbeat: Duration,
    /// Peers owed a heartbeat now (a claim changed, a grant to give).
    urgent: BTreeSet<String>,
    outbox: Vec<(SocketAddrV4, Vec<u8>)>,
    traffic: Traffic,
    strangers: u64,
}

impl ClusterNode {
    /// This node (`me` at `addr`, started at `now` with `incarnation`, a number larger at
    /// each start) among `peers`. `pinned` is what the datapath answers from a previous
    /// run: its VIPs are claimed again at once (and answered under its lease until our own
    /// grants arrive), while new claims wait until the others' claims are known.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: &str,
        addr: SocketAddrV4,
        incarnation: u64,
        peers: Vec<Peer>,
        key: Option<Key>,
        settings: Settings,
        pinned: &Pinned,
        now: Duration,
    ) -> Self {
        let members = peers.len() + 1;
        let identity = Member {
            name: me.to_owned(),
            addr,
            incarnation,
        };
        let ids = peers
            .iter()
            .map(|p| (node_id(&p.name), p.name.clone()))
            .collect();
        let states = peers
            .iter()
            .map(|peer| {
                (
                    peer.name.clone(),
                    PeerState {
                        peer: peer.clone(),
                        incarnation: None,
                        highest_seq: 0,
                        last_heard: None,
                        claims: PeerClaims::default(),
                        acked: None,
                        draining: false,
                        hold_until: None,
                        grant: None,
                        next_chunk: 0,
                    },
                )
            })
            .collect();
        ClusterNode {
            me: me.to_owned(),
            addr,
            incarnation,
            started: now,
            takeover: Takeover::for_members(members, settings.two_node_takeover),
            quorum: lease::quorum(members),
            settings,
            envelope: Envelope::new(key, me, incarnation),
            membership: Membership::new(identity, peers, incarnation ^ node_id(me)),
            peers: states,
            ids,
            holders: Holders::default(),
            claims: pinned
                .vips
                .iter()
                .map(|vip| (*vip, Mine { epoch: 0, since: 1 }))
                .collect(),
            version: 1,
            draining: false,
            stopping: false,
            synced: false,
            eligible: BTreeMap::new(),
            unable: BTreeSet::new(),
            pinned: Pinned {
                vips: pinned.vips.clone(),
                // A lease is never longer than this: anything further (a single node's open
                // gate) was not granted by anyone.
                until: pinned
                    .until
                    .filter(|until| *until <= now + lease_bound(timing::LEASE)),
            },
            announce: Announce::default(),
            sent: VecDeque::new(),
            next_heartbeat: now,
            urgent: BTreeSet::new(),
            outbox: Vec::new(),
            traffic: Traffic::default(),
            strangers: 0,
        }
    }

    /// The nodes eligible for each VIP to announce (from the objects, at every reload), and
    /// the VIPs among those this node is eligible for that it cannot announce (no interface
    /// of its own matches the policy): the others learn them with our claims.
    pub fn set_eligible(
        &mut self,
        now: Duration,
        eligible: BTreeMap<Ipv4Addr, BTreeSet<String>>,
        unable: BTreeSet<Ipv4Addr>,
    ) {
        self.eligible = eligible;
        if unable != self.unable {
            self.unable = unable;
            self.version += 1;
            self.urgent.extend(self.peers.keys().cloned());
        }
        self.step(now, true);
    }

    /// Whether this node drains (`drain`), as last set.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The members (us included) whose grants a VIP needs.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Whether a silent member's VIPs are taken over (three or more members, or two told
    /// to), or only withdrawn ones.
    pub fn takes_over_on_silence(&self) -> bool {
        self.takeover == Takeover::OnSilence
    }

    /// Drain: hand every VIP over at once and claim none (`drain`/`undrain`).
    pub fn set_draining(&mut self, now: Duration, draining: bool) {
        self.draining = draining;
        self.urgent.extend(self.peers.keys().cloned());
        self.step(now, true);
    }

    /// SIGTERM: ask the others to count us alive for the hold while we restart.
    pub fn stop_for_restart(&mut self, now: Duration) {
        self.stopping = true;
        // Twice: one lost datagram must not turn a restart into a failover.
        for _ in 0..2 {
            self.urgent.extend(self.peers.keys().cloned());
            self.send_heartbeats(now);
        }
    }

    pub fn announce(&self) -> &Announce {
        &self.announce
    }

    pub fn take_outbox(&mut self) -> Vec<(SocketAddrV4, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    pub fn refusals(&self) -> Refusals {
        self.envelope.refusals()
    }

    /// Authentic datagrams from nodes not in the objects, and foca's refusals.
    pub fn strangers(&self) -> u64 {
        self.strangers + self.membership.errors()
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// A datagram arrived.
    pub fn receive(&mut self, now: Duration, datagram: &[u8]) {
        let Ok(opened) = self.envelope.open(datagram) else {
            return;
        };
        self.traffic.received += 1;
        let Some(name) = self.ids.get(&opened.sender).cloned() else {
            self.strangers += 1;
            return;
        };
        let peer = self.peers.get_mut(&name).expect("ids index the peers");
        peer.last_heard = Some(now);
        if peer.incarnation.is_none_or(|inc| opened.incarnation > inc) {
            // A new start of its agent: it knows none of our claims.
            peer.incarnation = Some(opened.incarnation);
            peer.highest_seq = opened.seq;
            peer.acked = None;
        } else {
            peer.highest_seq = peer.highest_seq.max(opened.seq);
        }
        let changed = match opened.kind {
            Kind::Membership => {
                self.membership.handle(now, opened.payload);
                false
            }
            Kind::Heartbeat => match Heartbeat::decode(opened.payload) {
                Some(heartbeat) => self.heartbeat(now, &name, opened.incarnation, heartbeat),
                None => {
                    self.strangers += 1;
                    false
                }
            },
        };
        self.step(now, changed);
    }

    /// Time passed: timers, heartbeats, leases.
    pub fn poll(&mut self, now: Duration) {
        self.step(now, false);
    }

    /// When [`Self::poll`] is next needed.
    pub fn next_wake(&self) -> Duration {
        let mut wake = self.membership.next_wake().min(self.next_heartbeat);
        if let Some(gate) = self.announce.gate {
            wake = wake.min(gate.saturating_sub(timing::LEASE_MARGIN));
        }
        if !self.synced {
            wake = wake.min(self.started + timing::SETTLE);
        }
        wake
    }

    fn heartbeat(&mut self, now: Duration, name: &str, incarnation: u64, hb: Heartbeat) -> bool {
        let sent_at = hb
            .echo
            .filter(|(inc, _)| *inc == self.incarnation)
            .and_then(|(_, seq)| {
                let at = self.sent.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
                Some(self.sent[at].1)
            });
        let peer = self.peers.get_mut(name).expect("known peer");
        let mut changed = false;
        if let (Some(grant), Some(sent_at)) = (hb.grant, sent_at) {
            let received = Received {
                version: grant.version,
                denied: grant.denied.into_iter().collect(),
                until: sent_at + timing::LEASE,
            };
            if peer
                .grant
                .as_ref()
                .is_none_or(|g| (received.version, received.until) >= (g.version, g.until))
            {
                peer.grant = Some(received);
            }
        }
        peer.acked = hb.ack.filter(|(inc, _)| *inc == self.incarnation);
        if let Some(chunk) = hb.chunk
            && peer.claims.receive(incarnation, chunk)
        {
            changed = true;
            // Its new claims want our grant now, not at the next round.
            self.urgent.insert(name.to_owned());
        }
        if peer
            .claims
            .ack(incarnation)
            .is_none_or(|(_, v)| v < hb.version)
        {
            // We lag: our ack asks for its claims.
            self.urgent.insert(name.to_owned());
        }
        if peer.draining != hb.draining {
            peer.draining = hb.draining;
            changed = true;
        }
        if hb.hold_ms > 0 {
            peer.hold_until = Some(now + Duration::from_millis(u64::from(hb.hold_ms)));
            changed = true;
        }
        changed
    }

    /// Everything that follows an input: membership timers, re-election, heartbeats due,
    /// and what to answer.
    fn step(&mut self, now: Duration, mut changed: bool) {
        if self.stopping {
            return;
        }
        self.membership.poll(now);
        changed |= self.membership.take_changed();
        self.flush_membership(now);
        if !self.synced && self.is_synced(now) {
            self.synced = true;
            changed = true;
        }
        let tick = now >= self.next_heartbeat;
        // Also at each heartbeat round: holds and leases lapse without a message.
        if changed || tick {
            self.elect(now);
        }
        if tick {
            self.next_heartbeat = now + timing::HEARTBEAT_PERIOD;
            self.urgent.extend(self.peers.keys().cloned());
        }
        self.answer(now);
        self.send_heartbeats(now);
        let horizon = now.saturating_sub(lease_bound(timing::LEASE) + timing::HEARTBEAT_PERIOD);
        while self.sent.front().is_some_and(|(_, at)| *at < horizon) {
            self.sent.pop_front();
        }
    }

    /// Every live member's claims are known (or the wait is over): new claims may be made.
    fn is_synced(&self, now: Duration) -> bool {
        if now >= self.started + timing::SETTLE {
            return true;
        }
        let mut live = self
            .peers
            .values()
            .filter(|p| self.membership.is_active(&p.peer.name))
            .peekable();
        live.peek().is_some()
            && live.all(|p| p.incarnation.is_some_and(|inc| p.claims.ack(inc).is_some()))
    }

    /// The members that count as alive for the election: not declared down, holding for a
    /// restart, or heard from within the lease (an agent restarted that quickly takes up its
    /// VIPs again before anyone else claims them).
    fn alive(&self, now: Duration) -> BTreeSet<String> {
        let mut alive: BTreeSet<String> = self
            .peers
            .values()
            .filter(|p| {
                p.holding(now) || now <= p.bound() || self.membership.is_active(&p.peer.name)
            })
            .map(|p| p.peer.name.clone())
            .collect();
        alive.insert(self.me.clone());
        alive
    }

    fn elect(&mut self, now: Duration) {
        if !self.synced {
            // Only what the datapath answered before the restart, until the claims are known.
            return;
        }
        let alive = self.alive(now);
        let mut draining: BTreeSet<String> = self
            .peers
            .values()
            .filter(|p| p.draining)
            .map(|p| p.peer.name.clone())
            .collect();
        if self.draining {
            draining.insert(self.me.clone());
        }
        let mut all: BTreeMap<String, Claims> = self
            .peers
            .values()
            .map(|p| (p.peer.name.clone(), p.claims.claims.clone()))
            .collect();
        all.insert(self.me.clone(), self.published());
        let eligible = self.able();
        let wanted = election::claims_for(&View {
            me: &self.me,
            alive: &alive,
            draining: &draining,
            claims: &all,
            eligible: &eligible,
            quorate: 1 + self.peers.values().filter(|p| now <= p.bound()).count() >= self.quorum,
            takeover_on_silence: self.takeover == Takeover::OnSilence,
        });
        let current: BTreeMap<Ipv4Addr, u32> =
            self.claims.iter().map(|(vip, m)| (*vip, m.epoch)).collect();
        if wanted == current {
            return;
        }
        let version = self.version + 1;
        // Withdrawn first: the announce below no longer lists them, and the caller stops
        // answering before the new version leaves.
        self.claims.retain(|vip, _| wanted.contains_key(vip));
        self.announce.vips.retain(|vip| wanted.contains_key(vip));
        for (vip, epoch) in wanted {
            let mine = self.claims.entry(vip).or_insert(Mine {
                epoch,
                since: version,
            });
            mine.epoch = epoch;
        }
        self.version = version;
        self.urgent.extend(self.peers.keys().cloned());
    }

    /// The eligible nodes of each VIP, without those that said they cannot announce it.
    fn able(&self) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
        let unable: Vec<(&str, &BTreeSet<Ipv4Addr>)> = self
            .peers
            .values()
            .map(|p| (p.peer.name.as_str(), &p.claims.unable))
            .chain([(self.me.as_str(), &self.unable)])
            .filter(|(_, unable)| !unable.is_empty())
            .collect();
        if unable.is_empty() {
            return self.eligible.clone();
        }
        self.eligible
            .iter()
            .map(|(vip, nodes)| {
                let mut nodes = nodes.clone();
                for (node, vips) in &unable {
                    if vips.contains(vip) {
                        nodes.remove(*node);
                    }
                }
                (*vip, nodes)
            })
            .collect()
    }

    /// The VIPs we may answer for: claimed, and granted by a quorum (us included), or still
    /// under the lease of the previous run.
    fn answer(&mut self, now: Duration) {
        let may_grant = now >= self.started + lease_bound(timing::LEASE);
        let pinned_until = self
            .pinned
            .until
            .filter(|until| *until > now + timing::LEASE_MARGIN);
        if pinned_until.is_none() {
            self.pinned.vips.clear();
        }
        let mut vips = BTreeSet::new();
        let mut gate: Option<Duration> = None;
        for (vip, mine) in &self.claims {
            let granted: Vec<Duration> = self
                .peers
                .values()
                .filter_map(|p| p.grant.as_ref())
                .filter(|g| g.covers(*vip, mine.since, now))
                .map(|g| g.until)
                .collect();
            let claims = &self.claims;
            let peers = &self.peers;
            let own = (may_grant
                && self
                    .holders
                    .grant(*vip, &self.me, now, self.takeover, |holder| {
                        holder_state(holder, *vip, now, claims, peers)
                    }))
            .then_some(now + timing::LEASE);
            let carried = pinned_until.filter(|_| self.pinned.vips.contains(vip));
            let end = self.lease_end(granted, own, now).max(carried);
            if let Some(end) = end
                && end > now + timing::LEASE_MARGIN
            {
                vips.insert(*vip);
                gate = Some(gate.map_or(end, |g| g.min(end)));
            }
        }
        if vips != self.announce.vips {
            // Whether we answer decides conflicts: the others learn it with a new version.
            self.version += 1;
            self.urgent.extend(self.peers.keys().cloned());
        }
        self.announce = Announce { vips, gate };
    }

    /// The lease from the peers' grants (`granted`) and our own (`own`): the quorum-th
    /// latest. Where our own grant is a quorum (two nodes that take over on silence), the
    /// peer's grant, while it lasts, bounds ours too: it says what the peer heard from us,
    /// and the peer takes over once it lapses, so an agent that dies must have stopped
    /// answering by then, even though its own grant would run on.
    fn lease_end(
        &self,
        mut granted: Vec<Duration>,
        own: Option<Duration>,
        now: Duration,
    ) -> Option<Duration> {
        if self.quorum == 1 && !granted.is_empty() {
            let both = granted.iter().copied().chain(own).min();
            if both.is_some_and(|end| end > now + timing::LEASE_MARGIN) {
                return both;
            }
        }
        granted.extend(own);
        lease::lease(granted, self.quorum)
    }

    /// Our claims as the others see them.
    fn published(&self) -> Claims {
        self.claims
            .iter()
            .map(|(vip, mine)| {
                let claim = Claim {
                    epoch: mine.epoch,
                    answered: self.announce.vips.contains(vip),
                };
                (*vip, claim)
            })
            .collect()
    }

    fn send_heartbeats(&mut self, now: Duration) {
        let may_grant = now >= self.started + lease_bound(timing::LEASE);
        let mine = claims::record(&self.published(), &self.unable);
        for name in std::mem::take(&mut self.urgent) {
            let Some(peer) = self.peers.get(&name) else {
                continue;
            };
            let echo = peer.incarnation.map(|inc| (inc, peer.highest_seq));
            let ack = peer.incarnation.and_then(|inc| peer.claims.ack(inc));
            let lagging = peer.acked != Some((self.incarnation, self.version));
            let chunk_index = peer.next_chunk;
            let grant = match (echo, ack) {
                (Some(_), Some((_, version))) if may_grant && !self.stopping => {
                    let claims = &self.claims;
                    let peers = &self.peers;
                    let denied = peer
                        .claims
                        .claims
                        .keys()
                        .filter(|vip| {
                            !self
                                .holders
                                .grant(**vip, &name, now, self.takeover, |holder| {
                                    holder_state(holder, **vip, now, claims, peers)
                                })
                        })
                        .copied()
                        .collect();
                    Some(Grant { version, denied })
                }
                _ => None,
            };
            let heartbeat = Heartbeat {
                echo,
                draining: self.draining,
                hold_ms: if self.stopping {
                    u32::try_from(self.settings.restart_hold.as_millis()).unwrap_or(u32::MAX)
                } else {
                    0
                },
                version: self.version,
                ack,
                chunk: lagging.then(|| claims::chunk(&mine, self.version, chunk_index)),
                grant,
            };
            let peer = self.peers.get_mut(&name).expect("known peer");
            if lagging {
                peer.next_chunk = peer.next_chunk.wrapping_add(1);
            }
            let addr = peer.peer.addr;
            self.seal(now, Kind::Heartbeat, &name, addr, &heartbeat.encode());
        }
    }

    fn flush_membership(&mut self, now: Duration) {
        for (to, payload) in self.membership.take_outbox() {
            self.seal(now, Kind::Membership, &to.name, to.addr, &payload);
        }
    }

    fn seal(&mut self, now: Duration, kind: Kind, to: &str, addr: SocketAddrV4, payload: &[u8]) {
        let (datagram, seq) = self.envelope.seal(kind, node_id(to), payload);
        self.sent.push_back((seq, now));
        match kind {
            Kind::Membership => self.traffic.membership += 1,
            Kind::Heartbeat => self.traffic.heartbeats += 1,
        }
        self.traffic.bytes += datagram.len() as u64;
        self.outbox.push((addr, datagram));
    }

    /// Every member's claims as far as we know them, ours as the others see them.
    pub fn claims(&self) -> BTreeMap<String, Claims> {
        self.peers
            .values()
            .map(|p| (p.peer.name.clone(), p.claims.claims.clone()))
            .chain([(self.me.clone(), self.published())])
            .collect()
    }

    /// Every member, us first.
    pub fn members(&self, now: Duration) -> Vec<MemberView> {
        let mut members = vec![MemberView {
            name: self.me.clone(),
            addr: self.addr,
            liveness: Some(Liveness::Alive),
            incarnation: Some(self.incarnation),
            draining: self.draining,
            holding: false,
            vips: self.announce.vips.iter().copied().collect(),
            heard_ago: None,
        }];
        members.extend(self.peers.values().map(|p| MemberView {
            name: p.peer.name.clone(),
            addr: p.peer.addr,
            liveness: self.membership.liveness(&p.peer.name),
            incarnation: p.incarnation,
            draining: p.draining,
            holding: p.holding(now),
            vips: p.claims.claims.keys().copied().collect(),
            heard_ago: p.last_heard.map(|at| now.saturating_sub(at)),
        }));
        members
    }
}

/// What our holder table knows of `holder` for `vip`.
fn holder_state(
    holder: &str,
    vip: Ipv4Addr,
    now: Duration,
    mine: &BTreeMap<Ipv4Addr, Mine>,
    peers: &BTreeMap<String, PeerState>,
) -> HolderState {
    match peers.get(holder) {
        Some(p) => HolderState {
            withdrawn: p.claims.complete.is_some() && !p.claims.claims.contains_key(&vip),
            bound: p.bound(),
        },
        // Us: we hold what we claim for as long as we live.
        None => HolderState {
            withdrawn: !mine.contains_key(&vip),
            bound: now + lease_bound(timing::LEASE),
        },
    }
}
