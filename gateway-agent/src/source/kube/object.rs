//! One object as the API server returns it, judged as the file source judges it: named
//! from its metadata, then converted by `source::convert`. An object that does not
//! deserialize or convert is rejected with what was found, never fatal: the others serve.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use serde_json::{Map, Value};

use super::watch::Outcome;
use crate::config::{Diagnostics, Finding, Kind, LoadBalancerClasses, ObjectRef, Reason, Severity};
use crate::source::convert::convert;
use crate::store::Entry;

/// `kind/namespace/name` of an object of `kind` with `metadata`.
pub(crate) fn object_ref(kind: Kind, metadata: &ObjectMeta) -> ObjectRef {
    let text = |field: &Option<String>| field.as_deref().unwrap_or_default().to_owned();
    ObjectRef {
        kind: kind.name().into(),
        namespace: if kind.namespaced() {
            text(&metadata.namespace).as_str().into()
        } else {
            Default::default()
        },
        name: text(&metadata.name).as_str().into(),
    }
}

/// What the agent makes of `raw`, an object of `kind` from the API server called `source`,
/// serving Services of `classes`.
pub(crate) fn judge(
    kind: Kind,
    raw: DynamicObject,
    source: &str,
    classes: &LoadBalancerClasses,
) -> Outcome {
    let object = object_ref(kind, &raw.metadata);
    // The object as the API server sent it; only the metadata is serialized again.
    let mut document = match raw.data {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    match serde_json::to_value(&raw.metadata) {
        Ok(metadata) => document.insert("metadata".into(), metadata),
        Err(error) => {
            return Outcome::Rejected(
                object.clone(),
                vec![rejection(source, &object, "metadata", &error.to_string())],
            );
        }
    };
    let document = Value::Object(document);
    let mut diagnostics = Diagnostics::new(source);
    let converted = convert(
        kind,
        document,
        &object,
        classes,
        &mut diagnostics.object(&object),
    );
    let (errors, warnings) = diagnostics.into_parts();
    match converted {
        Some(converted) => Outcome::Served(Entry {
            object: converted,
            findings: warnings,
        }),
        None if errors.is_empty() => Outcome::Ignored(object),
        None => {
            let findings = errors
                .iter()
                .map(|e| rejection(source, &object, &e.field, &e.message))
                .chain(warnings)
                .collect();
            Outcome::Rejected(object, findings)
        }
    }
}

/// What makes `object` unusable, as a finding about it: the agent skips it and serves the
/// others.
fn rejection(source: &str, object: &ObjectRef, field: &str, why: &str) -> Finding {
    Finding {
        file: source.to_owned(),
        object: Some(object.clone()),
        field: field.to_owned(),
        message: format!("not served: {why}"),
        reason: Reason::ObjectNotRead,
        severity: Severity::Error,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Object;

    fn raw(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn service(spec: serde_json::Value) -> DynamicObject {
        raw(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec,
        }))
    }

    #[test]
    fn a_load_balancer_service_is_served_as_the_file_source_reads_it() {
        let outcome = judge(
            Kind::Service,
            service(json!({"type": "LoadBalancer", "ports": [{"port": 80}]})),
            "api",
            &LoadBalancerClasses::default(),
        );
        let Outcome::Served(entry) = outcome else {
            panic!("{outcome:?}")
        };
        let Object::Service(service) = entry.object else {
            panic!("{:?}", entry.object)
        };
        assert_eq!(service.object.to_string(), "Service/shop/web");
        assert_eq!(service.ports[0].port, 80);
    }

    #[test]
    fn a_service_of_another_type_is_ignored_without_findings() {
        let outcome = judge(
            Kind::Service,
            service(json!({"type": "ClusterIP"})),
            "api",
            &LoadBalancerClasses::default(),
        );
        assert!(
            matches!(&outcome, Outcome::Ignored(o) if o.to_string() == "Service/shop/web"),
            "{outcome:?}"
        );
    }

    #[test]
    fn an_object_that_does_not_deserialize_is_rejected_naming_the_field() {
        let outcome = judge(
            Kind::Service,
            service(json!({"type": "LoadBalancer", "ports": [{"port": "eighty"}]})),
            "api",
            &LoadBalancerClasses::default(),
        );
        let Outcome::Rejected(object, findings) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(object.to_string(), "Service/shop/web");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].field, "spec.ports[0].port");
        assert!(
            findings[0]
                .to_string()
                .starts_with("api: Service/shop/web: spec.ports[0].port: not served: invalid type"),
            "{}",
            findings[0]
        );
    }

    #[test]
    fn cluster_scoped_kinds_have_no_namespace() {
        let outcome = judge(
            Kind::IpPool,
            raw(json!({
                "apiVersion": "cilium.io/v2", "kind": "CiliumLoadBalancerIPPool",
                "metadata": {"name": "pool", "namespace": "ignored"},
                "spec": {"blocks": [{"cidr": "10.0.0.0/24"}]},
            })),
            "api",
            &LoadBalancerClasses::default(),
        );
        let Outcome::Served(entry) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            entry.object.object_ref().to_string(),
            "CiliumLoadBalancerIPPool/pool"
        );
    }
}
