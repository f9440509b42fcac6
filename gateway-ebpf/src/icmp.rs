//! ICMP for VIPs: echo requests to a VIP are answered by this node, from the VIP; ICMP errors
//! about a tracked flow are translated both ways, as the kernel's `nf_nat_icmp` and Cilium's
//! nodeport NAT do, so that path-MTU discovery and traceroute work through a VIP.
//!
//! An error carries the head of the packet it is about (the inner packet): its IPv4 header
//! and at least the first 8 bytes of its TCP/UDP header (RFC 792; Linux routers quote up to
//! 576 bytes). The inner packet names the flow; when it matches a tracked flow exactly, the
//! error is rewritten as the flow's own packets are, outer and inner headers alike:
//! - to a VIP, about a reply that left as the VIP (inner: VIP:port -> client): to the
//!   backend, which then sees an error about its own packet (outer destination and inner
//!   source: the backend; for a SNATed flow also the outer source and inner destination:
//!   this node's SNAT address and port), so it lowers its path MTU for the client;
//! - from a local backend (at egress), about a client's packet (inner: client -> backend):
//!   from the VIP (outer source and inner destination: the VIP and port);
//! - to this node's SNAT address, about a packet SNATed to a backend on another node (inner:
//!   SNAT address:port -> backend), from the backend or a router on the way: to the client,
//!   from the VIP (outer: VIP -> client; inner: client -> VIP), routed as the flow's replies.
//!
//! Every checksum follows: the outer IPv4 header's; the inner IPv4 header's; the inner
//! TCP/UDP checksum where the error quotes it (a UDP one unless it is zero, "none"; a TCP
//! one only if the quote reaches it, as `nf_nat`'s TCP manipulation does); and the ICMP
//! checksum, over every inner word that changed. All are complete checksums (ICMP has no
//! pseudo-header and no offload), updated in place: the sum of the whole packet is the same
//! after, so a `CHECKSUM_COMPLETE` skb->csum stays right too.
//!
//! An inner packet that is not exactly a tracked flow's (options in its header, a
//! fragment, neither TCP nor UDP, too short to hold its ports, addresses that do not fit the
//! outer header, or no such flow) is never translated: to a VIP it is dropped
//! (`drop_icmp_error`), elsewhere passed on untouched (`icmp_error_passed` when it named a
//! backend).

use aya_ebpf::{bindings::TC_ACT_OK, helpers::bpf_redirect};
use core::mem::{offset_of, size_of};
use gateway_common::{
    CT_F_SNAT, Counter, Ipv4,
    csum::{diff2, diff4, update_complete},
    proto,
};

use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

use crate::{
    PASS, conntrack, drop,
    egress::{self, Lookup},
    maps::{CONFIG, CONNTRACK},
    nat::{Endpoint, NatFailed},
    now_ns,
    packet::{ETH_HLEN, IcmpHdr, Invalid, Packet, Ports, Quoted, TcpHdr},
    route, snat,
    stats::count,
};

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAMETER_PROBLEM: u8 = 12;
/// The TTL of an echo reply, the kernel's default (`net.ipv4.ip_default_ttl`).
const REPLY_TTL: u8 = 64;

/// A valid ICMP message over IPv4: the outer header and the ICMP type.
#[derive(Clone, Copy)]
struct Message {
    saddr: Ipv4,
    daddr: Ipv4,
    /// Outer header length and total length, in bytes.
    ihl: usize,
    tot_len: usize,
    kind: u8,
    code: u8,
}

impl Message {
    fn is_error(&self) -> bool {
        matches!(self.kind, DEST_UNREACH | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }

    fn icmp_off(&self) -> usize {
        ETH_HLEN + self.ihl
    }
}

/// Validates an ICMP message: a well-formed IPv4 header that is not a fragment, and a whole
/// ICMP header within its total length.
#[inline(always)]
fn message(pkt: &mut Packet) -> Result<Message, Invalid> {
    let ip = pkt.fresh::<Ipv4Hdr>(ETH_HLEN).ok_or(Invalid::Malformed)?;
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Invalid::Malformed);
    }
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(Invalid::Fragment);
    }
    if ip.proto != proto::ICMP {
        return Err(Invalid::Protocol);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let (saddr, daddr) = (ip.src_addr, ip.dst_addr);
    if tot_len < ihl + IcmpHdr::LEN || ETH_HLEN + tot_len > pkt.len() as usize {
        return Err(Invalid::Malformed);
    }
    if !pkt.linear(ETH_HLEN + ihl + IcmpHdr::LEN) {
        return Err(Invalid::Malformed);
    }
    let icmp = pkt
        .fresh::<IcmpHdr>(ETH_HLEN + ihl)
        .ok_or(Invalid::Malformed)?;
    Ok(Message {
        saddr,
        daddr,
        ihl,
        tot_len,
        kind: icmp.kind,
        code: icmp.code,
    })
}

