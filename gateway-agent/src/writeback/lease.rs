//! Which agent writes status: the holder of a `coordination.k8s.io/v1` Lease in the agent's
//! namespace, as client-go's leader election chooses one. Every agent reads the Lease every
//! [`RETRY`]; the holder renews it then (one write per agent every 2 s at most), the others
//! take it over once it has not changed for [`LEASE_DURATION`] by their own clock, or at once
//! when it is released. Writes carry the resource version read, so of two agents taking it
//! over at once only one succeeds.
//!
//! An agent writes only while its last successful renewal is less than [`RENEW_DEADLINE`]
//! old: shorter than the time the others wait, so a holder cut off from the API server stops
//! writing before anyone else starts.
//!
//! kube-lease-manager (the maintained crate for kube 5) was looked at: it does not say when
//! the holder's renewal last succeeded, and keeps reporting leadership across failed
//! renewals, so a writer could not stop in time; the rules above are a few lines.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use log::{info, warn};

/// The Lease's name in the agent's namespace.
pub const LEASE_NAME: &str = "gateway-agent-status";
/// How long the others wait for a Lease that does not change before taking it over.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a holder keeps writing after its last successful renewal.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often every agent reads the Lease, and the holder renews it.
pub const RETRY: Duration = Duration::from_secs(2);

/// What a Lease says, as far as choosing a holder goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Empty when released.
    pub holder: String,
    pub renew_time: Option<String>,
    pub transitions: i32,
    pub resource_version: String,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.unwrap_or_default(),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
        }
    }

    /// The same holder and renewal: the Lease did not move.
    fn same_as(&self, other: &Record) -> bool {
        self.holder == other.holder && self.renew_time == other.renew_time
    }
}

/// The next write to the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, held by this agent.
    Create,
    /// Take it over from `from` (empty: released).
    Acquire { from: Record },
    /// It is this agent's: renew it.
    Renew { from: Record },
    /// Someone else holds it.
    Wait,
}

/// One agent's view of the election (no I/O: the clock is passed in).
pub struct Election {
    identity: String,
    /// The Lease as last read, and when it last changed by this agent's clock.
    seen: Option<(Record, Instant)>,
    /// When this agent's last successful write to the Lease was.
    renewed: Option<Instant>,
}

