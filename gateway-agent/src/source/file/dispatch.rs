//! One document of the file, parsed on its own. It is read untyped (a syntax error stops
//! here, naming the line), then dispatched on `apiVersion`/`kind`: a kind the agent reads
//! is converted by `source::convert` (its API shape, then its kind's conversion in `config`),
//! so a type error names the field path and the other documents still get checked; a
//! `v1 List` is read item by item; anything else is skipped with a finding. What refuses
//! the file and what stays with an object follows the rule in `config::error`.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::documents::Document;
use crate::config::{
    ConfigError, ConfigErrors, Diagnostics, Finding, Kind, LoadBalancerClasses, ObjectRef, Reason,
    Severity,
};
use crate::source::convert::convert;
use crate::store::Entry;

/// What `kubectl get -o yaml` prints for more than one object.
const LIST_API_VERSION: &str = "v1";
const LIST_KIND: &str = "List";

/// What one document holds: its objects and its findings.
#[derive(Default)]
pub(super) struct ParsedDocument {
    /// The objects it delivers, each with the findings about it.
    pub entries: Vec<Entry>,
    /// Every object of a kind read (also Services of other types), to find duplicates.
    pub seen: Vec<SeenObject>,
    /// What refuses the file.
    pub errors: Vec<ConfigError>,
    /// The findings about nothing it delivers (a document without a name, a kind not read,
    /// an object not served): the source's own findings.
    pub findings: Vec<Finding>,
    /// A finding names the line the document starts at.
    pub names_line: bool,
}

/// An object of a kind read, and which item of a `List` it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct SeenObject {
    pub object: ObjectRef,
    pub item: Option<usize>,
}

/// Where an object is written: a document (by the line its content starts at), or an item
/// of the `List` there.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    pub line: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(item) = self.item {
            write!(f, "items[{item}] of ")?;
        }
        write!(f, "the document at line {}", self.line)
    }
}

/// Parses one document on its own; its line numbers are the file's. A syntax error is the
/// only error returned: nothing else can be read from the document then.
pub(super) fn parse_document(
    source: &str,
    document: &Document<'_>,
    classes: &LoadBalancerClasses,
) -> Result<ParsedDocument, ConfigErrors> {
    let mut diagnostics = Diagnostics::new(source);
    let mut reader = Reader {
        classes,
        entries: Vec::new(),
        seen: Vec::new(),
        names_line: false,
    };
    for value in serde_yaml_ng::Deserializer::from_str(document.text) {
        let value = Value::deserialize(value).map_err(|error| {
            ConfigErrors(vec![ConfigError {
                file: source.to_owned(),
                object: None,
                field: String::new(),
                message: yaml_error(&error, document.first_line - 1),
            }])
        })?;
        if !value.is_null() {
            reader.read(value, document.line, None, &mut diagnostics);
        }
    }
    let (errors, findings) = diagnostics.into_parts();
    // Kept for as long as the document is: 20,000 of them hold a few megabytes of spare
    // capacity otherwise.
    let Reader {
        mut entries,
        mut seen,
        names_line,
        ..
    } = reader;
    entries.shrink_to_fit();
    seen.shrink_to_fit();
    let mut unattached = Vec::new();
    // A finding goes with the object it is about, if this document delivers that object.
    for finding in findings {
        let entry = finding.object.as_ref().and_then(|object| {
            entries
                .iter_mut()
                .find(|entry| entry.object.object_ref() == *object)
        });
        match entry {
            Some(entry) => entry.findings.push(finding),
            None => unattached.push(finding),
        }
    }
    Ok(ParsedDocument {
        entries,
        seen,
        errors,
        findings: unattached,
        names_line,
    })
}

/// A syntax error with where it is in the file, for a document whose text starts
/// `line_offset` lines into it. The parser's own message counts lines from the document's
/// start, so its position is given again, the file's.
fn yaml_error(error: &serde_yaml_ng::Error, line_offset: usize) -> String {
    let message = error.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    match error.location() {
        Some(at) => format!(
            "YAML error at line {}, column {}: {message}",
            at.line() + line_offset,
            at.column()
        ),
        None => format!("YAML error: {message}"),
    }
}

/// The objects of one document, read so far.
struct Reader<'c> {
    classes: &'c LoadBalancerClasses,
    entries: Vec<Entry>,
    seen: Vec<SeenObject>,
    names_line: bool,
}

