//! Address and port rewriting with incremental checksum updates.
//!
//! The L4 checksum goes through the kernel helper because only the kernel knows whether the
//! frame is `CHECKSUM_PARTIAL` (from a veth or a local socket: the field then holds only the
//! pseudo-header sum): the address change is applied with `BPF_F_PSEUDO_HDR`, the port
//! change only to a complete checksum, and a UDP checksum of zero ("none") stays zero. The
//! IPv4 header checksum is always complete, so it and the fields themselves are written
//! directly: two helper calls per rewrite instead of five.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use gateway_common::Ipv4;
use network_types::ip::Ipv4Hdr;

use crate::packet::{ETH_HLEN, Flow, ptr_at};

/// Which end of the flow is rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination address and port (DNAT towards the backend).
    Destination,
    /// Source address and port (reverse NAT of a reply, back to the VIP).
    Source,
}

pub struct NatFailed;

/// RFC 1624 incremental update of a complete checksum for one 32-bit field change.
#[inline(always)]
fn csum_replace4(check: [u8; 2], from: Ipv4, to: Ipv4) -> [u8; 2] {
    let word = |b: Ipv4, i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as u32;
    let mut sum = (!u16::from_be_bytes(check)) as u32;
    sum += (!word(from, 0)) & 0xffff;
    sum += (!word(from, 2)) & 0xffff;
    sum += word(to, 0) + word(to, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Rewrites one side of `flow` to `addr:port` (port in host byte order).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    side: Side,
    addr: Ipv4,
    port: u16,
) -> Result<(), NatFailed> {
    let (old_addr, old_port, port_off) = match side {
        Side::Destination => (flow.daddr, flow.dport, flow.l4_off + 2),
        Side::Source => (flow.saddr, flow.sport, flow.l4_off),
    };
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
        ctx.l4_csum_replace(
            flow.csum_off,
            from,
            to,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| NatFailed)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(
            flow.csum_off,
            old_port.to_be() as u64,
            port.to_be() as u64,
            mangled | 2,
        )
        .map_err(|_| NatFailed)?;
    }
    // The helpers may have moved the data: take the pointers afresh.
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(NatFailed)?;
    let ports = ptr_at::<[u8; 2]>(ctx, port_off).ok_or(NatFailed)?;
    let ip = unsafe { &mut *ip };
    ip.check = csum_replace4(ip.check, old_addr, addr);
    match side {
        Side::Destination => ip.dst_addr = addr,
        Side::Source => ip.src_addr = addr,
    }
    unsafe { *ports = port.to_be_bytes() };
    Ok(())
}
