//! The file source: one multi-document YAML file (a `kubectl get -o yaml` export or
//! hand-written manifests), read whole on every change.
//!
//! A read is checked before anything is applied: a syntax error, a type error, a duplicate
//! object (what the rule in `config::error` calls fatal) refuses the whole read, with every
//! error of the file, and produces no events. Everything else stays with its object as a
//! finding. A read that checks out becomes an [`Update`]: the batch that takes the store
//! from the accepted read to this one, and the documents to remember once the store (and
//! whoever checks after it) has taken it.
//!
//! | file | holds |
//! | --- | --- |
//! | `documents.rs` | splitting the text into documents |
//! | `cache.rs` | the accepted read's documents by content: parse only what changed |
//! | `dispatch.rs` | one document: YAML, then by kind into typed objects |
//! | `duplicates.rs` | one object written twice |
//! | `events.rs` | the events from the documents that changed |

use std::path::{Path, PathBuf};

use crate::config::{
    Config, ConfigError, ConfigErrors, Diagnostics, LoadBalancerClasses, ObjectRef,
};
use crate::store::{Batch, Store};

mod cache;
mod dispatch;
mod documents;
mod duplicates;
mod events;

use cache::{DocumentCache, IncomingDocument, ParseResult};
use dispatch::{Origin, ParsedDocument, parse_document};
use duplicates::{Written, duplicates};

/// The file's objects, as the store should hold them.
pub struct FileSource {
    path: PathBuf,
    /// The file's name in every finding.
    name: String,
    /// The Services of other classes are left alone.
    classes: LoadBalancerClasses,
    /// The documents of the last read the store took.
    cache: DocumentCache,
}

/// A read that checked out: the batch to apply, and the documents to remember
/// ([`FileSource::accept`]) once it is applied.
pub struct Update {
    pub batch: Batch,
    pub documents: Documents,
}

/// The documents of a read, for [`FileSource::accept`].
pub struct Documents(Vec<IncomingDocument>);

impl FileSource {
    pub fn new(path: &Path, classes: LoadBalancerClasses) -> Self {
        Self {
            path: path.to_owned(),
            name: path.display().to_string(),
            classes,
            cache: DocumentCache::default(),
        }
    }

    /// The file's name, as findings give it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the file and checks it against the accepted read; nothing changes here until
    /// [`Self::accept`].
    pub fn read(&self) -> Result<Update, ConfigErrors> {
        let text = std::fs::read_to_string(&self.path).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: self.name.clone(),
                object: None,
                field: String::new(),
                message: format!("cannot read: {error}"),
            }])
        })?;
        self.read_text(&text)
    }

    /// [`Self::read`] on `text` as the file's content. Returns every error of the file, not
    /// just the first.
    pub fn read_text(&self, text: &str) -> Result<Update, ConfigErrors> {
        let incoming = self.cache.incoming(text, |document| {
            parse_document(&self.name, document, &self.classes)
        })?;
        let accepted = self.cache.accepted();
        // Only documents that left or came can change anything: the others hold the objects
        // the store holds.
        let mut kept = vec![false; accepted.len()];
        let mut added: Vec<&ParsedDocument> = Vec::new();
        for document in &incoming {
            match &document.result {
                ParseResult::Accepted(i) if !kept[*i] => kept[*i] = true,
                // A second copy of an accepted document delivers its objects again.
                ParseResult::Accepted(i) => added.push(&accepted[*i].parsed),
                ParseResult::New(parsed) => added.push(parsed),
            }
        }
        let removed: Vec<&ParsedDocument> = (kept.iter().enumerate())
            .filter(|(_, kept)| !**kept)
            .map(|(i, _)| &*accepted[i].parsed)
            .collect();

        let mut diagnostics = Diagnostics::new(&self.name);
        // The accepted documents had none: errors can only be new.
        for parsed in &added {
            diagnostics.absorb(parsed.errors.iter().cloned(), []);
        }
        // The accepted read had no duplicates: there can only be one if the objects written
        // are not the same as before.
        if !same_objects_written(&removed, &added) {
            let written = incoming.iter().flat_map(|document| {
                let line = document.line;
                self.cache
                    .parsed(document)
                    .seen
                    .iter()
                    .map(move |seen| Written {
                        object: &seen.object,
                        origin: Origin {
                            line,
                            item: seen.item,
                        },
                    })
            });
            duplicates(written, &mut diagnostics);
        }
        if diagnostics.has_errors() {
            return Err(diagnostics.into_errors());
        }

        let relist = events::relist(accepted.len(), removed.len() + added.len());
        let events = if relist {
            events::all_kinds(self.all_parsed(&incoming))
        } else {
            events::changes(&removed, &added)
        };
        let findings_changed = relist
            || removed
                .iter()
                .chain(&added)
                .any(|parsed| !parsed.findings.is_empty());
        let source_findings = findings_changed.then(|| {
            events::source_findings(
                incoming
                    .iter()
                    .filter(|document| document.flags.source_findings)
                    .map(|document| self.cache.parsed(document)),
            )
        });
        Ok(Update {
            batch: Batch {
                events,
                source_findings,
            },
            documents: Documents(incoming),
        })
    }

    /// The store took the read `documents` came from: the next read is compared with it.
    pub fn accept(&mut self, documents: Documents) {
        self.cache.accept(documents.0);
    }

    /// What the accepted read was made of: equal to [`digest`] of a file whose documents
    /// are the same.
    pub fn digest(&self) -> u64 {
        self.cache.digest()
    }

    fn all_parsed<'c>(
        &'c self,
        incoming: &'c [IncomingDocument],
    ) -> impl Iterator<Item = &'c ParsedDocument> {
        incoming.iter().map(|document| self.cache.parsed(document))
    }
}

/// Whether the `removed` documents write the same objects as the `added` ones.
fn same_objects_written(removed: &[&ParsedDocument], added: &[&ParsedDocument]) -> bool {
    fn written<'d>(documents: &[&'d ParsedDocument]) -> Vec<&'d ObjectRef> {
        let mut objects: Vec<&ObjectRef> = documents
            .iter()
            .flat_map(|parsed| &parsed.seen)
            .map(|seen| &seen.object)
            .collect();
        objects.sort_unstable();
        objects
    }
    let count = |documents: &[&ParsedDocument]| -> usize {
        documents.iter().map(|parsed| parsed.seen.len()).sum()
    };
    count(removed) == count(added) && written(removed) == written(added)
}

/// A digest of the documents of `text`, to tell a change of the file that matters from
/// one that does not without parsing it.
pub fn digest(text: &str) -> u64 {
    cache::digest(text)
}

/// Reads the objects of the file at `path` into a store of their own: what `check` and
/// `doctor` judge.
pub fn load(path: &Path, classes: LoadBalancerClasses) -> Result<Config, ConfigErrors> {
    let source = FileSource::new(path, classes);
    Ok(into_config(&source, source.read()?))
}

/// Like [`load`] with the default classes, for `text` as the content of a file called
/// `name`.
pub fn parse(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    let source = FileSource::new(Path::new(name), LoadBalancerClasses::default());
    Ok(into_config(&source, source.read_text(text)?))
}

fn into_config(source: &FileSource, update: Update) -> Config {
    let mut store = Store::new(source.name());
    store.apply(update.batch);
    store.into_config()
}

#[cfg(test)]
mod tests;
