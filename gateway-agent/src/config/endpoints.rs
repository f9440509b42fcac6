//! `discovery.k8s.io/v1 EndpointSlice`: where a service's backends run and on which ports.

use std::net::Ipv4Addr;

use k8s_openapi::api::discovery::v1 as discovery;

use super::error::ObjectDiagnostics;
use super::{ObjectRef, Protocol, Reason};

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
    /// `conditions.serving`: able to take traffic, terminating or not; absent means what
    /// `ready` says (as the API asks of consumers).
    pub serving: bool,
    /// `conditions.terminating`; absent means not terminating.
    pub terminating: bool,
}

impl Endpoint {
    /// Takes new flows when no endpoint in scope is ready (KEP-1669): serving while it
    /// terminates, during a rollout.
    pub fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
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

/// Converts a slice; `None`, with a finding, when it is not served (not IPv4, or not tied to
/// a service). An address or port that cannot be read is skipped with a finding.
pub(crate) fn endpoint_slice(
    raw: &discovery::EndpointSlice,
    object: ObjectRef,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<EndpointSlice> {
    match raw.address_type.as_str() {
        "IPv4" => {}
        "IPv6" | "FQDN" => {
            diagnostics.info(
                Reason::SliceNotServed,
                "addressType",
                format!(
                    "{} slice skipped: only IPv4 backends are served",
                    raw.address_type
                ),
            );
            return None;
        }
        // k8s-openapi reads a missing addressType as "".
        other => {
            diagnostics.warn(
                Reason::SliceNotServed,
                "addressType",
                format!(
                    "unknown address type {other:?} (expected IPv4, IPv6 or FQDN): the slice is \
                     skipped"
                ),
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
            Reason::SliceNotServed,
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
                Err(_) => diagnostics.warn(
                    Reason::InvalidAddress,
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("{text:?} is not an IPv4 address; the address is skipped"),
                ),
            }
        }
        let conditions = raw.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        endpoints.push(Endpoint {
            addresses,
            node_name: raw.node_name.clone(),
            ready,
            serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
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
                diagnostics.warn(
                    Reason::UnsupportedProtocol,
                    format!("ports[{i}].protocol"),
                    format!("unknown protocol {other:?}; the port is skipped"),
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
            _ => diagnostics.warn(
                Reason::InvalidPort,
                format!("ports[{i}].port"),
                format!("port {number} is outside 1..=65535; the port is skipped"),
            ),
        }
    }

    Some(EndpointSlice {
        object,
        service: service.clone(),
        endpoints,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn slice(address_type: &str, body: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-abc\n\
             \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: shop\n\
             addressType: {address_type}\n{body}"
        )
    }

    #[test]
    fn reads_the_reference_envoy_slice() {
        let config = reference();
        let internal = &config.endpoint_slices[1];
        assert_eq!(
            internal.object.to_string(),
            "EndpointSlice/gateway/cilium-gateway-gateway-internal-7xk2p"
        );
        assert_eq!(internal.service, "cilium-gateway-gateway-internal");
        assert_eq!(
            internal.endpoints,
            [
                Endpoint {
                    addresses: vec![Ipv4Addr::new(10, 0, 1, 10)],
                    node_name: Some("worker-1".into()),
                    ready: true,
                    serving: true,
                    terminating: false,
                },
                Endpoint {
                    addresses: vec![Ipv4Addr::new(10, 0, 2, 10)],
                    node_name: Some("worker-2".into()),
                    ready: true,
                    serving: true,
                    terminating: false,
                },
            ]
        );
        assert_eq!(
            internal.ports,
            [
                EndpointPort {
                    name: "port-80".into(),
                    port: 10080,
                    protocol: Protocol::Tcp,
                },
                EndpointPort {
                    name: "port-443".into(),
                    port: 10443,
                    protocol: Protocol::Tcp,
                },
            ]
        );
    }

    #[test]
    fn readiness_absent_means_ready() {
        let config = parse_ok(&slice(
            "IPv4",
            "endpoints:\n  - addresses: [10.0.0.1]\n  - addresses: [10.0.0.2]\n    conditions: {}\n\
             \x20 - addresses: [10.0.0.3]\n    conditions:\n      ready: false\n",
        ));
        let ready: Vec<bool> = config.endpoint_slices[0]
            .endpoints
            .iter()
            .map(|e| e.ready)
            .collect();
        assert_eq!(ready, [true, true, false]);
        assert_eq!(config.endpoint_slices[0].endpoints[0].node_name, None);
    }

    #[test]
    fn serving_defaults_to_ready_and_terminating_to_false() {
        let config = parse_ok(&slice(
            "IPv4",
            "endpoints:\n  - addresses: [10.0.0.1]\n\
             \x20 - addresses: [10.0.0.2]\n    conditions:\n      ready: false\n\
             \x20 - addresses: [10.0.0.3]\n    conditions:\n      ready: false\n      serving: true\n      terminating: true\n\
             \x20 - addresses: [10.0.0.4]\n    conditions:\n      ready: false\n      serving: false\n      terminating: true\n",
        ));
        let conditions: Vec<(bool, bool, bool, bool)> = config.endpoint_slices[0]
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating, e.serving_terminating()))
            .collect();
        assert_eq!(
            conditions,
            [
                (true, true, false, false),
                (false, false, false, false),
                (false, true, true, true),
                (false, false, true, false),
            ]
        );
    }

    #[test]
    fn ports_default_to_tcp_and_unusable_ones_are_dropped() {
        let config = parse_ok(&slice(
            "IPv4",
            "endpoints: []\nports:\n  - port: 8080\n  - name: dns\n    port: 53\n    protocol: UDP\n\
             \x20 - name: sig\n    port: 9\n    protocol: SCTP\n  - name: any\n",
        ));
        assert_eq!(
            config.endpoint_slices[0].ports,
            [
                EndpointPort {
                    name: String::new(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                EndpointPort {
                    name: "dns".into(),
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ]
        );
    }

    #[test]
    fn ipv6_and_fqdn_slices_are_skipped_with_a_warning() {
        for address_type in ["IPv6", "FQDN"] {
            let text = slice(
                address_type,
                "endpoints:\n  - addresses: [\"2001:db8::1\"]\n",
            );
            assert!(parse_ok(&text).endpoint_slices.is_empty());
            assert_line(
                &parse_findings(&text),
                &[
                    "objects.yaml: EndpointSlice/web/shop-abc: addressType:",
                    &format!("{address_type} slice skipped"),
                ],
            );
        }
    }

    #[test]
    fn a_slice_without_service_label_is_skipped_with_a_warning() {
        let text = slice("IPv4", "endpoints: []\n")
            .replace("  labels:\n    kubernetes.io/service-name: shop\n", "");
        assert!(parse_ok(&text).endpoint_slices.is_empty());
        assert_line(
            &parse_findings(&text),
            &["EndpointSlice/web/shop-abc: metadata.labels: no kubernetes.io/service-name label"],
        );
    }

    #[test]
    fn what_cannot_be_read_is_skipped_and_the_rest_serves() {
        let cases = [
            (
                slice(
                    "IPv4",
                    "endpoints:\n  - addresses: [10.0.0.1, 10.0.0.256]\nports:\n  - port: 80\n",
                ),
                "endpoints[0].addresses[1]: \"10.0.0.256\" is not an IPv4 address; the address is skipped",
            ),
            (
                slice(
                    "IPv4",
                    "endpoints:\n  - addresses: [10.0.0.1]\nports:\n  - port: 80\n  - port: 65536\n",
                ),
                "ports[1].port: port 65536 is outside 1..=65535; the port is skipped",
            ),
            (
                slice(
                    "IPv4",
                    "endpoints:\n  - addresses: [10.0.0.1]\nports:\n  - port: 80\n  - port: 80\n    protocol: HTTP\n",
                ),
                "ports[1].protocol: unknown protocol \"HTTP\"; the port is skipped",
            ),
        ];
        for (text, expected) in cases {
            let config = parse_ok(&text);
            let slice = &config.endpoint_slices[0];
            assert_eq!(slice.endpoints[0].addresses, [Ipv4Addr::new(10, 0, 0, 1)]);
            assert_eq!(slice.ports.len(), 1);
            assert_eq!(
                parse_findings(&text),
                [format!(
                    "objects.yaml: EndpointSlice/web/shop-abc: {expected}"
                )]
            );
        }
        let unknown = slice("IPv5", "endpoints: []\n");
        assert!(parse_ok(&unknown).endpoint_slices.is_empty());
        assert_line(
            &parse_findings(&unknown),
            &["EndpointSlice/web/shop-abc: addressType: unknown address type \"IPv5\""],
        );
    }
}
