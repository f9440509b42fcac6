//! Which node answers ARP for a VIP: exactly one, and every node agrees without talking to
//! the others (Cilium takes a Kubernetes lease; we have only the file).
//!
//! The eligible nodes are the Node objects that the announcing policy's nodeSelector
//! selects, that are Ready and that run at least one ready endpoint of the service (with
//! externalTrafficPolicy Local a node without one would drop the traffic it attracts). The
//! announcer is the eligible node with the highest [`announcer_score`]; on a tie the name
//! that sorts first. Hashing the VIP with the name (rendezvous hashing) spreads VIPs over
//! the nodes and moves a VIP only when its own announcer leaves or a better-scoring node
//! becomes eligible.

use std::net::Ipv4Addr;

use crate::config::{Config, Diagnostics, L2Policy, Node, Service};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit. Written out because std's hasher may change between Rust versions, and
/// every node, whatever version it runs, must compute the same announcer.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a 64 of the VIP's four octets followed by the node name's bytes.
pub fn announcer_score(vip: Ipv4Addr, node_name: &str) -> u64 {
    fnv1a64(vip.octets().into_iter().chain(node_name.bytes()))
}

/// The node elected to announce `vip` of `service` under `policy`, or `None` (with a
/// warning) when no node is eligible.
pub(crate) fn announcer<'c>(
    config: &'c Config,
    service: &Service,
    vip: Ipv4Addr,
    policy: &L2Policy,
    diagnostics: &mut Diagnostics,
) -> Option<&'c Node> {
    let elected = config
        .nodes
        .iter()
        .filter(|node| node.ready && policy.node_selector.matches(&node.labels))
        .filter(|node| has_ready_endpoint(config, service, &node.name))
        .max_by(|a, b| {
            announcer_score(vip, &a.name)
                .cmp(&announcer_score(vip, &b.name))
                .then_with(|| b.name.cmp(&a.name))
        });
    if elected.is_none() {
        diagnostics.warn(
            Some(&service.object),
            "",
            format!(
                "no node can announce VIP {vip}: none is Ready, selected by the nodeSelector \
                 of {} and running a ready endpoint of the service",
                policy.object()
            ),
        );
    }
    elected
}

fn has_ready_endpoint(config: &Config, service: &Service, node_name: &str) -> bool {
    super::frontends::slices_of(config, service)
        .flat_map(|slice| &slice.endpoints)
        .any(|endpoint| {
            endpoint.ready
                && !endpoint.addresses.is_empty()
                && endpoint.node_name.as_deref() == Some(node_name)
        })
}
