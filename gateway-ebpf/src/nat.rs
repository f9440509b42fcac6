//! Address and port rewriting with incremental checksum updates.
//!
//! The kernel helpers are used rather than direct writes because they handle
//! `CHECKSUM_PARTIAL` frames (from a veth or a local socket, whose L4 checksum field holds
//! only the pseudo-header sum): address changes are applied with `BPF_F_PSEUDO_HDR`, port
//! changes only touch a complete checksum, and a UDP checksum of zero ("none") stays zero.

use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, bindings::BPF_F_PSEUDO_HDR, programs::TcContext};

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

/// Rewrites one side of `flow` to `addr:port` (both in network byte order).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    side: Side,
    addr: u32,
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
        ctx.l4_csum_replace(
            flow.csum_off,
            old_addr as u64,
            addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| NatFailed)?;
        ctx.l3_csum_replace(IP_CSUM_OFF, old_addr as u64, addr as u64, 4)
            .map_err(|_| NatFailed)?;
        ctx.store(addr_off, &addr, 0).map_err(|_| NatFailed)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(flow.csum_off, old_port as u64, port as u64, mangled | 2)
            .map_err(|_| NatFailed)?;
        ctx.store(port_off, &port, 0).map_err(|_| NatFailed)?;
    }
    Ok(())
}
