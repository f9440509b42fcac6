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
