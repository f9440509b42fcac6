//! The events that take the store from the file's accepted read to this one. Only the
//! documents that changed say anything: the objects of a document that left are deleted
//! unless a new document delivers them again, and the objects of a new document are
//! applied unless a document that left delivered them just the same. When most of the
//! file changed (or nothing was accepted yet), every kind is sent whole, as a watch's
//! relist is: one sort beats thousands of insertions.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::dispatch::ParsedDocument;
use crate::config::{Finding, Kind, ObjectRef};
use crate::store::{Entry, Event};

/// A change of more documents than this (and more than a quarter of the file) is sent as a
/// relist.
const RELIST_ABOVE: usize = 64;

/// Whether a read whose `changed` documents (left or new) differ from the `accepted`
/// read's is better sent as a relist.
pub(super) fn relist(accepted: usize, changed: usize) -> bool {
    accepted == 0 || changed > RELIST_ABOVE.max(accepted / 4)
}

/// Every kind whole, from every document of the read.
pub(super) fn all_kinds<'d>(documents: impl Iterator<Item = &'d ParsedDocument>) -> Vec<Event> {
    let mut by_kind: BTreeMap<Kind, Vec<Entry>> = Kind::ALL
        .into_iter()
        .map(|kind| (kind, Vec::new()))
        .collect();
    for parsed in documents {
        for entry in &parsed.entries {
            by_kind
                .entry(entry.object.kind())
                .or_default()
                .push(entry.clone());
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, entries)| Event::ReplaceKind(kind, entries))
        .collect()
}

/// The objects of the `added` documents applied, and those of the `removed` ones that no
/// added document delivers deleted. An object a removed document delivered just the same
/// (its document changed elsewhere, or only moved) is no change.
pub(super) fn changes(removed: &[&ParsedDocument], added: &[&ParsedDocument]) -> Vec<Event> {
    let before: HashMap<ObjectRef, &Entry> = removed
        .iter()
        .flat_map(|parsed| &parsed.entries)
        .map(|entry| (entry.object.object_ref(), entry))
        .collect();
    let mut delivered = HashSet::new();
    let mut applied = Vec::new();
    for entry in added.iter().flat_map(|parsed| &parsed.entries) {
        let object = entry.object.object_ref();
        if before.get(&object) != Some(&entry) {
            applied.push(Event::Apply(entry.clone()));
        }
        delivered.insert(object);
    }
    let mut deleted: Vec<ObjectRef> = before
        .into_keys()
        .filter(|object| !delivered.contains(object))
        .collect();
    // Sorted, so that one change makes one batch, whatever the hash map's order.
    deleted.sort_unstable();
    deleted
        .into_iter()
        .map(Event::Delete)
        .chain(applied)
        .collect()
}

/// The source's own findings: those of every document about nothing it delivers.
pub(super) fn source_findings<'d>(
    documents: impl Iterator<Item = &'d ParsedDocument>,
) -> Vec<Finding> {
    documents
        .flat_map(|parsed| &parsed.findings)
        .cloned()
        .collect()
}
