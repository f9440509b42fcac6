//! What a lab consists of: the client, the nodes with their envoy-like pods, and the
//! Kubernetes objects (pools, L2 policies, services) that the agent is given about them.
//!
//! [`LabSpec::reference`] is the reference cluster; tests change its public fields (or use
//! the `*_mut` helpers) to vary it, e.g. a service without affinity or a pod that is not ready.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Result, bail, ensure};

// The reference's addresses, named once: the lab, the tests and xtask take them from here.

/// The flat L2 segment every node and the client sit on: 192.168.10.0/24.
pub const SEGMENT: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 0);
pub const SEGMENT_PREFIX_LEN: u8 = 24;
/// The client's address on the segment, and a second one tests may add to it.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 10);
pub const CLIENT_2: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
/// The nodes' uplink addresses: the control plane cp1 and the workers w1 and w2 (and w3 of
/// the failover lab).
pub const CP1_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 110);
pub const W1_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 111);
pub const W2_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 112);
pub const W3_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 113);
/// Where a lab test's Kubernetes API server listens: on the segment's bridge, so every
/// node reaches it (see `kube_api::KubeApi::in_lab`).
pub const KUBE_API_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 5);
/// A segment address that nobody holds and no pool contains.
pub const UNUSED_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 200);
/// The pool's one block, and the VIPs the reference's two gateways request from it.
pub const POOL_CIDR: &str = "192.168.10.32/27";
pub const VIP_INTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);
pub const VIP_EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 50);
/// Pool addresses no reference service holds, for the services tests add.
pub const SPARE_VIPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(192, 168, 10, 51),
    Ipv4Addr::new(192, 168, 10, 52),
];
/// A router on the segment, in front of a client network elsewhere (see [`RoutedClientSpec`]).
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
/// The client network behind the router, and the client on it.
pub const FAR_NET: &str = "10.99.0.0/24";
pub const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);
/// The far router's address on the client network, the far client's gateway.
pub const FAR_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The link between the router and the far router (a /30).
pub const TRANSIT_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
pub const TRANSIT_FAR: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
pub const TRANSIT_PREFIX_LEN: u8 = 30;

/// The pod network, and the envoy-like pods: two on w1, one on w2.
pub const POD_CIDR: &str = "10.244.0.0/16";
pub const ENVOY_W1A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub const ENVOY_W1B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
pub const ENVOY_W2A: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);
/// The failover lab's third worker's pod.
pub const ENVOY_W3A: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 10);
/// An address of w1's pod network no reference pod holds, for a pod tests add.
pub const SPARE_POD_W1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);

pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The label Cilium's gateway controller puts on a gateway's service and selects envoy by.
pub const OWNING_GATEWAY_LABEL: &str = "io.cilium.gateway/owning-gateway";
/// The envoy-like backends listen here (plain HTTP on both).
pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 8443;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;
/// Node names become segment-side port names `p-{node}`.
const MAX_NODE_NAME: usize = MAX_IFNAME - 2;
/// Lab prefixes are short so every derived name stays readable.
const MAX_PREFIX: usize = 20;
/// Node-side pod interfaces are `lxc` plus at most this many characters of the pod name.
const LXC_SUFFIX: usize = MAX_IFNAME - 3;

#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Lowercase letters and digits only, so `{prefix}-` never matches another lab's names.
    pub prefix: String,
    /// The client's addresses on the segment; the first is its primary.
    pub client_addrs: Vec<Ipv4Addr>,
    pub nodes: Vec<NodeSpec>,
    pub pools: Vec<PoolSpec>,
    pub l2_policies: Vec<L2PolicySpec>,
    pub services: Vec<ServiceSpec>,
    /// When set, teardown runs `AGENT teardown --bpffs DIR` in every node first.
    pub teardown_agent: Option<PathBuf>,
    /// The Node objects list their uplink address as `InternalIP`, as `kubectl get -o yaml`
    /// shows them: agents on several nodes then form a cluster (failover). Off, every
    /// agent is alone and announces as the score elects, whatever runs elsewhere.
    pub internal_ips: bool,
    /// A client on another network, behind a router on the segment.
    pub routed_client: Option<RoutedClientSpec>,
}

