//! Write-back: the VIPs and the reasons go back to the objects, so `kubectl get svc` shows
//! each Service's EXTERNAL-IP and `kubectl get ippools` each pool's counts, as with Cilium.
//! Exactly one agent writes at a time: the holder of a Lease in the agent's namespace. Every
//! agent computes the same answer from the same objects; the others write nothing. Since
//! the allocations are read back from the Services' status (IPAM keeps a VIP recorded
//! there), they survive agent restarts and a change of writer.
//!
//! | file | holds |
//! | --- | --- |
//! | `desired.rs` | what the status should say, from the store's objects and the model (pure) |
//! | `observed.rs` | what the status says now, as the watches see it |
//! | `lease.rs` | which agent writes: the Lease, renewed and taken over as client-go does |
//! | `writer.rs` | the writes where the two differ, and what a Service no longer served still carries removed |
//! | `events.rs` | the Events on Services: each finding once, when it appears |

use std::sync::Arc;
use std::time::Duration;

use log::warn;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::source::kube::Cluster;

mod desired;
mod events;
mod lease;
pub(crate) mod observed;
mod writer;

pub use desired::{Desired, desired};
pub use observed::Observed;

/// The field manager of the status writes (what the agent wrote is known by it) and the
/// Events' reporting controller.
pub const MANAGER: &str = "gateway-agent";

/// How long stopping may wait to give the Lease up.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// The writer task, fed the status every change calls for.
pub struct StatusWriter {
    /// `None` until the run loop first publishes: nothing is written before.
    desired: watch::Sender<Option<Arc<Desired>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl StatusWriter {
    /// Starts taking part in the election for the Lease in `namespace` as `identity` (the
    /// node's name), writing while it holds it. `observed` is filled by the source's watches.
    pub fn start(cluster: &Cluster, namespace: &str, identity: &str, observed: Observed) -> Self {
        let (desired, updates) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(writer::run(
            cluster.client.clone(),
            namespace.to_owned(),
            identity.to_owned(),
            observed,
            updates,
            stopped,
        ));
        Self {
            desired,
            stop: Some(stop),
            task,
        }
    }

    /// What the status should say now.
    pub fn publish(&self, desired: Desired) {
        self.desired.send_if_modified(|held| {
            let changed = held.as_deref() != Some(&desired);
            if changed {
                *held = Some(Arc::new(desired));
            }
            changed
        });
    }

    /// Stops writing and gives the Lease up, so another agent takes over at once.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(RELEASE_TIMEOUT, &mut self.task)
            .await
            .is_err()
        {
            warn!("the status writer did not stop within {RELEASE_TIMEOUT:?}");
        }
    }
}
