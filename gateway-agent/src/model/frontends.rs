//! The frontends this node programs for a Local service: one per service port on the VIP,
//! with only the ready endpoints running on this node as backends (externalTrafficPolicy
//! Local: no SNAT, the client's source address reaches the backend).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{BackendAddr, Frontend};
use crate::config::{Config, Diagnostics, EndpointSlice, Service, ServicePort, TargetPort};

/// The IPv4 slices of `service` (same namespace, `kubernetes.io/service-name` label).
pub(crate) fn slices_of<'c>(
    config: &'c Config,
    service: &Service,
) -> impl Iterator<Item = &'c EndpointSlice> {
    let (namespace, name) = (
        service.object.namespace.clone(),
        service.object.name.clone(),
    );
    config
        .endpoint_slices
        .iter()
        .filter(move |slice| slice.object.namespace == namespace && slice.service == name)
}

pub(crate) fn frontends(
    config: &Config,
    service: &Service,
    vip: Ipv4Addr,
    node_name: &str,
    diagnostics: &mut Diagnostics,
) -> Vec<Frontend> {
    service
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut backends = BTreeSet::new();
            for slice in slices_of(config, service) {
                let Some(backend_port) = backend_port(slice, port) else {
                    diagnostics.warn(
                        Some(&service.object),
                        format!("spec.ports[{i}].targetPort"),
                        format!(
                            "{} has no port named {:?}: its endpoints do not back this port",
                            slice.object, port.name
                        ),
                    );
                    continue;
                };
                let local_ready = slice.endpoints.iter().filter(|endpoint| {
                    endpoint.ready && endpoint.node_name.as_deref() == Some(node_name)
                });
                for endpoint in local_ready {
                    backends.extend(endpoint.addresses.iter().map(|&addr| BackendAddr {
                        addr,
                        port: backend_port,
                    }));
                }
            }
            Frontend {
                service: service.object.clone(),
                port_name: port.name.clone(),
                vip,
                port: port.port,
                protocol: port.protocol,
                affinity_timeout_secs: service.affinity_timeout_secs,
                backends: backends.into_iter().collect(),
            }
        })
        .collect()
}

/// The slice port carrying the service port's name and protocol; failing that the numeric
/// targetPort (which already defaults to the port). A named targetPort only a slice can
/// resolve.
fn backend_port(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    slice
        .ports
        .iter()
        .find(|p| p.name == port.name && p.protocol == port.protocol)
        .map(|p| p.port)
        .or(match port.target_port {
            TargetPort::Number(number) => Some(number),
            TargetPort::Named(_) => None,
        })
}
