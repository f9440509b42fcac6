//! The tests' one frame builder and checksum toolkit. Frames are built byte by byte, so that
//! any field can be made wrong; checksums are computed over whole headers (RFC 1071), never
//! with the datapath's incremental arithmetic: they are the oracle it is judged by.

use std::fmt::Write as _;

use gateway_common::{ETH_P_ARP, ETH_P_IP, proto};

use super::{CLIENT_MAC, NODE_MAC};

/// An address and a port.
pub type Endpoint = ([u8; 4], u16);

/// EtherTypes as a frame carries them.
pub const ETH_IP: [u8; 2] = ETH_P_IP.to_be_bytes();
pub const ETH_ARP: [u8; 2] = ETH_P_ARP.to_be_bytes();
pub const ETH_IPV6: [u8; 2] = [0x86, 0xdd];
pub const ETH_VLAN: [u8; 2] = [0x81, 0x00];
pub const ETH_QINQ: [u8; 2] = [0x88, 0xa8];

/// Offsets in an Ethernet + IPv4 frame without IP options.
pub const IP: usize = 14;
pub const IP_TOTAL_LEN: usize = IP + 2;
pub const IP_FRAGMENT: usize = IP + 6;
pub const IP_CHECK: usize = IP + 10;
pub const IP_SRC: usize = IP + 12;
pub const IP_DST: usize = IP + 16;
pub const L4: usize = IP + 20;
pub const TCP_DATA_OFFSET: usize = L4 + 12;
pub const TCP_CHECK: usize = L4 + 16;
pub const UDP_LEN: usize = L4 + 4;
pub const UDP_CHECK: usize = L4 + 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet + IPv4 frame of a TCP segment, a UDP datagram or an ICMP echo request, from
/// the client's MAC to the node's, every length and checksum right.
#[derive(Clone)]
pub struct Packet {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    /// Ports; an ICMP echo request's identifier and sequence number.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub ip_options: Vec<u8>,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// A UDP checksum of zero: none.
    pub udp_no_checksum: bool,
    /// Bytes after the IPv4 packet (Ethernet padding, a trailer).
    pub trailer: Vec<u8>,
}

impl Packet {
    /// A TCP SYN, a UDP datagram or an ICMP echo request without payload.
    pub fn new(src: Endpoint, dst: Endpoint, protocol: u8) -> Self {
        Packet {
            src: src.0,
            dst: dst.0,
            protocol,
            sport: src.1,
            dport: dst.1,
            tcp_flags: TCP_SYN,
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            payload: Vec::new(),
            udp_no_checksum: false,
            trailer: Vec::new(),
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let csum_at = match self.protocol {
            proto::TCP => {
                let doff = (20 + self.tcp_options.len()) / 4;
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0x10, 0x00, 0, 0, 0, 1]); // seq, ack
                l4.extend_from_slice(&[(doff as u8) << 4, self.tcp_flags, 0xff, 0xff]);
                l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                l4.extend_from_slice(&self.tcp_options);
                16
            }
            proto::UDP => {
                let len = (8 + self.payload.len()) as u16;
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&len.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                6
            }
            _ => {
                l4.extend_from_slice(&[8, 0, 0, 0]); // echo request, checksum
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                2
            }
        };
        l4.extend_from_slice(&self.payload);
        match self.protocol {
            proto::UDP if self.udp_no_checksum => {}
            proto::TCP | proto::UDP => {
                let sum = pseudo_header(&self.src, &self.dst, self.protocol, l4.len());
                let mut csum = !(ones_sum(&l4, sum) as u16);
                if csum == 0 && self.protocol == proto::UDP {
                    csum = 0xffff;
                }
                l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
            }
            // ICMP: the message alone, no pseudo-header.
            _ => {
                let csum = !(ones_sum(&l4, 0) as u16);
                l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
            }
        }

        let ihl = 20 + self.ip_options.len();
        let mut frame = Vec::with_capacity(IP + ihl + l4.len());
        frame.extend_from_slice(&NODE_MAC);
        frame.extend_from_slice(&CLIENT_MAC);
        frame.extend_from_slice(&ETH_IP);
        frame.push(0x40 | (ihl / 4) as u8);
        frame.push(0);
        frame.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, self.protocol, 0, 0]);
        frame.extend_from_slice(&self.src);
        frame.extend_from_slice(&self.dst);
        frame.extend_from_slice(&self.ip_options);
        frame.extend_from_slice(&l4);
        fix_ip_checksum(&mut frame, IP);
        frame.extend_from_slice(&self.trailer);
        frame
    }
}

#[derive(Clone, Copy)]
pub enum Tcp {
    Syn,
    SynAck,
    Ack,
    Fin,
    Rst,
}

pub fn tcp_frame(src: Endpoint, dst: Endpoint, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new(src, dst, proto::TCP);
    p.tcp_flags = match flags {
        Tcp::Syn => TCP_SYN,
        Tcp::SynAck => TCP_SYN | TCP_ACK,
        Tcp::Ack => TCP_ACK,
        Tcp::Fin => TCP_ACK | TCP_FIN,
        Tcp::Rst => TCP_RST,
    };
    p.payload = payload.to_vec();
    p.frame()
}

