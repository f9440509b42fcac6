//! `CiliumL2AnnouncementPolicy`: which services' VIPs are answered for in ARP, by which
//! nodes, on which interfaces.
//!
//! A policy that cannot be read whole (an interface regex that does not compile, a
//! selector Kubernetes would reject) is not delivered: announcing on other interfaces or
//! nodes than the ones meant would be worse than not announcing, and the finding says why.
//! Several policies selecting one service are merged by the model, as Cilium does.

use regex::Regex;

use super::cilium::CiliumL2AnnouncementPolicy;
use super::error::ObjectDiagnostics;
use super::selector::{Selector, selector};
use super::{ObjectRef, Reason};

#[derive(Clone, Debug)]
pub struct L2Policy {
    pub name: String,
    /// `spec.interfaces`: an interface is used if any regex matches anywhere in its name (Go's
    /// `regexp.MatchString`, unanchored). Empty means every interface.
    pub interfaces: Vec<Regex>,
    /// `spec.loadBalancerIPs`: the Services' VIPs are announced (Cilium's default: false).
    pub load_balancer_ips: bool,
    /// `spec.externalIPs`: the Services' `spec.externalIPs` are announced and served
    /// (Cilium's default: false).
    pub external_ips: bool,
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
            && self.external_ips == other.external_ips
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

/// The policy, or `None` (with a finding for each field that cannot be read).
pub(crate) fn l2_policy(
    raw: &CiliumL2AnnouncementPolicy,
    name: String,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<L2Policy> {
    let mut readable = true;
    let mut interfaces = Vec::new();
    for (i, pattern) in raw.spec.interfaces.iter().flatten().enumerate() {
        match Regex::new(pattern) {
            Ok(regex) => interfaces.push(regex),
            Err(error) => {
                readable = false;
                diagnostics.refuse(
                    Reason::InvalidInterfaceRegex,
                    format!("spec.interfaces[{i}]"),
                    format!(
                        "bad regex {pattern:?}: {}; the policy announces nothing",
                        last_line(&error.to_string())
                    ),
                );
            }
        }
    }
    let (load_balancer_ips, external_ips) = (raw.spec.load_balancer_ips, raw.spec.external_ips);
    if !load_balancer_ips && !external_ips {
        diagnostics.warn(
            Reason::AnnouncesNothing,
            "spec.loadBalancerIPs",
            "neither loadBalancerIPs nor externalIPs is true: this policy announces nothing",
        );
    }
    let mut selector_at = |raw, field| match selector(raw, field) {
        Ok(selector) => selector,
        Err(errors) => {
            readable = false;
            for error in errors {
                diagnostics.refuse(
                    Reason::InvalidSelector,
                    error.field,
                    format!("{}; the policy announces nothing", error.message),
                );
            }
            Selector::default()
        }
    };
    let node_selector = selector_at(raw.spec.node_selector.as_ref(), "spec.nodeSelector");
    let service_selector = selector_at(raw.spec.service_selector.as_ref(), "spec.serviceSelector");
    readable.then_some(L2Policy {
        name,
        interfaces,
        load_balancer_ips,
        external_ips,
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
    use super::super::{Operator, Requirement, Severity};

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
    fn ip_kinds_default_to_false_and_a_policy_announcing_neither_is_told() {
        let text = policy_doc("  externalIPs: true\n");
        let policy = parse_ok(&text).l2_policies.remove(0);
        assert!(!policy.load_balancer_ips && policy.external_ips);
        assert!(policy.interfaces.is_empty());
        assert_eq!(parse_findings(&text), Vec::<String>::new());
        let neither = policy_doc("  interfaces: [eth0]\n");
        assert_eq!(
            parse_findings(&neither),
            [
                "objects.yaml: CiliumL2AnnouncementPolicy/p: spec.loadBalancerIPs: neither \
              loadBalancerIPs nor externalIPs is true: this policy announces nothing"
            ]
        );
    }

    /// A policy that cannot be read whole is not delivered, with every reason.
    #[test]
    fn unreadable_policies_announce_nothing_and_say_why() {
        let cases: [(&str, &[&str]); 2] = [
            (
                "  loadBalancerIPs: true\n  interfaces:\n    - ^eth[0-9]+\n    - \"(ens\"\n",
                &[
                    "objects.yaml: CiliumL2AnnouncementPolicy/p: spec.interfaces[1]: bad regex \"(ens\": unclosed group; the policy announces nothing",
                ],
            ),
            (
                "  loadBalancerIPs: true\n  nodeSelector:\n    matchExpressions:\n\
                 \x20     - key: zone\n        operator: In\n\
                 \x20     - key: gpu\n        operator: Exists\n        values: [\"yes\"]\n",
                &[
                    "objects.yaml: CiliumL2AnnouncementPolicy/p: spec.nodeSelector.matchExpressions[0].values: operator In needs at least one value; the policy announces nothing",
                    "objects.yaml: CiliumL2AnnouncementPolicy/p: spec.nodeSelector.matchExpressions[1].values: operator Exists takes no values; the policy announces nothing",
                ],
            ),
        ];
        for (spec, expected) in cases {
            let text = policy_doc(spec);
            assert!(parse_ok(&text).l2_policies.is_empty(), "{spec}");
            let findings = parse_reasons(&text);
            assert!(findings.iter().all(|(s, _, _)| *s == Severity::Error));
            let lines: Vec<&str> = findings.iter().map(|(_, _, l)| l.as_str()).collect();
            assert_eq!(lines, expected);
        }
    }
}
