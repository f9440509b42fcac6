//! TC egress: replies from a backend on a tracked flow are rewritten back to VIP:port, so
//! the client sees the address it connected to.

use aya_ebpf::bindings::TC_ACT_OK;
use gateway_common::{Counter, RevNatKey, capacity};
use network_types::ip::Ipv4Hdr;

use crate::{
    PASS, conntrack, drop,
    maps::{CONFIG, CONNTRACK, REVNAT},
    nat::{self, Side},
    now_ns,
    packet::{self, ETH_HLEN, EtherType, Packet},
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

    // The backend may serve several frontends; the flow's conntrack entry says which one
    // this reply belongs to.
    for i in 0..capacity::REVNAT_FRONTENDS {
        if i as u32 >= revnat.count {
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
        if entry.backend_addr != flow.saddr || entry.backend_port != flow.sport {
            continue;
        }
        if let Some(config) = CONFIG.get(0) {
            conntrack::touch(entry, now_ns(config), conntrack::backend_flags(&flow));
        }
        if nat::rewrite(pkt, &flow, Side::Source, frontend.vip, frontend.port).is_err() {
            return drop(pkt, Counter::DropNatFailed);
        }
        count(Counter::RevNat);
        account(
            entry.service_id,
            entry.backend_id,
            pkt.len(),
            Direction::Reverse,
        );
        return TC_ACT_OK;
    }
    PASS
}