impl Reader<'_> {
    /// Reads the document whose content starts at `line` (or item `item` of the `List`
    /// there).
    fn read(
        &mut self,
        document: Value,
        line: usize,
        item: Option<usize>,
        diagnostics: &mut Diagnostics,
    ) {
        let origin = Origin { line, item };
        let Value::Object(map) = &document else {
            self.names_line = true;
            diagnostics.fatal(None, "", format!("{origin} is not a mapping"));
            return;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        if api_version.is_empty() || kind.is_empty() {
            self.names_line = true;
            diagnostics.fatal(
                None,
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                format!("{origin} has no apiVersion or no kind"),
            );
            return;
        }
        if (api_version, kind) == (LIST_API_VERSION, LIST_KIND) {
            self.read_list(&document, line, diagnostics);
            return;
        }

        let metadata = |key: &str| {
            map.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let known = Kind::named(kind);
        let namespace = match known {
            // What `kubectl apply` does with a namespaced object that names none.
            Some(known) if known.namespaced() => metadata("namespace").unwrap_or("default"),
            Some(_) => "",
            None => metadata("namespace").unwrap_or_default(),
        };
        let object = metadata("name").map(|name| ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        });

        // Named by the object when it has a name: the line would change with document order.
        let names_line = &mut self.names_line;
        let mut skip = |severity, reason, field: &str, why: String| match &object {
            Some(object) => {
                let message = format!("skipped: {why}");
                diagnostics.find(severity, reason, Some(object), field, message);
            }
            None => {
                *names_line = true;
                let message = format!("skipped {origin}: {why}");
                diagnostics.find(severity, reason, None, field, message);
            }
        };
        let Some(known) = known else {
            skip(
                Severity::Info,
                Reason::KindNotRead,
                "",
                format!("kind {kind} ({api_version}) is not used by gateway"),
            );
            return;
        };
        let versions = known.api_versions();
        if !versions.contains(&api_version) {
            skip(
                Severity::Warning,
                Reason::ApiVersionNotRead,
                "apiVersion",
                format!(
                    "{api_version} {kind} is not understood (expected {})",
                    versions.join(" or ")
                ),
            );
            return;
        }
        let Some(object) = object else {
            self.names_line = true;
            diagnostics.fatal(
                None,
                "metadata.name",
                format!("the {kind} in {origin} has no name"),
            );
            return;
        };
        self.seen.push(SeenObject {
            object: object.clone(),
            item,
        });
        let mut findings = diagnostics.object(&object);
        let converted = convert(known, document, &object, self.classes, &mut findings);
        self.entries.extend(converted.map(Entry::new));
    }

    fn read_list(&mut self, list: &Value, line: usize, diagnostics: &mut Diagnostics) {
        match list.get("items") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.read(item.clone(), line, Some(i), diagnostics);
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => {
                self.names_line = true;
                diagnostics.fatal(
                    None,
                    "items",
                    format!(
                        "the List in {} has no list of items",
                        Origin { line, item: None }
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::fixtures::*;
    use crate::config::{ObjectRef, Reason, Severity};

    #[test]
    fn reads_every_kind_of_the_reference() {
        let config = reference();
        assert_eq!(config.source, FILE);
        let services: Vec<String> = config
            .services
            .iter()
            .map(|s| s.object.to_string())
            .collect();
        assert_eq!(
            services,
            [
                "Service/gateway/cilium-gateway-gateway-external",
                "Service/gateway/cilium-gateway-gateway-internal"
            ]
        );
        let slices: Vec<&str> = config
            .endpoint_slices
            .iter()
            .map(|s| s.object.name.as_str())
            .collect();
        assert_eq!(
            slices,
            [
                "cilium-gateway-gateway-external-m5r8w",
                "cilium-gateway-gateway-internal-7xk2p"
            ]
        );
        let nodes: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["cp-1", "worker-1", "worker-2"]);
        assert_eq!(config.pools.len(), 1);
        assert_eq!(config.pools[0].name, "first-pool");
        assert_eq!(config.l2_policies.len(), 1);
        assert_eq!(config.l2_policies[0].name, "l2-policy");
        assert_eq!(config.findings, []);
    }

    #[test]
    fn reads_a_kubectl_list() {
        let text = "apiVersion: v1\nkind: List\nitems:\n\
                    - apiVersion: v1\n  kind: Node\n  metadata:\n    name: a\n\
                    - apiVersion: v1\n  kind: Node\n  metadata:\n    name: b\n\
                    - apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: d\n    namespace: x\n\
                    metadata:\n  resourceVersion: \"\"\n";
        let config = parse_ok(text);
        let nodes: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["a", "b"]);
        assert_line(
            &parse_findings(text),
            &[
                "objects.yaml: Deployment/x/d: skipped: kind Deployment (apps/v1) is not used by gateway",
            ],
        );
    }

    #[test]
    fn empty_documents_and_files_are_skipped() {
        let config = parse_ok("---\n# nothing here\n---\n\n---\n");
        assert!(config.services.is_empty() && config.nodes.is_empty());
        assert_eq!(config.findings, []);
        assert!(parse_ok("").pools.is_empty());
    }

    #[test]
    fn unknown_kinds_and_api_versions_are_skipped_with_a_warning() {
        let text = reference_with(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: cilium-envoy\n  namespace: kube-system\n\
             ---\napiVersion: cilium.io/v1\nkind: CiliumL2AnnouncementPolicy\nmetadata:\n  name: old\n\
             ---\napiVersion: example.com/v1\nkind: Thing\n",
        );
        let warnings = parse_findings(&text);
        let reasons = parse_severities(&text);
        assert_eq!(
            reasons,
            [
                (Severity::Info, Reason::KindNotRead),
                (Severity::Warning, Reason::ApiVersionNotRead),
                (Severity::Info, Reason::KindNotRead),
            ]
        );
        // Sorted: findings without an object first.
        assert_eq!(
            warnings,
            [
                "objects.yaml: skipped the document at line 213: kind Thing (example.com/v1) is not \
                 used by gateway",
                "objects.yaml: CiliumL2AnnouncementPolicy/old: apiVersion: skipped: cilium.io/v1 \
                 CiliumL2AnnouncementPolicy is not understood (expected cilium.io/v2alpha1)",
                "objects.yaml: DaemonSet/kube-system/cilium-envoy: skipped: kind DaemonSet (apps/v1) \
                 is not used by gateway",
            ]
        );
        assert_eq!(parse_ok(&text).l2_policies.len(), 1);
    }

    #[test]
    fn the_cilium_v2_pool_is_read() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: p\n\
                    spec:\n  blocks:\n    - cidr: 10.0.0.0/24\n";
        assert_eq!(parse_ok(text).pools[0].blocks.len(), 1);
    }

    #[test]
    fn yaml_syntax_errors_name_the_file_and_line() {
        let errors =
            parse_errors("apiVersion: v1\nkind: Node\nmetadata:\n  name: a\n bad: indent\n");
        assert_eq!(errors.len(), 1);
        // The wording is the YAML parser's; the file and the line are ours to guarantee.
        assert!(
            errors[0].starts_with("objects.yaml: YAML error"),
            "{errors:?}"
        );
        assert!(errors[0].contains("line 5"), "{errors:?}");
    }

    #[test]
    fn type_errors_name_the_object_and_field_path() {
        let text =
            reference_with(&lb_service("web", "shop", "").replace("port: 80", "port: eighty"));
        let errors = parse_errors(&text);
        assert_eq!(
            errors,
            [
                "objects.yaml: Service/web/shop: spec.ports[0].port: invalid type: string \"eighty\", expected i32"
            ]
        );
    }

    #[test]
    fn documents_without_kind_or_name_or_mapping_are_errors() {
        let errors = parse_errors(
            "metadata:\n  name: x\n---\napiVersion: v1\nkind: Node\nmetadata: {}\n---\n- a\n",
        );
        assert_line(
            &errors,
            &["objects.yaml: apiVersion: the document at line 1 has no apiVersion"],
        );
        assert_line(
            &errors,
            &["objects.yaml: metadata.name: the Node in the document at line 4 has no name"],
        );
        assert_line(
            &errors,
            &["objects.yaml: the document at line 8 is not a mapping"],
        );
    }

    #[test]
    fn services_of_other_types_are_ignored_silently_but_count_as_objects() {
        let cluster_ip = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: web\n\
                          spec:\n  ports:\n    - port: 443\n      protocol: SCTP\n";
        let config = parse_ok(&reference_with(cluster_ip));
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.findings, []);
        let errors = parse_errors(&format!(
            "{cluster_ip}---\n{}",
            lb_service("web", "api", "")
        ));
        assert_line(&errors, &["Service/web/api: duplicate object"]);
    }

    #[test]
    fn namespaced_objects_default_to_the_default_namespace() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  type: LoadBalancer\n";
        let config = parse_ok(text);
        assert_eq!(
            config.services[0].object,
            ObjectRef {
                kind: "Service".into(),
                namespace: "default".into(),
                name: "a".into()
            }
        );
    }
}
