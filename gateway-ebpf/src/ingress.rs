//! TC ingress: ARP for announced VIPs, and client -> VIP traffic balanced to a backend.

use aya_ebpf::bindings::TC_ACT_OK;
use gateway_common::{Counter, CtEntry, Ipv4, VipKey, vip_filter_bit};
use network_types::ip::Ipv4Hdr;

use crate::{
    PASS, arp, conntrack, drop, lb, log,
    maps::{CONFIG, CONNTRACK, VIP_FILTER, VIPS},
    nat::{self, Side},
    now_ns,
    packet::{self, ETH_HLEN, EtherType, Flow, Packet},
    stats::{Direction, account, count},
};

#[inline(always)]
pub fn run(pkt: &mut Packet) -> i32 {
    match packet::ether_type(pkt) {
        EtherType::Ipv4 => ipv4(pkt),
        EtherType::Arp => arp::respond(pkt),
        EtherType::Other => PASS,
    }
}

#[inline(always)]
fn ipv4(pkt: &mut Packet) -> i32 {
    let Some(ip) = pkt.header::<Ipv4Hdr>(ETH_HLEN) else {
        return PASS;
    };
    let daddr = ip.dst_addr;
    // All the node's own traffic pays: one inlined array lookup.
    if !may_be_vip(daddr) {
        return PASS;
    }
    let flow = match packet::ipv4(ip, pkt.len()).and_then(|ip| packet::flow(pkt, ip)) {
        Ok(flow) => flow,
        // Addressed to a VIP but not balanceable: dropped with its reason, never passed on
        // to be forwarded by the kernel.
        Err(invalid) if is_vip(daddr) => return drop(pkt, invalid.reason()),
        Err(_) => return PASS,
    };
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let now = now_ns(config);
    let key = conntrack::key(&flow);

    // Conntrack first: an established flow needs no other lookup but its backend's.
    let existing = CONNTRACK.get_ptr_mut(key);
    // A new flow below overwrites this entry rather than adding one.
    let replacing = existing.is_some();
    if let Some(entry) = existing {
        // SAFETY: a value found in a hash map stays valid until the program returns (the
        // kernel frees replaced and deleted elements after an RCU grace period).
        let entry = unsafe { &mut *entry };
        if entry.is_alive(now, config) {
            let backend = lb::active_backend(entry.backend_id)
                .filter(|b| b.addr == entry.backend_addr && b.port == entry.backend_port);
            match backend {
                Some(b) if !(flow.is_syn() && entry.is_closed()) => {
                    conntrack::touch(entry, now, conntrack::client_flags(&flow));
                    return forward(
                        pkt,
                        &flow,
                        entry.service_id,
                        entry.backend_id,
                        b.addr,
                        b.port,
                    );
                }
                // The flow's backend is gone: never move a connection mid-stream.
                None if !flow.is_syn() => return drop(pkt, Counter::DropBackendGone),
                // A new connection reusing the tuple: balance it afresh.
                _ => {}
            }
        }
    }

    let selection = match lb::select(&flow, now) {
        Ok(s) => s,
        // No such service and no such VIP: an address that only shares the filter slot.
        Err(Counter::DropUnknownPort) if !is_vip(flow.daddr) => return PASS,
        Err(reason) => return drop(pkt, reason),
    };
    let entry = CtEntry {
        last_seen_ns: now,
        backend_id: selection.backend_id,
        service_id: selection.service_id,
        backend_addr: selection.backend.addr,
        backend_port: selection.backend.port,
        flags: conntrack::client_flags(&flow),
    };
    if replacing {
        count(Counter::CtReplaced);
    }
    // If the insert fails the flow still goes through; its next packet is balanced again
    // (and lands on the same backend when affinity is on).
    let _ = CONNTRACK.insert(key, entry, 0);
    count(Counter::CtCreated);
    log::debug!(
        pkt.ctx(),
        "new flow {:i}:{} -> {:i}:{} via backend {}",
        flow.saddr,
        flow.sport,
        selection.backend.addr,
        selection.backend.port,
        selection.backend_id
    );
    forward(
        pkt,
        &flow,
        selection.service_id,
        selection.backend_id,
        selection.backend.addr,
        selection.backend.port,
    )
}

/// DNAT to the backend; the client's source address is left as it is.
#[inline(always)]
fn forward(
    pkt: &mut Packet,
    flow: &Flow,
    service_id: u32,
    backend_id: u32,
    addr: Ipv4,
    port: u16,
) -> i32 {
    if nat::rewrite(pkt, flow, Side::Destination, addr, port).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    account(service_id, backend_id, pkt.len(), Direction::Forward);
    TC_ACT_OK
}

/// Whether the address's filter bit is set (false: certainly not a VIP).
#[inline(always)]
fn may_be_vip(addr: Ipv4) -> bool {
    let bit = vip_filter_bit(addr);
    VIP_FILTER
        .get(bit / 64)
        .is_some_and(|&word| word & (1 << (bit % 64)) != 0)
}

#[inline(always)]
fn is_vip(addr: Ipv4) -> bool {
    VIPS.get_ptr(VipKey { addr }).is_some()
}
