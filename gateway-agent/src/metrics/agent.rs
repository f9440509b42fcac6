//! What the agent itself counts: reloads and their duration, announcements gained and lost,
//! and the membership's size once the agent runs a cluster. Cheap to clone; every clone
//! counts into the same metrics, so the run loop keeps one and the endpoint another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::cluster::{membership::Liveness, node::MemberView};

type Outcome = [(&'static str, &'static str); 1];
const APPLIED: Outcome = [("result", "applied")];
const REFUSED: Outcome = [("result", "refused")];

/// From a one-service change (tens of milliseconds) to 10,000 services (about a second).
const RELOAD_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

fn reload_histogram() -> Histogram {
    Histogram::new(RELOAD_BUCKETS)
}

#[derive(Clone)]
pub struct AgentMetrics {
    reloads: Family<Outcome, Counter>,
    reload_seconds: Family<Outcome, Histogram>,
    last_reload_successful: Gauge,
    gained: Counter,
    lost: Counter,
    members: Arc<Members>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let metrics = Self {
            reloads: Family::default(),
            reload_seconds: Family::new_with_constructor(reload_histogram),
            last_reload_successful: Gauge::default(),
            gained: Counter::default(),
            lost: Counter::default(),
            members: Arc::default(),
        };
        // Both outcomes show from the start, at 0: a query for refusals finds a series.
        for outcome in [APPLIED, REFUSED] {
            metrics.reloads.get_or_create_owned(&outcome);
            metrics.reload_seconds.get_or_create_owned(&outcome);
        }
        metrics.last_reload_successful.set(1);
        metrics
    }
}

impl AgentMetrics {
    /// A reload that changed the maps to what the file says.
    pub fn reload_applied(&self, took: Duration) {
        self.reload(APPLIED, took);
        self.last_reload_successful.set(1);
    }

    /// A reload that changed nothing: the file did not validate or did not fit.
    pub fn reload_refused(&self, took: Duration) {
        self.reload(REFUSED, took);
        self.last_reload_successful.set(0);
    }

    fn reload(&self, outcome: Outcome, took: Duration) {
        self.reloads.get_or_create(&outcome).inc();
        self.reload_seconds
            .get_or_create(&outcome)
            .observe(took.as_secs_f64());
    }

    /// Announcements (interface, VIP) this node started and stopped answering ARP for.
    pub fn announcements(&self, gained: usize, lost: usize) {
        self.gained.inc_by(gained as u64);
        self.lost.inc_by(lost as u64);
    }

    /// The cluster's members as this node sees them (us included), from the run loop while
    /// a cluster runs (every wake of its timers); alone, nothing calls this, and the metric
    /// is not exposed at all.
    pub fn members(&self, members: &[MemberView]) {
        let mut by_state = BTreeMap::new();
        for m in members {
            let state = match m.liveness {
                Some(Liveness::Alive) => "alive",
                Some(Liveness::Suspect) => "suspect",
                Some(Liveness::Down) => "down",
                None => "unknown",
            };
            *by_state.entry(state).or_insert(0) += 1;
        }
        *self.members.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(by_state);
    }

    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_build",
            "The agent's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "gateway_reloads",
            "Reloads of the objects file, by result: applied, or refused (the previous state \
             keeps serving)",
            self.reloads.clone(),
        );
        registry.register(
            "gateway_reload_duration_seconds",
            "Time from the start of a reload to the maps holding the new state (or to the \
             refusal)",
            self.reload_seconds.clone(),
        );
        registry.register(
            "gateway_config_last_reload_successful",
            "1 when the last reload was applied (or none was tried since the start), 0 while \
             the file on disk is refused",
            self.last_reload_successful.clone(),
        );
        registry.register(
            "gateway_announcements_gained",
            "Announcements (interface, VIP) this node started answering ARP for",
            self.gained.clone(),
        );
        registry.register(
            "gateway_announcements_lost",
            "Announcements (interface, VIP) this node stopped answering ARP for",
            self.lost.clone(),
        );
        registry.register_collector(Box::new(self.members.clone()));
    }
}

/// Members per state, once the cluster has reported them.
#[derive(Debug, Default)]
struct Members(Mutex<Option<BTreeMap<&'static str, u64>>>);

impl Collector for Members {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let members = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(by_state) = members.as_ref() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "gateway_cluster_members",
            "The cluster's members as this node sees them, by state (alive, suspect, down, \
             unknown: never heard of).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, count) in by_state {
            ConstGauge::new(*count as i64).encode(family.encode_family(&[("state", *state)])?)?;
        }
        Ok(())
    }
}
