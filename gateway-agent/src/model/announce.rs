//! L2 announcement policies: which ones announce a service's addresses, and on which of
//! this node's interfaces.
//!
//! Several policies selecting one service are merged, as Cilium merges them: the address
//! is announced by one node, elected among the nodes any of them selects, on the
//! interfaces of every one of them that selects that node. The reference's "only ONE policy
//! should exist" is about Cilium's ARP conflicts, which the election rules out here.

use crate::config::{Config, L2Policy, Service};

use super::selector::service_labels;

/// What kind of address a service is announced on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum AddressKind {
    /// A VIP LB-IPAM granted: announced by policies with `loadBalancerIPs: true`.
    LoadBalancer,
    /// One of `spec.externalIPs`: announced by policies with `externalIPs: true`.
    External,
}

impl AddressKind {
    fn announced_by(self, policy: &L2Policy) -> bool {
        match self {
            AddressKind::LoadBalancer => policy.load_balancer_ips,
            AddressKind::External => policy.external_ips,
        }
    }
}

/// The policies (indexes into `config.l2_policies`, so by name) that announce `service`'s
/// addresses of `kind`: those announcing that kind whose serviceSelector selects it.
pub(crate) fn policies_for(config: &Config, service: &Service, kind: AddressKind) -> Vec<usize> {
    let labels = service_labels(service);
    (config.l2_policies.iter().enumerate())
        .filter(|(_, policy)| kind.announced_by(policy) && policy.service_selector.matches(&labels))
        .map(|(i, _)| i)
        .collect()
}

