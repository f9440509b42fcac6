//! The Kubernetes-shaped objects that describe a lab, as the agent reads them: Nodes, the
//! IP pool, the L2 announcement policy, Services and their EndpointSlices, rendered as one
//! multi-document YAML string.
//!
//! Keys come out sorted, as `kubectl get -o yaml` prints them.

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::spec::{
    L2PolicySpec, LabSpec, LabelSelector, NodeSpec, Operator, PoolSpec, PortSpec, Protocol,
    ServiceSpec, SessionAffinity, TrafficPolicy,
};

const CILIUM_API: &str = "cilium.io/v2alpha1";
const LB_IPAM_IPS_ANNOTATION: &str = "lbipam.cilium.io/ips";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every object of `spec`, nodes first, each service followed by its EndpointSlice.
pub fn objects(spec: &LabSpec) -> Result<Vec<Value>> {
    spec.validate()?;
    let mut docs: Vec<Value> = Vec::new();
    docs.extend(spec.nodes.iter().map(|n| node(n, spec.internal_ips)));
    docs.extend(spec.pools.iter().map(pool));
    docs.extend(spec.l2_policies.iter().map(l2_policy));
    for svc in &spec.services {
        docs.push(service(svc));
        docs.push(endpoint_slice(spec, svc));
    }
    Ok(docs)
}

/// The objects of `spec` as one JSON `v1 List`, which `kubectl apply -f` reads as the
/// agent does (its YAML 1.1 parser would read the unquoted `No` of [`config_yaml`] as a
/// boolean).
pub fn config_json(spec: &LabSpec) -> Result<String> {
    Ok(json!({ "apiVersion": "v1", "kind": "List", "items": objects(spec)? }).to_string())
}

/// Renders every object of `spec` (see [`objects`]) as one multi-document YAML string.
pub fn config_yaml(spec: &LabSpec) -> Result<String> {
    let docs = objects(spec)?;
    let mut yaml = String::new();
    for doc in &docs {
        yaml.push_str("---\n");
        yaml.push_str(
            &serde_yaml_ng::to_string(doc).context("rendering the lab's objects as YAML")?,
        );
    }
    Ok(yaml)
}

fn node(node: &NodeSpec, internal_ip: bool) -> Value {
    let mut addresses = vec![json!({ "type": "Hostname", "address": node.name })];
    if internal_ip {
        addresses.insert(
            0,
            json!({ "type": "InternalIP", "address": node.addr.to_string() }),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node.name, "labels": node.labels },
        "status": { "addresses": addresses },
    })
}

fn pool(pool: &PoolSpec) -> Value {
    let blocks: Vec<Value> = pool
        .cidrs
        .iter()
        .map(|cidr| json!({ "cidr": cidr }))
        .collect();
    json!({
        "apiVersion": CILIUM_API,
        "kind": "CiliumLoadBalancerIPPool",
        "metadata": { "name": pool.name },
        "spec": {
            "blocks": blocks,
            "allowFirstLastIPs": if pool.allow_first_last_ips { "Yes" } else { "No" },
            "serviceSelector": selector(&pool.service_selector),
        },
    })
}

fn l2_policy(policy: &L2PolicySpec) -> Value {
    let mut spec = json!({
        "interfaces": policy.interfaces,
        "loadBalancerIPs": policy.load_balancer_ips,
    });
    if let Some(nodes) = &policy.node_selector {
        spec["nodeSelector"] = selector(nodes);
    }
    json!({
        "apiVersion": CILIUM_API,
        "kind": "CiliumL2AnnouncementPolicy",
        "metadata": { "name": policy.name },
        "spec": spec,
    })
}

