//! Reading one multi-document YAML file (a `kubectl get -o yaml` export or hand-written
//! manifests) into validated objects.
//!
//! Each document is read untyped (a syntax error stops here, naming the line), then
//! dispatched on `apiVersion`/`kind` and deserialized into its typed shape, so a type error
//! names the field path and the other documents still get checked.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cilium::{CiliumL2AnnouncementPolicy, CiliumLoadBalancerIpPool};
use super::endpoints::{EndpointSlice, endpoint_slice};
use super::error::{ConfigError, ConfigErrors, ConfigWarning, Diagnostics, ObjectDiagnostics};
use super::l2policy::{L2Policy, l2_policy};
use super::node::{Node, node};
use super::pool::{IpPool, pool};
use super::service::{Service, is_load_balancer, service};
use super::{Config, ObjectRef, validate};
use memchr::memmem;
use xxhash_rust::xxh64::xxh64;

/// The kinds read.
#[derive(Clone, Copy)]
enum Kind {
    Service,
    EndpointSlice,
    Node,
    IpPool,
    L2Policy,
}

/// Each kind's name and the API versions of it that are understood.
const KINDS: [(Kind, &str, &[&str]); 5] = [
    (Kind::Service, Service::KIND, &["v1"]),
    (
        Kind::EndpointSlice,
        EndpointSlice::KIND,
        &["discovery.k8s.io/v1"],
    ),
    (Kind::Node, Node::KIND, &["v1"]),
    (
        Kind::IpPool,
        IpPool::KIND,
        &["cilium.io/v2alpha1", "cilium.io/v2"],
    ),
    (Kind::L2Policy, L2Policy::KIND, &["cilium.io/v2alpha1"]),
];

/// What `kubectl get -o yaml` prints for more than one object.
const LIST: (&str, &str) = ("v1", "List");

/// Documents parsed by earlier reads of the file, by content: a reload parses only the
/// documents whose text is new (a one-service change in a file of 20,000 documents parses
/// one document, whether or not it moves the lines after it). A document is looked up by
/// its length and an XXH64 digest of its text, first at its own place, then among all of
/// the last read's; a 64-bit digest is ample for that. The texts are not kept.
///
/// What a document makes of its text does not depend on where it stands: findings that
/// name the line it starts at are the exception, and such a document is reused only at the
/// same line. Duplicates are found, with their lines, after the documents are put together.
#[derive(Default)]
pub struct DocumentCache {
    /// The documents of the last valid read, in file order.
    documents: Vec<Cached>,
    /// The objects of that read, to patch rather than assemble again (none after a read
    /// that was refused).
    last: Option<Config>,
}

impl DocumentCache {
    /// What the last valid read was made of: the same for a file whose documents are the
    /// same, as [`digest`] computes it for a file not read yet.
    pub fn digest(&self) -> u64 {
        digest_of(self.documents.iter().map(|cached| &cached.key))
    }
}

