//! The store: the current objects of one source, which the model reads.
//!
//! A source (`crate::source`) turns what it reads into [`Batch`]es of [`Event`]s keyed by
//! [`ObjectRef`]: an object added or changed ([`Event::Apply`]), an object gone
//! ([`Event::Delete`]), or every object of a kind at once ([`Event::ReplaceKind`], what a
//! watch's relist delivers; the file source's first read is one). The store applies a batch
//! whole; it refuses nothing: what objects make of each other (overlapping pools, VIPs
//! claimed twice, policies selecting one service) is the model's to settle, object by
//! object. [`Store::undo`] takes an applied batch back, for a caller whose later step (the
//! datapath's capacity) refuses what it made.
//!
//! The objects are kept in the sorted lists of [`Config`], changed in place by binary
//! search: an object that does not change keeps its `Arc` through every batch (an object
//! applied equal to the one held changes nothing), which is what lets the model reuse what
//! it made of it. What a source found about an object (its findings) lives with the object
//! and goes when it goes; what it found about nothing it delivered is the source's own.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::config::{
    Config, EndpointSlice, Finding, IpPool, Kind, L2Policy, Name, Node, Object, ObjectRef, Service,
    SortedList, l2_policy_order, node_order, pool_order, service_order, slice_order,
};

/// An object as a source delivers it, with what the source found about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub object: Object,
    pub findings: Vec<Finding>,
}

impl Entry {
    /// An object about which nothing was found.
    pub fn new(object: Object) -> Self {
        Self {
            object,
            findings: Vec::new(),
        }
    }
}

/// One change of the objects a source holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The object was added or changed: the store holds this version from now on.
    Apply(Entry),
    /// The object is gone (nothing happens when the store does not hold it).
    Delete(ObjectRef),
    /// These are all the objects of the kind: any other of that kind goes. Every entry is
    /// of the kind (others are ignored).
    ReplaceKind(Kind, Vec<Entry>),
}

/// Events that take the objects from one consistent state to the next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub events: Vec<Event>,
    /// What the source found about nothing it delivered (a document it could not read, an
    /// object of a kind not read), replacing what it found before; `None` keeps that.
    pub source_findings: Option<Vec<Finding>>,
}

/// What takes an applied batch back: the events that restore what it changed.
pub struct Undo(Batch);

/// The current objects of one source, with what the source found about them.
pub struct Store {
    config: Config,
    /// The findings about each object held that has any.
    findings: BTreeMap<ObjectRef, Vec<Finding>>,
    source_findings: Vec<Finding>,
    /// Where each slice is: slices sort by the service they name first, which their
    /// `ObjectRef` does not say.
    slices: SliceIndex,
}

/// What a batch touched, to know what to recompute after it.
#[derive(Default)]
struct Touched {
    findings: bool,
}

impl Store {
    /// An empty store; `source` names the source in every finding.
    pub fn new(source: &str) -> Self {
        Self {
            config: Config {
                source: source.to_owned(),
                ..Config::default()
            },
            findings: BTreeMap::new(),
            source_findings: Vec::new(),
            slices: SliceIndex::default(),
        }
    }

    /// The objects, as the model reads them.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    /// Applies `batch` whole; returns what takes it back.
    pub fn apply(&mut self, batch: Batch) -> Undo {
        self.apply_batch(batch)
    }

    /// Takes back the batch `undo` came from; nothing else may have been applied since.
    pub fn undo(&mut self, undo: Undo) {
        self.apply_batch(undo.0);
    }

    fn apply_batch(&mut self, batch: Batch) -> Undo {
        let mut touched = Touched::default();
        let mut restore = Vec::new();
        for event in batch.events {
            restore.extend(match event {
                Event::Apply(entry) => Some(self.apply_entry(entry, &mut touched)),
                Event::Delete(object) => self.delete(object, &mut touched),
                Event::ReplaceKind(kind, entries) => {
                    Some(self.replace_kind(kind, entries, &mut touched))
                }
            });
        }
        let source_findings = batch.source_findings.map(|findings| {
            touched.findings = true;
            std::mem::replace(&mut self.source_findings, findings)
        });
        if touched.findings {
            self.refresh_findings();
        }
        // Applied last to first, each restores what its event found.
        restore.reverse();
        Undo(Batch {
            events: restore,
            source_findings,
        })
    }

    /// Applies `entry`; returns the event that restores what was there.
    fn apply_entry(&mut self, entry: Entry, touched: &mut Touched) -> Event {
        let object = entry.object.object_ref();
        let previous = match entry.object {
            Object::Service(service) => put(&mut self.config, service),
            Object::EndpointSlice(slice) => {
                (self.slices.put(&mut self.config.endpoint_slices, slice))
                    .map(Object::EndpointSlice)
            }
            Object::Node(node) => put(&mut self.config, node),
            Object::IpPool(pool) => put(&mut self.config, pool),
            Object::L2Policy(policy) => put(&mut self.config, policy),
        };
        let findings = self.set_findings(&object, entry.findings, touched);
        match previous {
            Some(object) => Event::Apply(Entry { object, findings }),
            None => Event::Delete(object),
        }
    }

