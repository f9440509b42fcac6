//! `discovery.k8s.io/v1 EndpointSlice`: where a service's backends run and on which ports.

use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1 as discovery;

use super::ObjectRef;
use super::error::ObjectDiagnostics;
use crate::model::Protocol;

/// The label that ties a slice to its service (in the slice's namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A validated IPv4 EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub object: ObjectRef,
    /// The service's name, from [`SERVICE_NAME_LABEL`]; its namespace is the slice's.
    pub service: String,
    pub endpoints: Vec<Endpoint>,
    /// The TCP and UDP ports with a number; others can never back a frontend.
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<Ipv4Addr>,
    pub node_name: Option<String>,
    /// `conditions.ready`; absent means ready, as in Kubernetes.
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    /// The name of the service port this slice port backs (may be empty).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl EndpointSlice {
    pub const KIND: &str = "EndpointSlice";
}

/// Validates a slice. `None` when it is skipped (not IPv4, or not tied to a service; with a
/// warning) or invalid (with an error).
pub(crate) fn endpoint_slice(
    raw: &discovery::EndpointSlice,
    object: ObjectRef,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<EndpointSlice> {
    match raw.address_type.as_str() {
        "IPv4" => {}
        "IPv6" | "FQDN" => {
            diagnostics.warn(
                "addressType",
                format!(
                    "{} slice skipped: only IPv4 backends are served",
                    raw.address_type
                ),
            );
            return None;
        }
        other => {
            diagnostics.error(
                "addressType",
                format!("unknown address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            );
            return None;
        }
    }
    let Some(service) = raw
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
    else {
        diagnostics.warn(
            "metadata.labels",
            format!("no {SERVICE_NAME_LABEL} label: the slice belongs to no service, skipped"),
        );
        return None;
    };

    let mut endpoints = Vec::new();
    for (i, raw) in raw.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, text) in raw.addresses.iter().enumerate() {
            match text.parse::<Ipv4Addr>() {
                Ok(addr) => addresses.push(addr),
                Err(_) => diagnostics.error(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{text:?} is not an IPv4 address"),
                ),
            }
        }
        endpoints.push(Endpoint {
            addresses,
            node_name: raw.node_name.clone(),
            ready: raw
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true),
        });
    }

    let mut ports = Vec::new();
    for (i, raw) in raw.ports.iter().flatten().enumerate() {
        let protocol = match raw.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            // SCTP is valid Kubernetes but can never match a served port.
            Some("SCTP") => continue,
            Some(other) => {
                diagnostics.error(
                    format!("ports[{i}].protocol"),
                    format!("unknown protocol {other:?}"),
                );
                continue;
            }
        };
        // A port without a number does not name a backend port.
        let Some(number) = raw.port else { continue };
        match u16::try_from(number) {
            Ok(port) if port != 0 => ports.push(EndpointPort {
                name: raw.name.clone().unwrap_or_default(),
                port,
                protocol,
            }),
            _ => diagnostics.error(
                format!("ports[{i}].port"),
                format!("port {number} is outside 1..=65535"),
            ),
        }
    }

    diagnostics.finish(EndpointSlice {
        object,
        service: service.clone(),
        endpoints,
        ports,
    })
}
