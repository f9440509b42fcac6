//! The frame: [`Packet`] holds every access to packet memory (bounds-checked the way the
//! verifier needs it), and the Ethernet, ARP, IPv4 and TCP/UDP headers are parsed here.
//! Nothing here writes on its own; a frame that fails a check is never rewritten.

use core::mem::{align_of, offset_of, size_of};

use aya_ebpf::{cty::c_long, programs::TcContext};
use gateway_common::{Counter, ETH_P_ARP, ETH_P_IP, Ipv4, proto};
use network_types::{arp::ArpHdr, eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

pub const ETH_HLEN: usize = EthHdr::LEN;

const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_RST: u8 = 0x04;
const TCP_FLAG_ACK: u8 = 0x10;

/// The fixed part of a TCP header, with the data offset and flags as plain bytes.
#[repr(C)]
pub struct TcpHdr {
    pub source: [u8; 2],
    pub dest: [u8; 2],
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset in the high nibble.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg_ptr: [u8; 2],
}

impl TcpHdr {
    pub const LEN: usize = size_of::<TcpHdr>();
}

/// The ports, which open a TCP and a UDP header alike.
#[repr(C)]
pub struct Ports {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

const _: () = assert!(
    offset_of!(TcpHdr, source) == offset_of!(Ports, source)
        && offset_of!(TcpHdr, dest) == offset_of!(Ports, dest)
        && offset_of!(UdpHdr, src) == offset_of!(Ports, source)
        && offset_of!(UdpHdr, dst) == offset_of!(Ports, dest)
);

/// An ICMP header: type, code, checksum, and the four bytes whose meaning depends on the
/// type (an echo's identifier and sequence number; unused or the next-hop MTU of an error).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

impl IcmpHdr {
    pub const LEN: usize = size_of::<IcmpHdr>();
}

/// The head of the packet an ICMP error is about, as every error quotes it (RFC 792): an
/// IPv4 header without options and the first 8 bytes of its TCP/UDP header.
#[repr(C)]
pub struct Quoted {
    pub ip: Ipv4Hdr,
    pub ports: Ports,
    /// UDP's length and checksum; TCP's sequence number.
    pub rest: [u8; 4],
}

/// An ARP packet over Ethernet, as one header: the request is answered in place.
#[repr(C)]
pub struct ArpFrame {
    pub eth: EthHdr,
    pub arp: ArpHdr,
}

/// Types [`Packet`] hands out references to, in packet memory.
///
/// # Safety
///
/// `#[repr(C)]`, made only of integers and arrays of them (any bytes are a valid value), and
/// aligned to at most 2: the kernel starts a frame at an even address (its buffers and
/// headroom are aligned, and `NET_IP_ALIGN` is 0 or 2). Only `EthHdr` (its `u16` EtherType)
/// needs more than 1.
pub unsafe trait Header {}

macro_rules! headers {
    ($($t:ty),+) => {
        $(
            // SAFETY: each type is repr(C) with byte and integer fields only; the assertion
            // below bounds its alignment.
            unsafe impl Header for $t {}
            const _: () = assert!(align_of::<$t>() <= 2);
        )+
    };
}

headers!(
    EthHdr, ArpFrame, Ipv4Hdr, TcpHdr, UdpHdr, Ports, IcmpHdr, Quoted, [u8; 2], u8
);

/// The frame of one program run. Headers are borrowed from it: a shared borrow to read, an
/// exclusive one to write, and none may be held across a call that can move the frame
/// ([`Packet::pull`], [`Packet::l4_csum_replace`]), which the verifier would refuse at load.
pub struct Packet<'a> {
    ctx: &'a TcContext,
}

impl<'a> Packet<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a TcContext) -> Self {
        Self { ctx }
    }

    /// The program's context, for what does not touch packet memory (log events).
    #[inline(always)]
    pub fn ctx(&self) -> &'a TcContext {
        self.ctx
    }

    /// Length of the whole frame, linear or not.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.ctx.len()
    }

    /// The interface the frame arrived on (ingress) or leaves by (egress).
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the program's own `__sk_buff` context, valid for the whole run.
        unsafe { (*self.ctx.skb.skb).ifindex }
    }

    /// Where a `T` at `offset` is, if all of it lies inside the linear data: the comparison
    /// against `data_end` is the one the verifier needs to allow the access.
    ///
    /// `FRESH` reads the bounds with volatile loads, which LLVM neither reuses nor merges
    /// across branches: where a pull happens on one branch only, a merged pointer can come
    /// out as a 32-bit move, which the verifier takes for a scalar (see [`Packet::fresh`]).
    #[inline(always)]
    fn ptr_at<T: Header, const FRESH: bool>(&self, offset: usize) -> Option<*mut T> {
        let (start, end) = if FRESH {
            let skb = self.ctx.skb.skb;
            // SAFETY: reads of the program's own `__sk_buff` context, valid for the whole run.
            unsafe {
                (
                    core::ptr::read_volatile(&raw const (*skb).data) as usize,
                    core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
                )
            }
        } else {
            (self.ctx.data(), self.ctx.data_end())
        };
        if start + offset + size_of::<T>() > end {
            return None;
        }
        let p = (start + offset) as *mut T;
        // SAFETY: packet data is kernel memory, never at address 0. Said to the compiler, it
        // spares a null test of the references made from `p` (`None` of an `Option<&T>` is
        // null) on every packet.
        unsafe { core::hint::assert_unchecked(!p.is_null()) };
        Some(p)
    }

    /// The `T` at `offset`, if the linear data holds all of it.
    #[inline(always)]
    pub fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let p = self.ptr_at::<T, false>(offset)?;
        // SAFETY: `ptr_at` checked that the whole `T` lies in the frame's linear data, which
        // stays put while `self` is borrowed (only `&mut self` calls can move it); any bytes
        // are a `T`, and its alignment is met (see `Header`).
        Some(unsafe { &*p })
    }

    /// The `T` at `offset` to write to, if the linear data holds all of it.
    #[inline(always)]
    pub fn header_mut<T: Header>(&mut self, offset: usize) -> Option<&mut T> {
        let p = self.ptr_at::<T, false>(offset)?;
        // SAFETY: as in `header`; the exclusive borrow of `self` keeps any other reference
        // into the frame from being alive at the same time.
        Some(unsafe { &mut *p })
    }

    /// Like [`Packet::header`], but first pulls non-linear data in when the frame is long
    /// enough: a veth or GRO frame may carry its L4 header outside the linear part.
    #[inline(always)]
    pub fn pull<T: Header>(&mut self, offset: usize) -> Option<&T> {
        let p = match self.ptr_at::<T, false>(offset) {
            Some(p) => p,
            None => {
                let need = (offset + size_of::<T>()) as u32;
                if self.ctx.len() < need || self.ctx.pull_data(need).is_err() {
                    return None;
                }
                self.ptr_at::<T, false>(offset)?
            }
        };
        // SAFETY: as in `header`, for the data as it is after the pull.
        Some(unsafe { &*p })
    }

    /// Makes the first `len` bytes of the frame linear (pulling non-linear data in when
    /// needed), so that [`Packet::fresh`] finds any header within them; false when the
    /// frame is shorter.
    #[inline(always)]
    pub fn linear(&mut self, len: usize) -> bool {
        if self.ptr_at::<u8, true>(len - 1).is_some() {
            return true;
        }
        self.ctx.len() as usize >= len && self.ctx.pull_data(len as u32).is_ok()
    }

    /// Like [`Packet::header_mut`], with the frame's bounds read afresh: for code that
    /// pulls at several depths on some branches only (ICMP errors, whose quoted packet lies
    /// deep in the frame), where the pointers LLVM would otherwise merge fail the verifier.
    #[inline(always)]
    pub fn fresh<T: Header>(&mut self, offset: usize) -> Option<&mut T> {
        let p = self.ptr_at::<T, true>(offset)?;
        // SAFETY: as in `header_mut`.
        Some(unsafe { &mut *p })
    }

    /// `bpf_l4_csum_replace` on the checksum field at `offset`; the kernel may move the frame.
    #[inline(always)]
    pub fn l4_csum_replace(
        &mut self,
        offset: usize,
        from: u64,
        to: u64,
        flags: u64,
    ) -> Result<(), c_long> {
        self.ctx.l4_csum_replace(offset, from, to, flags)
    }
}

