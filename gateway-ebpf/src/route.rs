//! Sending a rewritten frame on where the kernel's FIB says, straight from the program: a
//! flow SNATed to a backend on another node, and its replies on their way back to the client.
//!
//! Handing such a frame to the stack instead would need the node to take, on its uplink, a
//! packet whose source is one of its own addresses (`accept_local`), and to forward a frame
//! back out of the interface it came in on (ICMP redirects). `bpf_fib_lookup` gives the way
//! out and, when the neighbour is known, both MACs: the frame then leaves with one
//! `bpf_redirect`. An unresolved neighbour goes through `bpf_redirect_neigh`, which resolves
//! it (and queues the frame meanwhile) the way the stack's own output does.
//!
//! A FIB lookup costs about 170 ns on the benchmark VM (more than all the rest of an
//! established flow), so each CPU keeps the complete answers it got in `gw_nexthops` for a
//! second (see `gateway_common::NextHop`).

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup,
        bpf_redir_neigh as RedirNeigh,
    },
    cty::c_void,
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
};
use gateway_common::{Counter, Ipv4, NEXTHOP_TTL_NS, NextHop, nexthop_slot};
use network_types::eth::EthHdr;

use crate::{drop, maps::NEXTHOPS, packet::Packet};

const AF_INET: u8 = 2;

/// Where a frame goes: out of `ifindex`, with both MACs known, or to a next hop whose MAC
/// the kernel resolves.
#[derive(Clone, Copy)]
pub enum Hop {
    Known {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    Neighbour {
        ifindex: u32,
        /// The next hop's address, as the FIB gives it (network byte order).
        ipv4_nh: u32,
    },
}

/// The way out for a frame from `src` to `dst` (the addresses it will carry), as the node
/// would forward it; `None` when the FIB has no usable route. Asked before the frame is
/// rewritten, so that a frame without one is dropped as it came. `now`: the datapath's
/// clock.
#[inline(always)]
pub fn next_hop(pkt: &Packet, proto: u8, src: Ipv4, dst: Ipv4, now: u64) -> Option<Hop> {
    let ifindex = pkt.ifindex();
    let cached = NEXTHOPS.get_ptr_mut(nexthop_slot(dst, ifindex));
    if let Some(hop) = cached {
        // SAFETY: this CPU's slot of a per-CPU array, which only this program run touches
        // until it returns (programs run with migration disabled, and a TC program is not
        // interrupted by another on the same CPU).
        let hop = unsafe { &*hop };
        if hop.dst == dst
            && hop.ifindex == ifindex
            && now.wrapping_sub(hop.asked_ns) < NEXTHOP_TTL_NS
        {
            return Some(Hop::Known {
                ifindex: hop.out_ifindex,
                smac: hop.smac,
                dmac: hop.dmac,
            });
        }
    }
    // SAFETY: `bpf_fib_lookup` is plain old data: all zeros is a valid request.
    let mut fib: FibLookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    // tot_len 0: the kernel checks the frame itself against the route's MTU, GSO frames
    // (GRO on the uplink) by their segments.
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: the program's own context and a request of the helper's own type and size.
    let found = unsafe {
        bpf_fib_lookup(
            pkt.ctx().skb.skb as *mut c_void,
            &mut fib,
            size_of::<FibLookup>() as i32,
            0,
        )
    };
    match found as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            if let Some(hop) = cached {
                // SAFETY: as above.
                let hop = unsafe { &mut *hop };
                *hop = NextHop {
                    asked_ns: now,
                    dst,
                    ifindex,
                    out_ifindex: fib.ifindex,
                    smac: fib.smac,
                    dmac: fib.dmac,
                };
            }
            Some(Hop::Known {
                ifindex: fib.ifindex,
                smac: fib.smac,
                dmac: fib.dmac,
            })
        }
        // The lookup left the next hop (the gateway, or `dst` itself on a link) in place of
        // the destination.
        BPF_FIB_LKUP_RET_NO_NEIGH => Some(Hop::Neighbour {
            ifindex: fib.ifindex,
            // SAFETY: the union member the IPv4 lookup wrote.
            ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        }),
        // Blackhole, unreachable, prohibited, local, forwarding off, above the MTU.
        _ => None,
    }
}

/// Sends the (rewritten) frame on by `hop`.
#[inline(always)]
pub fn send(pkt: &mut Packet, hop: Hop) -> i32 {
    match hop {
        Hop::Known {
            ifindex,
            smac,
            dmac,
        } => {
            let Some(eth) = pkt.header_mut::<EthHdr>(0) else {
                return drop(pkt, Counter::DropNatFailed);
            };
            eth.dst_addr = dmac;
            eth.src_addr = smac;
            // SAFETY: a helper call with an interface index and no flags.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Hop::Neighbour { ifindex, ipv4_nh } => {
            let mut next_hop = RedirNeigh {
                nh_family: AF_INET as u32,
                __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh },
            };
            // SAFETY: an interface index and a next hop of the helper's own type and size.
            unsafe {
                bpf_redirect_neigh(ifindex, &mut next_hop, size_of::<RedirNeigh>() as i32, 0) as i32
            }
        }
    }
}
