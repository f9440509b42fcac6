//! L2 announcement: answers ARP requests for the VIPs this node announces on the interface
//! the request arrived on, from that interface's MAC. Everything else ARP goes to the kernel.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use gateway_common::{Counter, L2Key};
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{
    PASS,
    maps::L2,
    packet::{ETH_HLEN, ptr_at},
    stats::count,
};

const ARPHRD_ETHER: [u8; 2] = [0, 1];
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ARPOP_REQUEST: [u8; 2] = [0, 1];
const ARPOP_REPLY: [u8; 2] = [0, 2];

#[inline(always)]
pub fn respond(ctx: &TcContext) -> i32 {
    let (Some(eth), Some(arp)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<ArpHdr>(ctx, ETH_HLEN)) else {
        return PASS;
    };
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.htype != ARPHRD_ETHER
        || arp.ptype != ETH_P_IP
        || arp.hlen != 6
        || arp.plen != 4
        || arp.oper != ARPOP_REQUEST
        // Gratuitous ARP (sender == target) announces someone else's address: not a question.
        || arp.spa == arp.tpa
    {
        return PASS;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let vip = arp.tpa;
    let Some(entry) = L2.get_ptr_mut(&L2Key { ifindex, vip }) else {
        return PASS;
    };
    let mac = unsafe { (*entry).mac };

    // Turn the request into the reply in place and send it back out of the same interface.
    eth.dst_addr = arp.sha;
    eth.src_addr = mac;
    arp.oper = ARPOP_REPLY;
    arp.tha = arp.sha;
    arp.tpa = arp.spa;
    arp.sha = mac;
    arp.spa = vip;

    // The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` is unavailable; the
    // intrinsic lowers to the BPF atomic add instruction.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).arp_replies, 1)
    };
    count(Counter::ArpReply);
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