/// A digest of the documents of `text`, to tell a change of the file that matters from
/// one that does not without parsing it.
pub fn digest(text: &str) -> u64 {
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

/// One document of a read: what it holds, where it stood, and what it made.
#[derive(Clone)]
struct Cached {
    key: DocumentKey,
    /// The line its content starts at (`Document::line`).
    line: usize,
    /// `parsed.objects.names_line`, and whether `parsed` holds findings: kept here so that
    /// a reload walks this list without visiting 20,000 results spread over the heap.
    names_line: bool,
    findings: bool,
    parsed: Arc<Parsed>,
}

impl Cached {
    /// Its result holds for `document` (whose key is `key`) too.
    fn fits(&self, key: &DocumentKey, document: &Document<'_>) -> bool {
        self.key == *key && (!self.names_line || self.line == document.line)
    }
}

/// What one document contributes: its objects and its findings.
#[derive(Default)]
struct Parsed {
    objects: Objects,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

pub(super) fn parse(
    source: &str,
    text: &str,
    cache: &mut DocumentCache,
) -> Result<Config, ConfigErrors> {
    let earlier = &cache.documents;
    // The earlier documents by content, made on the first one not found at its place.
    let mut by_content: Option<HashMap<DocumentKey, usize, FxBuildHasher>> = None;
    let mut next = Vec::with_capacity(earlier.len());
    for (at, document) in documents(text).iter().enumerate() {
        let key = DocumentKey::of(document);
        let reused = match earlier.get(at) {
            Some(cached) if cached.fits(&key, document) => Some(at),
            _ => by_content
                .get_or_insert_with(|| {
                    let mut index = HashMap::with_capacity_and_hasher(earlier.len(), FxBuildHasher);
                    for (i, cached) in earlier.iter().enumerate() {
                        index.entry(cached.key).or_insert(i);
                    }
                    index
                })
                .get(&key)
                .copied()
                .filter(|&i| earlier[i].fits(&key, document)),
        };
        next.push(match reused {
            Some(i) => Read {
                key,
                line: document.line,
                names_line: earlier[i].names_line,
                findings: earlier[i].findings,
                made: Made::Earlier(i),
            },
            None => {
                let parsed = parse_document(source, document)?;
                Read {
                    key,
                    line: document.line,
                    names_line: parsed.objects.names_line,
                    findings: !parsed.errors.is_empty() || !parsed.warnings.is_empty(),
                    made: Made::Now(Arc::new(parsed)),
                }
            }
        });
    }

    let mut diagnostics = Diagnostics::new(source);
    for read in next.iter().filter(|read| read.findings) {
        let parsed = read.parsed(earlier);
        diagnostics.absorb(
            parsed.errors.iter().cloned(),
            parsed.warnings.iter().cloned(),
        );
    }
    // Taken, not copied: a read that turns out invalid leaves no last read to patch, and
    // the next one assembles its objects afresh.
    let patched = match cache.last.take() {
        Some(last) if last.source == source && next.len() == earlier.len() => {
            patch(last, earlier, &next)
        }
        _ => None,
    };
    let config = match patched {
        Some(config) => config,
        None => assemble(source, earlier, &next, &mut diagnostics),
    };
    // Only a valid read replaces the cache: the next one is compared with what serves.
    let config = Config {
        warnings: diagnostics.into_result()?,
        ..config
    };
    cache.documents = keep(std::mem::take(&mut cache.documents), next);
    // Shares the object lists, which the next read patches in place.
    cache.last = Some(config.clone());
    Ok(config)
}

/// One document of a read being checked: what it holds, where it stands, and what made it.
struct Read {
    key: DocumentKey,
    line: usize,
    names_line: bool,
    findings: bool,
    made: Made,
}

/// Where a document's result comes from.
enum Made {
    /// The earlier document at this index holds it.
    Earlier(usize),
    /// Parsed by this read.
    Now(Arc<Parsed>),
}

impl Read {
    fn parsed<'r>(&'r self, earlier: &'r [Cached]) -> &'r Parsed {
        match &self.made {
            Made::Earlier(i) => &earlier[*i].parsed,
            Made::Now(parsed) => parsed,
        }
    }
}

/// The documents of a valid read, for the next one. Each result reused moves from the
/// earlier document to its new place: 20,000 results touched for their reference counts
/// (each in its own corner of the heap, once to count up and once to count down) took
/// longer than anything else a reload does with them.
fn keep(earlier: Vec<Cached>, next: Vec<Read>) -> Vec<Cached> {
    /// An earlier result, or where it went (a document that repeats another's text
    /// reuses one result twice).
    enum Slot {
        Free(Arc<Parsed>),
        MovedTo(usize),
    }
    let mut slots: Vec<Slot> = earlier.into_iter().map(|c| Slot::Free(c.parsed)).collect();
    let mut documents: Vec<Cached> = Vec::with_capacity(next.len());
    for (at, read) in next.into_iter().enumerate() {
        let parsed = match read.made {
            Made::Now(parsed) => parsed,
            Made::Earlier(i) => match std::mem::replace(&mut slots[i], Slot::MovedTo(at)) {
                Slot::Free(parsed) => parsed,
                Slot::MovedTo(to) => {
                    slots[i] = Slot::MovedTo(to);
                    Arc::clone(&documents[to].parsed)
                }
            },
        };
        documents.push(Cached {
            key: read.key,
            line: read.line,
            names_line: read.names_line,
            findings: read.findings,
            parsed,
        });
    }
    documents
}

/// The objects of every document, sorted so that nothing downstream depends on the order
/// of the documents, and checked across documents. The objects are shared with the cache,
/// not copied.
fn assemble(
    source: &str,
    earlier: &[Cached],
    documents: &[Read],
    diagnostics: &mut Diagnostics,
) -> Config {
    let (mut services, mut endpoint_slices, mut nodes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pools, mut l2_policies, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    for read in documents {
        let objects = &read.parsed(earlier).objects;
        services.extend(objects.services.iter().cloned());
        endpoint_slices.extend(objects.endpoint_slices.iter().cloned());
        nodes.extend(objects.nodes.iter().cloned());
        pools.extend(objects.pools.iter().cloned());
        l2_policies.extend(objects.l2_policies.iter().cloned());
        seen.extend(
            objects
                .seen
                .iter()
                .map(|(object, item)| (object, Origin::new(read.line, *item))),
        );
    }
    services.sort_by(service_order);
    endpoint_slices.sort_by(slice_order);
    nodes.sort_by(node_order);
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    l2_policies.sort_by(|a, b| a.name.cmp(&b.name));
    validate::duplicates(&seen, diagnostics);
    validate::overlapping_pools(&pools, diagnostics);
    Config {
        source: source.to_owned(),
        services: services.into(),
        endpoint_slices: endpoint_slices.into(),
        nodes,
        pools,
        l2_policies,
        warnings: Vec::new(),
    }
}

/// Services are all of one kind: by namespace and name.
fn service_order(a: &Arc<Service>, b: &Arc<Service>) -> Ordering {
    let (a, b) = (&a.object, &b.object);
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// By service first, so a service's slices are one contiguous run
/// (`Config::services_with_slices`).
fn slice_order(a: &Arc<EndpointSlice>, b: &Arc<EndpointSlice>) -> Ordering {
    (&a.object.namespace, &a.service, &a.object.name).cmp(&(
        &b.object.namespace,
        &b.service,
        &b.object.name,
    ))
}

fn node_order(a: &Arc<Node>, b: &Arc<Node>) -> Ordering {
    a.name.cmp(&b.name)
}

/// The last valid read with the objects of the re-parsed documents swapped in, provided
/// each of those documents holds the objects it held before, by kind and name and where
/// they sort (the usual edit: a field inside an object): the order and the checks across
/// documents are then those of the last read. `None` when that is not so.
fn patch(mut last: Config, earlier: &[Cached], documents: &[Read]) -> Option<Config> {
    let changed: Vec<(&Objects, &Objects)> = earlier
        .iter()
        .zip(documents)
        .filter(|(before, after)| {
            !matches!(after.made, Made::Earlier(i) if Arc::ptr_eq(&earlier[i].parsed, &before.parsed))
        })
        .map(|(before, after)| (&before.parsed.objects, &after.parsed(earlier).objects))
        .collect();
    let patchable = changed.iter().all(|(before, after)| {
        let pools_or_policies = [before, after]
            .iter()
            .any(|o| !o.pools.is_empty() || !o.l2_policies.is_empty());
        before.seen == after.seen && !pools_or_policies
    });
    if !patchable {
        return None;
    }
    for (before, after) in changed {
        // The cache's own lists, unless the caller still holds the last read's `Config`.
        swap(
            last.services.make_mut(),
            &before.services,
            &after.services,
            service_order,
        )?;
        swap(
            last.endpoint_slices.make_mut(),
            &before.endpoint_slices,
            &after.endpoint_slices,
            slice_order,
        )?;
        swap(&mut last.nodes, &before.nodes, &after.nodes, node_order)?;
    }
    Some(last)
}

/// Replaces each of `before` in `sorted` with its counterpart in `after`, which must sort
/// at the same place.
fn swap<T>(
    sorted: &mut [Arc<T>],
    before: &[Arc<T>],
    after: &[Arc<T>],
    order: fn(&Arc<T>, &Arc<T>) -> Ordering,
) -> Option<()> {
    if before.len() != after.len() {
        return None;
    }
    for (old, new) in before.iter().zip(after) {
        if order(old, new) != Ordering::Equal {
            return None;
        }
        let at = sorted.binary_search_by(|s| order(s, old)).ok()?;
        if !Arc::ptr_eq(&sorted[at], old) {
            return None;
        }
        sorted[at] = Arc::clone(new);
    }
    Some(())
}

/// A syntax error with where it is in the file, for a document whose text starts
/// `line_offset` lines into it. The parser's own message counts lines from the document's
/// start, so its position is given again, the file's.
fn yaml_error(error: &serde_yaml_ng::Error, line_offset: usize) -> String {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    match error.location() {
        Some(at) => format!(
            "YAML error at line {}, column {}: {message}",
            at.line() + line_offset,
            at.column()
        ),
        None => format!("YAML error: {message}"),
    }
}

/// One document of the file: its text from its `---` (or the file's start) to the next
/// document's, and the line its content starts at.
struct Document<'t> {
    text: &'t str,
    /// Where the document's text starts in the file (1-based).
    first_line: usize,
    /// Where its content starts (its `---` line when it has none), for messages.
    line: usize,
}

/// Splits `text` into the documents the YAML parser would read. Document markers stand at
/// column 0 (a `---` or `...` there cannot be inside a scalar), which is all it takes.
fn documents(text: &str) -> Vec<Document<'_>> {
    fn content(line: &str) -> bool {
        let line = line.trim_start();
        !line.is_empty() && !line.starts_with('#')
    }
    let mut documents = Vec::new();
    // The document being read: where its text starts (byte, line) and its first content line.
    let mut current: Option<(usize, usize, Option<usize>)> = None;
    // Where a document without a `---` would start: the file's start, or after a `...`.
    let mut implicit = (0, 1);
    let mut offset = 0;
    let mut close = |current: Option<(usize, usize, Option<usize>)>, end: usize| {
        if let Some((start, first_line, line)) = current {
            documents.push(Document {
                text: &text[start..end],
                first_line,
                line: line.unwrap_or(first_line),
            });
        }
    };
    let mut number = 1;
    while offset < text.len() {
        // Most lines are inside a document whose content has started: only a marker there
        // matters, and a marker starts with `---` or `...`.
        if matches!(current, Some((_, _, Some(_)))) && !maybe_marker(&text.as_bytes()[offset..]) {
            let (next, lines) = next_maybe_marker(text.as_bytes(), offset);
            (offset, number) = (next, number + lines);
            continue;
        }
        let end = text[offset..]
            .find('\n')
            .map_or(text.len(), |at| offset + at + 1);
        let line = &text[offset..end];
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if let Some(rest) = marker {
            close(current.take(), offset);
            current = Some((offset, number, content(rest).then_some(number)));
        } else if bare == "..." {
            close(current.take(), offset + line.len());
            implicit = (offset + line.len(), number + 1);
        } else if content(bare) {
            match &mut current {
                Some((_, _, first)) => {
                    first.get_or_insert(number);
                }
                None => current = Some((implicit.0, implicit.1, Some(number))),
            }
        }
        offset += line.len();
        number += 1;
    }
    close(current, text.len());
    documents
}

/// From `from`, the start of a line that is not a marker, to the start of the next line
/// that may be one (or the end of the text), with the number of lines passed. This walks the
/// whole 11 MB of a 10,000-service file on every reload, so it uses memchr's vectorized
/// search rather than a line at a time (5 ms).
fn next_maybe_marker(text: &[u8], from: usize) -> (usize, usize) {
    let rest = &text[from..];
    // `...` markers are rare: look for one only before the next `---`, so every byte is
    // searched once however many documents there are.
    let dashes = memmem::find(rest, b"\n---").unwrap_or(rest.len());
    let marker = memmem::find(&rest[..dashes], b"\n...").unwrap_or(dashes);
    let next = (from + marker + 1).min(text.len());
    (next, memchr::memchr_iter(b'\n', &text[from..next]).count())
}

/// The line may be a document marker (`---` or `...`; what follows decides).
fn maybe_marker(line: &[u8]) -> bool {
    line.starts_with(b"---") || line.starts_with(b"...")
}

/// Parses one document on its own; its line numbers are the file's.
fn parse_document(source: &str, document: &Document<'_>) -> Result<Parsed, ConfigErrors> {
    let mut diagnostics = Diagnostics::new(source);
    let mut objects = Objects::default();
    for value in serde_yaml_ng::Deserializer::from_str(document.text) {
        let value = Value::deserialize(value).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: source.to_owned(),
                object: None,
                field: String::new(),
                message: yaml_error(&error, document.first_line - 1),
            }])
        })?;
        if !value.is_null() {
            objects.collect(value, document.line, None, &mut diagnostics);
        }
    }
    let (errors, warnings) = diagnostics.into_parts();
    Ok(Parsed {
        objects,
        errors,
        warnings,
    })
}

