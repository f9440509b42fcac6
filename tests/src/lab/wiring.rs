//! The lab's links and addresses. Every veth is created with its far end placed straight
//! into its target namespace, so no link ever exists in the machine's own namespace.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};

use super::spec::{
    FAR_CLIENT, FAR_GATEWAY, FAR_NET, NodeSpec, PodSpec, ROUTER_ADDR, RoutedClientSpec,
    SEGMENT_PREFIX_LEN, TRANSIT_FAR, TRANSIT_PREFIX_LEN, TRANSIT_ROUTER,
};
use crate::netns::Netns;

/// The bridge that is the flat L2 segment, in the segment namespace.
pub const BRIDGE: &str = "br0";
/// The client's interface; deliberately not matching the L2 policy's `^e.*`.
pub const CLIENT_IFACE: &str = "cl0";
/// Every node's uplink, as on the reference cluster's nodes.
pub const NODE_UPLINK: &str = "ens18";
/// The pod end of a pod's veth (the agent never runs in pods).
pub const POD_IFACE: &str = "eth0";

/// No IPv6 anywhere: the segment then carries only the tests' own traffic (no router
/// solicitations or MLD reports), which keeps captures and datapath counters exact.
const NO_IPV6: [(&str, &str); 2] = [
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// A node forwards between its uplink and its pods; replies from pods leave by the uplink
/// although the request came in for a VIP, so reverse-path filtering must be off. New
/// namespaces copy these from the machine's own, so they are set explicitly, before any
/// interface exists, for every interface to inherit them.
const NODE_SYSCTLS: [(&str, &str); 3] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// With `br_netfilter` loaded (as on any Docker or Kubernetes host), a bridge passes every
/// frame through iptables, which no switch does: a path that crosses the segment twice (a
/// flow SNATed to another node) would pay it twice.
const SWITCH_NOT_FIREWALL: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-iptables", "0"),
    ("net.bridge.bridge-nf-call-ip6tables", "0"),
    ("net.bridge.bridge-nf-call-arptables", "0"),
];

/// The segment: a namespace holding only the bridge, which forwards like a switch.
pub(crate) fn segment(name: &str) -> Result<Netns> {
    let seg = Netns::add(name, false)?;
    seg.sysctl(&NO_IPV6)?;
    if Path::new("/proc/sys/net/bridge").exists() {
        seg.sysctl(&SWITCH_NOT_FIREWALL)?;
    }
    seg.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    seg.ip(&["link", "set", BRIDGE, "up"])?;
    Ok(seg)
}

/// The client: one interface on the segment with its addresses, the first one primary.
pub(crate) fn client(seg: &Netns, name: &str, addrs: &[Ipv4Addr], mac: &str) -> Result<Netns> {
    let client = Netns::add(name, false)?;
    client.sysctl(&NO_IPV6)?;
    plug(seg, "p-client", &client, CLIENT_IFACE, mac, addrs)?;
    Ok(client)
}

/// The bridge port of node `name`'s uplink, in the segment's namespace.
pub(crate) fn node_port(name: &str) -> String {
    format!("p-{name}")
}

/// A node: its uplink on the segment, forwarding on, reverse-path filtering off.
pub(crate) fn node(seg: &Netns, name: &str, spec: &NodeSpec) -> Result<Netns> {
    let node = Netns::add(name, false)?;
    node.sysctl(&[NO_IPV6.as_slice(), NODE_SYSCTLS.as_slice()].concat())?;
    let port = node_port(&spec.name);
    plug(seg, &port, &node, NODE_UPLINK, &spec.mac(), &[spec.addr])
        .with_context(|| format!("wiring node {}", spec.name))?;
    Ok(node)
}

/// A pod behind `node`: a veth `lxc…` on the node, `eth0` in the pod, the pod's /32 routed
/// on the node, and the pod's default route via the node-side gateway address.
pub(crate) fn pod(node: &Netns, name: &str, spec: &PodSpec) -> Result<Netns> {
    let pod = Netns::add(name, false)?;
    pod.sysctl(&NO_IPV6)?;
    link_pod(node, &pod, spec).with_context(|| format!("wiring pod {}", spec.name))?;
    Ok(pod)
}

fn link_pod(node: &Netns, pod: &Netns, spec: &PodSpec) -> Result<()> {
    let host = spec.host_iface();
    let gateway = spec.gateway().to_string();
    let addr = spec.addr.to_string();
    node.ip(&[
        "link",
        "add",
        &host,
        "type",
        "veth",
        "peer",
        "name",
        POD_IFACE,
        "netns",
        pod.name(),
    ])?;
    node.ip(&["link", "set", &host, "up"])?;
    // Every pod link of a node carries the same gateway /32, as one gateway per node.
    node.ip(&["addr", "add", &format!("{gateway}/32"), "dev", &host])?;
    node.ip(&["route", "add", &format!("{addr}/32"), "dev", &host])?;
    pod.ip(&["link", "set", POD_IFACE, "up"])?;
    pod.ip(&["addr", "add", &format!("{addr}/32"), "dev", POD_IFACE])?;
    pod.ip(&["route", "add", &gateway, "dev", POD_IFACE, "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", &gateway, "dev", POD_IFACE])?;
    Ok(())
}

