//! Packet parsing: bounds-checked access to the Ethernet, ARP, IPv4 and TCP/UDP headers.
//! Nothing here writes; a frame that fails a check is never rewritten.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use gateway_common::{Counter, Ipv4, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

pub const ETH_HLEN: usize = EthHdr::LEN;
/// EtherTypes in network byte order, as read from the frame.
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();

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

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the linear packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Like [`ptr_at`], but first pulls non-linear data in when the frame is long enough: a
/// veth or GRO frame may carry its L4 header outside the linear part.
#[inline(always)]
pub fn pull_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    if let Some(p) = ptr_at::<T>(ctx, offset) {
        return Some(p);
    }
    let need = (offset + size_of::<T>()) as u32;
    if ctx.len() < need || ctx.pull_data(need).is_err() {
        return None;
    }
    ptr_at::<T>(ctx, offset)
}

#[inline(always)]
pub fn ether_type(ctx: &TcContext) -> Option<u16> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    Some(unsafe { (*eth).ether_type })
}

/// The IPv4 header, if the frame is long enough to hold one.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Option<*mut Ipv4Hdr> {
    ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)
}

/// Why an IPv4 packet cannot be load-balanced.
#[derive(Clone, Copy)]
pub enum Invalid {
    /// Bad version, header length, total length, TCP data offset or UDP length, or a
    /// truncated L4 header.
    Malformed,
    /// A fragment: only the first carries ports, so no fragment can be balanced safely.
    Fragment,
    /// Neither TCP nor UDP.
    Protocol,
}

impl Invalid {
    /// The drop reason when such a packet is addressed to a VIP.
    #[inline(always)]
    pub fn reason(self) -> Counter {
        match self {
            Invalid::Malformed => Counter::DropMalformed,
            Invalid::Fragment => Counter::DropFragment,
            Invalid::Protocol => Counter::DropUnknownPort,
        }
    }
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
}

/// Validates the IPv4 header at `ip` and reads the TCP/UDP ports.
#[inline(always)]
pub fn flow(ctx: &TcContext, ip: *mut Ipv4Hdr) -> Result<Flow, Invalid> {
    let ip = unsafe { &*ip };
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
        _ => return Err(Invalid::Protocol),
    };
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if tot_len < ihl + l4_len || ETH_HLEN + tot_len > ctx.len() as usize {
        return Err(Invalid::Malformed);
    }
    let saddr = ip.src_addr;
    let daddr = ip.dst_addr;
    let l4_off = ETH_HLEN + ihl;
    if proto == proto::TCP {
        let tcp = pull_at::<TcpHdr>(ctx, l4_off).ok_or(Invalid::Malformed)?;
        let tcp = unsafe { &*tcp };
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
            csum_off: l4_off + 16,
        })
    } else {
        let udp = pull_at::<UdpHdr>(ctx, l4_off).ok_or(Invalid::Malformed)?;
        let udp = unsafe { &*udp };
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
            csum_off: l4_off + 6,
        })
    }
}
