//! L2 announcement: answers ARP requests for the VIPs this node announces on the interface
//! the request arrived on, from that interface's MAC, while the gate is open (see
//! `gateway_common::cluster::Gate`). Everything else ARP goes to the kernel.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_redirect;
use gateway_common::{Counter, ETH_P_IP, L2Key};

use crate::{
    PASS,
    maps::{CONFIG, GATE, L2},
    now_ns,
    packet::{ArpFrame, Packet},
    stats::count,
};

const ARPHRD_ETHER: [u8; 2] = [0, 1];
const ARPOP_REQUEST: [u8; 2] = [0, 1];
const ARPOP_REPLY: [u8; 2] = [0, 2];

#[inline(always)]
pub fn respond(pkt: &mut Packet) -> i32 {
    let ifindex = pkt.ifindex();
    let Some(ArpFrame { eth, arp }) = pkt.header_mut::<ArpFrame>(0) else {
        return PASS;
    };
    if arp.htype != ARPHRD_ETHER
        || arp.ptype != ETH_P_IP.to_be_bytes()
        || arp.hlen != 6
        || arp.plen != 4
        || arp.oper != ARPOP_REQUEST
        // Gratuitous ARP (sender == target) announces someone else's address: not a question.
        || arp.spa == arp.tpa
    {
        return PASS;
    }
    let vip = arp.tpa;
    let Some(entry) = L2.get_ptr_mut(L2Key { ifindex, vip }) else {
        return PASS;
    };
    // The cluster's lease: past it another node may answer, so this one stays silent (and
    // the kernel, which does not own the VIP, does not answer either).
    let open = match (GATE.get(0), CONFIG.get(0)) {
        (Some(gate), Some(config)) => gate.is_open(now_ns(config)),
        _ => false,
    };
    if !open {
        count(Counter::ArpGated);
        return PASS;
    }
    // SAFETY: a value found in a hash map stays valid until the program returns (the kernel
    // frees replaced and deleted elements after an RCU grace period).
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
    // SAFETY: `entry` is valid as above, and the counter is a naturally aligned u64.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).arp_replies, 1)
    };
    count(Counter::ArpReply);
    // SAFETY: plain helper call with an interface index and no flags.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}
