//! Who is alive: foca (SWIM with suspicion and infection-style dissemination), driven by our
//! clock and timers. foca does no I/O: it hands us datagrams to send and timers to keep,
//! and we hand it what arrives and the timers that came due. The same code runs under the
//! tokio transport and under the simulated network of the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use foca::{Foca, NoCustomBroadcast, Notification, PostcardCodec, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::identity::{Member, Peer};
use super::timing;

/// A member's state in our view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    /// Failed a probe; declared down unless it refutes in time.
    Suspect,
    Down,
}

/// What foca asks of its surroundings during one call.
struct Io<'a> {
    now: Duration,
    timers: &'a mut BTreeMap<(Duration, u64), Timer<Member>>,
    timer_seq: &'a mut u64,
    outbox: &'a mut Vec<(Member, Vec<u8>)>,
    changed: &'a mut bool,
}

impl Runtime<Member> for Io<'_> {
    fn notify(&mut self, notification: Notification<'_, Member>) {
        if matches!(
            notification,
            Notification::MemberUp(_)
                | Notification::MemberDown(_)
                | Notification::Rename(..)
                | Notification::Rejoin(_)
                | Notification::Idle
                | Notification::Defunct
        ) {
            *self.changed = true;
        }
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        self.outbox.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        *self.timer_seq += 1;
        self.timers
            .insert((self.now + after, *self.timer_seq), event);
    }
}

type Swim = Foca<Member, PostcardCodec, SmallRng, NoCustomBroadcast>;

pub struct Membership {
    foca: Swim,
    peers: Vec<Peer>,
    timers: BTreeMap<(Duration, u64), Timer<Member>>,
    timer_seq: u64,
    outbox: Vec<(Member, Vec<u8>)>,
    next_announce: Duration,
    changed: bool,
    /// Datagrams foca refused after they passed the envelope (a foreign or broken sender).
    errors: u64,
}

impl Membership {
    /// Membership for `me` among `peers`; `seed` makes foca's random choices reproducible.
    pub fn new(me: Member, peers: Vec<Peer>, seed: u64) -> Self {
        let config = timing::foca_config(peers.len() + 1);
        Membership {
            foca: Foca::new(me, config, SmallRng::seed_from_u64(seed), PostcardCodec),
            peers,
            timers: BTreeMap::new(),
            timer_seq: 0,
            outbox: Vec::new(),
            next_announce: Duration::ZERO,
            changed: false,
            errors: 0,
        }
    }

    /// Our identity (a renewed one after we were declared down and rejoined).
    pub fn identity(&self) -> &Member {
        self.foca.identity()
    }

    /// Datagrams (foca payloads) to send, with their destination.
    pub fn take_outbox(&mut self) -> Vec<(Member, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Whether anyone's liveness changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    fn io(&mut self, now: Duration) -> (&mut Swim, Io<'_>) {
        (
            &mut self.foca,
            Io {
                now,
                timers: &mut self.timers,
                timer_seq: &mut self.timer_seq,
                outbox: &mut self.outbox,
                changed: &mut self.changed,
            },
        )
    }

    /// A foca payload from the network (the envelope already checked who sent it).
    pub fn handle(&mut self, now: Duration, payload: &[u8]) {
        let (foca, io) = self.io(now);
        if foca.handle_data(payload, io).is_err() {
            self.errors += 1;
        }
    }

    /// Runs the timers that came due and announces us to the peers not in our view.
    pub fn poll(&mut self, now: Duration) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            let (foca, io) = self.io(now);
            if foca.handle_timer(timer, io).is_err() {
                self.errors += 1;
            }
        }
        if now >= self.next_announce {
            let alone = self.foca.num_members() == 0;
            self.next_announce = now
                + if alone {
                    timing::ANNOUNCE_PERIOD_ALONE
                } else {
                    timing::ANNOUNCE_PERIOD
                };
            let unknown: Vec<Member> = self
                .peers
                .iter()
                .filter(|peer| self.liveness(&peer.name) != Some(Liveness::Alive))
                .map(Member::seed)
                .collect();
            for peer in unknown {
                let (foca, io) = self.io(now);
                if foca.announce(peer, io).is_err() {
                    self.errors += 1;
                }
            }
        }
    }

    /// When [`Self::poll`] next has something to do.
    pub fn next_wake(&self) -> Duration {
        let timer = self.timers.first_key_value().map(|((due, _), _)| *due);
        timer.map_or(self.next_announce, |due| due.min(self.next_announce))
    }

    /// The node's current identity and state, if foca knows it.
    pub fn member(&self, name: &str) -> Option<(&Member, Liveness)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.id().name == name)
            .max_by_key(|m| m.id().incarnation)
            .map(|m| {
                let liveness = match m.state() {
                    State::Alive => Liveness::Alive,
                    State::Suspect => Liveness::Suspect,
                    State::Down => Liveness::Down,
                };
                (m.id(), liveness)
            })
    }

    pub fn liveness(&self, name: &str) -> Option<Liveness> {
        self.member(name).map(|(_, liveness)| liveness)
    }

    /// Alive or suspected: not (yet) declared down.
    pub fn is_active(&self, name: &str) -> bool {
        matches!(
            self.liveness(name),
            Some(Liveness::Alive | Liveness::Suspect)
        )
    }
}
