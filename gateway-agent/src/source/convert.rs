//! One object in the API's shape (JSON, as a file or the API server gives it) into a
//! validated object: deserialized into its kind's type, naming the field path of a type
//! error, then converted by that kind's conversion in `config`. The file source and the
//! Kubernetes source convert every object here, so both judge an object alike.

use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::{
    CiliumL2AnnouncementPolicy, CiliumLoadBalancerIpPool, Kind, LoadBalancerClasses, Object,
    ObjectDiagnostics, ObjectRef, endpoint_slice, is_load_balancer, l2_policy, node, pool, service,
};

/// The object `document` (of kind `kind`, named `object`) makes: `None` when it does not
/// deserialize (a fatal error) or is not one the agent serves (a Service of another type or
/// class, a slice that is not IPv4, a policy that cannot be read...).
pub(crate) fn convert(
    kind: Kind,
    document: Value,
    object: &ObjectRef,
    classes: &LoadBalancerClasses,
    findings: &mut ObjectDiagnostics<'_>,
) -> Option<Object> {
    let name = || object.name.to_string();
    match kind {
        Kind::Service => {
            let raw = typed::<core::Service>(document, findings).filter(is_load_balancer)?;
            let service = service(&raw, object.clone(), classes, findings)?;
            Some(Object::Service(Arc::new(service)))
        }
        Kind::EndpointSlice => {
            let raw = typed::<discovery::EndpointSlice>(document, findings)?;
            let slice = endpoint_slice(&raw, object.clone(), findings)?;
            Some(Object::EndpointSlice(Arc::new(slice)))
        }
        Kind::Node => {
            let raw = typed::<core::Node>(document, findings)?;
            Some(Object::Node(Arc::new(node(&raw, name()))))
        }
        Kind::IpPool => {
            let raw = typed::<CiliumLoadBalancerIpPool>(document, findings)?;
            Some(Object::IpPool(Arc::new(pool(&raw, name(), findings))))
        }
        Kind::L2Policy => {
            let raw = typed::<CiliumL2AnnouncementPolicy>(document, findings)?;
            Some(Object::L2Policy(Arc::new(l2_policy(
                &raw,
                name(),
                findings,
            )?)))
        }
    }
}

/// Deserializes `document` into its typed shape; a type error (naming the field path) is
/// fatal: it refuses a file, and the Kubernetes source skips the object.
fn typed<T: DeserializeOwned>(document: Value, findings: &mut ObjectDiagnostics<'_>) -> Option<T> {
    serde_path_to_error::deserialize(document)
        .map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { String::new() } else { path };
            findings.fatal(field, error.into_inner().to_string());
        })
        .ok()
}