/// The packet an error is about, as far as it names a flow.
#[derive(Clone, Copy)]
struct Inner {
    /// Offset of its IPv4 header (always 20 bytes: see `inner`).
    off: usize,
    saddr: Ipv4,
    daddr: Ipv4,
    sport: u16,
    dport: u16,
    proto: u8,
    /// Offset of its TCP/UDP checksum, when the error quotes it.
    csum_off: Option<usize>,
}

impl Inner {
    fn ports_off(&self) -> usize {
        self.off + Ipv4Hdr::LEN
    }
}

/// The inner packet of the error `m`, if it is the head of a TCP or UDP packet that could be
/// one of a flow's: an IPv4 header without options (the datapath never balances a packet
/// whose quote it could not rewrite as the packet was), not a later fragment, and its ports
/// quoted.
#[inline(always)]
fn inner(pkt: &mut Packet, m: &Message) -> Option<Inner> {
    let off = m.icmp_off() + IcmpHdr::LEN;
    let quoted = m.tot_len - m.ihl - IcmpHdr::LEN;
    if quoted < size_of::<Quoted>() {
        return None;
    }
    // One pull for everything translated below: the whole TCP header when it is quoted.
    let whole_tcp = quoted >= Ipv4Hdr::LEN + TcpHdr::LEN;
    let need = off
        + if whole_tcp {
            Ipv4Hdr::LEN + TcpHdr::LEN
        } else {
            size_of::<Quoted>()
        };
    if !pkt.linear(need) {
        return None;
    }
    let q = pkt.fresh::<Quoted>(off)?;
    if q.ip.vihl != 0x45 || u16::from_be_bytes(q.ip.frags) & 0x1fff != 0 {
        return None;
    }
    let l4 = off + Ipv4Hdr::LEN;
    let csum_off = match q.ip.proto {
        // As `nf_nat`'s TCP manipulation: the checksum only with the whole header.
        proto::TCP => whole_tcp.then_some(l4 + offset_of!(TcpHdr, check)),
        proto::UDP => Some(l4 + offset_of!(UdpHdr, check)),
        _ => return None,
    };
    Some(Inner {
        off,
        saddr: q.ip.src_addr,
        daddr: q.ip.dst_addr,
        sport: u16::from_be_bytes(q.ports.source),
        dport: u16::from_be_bytes(q.ports.dest),
        proto: q.ip.proto,
        csum_off,
    })
}

/// New addresses of the outer header and new ends of the inner packet, where given.
#[derive(Clone, Copy, Default)]
struct Translation {
    outer_src: Option<Ipv4>,
    outer_dst: Option<Ipv4>,
    inner_src: Option<Endpoint>,
    inner_dst: Option<Endpoint>,
}

