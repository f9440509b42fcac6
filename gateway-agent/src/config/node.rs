//! `v1 Node`: the labels policies select on and whether the node may announce.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;

use super::ObjectRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The `Ready` condition: `False` or `Unknown` is not ready. A node without that
    /// condition (a hand-written file) counts as ready.
    pub ready: bool,
}

impl Node {
    pub const KIND: &str = "Node";

    pub fn object(&self) -> ObjectRef {
        ObjectRef::cluster_scoped(Self::KIND, &self.name)
    }
}

pub(crate) fn node(raw: &core::Node, name: String) -> Node {
    let ready = raw
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|ready| ready.status == "True");
    Node {
        name,
        labels: raw.metadata.labels.clone().unwrap_or_default(),
        ready,
    }
}

#[cfg(test)]
mod tests {
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