/// A label selector as Kubernetes writes it: `matchLabels: {}` alone selects everything,
/// and an empty `matchLabels` beside expressions is left out.
fn selector(sel: &LabelSelector) -> Value {
    let mut out = Map::new();
    if !sel.match_labels.is_empty() || sel.match_expressions.is_empty() {
        out.insert("matchLabels".into(), json!(sel.match_labels));
    }
    if !sel.match_expressions.is_empty() {
        let expressions = sel
            .match_expressions
            .iter()
            .map(|req| {
                let mut expr = json!({ "key": req.key, "operator": operator(req.operator) });
                if !req.values.is_empty() {
                    expr["values"] = json!(req.values);
                }
                expr
            })
            .collect();
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Value::Object(out)
}

fn operator(op: Operator) -> &'static str {
    match op {
        Operator::In => "In",
        Operator::NotIn => "NotIn",
        Operator::Exists => "Exists",
        Operator::DoesNotExist => "DoesNotExist",
    }
}

fn service(svc: &ServiceSpec) -> Value {
    let mut metadata = json!({
        "name": svc.name,
        "namespace": svc.namespace,
        "labels": svc.labels,
    });
    if let Some(ip) = svc.requested_ip {
        metadata["annotations"] = json!({ LB_IPAM_IPS_ANNOTATION: ip.to_string() });
    }
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "port": p.port,
                "targetPort": p.target_port,
                "protocol": protocol(p),
            })
        })
        .collect();
    let mut spec = json!({
        "type": "LoadBalancer",
        "externalTrafficPolicy": match svc.external_traffic_policy {
            TrafficPolicy::Local => "Local",
            TrafficPolicy::Cluster => "Cluster",
        },
        "ports": ports,
        "selector": svc.selector,
    });
    if !svc.source_ranges.is_empty() {
        spec["loadBalancerSourceRanges"] = json!(svc.source_ranges);
    }
    match svc.session_affinity {
        SessionAffinity::None => spec["sessionAffinity"] = json!("None"),
        SessionAffinity::ClientIp { timeout_seconds } => {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] =
                json!({ "clientIP": { "timeoutSeconds": timeout_seconds } });
        }
    }
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec })
}

/// One EndpointSlice per service listing its backends where they run, with the backend
/// ports named like the service's ports.
fn endpoint_slice(spec: &LabSpec, svc: &ServiceSpec) -> Value {
    let endpoints: Vec<Value> = svc
        .backends
        .iter()
        .filter_map(|name| spec.find_pod(name))
        .map(|(node, pod)| {
            json!({
                "addresses": [pod.addr.to_string()],
                "conditions": {
                    "ready": pod.ready && !pod.terminating,
                    "serving": pod.ready,
                    "terminating": pod.terminating,
                },
                "nodeName": node.name,
                "targetRef": { "kind": "Pod", "namespace": svc.namespace, "name": pod.name },
            })
        })
        .collect();
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.target_port, "protocol": protocol(p) }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-lab", svc.name),
            "namespace": svc.namespace,
            "labels": { SERVICE_NAME_LABEL: svc.name },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    })
}

