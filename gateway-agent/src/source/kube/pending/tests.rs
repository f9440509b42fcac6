use serde_json::json;

use super::*;
use crate::config::{LoadBalancerClasses, Reason, Severity};
use crate::source::kube::object::judge;

fn node(name: &str, zone: &str) -> Outcome {
    let raw = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"zone": zone}},
    }))
    .unwrap();
    judge(Kind::Node, raw, "api", &LoadBalancerClasses::default())
}

fn bad_service(name: &str) -> Outcome {
    let raw = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": "eighty"}]},
    }))
    .unwrap();
    judge(Kind::Service, raw, "api", &LoadBalancerClasses::default())
}

fn node_ref(name: &str) -> ObjectRef {
    ObjectRef::cluster_scoped("Node", name)
}

/// Every kind listed empty but `Node`, listed with `nodes`.
fn listed_with(nodes: Vec<Outcome>) -> Pending {
    let mut pending = Pending::default();
    let mut nodes = Some(nodes);
    for kind in Kind::ALL {
        let outcomes = match kind {
            Kind::Node => nodes.take().unwrap_or_default(),
            _ => Vec::new(),
        };
        pending.absorb(Update::Relist(kind, outcomes));
    }
    pending
}

/// Each event as `op kind/name` (a relist names its objects), to compare batches.
fn described(batch: &Batch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|event| match event {
            Event::Apply(entry) => format!("apply {}", entry.object.object_ref()),
            Event::Delete(object) => format!("delete {object}"),
            Event::ReplaceKind(kind, entries) => format!(
                "replace {} [{}]",
                kind.name(),
                entries
                    .iter()
                    .map(|e| e.object.object_ref().name.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })
        .collect()
}

fn zone_of(batch: &Batch, name: &str) -> Option<String> {
    batch.events.iter().find_map(|event| match event {
        Event::Apply(Entry {
            object: crate::config::Object::Node(node),
            ..
        }) if node.name == name => node.labels.get("zone").cloned(),
        _ => None,
    })
}

#[test]
fn nothing_is_listed_until_every_kind_has_been() {
    let mut pending = Pending::default();
    for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::L2Policy) {
        pending.absorb(Update::Relist(kind, Vec::new()));
        assert!(!pending.listed(), "listed before {:?}", Kind::L2Policy);
    }
    pending.absorb(Update::Relist(Kind::L2Policy, Vec::new()));
    assert!(pending.listed());
}

#[test]
fn the_first_batch_replaces_every_kind_whole() {
    let mut pending = listed_with(vec![node("a", "1"), node("b", "1")]);
    let batch = pending.take();
    assert_eq!(
        described(&batch),
        [
            "replace Service []",
            "replace EndpointSlice []",
            "replace Node [a b]",
            "replace CiliumLoadBalancerIPPool []",
            "replace CiliumL2AnnouncementPolicy []",
        ]
    );
    assert!(pending.is_empty());
}

#[test]
fn a_burst_becomes_one_event_per_object_the_last_word_winning() {
    let mut pending = listed_with(vec![node("a", "1"), node("b", "1")]);
    pending.take();
    pending.absorb(Update::Changed(node("a", "2")));
    pending.absorb(Update::Changed(node("c", "1")));
    pending.absorb(Update::Changed(node("a", "3")));
    pending.absorb(Update::Deleted(node_ref("b")));
    pending.absorb(Update::Deleted(node_ref("c")));
    let batch = pending.take();
    assert_eq!(
        described(&batch),
        ["apply Node/a", "delete Node/b", "delete Node/c"]
    );
    assert_eq!(zone_of(&batch, "a").as_deref(), Some("3"));
    assert_eq!(batch.source_findings, None);
}

