//! `CiliumL2AnnouncementPolicy`: which services' VIPs are answered for in ARP, by which
//! nodes, on which interfaces.

use regex::Regex;

use super::ObjectRef;
use super::cilium::CiliumL2AnnouncementPolicy;
use super::error::ObjectDiagnostics;
use super::selector::{Selector, selector};

#[derive(Clone, Debug)]
pub struct L2Policy {
    pub name: String,
    /// `spec.interfaces`: an interface is used if any regex matches anywhere in its name (Go's
    /// `regexp.MatchString`, unanchored). Empty means every interface.
    pub interfaces: Vec<Regex>,
    /// `spec.loadBalancerIPs`; false (Cilium's default) announces no VIP at all.
    pub load_balancer_ips: bool,
    pub node_selector: Selector,
    pub service_selector: Selector,
}

/// Regexes compare by their pattern: the same pattern matches the same interfaces.
impl PartialEq for L2Policy {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.interfaces.len() == other.interfaces.len()
            && self
                .interfaces
                .iter()
                .zip(&other.interfaces)
                .all(|(a, b)| a.as_str() == b.as_str())
            && self.load_balancer_ips == other.load_balancer_ips
            && self.node_selector == other.node_selector
            && self.service_selector == other.service_selector
    }
}

impl L2Policy {
    pub const KIND: &str = "CiliumL2AnnouncementPolicy";

    pub fn object(&self) -> ObjectRef {
        ObjectRef::cluster_scoped(Self::KIND, &self.name)
    }
}

pub(crate) fn l2_policy(
    raw: &CiliumL2AnnouncementPolicy,
    name: String,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<L2Policy> {
    let mut interfaces = Vec::new();
    for (i, pattern) in raw.spec.interfaces.iter().flatten().enumerate() {
        match Regex::new(pattern) {
            Ok(regex) => interfaces.push(regex),
            Err(error) => diagnostics.error(
                format!("spec.interfaces[{i}]"),
                format!("bad regex {pattern:?}: {}", last_line(&error.to_string())),
            ),
        }
    }
    if !raw.spec.load_balancer_ips {
        diagnostics.warn(
            "spec.loadBalancerIPs",
            "not true: this policy announces no LoadBalancer VIP",
        );
    }
    let node_selector = selector(
        raw.spec.node_selector.as_ref(),
        "spec.nodeSelector",
        diagnostics,
    );
    let service_selector = selector(
        raw.spec.service_selector.as_ref(),
        "spec.serviceSelector",
        diagnostics,
    );
    diagnostics.finish(L2Policy {
        name,
        interfaces,
        load_balancer_ips: raw.spec.load_balancer_ips,
        node_selector,
        service_selector,
    })
}

/// regex's syntax errors draw a caret diagram over several lines and end with
/// `error: <what>`; findings are one per line, so keep only the what.
fn last_line(message: &str) -> &str {
    message
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .unwrap_or_else(|| message.trim())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{Operator, Requirement};

    fn policy_doc(spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: p\n\
             spec:\n{spec}"
        )
    }

    #[test]
    fn reads_the_reference_policy() {
        let policy = reference().l2_policies.remove(0);
        assert_eq!(
            policy.object().to_string(),
            "CiliumL2AnnouncementPolicy/l2-policy"
        );
        let patterns: Vec<&str> = policy.interfaces.iter().map(|r| r.as_str()).collect();
        assert_eq!(patterns, ["^e.*"]);
        assert!(policy.load_balancer_ips);
        assert_eq!(
            policy.node_selector.requirements,
            [Requirement {
                key: "node-role.kubernetes.io/control-plane".into(),
                operator: Operator::DoesNotExist,
            }]
        );
        assert!(policy.service_selector.requirements.is_empty());
    }

    #[test]
    fn load_balancer_ips_defaults_to_false_with_a_warning() {
        let text = policy_doc("  externalIPs: true\n");
        let policy = parse_ok(&text).l2_policies.remove(0);
        assert!(!policy.load_balancer_ips);
        assert!(policy.interfaces.is_empty());
        assert_line(
            &parse_warnings(&text),
            &["CiliumL2AnnouncementPolicy/p: spec.loadBalancerIPs: not true"],
        );
    }

    #[test]
    fn bad_regexes_name_the_entry() {
        let errors = parse_errors(&policy_doc(
            "  loadBalancerIPs: true\n  interfaces:\n    - ^eth[0-9]+\n    - \"(ens\"\n",
        ));
        assert_eq!(
            errors,
            [
                "objects.yaml: CiliumL2AnnouncementPolicy/p: spec.interfaces[1]: bad regex \"(ens\": unclosed group"
            ]
        );
    }

    #[test]
    fn selector_errors_name_the_selector() {
        let errors = parse_errors(&policy_doc(
            "  loadBalancerIPs: true\n  nodeSelector:\n    matchExpressions:\n\
             \x20     - key: zone\n        operator: In\n\
             \x20     - key: gpu\n        operator: Exists\n        values: [\"yes\"]\n",
        ));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_line(
            &errors,
            &[
                "CiliumL2AnnouncementPolicy/p: spec.nodeSelector.matchExpressions[0].values: operator In needs at least one value",
            ],
        );
        assert_line(
            &errors,
            &[
                "CiliumL2AnnouncementPolicy/p: spec.nodeSelector.matchExpressions[1].values: operator Exists takes no values",
            ],
        );
    }
}
