//! The documents of the last accepted read, by content: a reload parses only the documents
//! whose text is new (a one-service change in a file of 20,000 documents parses one
//! document, whether or not it moves the lines after it). A document is looked up by its
//! length and an XXH64 digest of its text, first at its own place, then among all of the
//! accepted read's; a 64-bit digest is ample for that. The texts are not kept.
//!
//! What a document makes of its text does not depend on where it stands: findings that
//! name the line it starts at are the exception, and such a document is reused only at the
//! same line. Duplicates across documents are found after the documents are put together.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use xxhash_rust::xxh64::xxh64;

use super::dispatch::ParsedDocument;
use super::documents::{Document, documents};
use crate::config::ConfigErrors;

#[derive(Default)]
pub(super) struct DocumentCache {
    /// The documents of the last accepted read, in file order.
    accepted: Vec<AcceptedDocument>,
}

/// What a document holds, wherever it stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DocumentKey {
    len: usize,
    digest: u64,
}

impl DocumentKey {
    /// XXH64 digests the 11 MB of a 10,000-service file in about a millisecond, where
    /// SipHash takes six. It is not keyed, which is fine here: a document is only ever
    /// compared with the documents of the last read of the same file.
    fn of(document: &Document<'_>) -> Self {
        Self {
            len: document.text.len(),
            digest: xxh64(document.text.as_bytes(), 0),
        }
    }
}

/// The flags of a document, kept beside its key so that a reload walks the list of
/// documents without visiting 20,000 parse results spread over the heap.
#[derive(Clone, Copy)]
pub(super) struct DocumentFlags {
    /// A finding of the document names the line it starts at.
    pub names_line: bool,
    /// The document has findings about nothing it delivers (the source's own).
    pub source_findings: bool,
}

impl DocumentFlags {
    fn of(parsed: &ParsedDocument) -> Self {
        Self {
            names_line: parsed.names_line,
            source_findings: !parsed.findings.is_empty(),
        }
    }
}

/// One document of the accepted read: what it holds, where it stood, and what it made.
pub(super) struct AcceptedDocument {
    key: DocumentKey,
    /// The line its content starts at (`Document::line`).
    line: usize,
    flags: DocumentFlags,
    pub parsed: Arc<ParsedDocument>,
}

impl AcceptedDocument {
    /// Its result holds for `document` (whose key is `key`) too.
    fn fits(&self, key: &DocumentKey, document: &Document<'_>) -> bool {
        self.key == *key && (!self.flags.names_line || self.line == document.line)
    }
}

/// One document of a read being checked: what it holds, where it stands, and where its
/// result comes from.
pub(super) struct IncomingDocument {
    key: DocumentKey,
    /// The line its content starts at (`Document::line`).
    pub line: usize,
    pub flags: DocumentFlags,
    pub result: ParseResult,
}

/// Where a document's result comes from.
pub(super) enum ParseResult {
    /// The accepted document at this index holds it.
    Accepted(usize),
    /// Parsed by this read.
    New(Arc<ParsedDocument>),
}

impl DocumentCache {
    pub fn accepted(&self) -> &[AcceptedDocument] {
        &self.accepted
    }

    /// The result of `document`, a document of a read compared with this cache.
    pub fn parsed<'c>(&'c self, document: &'c IncomingDocument) -> &'c ParsedDocument {
        match &document.result {
            ParseResult::Accepted(i) => &self.accepted[*i].parsed,
            ParseResult::New(parsed) => parsed,
        }
    }

    /// The documents of `text`, each with the result of the accepted document of the same
    /// content, or, when there is none, what `parse` makes of it.
    pub fn incoming(
        &self,
        text: &str,
        mut parse: impl FnMut(&Document<'_>) -> Result<ParsedDocument, ConfigErrors>,
    ) -> Result<Vec<IncomingDocument>, ConfigErrors> {
        let accepted = &self.accepted;
        // The accepted documents by content, made on the first one not found at its place.
        let mut by_content: Option<HashMap<DocumentKey, usize, FxBuildHasher>> = None;
        let mut incoming = Vec::with_capacity(accepted.len());
        for (at, document) in documents(text).iter().enumerate() {
            let key = DocumentKey::of(document);
            let reused = match accepted.get(at) {
                Some(earlier) if earlier.fits(&key, document) => Some(at),
                _ => by_content
                    .get_or_insert_with(|| {
                        let mut index =
                            HashMap::with_capacity_and_hasher(accepted.len(), FxBuildHasher);
                        for (i, earlier) in accepted.iter().enumerate() {
                            index.entry(earlier.key).or_insert(i);
                        }
                        index
                    })
                    .get(&key)
                    .copied()
                    .filter(|&i| accepted[i].fits(&key, document)),
            };
            incoming.push(match reused {
                Some(i) => IncomingDocument {
                    key,
                    line: document.line,
                    flags: accepted[i].flags,
                    result: ParseResult::Accepted(i),
                },
                None => {
                    let parsed = parse(document)?;
                    IncomingDocument {
                        key,
                        line: document.line,
                        flags: DocumentFlags::of(&parsed),
                        result: ParseResult::New(Arc::new(parsed)),
                    }
                }
            });
        }
        Ok(incoming)
    }

    /// Makes `incoming`, a read compared with this cache, the accepted read. Each result
    /// reused moves from the accepted document to its new place: 20,000 results touched for
    /// their reference counts (each in its own corner of the heap, once to count up and
    /// once to count down) took longer than anything else a reload does with them.
    pub fn accept(&mut self, incoming: Vec<IncomingDocument>) {
        /// An accepted result, or where it went (a document that repeats another's text
        /// reuses one result twice).
        enum Slot {
            Free(Arc<ParsedDocument>),
            MovedTo(usize),
        }
        let accepted = std::mem::take(&mut self.accepted);
        let mut slots: Vec<Slot> = accepted.into_iter().map(|d| Slot::Free(d.parsed)).collect();
        let mut documents: Vec<AcceptedDocument> = Vec::with_capacity(incoming.len());
        for (at, document) in incoming.into_iter().enumerate() {
            let parsed = match document.result {
                ParseResult::New(parsed) => parsed,
                ParseResult::Accepted(i) => {
                    match std::mem::replace(&mut slots[i], Slot::MovedTo(at)) {
                        Slot::Free(parsed) => parsed,
                        Slot::MovedTo(to) => {
                            slots[i] = Slot::MovedTo(to);
                            Arc::clone(&documents[to].parsed)
                        }
                    }
                }
            };
            documents.push(AcceptedDocument {
                key: document.key,
                line: document.line,
                flags: document.flags,
                parsed,
            });
        }
        self.accepted = documents;
    }

    /// What the accepted read was made of: the same for a file whose documents are the
    /// same, as [`digest`] computes it for a file not read yet.
    pub fn digest(&self) -> u64 {
        digest_of(self.accepted.iter().map(|document| &document.key))
    }
}

/// A digest of the documents of `text`, to tell a change of the file that matters from
/// one that does not without parsing it.
pub(super) fn digest(text: &str) -> u64 {
    digest_of(
        documents(text)
            .iter()
            .map(DocumentKey::of)
            .collect::<Vec<_>>()
            .iter(),
    )
}

fn digest_of<'k>(keys: impl Iterator<Item = &'k DocumentKey>) -> u64 {
    let mut hasher = DefaultHasher::new();
    for key in keys {
        key.hash(&mut hasher);
    }
    hasher.finish()
}
