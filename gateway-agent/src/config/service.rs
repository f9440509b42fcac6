//! `v1 Service` of `type: LoadBalancer`: ports, traffic policy, affinity, the requested VIP
//! and the VIP a previous allocation left in `status`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::error::ObjectDiagnostics;
use super::{ObjectRef, Protocol};

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

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TrafficPolicy {
    Local,
    Cluster,
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

/// k8s-openapi reads a missing required port as 0, so 0 also means "absent".
fn port_number(value: i32, field: &str, diagnostics: &mut ObjectDiagnostics<'_>) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        Ok(_) => {
            diagnostics.error(field, "0 or missing: a port in 1..=65535 is required");
            None
        }
        Err(_) => {
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::fixtures::*;
    use super::*;

    fn only_service(text: &str) -> Service {
        let config = parse_ok(text);
        assert_eq!(config.services.len(), 1);
        std::sync::Arc::unwrap_or_clone(config.services[0].clone())
    }

    #[test]
    fn reads_every_field_of_the_reference_gateway_service() {
        let config = reference();
        let internal = &config.services[1];
        assert_eq!(
            internal.object.to_string(),
            "Service/gateway/cilium-gateway-gateway-internal"
        );
        assert_eq!(
            internal
                .labels
                .get("io.cilium.gateway/owning-gateway")
                .map(String::as_str),
            Some("gateway-internal")
        );
        assert_eq!(
            internal.created.map(|t| t.to_string()).as_deref(),
            Some("2025-10-23T10:00:00Z")
        );
        assert_eq!(internal.traffic_policy, TrafficPolicy::Local);
        assert_eq!(internal.affinity_timeout_secs, Some(10_800));
        assert_eq!(
            internal.ports,
            [
                ServicePort {
                    name: "port-80".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(80),
                },
                ServicePort {
                    name: "port-443".into(),
                    port: 443,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(443),
                },
            ]
        );
        assert_eq!(
            internal.requested_vip,
            Some(FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 49),
                field: "metadata.annotations[\"lbipam.cilium.io/ips\"]".into(),
            })
        );
        assert_eq!(
            internal.status_vips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 49),
                field: "status.loadBalancer.ingress[0].ip".into(),
            }]
        );
        assert_eq!(
            config.services[0].requested_vip.as_ref().map(|r| r.addr),
            Some(Ipv4Addr::new(192, 168, 10, 50))
        );
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let service = only_service(&lb_service("web", "shop", ""));
        assert_eq!(service.traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(service.affinity_timeout_secs, None);
        assert_eq!(service.requested_vip, None);
        assert_eq!(service.status_vips, []);
        assert_eq!(service.created, None);
        assert_eq!(
            service.ports,
            [ServicePort {
                name: String::new(),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(80),
            }]
        );
    }

    #[test]
    fn ports_protocols_and_target_ports() {
        let service = only_service(&lb_service(
            "web",
            "dns",
            "    - name: dns\n      port: 53\n      protocol: UDP\n      targetPort: 5353\n\
             \x20   - name: named\n      port: 8080\n      targetPort: http\n",
        ));
        assert_eq!(service.ports[1].protocol, Protocol::Udp);
        assert_eq!(service.ports[1].target_port, TargetPort::Number(5353));
        assert_eq!(service.ports[2].protocol, Protocol::Tcp);
        assert_eq!(
            service.ports[2].target_port,
            TargetPort::Named("http".into())
        );
    }

    #[test]
    fn session_affinity() {
        let cases = [
            ("  sessionAffinity: None\n", None),
            (
                "  sessionAffinity: ClientIP\n",
                Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
            ),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n",
                Some(1),
            ),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86400\n",
                Some(86_400),
            ),
            // The timeout means nothing without ClientIP affinity.
            (
                "  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n",
                None,
            ),
        ];
        for (spec, expected) in cases {
            let service = only_service(&lb_service("web", "shop", spec));
            assert_eq!(service.affinity_timeout_secs, expected, "{spec}");
        }
    }

    #[test]
    fn traffic_policy() {
        for (spec, expected) in [
            ("  externalTrafficPolicy: Local\n", TrafficPolicy::Local),
            ("  externalTrafficPolicy: Cluster\n", TrafficPolicy::Cluster),
            ("", TrafficPolicy::Cluster),
        ] {
            let service = only_service(&lb_service("web", "shop", spec));
            assert_eq!(service.traffic_policy, expected, "{spec}");
        }
    }

    #[test]
    fn requested_vip_sources() {
        let with_metadata = |annotations: &str, spec: &str| {
            lb_service("web", "shop", spec).replace(
                "  namespace: web\n",
                &format!("  namespace: web\n  annotations:\n{annotations}"),
            )
        };
        let cases = [
            (
                with_metadata("    x: y\n", "  loadBalancerIP: 192.168.10.40\n"),
                "192.168.10.40",
                "spec.loadBalancerIP",
            ),
            (
                with_metadata("    io.cilium/lb-ipam-ips: 192.168.10.41\n", ""),
                "192.168.10.41",
                "metadata.annotations[\"io.cilium/lb-ipam-ips\"]",
            ),
            // Dual-stack request: the IPv4 entry is the VIP.
            (
                with_metadata(
                    "    lbipam.cilium.io/ips: \"2001:db8::1, 192.168.10.42\"\n",
                    "",
                ),
                "192.168.10.42",
                "metadata.annotations[\"lbipam.cilium.io/ips\"]",
            ),
            // The same address twice is one request.
            (
                with_metadata(
                    "    lbipam.cilium.io/ips: 192.168.10.43\n",
                    "  loadBalancerIP: 192.168.10.43\n",
                ),
                "192.168.10.43",
                "spec.loadBalancerIP",
            ),
        ];
        for (text, addr, field) in cases {
            let service = only_service(&text);
            let requested = service.requested_vip.expect("a requested VIP");
            assert_eq!(requested.addr.to_string(), addr, "{text}");
            assert_eq!(requested.field, field, "{text}");
        }
        let warnings = parse_warnings(&with_metadata(
            "    lbipam.cilium.io/ips: \"2001:db8::1, 192.168.10.42\"\n",
            "",
        ));
        assert_line(
            &warnings,
            &[
                "objects.yaml: Service/web/shop: metadata.annotations[\"lbipam.cilium.io/ips\"]",
                "IPv6 address 2001:db8::1 ignored",
            ],
        );
    }

    #[test]
    fn status_keeps_ipv4_ingress_addresses() {
        let text = format!(
            "{}status:\n  loadBalancer:\n    ingress:\n      - hostname: lb.example\n\
             \x20     - ip: 2001:db8::7\n      - ip: 192.168.10.44\n",
            lb_service("web", "shop", "")
        );
        let service = only_service(&text);
        assert_eq!(
            service.status_vips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 44),
                field: "status.loadBalancer.ingress[2].ip".into(),
            }]
        );
    }

    #[test]
    fn invalid_services_name_object_and_field() {
        let annotated = |value: &str| {
            lb_service("web", "shop", "").replace(
                "  namespace: web\n",
                &format!(
                    "  namespace: web\n  annotations:\n    lbipam.cilium.io/ips: \"{value}\"\n"
                ),
            )
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (
                lb_service("web", "shop", "    - port: 9\n      protocol: SCTP\n"),
                "spec.ports[1].protocol",
                "unsupported protocol \"SCTP\": only TCP and UDP are served",
            ),
            (
                lb_service("web", "shop", "    - port: 70000\n"),
                "spec.ports[1].port",
                "port 70000 is outside 1..=65535",
            ),
            (
                lb_service("web", "shop", "    - name: x\n"),
                "spec.ports[1].port",
                "0 or missing",
            ),
            (
                lb_service("web", "shop", "    - port: 81\n      targetPort: -1\n"),
                "spec.ports[1].targetPort",
                "port -1 is outside 1..=65535",
            ),
            (
                lb_service("web", "shop", "    - port: 81\n      targetPort: \"\"\n"),
                "spec.ports[1].targetPort",
                "empty port name",
            ),
            (
                lb_service("web", "shop", "    - port: 80\n      protocol: TCP\n"),
                "spec.ports[1].port",
                "80/TCP is already spec.ports[0]",
            ),
            (
                lb_service("web", "shop", "  externalTrafficPolicy: local\n"),
                "spec.externalTrafficPolicy",
                "unknown policy \"local\"",
            ),
            (
                lb_service("web", "shop", "  sessionAffinity: Cookie\n"),
                "spec.sessionAffinity",
                "unknown affinity \"Cookie\"",
            ),
            (
                lb_service(
                    "web",
                    "shop",
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0\n",
                ),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "0 is outside 1..=86400",
            ),
            (
                lb_service(
                    "web",
                    "shop",
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86401\n",
                ),
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "86401 is outside 1..=86400",
            ),
            (
                lb_service("web", "shop", "  loadBalancerIP: 192.168.10.300\n"),
                "spec.loadBalancerIP",
                "\"192.168.10.300\" is not an IP address",
            ),
            (
                annotated("192.168.10.49,192.168.10.50"),
                "metadata.annotations[\"lbipam.cilium.io/ips\"]",
                "requests 2 IPv4 VIPs (192.168.10.49, 192.168.10.50): one VIP per service",
            ),
            (
                annotated("192.168.10.49, banana"),
                "metadata.annotations[\"lbipam.cilium.io/ips\"]",
                "\"banana\" is not an IP address",
            ),
            (
                format!(
                    "{}status:\n  loadBalancer:\n    ingress:\n      - ip: nope\n",
                    lb_service("web", "shop", "")
                ),
                "status.loadBalancer.ingress[0].ip",
                "\"nope\" is not an IP address",
            ),
        ];
        for (text, field, message) in cases {
            let errors = parse_errors(&text);
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_line(
                &errors,
                &[
                    &format!("objects.yaml: Service/web/shop: {field}: "),
                    message,
                ],
            );
        }
    }

    #[test]
    fn two_requested_addresses_across_fields_are_an_error() {
        let text = lb_service("web", "shop", "  loadBalancerIP: 192.168.10.40\n").replace(
            "  namespace: web\n",
            "  namespace: web\n  annotations:\n    lbipam.cilium.io/ips: 192.168.10.41\n",
        );
        assert_line(
            &parse_errors(&text),
            &[
                "Service/web/shop: metadata.annotations[\"lbipam.cilium.io/ips\"]: requests 2 IPv4 VIPs",
            ],
        );
    }
}
