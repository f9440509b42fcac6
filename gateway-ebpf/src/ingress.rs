//! TC ingress: ARP for announced VIPs, client -> VIP traffic balanced to a backend, the
//! replies of flows SNATed to a backend on another node, and ICMP to VIPs and about SNATed
//! flows (`icmp`).

use aya_ebpf::bindings::TC_ACT_OK;
use gateway_common::{
    BACKEND_F_REMOTE, BACKEND_F_REPLY_CT, CT_F_DENIED, CT_F_SNAT, Counter, CtEntry, CtKey, Ipv4,
    VipKey, proto, vip_filter_bit,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    PASS, arp, conntrack, drop, icmp, lb, log,
    maps::{CONFIG, CONNTRACK, CT_REPLY, VIP_FILTER, VIPS},
    nat, now_ns,
    packet::{self, ETH_HLEN, EtherType, Flow, Invalid, Packet},
    route, snat,
    stats::{Direction, account, count, deny},
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
    // All the node's own traffic pays: two inlined array lookups.
    if !may_be_vip(daddr) {
        // An error about a flow SNATed to a backend on another node may come from any router
        // on the way, not only from the backend.
        if ip.proto == proto::ICMP {
            return icmp::to_node(pkt);
        }
        if !snat::may_be_remote_backend(ip.src_addr) {
            return PASS;
        }
        let ip = packet::ipv4(ip, pkt.len());
        return snat::reply(pkt, ip);
    }
    let flow = match packet::ipv4(ip, pkt.len()).and_then(|ip| packet::flow(pkt, ip)) {
        Ok(flow) => flow,
        Err(Invalid::Icmp) if is_vip(daddr) => return icmp::to_vip(pkt),
        // An address sharing a VIP's filter bit may be this node's SNAT address.
        Err(Invalid::Icmp) => return icmp::to_node(pkt),
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
            // A new connection reusing the tuple (after a close, a removed backend or a
            // denial) is balanced afresh below; everything else stays with the flow.
            let reused = flow.is_syn() && (entry.is_closed() || entry.flags & CT_F_DENIED != 0);
            match backend {
                _ if reused => {}
                // The client lost its place in the service's source ranges.
                _ if entry.flags & CT_F_DENIED != 0 => {
                    deny(entry.service_id);
                    return drop(pkt, Counter::DropSourceRange);
                }
                Some(_) => {
                    conntrack::touch(entry, now, conntrack::client_flags(&flow));
                    return forward(pkt, &flow, entry, now);
                }
                // The flow's backend is gone: never move a connection mid-stream.
                None if !flow.is_syn() => return drop(pkt, Counter::DropBackendGone),
                None => {}
            }
        }
    }

    let selection = match lb::select(&flow, now) {
        Ok(s) => s,
        // No such service and no such VIP: an address that only shares the filter slot.
        Err(Counter::DropUnknownPort) if !is_vip(flow.daddr) => return PASS,
        Err(reason) => return drop(pkt, reason),
    };
    let mut entry = CtEntry {
        last_seen_ns: now,
        backend_id: selection.backend_id,
        service_id: selection.service_id,
        backend_addr: selection.backend.addr,
        backend_port: selection.backend.port,
        flags: conntrack::client_flags(&flow),
        snat_addr: [0; 4],
        snat_port: 0,
        _pad: 0,
    };
    let backend = (selection.backend.addr, selection.backend.port);
    if selection.backend.flags & BACKEND_F_REMOTE != 0 {
        let Some(addr) = snat::address(pkt.ifindex()) else {
            return drop(pkt, Counter::DropNoSnatAddr);
        };
        // A new connection on a SNATed flow's tuple takes the flow's port again if it goes
        // to the same backend: the backend then sees the tuple reused as the client reuses
        // it.
        // 0 for none (never in `--snat-ports`): an `Option` here leaves LLVM spilling an
        // undefined register, which the verifier refuses.
        let again = match existing {
            // SAFETY: as above; the entry is only read, and has not been written since.
            Some(e) => unsafe {
                let e = *e;
                let same = e.flags & CT_F_SNAT != 0 && (e.backend_addr, e.backend_port) == backend;
                if same { e.snat_port } else { 0 }
            },
            None => 0,
        };
        let Some(claim) = snat::claim(&key, backend, addr, again, (config, now)) else {
            return drop(pkt, Counter::DropSnatExhausted);
        };
        entry.flags |= CT_F_SNAT;
        entry.snat_addr = addr;
        entry.snat_port = claim.port;
        count(Counter::SnatCreated);
        track(key, &entry, replacing);
        // Only now that its entry is written may another CPU judge the port's holder.
        claim.commit();
    } else {
        if selection.backend.flags & BACKEND_F_REPLY_CT != 0 {
            // More frontends share this backend than `gw_revnat` lists: the reply finds its
            // frontend here. A tuple is one connection at the backend, so a newer flow on it
            // takes the entry over.
            let reply = conntrack::reply_key_of(backend, (flow.saddr, flow.sport), flow.proto);
            let _ = CT_REPLY.insert(reply, key, 0);
        }
        track(key, &entry, replacing);
    }
    log::debug!(
        pkt.ctx(),
        "new flow {:i}:{} -> {:i}:{} via backend {}",
        flow.saddr,
        flow.sport,
        selection.backend.addr,
        selection.backend.port,
        selection.backend_id
    );
    forward(pkt, &flow, &entry, now)
}

/// Writes a new flow's conntrack entry (over the tuple's old one when `replacing`). If the
/// insert fails the flow still goes through; its next packet is balanced again (and lands on
/// the same backend when affinity is on).
#[inline(always)]
fn track(key: CtKey, entry: &CtEntry, replacing: bool) {
    if replacing {
        count(Counter::CtReplaced);
    }
    let _ = CONNTRACK.insert(key, *entry, 0);
    count(Counter::CtCreated);
}

/// DNAT to the flow's backend: the client's source address is left as it is and the stack
/// delivers the packet to the local backend; a SNATed flow leaves from this node's address
/// and is routed out by the datapath.
#[inline(always)]
fn forward(pkt: &mut Packet, flow: &Flow, entry: &CtEntry, now: u64) -> i32 {
    let backend = (entry.backend_addr, entry.backend_port);
    if entry.flags & CT_F_SNAT == 0 {
        if nat::rewrite(pkt, flow, None, Some(backend)).is_err() {
            return drop(pkt, Counter::DropNatFailed);
        }
        account(
            entry.service_id,
            entry.backend_id,
            pkt.len(),
            Direction::Forward,
        );
        return TC_ACT_OK;
    }
    let Some(hop) = route::next_hop(pkt, flow.proto, entry.snat_addr, entry.backend_addr, now)
    else {
        return drop(pkt, Counter::DropNoRoute);
    };
    let src = (entry.snat_addr, entry.snat_port);
    if nat::rewrite(pkt, flow, Some(src), Some(backend)).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    account(
        entry.service_id,
        entry.backend_id,
        pkt.len(),
        Direction::Forward,
    );
    route::send(pkt, hop)
}

/// Whether the address's filter bit is set (false: certainly not a VIP).
#[inline(always)]
pub fn may_be_vip(addr: Ipv4) -> bool {
    let bit = vip_filter_bit(addr);
    VIP_FILTER
        .get(bit / 64)
        .is_some_and(|&word| word & (1 << (bit % 64)) != 0)
}

#[inline(always)]
fn is_vip(addr: Ipv4) -> bool {
    VIPS.get_ptr(VipKey { addr }).is_some()
}
