//! One object of any kind the agent reads: its identity ([`ObjectRef`]), its [`Kind`] and its
//! validated value ([`Object`]), as a source hands it to the store.

use std::fmt;
use std::sync::Arc;

use super::{EndpointSlice, IpPool, L2Policy, Name, Node, Service};

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

/// The kinds the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    IpPool,
    L2Policy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::IpPool,
        Kind::L2Policy,
    ];

    /// The name objects of this kind carry in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => Service::KIND,
            Kind::EndpointSlice => EndpointSlice::KIND,
            Kind::Node => Node::KIND,
            Kind::IpPool => IpPool::KIND,
            Kind::L2Policy => L2Policy::KIND,
        }
    }

    /// The kind called `name`, if the agent reads it.
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The `apiVersion`s of this kind whose shape the agent understands.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Service | Kind::Node => &["v1"],
            Kind::EndpointSlice => &["discovery.k8s.io/v1"],
            Kind::IpPool => &["cilium.io/v2alpha1", "cilium.io/v2"],
            Kind::L2Policy => &["cilium.io/v2alpha1"],
        }
    }

    /// Objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice)
    }
}

/// A validated object of any kind. The value is shared: the store, the source that made
/// it and the model's cache hold the same one, and an object that did not change keeps its
/// `Arc` (which is how the model knows to reuse what it made of it).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    IpPool(Arc<IpPool>),
    L2Policy(Arc<L2Policy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::IpPool(_) => Kind::IpPool,
            Object::L2Policy(_) => Kind::L2Policy,
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Service(service) => service.object.clone(),
            Object::EndpointSlice(slice) => slice.object.clone(),
            Object::Node(node) => node.object(),
            Object::IpPool(pool) => pool.object(),
            Object::L2Policy(policy) => policy.object(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_found_by_their_name() {
        for kind in Kind::ALL {
            assert_eq!(Kind::named(kind.name()), Some(kind));
        }
        assert_eq!(Kind::named("CiliumLoadBalancerIPPool"), Some(Kind::IpPool));
        assert_eq!(Kind::named("Deployment"), None);
    }
}
