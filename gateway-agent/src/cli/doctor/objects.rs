//! The objects, following the reference's decision tree: intermittent connectivity ->
//! externalTrafficPolicy -> duplicate L2 policies -> session affinity.

use std::path::Path;

use gateway_common::timeouts;

use super::finding::{Finding, Severity};
use crate::config::{Config, ConfigErrors};
use crate::model::{TrafficPolicy, selector::service_labels};

/// Each LoadBalancer service's traffic policy, L2 policies and session affinity.
pub fn check_objects(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    for service in &config.services {
        let name = service.object.to_string();
        let labels = service_labels(service);
        let policies: Vec<&str> = config
            .l2_policies
            .iter()
            .filter(|p| p.load_balancer_ips && p.service_selector.matches(&labels))
            .map(|p| p.name.as_str())
            .collect();
        findings.push(traffic_policy(&name, service.traffic_policy));
        findings.push(l2_policies(&name, &policies));
        findings.push(session_affinity(&name, service.affinity_timeout_secs));
    }
    findings
}

/// `Cluster` SNATs and may send a client's requests to different nodes' backends: an error
/// (gateway does not program it). `Local` is what the reference needs.
fn traffic_policy(service: &str, policy: TrafficPolicy) -> Finding {
    if policy == TrafficPolicy::Cluster {
        Finding::new(
            Severity::Error,
            "externalTrafficPolicy",
            service,
            "Cluster: traffic is SNATed (backends see the node's address, not the client's) and may hop to \
             another node's backend, so one client's requests land on different envoys and sessions, \
             cookies and WebSocket upgrades break (the reference's root cause). gateway does not program it.",
            "set spec.externalTrafficPolicy: Local",
        )
    } else {
        Finding::new(
            Severity::Ok,
            "externalTrafficPolicy",
            service,
            "Local: no SNAT, the client's address reaches a backend on the announcing node",
            "",
        )
    }
}

/// The L2 announcement policies (with `loadBalancerIPs: true`) that select the service:
/// none leaves its VIP unanswered (a warning), more than one lets several nodes answer ARP
/// for it (an error).
fn l2_policies(service: &str, policies: &[&str]) -> Finding {
    match policies {
        [] => Finding::new(
            Severity::Warning,
            "L2 policies",
            service,
            "no CiliumL2AnnouncementPolicy with loadBalancerIPs: true selects it: no node answers ARP for its VIP",
            "add it to the one L2 policy's serviceSelector",
        ),
        [one] => Finding::new(
            Severity::Ok,
            "L2 policies",
            service,
            format!("announced under {one}"),
            "",
        ),
        many => Finding::new(
            Severity::Error,
            "L2 policies",
            service,
            format!(
                "{} policies select it ({}): several nodes may answer ARP for one VIP (ARP conflicts)",
                many.len(),
                many.join(", ")
            ),
            "keep exactly one CiliumL2AnnouncementPolicy",
        ),
    }
}

/// Session affinity: none sends a client's connections to different backends (a warning);
/// ClientIP shorter than the reference's 3 hours is worth knowing.
fn session_affinity(service: &str, timeout_secs: Option<u32>) -> Finding {
    match timeout_secs {
        None => Finding::new(
            Severity::Warning,
            "sessionAffinity",
            service,
            "None: a client's new connections may go to different backends (sessions held in the backend are lost)",
            "set spec.sessionAffinity: ClientIP with timeoutSeconds: 10800",
        ),
        Some(t) if t < timeouts::AFFINITY => Finding::new(
            Severity::Info,
            "sessionAffinity",
            service,
            format!(
                "ClientIP for {t} s, shorter than the reference's {} s",
                timeouts::AFFINITY
            ),
            "raise sessionAffinityConfig.clientIP.timeoutSeconds to 10800",
        ),
        Some(t) => Finding::new(
            Severity::Ok,
            "sessionAffinity",
            service,
            format!("ClientIP for {t} s"),
            "",
        ),
    }
}

/// The file does not validate: every error, as an error naming the field.
pub fn invalid_file(path: &Path, errors: &ConfigErrors) -> Vec<Finding> {
    errors
        .0
        .iter()
        .map(|e| {
            Finding::new(
                Severity::Error,
                "objects",
                path.display().to_string(),
                e.to_string(),
                "fix the field named",
            )
        })
        .collect()
}

/// Neither a file given nor an agent to ask which one it runs with.
pub fn not_checked() -> Finding {
    Finding::new(
        Severity::Info,
        "objects",
        "-",
        "no file given and no agent to ask: the objects were not checked",
        "pass --config FILE",
    )
}

/// The objects validate one by one but not together (VIP conflicts, exhausted pools, ...):
/// every error, naming the objects.
pub fn inconsistent(source: &str, errors: &ConfigErrors) -> Vec<Finding> {
    errors
        .0
        .iter()
        .map(|e| {
            Finding::new(
                Severity::Error,
                "objects",
                source,
                e.to_string(),
                "fix the objects named",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::reference;

    fn severities(findings: &[Finding]) -> Vec<(&str, Severity)> {
        findings.iter().map(|f| (f.check, f.severity)).collect()
    }

    #[test]
    fn the_reference_objects_are_healthy() {
        let findings = check_objects(&reference());
        assert_eq!(findings.len(), 6, "three checks for each of two services");
        assert!(
            findings
                .iter()
                .all(|f| f.severity == Severity::Ok && f.fix.is_empty()),
            "{findings:#?}"
        );
        assert_eq!(
            severities(&findings[..3]),
            [
                ("externalTrafficPolicy", Severity::Ok),
                ("L2 policies", Severity::Ok),
                ("sessionAffinity", Severity::Ok),
            ]
        );
        assert_eq!(findings[1].finding, "announced under l2-policy");
        let subjects: Vec<&str> = findings.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "Service/gateway/cilium-gateway-gateway-external",
                "Service/gateway/cilium-gateway-gateway-external",
                "Service/gateway/cilium-gateway-gateway-external",
                "Service/gateway/cilium-gateway-gateway-internal",
                "Service/gateway/cilium-gateway-gateway-internal",
                "Service/gateway/cilium-gateway-gateway-internal",
            ]
        );
    }

    #[test]
    fn cluster_traffic_policy_is_an_error() {
        let f = traffic_policy("gateway/gw", TrafficPolicy::Cluster);
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(f.subject, "gateway/gw");
        assert_eq!(f.fix, "set spec.externalTrafficPolicy: Local");
        assert_eq!(
            traffic_policy("gateway/gw", TrafficPolicy::Local).severity,
            Severity::Ok
        );
    }

    #[test]
    fn exactly_one_l2_policy_is_wanted() {
        assert_eq!(l2_policies("s", &[]).severity, Severity::Warning);
        assert_eq!(l2_policies("s", &["a"]).severity, Severity::Ok);
        let two = l2_policies("s", &["a", "b"]);
        assert_eq!(two.severity, Severity::Error);
        assert!(
            two.finding.starts_with("2 policies select it (a, b): "),
            "{}",
            two.finding
        );
    }

    #[test]
    fn session_affinity_below_three_hours_is_worth_knowing() {
        let levels =
            [None, Some(60), Some(10800), Some(86400)].map(|t| session_affinity("s", t).severity);
        assert_eq!(
            levels,
            [
                Severity::Warning,
                Severity::Info,
                Severity::Ok,
                Severity::Ok
            ]
        );
        assert_eq!(
            session_affinity("s", Some(60)).finding,
            "ClientIP for 60 s, shorter than the reference's 10800 s"
        );
    }
}