/// The pod networks between the nodes, as a CNI in direct-routing mode provides them: every
/// node routes each other node's pod /24s via that node's address (flows SNATed to a
/// backend on another node take these routes).
pub(crate) fn pod_routes(nodes: &[(&Netns, &NodeSpec)]) -> Result<()> {
    for (ns, node) in nodes {
        for (_, other) in nodes.iter().filter(|(_, o)| o.name != node.name) {
            let via = other.addr.to_string();
            let mut prefixes: Vec<String> = other
                .pods
                .iter()
                .map(|p| {
                    let [a, b, c, _] = p.addr.octets();
                    format!("{a}.{b}.{c}.0/24")
                })
                .collect();
            prefixes.sort();
            prefixes.dedup();
            for prefix in prefixes {
                ns.ip(&["route", "add", &prefix, "via", &via, "dev", NODE_UPLINK])
                    .with_context(|| {
                        format!("routing {prefix} via {} on {}", other.name, node.name)
                    })?;
            }
        }
    }
    Ok(())
}

/// The MAC of the router's interface on the segment.
const ROUTER_MAC: &str = "02:00:00:00:00:01";
/// The far client's interface.
pub const FAR_IFACE: &str = "far0";

/// Routers forward, and answer what they cannot forward with ICMP errors.
const ROUTER_SYSCTLS: [(&str, &str); 3] = NODE_SYSCTLS;

/// The namespaces of a routed client: the router on the segment, the far router, the far
/// client.
pub(crate) struct RoutedClient {
    pub router: Netns,
    pub far_router: Netns,
    pub client: Netns,
}

/// Builds the routed client of `spec` (see [`RoutedClientSpec`]): namespaces named by
/// `name(role)`.
pub(crate) fn routed_client(
    seg: &Netns,
    name: impl Fn(&str) -> String,
    spec: &RoutedClientSpec,
) -> Result<RoutedClient> {
    let sysctls = [NO_IPV6.as_slice(), ROUTER_SYSCTLS.as_slice()].concat();
    let router = Netns::add(&name("router"), false)?;
    router.sysctl(&sysctls)?;
    plug(
        seg,
        "p-router",
        &router,
        "ens18",
        ROUTER_MAC,
        &[ROUTER_ADDR],
    )
    .context("wiring the router")?;
    let far_router = Netns::add(&name("farrt"), false)?;
    far_router.sysctl(&sysctls)?;
    let client = Netns::add(&name("far"), false)?;
    client.sysctl(&NO_IPV6)?;

    let mtu = spec.transit_mtu.to_string();
    router.ip(&[
        "link",
        "add",
        "transit",
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "transit",
        "mtu",
        &mtu,
        "netns",
        far_router.name(),
    ])?;
    let transit = |ns: &Netns, addr: std::net::Ipv4Addr| -> Result<()> {
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{TRANSIT_PREFIX_LEN}"),
            "dev",
            "transit",
        ])?;
        ns.ip(&["link", "set", "transit", "up"])?;
        Ok(())
    };
    transit(&router, TRANSIT_ROUTER)?;
    transit(&far_router, TRANSIT_FAR)?;
    router.ip(&["route", "add", FAR_NET, "via", &TRANSIT_FAR.to_string()])?;
    far_router.ip(&[
        "route",
        "add",
        "default",
        "via",
        &TRANSIT_ROUTER.to_string(),
    ])?;

    far_router.ip(&[
        "link",
        "add",
        "lan",
        "type",
        "veth",
        "peer",
        "name",
        FAR_IFACE,
        "netns",
        client.name(),
    ])?;
    far_router.ip(&["addr", "add", &format!("{FAR_GATEWAY}/24"), "dev", "lan"])?;
    far_router.ip(&["link", "set", "lan", "up"])?;
    client.ip(&["addr", "add", &format!("{FAR_CLIENT}/24"), "dev", FAR_IFACE])?;
    client.ip(&["link", "set", FAR_IFACE, "up"])?;
    client.ip(&["route", "add", "default", "via", &FAR_GATEWAY.to_string()])?;
    Ok(RoutedClient {
        router,
        far_router,
        client,
    })
}

/// Every node routes the far client's network via the router.
pub(crate) fn far_routes(nodes: &[&Netns]) -> Result<()> {
    for ns in nodes {
        ns.ip(&[
            "route",
            "add",
            FAR_NET,
            "via",
            &ROUTER_ADDR.to_string(),
            "dev",
            NODE_UPLINK,
        ])?;
    }
    Ok(())
}

/// Connects `iface` in `ns` to the segment through a veth whose other end, `port`, is a
/// bridge port; sets the MAC and the /24 addresses of `iface`.
fn plug(
    seg: &Netns,
    port: &str,
    ns: &Netns,
    iface: &str,
    mac: &str,
    addrs: &[Ipv4Addr],
) -> Result<()> {
    seg.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        iface,
        "address",
        mac,
        "netns",
        ns.name(),
    ])?;
    seg.ip(&["link", "set", port, "master", BRIDGE, "up"])?;
    for addr in addrs {
        ns.ip(&[
            "addr",
            "add",
            &format!("{addr}/{SEGMENT_PREFIX_LEN}"),
            "dev",
            iface,
        ])?;
    }
    ns.ip(&["link", "set", iface, "up"])?;
    Ok(())
}
