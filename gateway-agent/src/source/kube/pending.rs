//! What the watches delivered and the store has not taken yet, coalesced: one entry per
//! object (the last word on it wins), a relist replacing its kind whole, so a burst of
//! updates (10,000 objects at start, a rollout's endpoints) becomes one batch and one plan.
//! Also what the source found about objects it could not serve, and whether every kind has
//! been listed once: the store gets nothing before that, so the first plan sees the whole
//! cluster.

use std::collections::{BTreeMap, BTreeSet};

use super::watch::{Outcome, Update};
use crate::config::{Finding, Kind, ObjectRef};
use crate::store::{Batch, Entry, Event};

/// One kind's changes since the last batch.
enum Changes {
    /// Relisted: these are all its objects.
    Replace(BTreeMap<ObjectRef, Entry>),
    /// Objects changed (`Some`) or gone (`None`).
    Each(BTreeMap<ObjectRef, Option<Entry>>),
}

#[derive(Default)]
pub(crate) struct Pending {
    kinds: BTreeMap<Kind, Changes>,
    /// The kinds listed at least once (or found not served).
    listed: BTreeSet<Kind>,
    /// What was found about each object that could not be served (it is not in the store).
    rejected: BTreeMap<ObjectRef, Vec<Finding>>,
    /// Kinds the API server does not serve, and what to do about it.
    missing: BTreeMap<Kind, Finding>,
    /// `rejected` or `missing` changed since the last batch.
    findings_changed: bool,
}

impl Pending {
    /// Takes in one update of a watch.
    pub(crate) fn absorb(&mut self, update: Update) {
        match update {
            Update::Relist(kind, outcomes) => {
                self.listed.insert(kind);
                self.findings_changed |= self.missing.remove(&kind).is_some();
                let before = self.rejected.len();
                self.rejected.retain(|object, _| object.kind != kind.name());
                self.findings_changed |= self.rejected.len() != before;
                let mut objects = BTreeMap::new();
                for outcome in outcomes {
                    match outcome {
                        Outcome::Served(entry) => {
                            objects.insert(entry.object.object_ref(), entry);
                        }
                        Outcome::Rejected(object, findings) => {
                            self.findings_changed = true;
                            self.rejected.insert(object, findings);
                        }
                        Outcome::Ignored(_) => {}
                    }
                }
                self.kinds.insert(kind, Changes::Replace(objects));
            }
            Update::Changed(outcome) => match outcome {
                Outcome::Served(entry) => {
                    let object = entry.object.object_ref();
                    self.unreject(&object);
                    self.change(object, Some(entry));
                }
                Outcome::Rejected(object, findings) => {
                    self.findings_changed = true;
                    self.rejected.insert(object.clone(), findings);
                    self.change(object, None);
                }
                Outcome::Ignored(object) => {
                    self.unreject(&object);
                    self.change(object, None);
                }
            },
            Update::Deleted(object) => {
                self.unreject(&object);
                self.change(object, None);
            }
            Update::Missing(kind, finding) => {
                self.listed.insert(kind);
                self.findings_changed = true;
                self.missing.insert(kind, finding);
                self.rejected.retain(|object, _| object.kind != kind.name());
                self.kinds.insert(kind, Changes::Replace(BTreeMap::new()));
            }
        }
    }

    fn unreject(&mut self, object: &ObjectRef) {
        self.findings_changed |= self.rejected.remove(object).is_some();
    }

    /// Records the last word on `object`: `Some` applied, `None` gone.
    fn change(&mut self, object: ObjectRef, entry: Option<Entry>) {
        let Some(kind) = Kind::named(&object.kind) else {
            return;
        };
        match self
            .kinds
            .entry(kind)
            .or_insert_with(|| Changes::Each(BTreeMap::new()))
        {
            Changes::Replace(objects) => match entry {
                Some(entry) => {
                    objects.insert(object, entry);
                }
                None => {
                    objects.remove(&object);
                }
            },
            Changes::Each(changes) => {
                changes.insert(object, entry);
            }
        }
    }

    /// Every kind has been listed once: the store may have what there is.
    pub(crate) fn listed(&self) -> bool {
        Kind::ALL.iter().all(|kind| self.listed.contains(kind))
    }

    /// Whether there is anything for the store.
    pub(crate) fn is_empty(&self) -> bool {
        self.kinds.is_empty() && !self.findings_changed
    }

    /// What the watches delivered since the last batch, as one batch.
    pub(crate) fn take(&mut self) -> Batch {
        let mut events = Vec::new();
        for (kind, changes) in std::mem::take(&mut self.kinds) {
            match changes {
                Changes::Replace(objects) => {
                    events.push(Event::ReplaceKind(kind, objects.into_values().collect()))
                }
                Changes::Each(changes) => {
                    events.extend(changes.into_iter().map(|(object, entry)| match entry {
                        Some(entry) => Event::Apply(entry),
                        None => Event::Delete(object),
                    }))
                }
            }
        }
        let source_findings = std::mem::take(&mut self.findings_changed).then(|| {
            (self.missing.values().cloned())
                .chain(self.rejected.values().flatten().cloned())
                .collect()
        });
        Batch {
            events,
            source_findings,
        }
    }

    /// The store refused `batch` (taken from here, nothing taken since): it is pending
    /// again, before anything that came after it.
    pub(crate) fn put_back(&mut self, batch: Batch) {
        let later = std::mem::take(&mut self.kinds);
        for event in batch.events {
            match event {
                Event::ReplaceKind(kind, entries) => {
                    let objects = entries
                        .into_iter()
                        .map(|entry| (entry.object.object_ref(), entry))
                        .collect();
                    self.kinds.insert(kind, Changes::Replace(objects));
                }
                Event::Apply(entry) => self.change(entry.object.object_ref(), Some(entry)),
                Event::Delete(object) => self.change(object, None),
            }
        }
        for (kind, changes) in later {
            match changes {
                Changes::Replace(objects) => {
                    self.kinds.insert(kind, Changes::Replace(objects));
                }
                Changes::Each(changes) => {
                    for (object, entry) in changes {
                        self.change(object, entry);
                    }
                }
            }
        }
        self.findings_changed |= batch.source_findings.is_some();
    }
}

#[cfg(test)]
mod tests;