fn protocol(port: &PortSpec) -> &'static str {
    match port.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde::Deserialize;

    use crate::lab::{ENVOY_W1A, ENVOY_W1B, ENVOY_W2A, POOL_CIDR, VIP_EXTERNAL};

    use super::*;

    fn parse(spec: &LabSpec) -> Vec<Value> {
        let yaml = config_yaml(spec).unwrap();
        serde_yaml_ng::Deserializer::from_str(&yaml)
            .map(|doc| Value::deserialize(doc).unwrap())
            .collect()
    }

    fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn reference_objects_match_the_reference_cluster() {
        let docs = parse(&LabSpec::reference("gwt"));
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Node",
                "Node",
                "Node",
                "CiliumLoadBalancerIPPool",
                "CiliumL2AnnouncementPolicy",
                "Service",
                "EndpointSlice",
                "Service",
                "EndpointSlice",
            ]
        );
        assert_eq!(
            find(&docs, "Node", "cp1")["metadata"]["labels"],
            json!({ "kubernetes.io/hostname": "cp1", "node-role.kubernetes.io/control-plane": "" })
        );
        assert_eq!(
            find(&docs, "Node", "w1")["metadata"]["labels"],
            json!({ "kubernetes.io/hostname": "w1" })
        );
        assert_eq!(
            find(&docs, "CiliumLoadBalancerIPPool", "first-pool")["spec"],
            json!({
                "blocks": [{ "cidr": POOL_CIDR }],
                "allowFirstLastIPs": "No",
                "serviceSelector": { "matchLabels": {} },
            })
        );
        assert_eq!(
            find(&docs, "CiliumL2AnnouncementPolicy", "l2-policy")["spec"],
            json!({
                "interfaces": ["^e.*"],
                "loadBalancerIPs": true,
                "nodeSelector": { "matchExpressions": [
                    { "key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist" },
                ]},
            })
        );
        let external = find(&docs, "Service", "cilium-gateway-gateway-external");
        assert_eq!(external["metadata"]["namespace"], "gateway");
        assert_eq!(
            external["metadata"]["annotations"]["lbipam.cilium.io/ips"],
            VIP_EXTERNAL.to_string()
        );
        assert_eq!(
            external["spec"],
            json!({
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 10800 } },
                "ports": [
                    { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" },
                    { "name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP" },
                ],
                "selector": { "io.cilium.gateway/owning-gateway": "gateway-external" },
            })
        );
        let slice = find(
            &docs,
            "EndpointSlice",
            "cilium-gateway-gateway-internal-lab",
        );
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "cilium-gateway-gateway-internal"
        );
        let endpoints: Vec<(Ipv4Addr, &str, bool)> = slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["addresses"][0].as_str().unwrap().parse().unwrap(),
                    e["nodeName"].as_str().unwrap(),
                    e["conditions"]["ready"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                (ENVOY_W1A, "w1", true),
                (ENVOY_W1B, "w1", true),
                (ENVOY_W2A, "w2", true)
            ]
        );
        assert_eq!(
            slice["ports"],
            json!([
                { "name": "http", "port": 8080, "protocol": "TCP" },
                { "name": "https", "port": 8443, "protocol": "TCP" },
            ])
        );
    }

    #[test]
    fn nodes_list_their_internal_ip_only_in_a_cluster_lab() {
        let addresses = |spec: &LabSpec| -> Vec<Value> {
            parse(spec)
                .iter()
                .filter(|d| d["kind"] == "Node")
                .map(|d| d["status"]["addresses"].clone())
                .collect()
        };
        let alone = addresses(&LabSpec::reference("gwt"));
        assert!(alone.iter().all(|a| a.as_array().unwrap().len() == 1));
        let cluster = addresses(&LabSpec::failover("gwt"));
        assert_eq!(
            cluster[2],
            json!([
                { "type": "InternalIP", "address": "192.168.10.113" },
                { "type": "Hostname", "address": "w3" },
            ])
        );
    }

    #[test]
    fn variations_show_up_in_the_objects() {
        let mut spec = LabSpec::reference("gwt");
        spec.pod_mut("envoy-w1b").ready = false;
        let internal = spec.service_mut("cilium-gateway-gateway-internal");
        internal.session_affinity = SessionAffinity::None;
        internal.requested_ip = None;
        let docs = parse(&spec);

        let svc = find(&docs, "Service", "cilium-gateway-gateway-internal");
        assert_eq!(svc["spec"]["sessionAffinity"], "None");
        assert!(svc["spec"].get("sessionAffinityConfig").is_none());
        assert!(svc["metadata"].get("annotations").is_none());
        let slice = find(
            &docs,
            "EndpointSlice",
            "cilium-gateway-gateway-internal-lab",
        );
        assert_eq!(slice["endpoints"][1]["targetRef"]["name"], "envoy-w1b");
        assert_eq!(slice["endpoints"][1]["conditions"]["ready"], false);
    }
}
