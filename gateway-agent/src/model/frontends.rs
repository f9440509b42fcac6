//! The frontends this node programs for a service: one per service port on the VIP. A
//! Local service's endpoints are those on this node (no SNAT: the client's source address
//! reaches the backend); a Cluster service's are its endpoints anywhere, those on other
//! nodes reached through SNAT to this node's address.
//!
//! Of those, new flows go to the ready ones; when none is ready, to the ones still serving
//! while they terminate (KEP-1669: a rollout then drains instead of cutting). Every other
//! endpoint listed drains: it takes no new flow, but the flows already on it go on until it
//! leaves the EndpointSlice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{BackendAddr, Frontend, TrafficPolicy};
use crate::config::{Diagnostics, EndpointSlice, Reason, Service, ServicePort, TargetPort};

pub(crate) fn frontends(
    service: &Service,
    slices: &[Arc<EndpointSlice>],
    vip: Ipv4Addr,
    node_name: &str,
    diagnostics: &mut Diagnostics,
) -> Vec<Frontend> {
    service
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let (mut ready, mut terminating, mut listed) =
                (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
            for slice in slices {
                let Some(backend_port) = backend_port(slice, port) else {
                    diagnostics.find(
                        crate::config::Severity::Warning,
                        Reason::NamedPortUnresolved,
                        Some(&service.object),
                        format!("spec.ports[{i}].targetPort"),
                        format!(
                            "{} has no port named {:?}: its endpoints do not back this port",
                            slice.object, port.name
                        ),
                    );
                    continue;
                };
                for endpoint in &slice.endpoints {
                    let local = endpoint.node_name.as_deref() == Some(node_name);
                    if !local && service.traffic_policy == TrafficPolicy::Local {
                        continue;
                    }
                    let backends = endpoint.addresses.iter().map(|&addr| BackendAddr {
                        addr,
                        port: backend_port,
                        remote: !local,
                    });
                    listed.extend(backends.clone());
                    if endpoint.ready {
                        ready.extend(backends);
                    } else if endpoint.serving_terminating() {
                        terminating.extend(backends);
                    }
                }
            }
            let backends = if ready.is_empty() { terminating } else { ready };
            let draining = listed.difference(&backends).copied().collect();
            Frontend {
                service: service.object.clone(),
                port_name: port.name.as_str().into(),
                vip,
                port: port.port,
                protocol: port.protocol,
                affinity_timeout_secs: service.affinity_timeout_secs,
                backends: backends.into_iter().collect(),
                draining,
                source_ranges: service.source_ranges.clone(),
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::config::fixtures::*;
    use crate::model::{BackendAddr, DesiredState, Protocol, desired_state};

    fn state(text: &str, node: &str) -> DesiredState {
        desired_state(&parse_ok(text), node, &[])
    }

    fn backend(addr: [u8; 4], port: u16) -> BackendAddr {
        BackendAddr {
            addr: addr.into(),
            port,
            remote: false,
        }
    }

    /// (vip, port, backends) of each frontend.
    fn summary(state: &DesiredState) -> Vec<(String, u16, Vec<BackendAddr>)> {
        state
            .frontends
            .iter()
            .map(|f| (f.vip.to_string(), f.port, f.backends.clone()))
            .collect()
    }

    #[test]
    fn a_worker_serves_both_gateways_with_its_own_envoy_only() {
        let state = state(REFERENCE, "worker-1");
        let envoy = |port| vec![backend([10, 0, 1, 10], port)];
        assert_eq!(
            summary(&state),
            [
                ("192.168.10.49".into(), 80, envoy(10080)),
                ("192.168.10.49".into(), 443, envoy(10443)),
                ("192.168.10.50".into(), 80, envoy(10080)),
                ("192.168.10.50".into(), 443, envoy(10443)),
            ]
        );
        let first = &state.frontends[0];
        assert_eq!(first.service.name, "cilium-gateway-gateway-internal");
        assert_eq!(first.port_name, "port-80");
        assert_eq!(first.protocol, Protocol::Tcp);
        assert_eq!(first.affinity_timeout_secs, Some(10_800));
    }

    #[test]
    fn a_node_without_local_endpoints_still_programs_the_vips() {
        let state = state(REFERENCE, "cp-1");
        assert_eq!(state.frontends.len(), 4);
        assert!(state.frontends.iter().all(|f| f.backends.is_empty()));
    }

    fn shop(endpoints: &str, ports: &str, service_ports: &str) -> String {
        let service = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: shop\n  namespace: web\n\
             spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  loadBalancerIP: 192.168.10.40\n\
             \x20 ports:\n{service_ports}"
        );
        let slice = |suffix: &str, endpoints: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-{suffix}\n\
                 \x20 namespace: web\n  labels:\n    kubernetes.io/service-name: shop\naddressType: IPv4\n\
                 endpoints:\n{endpoints}ports:\n{ports}"
            )
        };
        reference_with(&format!(
            "{service}---\n{}---\n{}",
            slice("a", endpoints),
            // A second slice repeating the first endpoint: backends are deduplicated.
            slice("b", "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n"),
        ))
    }

    fn shop_backends(text: &str, node: &str) -> Vec<(u16, Vec<BackendAddr>)> {
        state(text, node)
            .frontends
            .iter()
            .filter(|f| f.service.name == "shop")
            .map(|f| (f.port, f.backends.clone()))
            .collect()
    }

    #[test]
    fn only_ready_endpoints_on_this_node_sorted_and_deduplicated() {
        let text = shop(
            "  - addresses: [10.0.1.22, 10.0.1.21]\n    nodeName: worker-1\n\
             \x20 - addresses: [10.0.1.23]\n    nodeName: worker-1\n    conditions:\n      ready: false\n\
             \x20 - addresses: [10.0.2.21]\n    nodeName: worker-2\n\
             \x20 - addresses: [10.0.9.9]\n",
            "  - name: http\n    port: 8080\n",
            "    - name: http\n      port: 80\n",
        );
        assert_eq!(
            shop_backends(&text, "worker-1"),
            [(
                80,
                vec![backend([10, 0, 1, 21], 8080), backend([10, 0, 1, 22], 8080)]
            )]
        );
        assert_eq!(
            shop_backends(&text, "worker-2"),
            [(80, vec![backend([10, 0, 2, 21], 8080)])]
        );
    }

    #[test]
    fn terminating_endpoints_take_new_flows_only_when_none_is_ready_and_drain_otherwise() {
        let conditions = |ready: bool, serving: bool, terminating: bool| {
            format!(
                "    nodeName: worker-1\n    conditions:\n      ready: {ready}\n      \
                 serving: {serving}\n      terminating: {terminating}\n"
            )
        };
        // (`shop` adds 10.0.1.21, ready, in a second slice: it is left out of the split.)
        let endpoints = |first_ready: bool| {
            [
                ("10.0.1.31", conditions(first_ready, true, !first_ready)),
                ("10.0.1.32", conditions(false, true, true)),
                ("10.0.1.33", conditions(false, false, true)),
                ("10.0.1.34", conditions(false, false, false)),
            ]
            .map(|(addr, c)| format!("  - addresses: [{addr}]\n{c}"))
            .concat()
        };
        let split = |text: &str| {
            let state = state(text, "worker-1");
            let f = state
                .frontends
                .iter()
                .find(|f| f.service.name == "shop")
                .unwrap()
                .clone();
            let addrs = |b: &[BackendAddr]| -> Vec<u8> {
                b.iter()
                    .map(|b| b.addr.octets()[3])
                    .filter(|&last| last != 21)
                    .collect()
            };
            (addrs(&f.backends), addrs(&f.draining))
        };
        let ports = (
            "  - name: http\n    port: 8080\n",
            "    - name: http\n      port: 80\n",
        );
        // A ready endpoint: it alone takes new flows; every other one drains.
        let text = shop(&endpoints(true), ports.0, ports.1);
        assert_eq!(split(&text), (vec![31], vec![32, 33, 34]));
        // None ready but 10.0.1.21 (the second slice, dropped too): the ones serving while
        // they terminate take new flows.
        let text = shop(&endpoints(false), ports.0, ports.1).replace(
            "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n",
            "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n    conditions:\n      ready: false\n",
        );
        assert_eq!(split(&text), (vec![31, 32], vec![33, 34]));
    }

    #[test]
    fn backend_port_resolution() {
        let endpoints = "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n";
        let slice_ports =
            "  - name: http\n    port: 8080\n  - name: dns\n    port: 5353\n    protocol: UDP\n";
        let cases = [
            // The slice port of the same name.
            (
                "    - name: http\n      port: 80\n      targetPort: 9999\n",
                8080,
            ),
            // Same name, other protocol: the numeric targetPort.
            (
                "    - name: dns\n      port: 53\n      targetPort: 1053\n",
                1053,
            ),
            // No such slice port and no targetPort: the port itself.
            ("    - name: admin\n      port: 9000\n", 9000),
        ];
        for (service_ports, expected) in cases {
            let text = shop(endpoints, slice_ports, service_ports);
            let backends = shop_backends(&text, "worker-1");
            assert_eq!(backends.len(), 1);
            assert_eq!(
                backends[0].1,
                [backend([10, 0, 1, 21], expected)],
                "{service_ports}"
            );
        }
    }

    #[test]
    fn an_unresolvable_named_target_port_leaves_the_port_without_backends() {
        let text = shop(
            "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n",
            "  - name: http\n    port: 8080\n",
            "    - name: web\n      port: 80\n      targetPort: http-alt\n",
        );
        let state = state(&text, "worker-1");
        let shop: Vec<_> = state
            .frontends
            .iter()
            .filter(|f| f.service.name == "shop")
            .collect();
        assert_eq!(shop.len(), 1);
        assert!(shop[0].backends.is_empty());
        assert_line(
            &lines(&state.findings),
            &[
                "objects.yaml: Service/web/shop: spec.ports[0].targetPort: EndpointSlice/web/shop-a has no port named \"web\"",
            ],
        );
    }

    #[test]
    fn affinity_is_off_without_client_ip() {
        let text = shop(
            "  - addresses: [10.0.1.21]\n    nodeName: worker-1\n",
            "  - port: 8080\n",
            "    - port: 80\n      protocol: UDP\n",
        );
        let state = state(&text, "worker-1");
        let shop = state
            .frontends
            .iter()
            .find(|f| f.service.name == "shop")
            .expect("shop");
        assert_eq!(shop.affinity_timeout_secs, None);
        assert_eq!(shop.protocol, Protocol::Udp);
        assert_eq!(shop.vip, Ipv4Addr::new(192, 168, 10, 40));
        // A UDP port does not match the slice's (TCP) port: the targetPort, i.e. 80.
        assert_eq!(shop.backends, [backend([10, 0, 1, 21], 80)]);
    }
}
