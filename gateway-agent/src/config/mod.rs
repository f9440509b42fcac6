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

/// `kind/namespace/name` (namespace empty for cluster-scoped objects).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn cluster_scoped(kind: &str, name: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: String::new(),
            name: name.to_owned(),
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

/// The validated objects of one file. Every list is sorted (services by namespace/name,
/// slices by namespace/service/name, the rest by name), so nothing depends on the order of
/// the documents.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file name every finding is reported against.
    pub source: String,
    /// The LoadBalancer services.
    pub services: Vec<Arc<Service>>,
    /// The IPv4 slices that name their service.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
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
        let mut rest = self.endpoint_slices.as_slice();
        self.services.iter().map(move |service| {
            let key = (
                service.object.namespace.as_str(),
                service.object.name.as_str(),
            );
            let start = rest.iter().take_while(|s| of(s) < key).count();
            let len = rest[start..].iter().take_while(|s| of(s) == key).count();
            let slices = &rest[start..start + len];
            rest = &rest[start + len..];
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
