//! TC ingress: ARP for announced VIPs, and client -> VIP traffic balanced to a backend.

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_ktime_get_ns, programs::TcContext};
use gateway_common::{Counter, CtEntry, Ipv4, VipKey};

use crate::{
    PASS, arp, conntrack, drop, lb, log,
    maps::{CONFIG, CONNTRACK, VIPS},
    nat::{self, Side},
    packet::{self, ETH_P_ARP, ETH_P_IP, Flow, Invalid},
    stats::{Direction, account, count},
};

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match packet::ether_type(ctx) {
        Some(ETH_P_IP) => ipv4(ctx),
        Some(ETH_P_ARP) => arp::respond(ctx),
        _ => PASS,
    }
}

#[inline(always)]
fn ipv4(ctx: &TcContext) -> i32 {
    let Some(ip) = packet::ipv4(ctx) else {
        return PASS;
    };
    let vip = unsafe { (*ip).dst_addr };
    // The one lookup every packet of the node's own traffic pays.
    if VIPS.get_ptr(&VipKey { addr: vip }).is_none() {
        return PASS;
    }
    // From here on the packet is addressed to a VIP: anything we cannot balance is dropped
    // with its reason, never passed on to be forwarded by the kernel.
    let flow = match packet::flow(ctx, ip) {
        Ok(flow) => flow,
        Err(Invalid::Fragment) => return drop(ctx, Counter::DropFragment),
        Err(Invalid::Protocol) => return drop(ctx, Counter::DropUnknownPort),
        Err(Invalid::Malformed) => return drop(ctx, Counter::DropMalformed),
    };
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = conntrack::key(&flow);

    if let Some(entry) = CONNTRACK.get_ptr_mut(&key) {
        let entry = unsafe { &mut *entry };
        if entry.is_alive(now, config) {
            let backend = lb::active_backend(entry.backend_id)
                .filter(|b| b.addr == entry.backend_addr && b.port == entry.backend_port);
            match backend {
                Some(b) if !(flow.is_syn() && conntrack::is_closing(entry)) => {
                    conntrack::touch(entry, now, conntrack::client_flags(&flow));
                    return forward(
                        ctx,
                        &flow,
                        entry.service_id,
                        entry.backend_id,
                        b.addr,
                        b.port,
                    );
                }
                // The flow's backend is gone: never move a connection mid-stream.
                None if !flow.is_syn() => return drop(ctx, Counter::DropBackendGone),
                // A new connection reusing the tuple: balance it afresh.
                _ => {}
            }
        }
    }

    let selection = match lb::select(&flow, now) {
        Ok(s) => s,
        Err(reason) => return drop(ctx, reason),
    };
    let entry = CtEntry {
        last_seen_ns: now,
        backend_id: selection.backend_id,
        service_id: selection.service_id,
        backend_addr: selection.backend.addr,
        backend_port: selection.backend.port,
        flags: conntrack::client_flags(&flow),
    };
    // If the insert fails the flow still goes through; its next packet is balanced again
    // (and lands on the same backend when affinity is on).
    let _ = CONNTRACK.insert(&key, &entry, 0);
    count(Counter::CtCreated);
    log::debug!(
        ctx,
        "new flow {:i}:{} -> {:i}:{} via backend {}",
        flow.saddr,
        flow.sport,
        selection.backend.addr,
        selection.backend.port,
        selection.backend_id
    );
    forward(
        ctx,
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
    ctx: &TcContext,
    flow: &Flow,
    service_id: u32,
    backend_id: u32,
    addr: Ipv4,
    port: u16,
) -> i32 {
    if nat::rewrite(ctx, flow, Side::Destination, addr, port).is_err() {
        return drop(ctx, Counter::DropNatFailed);
    }
    account(service_id, backend_id, ctx.len(), Direction::Forward);
    TC_ACT_OK as i32
}
