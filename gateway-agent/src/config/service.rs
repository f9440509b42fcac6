//! `v1 Service` of `type: LoadBalancer`: ports, traffic policy, affinity, the requested VIP
//! and the VIP a previous allocation left in `status`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::ObjectRef;
use super::error::ObjectDiagnostics;
use crate::model::{Protocol, TrafficPolicy};

/// Cilium LB-IPAM's annotation requesting VIPs (comma-separated).
pub const LB_IPAM_IPS_ANNOTATION: &str = "lbipam.cilium.io/ips";
/// The older spelling Cilium still honours when the annotation above is absent.
pub const LB_IPAM_IPS_ANNOTATION_ALIAS: &str = "io.cilium/lb-ipam-ips";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// Kubernetes rejects ClientIP timeouts above one day.
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// A validated LoadBalancer service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub object: ObjectRef,
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`: orders dynamic allocation, oldest first.
    pub created: Option<Timestamp>,
    pub ports: Vec<ServicePort>,
    pub traffic_policy: TrafficPolicy,
    /// `Some(seconds)` when `sessionAffinity: ClientIP`.
    pub affinity_timeout_secs: Option<u32>,
    /// The one IPv4 VIP asked for through `spec.loadBalancerIP` or the LB-IPAM annotation.
    pub requested_vip: Option<FieldAddr>,
    /// IPv4 addresses of `status.loadBalancer.ingress[]`, in order: a previous allocation.
    pub status_vips: Vec<FieldAddr>,
}

/// An address together with the field it was read from, so IPAM errors can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldAddr {
    pub addr: Ipv4Addr,
    pub field: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.ports[].name` (may be empty).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `spec.ports[].targetPort`, defaulting to `port`.
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name: only EndpointSlice ports can resolve it.
    Named(String),
}

impl Service {
    pub const KIND: &str = "Service";
}

/// Whether `raw` is one of the services this agent serves; other types are ignored.
pub(crate) fn is_load_balancer(raw: &core::Service) -> bool {
    raw.spec
        .as_ref()
        .and_then(|spec| spec.type_.as_deref())
        .is_some_and(|t| t == "LoadBalancer")
}

/// Validates a LoadBalancer service; `None` if any error was recorded.
pub(crate) fn service(
    raw: &core::Service,
    object: ObjectRef,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<Service> {
    let no_spec = core::ServiceSpec::default();
    let spec = raw.spec.as_ref().unwrap_or(&no_spec);
    let ports = ports(spec.ports.as_deref().unwrap_or_default(), diagnostics);
    let traffic_policy = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            diagnostics.error(
                "spec.externalTrafficPolicy",
                format!("unknown policy {other:?} (expected Local or Cluster)"),
            );
            TrafficPolicy::Cluster
        }
    };
    let affinity_timeout_secs = affinity(spec, diagnostics);
    let requested_vip = requested_vip(raw, diagnostics);
    let status_vips = status_vips(raw, diagnostics);
    let service = Service {
        object,
        labels: raw.metadata.labels.clone().unwrap_or_default(),
        created: raw.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ports,
        traffic_policy,
        affinity_timeout_secs,
        requested_vip,
        status_vips,
    };
    diagnostics.finish(service)
}

fn port_number(value: i32, field: &str, diagnostics: &mut ObjectDiagnostics<'_>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            diagnostics.error(field, format!("port {value} is outside 1..=65535"));
            None
        }
    }
}