/// A client that reaches the segment through two routers, the way a client on the internet
/// reaches a data centre: `{p}-far` (the client, [`FAR_CLIENT`]) - `{p}-farrt` (its
/// router) - a transit link of `transit_mtu` bytes - `{p}-router` ([`ROUTER_ADDR`] on the
/// segment). The client's own link and the segment have 1500 bytes, so the client's TCP
/// announces an MSS of 1460 and only path-MTU discovery (a "fragmentation needed" from
/// `{p}-router`) can tell a server that its packets are too big for the transit link. Every
/// node routes [`FAR_NET`] via the router.
#[derive(Clone, Copy, Debug)]
pub struct RoutedClientSpec {
    pub transit_mtu: u32,
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// Address of the node's uplink `ens18` on the segment.
    pub addr: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub pods: Vec<PodSpec>,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub addr: Ipv4Addr,
    /// The pod's readiness: the endpoint's `serving` condition in the EndpointSlices, and
    /// its `ready` one unless it terminates. The pod runs either way.
    pub ready: bool,
    /// The endpoint's `terminating` condition (a pod being deleted, during a rollout).
    pub terminating: bool,
}

#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub name: String,
    pub cidrs: Vec<String>,
    pub allow_first_last_ips: bool,
    pub service_selector: LabelSelector,
}

#[derive(Clone, Debug)]
pub struct L2PolicySpec {
    pub name: String,
    /// Interface name regexes.
    pub interfaces: Vec<String>,
    pub load_balancer_ips: bool,
    pub node_selector: Option<LabelSelector>,
}

#[derive(Clone, Debug, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Requested through the `lbipam.cilium.io/ips` annotation; `None` lets IPAM choose.
    pub requested_ip: Option<Ipv4Addr>,
    pub external_traffic_policy: TrafficPolicy,
    pub session_affinity: SessionAffinity,
    pub ports: Vec<PortSpec>,
    pub selector: BTreeMap<String, String>,
    /// Pods listed in the service's EndpointSlice.
    pub backends: Vec<String>,
    /// `spec.loadBalancerSourceRanges` (empty: left out, every client admitted).
    pub source_ranges: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    Local,
    Cluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    ClientIp { timeout_seconds: u32 },
}

