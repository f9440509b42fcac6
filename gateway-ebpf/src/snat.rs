//! Source NAT for flows to a backend on another node (externalTrafficPolicy Cluster): the
//! flow leaves from this node's address on the interface it arrived on, so the backend's
//! replies come back here, where they are recognised by the port's `gw_snat_ports` slot,
//! translated back (source: the VIP, destination: the client) and sent to the client.
//!
//! The port: the one an earlier connection on the same client tuple had to that backend,
//! or the client's own when it is free (either way the backend sees the tuples the client
//! reuses as the client reuses them), else random ones in `--snat-ports`. Each port has a
//! slot per (row of SNAT address and backend, protocol) in an array (`snat::slot`); a slot
//! is free when no flow holds it, or when the flow that did is over: its conntrack entry
//! gone, expired, ended by the agent, or moved to another port or backend. A claim takes
//! the slot with a compare-and-swap first and judges the holder after, and publishes the
//! slot only once the new flow's entry is written, so two CPUs never take one port, and a
//! live flow's port is never taken. An array slot rather than a hash-map entry: a new
//! SNATed flow then costs one conntrack insert, not two (about 200 ns less), and a port
//! whose flow ended is free again at once, not when an LRU gets round to it.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use gateway_common::{
    CT_F_SNAT, Counter, CtEntry, CtKey, DatapathConfig, IfaceInfo, Ipv4, SnatPort,
    snat::{TRIES, slot},
};

use crate::{
    PASS, conntrack, drop,
    maps::{CONFIG, CONNTRACK, IFACES, REMOTE_FILTER, SNAT_PORTS},
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

/// A port taken by a new flow and not yet published: its slot reads as being claimed, so
/// other CPUs pass it over, until [`Claim::commit`]. That comes once the flow's conntrack
/// entry is written: a CPU that judged the slot's holder by its entry before the entry
/// existed would take the port of a flow that has just begun.
pub struct Claim {
    pub port: u16,
    generation: *mut u32,
    next: u32,
}

impl Claim {
    /// Publishes the claim: the slot names the flow from now on (whose entry is written, or
    /// failed to be, in which case the port is free again at once).
    #[inline(always)]
    pub fn commit(self) {
        // SAFETY: the generation of the slot `take` found in the array map, valid until the
        // program returns, and odd since: only this CPU writes it now.
        unsafe { atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(self.generation, self.next) };
    }
}

/// Claims a source port on `snat_addr` for the new flow `key` to `backend`, or `None` when
/// every port tried is held. Tried first: `again` (the port an earlier connection on the
/// same client tuple had to this backend; 0 for none), then the client's own port, then
/// random ones. The caller writes the flow's entry, then commits the claim, on every path.
#[inline(always)]
pub fn claim(
    key: &CtKey,
    backend: (Ipv4, u16),
    snat_addr: Ipv4,
    again: u16,
    (config, now): (&DatapathConfig, u64),
) -> Option<Claim> {
    let (min, max) = (config.snat_port_min, config.snat_port_max);
    if min > max {
        return None;
    }
    let span = (max - min) as u32 + 1;
    let mut port = match again {
        port if (min..=max).contains(&port) => port,
        _ if (min..=max).contains(&key.client_port) => key.client_port,
        _ => random_port(min, span),
    };
    for _ in 0..TRIES {
        let index = slot(snat_addr, backend, key.proto, port);
        if let Some((generation, next)) = take(index, key, (config, now)) {
            return Some(Claim {
                port,
                generation,
                next,
            });
        }
        port = random_port(min, span);
    }
    None
}

/// Takes slot `index` for the flow `key` unless another flow holds it: the slot names `key`
/// and stays claimed (odd) until its generation becomes the returned value.
#[inline(always)]
fn take(index: u32, key: &CtKey, (config, now): (&DatapathConfig, u64)) -> Option<(*mut u32, u32)> {
    let slot = SNAT_PORTS.get_ptr_mut(index)?;
    // SAFETY: an element of an array map, valid while the program runs; other CPUs reach it
    // too, so its generation is only changed atomically, and its fields only written by the
    // CPU that made the generation odd.
    unsafe {
        let generation = &raw mut (*slot).generation;
        let seen = core::ptr::read_volatile(generation);
        if seen & 1 != 0 {
            return None;
        }
        let (_, won) = atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            generation,
            seen,
            seen + 1,
        );
        if !won {
            return None;
        }
        // The slot is this CPU's until the generation is even again: the holder read now is
        // the one that made it `seen`, with its entry written before that.
        if seen != 0 && holds(&*slot, index, key, (config, now)) {
            atomic_xchg::<u32, { AtomicOrdering::SeqCst }>(generation, seen);
            return None;
        }
        (*slot).client_addr = key.client_addr;
        (*slot).vip = key.vip;
        (*slot).client_port = key.client_port;
        (*slot).vip_port = key.vip_port;
        // Never back to 0, which reads as never claimed.
        let next = match seen.wrapping_add(2) {
            0 => 2,
            n => n,
        };
        Some((generation, next))
    }
}

