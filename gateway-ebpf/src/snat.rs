//! Source NAT for flows to a backend on another node (externalTrafficPolicy Cluster): the
//! flow leaves from this node's address on the interface it arrived on, so the backend's
//! replies come back here, where they are recognised by their `gw_ct_reply` entry,
//! translated back (source: the VIP, destination: the client) and sent to the client.
//!
//! The port: the one an earlier connection on the same client tuple had to that backend,
//! or the client's own when it is free for that backend (either way the backend sees the
//! tuples the client reuses as the client reuses them), else random ones in `--snat-ports`.
//! A port is free when no `gw_ct_reply` entry holds it for that (node address, backend,
//! protocol), and is claimed by inserting one with `BPF_NOEXIST`, so two CPUs never take
//! the same. An entry is never taken over from another flow, live or not: entries of flows
//! that ended are evicted by the LRU, which takes the ones no reply refreshes first. Only
//! the flow's own entry (a new connection on the same client tuple) is reused.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use gateway_common::{CT_F_SNAT, Counter, CtKey, DatapathConfig, IfaceInfo, Ipv4, snat::TRIES};

use crate::{
    PASS, conntrack, drop,
    maps::{CONFIG, CONNTRACK, CT_REPLY, IFACES, REMOTE_FILTER},
    nat, now_ns,
    packet::{self, Invalid, Ipv4Packet, Packet},
    route,
    stats::{Direction, account, count},
};

/// Whether the address's bit is set in the filter of backends on other nodes (false:
/// certainly not one).
#[inline(always)]
pub fn may_be_remote_backend(addr: Ipv4) -> bool {
    let bit = gateway_common::vip_filter_bit(addr);
    REMOTE_FILTER
        .get(bit / 64)
        .is_some_and(|&word| word & (1 << (bit % 64)) != 0)
}

/// The address flows arriving on `ifindex` are SNATed to.
#[inline(always)]
pub fn address(ifindex: u32) -> Option<Ipv4> {
    let info: &IfaceInfo = IFACES.get(ifindex)?;
    (info.addr != [0; 4]).then_some(info.addr)
}

/// Claims a source port on `snat_addr` for the new flow `key` to `backend`, or `None` when
/// every port tried is held. Tried first: `again` (the port an earlier connection on the
/// same client tuple had to this backend), then the client's own port, then random ones.
#[inline(always)]
pub fn claim(
    key: &CtKey,
    backend: (Ipv4, u16),
    snat_addr: Ipv4,
    again: Option<u16>,
    config: &DatapathConfig,
) -> Option<u16> {
    let (min, max) = (config.snat_port_min, config.snat_port_max);
    if min > max {
        return None;
    }
    let span = (max - min) as u32 + 1;
    let mut port = match again {
        Some(port) if (min..=max).contains(&port) => port,
        _ if (min..=max).contains(&key.client_port) => key.client_port,
        _ => random_port(min, span),
    };
    for _ in 0..TRIES {
        let reply = conntrack::reply_key_of(backend, (snat_addr, port), key.proto);
        // Claimed at once: the first port is usually free, and the insert fails on a held
        // one anyway.
        if CT_REPLY.insert(reply, *key, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        let owner = CT_REPLY.get_ptr(reply);
        // SAFETY: a value found in a hash map stays valid until the program returns.
        if owner.is_some_and(|owner| unsafe { *owner } == *key) {
            // The flow's own entry: a new connection on the same client tuple.
            return Some(port);
        }
        port = random_port(min, span);
    }
    None
}

#[inline(always)]
fn random_port(min: u16, span: u32) -> u16 {
    // SAFETY: a helper without arguments.
    min + (unsafe { bpf_get_prandom_u32() } % span) as u16
}

/// A packet that is not to a VIP, from a backend on another node (its IPv4 header as
/// `packet::ipv4` judged it): the reply of a SNATed flow is translated back and sent to the
/// client; anything else is not ours.
#[inline(always)]
pub fn reply(pkt: &mut Packet, ip: Result<Ipv4Packet, Invalid>) -> i32 {
    let Ok(flow) = ip.and_then(|ip| packet::flow(pkt, ip)) else {
        return PASS;
    };
    let Some(key) = CT_REPLY.get_ptr(conntrack::reply_key(&flow)) else {
        return PASS;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
    let key = unsafe { *key };
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return PASS;
    };
    // SAFETY: as for `key`.
    let entry = unsafe { &mut *entry };
    // The flow must still be the one that claimed this port for this backend.
    if entry.flags & CT_F_SNAT == 0
        || entry.snat_addr != flow.daddr
        || entry.snat_port != flow.dport
        || entry.backend_addr != flow.saddr
        || entry.backend_port != flow.sport
    {
        return PASS;
    }
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let now = now_ns(config);
    let (vip, client) = ((key.vip, key.vip_port), (key.client_addr, key.client_port));
    let Some(hop) = route::next_hop(pkt, flow.proto, vip.0, client.0, now) else {
        return drop(pkt, Counter::DropNoRoute);
    };
    conntrack::touch(entry, now, conntrack::backend_flags(&flow));
    if nat::rewrite(pkt, &flow, Some(vip), Some(client)).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    count(Counter::RevNat);
    account(
        entry.service_id,
        entry.backend_id,
        pkt.len(),
        Direction::Reverse,
    );
    route::send(pkt, hop)
}