#[derive(Clone, Debug)]
pub struct PortSpec {
    pub name: String,
    pub port: u16,
    /// The backend port, also the EndpointSlice's port of the same name.
    pub target_port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl LabSpec {
    /// The reference cluster: control plane cp1 (.110) without pods, workers w1 (.111) with
    /// envoy-w1a/b and w2 (.112) with envoy-w2a, pool `first-pool`, policy `l2-policy`, and the
    /// internal (.49) and external (.50) gateway services (Local, ClientIP for 10800 s).
    pub fn reference(prefix: &str) -> Self {
        let pods = ["envoy-w1a", "envoy-w1b", "envoy-w2a"];
        Self {
            prefix: prefix.to_owned(),
            client_addrs: vec![CLIENT],
            nodes: vec![
                NodeSpec::control_plane("cp1", CP1_ADDR),
                NodeSpec::worker("w1", W1_ADDR)
                    .with_pod(PodSpec::new(pods[0], ENVOY_W1A))
                    .with_pod(PodSpec::new(pods[1], ENVOY_W1B)),
                NodeSpec::worker("w2", W2_ADDR).with_pod(PodSpec::new(pods[2], ENVOY_W2A)),
            ],
            pools: vec![PoolSpec {
                name: "first-pool".into(),
                cidrs: vec![POOL_CIDR.into()],
                allow_first_last_ips: false,
                service_selector: LabelSelector::default(),
            }],
            l2_policies: vec![L2PolicySpec {
                name: "l2-policy".into(),
                interfaces: vec!["^e.*".into()],
                load_balancer_ips: true,
                node_selector: Some(LabelSelector {
                    match_labels: BTreeMap::new(),
                    match_expressions: vec![Requirement {
                        key: CONTROL_PLANE_LABEL.into(),
                        operator: Operator::DoesNotExist,
                        values: Vec::new(),
                    }],
                }),
            }],
            services: vec![
                ServiceSpec::gateway("gateway-internal", VIP_INTERNAL, &pods),
                ServiceSpec::gateway("gateway-external", VIP_EXTERNAL, &pods),
            ],
            teardown_agent: None,
            internal_ips: false,
            routed_client: None,
        }
    }

    /// The failover lab: three workers w1, w2, w3 (no control plane), each running one pod
    /// of the internal gateway's service (.49, Local), whose Node objects list their
    /// InternalIP so the agents form a cluster.
    pub fn failover(prefix: &str) -> Self {
        let pods = ["envoy-w1a", "envoy-w2a", "envoy-w3a"];
        let mut spec = Self::reference(prefix);
        spec.nodes = vec![
            NodeSpec::worker("w1", W1_ADDR).with_pod(PodSpec::new(pods[0], ENVOY_W1A)),
            NodeSpec::worker("w2", W2_ADDR).with_pod(PodSpec::new(pods[1], ENVOY_W2A)),
            NodeSpec::worker("w3", W3_ADDR).with_pod(PodSpec::new(pods[2], ENVOY_W3A)),
        ];
        spec.l2_policies[0].node_selector = None;
        spec.services = vec![ServiceSpec::gateway(
            "gateway-internal",
            VIP_INTERNAL,
            &pods,
        )];
        spec.internal_ips = true;
        spec
    }

    /// Adds a client behind a router, whose path to the segment crosses a link of
    /// `transit_mtu` bytes (see [`RoutedClientSpec`]).
    pub fn with_routed_client(mut self, transit_mtu: u32) -> Self {
        self.routed_client = Some(RoutedClientSpec { transit_mtu });
        self
    }

    /// Adds a secondary client address, so tests can connect from several client IPs.
    pub fn with_client_addr(mut self, addr: Ipv4Addr) -> Self {
        self.client_addrs.push(addr);
        self
    }

    pub fn with_teardown_agent(mut self, agent: impl Into<PathBuf>) -> Self {
        self.teardown_agent = Some(agent.into());
        self
    }

    /// # Panics
    /// When no node is called `name` (a bug in the test).
    pub fn node_mut(&mut self, name: &str) -> &mut NodeSpec {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab spec"))
    }

    /// # Panics
    /// When no pod is called `name` (a bug in the test).
    pub fn pod_mut(&mut self, name: &str) -> &mut PodSpec {
        self.nodes
            .iter_mut()
            .flat_map(|n| n.pods.iter_mut())
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the lab spec"))
    }

    /// # Panics
    /// When no service is called `name` (a bug in the test).
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceSpec {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in the lab spec"))
    }

    /// The node a pod runs on, with the pod.
    pub fn find_pod(&self, name: &str) -> Option<(&NodeSpec, &PodSpec)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
            .find(|(_, p)| p.name == name)
    }

    /// The client's MAC, derived like the nodes' from its primary address.
    pub fn client_mac(&self) -> String {
        segment_mac(self.client_addrs.first().copied().unwrap_or(SEGMENT))
    }

