//! Address and port rewriting with incremental checksum updates (RFC 1624; the arithmetic is
//! `gateway_common::csum`).
//!
//! How the L4 checksum field is updated depends on `skb->ip_summed`, which the datapath
//! reads through the kfunc `bpf_cast_to_kern_ctx` (see `skb`): a `CHECKSUM_PARTIAL` frame
//! (from a veth or a local socket) holds only the pseudo-header sum there, so only the
//! address change goes in; a complete checksum takes address and port. Both are written in
//! place. A `CHECKSUM_COMPLETE` frame also carries skb->csum, which must follow the address
//! change and which a program cannot write: those, and every frame where `ip_summed` is
//! unknown, go through the kernel's `bpf_l4_csum_replace`. In-place updates save the two
//! helper calls per rewrite (about 50 ns on the benchmark VM, where each call and return is
//! expensive). The IPv4 header checksum is always complete and always written in place.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use gateway_common::{
    Ipv4,
    csum::{diff2, diff4, update_complete, update_seed},
    kern_ctx::{CHECKSUM_NONE, CHECKSUM_PARTIAL, CHECKSUM_UNNECESSARY},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    packet::{ETH_HLEN, Flow, Packet},
    skb,
};

/// An address and port (in host byte order) one end of a flow is rewritten to.
pub type Endpoint = (Ipv4, u16);

pub struct NatFailed;

/// Rewrites the source of `flow` to `src` and its destination to `dst`, where given: DNAT
/// towards a backend (destination), reverse NAT of a reply (source), or both for a flow
/// SNATed to a backend on another node and its replies.
#[inline(always)]
pub fn rewrite(
    pkt: &mut Packet,
    flow: &Flow,
    src: Option<Endpoint>,
    dst: Option<Endpoint>,
) -> Result<(), NatFailed> {
    // What the addresses (pseudo-header) and ports add to the L4 checksum; an end that
    // stays adds nothing, so a one-sided rewrite writes what the kernel's helpers write.
    let (mut addr_diff, mut port_diff) = (0, 0);
    if let Some((addr, port)) = src {
        addr_diff += diff4(flow.saddr, addr);
        port_diff += diff2(flow.sport, port);
    }
    if let Some((addr, port)) = dst {
        addr_diff += diff4(flow.daddr, addr);
        port_diff += diff2(flow.dport, port);
    }
    match skb::ip_summed(pkt.ctx()) {
        // The field holds the pseudo-header sum only: the addresses are in it, the ports not.
        Some(CHECKSUM_PARTIAL) => {
            update_l4_check(pkt, flow, |check| update_seed(check, addr_diff))?
        }
        // A complete checksum, and no skb->csum to keep in step: all in place.
        Some(CHECKSUM_NONE | CHECKSUM_UNNECESSARY) => update_l4_check(pkt, flow, |check| {
            update_complete(check, addr_diff + port_diff)
        })?,
        // CHECKSUM_COMPLETE (skb->csum covers the frame and must follow the addresses), or
        // `ip_summed` unknown: the kernel's helpers.
        _ => {
            if let Some((addr, port)) = src {
                l4_csum_replace(pkt, flow, (flow.saddr, addr), (flow.sport, port))?;
            }
            if let Some((addr, port)) = dst {
                l4_csum_replace(pkt, flow, (flow.daddr, addr), (flow.dport, port))?;
            }
        }
    }
    let ip = pkt.header_mut::<Ipv4Hdr>(ETH_HLEN).ok_or(NatFailed)?;
    ip.check = update_complete(ip.check, addr_diff);
    if let Some((addr, _)) = src {
        ip.src_addr = addr;
    }
    if let Some((addr, _)) = dst {
        ip.dst_addr = addr;
    }
    if let Some((_, port)) = src {
        *pkt.header_mut::<[u8; 2]>(flow.port_off(false))
            .ok_or(NatFailed)? = port.to_be_bytes();
    }
    if let Some((_, port)) = dst {
        *pkt.header_mut::<[u8; 2]>(flow.port_off(true))
            .ok_or(NatFailed)? = port.to_be_bytes();
    }
    Ok(())
}

/// Writes the L4 checksum field through `update`; a UDP checksum of zero ("none") stays
/// zero and a result of zero is sent as 0xffff, as the kernel's `BPF_F_MARK_MANGLED_0` does.
#[inline(always)]
fn update_l4_check(
    pkt: &mut Packet,
    flow: &Flow,
    update: impl FnOnce([u8; 2]) -> [u8; 2],
) -> Result<(), NatFailed> {
    let check = pkt.header_mut::<[u8; 2]>(flow.csum_off).ok_or(NatFailed)?;
    if flow.is_tcp() {
        *check = update(*check);
    } else if *check != [0, 0] {
        let new = update(*check);
        *check = if new == [0, 0] { [0xff, 0xff] } else { new };
    }
    Ok(())
}

/// The L4 checksum through the kernel's helpers, which know `ip_summed` themselves: one end's
/// address change with `BPF_F_PSEUDO_HDR` (it also moves skb->csum), its port change only
/// into a complete checksum. The helpers may move the data: headers are taken afresh after.
#[inline(always)]
fn l4_csum_replace(
    pkt: &mut Packet,
    flow: &Flow,
    (old_addr, addr): (Ipv4, Ipv4),
    (old_port, port): (u16, u16),
) -> Result<(), NatFailed> {
    let mangled = if flow.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    // The helpers take the field values exactly as they sit in the packet.
    if old_addr != addr {
        let (from, to) = (
            u32::from_ne_bytes(old_addr) as u64,
            u32::from_ne_bytes(addr) as u64,
        );
        pkt.l4_csum_replace(
            flow.csum_off,
            from,
            to,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| NatFailed)?;
    }
    if old_port != port {
        pkt.l4_csum_replace(
            flow.csum_off,
            old_port.to_be() as u64,
            port.to_be() as u64,
            mangled | 2,
        )
        .map_err(|_| NatFailed)?;
    }
    Ok(())
}
