//! The file source's reads: what a read checks, the events it makes of what changed, and
//! that a read applied to the store as events makes what a fresh read of the file makes.

use std::path::Path;
use std::sync::Arc;

use super::{FileSource, load, parse};
use crate::config::fixtures::*;
use crate::config::{Config, ConfigErrors, Kind, LoadBalancerClasses, Object, ObjectRef};
use crate::store::{Event, Store};

/// A file source and the store it feeds, as the agent keeps them.
struct Fed {
    source: FileSource,
    store: Store,
}

impl Fed {
    fn new() -> Self {
        Self {
            source: FileSource::new(Path::new(FILE), LoadBalancerClasses::default()),
            store: Store::new(FILE),
        }
    }

    /// Reads `text` into the store: what the store holds then, or why it was refused.
    fn read(&mut self, text: &str) -> Result<&Config, ConfigErrors> {
        let update = self.source.read_text(text)?;
        self.store.apply(update.batch);
        self.source.accept(update.documents);
        Ok(self.store.config())
    }

    /// The events a read of `text` makes, without applying them.
    fn events(&self, text: &str) -> Vec<Event> {
        let update = self.source.read_text(text);
        update.unwrap_or_else(|e| panic!("{e}")).batch.events
    }
}

fn node_doc(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

#[test]
fn every_error_of_the_file_is_reported_and_findings_do_not_refuse_it() {
    let findings_only = format!(
        "{}\n---\n{}\n",
        lb_service("web", "a", "    - port: 81\n      protocol: SCTP\n"),
        lb_service("web", "b", "  externalTrafficPolicy: Nowhere\n"),
    );
    let config = parse_ok(&findings_only);
    assert_eq!(config.services.len(), 2);
    let findings = parse_findings(&findings_only);
    assert_line(
        &findings,
        &["Service/web/a: spec.ports[1].protocol: unsupported protocol \"SCTP\""],
    );
    assert_line(
        &findings,
        &["Service/web/b: spec.externalTrafficPolicy: unknown policy \"Nowhere\""],
    );
    let text = format!(
        "{findings_only}---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n\n  labels:\n    a: 1\n\
         ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: c\nspec:\n  ports: [{{port: eighty}}]\n"
    );
    let errors = parse_errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_line(
        &errors,
        &["Node/n: metadata.labels.a: invalid type: integer `1`"],
    );
    assert_line(
        &errors,
        &["Service/default/c: spec.ports[0].port: invalid type: string \"eighty\""],
    );
}

#[test]
fn a_reload_parses_only_the_documents_that_changed() {
    let mut fed = Fed::new();
    let text = reference_with(&node_doc("extra"));
    let first = fed.read(&text).unwrap().clone();
    let accepted = fed.source.cache.accepted().len();
    assert!(accepted > 5);
    // One document changed: its objects are the only events.
    let changed = text.replace("name: extra", "name: extra2");
    assert_eq!(
        fed.events(&changed),
        [
            Event::Delete(ObjectRef::cluster_scoped("Node", "extra")),
            Event::Apply(entry(&parse_ok(&node_doc("extra2")).nodes[0])),
        ]
    );
    let again = fed.read(&changed).unwrap().clone();
    assert_eq!(fed.source.cache.accepted().len(), accepted);
    assert!(again.nodes.iter().any(|n| n.name == "extra2"));
    assert!(!again.nodes.iter().any(|n| n.name == "extra"));
    assert_eq!(first.services, again.services);
    // A syntax error is still found, at the file's line number.
    let broken = changed.replace("name: extra2", "name: [extra2");
    let errors = fed.read(&broken).unwrap_err();
    let line = broken.lines().position(|l| l.contains("[extra2")).unwrap() + 1;
    assert!(
        errors.to_string().contains(&format!("line {}", line + 1))
            || errors.to_string().contains(&format!("line {line}")),
        "{errors}"
    );
}

fn entry(node: &Arc<crate::config::Node>) -> crate::store::Entry {
    crate::store::Entry::new(Object::Node(Arc::clone(node)))
}

#[test]
fn an_edit_of_one_document_is_that_object_changed() {
    let mut fed = Fed::new();
    fed.read(REFERENCE).unwrap();
    // A backend more: three lines that move every document after it.
    let edited = edit(
        REFERENCE,
        "endpoints:\n  - addresses: [\"10.0.1.10\"]\n",
        "endpoints:\n  - addresses: [\"10.0.1.99\"]\n    nodeName: worker-1\n  - addresses: [\"10.0.1.10\"]\n",
    );
    let events = fed.events(&edited);
    let [Event::Apply(applied)] = events.as_slice() else {
        panic!("not one object applied: {events:#?}");
    };
    let Object::EndpointSlice(slice) = &applied.object else {
        panic!("not the slice: {applied:?}");
    };
    let fresh = parse_ok(&edited);
    let expected = fresh
        .endpoint_slices
        .iter()
        .find(|s| s.object == slice.object)
        .unwrap();
    assert_eq!(**slice, **expected);
    assert!(
        slice
            .endpoints
            .iter()
            .any(|e| e.addresses.contains(&"10.0.1.99".parse().unwrap()))
    );
    // Every other object keeps its `Arc`: the model reuses what it made of them.
    let before = fed.store.config().clone();
    let after = fed.read(&edited).unwrap();
    for (a, b) in before.services.iter().zip(&after.services) {
        assert!(Arc::ptr_eq(a, b));
    }
    let unchanged = |s: &&Arc<crate::config::EndpointSlice>| s.object != slice.object;
    for (a, b) in before
        .endpoint_slices
        .iter()
        .filter(unchanged)
        .zip(after.endpoint_slices.iter().filter(unchanged))
    {
        assert!(Arc::ptr_eq(a, b));
    }
}

#[test]
fn a_removed_document_is_its_objects_deleted() {
    let mut fed = Fed::new();
    let text = reference_with(&node_doc("extra"));
    fed.read(&text).unwrap();
    assert_eq!(
        fed.events(REFERENCE),
        [Event::Delete(ObjectRef::cluster_scoped("Node", "extra"))]
    );
    // A List's items are deleted with it, but for those another document now delivers:
    // just the same (nothing to say) or changed.
    let list = "apiVersion: v1\nkind: List\nitems:\n\
                - apiVersion: v1\n  kind: Node\n  metadata:\n    name: a\n\
                - apiVersion: v1\n  kind: Node\n  metadata:\n    name: b\n\
                - apiVersion: v1\n  kind: Node\n  metadata:\n    name: c\n";
    fed.read(&reference_with(list)).unwrap();
    let c = node_doc("c").replace("name: c", "name: c\n  labels:\n    zone: x");
    assert_eq!(
        fed.events(&reference_with(&format!("{}---\n{c}", node_doc("b")))),
        [
            Event::Delete(ObjectRef::cluster_scoped("Node", "a")),
            Event::Apply(entry(&parse_ok(&c).nodes[0])),
        ]
    );
}

#[test]
fn documents_that_only_move_change_nothing() {
    let mut fed = Fed::new();
    let text = reference_with(&node_doc("extra"));
    fed.read(&text).unwrap();
    let moved = format!("{}---\n# a comment\n{REFERENCE}", node_doc("extra"));
    assert_eq!(fed.events(&moved), []);
}

#[test]
fn a_refused_read_changes_nothing() {
    let mut fed = Fed::new();
    let text = reference_with(&node_doc("extra"));
    let accepted = fed.read(&text).unwrap().clone();
    let digest = fed.source.digest();
    let refused = [
        // YAML syntax, a type error, a duplicate.
        reference_with("apiVersion: v1\nkind: Node\nmetadata:\n  name: [extra\n"),
        reference_with(&node_doc("extra").replace("name: extra", "name: extra\n  labels: 7")),
        reference_with(&node_doc("worker-1")),
    ];
    for text in &refused {
        assert!(fed.read(text).is_err(), "{text}");
        let now = fed.store.config();
        assert_eq!(format!("{now:?}"), format!("{accepted:?}"));
        for (a, b) in accepted.services.iter().zip(&now.services) {
            assert!(Arc::ptr_eq(a, b));
        }
        assert_eq!(fed.source.digest(), digest);
    }
    // The next read is compared with the accepted one.
    assert_eq!(
        fed.events(REFERENCE),
        [Event::Delete(ObjectRef::cluster_scoped("Node", "extra"))]
    );
}

#[test]
fn a_read_that_changes_most_of_the_file_replaces_every_kind() {
    let services = |port: u16| -> Vec<String> {
        (0..100)
            .map(|i| {
                lb_service("web", &format!("svc-{i}"), "")
                    .replace("port: 80", &format!("port: {port}"))
            })
            .collect()
    };
    let mut fed = Fed::new();
    let first = format!("{REFERENCE}\n---\n{}", services(80).join("---\n"));
    let before = fed.read(&first).unwrap().clone();
    let second = format!("{REFERENCE}\n---\n{}", services(81).join("---\n"));
    let events = fed.events(&second);
    let kinds: Vec<Kind> = events
        .iter()
        .map(|event| match event {
            Event::ReplaceKind(kind, _) => *kind,
            other => panic!("not a relist: {other:?}"),
        })
        .collect();
    assert_eq!(kinds, Kind::ALL);
    let after = fed.read(&second).unwrap();
    assert_eq!(
        format!("{after:?}"),
        format!("{:?}", parse(FILE, &second).unwrap())
    );
    // The reference's objects did not change and keep their `Arc`s.
    let gateway = |config: &Config| -> Vec<_> {
        config
            .services
            .iter()
            .filter(|s| s.object.namespace == "gateway")
            .cloned()
            .collect()
    };
    for (a, b) in gateway(&before).iter().zip(&gateway(after)) {
        assert!(Arc::ptr_eq(a, b));
    }
}

#[test]
fn load_reads_the_file_and_names_it() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/reference.yaml");
    let config = load(&path, LoadBalancerClasses::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services.len(), 2);
    assert!(config.source.ends_with("testdata/reference.yaml"));

    let missing = std::path::Path::new("/nonexistent/objects.yaml");
    let errors = load(missing, LoadBalancerClasses::default())
        .unwrap_err()
        .to_string();
    assert!(
        errors.starts_with("/nonexistent/objects.yaml: cannot read:"),
        "{errors}"
    );
}

