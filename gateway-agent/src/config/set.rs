//! [`Config`]: every object the store holds, in sorted lists, as the model reads them.

use std::cmp::Ordering;
use std::sync::Arc;

use super::{EndpointSlice, Finding, IpPool, L2Policy, Node, Service, SortedList};

/// The validated objects of one source. Every list is sorted (services by namespace/name,
/// slices by namespace/service/name, the rest by name), so nothing depends on the order in
/// which the source delivered them.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// The source every finding is reported against (the file's name).
    pub source: String,
    /// The LoadBalancer services.
    pub services: SortedList<Service>,
    /// The IPv4 slices that name their service.
    pub endpoint_slices: SortedList<EndpointSlice>,
    pub nodes: SortedList<Node>,
    pub pools: SortedList<IpPool>,
    pub l2_policies: SortedList<L2Policy>,
    /// What the source found about the objects (and about itself), sorted.
    pub findings: Vec<Finding>,
}

/// A service with the slices that name it.
pub struct ServiceWithSlices<'c> {
    pub service: &'c Arc<Service>,
    pub slices: &'c [Arc<EndpointSlice>],
}

impl Config {
    /// Every service with its slices, walking both sorted lists together: slices are sorted
    /// by service first, so each service's are one contiguous run.
    pub fn services_with_slices(&self) -> impl Iterator<Item = ServiceWithSlices<'_>> {
        let mut rest = &self.endpoint_slices[..];
        self.services.iter().map(move |service| {
            // One comparison per slice: those of services without a Service object are
            // passed, then the service's own are taken.
            let mut own = 0..0;
            for slice in rest {
                match slice_service_order(slice, service) {
                    Ordering::Less => own = own.end + 1..own.end + 1,
                    Ordering::Equal => own.end += 1,
                    Ordering::Greater => break,
                }
            }
            let slices = &rest[own.clone()];
            rest = &rest[own.end..];
            ServiceWithSlices { service, slices }
        })
    }
}

/// How a slice sorts against a service: by the service it names.
fn slice_service_order(slice: &EndpointSlice, service: &Service) -> Ordering {
    (&slice.object.namespace, slice.service.as_str())
        .cmp(&(&service.object.namespace, service.object.name.as_str()))
}

/// Services are all of one kind: by namespace and name.
pub(crate) fn service_order(a: &Service, b: &Service) -> Ordering {
    let (a, b) = (&a.object, &b.object);
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// By service first, so a service's slices are one contiguous run
/// ([`Config::services_with_slices`]).
pub(crate) fn slice_order(a: &EndpointSlice, b: &EndpointSlice) -> Ordering {
    (&a.object.namespace, &a.service, &a.object.name).cmp(&(
        &b.object.namespace,
        &b.service,
        &b.object.name,
    ))
}

pub(crate) fn node_order(a: &Node, b: &Node) -> Ordering {
    a.name.cmp(&b.name)
}

pub(crate) fn pool_order(a: &IpPool, b: &IpPool) -> Ordering {
    a.name.cmp(&b.name)
}

pub(crate) fn l2_policy_order(a: &L2Policy, b: &L2Policy) -> Ordering {
    a.name.cmp(&b.name)
}