    /// Deletes `object`; returns the event that restores it, if it was held.
    fn delete(&mut self, object: ObjectRef, touched: &mut Touched) -> Option<Event> {
        let kind = Kind::named(&object.kind)?;
        let name = object.name.as_str();
        let config = &mut self.config;
        let previous = match kind {
            Kind::Service => take::<Service>(config, |held| {
                let held = &held.object;
                (&held.namespace, &held.name).cmp(&(&object.namespace, &object.name))
            }),
            Kind::EndpointSlice => {
                let name = SliceName {
                    namespace: object.namespace.clone(),
                    name: object.name.clone(),
                };
                (self.slices.take(&mut config.endpoint_slices, &name)).map(Object::EndpointSlice)
            }
            Kind::Node => take::<Node>(config, |held| held.name.as_str().cmp(name)),
            Kind::IpPool => take::<IpPool>(config, |held| held.name.as_str().cmp(name)),
            Kind::L2Policy => take::<L2Policy>(config, |held| held.name.as_str().cmp(name)),
        };
        let findings = self.set_findings(&object, Vec::new(), touched);
        previous.map(|object| Event::Apply(Entry { object, findings }))
    }

    /// Makes `entries` all the objects of `kind`; returns the event that restores the
    /// objects held before.
    fn replace_kind(&mut self, kind: Kind, entries: Vec<Entry>, touched: &mut Touched) -> Event {
        let mut previous_findings = BTreeMap::new();
        self.findings.retain(|object, findings| {
            let of_kind = object.kind == kind.name();
            if of_kind {
                previous_findings.insert(object.clone(), std::mem::take(findings));
            }
            !of_kind
        });
        touched.findings |= !previous_findings.is_empty();
        let mut objects = Vec::with_capacity(entries.len());
        for entry in entries {
            debug_assert_eq!(entry.object.kind(), kind, "an entry of another kind");
            if entry.object.kind() != kind {
                continue;
            }
            if !entry.findings.is_empty() {
                touched.findings = true;
                self.findings
                    .insert(entry.object.object_ref(), entry.findings);
            }
            objects.push(entry.object);
        }
        let config = &mut self.config;
        let previous = match kind {
            Kind::Service => replace_all::<Service>(config, objects),
            Kind::EndpointSlice => {
                self.slices = SliceIndex::default();
                replace_all::<EndpointSlice>(config, objects)
            }
            Kind::Node => replace_all::<Node>(config, objects),
            Kind::IpPool => replace_all::<IpPool>(config, objects),
            Kind::L2Policy => replace_all::<L2Policy>(config, objects),
        };
        let previous = previous
            .into_iter()
            .map(|object| {
                let findings = if previous_findings.is_empty() {
                    Vec::new()
                } else {
                    previous_findings
                        .remove(&object.object_ref())
                        .unwrap_or_default()
                };
                Entry { object, findings }
            })
            .collect();
        Event::ReplaceKind(kind, previous)
    }

    /// Sets what was found about `object`, returning what was found before.
    fn set_findings(
        &mut self,
        object: &ObjectRef,
        findings: Vec<Finding>,
        touched: &mut Touched,
    ) -> Vec<Finding> {
        let previous = if findings.is_empty() {
            self.findings.remove(object)
        } else {
            self.findings.insert(object.clone(), findings)
        };
        touched.findings |= previous.is_some() || self.findings.contains_key(object);
        previous.unwrap_or_default()
    }

    /// The findings of every object and of the source, sorted and deduplicated so that they
    /// do not depend on the order the source delivered them in.
    fn refresh_findings(&mut self) {
        let mut findings: Vec<Finding> = self
            .findings
            .values()
            .flatten()
            .chain(&self.source_findings)
            .cloned()
            .collect();
        findings.sort();
        findings.dedup();
        self.config.findings = findings;
    }
}

/// A kind as the store keeps it: its list in [`Config`] and the order of that list.
trait Held: PartialEq + Sized {
    fn list(config: &mut Config) -> &mut SortedList<Self>;
    fn order(a: &Self, b: &Self) -> Ordering;
    fn object(held: Arc<Self>) -> Object;
    fn of(object: Object) -> Option<Arc<Self>>;
}

macro_rules! held {
    ($type:ty, $variant:ident, $list:ident, $order:ident) => {
        impl Held for $type {
            fn list(config: &mut Config) -> &mut SortedList<Self> {
                &mut config.$list
            }
            fn order(a: &Self, b: &Self) -> Ordering {
                $order(a, b)
            }
            fn object(held: Arc<Self>) -> Object {
                Object::$variant(held)
            }
            fn of(object: Object) -> Option<Arc<Self>> {
                match object {
                    Object::$variant(held) => Some(held),
                    _ => None,
                }
            }
        }
    };
}