pub fn udp_frame(src: Endpoint, dst: Endpoint, payload: &[u8]) -> Vec<u8> {
    let mut p = Packet::new(src, dst, proto::UDP);
    p.payload = payload.to_vec();
    p.frame()
}

pub fn icmp_echo_request(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = Packet::new((src, 7), (dst, 1), proto::ICMP);
    p.payload = b"ping".to_vec();
    p.frame()
}

/// ICMP types and codes (RFC 792).
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// An ICMP error from `src` to `dst` quoting `quoted` (an IPv4 packet, or its head: the
/// caller cuts it), from the client's MAC to the node's, every outer length and checksum
/// right (the quoted bytes are taken as they are). `rest`: the four bytes after the
/// checksum (a fragmentation-needed's next-hop MTU in the last two).
pub fn icmp_error(
    src: [u8; 4],
    dst: [u8; 4],
    (kind, code): (u8, u8),
    rest: [u8; 4],
    quoted: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let csum = !(ones_sum(&icmp, 0) as u16);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    let mut frame = Vec::with_capacity(IP + 20 + icmp.len());
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ETH_IP);
    frame.extend_from_slice(&[0x45, 0xc0]);
    frame.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0xab, 0xcd, 0, 0, 64, proto::ICMP, 0, 0]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&icmp);
    fix_ip_checksum(&mut frame, IP);
    frame
}

/// The next-hop MTU field of a fragmentation-needed error.
pub fn mtu(mtu: u16) -> [u8; 4] {
    let [hi, lo] = mtu.to_be_bytes();
    [0, 0, hi, lo]
}

/// The IPv4 packet of a frame, cut to at most `len` bytes: what an error quotes of it.
pub fn quote(frame: &[u8], len: usize) -> Vec<u8> {
    frame[IP..frame.len().min(IP + len)].to_vec()
}

/// Asserts that the outer IPv4 checksum, the ICMP checksum (over the whole message) and the
/// quoted packet's IPv4 header checksum of an ICMP frame verify.
pub fn assert_icmp_checksums(frame: &[u8]) {
    let ip = &frame[IP..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(ones_sum(&ip[..ihl], 0), 0xffff, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let icmp = &ip[ihl..total];
    assert_eq!(ones_sum(icmp, 0), 0xffff, "ICMP checksum");
    if icmp[0] != ICMP_ECHO_REPLY && icmp.len() >= 8 + 20 {
        assert_eq!(
            ones_sum(&icmp[8..28], 0),
            0xffff,
            "quoted IPv4 header checksum"
        );
    }
}

/// An ARP frame (`op` 1: request, 2: reply) from the client's MAC, broadcast.
pub fn arp_frame(op: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&ETH_ARP);
    v.extend_from_slice(&[0, 1]); // Ethernet
    v.extend_from_slice(&ETH_IP);
    v.extend_from_slice(&[6, 4]);
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&sender);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v
}

pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    arp_frame(1, sender, target)
}

pub fn ipv6_frame(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = NODE_MAC.to_vec();
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ETH_IPV6);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[next_header, 64]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(payload);
    frame
}

/// One's complement sum over 16-bit words, folded.
pub fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// One's complement sum, folded, with the two zeros taken as one (0xffff: verifies).
pub fn residue(data: &[u8], initial: u32) -> u16 {
    match ones_sum(data, initial) as u16 {
        0 => 0xffff,
        r => r,
    }
}

/// Writes the right header checksum into the IPv4 header at `ip`, if it is long enough.
pub fn fix_ip_checksum(frame: &mut [u8], ip: usize) {
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if ihl < 20 || frame.len() < ip + ihl {
        return;
    }
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let sum = !(ones_sum(&frame[ip..ip + ihl], 0) as u16);
    frame[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
}

/// The sum of the TCP/UDP pseudo-header.
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u32 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    ones_sum(&pseudo, 0)
}

/// Asserts that the IPv4 header checksum and the TCP/UDP checksum of `frame` verify.
pub fn assert_checksums(frame: &[u8]) {
    let ip = &frame[IP..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(ones_sum(&ip[..ihl], 0), 0xffff, "IPv4 header checksum");
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    if ip[9] == proto::UDP && l4[6..8] == [0, 0] {
        return; // no checksum
    }
    let pseudo = pseudo_header(&ip[12..16], &ip[16..20], ip[9], l4.len());
    assert_eq!(ones_sum(l4, pseudo), 0xffff, "L4 checksum");
}

/// The destination address and port of a TCP/UDP frame.
pub fn ip_dst(frame: &[u8]) -> Endpoint {
    let l4 = IP + usize::from(frame[IP] & 0x0f) * 4;
    (
        frame[IP_DST..IP_DST + 4].try_into().unwrap(),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

/// The source address and port of a TCP/UDP frame.
pub fn ip_src(frame: &[u8]) -> Endpoint {
    let l4 = IP + usize::from(frame[IP] & 0x0f) * 4;
    (
        frame[IP_SRC..IP_SRC + 4].try_into().unwrap(),
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