impl Election {
    pub fn new(identity: &str) -> Self {
        Self {
            identity: identity.to_owned(),
            seen: None,
            renewed: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The Lease was read as `lease` (`None`: there is none) at `now`; what to write next.
    pub fn observe(&mut self, now: Instant, lease: Option<Record>) -> Step {
        let Some(record) = lease else {
            self.seen = None;
            return Step::Create;
        };
        let since = match &self.seen {
            Some((seen, since)) if seen.same_as(&record) => *since,
            _ => now,
        };
        self.seen = Some((record.clone(), since));
        if record.holder == self.identity {
            Step::Renew { from: record }
        } else if record.holder.is_empty() || now.duration_since(since) >= LEASE_DURATION {
            Step::Acquire { from: record }
        } else {
            // Someone else holds it now, whatever this agent thought.
            self.renewed = None;
            Step::Wait
        }
    }

    /// The write of the last step succeeded at `now`.
    pub fn written(&mut self, now: Instant, record: Record) {
        self.seen = Some((record, now));
        self.renewed = Some(now);
    }

    /// The write was refused because the Lease changed meanwhile: someone else has it.
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// Whether this agent may write status at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|renewed| now.duration_since(renewed) < RENEW_DEADLINE)
    }
}

/// `step`'s Lease, as written at `now` by `identity`.
fn lease(step: &Step, identity: &str, now: Timestamp) -> Option<Lease> {
    let (from, transitions, acquired) = match step {
        Step::Create => (None, 0, true),
        Step::Acquire { from } => (Some(from), from.transitions + 1, true),
        Step::Renew { from } => (Some(from), from.transitions, false),
        Step::Wait => return None,
    };
    Some(Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            resource_version: from.map(|f| f.resource_version.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.into()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.then_some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    })
}

/// The election, shared by the campaign (which reads and writes the Lease) and the writer
/// (which asks whether it may write).
pub type Shared = Arc<Mutex<Election>>;

fn lock(election: &Shared) -> MutexGuard<'_, Election> {
    // A panic elsewhere left the election as it was: still the best knowledge there is.
    election.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this agent may write status now.
pub fn leading(election: &Shared) -> bool {
    lock(election).leading(Instant::now())
}

/// Takes part in the election until dropped: a round every [`RETRY`], whatever the writer
/// is doing meanwhile.
pub async fn campaign(api: Api<Lease>, election: Shared) {
    // An error is logged when it is new, not every round it persists.
    let mut last_error = None;
    loop {
        match round(&api, &election).await {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!("the status Lease {LEASE_NAME} answers again");
                }
            }
            Err(e) => {
                let error = e.to_string();
                if last_error.as_ref() != Some(&error) {
                    warn!("the status Lease {LEASE_NAME}: {error}; trying again every {RETRY:?}");
                }
                last_error = Some(error);
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One round: read the Lease, write it if this agent holds it or may take it over.
async fn round(api: &Api<Lease>, election: &Shared) -> kube::Result<()> {
    let current = api.get_opt(LEASE_NAME).await?;
    let (step, identity) = {
        let mut election = lock(election);
        let step = election.observe(Instant::now(), current.as_ref().map(Record::of));
        (step, election.identity().to_owned())
    };
    let Some(mut lease) = lease(&step, &identity, Timestamp::now()) else {
        return Ok(());
    };
    // A renewal keeps what was there (an acquire time the holder set, say).
    if let (Step::Renew { .. }, Some(current)) = (&step, &current) {
        let mut spec = current.spec.clone().unwrap_or_default();
        let written = lease.spec.take().unwrap_or_default();
        spec.renew_time = written.renew_time;
        spec.lease_duration_seconds = written.lease_duration_seconds;
        lease.spec = Some(spec);
    }
    // Leadership counts from when the write was sent, not from when it was answered.
    let sent = Instant::now();
    let result = match step {
        Step::Create => api.create(&PostParams::default(), &lease).await,
        _ => {
            api.replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(written) => {
            lock(election).written(sent, Record::of(&written));
            Ok(())
        }
        // Someone else wrote it first.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            lock(election).lost();
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Gives the Lease up, if this agent holds it, so another takes over at its next read.
pub async fn release(api: &Api<Lease>, election: &Shared) -> kube::Result<()> {
    if !leading(election) {
        return Ok(());
    }
    let identity = lock(election).identity().to_owned();
    let Some(mut current) = api.get_opt(LEASE_NAME).await? else {
        return Ok(());
    };
    if Record::of(&current).holder != identity {
        return Ok(());
    }
    if let Some(spec) = current.spec.as_mut() {
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    lock(election).lost();
    api.replace(LEASE_NAME, &PostParams::default(), &current)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewed: u32, version: u32) -> Record {
        Record {
            holder: holder.into(),
            renew_time: Some(format!("t{renewed}")),
            transitions: 0,
            resource_version: version.to_string(),
        }
    }

    #[test]
    fn the_first_agent_creates_the_lease_and_leads_while_it_renews() {
        let start = Instant::now();
        let mut a = Election::new("a");
        assert_eq!(a.observe(start, None), Step::Create);
        assert!(!a.leading(start));
        a.written(start, record("a", 0, 1));
        assert!(a.leading(start));
        let later = start + RETRY;
        assert!(matches!(
            a.observe(later, Some(record("a", 0, 1))),
            Step::Renew { .. }
        ));
        a.written(later, record("a", 1, 2));
        assert!(a.leading(later + RENEW_DEADLINE - Duration::from_millis(1)));
        assert!(!a.leading(later + RENEW_DEADLINE));
    }

    #[test]
    fn another_agent_waits_while_the_lease_moves_and_takes_over_only_after_the_holder_stopped_writing()
     {
        let start = Instant::now();
        let (mut a, mut b) = (Election::new("a"), Election::new("b"));
        a.written(start, record("a", 0, 1));
        // a renews every RETRY: b sees it move and waits, however long that goes on.
        let mut now = start;
        for renewal in 1..20 {
            now = start + RETRY * renewal;
            a.written(now, record("a", renewal, renewal + 1));
            assert_eq!(
                b.observe(now, Some(record("a", renewal, renewal + 1))),
                Step::Wait
            );
        }
        // a stops renewing (crashed, or cut off from the API server).
        let last = now;
        let mut took_over = None;
        for tick in 1..20 {
            let t = last + RETRY * tick;
            if let Step::Acquire { from } = b.observe(t, Some(record("a", 19, 20))) {
                took_over = Some(t);
                assert_eq!(from.holder, "a");
                break;
            }
        }
        let took_over = took_over.expect("b never took over");
        assert!(took_over.duration_since(last) >= LEASE_DURATION);
        // a had stopped writing status before b could start: never two writers.
        assert!(!a.leading(took_over));
        assert!(took_over.duration_since(last) <= LEASE_DURATION + RETRY);
    }

    #[test]
    fn a_released_lease_is_taken_at_the_next_read() {
        let now = Instant::now();
        let mut b = Election::new("b");
        assert_eq!(b.observe(now, Some(record("a", 0, 1))), Step::Wait);
        let released = record("", 1, 2);
        assert_eq!(
            b.observe(now + RETRY, Some(released.clone())),
            Step::Acquire { from: released }
        );
    }

    #[test]
    fn a_holder_that_finds_someone_else_holding_it_stops_leading_at_once() {
        let now = Instant::now();
        let mut a = Election::new("a");
        a.written(now, record("a", 0, 1));
        assert_eq!(a.observe(now + RETRY, Some(record("b", 1, 2))), Step::Wait);
        assert!(!a.leading(now + RETRY));
        let mut c = Election::new("c");
        c.written(now, record("c", 0, 1));
        c.lost();
        assert!(!c.leading(now));
    }

    #[test]
    fn leases_written_carry_the_version_read_and_count_transitions() {
        let now = Timestamp::now();
        let mut from = record("a", 0, 7);
        from.transitions = 3;
        let acquired = lease(&Step::Acquire { from: from.clone() }, "b", now).unwrap();
        assert_eq!(acquired.metadata.resource_version.as_deref(), Some("7"));
        let spec = acquired.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let renewed = lease(&Step::Renew { from }, "a", now).unwrap();
        assert_eq!(renewed.spec.unwrap().lease_transitions, Some(3));
        assert!(lease(&Step::Wait, "a", now).is_none());
    }
}