/// Whether slot `index` is still held by its flow, another than `key`: that flow is alive,
/// not ended (the agent ends a flow whose backend left by clearing its backend's address),
/// and SNATed to this very slot (a flow that moved to another backend or port, or a new
/// connection on its tuple that did, left it).
#[inline(always)]
fn holds(slot: &SnatPort, index: u32, key: &CtKey, (config, now): (&DatapathConfig, u64)) -> bool {
    let holder = slot.holder(key.proto);
    if holder == *key {
        return false;
    }
    let Some(entry) = CONNTRACK.get_ptr(holder) else {
        return false;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
    let entry: &CtEntry = unsafe { &*entry };
    entry.flags & CT_F_SNAT != 0
        && entry.backend_addr != [0; 4]
        && entry.is_alive(now, config)
        && slot_of(entry, key.proto) == index
}

/// The slot a SNATed flow's entry holds.
#[inline(always)]
fn slot_of(entry: &CtEntry, proto: u8) -> u32 {
    slot(
        entry.snat_addr,
        (entry.backend_addr, entry.backend_port),
        proto,
        entry.snat_port,
    )
}

#[inline(always)]
fn random_port(min: u16, span: u32) -> u16 {
    // SAFETY: a helper without arguments.
    min + (unsafe { bpf_get_prandom_u32() } % span) as u16
}

/// The flow holding the port a packet from `backend` to `to` (this node's address and a
/// SNAT port) is addressed to, as its slot says; the caller checks that the flow's entry
/// agrees. `None` for a port no flow was given.
#[inline(always)]
pub fn holder(backend: (Ipv4, u16), to: (Ipv4, u16), proto: u8) -> Option<CtKey> {
    let slot = SNAT_PORTS.get(slot(to.0, backend, proto, to.1))?;
    // SAFETY: an element of an array map; a claim in progress on another CPU may be writing
    // the fields, in which case the key read names no flow whose entry agrees.
    let generation = unsafe { core::ptr::read_volatile(&slot.generation) };
    (generation != 0 && generation & 1 == 0).then(|| slot.holder(proto))
}

/// A packet that is not to a VIP, from a backend on another node (its IPv4 header as
/// `packet::ipv4` judged it): the reply of a SNATed flow is translated back and sent to the
/// client; anything else is not ours.
#[inline(always)]
pub fn reply(pkt: &mut Packet, ip: Result<Ipv4Packet, Invalid>) -> i32 {
    let Ok(flow) = ip.and_then(|ip| packet::flow(pkt, ip)) else {
        return PASS;
    };
    let Some(key) = holder(
        (flow.saddr, flow.sport),
        (flow.daddr, flow.dport),
        flow.proto,
    ) else {
        return PASS;
    };
    let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
        return PASS;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
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
