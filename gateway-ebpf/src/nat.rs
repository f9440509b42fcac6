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

/// Which end of the flow is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (DNAT towards the backend).
    Destination,
    /// Source address and port (reverse NAT of a reply, back to the VIP).
    Source,
}

pub struct NatFailed;

/// Rewrites one side of `flow` to `addr:port` (port in host byte order).
#[inline(always)]
pub fn rewrite(
    pkt: &mut Packet,
    flow: &Flow,
    side: Side,
    addr: Ipv4,
    port: u16,
) -> Result<(), NatFailed> {
    let (old_addr, old_port) = match side {
        Side::Destination => (flow.daddr, flow.dport),
        Side::Source => (flow.saddr, flow.sport),
    };
    let port_off = flow.port_off(side == Side::Destination);
    match skb::ip_summed(pkt.ctx()) {
        // The field holds the pseudo-header sum only: the address is in it, the port not.
        Some(CHECKSUM_PARTIAL) => {
            update_l4_check(pkt, flow, |check| update_seed(check, diff4(old_addr, addr)))?
        }
        // A complete checksum, and no skb->csum to keep in step: all in place.
        Some(CHECKSUM_NONE | CHECKSUM_UNNECESSARY) => update_l4_check(pkt, flow, |check| {
            update_complete(check, diff4(old_addr, addr) + diff2(old_port, port))
        })?,
        // CHECKSUM_COMPLETE (skb->csum covers the frame and must follow the address), or
        // `ip_summed` unknown: the kernel's helpers.
        _ => l4_csum_replace(pkt, flow, old_addr, addr, old_port, port)?,
    }
    let ip = pkt.header_mut::<Ipv4Hdr>(ETH_HLEN).ok_or(NatFailed)?;
    ip.check = update_complete(ip.check, diff4(old_addr, addr));
    match side {
        Side::Destination => ip.dst_addr = addr,
        Side::Source => ip.src_addr = addr,
    }
    let ports = pkt.header_mut::<[u8; 2]>(port_off).ok_or(NatFailed)?;
    *ports = port.to_be_bytes();
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

/// The L4 checksum through the kernel's helpers, which know `ip_summed` themselves: the
/// address change with `BPF_F_PSEUDO_HDR` (it also moves skb->csum), the port change only
/// into a complete checksum. The helpers may move the data: headers are taken afresh after.
#[inline(always)]
fn l4_csum_replace(
    pkt: &mut Packet,
    flow: &Flow,
    old_addr: Ipv4,
    addr: Ipv4,
    old_port: u16,
    port: u16,
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
