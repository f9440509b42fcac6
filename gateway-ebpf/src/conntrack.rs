//! Connection tracking: one LRU entry per flow, keyed by the flow as the client sent it.
//! Lifetimes follow the TCP state (see `CtEntry::lifetime_ns`, and `CtEntry::is_closed` for a
//! connection that is over); expired entries are treated as absent, so no garbage collector
//! is needed for correctness.
//!
//! Some flows also have a reply-side record pointing at the flow's key: flows on a backend
//! that serves more frontends than `gw_revnat` lists have an entry in `gw_ct_reply`, keyed
//! by their replies as they arrive; flows SNATed to a backend on another node hold their
//! port's slot in `gw_snat_ports` (see `snat`). The flow's own entry stays the one truth: a
//! reply-side record whose flow no longer agrees with it is ignored.

use gateway_common::{
    CT_F_ESTABLISHED, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT, CT_F_RST, CT_F_TCP, CtEntry, CtKey, Ipv4,
    ReplyKey,
};

use crate::packet::Flow;

/// The key of the flow `flow` belongs to, as the client sent it.
#[inline(always)]
pub fn key(flow: &Flow) -> CtKey {
    key_of(flow.saddr, flow.daddr, flow.sport, flow.dport, flow.proto)
}

/// The key of a client's flow to a VIP.
#[inline(always)]
pub fn key_of(client_addr: Ipv4, vip: Ipv4, client_port: u16, vip_port: u16, proto: u8) -> CtKey {
    // Starting from zero rather than spelling out `_pad: [0; 3]`: LLVM lowers that 3-byte
    // literal to a call to memset on every packet.
    // SAFETY: `CtKey` is made of integers only: all zeros is a valid key.
    let mut key: CtKey = unsafe { core::mem::zeroed() };
    key.client_addr = client_addr;
    key.vip = vip;
    key.client_port = client_port;
    key.vip_port = vip_port;
    key.proto = proto;
    key
}

/// The `gw_ct_reply` key of replies from `backend` to the client `to`.
#[inline(always)]
pub fn reply_key_of(backend: (Ipv4, u16), to: (Ipv4, u16), proto: u8) -> ReplyKey {
    // As in `key_of`: from zero, not a padding literal.
    // SAFETY: `ReplyKey` is made of integers only: all zeros is a valid key.
    let mut key: ReplyKey = unsafe { core::mem::zeroed() };
    key.src_addr = backend.0;
    key.dst_addr = to.0;
    key.src_port = backend.1;
    key.dst_port = to.1;
    key.proto = proto;
    key
}

/// State bits a packet from the client adds to its flow.
#[inline(always)]
pub fn client_flags(flow: &Flow) -> u16 {
    if !flow.is_tcp() {
        return 0;
    }
    let mut flags = CT_F_TCP;
    if !flow.is_syn() {
        flags |= CT_F_ESTABLISHED;
    }
    if flow.is_fin() {
        flags |= CT_F_FIN_CLIENT;
    }
    if flow.is_rst() {
        flags |= CT_F_RST;
    }
    flags
}

/// State bits a reply from the backend adds to its flow.
#[inline(always)]
pub fn backend_flags(flow: &Flow) -> u16 {
    let mut flags = 0;
    if flow.is_fin() {
        flags |= CT_F_FIN_BACKEND;
    }
    if flow.is_rst() {
        flags |= CT_F_RST;
    }
    flags
}

#[inline(always)]
pub fn touch(entry: &mut CtEntry, now: u64, flags: u16) {
    entry.last_seen_ns = now;
    entry.flags |= flags;
}