held!(Service, Service, services, service_order);
held!(EndpointSlice, EndpointSlice, endpoint_slices, slice_order);
held!(Node, Node, nodes, node_order);
held!(IpPool, IpPool, pools, pool_order);
held!(L2Policy, L2Policy, l2_policies, l2_policy_order);

/// Puts `object` where it sorts in its list, in place of the object held there, which is
/// returned (the held one stays when it is equal: it is returned too).
fn put<T: Held>(config: &mut Config, object: Arc<T>) -> Option<Object> {
    put_in(T::list(config), object).map(T::object)
}

fn put_in<T: Held>(list: &mut SortedList<T>, object: Arc<T>) -> Option<Arc<T>> {
    match list.search(|held| T::order(held, &object)) {
        Ok(at) if *list[at] == *object => Some(Arc::clone(&list[at])),
        Ok(at) => Some(list.replace(at, object)),
        Err(at) => {
            list.insert(at, object);
            None
        }
    }
}

/// Each slice by its name, made the first time a slice is looked for by name (a slice
/// deleted, added, or moved to another service): a relist, and an edit of a slice that
/// stays where it is, do without.
#[derive(Default)]
struct SliceIndex(Option<HashMap<SliceName, Arc<EndpointSlice>, FxBuildHasher>>);

impl SliceIndex {
    fn of<'i>(
        &'i mut self,
        list: &SortedList<EndpointSlice>,
    ) -> &'i mut HashMap<SliceName, Arc<EndpointSlice>, FxBuildHasher> {
        self.0.get_or_insert_with(|| {
            list.iter()
                .map(|slice| (SliceName::of(slice), Arc::clone(slice)))
                .collect()
        })
    }

    /// [`put`] for a slice, which moves when the service it names changes.
    fn put(
        &mut self,
        list: &mut SortedList<EndpointSlice>,
        slice: Arc<EndpointSlice>,
    ) -> Option<Arc<EndpointSlice>> {
        // Where it sorts holds it unless it is new or names another service now.
        if let Ok(at) = list.search(|held| slice_order(held, &slice)) {
            let previous = put_in(list, slice);
            if let Some(index) = &mut self.0 {
                index.insert(SliceName::of(&list[at]), Arc::clone(&list[at]));
            }
            return previous;
        }
        let name = SliceName::of(&slice);
        let previous = self.take(list, &name);
        put_in(list, Arc::clone(&slice));
        self.of(list).insert(name, slice);
        previous
    }

    /// Takes the slice called `name` out of `list`.
    fn take(
        &mut self,
        list: &mut SortedList<EndpointSlice>,
        name: &SliceName,
    ) -> Option<Arc<EndpointSlice>> {
        let held = self.of(list).remove(name)?;
        let at = list.search(|slice| slice_order(slice, &held)).ok()?;
        Some(list.remove(at))
    }
}

/// A slice's namespace and name.
#[derive(PartialEq, Eq, Hash)]
struct SliceName {
    namespace: Name,
    name: Name,
}

impl SliceName {
    fn of(slice: &EndpointSlice) -> Self {
        Self {
            namespace: slice.object.namespace.clone(),
            name: slice.object.name.clone(),
        }
    }
}

/// Takes the object `probe` finds out of its list.
fn take<T: Held>(config: &mut Config, probe: impl FnMut(&T) -> Ordering) -> Option<Object> {
    let list = T::list(config);
    let at = list.search(probe).ok()?;
    Some(T::object(list.remove(at)))
}

/// Replaces every object of `T`'s list with those of `objects`, keeping the `Arc` of each
/// held object that an equal one replaces. Returns the objects held before.
fn replace_all<T: Held>(config: &mut Config, objects: Vec<Object>) -> Vec<Object> {
    let list = T::list(config);
    let mut next: Vec<Arc<T>> = objects.into_iter().filter_map(T::of).collect();
    next.sort_by(|a, b| T::order(a, b));
    // Both sorted: one walk finds each object's counterpart.
    let held = &list[..];
    let mut at = 0;
    for object in &mut next {
        while at < held.len() && T::order(&held[at], object) == Ordering::Less {
            at += 1;
        }
        if let Some(same) = held.get(at)
            && T::order(same, object) == Ordering::Equal
            && !Arc::ptr_eq(same, object)
            && **same == **object
        {
            *object = Arc::clone(same);
        }
    }
    let next = SortedList::from_sorted(next, T::order);
    std::mem::replace(list, next)
        .into_vec()
        .into_iter()
        .map(T::object)
        .collect()
}

#[cfg(test)]
mod tests;
