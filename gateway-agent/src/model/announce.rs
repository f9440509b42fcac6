//! L2 announcement policies: which one announces a service's VIP, and on which of this
//! node's interfaces.

use crate::config::{Config, Diagnostics, L2Policy, Service};

use super::selector::service_labels;

/// The policy that announces `service`'s VIP: the one with `loadBalancerIPs: true` whose
/// serviceSelector selects it. More than one is an error (the reference: "Only ONE policy
/// should exist. Having multiple policies causes ARP conflicts"), reported naming them all.
pub(crate) fn policy_for<'c>(
    config: &'c Config,
    service: &Service,
    diagnostics: &mut Diagnostics,
) -> Option<&'c L2Policy> {
    let labels = service_labels(service);
    let selecting: Vec<&L2Policy> = config
        .l2_policies
        .iter()
        .filter(|policy| policy.load_balancer_ips && policy.service_selector.matches(&labels))
        .map(|policy| &**policy)
        .collect();
    match selecting.as_slice() {
        [] => None,
        [policy] => Some(policy),
        many => {
            let names: Vec<String> = many.iter().map(|p| p.object().to_string()).collect();
            diagnostics.error(
                Some(&service.object),
                "metadata.labels",
                format!(
                    "selected by {} L2 announcement policies ({}): only one may select a \
                     service, or nodes answer ARP for its VIP in conflict",
                    many.len(),
                    names.join(", ")
                ),
            );
            None
        }
    }
}

/// The interfaces among `interfaces` that `policy` announces on, sorted and deduplicated.
pub(crate) fn interfaces<'i>(
    policy: &L2Policy,
    interfaces: &'i [String],
) -> impl Iterator<Item = &'i str> {
    let mut matched: Vec<&str> = interfaces
        .iter()
        .map(String::as_str)
        .filter(|name| {
            policy.interfaces.is_empty() || policy.interfaces.iter().any(|re| re.is_match(name))
        })
        .collect();
    matched.sort_unstable();
    matched.dedup();
    matched.into_iter()
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;
    use crate::config::Selector;
    use crate::config::fixtures::*;
    use crate::model::{cluster_state, desired_state};

    fn policy(patterns: &[&str]) -> L2Policy {
        L2Policy {
            name: "p".into(),
            interfaces: patterns
                .iter()
                .map(|p| Regex::new(p).expect("valid regex"))
                .collect(),
            load_balancer_ips: true,
            node_selector: Selector::default(),
            service_selector: Selector::default(),
        }
    }

    #[test]
    fn interface_regexes() {
        let node: Vec<String> = [
            "lo", "ens18", "eth0", "eno1", "enp3s0", "wlan0", "veth1a2b", "docker0", "eth0",
        ]
        .map(String::from)
        .to_vec();
        let cases: [(&[&str], &[&str]); 5] = [
            // The reference's policy: every uplink starting with e.
            (&["^e.*"], &["eno1", "enp3s0", "ens18", "eth0"]),
            // Unanchored like Go's regexp.MatchString: "eth" also matches veth.
            (&["eth"], &["eth0", "veth1a2b"]),
            // OR-ed.
            (&["^eth[0-9]+$", "^ens"], &["ens18", "eth0"]),
            // No regex: every interface.
            (
                &[],
                &[
                    "docker0", "eno1", "enp3s0", "ens18", "eth0", "lo", "veth1a2b", "wlan0",
                ],
            ),
            (&["^bond"], &[]),
        ];
        for (patterns, expected) in cases {
            let matched: Vec<&str> = interfaces(&policy(patterns), &node).collect();
            assert_eq!(matched, expected, "{patterns:?}");
        }
    }

    #[test]
    fn the_announcer_announces_on_every_matching_interface() {
        let config = reference();
        let interfaces = ["lo", "eth1", "ens18", "wlan0"].map(String::from);
        let state =
            desired_state(&config, "worker-2", &interfaces).unwrap_or_else(|e| panic!("{e}"));
        let announced: Vec<(String, String, String, String)> = state
            .announcements
            .iter()
            .map(|a| {
                (
                    a.interface.to_string(),
                    a.vip.to_string(),
                    a.service.name.to_string(),
                    a.policy.to_string(),
                )
            })
            .collect();
        let internal = "cilium-gateway-gateway-internal".to_owned();
        assert_eq!(
            announced,
            [
                (
                    "ens18".into(),
                    "192.168.10.49".into(),
                    internal.clone(),
                    "l2-policy".into()
                ),
                (
                    "eth1".into(),
                    "192.168.10.49".into(),
                    internal,
                    "l2-policy".into()
                ),
            ]
        );
    }

    fn second_policy(spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: l2-announcement\n\
             spec:\n  interfaces: [\"^eth[0-9]+\"]\n{spec}"
        )
    }

    #[test]
    fn two_policies_selecting_a_service_are_an_error_naming_all() {
        // The reference's "OLD - BROKEN" setup: a second, overlapping policy.
        let text = reference_with(&second_policy("  loadBalancerIPs: true\n"));
        let errors = match cluster_state(&parse_ok(&text)) {
            Ok(_) => panic!("expected errors"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        assert_eq!(errors.len(), 2, "{errors:#?}");
        for service in ["internal", "external"] {
            assert_line(
                &errors,
                &[
                    &format!(
                        "objects.yaml: Service/gateway/cilium-gateway-gateway-{service}: metadata.labels:"
                    ),
                    "selected by 2 L2 announcement policies (CiliumL2AnnouncementPolicy/l2-announcement, CiliumL2AnnouncementPolicy/l2-policy)",
                ],
            );
        }
    }

    #[test]
    fn policies_that_do_not_compete_are_fine() {
        let cases = [
            // Announces no LB IPs at all.
            second_policy("  loadBalancerIPs: false\n"),
            // Selects a service that is not one of the gateways.
            second_policy(
                "  loadBalancerIPs: true\n  serviceSelector:\n    matchLabels:\n      app: other\n",
            ),
        ];
        for extra in cases {
            let state =
                cluster_state(&parse_ok(&reference_with(&extra))).unwrap_or_else(|e| panic!("{e}"));
            assert!(state.allocations.iter().all(|a| a.announcer.is_some()));
        }
    }

    #[test]
    fn a_local_service_no_policy_selects_is_not_announced_with_a_warning() {
        let text = edit(
            REFERENCE,
            "  loadBalancerIPs: true\n",
            "  loadBalancerIPs: true\n  serviceSelector:\n    matchLabels:\n\
             \x20     io.cilium.gateway/owning-gateway: gateway-external\n",
        );
        let state = cluster_state(&parse_ok(&text)).unwrap_or_else(|e| panic!("{e}"));
        let internal = &state.allocations[1];
        assert_eq!(internal.service.name, "cilium-gateway-gateway-internal");
        assert_eq!(internal.announcer, None);
        assert!(state.allocations[0].announcer.is_some());
        assert_line(
            &state.warnings,
            &[
                "objects.yaml: Service/gateway/cilium-gateway-gateway-internal: no CiliumL2AnnouncementPolicy",
                "VIP 192.168.10.49 is not announced",
            ],
        );
    }
}
