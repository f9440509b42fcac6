//! The objects the agent reads, validated: one file per kind, each turning the API's shape
//! (k8s-openapi's types, or the Cilium CRDs' in `cilium`) into ours, and the set of them the
//! model reads ([`Config`]). Every error and finding names the source, the object
//! (kind/namespace/name) and the field. Nothing here reads a file or knows where the
//! objects come from: that is a source's job (`crate::source`), and holding them is the
//! store's (`crate::store`).
//!
//! One object's trouble stays with that object: a conversion skips what it cannot serve
//! (a port, a block, an address) or marks the object unservable, each with a [`Finding`]
//! (severity, [`Reason`], message naming the field), and the rest of the source serves.
//! Only what leaves the agent unable to tell which object is meant or what it says refuses
//! the whole source ([`ConfigError`]; the rule is written out in `error.rs`).
//!
//! Kinds: `v1` Service (type LoadBalancer; other types are ignored), `discovery.k8s.io/v1`
//! EndpointSlice, `v1` Node, `cilium.io/v2alpha1` (or `v2`) CiliumLoadBalancerIPPool and
//! `cilium.io/v2alpha1` CiliumL2AnnouncementPolicy. Services of another controller's
//! `spec.loadBalancerClass` are left alone ([`LoadBalancerClasses`]).
//!
//! | file | holds |
//! | --- | --- |
//! | `service.rs`, `endpoints.rs`, `node.rs`, `pool.rs`, `l2policy.rs` | one kind each: its type and its conversion |
//! | `cilium.rs` | the serde shapes of the two Cilium CRDs |
//! | `selector.rs` | label selectors, validated (matching is the model's) |
//! | `selector_text.rs` | label selectors written as `kubectl -l` takes them (`--cluster-members`) |
//! | `protocol.rs` | TCP or UDP |
//! | `object.rs` | an object of any kind: `ObjectRef`, `Kind`, `Object` |
//! | `name.rs` | `Name`, the shared text of names |
//! | `list.rs`, `set.rs` | `SortedList` and `Config`, the objects as the model reads them |
//! | `error.rs` | what refuses a whole source, and how errors and findings are collected |
//! | `finding.rs` | what is found about one object: severity, reason, message |

mod cilium;
mod endpoints;
mod error;
mod finding;
#[cfg(test)]
pub(crate) mod fixtures;
mod l2policy;
mod list;
mod name;
mod node;
mod object;
mod pool;
mod prefix;
mod protocol;
mod selector;
mod selector_text;
mod service;
mod set;

pub(crate) use cilium::{CiliumL2AnnouncementPolicy, CiliumLoadBalancerIpPool};
pub(crate) use endpoints::endpoint_slice;
pub use endpoints::{Endpoint, EndpointPort, EndpointSlice, SERVICE_NAME_LABEL};
pub use error::{ConfigError, ConfigErrors};
pub(crate) use error::{Diagnostics, ObjectDiagnostics};
pub use finding::{Finding, Reason, Severity};
pub use l2policy::L2Policy;
pub(crate) use l2policy::l2_policy;
pub use list::SortedList;
pub use name::Name;
pub use node::Node;
pub(crate) use node::node;
pub use object::{Kind, Object, ObjectRef};
pub(crate) use pool::pool;
pub use pool::{IpBlock, IpPool};
pub use prefix::{Ipv4Net, PrefixError};
pub use protocol::Protocol;
pub use selector::{Operator, Requirement, Selector};
pub use service::{
    DEFAULT_AFFINITY_TIMEOUT_SECS, FieldAddr, Ipv6Wanted, L2_ANNOUNCER_CLASS,
    LB_IPAM_IPS_ANNOTATION, LB_IPAM_IPS_ANNOTATION_ALIAS,
    LB_IPAM_SHARING_CROSS_NAMESPACE_ANNOTATION, LB_IPAM_SHARING_KEY_ANNOTATION,
    LoadBalancerClasses, MAX_AFFINITY_TIMEOUT_SECS, Service, ServicePort, Sharing, TargetPort,
    TrafficPolicy, Unservable,
};
pub(crate) use service::{is_load_balancer, service};
pub use set::{Config, ServiceWithSlices};
pub(crate) use set::{l2_policy_order, node_order, pool_order, service_order, slice_order};