    /// Checks what would otherwise fail half-way through building the lab.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.prefix.is_empty()
                && self.prefix.len() <= MAX_PREFIX
                && self.prefix.starts_with(|c: char| c.is_ascii_lowercase())
                && self
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "lab prefix {:?} must be 1..={MAX_PREFIX} lowercase letters or digits, starting with a letter",
            self.prefix
        );
        ensure!(!self.client_addrs.is_empty(), "the client needs an address");

        // Namespace names are `{prefix}-{role}`: roles must not collide.
        let mut roles = BTreeSet::from(["seg", "client", "router", "farrt", "far"]);
        let mut segment_addrs = BTreeSet::new();
        if self.routed_client.is_some() {
            segment_addrs.insert(ROUTER_ADDR);
        }
        let mut pod_addrs = BTreeSet::new();
        for &addr in &self.client_addrs {
            ensure_on_segment("client", addr)?;
            ensure!(segment_addrs.insert(addr), "address {addr} is used twice");
        }
        for node in &self.nodes {
            ensure!(
                !node.name.is_empty()
                    && node.name.len() <= MAX_NODE_NAME
                    && node
                        .name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "node name {:?} must be 1..={MAX_NODE_NAME} lowercase letters or digits",
                node.name
            );
            ensure!(roles.insert(&node.name), "name {} is used twice", node.name);
            ensure_on_segment(&node.name, node.addr)?;
            ensure!(
                segment_addrs.insert(node.addr),
                "address {} is used twice",
                node.addr
            );
            let mut host_ifaces = BTreeSet::new();
            for pod in &node.pods {
                ensure!(
                    !pod.name.is_empty()
                        && pod
                            .name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "pod name {:?} must be lowercase letters, digits or '-'",
                    pod.name
                );
                ensure!(roles.insert(&pod.name), "name {} is used twice", pod.name);
                ensure!(
                    !on_segment(pod.addr) && pod.addr != pod.gateway() && pod.addr.octets()[3] != 0,
                    "pod {} address {} must be off the segment and not its gateway {}",
                    pod.name,
                    pod.addr,
                    pod.gateway()
                );
                ensure!(
                    pod_addrs.insert(pod.addr),
                    "address {} is used twice",
                    pod.addr
                );
                ensure!(
                    host_ifaces.insert(pod.host_iface()),
                    "pods on {} share the interface name {}",
                    node.name,
                    pod.host_iface()
                );
            }
        }
        for service in &self.services {
            for backend in &service.backends {
                if self.find_pod(backend).is_none() {
                    bail!("service {} lists unknown pod {backend}", service.name);
                }
            }
        }
        Ok(())
    }
}

impl NodeSpec {
    pub fn worker(name: &str, addr: Ipv4Addr) -> Self {
        Self {
            name: name.to_owned(),
            addr,
            labels: BTreeMap::from([(HOSTNAME_LABEL.to_owned(), name.to_owned())]),
            pods: Vec::new(),
        }
    }

    pub fn control_plane(name: &str, addr: Ipv4Addr) -> Self {
        let mut node = Self::worker(name, addr);
        node.labels
            .insert(CONTROL_PLANE_LABEL.to_owned(), String::new());
        node
    }

    pub fn with_pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }

    /// The uplink's MAC: `02:00:00:00:00:NN` with NN the address's last octet, so tests can
    /// tell from an ARP reply which node answered.
    pub fn mac(&self) -> String {
        segment_mac(self.addr)
    }
}

impl PodSpec {
    pub fn new(name: &str, addr: Ipv4Addr) -> Self {
        Self {
            name: name.to_owned(),
            addr,
            ready: true,
            terminating: false,
        }
    }

    /// The node-side address the pod routes through: `.1` of the pod's /24.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.addr.octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The node-side interface name: `lxc` plus the pod name's last letters and digits.
    /// Like Cilium's, it does not match the L2 policy's `^e.*`.
    pub fn host_iface(&self) -> String {
        let tail: Vec<char> = self
            .name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let tail: String = tail[tail.len().saturating_sub(LXC_SUFFIX)..]
            .iter()
            .collect();
        format!("lxc{tail}")
    }
}

impl ServiceSpec {
    /// A gateway's service as Cilium's gateway controller creates it: `cilium-gateway-{gateway}`
    /// in namespace `gateway`, LoadBalancer with `externalTrafficPolicy: Local`, ClientIP
    /// affinity for 10800 s, ports http 80 -> 8080 and https 443 -> 8443.
    pub fn gateway(gateway: &str, vip: Ipv4Addr, backends: &[&str]) -> Self {
        let owning = BTreeMap::from([(OWNING_GATEWAY_LABEL.to_owned(), gateway.to_owned())]);
        Self {
            name: format!("cilium-gateway-{gateway}"),
            namespace: "gateway".into(),
            labels: owning.clone(),
            requested_ip: Some(vip),
            external_traffic_policy: TrafficPolicy::Local,
            session_affinity: SessionAffinity::ClientIp {
                timeout_seconds: 10800,
            },
            ports: vec![
                PortSpec::tcp("http", 80, HTTP_PORT),
                PortSpec::tcp("https", 443, HTTPS_PORT),
            ],
            selector: owning,
            backends: backends.iter().map(|&b| b.to_owned()).collect(),
            source_ranges: Vec::new(),
        }
    }
}