/// What the Ethernet header carries, as far as the datapath cares.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Other,
}

#[inline(always)]
pub fn ether_type(pkt: &Packet) -> EtherType {
    match pkt.header::<EthHdr>(0).map(|eth| eth.ether_type) {
        // The field as it sits in the frame: big-endian.
        Some(t) if t == ETH_P_IP.to_be() => EtherType::Ipv4,
        Some(t) if t == ETH_P_ARP.to_be() => EtherType::Arp,
        _ => EtherType::Other,
    }
}

/// Why an IPv4 packet cannot be load-balanced.
#[derive(Clone, Copy)]
pub enum Invalid {
    /// Bad version, header length, total length, TCP data offset or UDP length, or a
    /// truncated L4 header.
    Malformed,
    /// A fragment: only the first carries ports, so no fragment can be balanced safely.
    Fragment,
    /// ICMP: answered or translated by `icmp`, never balanced.
    Icmp,
    /// Neither TCP, UDP nor ICMP.
    Protocol,
}

impl Invalid {
    /// The drop reason when such a packet is addressed to a VIP.
    #[inline(always)]
    pub fn reason(self) -> Counter {
        match self {
            Invalid::Malformed => Counter::DropMalformed,
            Invalid::Fragment => Counter::DropFragment,
            Invalid::Icmp => Counter::DropIcmp,
            Invalid::Protocol => Counter::DropUnknownPort,
        }
    }
}