/// Rewrites the error `m` about `inner` as `t` says, with every checksum following.
#[inline(always)]
fn translate(
    pkt: &mut Packet,
    m: &Message,
    inner: &Inner,
    t: Translation,
) -> Result<(), NatFailed> {
    // What the inner addresses (its IPv4 header and its TCP/UDP pseudo-header) and ports
    // add to the sums over them.
    let (mut addr_diff, mut port_diff) = (0, 0);
    if let Some((addr, port)) = t.inner_src {
        addr_diff += diff4(inner.saddr, addr);
        port_diff += diff2(inner.sport, port);
    }
    if let Some((addr, port)) = t.inner_dst {
        addr_diff += diff4(inner.daddr, addr);
        port_diff += diff2(inner.dport, port);
    }
    // The ICMP checksum covers the whole inner packet: every word changed below.
    let mut icmp_diff = addr_diff + port_diff;
    if let Some(at) = inner.csum_off {
        let check = pkt.fresh::<[u8; 2]>(at).ok_or(NatFailed)?;
        let old = *check;
        if inner.proto == proto::TCP || old != [0, 0] {
            let mut new = update_complete(old, addr_diff + port_diff);
            if inner.proto == proto::UDP && new == [0, 0] {
                new = [0xff, 0xff];
            }
            *check = new;
            icmp_diff += diff2(u16::from_be_bytes(old), u16::from_be_bytes(new));
        }
    }
    let ip = pkt.fresh::<Ipv4Hdr>(inner.off).ok_or(NatFailed)?;
    let old = ip.check;
    ip.check = update_complete(old, addr_diff);
    icmp_diff += diff2(u16::from_be_bytes(old), u16::from_be_bytes(ip.check));
    if let Some((addr, _)) = t.inner_src {
        ip.src_addr = addr;
    }
    if let Some((addr, _)) = t.inner_dst {
        ip.dst_addr = addr;
    }
    let ports = pkt.fresh::<Ports>(inner.ports_off()).ok_or(NatFailed)?;
    if let Some((_, port)) = t.inner_src {
        ports.source = port.to_be_bytes();
    }
    if let Some((_, port)) = t.inner_dst {
        ports.dest = port.to_be_bytes();
    }
    let icmp = pkt.fresh::<IcmpHdr>(m.icmp_off()).ok_or(NatFailed)?;
    icmp.check = update_complete(icmp.check, icmp_diff);

    let mut outer_diff = 0;
    if let Some(addr) = t.outer_src {
        outer_diff += diff4(m.saddr, addr);
    }
    if let Some(addr) = t.outer_dst {
        outer_diff += diff4(m.daddr, addr);
    }
    let ip = pkt.fresh::<Ipv4Hdr>(ETH_HLEN).ok_or(NatFailed)?;
    ip.check = update_complete(ip.check, outer_diff);
    if let Some(addr) = t.outer_src {
        ip.src_addr = addr;
    }
    if let Some(addr) = t.outer_dst {
        ip.dst_addr = addr;
    }
    Ok(())
}

/// ICMP to a VIP this node serves: an echo request is answered, an error about a tracked
/// flow goes to the flow's backend; everything else is dropped.
#[inline(always)]
pub fn to_vip(pkt: &mut Packet) -> i32 {
    let m = match message(pkt) {
        Ok(m) => m,
        Err(invalid) => return drop(pkt, invalid.reason()),
    };
    match m.kind {
        ECHO_REQUEST if m.code == 0 => echo_reply(pkt, &m),
        _ if m.is_error() => error_to_vip(pkt, &m),
        _ => drop(pkt, Counter::DropIcmp),
    }
}

