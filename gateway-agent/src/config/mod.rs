//! Kubernetes-shaped objects from one multi-document YAML file: parsing and validation.
//! Every error names the file, the object (kind/namespace/name) and the field.
//!
//! Read: `v1` Service (type LoadBalancer; other types are ignored), `discovery.k8s.io/v1`
//! EndpointSlice, `v1` Node, `cilium.io/v2alpha1` (or `v2`) CiliumLoadBalancerIPPool and
//! `cilium.io/v2alpha1` CiliumL2AnnouncementPolicy, alone or inside a `v1` List. Anything
//! else is skipped with a warning.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

mod cilium;
mod endpoints;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
mod l2policy;
mod node;
mod parse;
mod pool;
mod selector;
mod service;
mod validate;

pub use endpoints::{Endpoint, EndpointPort, EndpointSlice, SERVICE_NAME_LABEL};
pub(crate) use error::Diagnostics;
pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use l2policy::L2Policy;
pub use node::Node;
pub use parse::{DocumentCache, digest};
pub use pool::{IpBlock, IpPool};
pub use selector::{Operator, Requirement, Selector};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT_SECS, FieldAddr, LB_IPAM_IPS_ANNOTATION, LB_IPAM_IPS_ANNOTATION_ALIAS,
    MAX_AFFINITY_TIMEOUT_SECS, Service, ServicePort, TargetPort,
};

/// A name the objects, the model and the plan hand around: a clone shares the text instead
/// of copying it (a reload copies the names of 10,000 services into the new state).
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

impl From<String> for Name {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&String> for Name {
    fn from(text: &String) -> Self {
        Self(text.as_str().into())
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0.as_ref().to_owned()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// `kind/namespace/name` (namespace empty for cluster-scoped objects).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    pub kind: Name,
    pub namespace: Name,
    pub name: Name,
}

impl ObjectRef {
    pub fn cluster_scoped(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.into(),
            namespace: Name::default(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A sorted list of objects, shared: a copy of a [`Config`] (the document cache keeps one to
/// patch on the next read) does not touch each of 10,000 objects, and a read that changes
/// one of them changes the list in place.
#[derive(PartialEq)]
pub struct SharedList<T>(Arc<Vec<Arc<T>>>);

impl<T> SharedList<T> {
    /// The list to change: the same one unless a copy of it is still around.
    fn make_mut(&mut self) -> &mut [Arc<T>] {
        Arc::<Vec<Arc<T>>>::make_mut(&mut self.0)
    }
}

impl<T> Clone for SharedList<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Default for SharedList<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T> From<Vec<Arc<T>>> for SharedList<T> {
    fn from(objects: Vec<Arc<T>>) -> Self {
        Self(Arc::new(objects))
    }
}

impl<T> std::ops::Deref for SharedList<T> {
    type Target = [Arc<T>];

    fn deref(&self) -> &[Arc<T>] {
        &self.0
    }
}

impl<'o, T> IntoIterator for &'o SharedList<T> {
    type Item = &'o Arc<T>;
    type IntoIter = std::slice::Iter<'o, Arc<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for SharedList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The validated objects of one file. Every list is sorted (services by namespace/name,
/// slices by namespace/service/name, the rest by name), so nothing depends on the order of
/// the documents.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file name every finding is reported against.
    pub source: String,
    /// The LoadBalancer services.
    pub services: SharedList<Service>,
    /// The IPv4 slices that name their service.
    pub endpoint_slices: SharedList<EndpointSlice>,
    pub nodes: Vec<Arc<Node>>,
    pub pools: Vec<IpPool>,
    pub l2_policies: Vec<Arc<L2Policy>>,
    /// What was skipped or defaulted, sorted.
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Every service with its slices, walking both sorted lists together: slices are sorted
    /// by service first, so each service's are one contiguous run.
    pub fn services_with_slices(
        &self,
    ) -> impl Iterator<Item = (&Arc<Service>, &[Arc<EndpointSlice>])> {
        fn of(s: &EndpointSlice) -> (&str, &str) {
            (s.object.namespace.as_str(), s.service.as_str())
        }
        let mut rest = &self.endpoint_slices[..];
        self.services.iter().map(move |service| {
            let key = (
                service.object.namespace.as_str(),
                service.object.name.as_str(),
            );
            // One comparison per slice: those before the service's, then its own.
            let (mut start, mut end) = (0, 0);
            for slice in rest {
                match of(slice).cmp(&key) {
                    std::cmp::Ordering::Less => (start, end) = (end + 1, end + 1),
                    std::cmp::Ordering::Equal => end += 1,
                    std::cmp::Ordering::Greater => break,
                }
            }
            let slices = &rest[start..end];
            rest = &rest[end..];
            (service, slices)
        })
    }
}

/// Reads and validates the objects in the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_cached(path, &mut DocumentCache::default())
}

/// Like [`load`], parsing only the documents that are not in `cache` from an earlier read
/// (the agent keeps one across reloads).
pub fn load_cached(path: &Path, cache: &mut DocumentCache) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: source.clone(),
            object: None,
            field: String::new(),
            message: format!("cannot read: {error}"),
        }])
    })?;
    parse_cached(&source, &text, cache)
}

/// Parses and validates `text`; `source` is the file name used in findings. Returns every
/// error of the file, not just the first.
pub fn parse(source: &str, text: &str) -> Result<Config, ConfigErrors> {
    parse_cached(source, text, &mut DocumentCache::default())
}

/// Like [`parse`], parsing only the documents that are not in `cache` from an earlier read.
pub fn parse_cached(
    source: &str,
    text: &str,
    cache: &mut DocumentCache,
) -> Result<Config, ConfigErrors> {
    parse::parse(source, text, cache)
}
