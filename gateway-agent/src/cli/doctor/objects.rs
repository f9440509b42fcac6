//! The objects, following the reference's decision tree: intermittent connectivity ->
//! externalTrafficPolicy -> duplicate L2 policies -> session affinity; then every finding
//! the source and the model made about an object (what is not served, and why), each with
//! its fix.

use std::collections::BTreeSet;

use gateway_common::timeouts;

use super::finding::{Finding, Severity};
use crate::config::{self, Config, ConfigErrors, Reason};
use crate::model::{self, TrafficPolicy, selector::service_labels};

/// Each LoadBalancer service's traffic policy, L2 policies and session affinity, and what
/// the model finds about every object, cluster-wide and on `node`.
pub fn check_objects(config: &Config, node: Option<&str>) -> Vec<Finding> {
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
    let mut found: BTreeSet<config::Finding> =
        model::cluster_state(config).findings.into_iter().collect();
    if let Some(node) = node {
        found.extend(model::desired_state(config, node, &[]).findings);
    }
    findings.extend(found.iter().map(object_finding));
    findings
}

/// A finding of the source or the model, as the doctor shows it: the object as subject, the
/// reason and the field in the finding, and what to do about it.
fn object_finding(f: &config::Finding) -> Finding {
    let severity = match f.severity {
        config::Severity::Info => Severity::Info,
        config::Severity::Warning => Severity::Warning,
        config::Severity::Error => Severity::Error,
    };
    let subject = f
        .object
        .as_ref()
        .map_or_else(|| f.file.clone(), ToString::to_string);
    let finding = if f.field.is_empty() {
        format!("{}: {}", f.reason, f.message)
    } else {
        format!("{}: {}: {}", f.reason, f.field, f.message)
    };
    Finding::new(severity, "objects", subject, finding, fix(f.reason))
}

/// What to do about a finding of this reason.
fn fix(reason: Reason) -> &'static str {
    match reason {
        Reason::KindNotRead | Reason::LoadBalancerClassNotServed | Reason::Satisfied => "",
        Reason::ApiVersionNotRead => "write the object in an apiVersion the agent reads",
        Reason::ObjectNotRead => {
            "fix the field named (the API server stored it; a webhook or an old CRD may have let it through)"
        }
        Reason::KindNotServed => {
            "install the Cilium CRDs (deploy/crds.yaml where Cilium is not installed)"
        }
        Reason::UnsupportedProtocol => {
            "serve the port over TCP or UDP, or leave it to another load balancer"
        }
        Reason::InvalidPort | Reason::DuplicatePort => {
            "give each port a number in 1..=65535, once per protocol"
        }
        Reason::InvalidTrafficPolicy => "set spec.externalTrafficPolicy: Local",
        Reason::InvalidSessionAffinity => {
            "set sessionAffinity: ClientIP with timeoutSeconds in 1..=86400 (10800 as in the reference)"
        }
        Reason::InvalidRequestedIP | Reason::InvalidAddress => {
            "write IP addresses, comma-separated"
        }
        Reason::InvalidSourceRange => {
            "write each range as an IPv4 CIDR with its host bits clear (10.0.0.0/8)"
        }
        Reason::IPv6NotServed => "serve the Service over IPv4 (spec.ipFamilies: [IPv4])",
        Reason::NoPool => "add a pool whose serviceSelector selects the Service, or enable one",
        Reason::OutOfIPs => "add a block to a pool that selects the Service",
        Reason::RequestedIPNotInPool | Reason::PoolSelectorMismatch | Reason::PoolDisabled => {
            "request an address of an enabled pool that selects the Service"
        }
        Reason::RequestedIPReserved => {
            "request another address, or set allowFirstLastIPs: Yes on the pool"
        }
        Reason::AlreadyAllocated | Reason::IncompatibleSharing => {
            "request another address, or give both Services one lbipam.cilium.io/sharing-key and ports that do not clash"
        }
        Reason::StaleStatusIP => "",
        Reason::PoolConflict => "make the pools' blocks disjoint",
        Reason::InvalidBlock | Reason::HostBitsSet => {
            "write the block as a CIDR or a start/stop range"
        }
        Reason::InvalidAllowFirstLastIPs => "set allowFirstLastIPs to \"Yes\" or \"No\"",
        Reason::InvalidSelector => "fix the selector's requirements",
        Reason::InvalidInterfaceRegex => "fix the regex (Go syntax)",
        Reason::AnnouncesNothing => {
            "set loadBalancerIPs: true (and externalIPs: true to announce external IPs)"
        }
        Reason::NoAnnouncementPolicy => {
            "select the Service with the one L2 policy's serviceSelector"
        }
        Reason::NoEligibleNode => {
            "make a node Ready, selected by the policy's nodeSelector (with a ready endpoint of a Local Service)"
        }
        Reason::NamedPortUnresolved => "name the slice's port as the Service's targetPort",
        Reason::PortConflict => "serve the port on another address",
        Reason::SliceNotServed => "",
        Reason::NodeNotFound => "run the agent with --node-name as in the Node object",
    }
}

/// `Cluster` is served, but SNATs what goes to another node's backend and spreads a
/// client's connections over every node's backends: a warning. `Local` is what the
/// reference needs.
fn traffic_policy(service: &str, policy: TrafficPolicy) -> Finding {
    if policy == TrafficPolicy::Cluster {
        Finding::new(
            Severity::Warning,
            "externalTrafficPolicy",
            service,
            "Cluster: served, but connections to a backend on another node are SNATed to the announcing \
             node's address, so that backend sees the node, not the client (access logs, allow-lists \
             and X-Forwarded-For lose the client's address); without ClientIP affinity one client's \
             connections also spread over every node's envoy, and sessions, cookies and WebSocket \
             upgrades that expect one envoy break (the reference's root cause)",
            "set spec.externalTrafficPolicy: Local to keep the client's address",
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
/// none leaves its VIP unanswered (a warning); more than one are merged into one
/// announcement (one node answers ARP), which is worth knowing since with Cilium it was the
/// reference's ARP conflict.
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
            Severity::Info,
            "L2 policies",
            service,
            format!(
                "{} policies select it ({}): merged into one announcement, one node answers ARP \
                 (with Cilium, the reference's ARP conflicts)",
                many.len(),
                many.join(", ")
            ),
            "keep one CiliumL2AnnouncementPolicy, as the reference advises",
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

/// The objects could not be read (a file that does not parse, a cluster that cannot be
/// reached): every error, naming its source.
pub fn unreadable(errors: &ConfigErrors) -> Vec<Finding> {
    errors
        .0
        .iter()
        .map(|e| {
            Finding::new(
                Severity::Error,
                "objects",
                e.file.clone(),
                e.to_string(),
                "fix the field named, or say where to read the objects (--config, --kubeconfig)",
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
        let findings = check_objects(&reference(), None);
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
    fn cluster_traffic_policy_is_a_warning_that_the_client_address_is_lost() {
        let f = traffic_policy("gateway/gw", TrafficPolicy::Cluster);
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!(f.subject, "gateway/gw");
        assert!(f.finding.contains("SNAT"), "{}", f.finding);
        assert_eq!(
            f.fix,
            "set spec.externalTrafficPolicy: Local to keep the client's address"
        );
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
        assert_eq!(two.severity, Severity::Info);
        assert!(
            two.finding
                .starts_with("2 policies select it (a, b): merged"),
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
