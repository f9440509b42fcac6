//! The desired state of THIS node, computed from the validated objects: VIP allocation
//! (IPAM), selectors, node-local backends and which VIPs to announce on which interface.
//! Pure functions only: no kernel, no clock, no I/O.

use std::net::Ipv4Addr;

use crate::config::ObjectRef;

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TrafficPolicy {
    Local,
    Cluster,
}

/// One backend of a frontend; its protocol is the frontend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BackendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// One service port on its VIP, with the backends this node sends it to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Frontend {
    pub service: ObjectRef,
    /// `spec.ports[].name` (may be empty).
    pub port_name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// `Some(seconds)` when `sessionAffinity: ClientIP`.
    pub affinity_timeout_secs: Option<u32>,
    /// Ready endpoints on this node, sorted and deduplicated. May be empty: the VIP is then
    /// still programmed so stray traffic is dropped and counted instead of forwarded.
    pub backends: Vec<BackendAddr>,
}

/// This node answers ARP for `vip` on `interface`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Announcement {
    pub interface: String,
    pub vip: Ipv4Addr,
    pub service: ObjectRef,
    /// The CiliumL2AnnouncementPolicy that selected the service.
    pub policy: String,
}

/// The VIP of every LoadBalancer service, and who announces it (cluster-wide view).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Allocation {
    pub service: ObjectRef,
    pub vip: Ipv4Addr,
    /// The CiliumLoadBalancerIPPool the VIP belongs to.
    pub pool: String,
    /// Requested through `spec.loadBalancerIP` or `lbipam.cilium.io/ips`.
    pub requested: bool,
    pub traffic_policy: TrafficPolicy,
    /// The node elected to answer ARP for this VIP, if any node is eligible.
    pub announcer: Option<String>,
}

/// Everything the datapath needs for this node, plus what `check` and `status` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DesiredState {
    /// Sorted by (vip, port, protocol).
    pub frontends: Vec<Frontend>,
    /// Sorted by (interface, vip).
    pub announcements: Vec<Announcement>,
    /// Sorted by service (namespace, name).
    pub allocations: Vec<Allocation>,
    /// Non-fatal findings, each naming the object (e.g. Cluster services not programmed).
    pub warnings: Vec<String>,
}