/// What a valid IPv4 header of a TCP or UDP packet says (its bytes may be gone once the L4
/// header is pulled in).
#[derive(Clone, Copy)]
pub struct Ipv4Packet {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    pub proto: u8,
    /// Header length in bytes.
    pub ihl: usize,
    pub tot_len: usize,
}

/// Validates the IPv4 header of a frame of `frame_len` bytes, up to the protocol.
#[inline(always)]
pub fn ipv4(ip: &Ipv4Hdr, frame_len: u32) -> Result<Ipv4Packet, Invalid> {
    let ihl = (ip.vihl & 0x0f) as usize * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Invalid::Malformed);
    }
    // More-fragments flag or a non-zero offset.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(Invalid::Fragment);
    }
    let proto = ip.proto;
    let l4_len = match proto {
        proto::TCP => TcpHdr::LEN,
        proto::UDP => UdpHdr::LEN,
        proto::ICMP => return Err(Invalid::Icmp),
        _ => return Err(Invalid::Protocol),
    };
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < ihl + l4_len || ETH_HLEN + tot_len > frame_len as usize {
        return Err(Invalid::Malformed);
    }
    Ok(Ipv4Packet {
        saddr: ip.src_addr,
        daddr: ip.dst_addr,
        proto,
        ihl,
        tot_len,
    })
}

/// A TCP or UDP packet over IPv4 with every header it needs inside the frame.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: Ipv4,
    pub daddr: Ipv4,
    /// Ports in host byte order, as in the maps.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Offset of the L4 checksum field.
    pub csum_off: usize,
}

impl Flow {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.proto == proto::TCP
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    #[inline(always)]
    pub fn is_fin(&self) -> bool {
        self.tcp_flags & TCP_FLAG_FIN != 0
    }

    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.tcp_flags & TCP_FLAG_RST != 0
    }

    /// Offset of the port field of this end of the flow.
    #[inline(always)]
    pub fn port_off(&self, destination: bool) -> usize {
        self.l4_off
            + if destination {
                offset_of!(Ports, dest)
            } else {
                offset_of!(Ports, source)
            }
    }
}

/// Reads the TCP/UDP header of the valid IPv4 packet `ip`.
#[inline(always)]
pub fn flow(pkt: &mut Packet, ip: Ipv4Packet) -> Result<Flow, Invalid> {
    let Ipv4Packet {
        saddr,
        daddr,
        proto,
        ihl,
        tot_len,
    } = ip;
    let l4_off = ETH_HLEN + ihl;
    if proto == proto::TCP {
        let tcp = pkt.pull::<TcpHdr>(l4_off).ok_or(Invalid::Malformed)?;
        let doff = (tcp.doff >> 4) as usize * 4;
        if doff < TcpHdr::LEN || ihl + doff > tot_len {
            return Err(Invalid::Malformed);
        }
        Ok(Flow {
            saddr,
            daddr,
            sport: u16::from_be_bytes(tcp.source),
            dport: u16::from_be_bytes(tcp.dest),
            proto,
            tcp_flags: tcp.flags,
            l4_off,
            csum_off: l4_off + offset_of!(TcpHdr, check),
        })
    } else {
        let udp = pkt.pull::<UdpHdr>(l4_off).ok_or(Invalid::Malformed)?;
        // The datagram must fit in the packet: a UDP length past the IPv4 total length is a
        // truncated datagram the receiving stack drops, so not one to balance.
        let udp_len = u16::from_be_bytes(udp.len) as usize;
        if udp_len < UdpHdr::LEN || ihl + udp_len > tot_len {
            return Err(Invalid::Malformed);
        }
        Ok(Flow {
            saddr,
            daddr,
            sport: u16::from_be_bytes(udp.src),
            dport: u16::from_be_bytes(udp.dst),
            proto,
            tcp_flags: 0,
            l4_off,
            csum_off: l4_off + offset_of!(UdpHdr, check),
        })
    }
}
