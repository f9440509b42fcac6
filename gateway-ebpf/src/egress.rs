//! TC egress: replies from a local backend on a tracked flow are rewritten back to VIP:port,
//! so the client sees the address it connected to. (Replies of flows SNATed to a backend on
//! another node come back in at ingress: `snat`.)

use aya_ebpf::bindings::TC_ACT_OK;
use gateway_common::{CT_F_SNAT, Counter, CtEntry, Ipv4, REVNAT_F_REPLY_CT, RevNatKey, capacity};
use network_types::ip::Ipv4Hdr;

use crate::{
    PASS, conntrack, drop,
    maps::{CONFIG, CONNTRACK, CT_REPLY, REVNAT},
    nat, now_ns,
    packet::{self, ETH_HLEN, EtherType, Flow, Packet},
    stats::{Direction, account, count},
};

#[inline(always)]
pub fn run(pkt: &mut Packet) -> i32 {
    if packet::ether_type(pkt) != EtherType::Ipv4 {
        return PASS;
    }
    let Some(ip) = pkt.header::<Ipv4Hdr>(ETH_HLEN) else {
        return PASS;
    };
    // Anything we cannot parse is not a reply we rewrote the request of: leave it alone.
    let Ok(flow) = packet::ipv4(ip, pkt.len()).and_then(|ip| packet::flow(pkt, ip)) else {
        return PASS;
    };
    let revnat_key = RevNatKey {
        addr: flow.saddr,
        port: flow.sport,
        proto: flow.proto,
        _pad: 0,
    };
    let Some(revnat) = REVNAT.get_ptr(revnat_key) else {
        return PASS;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns (the kernel
    // frees replaced and deleted elements after an RCU grace period).
    let revnat = unsafe { &*revnat };

    // A backend serving more frontends than its entry lists: the reply-side entry, if this
    // flow has one, says which frontend.
    if revnat.flags & REVNAT_F_REPLY_CT != 0
        && let Some(key) = CT_REPLY.get_ptr(conntrack::reply_key(&flow))
    {
        // SAFETY: as for `revnat`.
        let key = unsafe { *key };
        if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
            // SAFETY: as for `revnat`.
            let entry = unsafe { &mut *entry };
            if serves(entry, &flow) {
                return reverse(pkt, &flow, entry, key.vip, key.vip_port);
            }
        }
    }
    // The backend may serve several frontends; the flow's conntrack entry says which one
    // this reply belongs to.
    for i in 0..capacity::REVNAT_FRONTENDS {
        if i as u16 >= revnat.count {
            break;
        }
        let frontend = revnat.frontends[i];
        let key = conntrack::key_of(
            flow.daddr,
            frontend.vip,
            flow.dport,
            frontend.port,
            flow.proto,
        );
        let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
            continue;
        };
        // SAFETY: as for `revnat`.
        let entry = unsafe { &mut *entry };
        if serves(entry, &flow) {
            return reverse(pkt, &flow, entry, frontend.vip, frontend.port);
        }
    }
    PASS
}

/// The flow of `entry` went to the backend this reply comes from, without SNAT (whose replies
/// come back to this node's address, not to the client).
#[inline(always)]
fn serves(entry: &CtEntry, reply: &Flow) -> bool {
    entry.backend_addr == reply.saddr
        && entry.backend_port == reply.sport
        && entry.flags & CT_F_SNAT == 0
}

/// Rewrites the reply's source back to the frontend the client connected to.
#[inline(always)]
fn reverse(pkt: &mut Packet, flow: &Flow, entry: &mut CtEntry, vip: Ipv4, port: u16) -> i32 {
    if let Some(config) = CONFIG.get(0) {
        conntrack::touch(entry, now_ns(config), conntrack::backend_flags(flow));
    }
    if nat::rewrite(pkt, flow, Some((vip, port)), None).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    count(Counter::RevNat);
    account(
        entry.service_id,
        entry.backend_id,
        pkt.len(),
        Direction::Reverse,
    );
    TC_ACT_OK
}
