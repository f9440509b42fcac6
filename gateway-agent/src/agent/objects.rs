//! Where the run loop's objects come from and what the model made of them last: the
//! source (the file, or the cluster's watches), the store it feeds, the model's
//! per-service results, and the findings of the state served. A read goes source -> store
//! -> model; it is kept once the maps serve it, or taken back: the file is read again whole
//! next time, the cluster's batch goes back to be taken again with what comes after it.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use log::{info, warn};

use super::file::FileWatch;
use crate::config::{Config, Finding, LoadBalancerClasses, Severity};
use crate::model::{self, DesiredState, ModelCache};
use crate::plan::Interface;
use crate::source::file::{Documents, FileSource};
use crate::source::kube::{Cluster, ClusterSource};
use crate::store::{Batch, Store, Undo};
use crate::writeback::Observed;

pub(super) struct Objects {
    source: Source,
    store: Store,
    model: ModelCache,
    /// Logged when they appear, not on every reload.
    findings: Vec<Finding>,
}

/// A source and how the run loop learns that it changed.
enum Source {
    /// The file, re-read whole when it changes; `applied` is the digest of the documents
    /// that serve.
    File {
        source: FileSource,
        watch: FileWatch,
        applied: Option<u64>,
        /// The file's text as the watch read it once it had settled, for the next read.
        settled: Option<String>,
    },
    /// The cluster, watched: batches of what changed.
    Cluster(ClusterSource),
}

/// What a source needs to know once the store's change is served or refused: the file's
/// documents, compared with the next read; the cluster's batch, taken again if refused.
pub(super) enum Delivery {
    File(Documents),
    Cluster(Batch),
}

/// A read that the store and the model took, not served yet: what it asks of the maps,
/// and what keeps or drops it once the maps are written or refused it.
pub(super) struct Proposal {
    pub desired: DesiredState,
    pub undo: Undo,
    pub delivery: Delivery,
}

impl Objects {
    /// The objects of the file at `path`, watched for changes.
    pub(super) fn file(path: &Path, classes: LoadBalancerClasses) -> Self {
        let source = FileSource::new(path, classes);
        Self::new(Source::File {
            watch: FileWatch::new(path),
            applied: None,
            settled: None,
            source,
        })
    }

    /// The cluster's objects, as its watches deliver them; `observed` follows the status of
    /// the objects the agent writes back.
    pub(super) fn cluster(
        cluster: &Cluster,
        classes: LoadBalancerClasses,
        observed: Observed,
    ) -> Self {
        Self::new(Source::Cluster(ClusterSource::watch(
            cluster,
            classes,
            Some(observed),
        )))
    }

    fn new(source: Source) -> Self {
        let name = match &source {
            Source::File { source, .. } => source.name(),
            Source::Cluster(source) => source.name(),
        };
        Self {
            store: Store::new(name),
            source,
            model: ModelCache::default(),
            findings: Vec::new(),
        }
    }

    /// The source's name, as findings and the log give it.
    pub(super) fn name(&self) -> &str {
        &self.store.config().source
    }

    /// The objects the store holds.
    pub(super) fn config(&self) -> &Config {
        self.store.config()
    }

    /// The findings of the state served.
    pub(super) fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Waits until the source has something new; says what. Cancel-safe.
    pub(super) async fn changed(&mut self) -> &'static str {
        match &mut self.source {
            Source::File {
                watch,
                applied,
                settled,
                ..
            } => {
                *settled = watch.changed(*applied).await;
                "file changed"
            }
            Source::Cluster(source) => {
                source.changed().await;
                "cluster changed"
            }
        }
    }

    /// The first proposal: the file's as it is; the cluster's once every kind is listed.
    pub(super) async fn first_proposal(
        &mut self,
        node_name: &str,
        interfaces: &[Interface],
    ) -> Result<Proposal> {
        if let Source::Cluster(source) = &mut self.source {
            source.changed().await;
        }
        self.propose(node_name, interfaces)
    }

    /// What this node must serve, from the source. A read the source refuses changes
    /// neither the source nor the store; one object's trouble is in the state's findings.
    pub(super) fn propose(
        &mut self,
        node_name: &str,
        interfaces: &[Interface],
    ) -> Result<Proposal> {
        let (batch, delivery) = match &mut self.source {
            Source::File {
                source, settled, ..
            } => {
                // The text the watch saw settle; else (SIGHUP) the file as it is now.
                let update = match settled.take() {
                    Some(text) => source.read_text(&text)?,
                    None => source.read()?,
                };
                (update.batch, Delivery::File(update.documents))
            }
            Source::Cluster(source) => {
                let batch = source.take();
                (batch.clone(), Delivery::Cluster(batch))
            }
        };
        let undo = self.store.apply(batch);
        let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
        let config = self.store.config();
        let desired = model::desired_state_cached(config, node_name, &names, &mut self.model);
        Ok(Proposal {
            desired,
            undo,
            delivery,
        })
    }

    /// The proposal's state, with these findings, is served: the next read is compared with
    /// it, and the findings not logged before are.
    pub(super) fn keep(&mut self, delivery: Delivery, findings: Vec<Finding>) {
        if let (Source::File { source, .. }, Delivery::File(documents)) =
            (&mut self.source, delivery)
        {
            source.accept(documents);
        }
        let before: BTreeSet<&Finding> = self.findings.iter().collect();
        for f in findings.iter().filter(|f| !before.contains(f)) {
            match f.severity {
                Severity::Info => info!("{f} ({})", f.reason),
                Severity::Warning | Severity::Error => warn!("{f} ({})", f.reason),
            }
        }
        self.findings = findings;
    }

    /// The proposal's state was refused (by the maps): the store goes back to what serves,
    /// and the cluster's batch is pending again (the file is read whole next time anyway).
    pub(super) fn take_back(&mut self, undo: Undo, delivery: Delivery) {
        self.store.undo(undo);
        if let (Source::Cluster(source), Delivery::Cluster(batch)) = (&mut self.source, delivery) {
            source.put_back(batch);
        }
    }

    /// Everything kept so far serves, attachments included: a change of the source is
    /// measured from here.
    pub(super) fn served(&mut self) {
        if let Source::File {
            source, applied, ..
        } = &mut self.source
        {
            *applied = Some(source.digest());
        }
    }
}
