//! The Kubernetes source: Services, EndpointSlices, Nodes, CiliumLoadBalancerIPPools and
//! CiliumL2AnnouncementPolicies, watched (never polled) through the API server.
//!
//! Each kind has its own watch (`watch`), which judges every object as the file source
//! judges it (`object`: the same conversions, through `source::convert`); an object that
//! does not deserialize or convert is rejected with what was found, logged and kept as a
//! finding about it (the status write-back shows it on the object), and the others serve.
//! What the watches deliver is coalesced (`pending`): one entry per object, a relist
//! replacing its kind whole, so a burst (10,000 objects at start) makes one batch for the
//! store and one plan. Nothing reaches the store before every kind has been listed once.
//!
//! | file | holds |
//! | --- | --- |
//! | `client.rs` | connecting: `--kubeconfig`, `$KUBECONFIG`, the pod's service account |
//! | `resources.rs` | where each kind is read from; which Cilium versions the server serves |
//! | `object.rs` | one object from the API server into an entry, or rejected with why |
//! | `watch.rs` | one kind's watch, resumed and relisted as kube-rs's watcher does |
//! | `pending.rs` | what the watches delivered and the store has not taken, coalesced |
//! | `list.rs` | every kind listed once, for `check` and `doctor` |

use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::time::{Instant, sleep_until};

use crate::config::{Kind, LoadBalancerClasses};
use crate::store::Batch;
use crate::writeback::Observed;
use pending::Pending;

mod client;
mod list;
mod object;
mod pending;
pub(crate) mod resources;
mod watch;

pub use client::{Cluster, SOURCE_PREFIX, connect};
pub use list::load;

/// Updates arriving closer together than this are one burst, taken as one batch...
const BURST_GAP: Duration = Duration::from_millis(20);
/// ... unless the burst lasts longer than this: then what came so far is taken.
const BURST_LONGEST: Duration = Duration::from_millis(200);

/// The cluster's objects as the watches deliver them, for the run loop.
pub struct ClusterSource {
    name: String,
    updates: UnboundedReceiver<watch::Update>,
    pending: Pending,
    /// While updates come in a burst: when it is taken at the latest.
    burst: Option<Instant>,
}

impl ClusterSource {
    /// Starts one watch per kind on the current runtime, serving Services of `classes`.
    /// They run until this is dropped. `observed`, when given, is kept up to date with the
    /// status of the objects whose status the agent writes.
    pub fn watch(
        cluster: &Cluster,
        classes: LoadBalancerClasses,
        observed: Option<Observed>,
    ) -> Self {
        let name = cluster.name.clone();
        let (sender, updates) = mpsc::unbounded_channel();
        for kind in Kind::ALL {
            tokio::spawn(watch::watch(
                cluster.client.clone(),
                kind,
                name.clone(),
                classes.clone(),
                sender.clone(),
                observed.clone(),
            ));
        }
        Self {
            name,
            updates,
            pending: Pending::default(),
            burst: None,
        }
    }

    /// The API server, as findings and the log name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until every kind has been listed and something is pending, taking in the rest
    /// of a burst first. Cancel-safe: what arrived is kept, and so is a burst under way (the
    /// run loop's other inputs, such as the cluster's timers, cut waits short all the time).
    pub async fn changed(&mut self) {
        loop {
            let Some(burst) = self.burst else {
                let Some(update) = self.updates.recv().await else {
                    // Every watch has ended: nothing will come any more.
                    return std::future::pending().await;
                };
                self.pending.absorb(update);
                self.burst = Some(Instant::now() + BURST_LONGEST);
                continue;
            };
            let gap = (Instant::now() + BURST_GAP).min(burst);
            tokio::select! {
                update = self.updates.recv() => match update {
                    Some(update) => self.pending.absorb(update),
                    None => self.burst = None,
                },
                _ = sleep_until(gap) => self.burst = None,
            }
            if self.burst.is_none() && self.pending.listed() && !self.pending.is_empty() {
                return;
            }
        }
    }

    /// What arrived since the last batch, as one batch (empty before every kind is listed).
    pub fn take(&mut self) -> Batch {
        if self.pending.listed() {
            self.pending.take()
        } else {
            Batch::default()
        }
    }

    /// The store refused `batch`, the last one taken: it is pending again.
    pub fn put_back(&mut self, batch: Batch) {
        self.pending.put_back(batch);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ObjectRef;

    #[test]
    fn a_burst_cut_short_by_another_input_is_still_taken() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (sender, updates) = mpsc::unbounded_channel();
            let mut source = ClusterSource {
                name: "api".into(),
                updates,
                pending: Pending::default(),
                burst: None,
            };
            for kind in Kind::ALL {
                sender
                    .send(watch::Update::Relist(kind, Vec::new()))
                    .unwrap();
            }
            source.changed().await;
            source.take();
            let gone = ObjectRef {
                kind: Kind::Service.name().into(),
                namespace: "shop".into(),
                name: "web".into(),
            };
            sender.send(watch::Update::Deleted(gone)).unwrap();
            // The run loop's select! drops the wait while the burst is still open...
            let cut = tokio::time::timeout(BURST_GAP / 4, source.changed()).await;
            assert!(cut.is_err(), "the burst was still open");
            // ... and the next wait takes what came, with nothing more arriving.
            tokio::time::timeout(Duration::from_secs(5), source.changed())
                .await
                .expect("the update that came before the cut is taken");
            assert!(!source.take().events.is_empty());
        });
    }
}