#[derive(Default)]
struct Objects {
    services: Vec<Arc<Service>>,
    endpoint_slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
    pools: Vec<IpPool>,
    l2_policies: Vec<Arc<L2Policy>>,
    /// Every object of a read kind (also Services of other types), with its place among
    /// the items of a `List`, to find duplicates.
    seen: Vec<(ObjectRef, Option<usize>)>,
    /// A finding names the line the document starts at.
    names_line: bool,
}

/// Where an object is written: a document (by the line its content starts at), or an item
/// of the `List` there.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    line: usize,
    item: Option<usize>,
}

impl Origin {
    fn new(line: usize, item: Option<usize>) -> Self {
        Self { line, item }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(item) = self.item {
            write!(f, "items[{item}] of ")?;
        }
        write!(f, "the document at line {}", self.line)
    }
}

impl Objects {
    /// Reads the document whose content starts at `line` (or item `item` of the `List`
    /// there).
    fn collect(
        &mut self,
        document: Value,
        line: usize,
        item: Option<usize>,
        diagnostics: &mut Diagnostics,
    ) {
        let origin = Origin::new(line, item);
        let Value::Object(map) = &document else {
            self.names_line = true;
            diagnostics.error(None, "", format!("{origin} is not a mapping"));
            return;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        if api_version.is_empty() || kind.is_empty() {
            self.names_line = true;
            diagnostics.error(
                None,
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                format!("{origin} has no apiVersion or no kind"),
            );
            return;
        }
        if (api_version, kind) == LIST {
            self.collect_list(&document, line, diagnostics);
            return;
        }

        let metadata = |key: &str| {
            map.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let known = KINDS.iter().find(|(_, name, _)| *name == kind);
        let namespace = match known {
            // What `kubectl apply` does with a namespaced object that names none.
            Some((Kind::Service | Kind::EndpointSlice, _, _)) => {
                metadata("namespace").unwrap_or("default")
            }
            Some(_) => "",
            None => metadata("namespace").unwrap_or_default(),
        };
        let object = metadata("name").map(|name| ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        });

        // Named by the object when it has a name: the line would change with document order.
        let names_line = &mut self.names_line;
        let mut skip = |field: &str, why: String| match &object {
            Some(object) => diagnostics.warn(Some(object), field, format!("skipped: {why}")),
            None => {
                *names_line = true;
                diagnostics.warn(None, field, format!("skipped {origin}: {why}"));
            }
        };
        let Some(&(known, _, versions)) = known else {
            skip(
                "",
                format!("kind {kind} ({api_version}) is not used by gateway"),
            );
            return;
        };
        if !versions.contains(&api_version) {
            skip(
                "apiVersion",
                format!(
                    "{api_version} {kind} is not understood (expected {})",
                    versions.join(" or ")
                ),
            );
            return;
        }
        let Some(object) = object else {
            self.names_line = true;
            diagnostics.error(
                None,
                "metadata.name",
                format!("the {kind} in {origin} has no name"),
            );
            return;
        };
        self.seen.push((object.clone(), item));

        let mut findings = diagnostics.object(&object);
        match known {
            Kind::Service => {
                let raw: Option<core::Service> = typed(document, &mut findings);
                if let Some(raw) = raw.filter(is_load_balancer) {
                    self.services
                        .extend(service(&raw, object.clone(), &mut findings).map(Arc::new));
                }
            }
            Kind::EndpointSlice => {
                if let Some(raw) = typed::<discovery::EndpointSlice>(document, &mut findings) {
                    self.endpoint_slices
                        .extend(endpoint_slice(&raw, object.clone(), &mut findings).map(Arc::new));
                }
            }
            Kind::Node => {
                if let Some(raw) = typed::<core::Node>(document, &mut findings) {
                    self.nodes
                        .push(Arc::new(node(&raw, object.name.to_string())));
                }
            }
            Kind::IpPool => {
                if let Some(raw) = typed::<CiliumLoadBalancerIpPool>(document, &mut findings) {
                    self.pools
                        .extend(pool(&raw, object.name.to_string(), &mut findings));
                }
            }
            Kind::L2Policy => {
                if let Some(raw) = typed::<CiliumL2AnnouncementPolicy>(document, &mut findings) {
                    self.l2_policies.extend(
                        l2_policy(&raw, object.name.to_string(), &mut findings).map(Arc::new),
                    );
                }
            }
        }
    }

    fn collect_list(&mut self, list: &Value, line: usize, diagnostics: &mut Diagnostics) {
        match list.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.collect(item.clone(), line, Some(i), diagnostics);
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => {
                self.names_line = true;
                diagnostics.error(
                    None,
                    "items",
                    format!(
                        "the List in {} has no list of items",
                        Origin::new(line, None)
                    ),
                );
            }
        }
    }
}

