//! Address and port rewriting with incremental checksum updates.
//!
//! The kernel helpers are used rather than direct writes because they handle
//! `CHECKSUM_PARTIAL` frames (from a veth or a local socket, whose L4 checksum field holds
//! only the pseudo-header sum): address changes are applied with `BPF_F_PSEUDO_HDR`, port
//! changes only touch a complete checksum, and a UDP checksum of zero ("none") stays zero.

use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use gateway_common::Ipv4;

use crate::packet::{Flow, IP_CSUM_OFF, IP_DST_OFF, IP_SRC_OFF};

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
    ctx: &TcContext,
    flow: &Flow,
    side: Side,
    addr: Ipv4,
    port: u16,
) -> Result<(), NatFailed> {
    let (old_addr, old_port, addr_off, port_off) = match side {
        Side::Destination => (flow.daddr, flow.dport, IP_DST_OFF, flow.l4_off + 2),
        Side::Source => (flow.saddr, flow.sport, IP_SRC_OFF, flow.l4_off),
    };
    let mangled = if flow.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    if old_addr != addr {
        // The helpers take the 16/32-bit field values exactly as they sit in the packet.
        let (from, to) = (
            u32::from_ne_bytes(old_addr) as u64,
            u32::from_ne_bytes(addr) as u64,
        );
        ctx.l4_csum_replace(
            flow.csum_off,
            from,
            to,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| NatFailed)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, from, to, 4)
            .map_err(|_| NatFailed)?;
        ctx.store(addr_off, &addr, 0).map_err(|_| NatFailed)?;
    }
    if old_port != port {
        let (from, to) = (old_port.to_be(), port.to_be());
        ctx.l4_csum_replace(flow.csum_off, from as u64, to as u64, mangled | 2)
            .map_err(|_| NatFailed)?;
        ctx.store(port_off, &to, 0).map_err(|_| NatFailed)?;
    }
    Ok(())
}