fn ports(raw: &[core::ServicePort], diagnostics: &mut ObjectDiagnostics<'_>) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let protocol = match raw.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some(other) => {
                diagnostics.error(
                    format!("{at}.protocol"),
                    format!("unsupported protocol {other:?}: only TCP and UDP are served"),
                );
                continue;
            }
        };
        let Some(port) = port_number(raw.port, &format!("{at}.port"), diagnostics) else {
            continue;
        };
        let target_port = match &raw.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                match port_number(*n, &format!("{at}.targetPort"), diagnostics) {
                    Some(n) => TargetPort::Number(n),
                    None => continue,
                }
            }
            Some(IntOrString::String(name)) if name.is_empty() => {
                diagnostics.error(format!("{at}.targetPort"), "empty port name");
                continue;
            }
            Some(IntOrString::String(name)) => TargetPort::Named(name.clone()),
        };
        if let Some(j) = ports
            .iter()
            .position(|p| p.port == port && p.protocol == protocol)
        {
            diagnostics.error(
                format!("{at}.port"),
                format!("{port}/{protocol} is already spec.ports[{j}]"),
            );
            continue;
        }
        ports.push(ServicePort {
            name: raw.name.clone().unwrap_or_default(),
            port,
            protocol,
            target_port,
        });
    }
    ports
}

fn affinity(spec: &core::ServiceSpec, diagnostics: &mut ObjectDiagnostics<'_>) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                Some(secs) => match u32::try_from(secs) {
                    Ok(secs) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&secs) => Some(secs),
                    _ => {
                        diagnostics.error(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{secs} is outside 1..={MAX_AFFINITY_TIMEOUT_SECS}"),
                        );
                        None
                    }
                },
            }
        }
        Some(other) => {
            diagnostics.error(
                "spec.sessionAffinity",
                format!("unknown affinity {other:?} (expected None or ClientIP)"),
            );
            None
        }
    }
}

/// Cilium takes the union of `spec.loadBalancerIP` and the annotation; we serve one IPv4
/// VIP per service, so more than one distinct IPv4 address is an error. IPv6 entries are
/// ignored with a warning: the datapath is IPv4 only.
fn requested_vip(
    raw: &core::Service,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<FieldAddr> {
    let mut entries: Vec<(String, &str)> = Vec::new();
    if let Some(ip) = raw
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
    {
        entries.push(("spec.loadBalancerIP".to_owned(), ip));
    }
    let annotations = raw.metadata.annotations.as_ref();
    let annotation = [LB_IPAM_IPS_ANNOTATION, LB_IPAM_IPS_ANNOTATION_ALIAS]
        .into_iter()
        .find_map(|key| {
            annotations
                .and_then(|a| a.get(key))
                .filter(|value| !value.trim().is_empty())
                .map(|value| (key, value))
        });
    if let Some((key, value)) = annotation {
        let field = format!("metadata.annotations[{key:?}]");
        entries.extend(value.split(',').map(|ip| (field.clone(), ip)));
    }

    let mut requested: Vec<FieldAddr> = Vec::new();
    for (field, text) in entries {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => {
                if !requested.iter().any(|r| r.addr == addr) {
                    requested.push(FieldAddr { addr, field });
                }
            }
            Ok(IpAddr::V6(addr)) => diagnostics.warn(
                field,
                format!("IPv6 address {addr} ignored: only IPv4 VIPs are served"),
            ),
            Err(_) => diagnostics.error(field, format!("{text:?} is not an IP address")),
        }
    }
    if let [first, second, ..] = requested.as_slice() {
        let all: Vec<String> = requested.iter().map(|r| r.addr.to_string()).collect();
        diagnostics.error(
            second.field.clone(),
            format!(
                "requests {} IPv4 VIPs ({}): one VIP per service is served, keep only one",
                requested.len(),
                all.join(", ")
            ),
        );
        return Some(first.clone());
    }
    requested.into_iter().next()
}

fn status_vips(raw: &core::Service, diagnostics: &mut ObjectDiagnostics<'_>) -> Vec<FieldAddr> {
    let ingress = raw
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut vips = Vec::new();
    for (i, entry) in ingress.iter().enumerate() {
        let Some(text) = entry.ip.as_deref() else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => vips.push(FieldAddr { addr, field }),
            // The IPv6 half of a dual-stack allocation: not ours to serve, nothing to say.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => diagnostics.error(field, format!("{text:?} is not an IP address")),
        }
    }
    vips
}