#[test]
fn changes_after_a_relist_go_into_the_relist() {
    let mut pending = listed_with(vec![node("a", "1")]);
    pending.take();
    pending.absorb(Update::Changed(node("x", "1")));
    pending.absorb(Update::Relist(
        Kind::Node,
        vec![node("a", "1"), node("b", "1")],
    ));
    pending.absorb(Update::Changed(node("c", "1")));
    pending.absorb(Update::Deleted(node_ref("a")));
    assert_eq!(described(&pending.take()), ["replace Node [b c]"]);
}

#[test]
fn an_object_that_cannot_be_served_goes_and_its_findings_stay_until_it_is_fixed_or_gone() {
    let mut pending = listed_with(Vec::new());
    pending.take();
    pending.absorb(Update::Changed(bad_service("web")));
    let batch = pending.take();
    assert_eq!(described(&batch), ["delete Service/shop/web"]);
    let findings = batch.source_findings.expect("the rejection is news");
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0]
            .object
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("Service/shop/web")
    );
    assert!(
        findings[0].message.starts_with("not served:"),
        "{findings:?}"
    );

    // Another object changing says nothing new about the findings.
    pending.absorb(Update::Changed(node("a", "1")));
    assert_eq!(pending.take().source_findings, None);

    pending.absorb(Update::Deleted(ObjectRef {
        kind: "Service".into(),
        namespace: "shop".into(),
        name: "web".into(),
    }));
    assert_eq!(pending.take().source_findings, Some(Vec::new()));
}

#[test]
fn a_relist_replaces_the_findings_of_its_kind_only() {
    let mut pending = listed_with(Vec::new());
    pending.absorb(Update::Changed(bad_service("web")));
    pending.take();
    pending.absorb(Update::Relist(Kind::Node, vec![node("a", "1")]));
    let batch = pending.take();
    assert_eq!(batch.source_findings, None, "the Service is still rejected");
    pending.absorb(Update::Relist(Kind::Service, Vec::new()));
    assert_eq!(pending.take().source_findings, Some(Vec::new()));
}

#[test]
fn a_missing_kind_is_empty_with_a_finding_until_it_is_listed() {
    let mut pending = Pending::default();
    for kind in [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::L2Policy,
    ] {
        pending.absorb(Update::Relist(kind, Vec::new()));
    }
    let finding = Finding {
        file: "api".into(),
        object: None,
        field: String::new(),
        message: "no CRD".into(),
        reason: Reason::KindNotServed,
        severity: Severity::Warning,
    };
    pending.absorb(Update::Missing(Kind::IpPool, finding.clone()));
    assert!(pending.listed());
    let batch = pending.take();
    assert!(described(&batch).contains(&"replace CiliumLoadBalancerIPPool []".to_owned()));
    assert_eq!(batch.source_findings, Some(vec![finding]));
    pending.absorb(Update::Relist(Kind::IpPool, Vec::new()));
    assert_eq!(pending.take().source_findings, Some(Vec::new()));
}

#[test]
fn a_refused_batch_comes_back_before_what_came_after_it() {
    let mut pending = listed_with(vec![node("a", "1"), node("b", "1")]);
    pending.take();
    pending.absorb(Update::Changed(node("a", "2")));
    pending.absorb(Update::Changed(bad_service("web")));
    let refused = pending.take();
    pending.put_back(refused);
    pending.absorb(Update::Changed(node("a", "3")));
    pending.absorb(Update::Deleted(node_ref("b")));
    let batch = pending.take();
    assert_eq!(
        described(&batch),
        ["delete Service/shop/web", "apply Node/a", "delete Node/b"]
    );
    assert_eq!(zone_of(&batch, "a").as_deref(), Some("3"));
    assert_eq!(batch.source_findings.map(|f| f.len()), Some(1));
}

#[test]
fn a_refused_relist_stays_a_relist() {
    let mut pending = listed_with(vec![node("a", "1")]);
    let refused = pending.take();
    pending.put_back(refused);
    pending.absorb(Update::Changed(node("b", "1")));
    let described = described(&pending.take());
    assert!(
        described.contains(&"replace Node [a b]".to_owned()),
        "{described:?}"
    );
}