/// Turns an echo request into its reply in place and sends it back out of the interface it
/// came in on: one reply of the request's own size per request, to the sender's MAC, so
/// the VIP amplifies nothing (as the kernel, it does not rate-limit echo replies).
#[inline(always)]
fn echo_reply(pkt: &mut Packet, m: &Message) -> i32 {
    // A request with IP options (record route, source route) would need them echoed as
    // the kernel's `ip_options_echo` does: not answered.
    if m.ihl != Ipv4Hdr::LEN {
        return drop(pkt, Counter::DropIcmp);
    }
    let ifindex = pkt.ifindex();
    let Some(eth) = pkt.fresh::<EthHdr>(0) else {
        return drop(pkt, Counter::DropMalformed);
    };
    // Sent to a group MAC: not a question to this node, and no reply may come from one.
    if eth.dst_addr[0] & 1 != 0 {
        return drop(pkt, Counter::DropIcmp);
    }
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    let Some(icmp) = pkt.fresh::<IcmpHdr>(m.icmp_off()) else {
        return drop(pkt, Counter::DropMalformed);
    };
    icmp.kind = ECHO_REPLY;
    icmp.check = update_complete(
        icmp.check,
        diff2(
            u16::from_be_bytes([ECHO_REQUEST, 0]),
            u16::from_be_bytes([ECHO_REPLY, 0]),
        ),
    );
    let Some(ip) = pkt.fresh::<Ipv4Hdr>(ETH_HLEN) else {
        return drop(pkt, Counter::DropMalformed);
    };
    // Swapped addresses leave the header's sum as it was; the TTL is the reply's own.
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    ip.ttl = REPLY_TTL;
    ip.check = update_complete(
        ip.check,
        diff2(old, u16::from_be_bytes([REPLY_TTL, ip.proto])),
    );
    count(Counter::IcmpEchoReply);
    // SAFETY: a helper call with an interface index and no flags.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// An error to a VIP about a reply that left as the VIP (inner: VIP:port -> client): to the
/// flow's backend, as if about the backend's own packet.
#[inline(always)]
fn error_to_vip(pkt: &mut Packet, m: &Message) -> i32 {
    let Some(inner) = inner(pkt, m).filter(|i| i.saddr == m.daddr) else {
        return drop(pkt, Counter::DropIcmpError);
    };
    let key = conntrack::key_of(
        inner.daddr,
        inner.saddr,
        inner.dport,
        inner.sport,
        inner.proto,
    );
    let Some(entry) = CONNTRACK.get_ptr(key) else {
        return drop(pkt, Counter::DropIcmpError);
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
    let entry = unsafe { *entry };
    let backend = (entry.backend_addr, entry.backend_port);
    if entry.flags & CT_F_SNAT == 0 {
        let t = Translation {
            outer_dst: Some(backend.0),
            inner_src: Some(backend),
            ..Default::default()
        };
        if translate(pkt, m, &inner, t).is_err() {
            return drop(pkt, Counter::DropNatFailed);
        }
        count(Counter::IcmpErrorNat);
        return TC_ACT_OK;
    }
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let Some(hop) = route::next_hop(pkt, proto::ICMP, entry.snat_addr, backend.0, now_ns(config))
    else {
        return drop(pkt, Counter::DropNoRoute);
    };
    let t = Translation {
        outer_src: Some(entry.snat_addr),
        outer_dst: Some(backend.0),
        inner_src: Some(backend),
        inner_dst: Some((entry.snat_addr, entry.snat_port)),
    };
    if translate(pkt, m, &inner, t).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    count(Counter::IcmpErrorNat);
    route::send(pkt, hop)
}

/// ICMP to an address that is not a VIP: an error about a packet this node SNATed to a
/// backend on another node (inner: SNAT address:port -> backend) goes to the flow's client,
/// from the VIP; everything else is not ours.
#[inline(always)]
pub fn to_node(pkt: &mut Packet) -> i32 {
    let Ok(m) = message(pkt) else {
        return PASS;
    };
    if !m.is_error() {
        return PASS;
    }
    let Some(inner) =
        inner(pkt, &m).filter(|i| i.saddr == m.daddr && snat::may_be_remote_backend(i.daddr))
    else {
        return PASS;
    };
    let Some(key) = snat::holder(
        (inner.daddr, inner.dport),
        (inner.saddr, inner.sport),
        inner.proto,
    ) else {
        return passed();
    };
    let Some(entry) = CONNTRACK.get_ptr(key) else {
        return passed();
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
    let entry = unsafe { *entry };
    // The flow must still be the one that holds this port for this backend.
    if entry.flags & CT_F_SNAT == 0
        || entry.snat_addr != inner.saddr
        || entry.snat_port != inner.sport
        || entry.backend_addr != inner.daddr
        || entry.backend_port != inner.dport
    {
        return passed();
    }
    let Some(config) = CONFIG.get(0) else {
        return PASS;
    };
    let (vip, client) = ((key.vip, key.vip_port), (key.client_addr, key.client_port));
    let Some(hop) = route::next_hop(pkt, proto::ICMP, vip.0, client.0, now_ns(config)) else {
        return drop(pkt, Counter::DropNoRoute);
    };
    let t = Translation {
        outer_src: Some(vip.0),
        outer_dst: Some(client.0),
        inner_src: Some(client),
        inner_dst: Some(vip),
    };
    if translate(pkt, &m, &inner, t).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    count(Counter::IcmpErrorNat);
    route::send(pkt, hop)
}

/// An error that left from the node (egress) about a client's packet to a local backend
/// (inner: client -> backend), sent by the backend or by the node on its way: from the VIP
/// the client sent to.
#[inline(always)]
pub fn from_backend(pkt: &mut Packet) -> i32 {
    let Ok(m) = message(pkt) else {
        return PASS;
    };
    if !m.is_error() {
        return PASS;
    }
    let Some(inner) = inner(pkt, &m).filter(|i| i.saddr == m.daddr) else {
        return PASS;
    };
    let frontend = match egress::flow_of(
        (inner.daddr, inner.dport),
        (inner.saddr, inner.sport),
        inner.proto,
    ) {
        Lookup::Found(_, frontend) => frontend,
        Lookup::Untracked => return passed(),
        Lookup::NotABackend => return PASS,
    };
    let t = Translation {
        outer_src: Some(frontend.0),
        inner_dst: Some(frontend),
        ..Default::default()
    };
    if translate(pkt, &m, &inner, t).is_err() {
        return drop(pkt, Counter::DropNatFailed);
    }
    count(Counter::IcmpErrorNat);
    TC_ACT_OK
}

/// An error that names a backend but none of its flows: not ours to translate.
#[inline(always)]
fn passed() -> i32 {
    count(Counter::IcmpErrorPassed);
    PASS
}
