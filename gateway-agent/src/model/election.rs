//! Which node answers ARP for a VIP: exactly one, and every node agrees without talking to
//! the others (Cilium takes a Kubernetes lease; we have only the file).
//!
//! The eligible nodes are the Node objects that the nodeSelector of an announcing policy
//! selects, that are Ready and not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers` (the Kubernetes convention);
//! for an externalTrafficPolicy Local service, only those that run at least one endpoint of
//! it that takes new flows: a ready one, or one serving while it terminates (a node without
//! one would drop the traffic it attracts; a node whose last endpoint terminates keeps the
//! VIP while that endpoint drains, instead of moving it and cutting the node's connections
//! mid-stream). A Cluster service's node sends traffic on to endpoints anywhere, so any
//! selected node is eligible for it. For an address several services share, the nodes
//! eligible for every one of them. The announcer is the eligible node with the highest
//! [`announcer_score`]; on a tie the name that sorts first. Hashing the VIP with the name (rendezvous hashing) spreads VIPs over
//! the nodes and moves a VIP only when its own announcer leaves or a better-scoring node
//! becomes eligible.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::config::{Config, EndpointSlice, Node, Service, TrafficPolicy};

pub use gateway_cluster::announcer_score;

/// The nodes (indexes into `config.nodes`) that may announce an address of `service`
/// under `policies` (indexes into `config.l2_policies`): Ready, not excluded from load
/// balancers, selected by the nodeSelector of any of the policies, and, for a Local
/// service, running an endpoint of it that takes new flows (ready, or serving while it
/// terminates). With several agents alive the cluster picks
/// among them (see `gateway-cluster`); alone, an agent takes the best-scoring one.
pub(crate) fn eligible(
    config: &Config,
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    policies: &[usize],
) -> Vec<usize> {
    let local = service.traffic_policy == TrafficPolicy::Local;
    (config.nodes.iter().enumerate())
        .filter(|(_, node)| {
            node.ready
                && !node.excluded_from_load_balancers()
                && (policies.iter())
                    .any(|&p| config.l2_policies[p].node_selector.matches(&node.labels))
                && (!local || has_serving_endpoint(slices, &node.name))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Of the `eligible` nodes (indexes into `nodes`), the one that announces `vip`: the
/// highest score wins; of equal scores, the name that sorts first.
pub(crate) fn elect(
    nodes: &[Arc<Node>],
    vip: Ipv4Addr,
    eligible: impl Iterator<Item = usize>,
) -> Option<usize> {
    best(eligible.map(|i| {
        (
            announcer_score(vip, &nodes[i].name),
            nodes[i].name.as_str(),
            i,
        )
    }))
}

/// Of (score, name, index), the index of the highest score; of equal scores, of the name
/// that sorts first.
fn best<'n>(scored: impl Iterator<Item = (u64, &'n str, usize)>) -> Option<usize> {
    scored
        .max_by(|(a_score, a, _), (b_score, b, _)| a_score.cmp(b_score).then_with(|| b.cmp(a)))
        .map(|(_, _, i)| i)
}

fn has_serving_endpoint(slices: &[Arc<EndpointSlice>], node_name: &str) -> bool {
    slices
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .any(|endpoint| {
            (endpoint.ready || endpoint.serving_terminating())
                && !endpoint.addresses.is_empty()
                && endpoint.node_name.as_deref() == Some(node_name)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::fixtures::*;
    use crate::model::{cluster_state, desired_state};

    const VIP_49: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
    const VIP_50: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 50);
    const NODES: [&str; 3] = ["cp-1", "worker-1", "worker-2"];

    #[test]
    fn a_tie_goes_to_the_name_that_sorts_first() {
        assert_eq!(
            best([(7, "b", 1), (7, "a", 0), (3, "c", 2)].into_iter()),
            Some(0)
        );
        assert_eq!(
            best([(7, "b", 1), (9, "c", 2), (7, "a", 0)].into_iter()),
            Some(2)
        );
        assert_eq!(best(std::iter::empty()), None);
    }

    /// VIP -> announcer, as recorded in the cluster-wide status.
    fn announcers(text: &str) -> BTreeMap<String, Option<String>> {
        cluster_state(&parse_ok(text))
            .services
            .into_iter()
            .flat_map(|s| s.vips)
            .map(|v| (v.vip.to_string(), v.announcer.map(String::from)))
            .collect()
    }

    /// VIP -> the nodes that announce it, each computing its own desired state.
    fn announced_by(text: &str) -> BTreeMap<String, Vec<&'static str>> {
        let config = parse_ok(text);
        let interfaces = ["ens18".to_owned(), "lo".to_owned()];
        let mut by_vip: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for node in NODES {
            let state = desired_state(&config, node, &interfaces);
            for announcement in state.announcements {
                by_vip
                    .entry(announcement.vip.to_string())
                    .or_default()
                    .push(node);
            }
        }
        by_vip
    }

    #[test]
    fn exactly_one_node_announces_each_reference_vip() {
        let by_vip = announced_by(REFERENCE);
        assert_eq!(
            by_vip,
            BTreeMap::from([
                ("192.168.10.49".to_owned(), vec!["worker-2"]),
                ("192.168.10.50".to_owned(), vec!["worker-1"]),
            ])
        );
        assert_eq!(
            announcers(REFERENCE),
            BTreeMap::from([
                ("192.168.10.49".to_owned(), Some("worker-2".to_owned())),
                ("192.168.10.50".to_owned(), Some("worker-1".to_owned())),
            ])
        );
    }

    #[test]
    fn the_winner_has_the_highest_score_among_eligible_nodes() {
        for vip in [VIP_49, VIP_50] {
            let expected = ["worker-1", "worker-2"]
                .into_iter()
                .max_by_key(|node| announcer_score(vip, node));
            assert_eq!(
                announcers(REFERENCE)[&vip.to_string()].as_deref(),
                expected,
                "{vip}"
            );
        }
    }

    #[test]
    fn a_node_that_is_not_ready_is_not_elected() {
        let text = edit(
            REFERENCE,
            "  name: worker-2\n  labels:\n    kubernetes.io/hostname: worker-2\nstatus:\n  addresses:\n\
             \x20   - type: InternalIP\n      address: 192.168.10.112\n  conditions:\n    - type: Ready\n      status: \"True\"",
            "  name: worker-2\n  labels:\n    kubernetes.io/hostname: worker-2\nstatus:\n  conditions:\n\
             \x20   - type: Ready\n      status: \"Unknown\"",
        );
        assert_eq!(
            announced_by(&text),
            BTreeMap::from([
                ("192.168.10.49".to_owned(), vec!["worker-1"]),
                ("192.168.10.50".to_owned(), vec!["worker-1"]),
            ])
        );
    }

    #[test]
    fn a_node_excluded_from_load_balancers_is_not_elected() {
        let text = edit(
            REFERENCE,
            "  name: worker-2\n  labels:\n    kubernetes.io/hostname: worker-2\n",
            "  name: worker-2\n  labels:\n    kubernetes.io/hostname: worker-2\n\
             \x20   node.kubernetes.io/exclude-from-external-load-balancers: \"\"\n",
        );
        assert_eq!(
            announced_by(&text),
            BTreeMap::from([
                ("192.168.10.49".to_owned(), vec!["worker-1"]),
                ("192.168.10.50".to_owned(), vec!["worker-1"]),
            ])
        );
    }

    #[test]
    fn a_node_without_a_ready_local_endpoint_is_not_elected() {
        // worker-2's envoy for the internal gateway is not ready.
        let text = edit(
            REFERENCE,
            "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: true\n    targetRef:",
            "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: false\n    targetRef:",
        );
        assert_eq!(
            announcers(&text)["192.168.10.49"].as_deref(),
            Some("worker-1")
        );
        // Removing all local endpoints of worker-1 for the external gateway moves .50 too.
        let text = edit(
            &text,
            "  - addresses: [\"10.0.1.10\"]\n    nodeName: worker-1\n    conditions:\n      ready: true\n  - addresses",
            "  - addresses: []\n    nodeName: worker-1\n  - addresses",
        );
        assert_eq!(
            announcers(&text)["192.168.10.50"].as_deref(),
            Some("worker-2")
        );
    }

    #[test]
    fn a_node_whose_endpoint_terminates_keeps_the_vip_while_the_endpoint_serves() {
        // worker-2 announces .49; its envoy starts terminating.
        let draining = |serving: bool| {
            edit(
                REFERENCE,
                "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: true\n    targetRef:",
                &format!(
                    "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: false\n\
                     \x20     serving: {serving}\n      terminating: true\n    targetRef:"
                ),
            )
        };
        assert_eq!(
            announcers(&draining(true))["192.168.10.49"].as_deref(),
            Some("worker-2")
        );
        // Once it no longer serves, the VIP moves.
        assert_eq!(
            announcers(&draining(false))["192.168.10.49"].as_deref(),
            Some("worker-1")
        );
    }

    #[test]
    fn the_control_plane_is_excluded_by_the_node_selector() {
        // An envoy on the control plane too (the reference's DaemonSet runs everywhere), and
        // cp-1 outscores both workers for both VIPs: only the selector keeps it out.
        let on_control_plane = |text: &str| {
            let text = edit(
                text,
                "    targetRef:\n      kind: Pod\n      name: cilium-envoy-4k9zt",
                "    targetRef:\n      kind: Pod\n      name: cilium-envoy-4k9zt\n      namespace: kube-system\n\
                 \x20 - addresses: [\"10.0.0.10\"]\n    nodeName: cp-1\n    targetRef:\n      kind: Pod\n      name: cilium-envoy-cp",
            );
            edit(
                &text,
                "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: true\nports:",
                "  - addresses: [\"10.0.2.10\"]\n    nodeName: worker-2\n    conditions:\n      ready: true\n\
                 \x20 - addresses: [\"10.0.0.10\"]\n    nodeName: cp-1\nports:",
            )
        };
        for vip in [VIP_49, VIP_50] {
            assert!(announcer_score(vip, "cp-1") > announcer_score(vip, "worker-1"));
            assert!(announcer_score(vip, "cp-1") > announcer_score(vip, "worker-2"));
        }
        let with_envoy = on_control_plane(REFERENCE);
        assert_eq!(announcers(&with_envoy), announcers(REFERENCE));

        let without_selector = edit(
            &with_envoy,
            "  nodeSelector:\n    matchExpressions:\n      - key: node-role.kubernetes.io/control-plane\n\
             \x20       operator: DoesNotExist\n",
            "",
        );
        let by_vip = announced_by(&without_selector);
        assert_eq!(by_vip["192.168.10.49"], ["cp-1"]);
        assert_eq!(by_vip["192.168.10.50"], ["cp-1"]);
    }

    #[test]
    fn no_eligible_node_means_no_announcer_and_a_warning() {
        let text = edit(
            REFERENCE,
            "        operator: DoesNotExist\n",
            "        operator: Exists\n    matchLabels:\n      kubernetes.io/hostname: cp-1\n",
        );
        assert!(announcers(&text).values().all(Option::is_none));
        assert!(announced_by(&text).is_empty());
        let warnings: Vec<String> = (cluster_state(&parse_ok(&text)).findings.iter())
            .map(ToString::to_string)
            .collect();
        assert_line(
            &warnings,
            &[
                "objects.yaml: Service/gateway/cilium-gateway-gateway-internal: no node can announce 192.168.10.49",
                "CiliumL2AnnouncementPolicy/l2-policy",
            ],
        );
    }
}
