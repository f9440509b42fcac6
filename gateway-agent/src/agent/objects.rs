//! Where the run loop's objects come from and what the model made of them last: the
//! source, the store it feeds, the model's per-service results, and the findings of the
//! state served. A read goes source -> store -> model; it is kept once the maps serve it,
//! or taken back.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use log::{info, warn};

use super::file::FileWatch;
use crate::config::{Config, Finding, LoadBalancerClasses, Severity};
use crate::model::{self, DesiredState, ModelCache};
use crate::plan::Interface;
use crate::source::file::{Documents, FileSource};
use crate::store::{Store, Undo};

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
}

/// What a source needs to know once the store's change is served: the file's documents,
/// compared with the next read.
pub(super) enum Read {
    File(Documents),
}

/// A read that the store and the model took, not served yet: what it asks of the maps,
/// and what keeps or drops it once the maps are written or refused it.
pub(super) struct Proposal {
    pub desired: DesiredState,
    pub undo: Undo,
    pub read: Read,
}

impl Objects {
    /// The objects of the file at `path`, watched for changes.
    pub(super) fn file(path: &Path, classes: LoadBalancerClasses) -> Self {
        let source = FileSource::new(path, classes);
        let store = Store::new(source.name());
        Self {
            source: Source::File {
                source,
                watch: FileWatch::new(path),
                applied: None,
                settled: None,
            },
            store,
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
        }
    }

    /// What this node must serve, from the source. A read the source refuses changes
    /// neither the source nor the store; one object's trouble is in the state's findings.
    pub(super) fn propose(
        &mut self,
        node_name: &str,
        interfaces: &[Interface],
    ) -> Result<Proposal> {
        let (batch, read) = match &mut self.source {
            Source::File {
                source, settled, ..
            } => {
                // The text the watch saw settle; else (SIGHUP) the file as it is now.
                let update = match settled.take() {
                    Some(text) => source.read_text(&text)?,
                    None => source.read()?,
                };
                (update.batch, Read::File(update.documents))
            }
        };
        let undo = self.store.apply(batch);
        let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
        let config = self.store.config();
        let desired = model::desired_state_cached(config, node_name, &names, &mut self.model);
        Ok(Proposal {
            desired,
            undo,
            read,
        })
    }

    /// The proposal's state, with these findings, is served: the next read is compared with
    /// it, and the findings not logged before are.
    pub(super) fn keep(&mut self, read: Read, findings: Vec<Finding>) {
        match (&mut self.source, read) {
            (Source::File { source, .. }, Read::File(documents)) => source.accept(documents),
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

    /// The proposal's state was refused: the store goes back to what serves.
    pub(super) fn take_back(&mut self, undo: Undo) {
        self.store.undo(undo);
    }

    /// Everything kept so far serves, attachments included: a change of the source is
    /// measured from here.
    pub(super) fn served(&mut self) {
        match &mut self.source {
            Source::File {
                source, applied, ..
            } => *applied = Some(source.digest()),
        }
    }
}
