//! TC egress: replies from a local backend on a tracked flow are rewritten back to VIP:port,
//! so the client sees the address it connected to, and so are the ICMP errors they send
//! about a client's packet (`icmp`). (Replies of flows SNATed to a backend on another node
//! come back in at ingress: `snat`.)

use aya_ebpf::bindings::TC_ACT_OK;
use gateway_common::{CT_F_SNAT, Counter, CtEntry, REVNAT_F_REPLY_CT, RevNatKey, capacity};
use network_types::ip::Ipv4Hdr;

use crate::{
    PASS, conntrack, drop, icmp,
    maps::{CONFIG, CONNTRACK, CT_REPLY, REVNAT},
    nat::{self, Endpoint},
    now_ns,
    packet::{self, ETH_HLEN, EtherType, Flow, Invalid, Packet},
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
    let flow = match packet::ipv4(ip, pkt.len()).and_then(|ip| packet::flow(pkt, ip)) {
        Ok(flow) => flow,
        // An error a local backend (or the node on its behalf) sends a client.
        Err(Invalid::Icmp) => return icmp::from_backend(pkt),
        Err(_) => return PASS,
    };
    match flow_of(
        (flow.saddr, flow.sport),
        (flow.daddr, flow.dport),
        flow.proto,
    ) {
        Lookup::Found(entry, frontend) => {
            // SAFETY: a value found in a hash map stays valid until the program returns (the
            // kernel frees replaced and deleted elements after an RCU grace period).
            reverse(pkt, &flow, unsafe { &mut *entry }, frontend)
        }
        Lookup::NotABackend | Lookup::Untracked => PASS,
    }
}

/// What `flow_of` found for a packet from a backend.
pub enum Lookup {
    /// The source is no local backend's address and port.
    NotABackend,
    /// A local backend's, but on no flow balanced to it.
    Untracked,
    /// The flow's conntrack entry, and the frontend (VIP, port) its client connected to.
    Found(*mut CtEntry, Endpoint),
}

/// The flow a packet from the local `backend` to `client` belongs to, if the ingress side
/// balanced one there (without SNAT).
#[inline(always)]
pub fn flow_of(backend: Endpoint, client: Endpoint, proto: u8) -> Lookup {
    let revnat_key = RevNatKey {
        addr: backend.0,
        port: backend.1,
        proto,
        _pad: 0,
    };
    let Some(revnat) = REVNAT.get_ptr(revnat_key) else {
        return Lookup::NotABackend;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns (the kernel
    // frees replaced and deleted elements after an RCU grace period).
    let revnat = unsafe { &*revnat };

    // A backend serving more frontends than its entry lists: the reply-side entry, if this
    // flow has one, says which frontend.
    if revnat.flags & REVNAT_F_REPLY_CT != 0
        && let Some(key) = CT_REPLY.get_ptr(conntrack::reply_key_of(backend, client, proto))
    {
        // SAFETY: as for `revnat`.
        let key = unsafe { *key };
        if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
            // SAFETY: as for `revnat`.
            if serves(unsafe { &*entry }, backend) {
                return Lookup::Found(entry, (key.vip, key.vip_port));
            }
        }
    }
    // The backend may serve several frontends; the flow's conntrack entry says which one
    // this packet belongs to.
    for i in 0..capacity::REVNAT_FRONTENDS {
        if i as u16 >= revnat.count {
            break;
        }
        let frontend = revnat.frontends[i];
        let key = conntrack::key_of(client.0, frontend.vip, client.1, frontend.port, proto);
        let Some(entry) = CONNTRACK.get_ptr_mut(key) else {
            continue;
        };
        // SAFETY: as for `revnat`.
        if serves(unsafe { &*entry }, backend) {
            return Lookup::Found(entry, (frontend.vip, frontend.port));
        }
    }
    Lookup::Untracked
}

/// The flow of `entry` went to `backend`, without SNAT (whose replies come back to this
/// node's address, not to the client).
#[inline(always)]
fn serves(entry: &CtEntry, backend: Endpoint) -> bool {
    entry.backend_addr == backend.0
        && entry.backend_port == backend.1
        && entry.flags & CT_F_SNAT == 0
}

/// Rewrites the reply's source back to the frontend the client connected to.
#[inline(always)]
fn reverse(pkt: &mut Packet, flow: &Flow, entry: &mut CtEntry, (vip, port): Endpoint) -> i32 {
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