impl PortSpec {
    pub fn tcp(name: &str, port: u16, target_port: u16) -> Self {
        Self {
            name: name.to_owned(),
            port,
            target_port,
            protocol: Protocol::Tcp,
        }
    }

    pub fn udp(name: &str, port: u16, target_port: u16) -> Self {
        Self {
            name: name.to_owned(),
            port,
            target_port,
            protocol: Protocol::Udp,
        }
    }
}

fn segment_mac(addr: Ipv4Addr) -> String {
    format!("02:00:00:00:00:{:02x}", addr.octets()[3])
}

fn on_segment(addr: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SEGMENT_PREFIX_LEN);
    u32::from(addr) & mask == u32::from(SEGMENT)
}

fn ensure_on_segment(who: &str, addr: Ipv4Addr) -> Result<()> {
    let last = addr.octets()[3];
    ensure!(
        on_segment(addr) && last != 0 && last != 255,
        "{who}'s address {addr} must be a host address in {SEGMENT}/{SEGMENT_PREFIX_LEN}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_spec_is_valid() {
        LabSpec::reference("gwt").validate().unwrap();
    }

    #[test]
    fn failover_spec_is_valid() {
        let spec = LabSpec::failover("gwt");
        spec.validate().unwrap();
        assert_eq!(spec.nodes.len(), 3);
        assert!(spec.nodes.iter().all(|n| n.pods.len() == 1));
        assert_eq!(spec.services[0].backends.len(), 3);
    }

    #[test]
    fn node_macs_follow_the_last_octet() {
        let spec = LabSpec::reference("gwt");
        let macs: Vec<String> = spec.nodes.iter().map(NodeSpec::mac).collect();
        assert_eq!(
            macs,
            [
                "02:00:00:00:00:6e",
                "02:00:00:00:00:6f",
                "02:00:00:00:00:70"
            ]
        );
        assert_eq!(spec.client_mac(), "02:00:00:00:00:0a");
    }

    #[test]
    fn pod_interfaces_never_match_the_l2_policy() {
        let spec = LabSpec::reference("gwt");
        let names: Vec<String> = spec
            .nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(PodSpec::host_iface))
            .collect();
        assert_eq!(names, ["lxcenvoyw1a", "lxcenvoyw1b", "lxcenvoyw2a"]);
        let long = PodSpec::new("cilium-envoy-abcdefghij", SPARE_POD_W1);
        assert_eq!(long.host_iface(), "lxcoyabcdefghij");
        assert!(long.host_iface().len() <= MAX_IFNAME);
    }

    #[test]
    fn invalid_specs_are_refused_with_the_reason() {
        type Breakage = fn(&mut LabSpec);
        let cases: Vec<(&str, Breakage)> = vec![
            ("prefix", |s| s.prefix = "gw-lab".into()),
            ("used twice", |s| s.nodes[1].addr = s.nodes[2].addr),
            ("must be a host address", |s| s.client_addrs[0] = ENVOY_W1A),
            ("used twice", |s| s.nodes[1].name = "seg".into()),
            ("unknown pod", |s| {
                s.services[0].backends.push("envoy-x".into())
            }),
            ("gateway", |s| {
                s.nodes[1].pods[0].addr = s.nodes[1].pods[0].gateway()
            }),
            ("node name", |s| s.nodes[0].name = "a-very-long-node".into()),
        ];
        for (expected, break_it) in cases {
            let mut spec = LabSpec::reference("gwt");
            break_it(&mut spec);
            let err = spec.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
