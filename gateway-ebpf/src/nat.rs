//! Address and port rewriting with incremental checksum updates (RFC 1624).
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

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use gateway_common::{
    Ipv4,
    kern_ctx::{CHECKSUM_NONE, CHECKSUM_PARTIAL, CHECKSUM_UNNECESSARY},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    packet::{ETH_HLEN, Flow, ptr_at},
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

/// The ones'-complement sum of a 16-bit word, as the checksum adds it.
#[inline(always)]
fn word(b: [u8; 2]) -> u32 {
    u16::from_be_bytes(b) as u32
}

/// What replacing `from` by `to` adds to a ones'-complement sum (RFC 1624: ~m + m').
#[inline(always)]
fn diff4(from: Ipv4, to: Ipv4) -> u32 {
    let w = |b: Ipv4, i: usize| word([b[i], b[i + 1]]);
    (!w(from, 0) & 0xffff) + (!w(from, 2) & 0xffff) + w(to, 0) + w(to, 2)
}

#[inline(always)]
fn diff2(from: u16, to: u16) -> u32 {
    (!from as u32 & 0xffff) + to as u32
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A complete checksum field after a change of `diff` (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
fn update_complete(check: [u8; 2], diff: u32) -> [u8; 2] {
    (!fold((!u16::from_be_bytes(check)) as u32 + diff)).to_be_bytes()
}

/// The pseudo-header seed of a `CHECKSUM_PARTIAL` frame after a change of `diff`: the seed is
/// a plain sum (the device complements it once it has added the segment).
#[inline(always)]
fn update_seed(seed: [u8; 2], diff: u32) -> [u8; 2] {
    fold(word(seed) + diff).to_be_bytes()
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
    match skb::ip_summed(ctx) {
        // The field holds the pseudo-header sum only: the address is in it, the port not.
        Some(CHECKSUM_PARTIAL) => {
            update_l4_check(ctx, flow, |check| update_seed(check, diff4(old_addr, addr)))?
        }
        // A complete checksum, and no skb->csum to keep in step: all in place.
        Some(CHECKSUM_NONE | CHECKSUM_UNNECESSARY) => update_l4_check(ctx, flow, |check| {
            update_complete(check, diff4(old_addr, addr) + diff2(old_port, port))
        })?,
        // CHECKSUM_COMPLETE (skb->csum covers the frame and must follow the address), or
        // `ip_summed` unknown: the kernel's helpers.
        _ => l4_csum_replace(ctx, flow, old_addr, addr, old_port, port)?,
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(NatFailed)?;
    let ports = ptr_at::<[u8; 2]>(ctx, port_off).ok_or(NatFailed)?;
    let ip = unsafe { &mut *ip };
    ip.check = update_complete(ip.check, diff4(old_addr, addr));
    match side {
        Side::Destination => ip.dst_addr = addr,
        Side::Source => ip.src_addr = addr,
    }
    unsafe { *ports = port.to_be_bytes() };
    Ok(())
}

/// Writes the L4 checksum field through `update`; a UDP checksum of zero ("none") stays
/// zero and a result of zero is sent as 0xffff, as the kernel's `BPF_F_MARK_MANGLED_0` does.
#[inline(always)]
fn update_l4_check(
    ctx: &TcContext,
    flow: &Flow,
    update: impl FnOnce([u8; 2]) -> [u8; 2],
) -> Result<(), NatFailed> {
    let check = ptr_at::<[u8; 2]>(ctx, flow.csum_off).ok_or(NatFailed)?;
    let check = unsafe { &mut *check };
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
/// into a complete checksum. The helpers may move the data: pointers are taken afresh after.
#[inline(always)]
fn l4_csum_replace(
    ctx: &TcContext,
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
    Ok(())
}
