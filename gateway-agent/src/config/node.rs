//! `v1 Node`: the labels policies select on, whether the node may announce, and where its
//! agent listens for the others (its InternalIP).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1 as core;

use super::ObjectRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The `Ready` condition: `False` or `Unknown` is not ready. A node without that
    /// condition (a hand-written file) counts as ready.
    pub ready: bool,
    /// The first IPv4 `InternalIP` of `status.addresses`: where the agents of the other
    /// nodes reach this node's agent. `None`: no agent talks to it.
    pub internal_ip: Option<Ipv4Addr>,
}

impl Node {
    pub const KIND: &str = "Node";

    /// The Kubernetes convention for nodes that must not carry load-balancer traffic
    /// (draining, special-purpose): such a node is never elected to announce a VIP.
    pub const EXCLUDE_FROM_LOAD_BALANCERS: &str =
        "node.kubernetes.io/exclude-from-external-load-balancers";

    pub fn object(&self) -> ObjectRef {
        ObjectRef::cluster_scoped(Self::KIND, &self.name)
    }

    /// Labelled [`Self::EXCLUDE_FROM_LOAD_BALANCERS`] (whatever the value, as Kubernetes'
    /// service controller reads it).
    pub fn excluded_from_load_balancers(&self) -> bool {
        self.labels.contains_key(Self::EXCLUDE_FROM_LOAD_BALANCERS)
    }
}

pub(crate) fn node(raw: &core::Node, name: String) -> Node {
    let status = raw.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|ready| ready.status == "True");
    // A dual-stack node lists an IPv6 InternalIP too: the agents talk IPv4.
    let internal_ip = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok());
    Node {
        name,
        labels: raw.metadata.labels.clone().unwrap_or_default(),
        ready,
        internal_ip,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::fixtures::*;

    fn node_ready(conditions: &str) -> bool {
        let text = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n{conditions}");
        parse_ok(&text).nodes[0].ready
    }

    #[test]
    fn readiness_comes_from_the_ready_condition() {
        let with = |ready: &str| {
            format!(
                "status:\n  conditions:\n    - type: DiskPressure\n      status: \"True\"\n\
                 \x20   - type: Ready\n      status: \"{ready}\"\n"
            )
        };
        assert!(node_ready(&with("True")));
        assert!(!node_ready(&with("False")));
        assert!(!node_ready(&with("Unknown")));
        // A hand-written node says nothing: it counts as ready.
        assert!(node_ready(""));
        assert!(node_ready(
            "status:\n  conditions:\n    - type: DiskPressure\n      status: \"False\"\n"
        ));
    }

    #[test]
    fn the_internal_ip_is_the_first_ipv4_internal_address() {
        let with = |addresses: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n\nstatus:\n  addresses:\n{addresses}"
            );
            parse_ok(&text).nodes[0].internal_ip
        };
        let address = |kind: &str, address: &str| {
            format!("    - type: {kind}\n      address: \"{address}\"\n")
        };
        assert_eq!(
            with(
                &[
                    address("Hostname", "n"),
                    address("ExternalIP", "203.0.113.7"),
                    address("InternalIP", "fd00::7"),
                    address("InternalIP", "192.168.10.111"),
                    address("InternalIP", "192.168.10.211"),
                ]
                .concat()
            ),
            Some(Ipv4Addr::new(192, 168, 10, 111))
        );
        assert_eq!(with(&address("Hostname", "n")), None);
        assert_eq!(with(&address("InternalIP", "not an address")), None);
        assert_eq!(node_without_status().internal_ip, None);
    }

    fn node_without_status() -> super::Node {
        parse_ok("apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n").nodes[0]
            .as_ref()
            .clone()
    }

    #[test]
    fn the_exclusion_label_counts_whatever_its_value() {
        let labelled = |value: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n\n  labels:\n    {}: \"{value}\"\n",
                super::Node::EXCLUDE_FROM_LOAD_BALANCERS
            );
            parse_ok(&text).nodes[0].excluded_from_load_balancers()
        };
        assert!(labelled("true"));
        assert!(labelled(""));
        assert!(!node_without_status().excluded_from_load_balancers());
    }

    #[test]
    fn reads_the_reference_nodes() {
        let config = reference();
        let control_plane = &config.nodes[0];
        assert_eq!(control_plane.name, "cp-1");
        assert!(control_plane.ready);
        assert_eq!(
            control_plane
                .labels
                .get("node-role.kubernetes.io/control-plane")
                .map(String::as_str),
            Some("")
        );
        assert_eq!(control_plane.object().to_string(), "Node/cp-1");
        assert!(
            !config.nodes[1]
                .labels
                .contains_key("node-role.kubernetes.io/control-plane")
        );
    }
}