/// For each policy (by index), the interfaces among `interfaces` it announces on when it
/// selects this node (`labels` of its Node object, `None` when there is none): sorted and
/// deduplicated; empty for a policy that does not select the node.
pub(crate) fn interfaces_by_policy(
    config: &Config,
    node: Option<&crate::config::Node>,
    interfaces: &[String],
) -> Vec<Vec<String>> {
    (config.l2_policies.iter())
        .map(|policy| match node {
            Some(node) if policy.node_selector.matches(&node.labels) => {
                matching(policy, interfaces).map(str::to_owned).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

/// The interfaces among `interfaces` that `policy` announces on, sorted and deduplicated.
pub(crate) fn matching<'i>(
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
    use std::collections::BTreeMap;

    use regex::Regex;

    use super::*;
    use crate::config::fixtures::*;
    use crate::config::{Reason, Selector};
    use crate::model::{cluster_state, desired_state};

    fn policy(patterns: &[&str]) -> L2Policy {
        L2Policy {
            name: "p".into(),
            interfaces: patterns
                .iter()
                .map(|p| Regex::new(p).expect("valid regex"))
                .collect(),
            load_balancer_ips: true,
            external_ips: false,
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
            let matched: Vec<&str> = matching(&policy(patterns), &node).collect();
            assert_eq!(matched, expected, "{patterns:?}");
        }
    }

    /// (interface, VIP, service, policy) of each announcement of `node`.
    fn announced(
        text: &str,
        node: &str,
        interfaces: &[&str],
    ) -> Vec<(String, String, String, String)> {
        let interfaces: Vec<String> = interfaces.iter().map(|i| i.to_string()).collect();
        desired_state(&parse_ok(text), node, &interfaces)
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
            .collect()
    }

    #[test]
    fn the_announcer_announces_on_every_matching_interface() {
        let internal = "cilium-gateway-gateway-internal".to_owned();
        assert_eq!(
            announced(REFERENCE, "worker-2", &["lo", "eth1", "ens18", "wlan0"]),
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
             spec:\n  interfaces: [\"^wl\"]\n{spec}"
        )
    }

    /// VIP -> the nodes that announce it.
    fn announcers(text: &str) -> BTreeMap<String, Vec<&'static str>> {
        let mut by_vip: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for node in ["cp-1", "worker-1", "worker-2"] {
            for (_, vip, _, _) in announced(text, node, &["ens18", "wlan0"]) {
                let nodes = by_vip.entry(vip).or_default();
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            }
        }
        by_vip
    }

    #[test]
    fn two_policies_selecting_a_service_are_merged_into_one_announcement() {
        // The reference's "OLD - BROKEN" setup: a second, overlapping policy. It also
        // selects the control plane, where neither gateway has an endpoint.
        let text = reference_with(&second_policy("  loadBalancerIPs: true\n"));
        let state = cluster_state(&parse_ok(&text));
        assert!(state.findings.is_empty(), "{:#?}", state.findings);
        // One node per VIP, the same as with the one policy.
        assert_eq!(announcers(&text), announcers(REFERENCE));
        // On the interfaces of both policies: ens18 from l2-policy, wlan0 from the second.
        assert_eq!(
            announced(&text, "worker-2", &["ens18", "wlan0"]),
            [
                (
                    "ens18".into(),
                    "192.168.10.49".into(),
                    "cilium-gateway-gateway-internal".into(),
                    "l2-policy".into()
                ),
                (
                    "wlan0".into(),
                    "192.168.10.49".into(),
                    "cilium-gateway-gateway-internal".into(),
                    "l2-announcement".into()
                ),
            ]
        );
    }

    #[test]
    fn a_node_announces_when_any_selecting_policy_picks_it() {
        // l2-policy keeps the control plane out; a second policy picks only worker-1 and
        // announces on wlan0. worker-2 is out of the first: both VIPs go to worker-1, the
        // only node either policy picks that runs an endpoint (cp-1 runs none).
        let text = edit(
            &reference_with(&second_policy(
                "  loadBalancerIPs: true\n  nodeSelector:\n    matchLabels:\n      kubernetes.io/hostname: worker-1\n",
            )),
            "        operator: DoesNotExist\n",
            "        operator: DoesNotExist\n      - key: kubernetes.io/hostname\n        operator: NotIn\n        values: [worker-2]\n",
        );
        assert_eq!(
            announcers(&text),
            BTreeMap::from([
                ("192.168.10.49".to_owned(), vec!["worker-1"]),
                ("192.168.10.50".to_owned(), vec!["worker-1"]),
            ])
        );
        // worker-1: ens18 from l2-policy, wlan0 from the second.
        let interfaces: Vec<String> = announced(&text, "worker-1", &["ens18", "wlan0"])
            .into_iter()
            .map(|(interface, vip, _, _)| format!("{vip} {interface}"))
            .collect();
        assert_eq!(
            interfaces,
            [
                "192.168.10.49 ens18",
                "192.168.10.50 ens18",
                "192.168.10.49 wlan0",
                "192.168.10.50 wlan0"
            ]
        );
    }

    #[test]
    fn policies_that_announce_other_kinds_or_services_do_not_join() {
        let cases = [
            // Announces no LB IPs at all.
            second_policy("  externalIPs: true\n"),
            // Selects a service that is not one of the gateways.
            second_policy(
                "  loadBalancerIPs: true\n  serviceSelector:\n    matchLabels:\n      app: other\n",
            ),
        ];
        for extra in cases {
            let text = reference_with(&extra);
            assert_eq!(announcers(&text), announcers(REFERENCE));
            assert!(
                announced(&text, "worker-2", &["ens18", "wlan0"])
                    .iter()
                    .all(|(interface, ..)| interface == "ens18")
            );
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
        let state = cluster_state(&parse_ok(&text));
        let internal = &state.services[1];
        assert_eq!(internal.service.name, "cilium-gateway-gateway-internal");
        assert_eq!(internal.vips[0].announcer, None);
        assert!(state.services[0].vips[0].announcer.is_some());
        let lines: Vec<String> = state.findings.iter().map(ToString::to_string).collect();
        assert_line(
            &lines,
            &[
                "objects.yaml: Service/gateway/cilium-gateway-gateway-internal: no CiliumL2AnnouncementPolicy",
                "VIP 192.168.10.49 is not announced",
            ],
        );
        assert_eq!(state.findings[0].reason, Reason::NoAnnouncementPolicy);
    }
}
