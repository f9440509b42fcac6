//! Batches applied to the store: each kind of event, Arc identity, findings, undo.

use std::sync::Arc;

use super::{Batch, Entry, Event, Store};
use crate::config::fixtures::*;
use crate::config::{
    Config, EndpointSlice, Finding, IpPool, Kind, Node, Object, ObjectRef, Reason, Service,
    Severity,
};

fn service(name: &str, extra: &str) -> Arc<Service> {
    Arc::clone(&parse_ok(&lb_service("web", name, extra)).services[0])
}

fn slice(name: &str, service: &str, address: &str) -> Arc<EndpointSlice> {
    let text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n\
         \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: {service}\n\
         addressType: IPv4\nendpoints:\n  - addresses: [{address}]\n"
    );
    Arc::clone(&parse_ok(&text).endpoint_slices[0])
}

fn node(name: &str) -> Arc<Node> {
    let text = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    Arc::clone(&parse_ok(&text).nodes[0])
}

fn pool(name: &str, cidr: &str) -> Arc<IpPool> {
    let text = pool_doc(name, &format!("  blocks:\n    - cidr: {cidr}\n"));
    Arc::clone(&parse_ok(&text).pools[0])
}

fn apply(object: Object) -> Event {
    Event::Apply(Entry::new(object))
}

fn batch(events: Vec<Event>) -> Batch {
    Batch {
        events,
        source_findings: None,
    }
}

fn warning(object: Option<ObjectRef>, message: &str) -> Finding {
    Finding {
        file: FILE.to_owned(),
        object,
        field: String::new(),
        message: message.to_owned(),
        reason: Reason::KindNotRead,
        severity: Severity::Info,
    }
}

fn names<T>(list: &[Arc<T>], name: impl Fn(&T) -> String) -> Vec<String> {
    list.iter().map(|object| name(object)).collect()
}

fn service_names(config: &Config) -> Vec<String> {
    names(&config.services, |s| s.object.name.to_string())
}

/// The store holding the services `names`, applied in that order.
fn with_services(names: &[&str]) -> Store {
    let mut store = Store::new(FILE);
    let events = names
        .iter()
        .map(|name| apply(Object::Service(service(name, ""))))
        .collect();
    store.apply(batch(events));
    store
}

#[test]
fn applied_objects_are_added_in_order_changed_in_place_and_deleted() {
    let mut store = with_services(&["c", "a", "b"]);
    assert_eq!(service_names(store.config()), ["a", "b", "c"]);

    let changed = service("b", "    - port: 81\n");
    store.apply(batch(vec![apply(Object::Service(Arc::clone(&changed)))]));
    assert_eq!(service_names(store.config()), ["a", "b", "c"]);
    assert!(Arc::ptr_eq(&store.config().services[1], &changed));

    store.apply(batch(vec![
        Event::Delete(changed.object.clone()),
        // Deleting what is not held changes nothing.
        Event::Delete(ObjectRef::cluster_scoped("Node", "nowhere")),
        Event::Delete(ObjectRef::cluster_scoped("Deployment", "x")),
    ]));
    assert_eq!(service_names(store.config()), ["a", "c"]);
}

#[test]
fn unchanged_objects_keep_their_arc() {
    let mut store = with_services(&["a", "b", "c"]);
    let before = store.config().clone();
    store.apply(batch(vec![apply(Object::Service(service(
        "b",
        "    - port: 81\n",
    )))]));
    let after = store.config();
    assert!(Arc::ptr_eq(&before.services[0], &after.services[0]));
    assert!(!Arc::ptr_eq(&before.services[1], &after.services[1]));
    assert!(Arc::ptr_eq(&before.services[2], &after.services[2]));
    // An object applied equal to the one held leaves the held one in place.
    store.apply(batch(vec![apply(Object::Service(service("a", "")))]));
    assert!(Arc::ptr_eq(
        &before.services[0],
        &store.config().services[0]
    ));
}

#[test]
fn a_kind_replaced_whole_keeps_what_is_equal() {
    let mut store = Store::new(FILE);
    let (a, b) = (node("a"), node("b"));
    store.apply(batch(vec![
        apply(Object::Node(Arc::clone(&a))),
        apply(Object::Node(b)),
        apply(Object::Service(service("web", ""))),
    ]));
    // A relist: a again (a new Arc, equal), c new, b gone; other kinds untouched.
    let entries = [node("c"), node("a")]
        .into_iter()
        .map(|n| Entry::new(Object::Node(n)))
        .collect();
    store.apply(batch(vec![Event::ReplaceKind(Kind::Node, entries)]));
    let config = store.config();
    assert_eq!(names(&config.nodes, |n| n.name.clone()), ["a", "c"]);
    assert!(Arc::ptr_eq(&config.nodes[0], &a));
    assert_eq!(service_names(config), ["web"]);
    store.apply(batch(vec![Event::ReplaceKind(Kind::Node, Vec::new())]));
    assert!(store.config().nodes.is_empty());
}