#[test]
fn events_applied_to_the_store_make_what_a_fresh_read_makes() {
    // Each slot holds one of its versions, or nothing for "": edits inside objects,
    // renames, kind and type changes, duplicates, pools.
    let slice = |name: &str, service: &str, address: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n\
             \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: {service}\n\
             addressType: IPv4\nendpoints:\n  - addresses: [{address}]\n    nodeName: worker-1\n"
        )
    };
    let node = |name: &str, ready: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  conditions:\n\
             \x20   - type: Ready\n      status: \"{ready}\"\n"
        )
    };
    let mut slots: Vec<Vec<String>> = vec![vec![REFERENCE.to_owned()]];
    for i in 0..3 {
        let (a, b) = (format!("svc-{i}"), format!("svc-{i}b"));
        slots.push(vec![
            lb_service("web", &a, ""),
            // The same objects, moving every line after them.
            format!("# a comment\n# and another\n{}", lb_service("web", &a, "")),
            lb_service("web", &a, "    - port: 81\n"),
            lb_service("web", &b, ""),
            lb_service("web", &a, "").replace("LoadBalancer", "ClusterIP"),
            String::new(),
        ]);
        slots.push(vec![
            slice(&format!("{a}-1"), &a, "10.0.0.1"),
            slice(&format!("{a}-1"), &a, "10.0.0.2"),
            slice(&format!("{a}-1"), &b, "10.0.0.1"),
            slice(&format!("{a}-2"), &a, "10.0.0.1"),
            String::new(),
        ]);
        slots.push(vec![
            node(&format!("node-{i}"), "True"),
            node(&format!("node-{i}"), "False"),
            node("node-0", "True"),
            pool_doc(&format!("pool-{i}"), "  blocks:\n    - cidr: 10.9.0.0/24\n"),
            String::new(),
        ]);
    }
    // Documents whose findings name the line they start at, a List whose item
    // duplicates a node, a syntax error: their messages must follow them as lines move.
    slots.insert(
        2,
        vec![
            String::new(),
            "# only a comment\n".to_owned(),
            "apiVersion: example.com/v1\nkind: Thing\n".to_owned(),
            "apiVersion: v1\nkind: Node\nmetadata: {}\n".to_owned(),
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  \
             metadata:\n    name: node-0\n"
                .to_owned(),
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: [broken\n".to_owned(),
        ],
    );
    let mut random = XorShift(0x5eed_0fca_c4e5);
    let mut fed = Fed::new();
    let mut accepted = format!("{:?}", fed.store.config());
    let mut chosen = vec![0; slots.len()];
    for round in 0..1000 {
        for _ in 0..1 + 2 * usize::from(random.chance(4)) {
            let slot = random.below(slots.len());
            chosen[slot] = random.below(slots[slot].len());
        }
        let text: Vec<&str> = chosen
            .iter()
            .zip(&slots)
            .map(|(&v, versions)| versions[v].as_str())
            .filter(|doc| !doc.is_empty())
            .collect();
        let text = text.join("---\n");
        let incremental = fed.read(&text).map(|config| format!("{config:?}"));
        let fresh = parse(FILE, &text).map(|config| format!("{config:?}"));
        assert_eq!(
            format!("{incremental:?}"),
            format!("{fresh:?}"),
            "round {round}:\n{text}"
        );
        // A refused read leaves the store as the last accepted one made it.
        let now = format!("{:?}", fed.store.config());
        match incremental {
            Ok(_) => accepted = now,
            Err(_) => assert_eq!(now, accepted, "round {round}:\n{text}"),
        }
    }
}