/// Deserializes `document` into its typed shape, naming the field path of a type error.
fn typed<T: DeserializeOwned>(document: Value, findings: &mut ObjectDiagnostics<'_>) -> Option<T> {
    serde_path_to_error::deserialize(document)
        .map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { String::new() } else { path };
            findings.error(field, error.into_inner().to_string());
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{ObjectRef, load};
    use serde::Deserialize;

    use super::{DocumentCache, documents};

    #[test]
    fn reads_every_kind_of_the_reference() {
        let config = reference();
        assert_eq!(config.source, FILE);
        let services: Vec<String> = config
            .services
            .iter()
            .map(|s| s.object.to_string())
            .collect();
        assert_eq!(
            services,
            [
                "Service/gateway/cilium-gateway-gateway-external",
                "Service/gateway/cilium-gateway-gateway-internal"
            ]
        );
        let slices: Vec<&str> = config
            .endpoint_slices
            .iter()
            .map(|s| s.object.name.as_str())
            .collect();
        assert_eq!(
            slices,
            [
                "cilium-gateway-gateway-external-m5r8w",
                "cilium-gateway-gateway-internal-7xk2p"
            ]
        );
        let nodes: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["cp-1", "worker-1", "worker-2"]);
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].name, "first-pool");
        assert_eq!(config.l2_policies.len(), 1);
        assert_eq!(config.l2_policies[0].name, "l2-policy");
        assert_eq!(config.warnings, []);
    }

    #[test]
    fn reads_a_kubectl_list() {
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - apiVersion: v1\n  kind: Node\n  metadata:\n    name: a\n\
                    - apiVersion: v1\n  kind: Node\n  metadata:\n    name: b\n\
                    - apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: d\n    namespace: x\n\
                    metadata:\n  resourceVersion: \"\"\n";
        let config = parse_ok(text);
        let nodes: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["a", "b"]);
        assert_line(
            &parse_warnings(text),
            &[
                "objects.yaml: Deployment/x/d: skipped: kind Deployment (apps/v1) is not used by gateway",
            ],
        );
    }

    #[test]
    fn empty_documents_and_files_are_skipped() {
        let config = parse_ok("---\n# nothing here\n---\n\n---\n");
        assert!(config.services.is_empty() && config.nodes.is_empty());
        assert_eq!(config.warnings, []);
        assert!(parse_ok("").pools.is_empty());
    }

    #[test]
    fn unknown_kinds_and_api_versions_are_skipped_with_a_warning() {
        let text = reference_with(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: cilium-envoy\n  namespace: kube-system\n\
             ---\napiVersion: cilium.io/v1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: old\n\
             ---\napiVersion: example.com/v1\nkind: Thing\n",
        );
        let warnings = parse_warnings(&text);
        // Sorted: findings without an object first.
        assert_eq!(
            warnings,
            [
                "objects.yaml: skipped the document at line 213: kind Thing (example.com/v1) is not \
                 used by gateway",
                "objects.yaml: CiliumL2AnnouncementPolicy/old: apiVersion: skipped: cilium.io/v1 \
                 CiliumL2AnnouncementPolicy is not understood (expected cilium.io/v2alpha1)",
                "objects.yaml: DaemonSet/kube-system/cilium-envoy: skipped: kind DaemonSet (apps/v1) \
                 is not used by gateway",
            ]
        );
        assert_eq!(parse_ok(&text).l2_policies.len(), 1);
    }

    #[test]
    fn the_cilium_v2_pool_is_read() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: p\n\
                    spec:\n  blocks:\n    - cidr: 10.0.0.0/24\n";
        assert_eq!(parse_ok(text).pools[0].blocks.len(), 1);
    }

    #[test]
    fn yaml_syntax_errors_name_the_file_and_line() {
        let errors =
            parse_errors("apiVersion: v1\nkind: Node\nmetadata:\n  name: a\n bad: indent\n");
        assert_eq!(errors.len(), 1);
        // The wording is the YAML parser's; the file and the line are ours to guarantee.
        assert!(
            errors[0].starts_with("objects.yaml: YAML error"),
            "{errors:?}"
        );
        assert!(errors[0].contains("line 5"), "{errors:?}");
    }

    #[test]
    fn type_errors_name_the_object_and_field_path() {
        let text =
            reference_with(&lb_service("web", "shop", "").replace("port: 80", "port: eighty"));
        let errors = parse_errors(&text);
        assert_eq!(
            errors,
            [
                "objects.yaml: Service/web/shop: spec.ports[0].port: invalid type: string \"eighty\", expected i32"
            ]
        );
    }

    #[test]
    fn every_error_of_the_file_is_reported() {
        let text = format!(
            "{}\n---\n{}\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n\n  labels:\n    a: 1\n",
            lb_service("web", "a", "    - port: 81\n      protocol: SCTP\n"),
            lb_service("web", "b", "  externalTrafficPolicy: Nowhere\n"),
        );
        let errors = parse_errors(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert_line(
            &errors,
            &["Service/web/a: spec.ports[1].protocol: unsupported protocol \"SCTP\""],
        );
        assert_line(
            &errors,
            &["Service/web/b: spec.externalTrafficPolicy: unknown policy \"Nowhere\""],
        );
        assert_line(
            &errors,
            &["Node/n: metadata.labels.a: invalid type: integer `1`"],
        );
    }

    #[test]
    fn documents_are_split_where_the_parser_splits_them() {
        // Implicit first document, comments, an empty document, content on the marker line,
        // an explicit end, and a trailing empty document.
        let text = "# header\na: 1\n---\n# note\n\nb: 2\n---\n--- {c: 3}\n...\n---\nd: 4\n---\n";
        let docs = documents(text);
        let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 6, 7, 8, 11, 12]);
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(
            texts,
            [
                "# header\na: 1\n",
                "---\n# note\n\nb: 2\n",
                "---\n",
                "--- {c: 3}\n...\n",
                "---\nd: 4\n",
                "---\n"
            ]
        );
        // The whole file parses into as many documents, in the same order.
        let mut parsed = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            parsed.push(serde_json::Value::deserialize(doc).expect("valid YAML"));
        }
        let one_by_one: Vec<serde_json::Value> = docs
            .iter()
            .map(|d| {
                serde_json::Value::deserialize(
                    serde_yaml_ng::Deserializer::from_str(d.text)
                        .next()
                        .unwrap(),
                )
                .unwrap()
            })
            .collect();
        assert_eq!(parsed, one_by_one);
        assert_eq!(
            documents("---\nkind: Node\n")
                .iter()
                .map(|d| d.line)
                .collect::<Vec<_>>(),
            vec![2]
        );
        assert!(documents("# nothing\n").is_empty());
    }

    #[test]
    fn a_reload_parses_only_the_documents_that_changed() {
        let mut cache = DocumentCache::default();
        let text = reference_with("apiVersion: v1\nkind: Node\nmetadata:\n  name: extra\n");
        let first = super::parse(FILE, &text, &mut cache).unwrap();
        let cached = cache.documents.len();
        assert!(cached > 5);
        // Poison one cached document: a reload that re-parsed it would not see the poison.
        let changed = text.replace("name: extra", "name: extra2");
        let again = super::parse(FILE, &changed, &mut cache).unwrap();
        assert_eq!(cache.documents.len(), cached);
        assert!(again.nodes.iter().any(|n| n.name == "extra2"));
        assert!(!again.nodes.iter().any(|n| n.name == "extra"));
        assert_eq!(first.services, again.services);
        // A syntax error is still found, at the file's line number.
        let broken = changed.replace("name: extra2", "name: [extra2");
        let errors = super::parse(FILE, &broken, &mut cache).unwrap_err();
        let line = broken.lines().position(|l| l.contains("[extra2")).unwrap() + 1;
        assert!(
            errors.to_string().contains(&format!("line {}", line + 1))
                || errors.to_string().contains(&format!("line {line}")),
            "{errors}"
        );
    }

    #[test]
    fn documents_without_kind_or_name_or_mapping_are_errors() {
        let errors = parse_errors(
            "metadata:\n  name: x\n---\napiVersion: v1\nkind: Node\nmetadata: {}\n---\n- a\n",
        );
        assert_line(
            &errors,
            &["objects.yaml: apiVersion: the document at line 1 has no apiVersion"],
        );
        assert_line(
            &errors,
            &["objects.yaml: metadata.name: the Node in the document at line 4 has no name"],
        );
        assert_line(
            &errors,
            &["objects.yaml: the document at line 8 is not a mapping"],
        );
    }

    #[test]
    fn duplicate_objects_are_errors() {
        let errors = parse_errors(&reference_with(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: worker-1\n",
        ));
        assert_eq!(errors.len(), 1);
        assert_line(
            &errors,
            &[
                "objects.yaml: Node/worker-1: duplicate object: defined in the document at line",
                "and again in the document at line",
            ],
        );
    }

    #[test]
    fn services_of_other_types_are_ignored_silently_but_count_as_objects() {
        let cluster_ip = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: web\n\
                          spec:\n  ports:\n    - port: 443\n      protocol: SCTP\n";
        let config = parse_ok(&reference_with(cluster_ip));
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.warnings, []);
        let errors = parse_errors(&format!(
            "{cluster_ip}---\n{}",
            lb_service("web", "api", "")
        ));
        assert_line(&errors, &["Service/web/api: duplicate object"]);
    }

    #[test]
    fn namespaced_objects_default_to_the_default_namespace() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  type: LoadBalancer\n";
        let config = parse_ok(text);
        assert_eq!(
            config.services[0].object,
            ObjectRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: "a".into()
            }
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/reference.yaml");
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.services.len(), 2);
        assert!(config.source.ends_with("testdata/reference.yaml"));

        let missing = std::path::Path::new("/nonexistent/objects.yaml");
        let errors = load(missing).unwrap_err().to_string();
        assert!(
            errors.starts_with("/nonexistent/objects.yaml: cannot read:"),
            "{errors}"
        );
    }

    #[test]
    fn a_cached_read_is_the_same_as_a_fresh_one() {
        // Each slot holds one of its versions, or nothing for "": edits inside objects (the
        // patched case), renames, kind and type changes, duplicates, pools.
        let slice = |name: &str, service: &str, address: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n\
                 \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: {service}\n\
                 addressType: IPv4\nendpoints:\n  - addresses: [{address}]\n    nodeName: worker-1\n"
            )
        };
        let node = |name: &str, ready: &str| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  conditions:\n\
                 \x20   - type: Ready\n      status: \"{ready}\"\n"
            )
        };
        let mut slots: Vec<Vec<String>> = vec![vec![REFERENCE.to_owned()]];
        for i in 0..3 {
            let (a, b) = (format!("svc-{i}"), format!("svc-{i}b"));
            slots.push(vec![
                lb_service("web", &a, ""),
                // The same objects, moving every line after them.
                format!("# a comment\n# and another\n{}", lb_service("web", &a, "")),
                lb_service("web", &a, "    - port: 81\n"),
                lb_service("web", &b, ""),
                lb_service("web", &a, "").replace("LoadBalancer", "ClusterIP"),
                String::new(),
            ]);
            slots.push(vec![
                slice(&format!("{a}-1"), &a, "10.0.0.1"),
                slice(&format!("{a}-1"), &a, "10.0.0.2"),
                slice(&format!("{a}-1"), &b, "10.0.0.1"),
                slice(&format!("{a}-2"), &a, "10.0.0.1"),
                String::new(),
            ]);
            slots.push(vec![
                node(&format!("node-{i}"), "True"),
                node(&format!("node-{i}"), "False"),
                node("node-0", "True"),
                pool_doc(&format!("pool-{i}"), "  blocks:\n    - cidr: 10.9.0.0/24\n"),
                String::new(),
            ]);
        }
        // Documents whose findings name the line they start at, a List whose item
        // duplicates a node, a syntax error: their messages must follow them as lines move.
        slots.insert(
            2,
            vec![
                String::new(),
                "# only a comment\n".to_owned(),
                "apiVersion: example.com/v1\nkind: Thing\n".to_owned(),
                "apiVersion: v1\nkind: Node\nmetadata: {}\n".to_owned(),
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
                 metadata:\n    name: node-0\n"
                    .to_owned(),
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: [broken\n".to_owned(),
            ],
        );
        let mut random = XorShift(0x5eed_0fca_c4e5);
        let mut cache = DocumentCache::default();
        let mut chosen = vec![0; slots.len()];
        for round in 0..1000 {
            for _ in 0..1 + 2 * usize::from(random.chance(4)) {
                let slot = random.below(slots.len());
                chosen[slot] = random.below(slots[slot].len());
            }
            let text: Vec<&str> = chosen
                .iter()
                .zip(&slots)
                .map(|(&v, versions)| versions[v].as_str())
                .filter(|doc| !doc.is_empty())
                .collect();
            let text = text.join("---\n");
            let cached = super::parse(FILE, &text, &mut cache);
            let fresh = super::parse(FILE, &text, &mut DocumentCache::default());
            assert_eq!(
                format!("{cached:?}"),
                format!("{fresh:?}"),
                "round {round}:\n{text}"
            );
        }
    }

    /// `documents` as it was written first, a line at a time.
    fn documents_line_by_line(text: &str) -> Vec<(usize, usize, usize, usize)> {
        fn content(line: &str) -> bool {
            let line = line.trim_start();
            !line.is_empty() && !line.starts_with('#')
        }
        let mut documents = Vec::new();
        let mut current: Option<(usize, usize, Option<usize>)> = None;
        let mut implicit = (0, 1);
        let mut offset = 0;
        let mut close = |current: Option<(usize, usize, Option<usize>)>, end: usize| {
            if let Some((start, first_line, line)) = current {
                documents.push((start, end, first_line, line.unwrap_or(first_line)));
            }
        };
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let number = i + 1;
            let bare = line.trim_end_matches(['\n', '\r']);
            let marker = bare
                .strip_prefix("---")
                .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
            if let Some(rest) = marker {
                close(current.take(), offset);
                current = Some((offset, number, content(rest).then_some(number)));
            } else if bare == "..." {
                close(current.take(), offset + line.len());
                implicit = (offset + line.len(), number + 1);
            } else if content(bare) {
                match &mut current {
                    Some((_, _, first)) => {
                        first.get_or_insert(number);
                    }
                    None => current = Some((implicit.0, implicit.1, Some(number))),
                }
            }
            offset += line.len();
        }
        close(current, text.len());
        documents
    }

    #[test]
    fn documents_are_split_as_a_line_at_a_time_splits_them() {
        // Lines that are markers, look like them, or are content, in lengths that put them
        // on every side of the 64-byte blocks the splitter reads.
        let lines = [
            "---",
            "--- a: 1",
            "---x",
            "--",
            "-",
            "- a",
            "...",
            "....",
            ".",
            "a: 1",
            "# c",
            "",
            "  ---",
            "\r",
            "---\r",
            "...\r",
            "long: 0123456789012345678901234567890123456789",
        ];
        let mut random = XorShift(0xd0c5_5eed_0b10_c4e5);
        for round in 0..3000 {
            let mut text = String::new();
            for _ in 0..random.below(40) {
                text.push_str(lines[random.below(lines.len())]);
                if !random.chance(30) {
                    text.push('\n');
                }
            }
            let split: Vec<(usize, usize, usize, usize)> = documents(&text)
                .iter()
                .map(|d| {
                    let start = d.text.as_ptr() as usize - text.as_ptr() as usize;
                    (start, start + d.text.len(), d.first_line, d.line)
                })
                .collect();
            assert_eq!(
                split,
                documents_line_by_line(&text),
                "round {round}: {text:?}"
            );
        }
    }
}