#[test]
fn a_slice_moves_with_the_service_it_names_and_is_deleted_by_its_name() {
    let mut store = Store::new(FILE);
    store.apply(batch(vec![
        apply(Object::EndpointSlice(slice("s1", "b", "10.0.0.1"))),
        apply(Object::EndpointSlice(slice("s2", "c", "10.0.0.2"))),
        apply(Object::EndpointSlice(slice("s3", "a", "10.0.0.3"))),
    ]));
    let order = |store: &Store| {
        names(&store.config().endpoint_slices, |s| {
            format!("{}:{}", s.service, s.object.name)
        })
    };
    assert_eq!(order(&store), ["a:s3", "b:s1", "c:s2"]);
    store.apply(batch(vec![apply(Object::EndpointSlice(slice(
        "s1", "d", "10.0.0.1",
    )))]));
    assert_eq!(order(&store), ["a:s3", "c:s2", "d:s1"]);
    let gone = slice("s2", "c", "10.0.0.2").object.clone();
    store.apply(batch(vec![Event::Delete(gone)]));
    assert_eq!(order(&store), ["a:s3", "d:s1"]);
    // The same after a relist, which leaves the slices to be found by name afresh.
    let relisted = [slice("s1", "d", "10.0.0.1"), slice("s4", "b", "10.0.0.4")];
    let entries = relisted
        .into_iter()
        .map(|s| Entry::new(Object::EndpointSlice(s)))
        .collect();
    store.apply(batch(vec![Event::ReplaceKind(
        Kind::EndpointSlice,
        entries,
    )]));
    assert_eq!(order(&store), ["b:s4", "d:s1"]);
    store.apply(batch(vec![
        apply(Object::EndpointSlice(slice("s4", "e", "10.0.0.4"))),
        Event::Delete(slice("s1", "d", "10.0.0.1").object.clone()),
        apply(Object::EndpointSlice(slice("s4", "e", "10.0.0.5"))),
    ]));
    assert_eq!(order(&store), ["e:s4"]);
    let held = &store.config().endpoint_slices[0];
    assert_eq!(
        held.endpoints[0].addresses,
        ["10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[test]
fn overlapping_pools_are_held_for_the_model_to_settle() {
    let mut store = Store::new(FILE);
    store.apply(batch(vec![
        apply(Object::IpPool(pool("first", "10.0.0.0/24"))),
        apply(Object::IpPool(pool("second", "10.0.0.128/25"))),
    ]));
    assert_eq!(
        names(&store.config().pools, |p| p.name.clone()),
        ["first", "second"]
    );
}

#[test]
fn undo_restores_the_very_objects_held_before() {
    let mut store = with_services(&["a", "b"]);
    store.apply(batch(vec![apply(Object::Node(node("n")))]));
    let before = store.config().clone();
    let undo = store.apply(Batch {
        events: vec![
            apply(Object::Service(service("a", "    - port: 81\n"))),
            Event::Delete(ObjectRef {
                kind: "Service".into(),
                namespace: "web".into(),
                name: "b".into(),
            }),
            apply(Object::Service(service("c", ""))),
            Event::ReplaceKind(Kind::Node, vec![Entry::new(Object::Node(node("m")))]),
        ],
        source_findings: Some(vec![warning(None, "a document was skipped")]),
    });
    assert_eq!(service_names(store.config()), ["a", "c"]);
    assert_eq!(store.config().findings.len(), 1);
    store.undo(undo);
    let after = store.config();
    assert_eq!(format!("{after:?}"), format!("{before:?}"));
    for (a, b) in before.services.iter().zip(&after.services) {
        assert!(Arc::ptr_eq(a, b));
    }
    assert!(Arc::ptr_eq(&before.nodes[0], &after.nodes[0]));
}

#[test]
fn findings_go_with_their_object() {
    let mut store = Store::new(FILE);
    let a = service("a", "");
    let about_a = warning(Some(a.object.clone()), "about a");
    store.apply(Batch {
        events: vec![Event::Apply(Entry {
            object: Object::Service(Arc::clone(&a)),
            findings: vec![about_a.clone()],
        })],
        source_findings: Some(vec![warning(None, "about the file")]),
    });
    let messages = |store: &Store| -> Vec<String> {
        let warnings = &store.config().findings;
        warnings.iter().map(|w| w.message.clone()).collect()
    };
    assert_eq!(messages(&store), ["about the file", "about a"]);
    // A batch that says nothing of the source's findings keeps them.
    store.apply(batch(vec![Event::Delete(a.object.clone())]));
    assert_eq!(messages(&store), ["about the file"]);
    // Applied again without findings: it has none.
    store.apply(Batch {
        events: vec![Event::Apply(Entry {
            object: Object::Service(Arc::clone(&a)),
            findings: vec![about_a],
        })],
        source_findings: Some(Vec::new()),
    });
    assert_eq!(messages(&store), ["about a"]);
    store.apply(batch(vec![apply(Object::Service(a))]));
    assert!(messages(&store).is_empty());
}
