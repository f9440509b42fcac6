//! Label selector matching, with Kubernetes' semantics, and the labels a service is
//! matched with.

use std::collections::BTreeMap;

use crate::config::{Operator, Requirement, Selector, Service};

/// Cilium lets service selectors match a service's namespace and name as if they were labels
/// (LB-IPAM and L2 announcements both do), e.g. to give one namespace its own pool.
pub const SERVICE_NAMESPACE_PSEUDO_LABEL: &str = "io.kubernetes.service.namespace";
pub const SERVICE_NAME_PSEUDO_LABEL: &str = "io.kubernetes.service.name";

impl Selector {
    /// Every requirement holds; a selector without requirements matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// The labels pool and policy `serviceSelector`s see: the service's own plus the two
/// pseudo-labels, which win over real labels of the same key as in Cilium.
pub(crate) fn service_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels.clone();
    labels.insert(
        SERVICE_NAMESPACE_PSEUDO_LABEL.to_owned(),
        service.object.namespace.clone(),
    );
    labels.insert(
        SERVICE_NAME_PSEUDO_LABEL.to_owned(),
        service.object.name.clone(),
    );
    labels
}
