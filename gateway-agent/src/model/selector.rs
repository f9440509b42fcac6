//! Label selector matching, with Kubernetes' semantics, and the labels a service is
//! matched with.

use std::collections::BTreeMap;

use crate::config::{Operator, Requirement, Selector, Service};

/// Cilium lets service selectors match a service's namespace and name as if they were labels
/// (LB-IPAM and L2 announcements both do), e.g. to give one namespace its own pool.
pub const SERVICE_NAMESPACE_PSEUDO_LABEL: &str = "io.kubernetes.service.namespace";
pub const SERVICE_NAME_PSEUDO_LABEL: &str = "io.kubernetes.service.name";

/// Labels a selector can look at.
pub trait Labels {
    fn value(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Selector {
    /// Every requirement holds; a selector without requirements matches everything.
    pub fn matches(&self, labels: &impl Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &impl Labels) -> bool {
        let value = labels.value(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// The labels pool and policy `serviceSelector`s see: the service's own plus the two
/// pseudo-labels, which win over real labels of the same key as in Cilium. A view, not a
/// copy: IPAM looks at every service's labels on every reload.
pub(crate) struct ServiceLabels<'s>(&'s Service);

impl Labels for ServiceLabels<'_> {
    fn value(&self, key: &str) -> Option<&str> {
        let object = &self.0.object;
        match key {
            SERVICE_NAMESPACE_PSEUDO_LABEL => Some(&object.namespace),
            SERVICE_NAME_PSEUDO_LABEL => Some(&object.name),
            _ => self.0.labels.value(key),
        }
    }
}

pub(crate) fn service_labels(service: &Service) -> ServiceLabels<'_> {
    ServiceLabels(service)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::fixtures::reference;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: Operator) -> Selector {
        Selector {
            requirements: vec![Requirement {
                key: key.into(),
                operator,
            }],
        }
    }

    fn values(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn operators() {
        let edge = labels(&[("tier", "edge")]);
        let core = labels(&[("tier", "core")]);
        let none = labels(&[("other", "x")]);
        // (selector, matches edge, matches core, matches a service without the label)
        let cases = [
            (
                requirement("tier", Operator::In(values(&["edge"]))),
                true,
                false,
                false,
            ),
            (
                requirement("tier", Operator::In(values(&["edge", "core"]))),
                true,
                true,
                false,
            ),
            (
                requirement("tier", Operator::NotIn(values(&["edge"]))),
                false,
                true,
                true,
            ),
            (requirement("tier", Operator::Exists), true, true, false),
            (
                requirement("tier", Operator::DoesNotExist),
                false,
                false,
                true,
            ),
            (Selector::default(), true, true, true),
        ];
        for (selector, on_edge, on_core, on_none) in cases {
            assert_eq!(selector.matches(&edge), on_edge, "{selector:?} edge");
            assert_eq!(selector.matches(&core), on_core, "{selector:?} core");
            assert_eq!(selector.matches(&none), on_none, "{selector:?} none");
        }
    }

    #[test]
    fn every_requirement_must_hold() {
        let selector = Selector {
            requirements: vec![
                Requirement {
                    key: "tier".into(),
                    operator: Operator::In(values(&["edge"])),
                },
                Requirement {
                    key: "spot".into(),
                    operator: Operator::DoesNotExist,
                },
            ],
        };
        assert!(selector.matches(&labels(&[("tier", "edge")])));
        assert!(!selector.matches(&labels(&[("tier", "edge"), ("spot", "")])));
        assert!(!selector.matches(&labels(&[("spot", "")])));
    }

    #[test]
    fn an_empty_label_value_exists() {
        let control_plane = labels(&[("node-role.kubernetes.io/control-plane", "")]);
        let not_control_plane = requirement(
            "node-role.kubernetes.io/control-plane",
            Operator::DoesNotExist,
        );
        assert!(!not_control_plane.matches(&control_plane));
        assert!(not_control_plane.matches(&labels(&[])));
    }

    #[test]
    fn services_carry_namespace_and_name_pseudo_labels() {
        let config = reference();
        let labels = service_labels(&config.services[1]);
        assert_eq!(
            labels.value(SERVICE_NAMESPACE_PSEUDO_LABEL),
            Some("gateway")
        );
        assert_eq!(
            labels.value(SERVICE_NAME_PSEUDO_LABEL),
            Some("cilium-gateway-gateway-internal")
        );
        assert_eq!(
            labels.value("io.cilium.gateway/owning-gateway"),
            Some("gateway-internal")
        );
        assert_eq!(labels.value("absent"), None);
    }
}
