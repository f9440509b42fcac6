//! Bad input, tried and survived: random and mutated frames through the real programs
//! (BPF_PROG_TEST_RUN), each one through ingress and through egress, judged by an oracle
//! written here from the README's rules, not from the datapath's code.
//!
//! The frames arrive on (and leave by) the uplink of the test's own network namespace,
//! whose address flows to backends on other nodes are SNATed to (see `support::netns`).
//!
//! The oracle's rules:
//! - ingress rewrites exactly the well-formed IPv4 TCP/UDP packets to a VIP port with
//!   backends (DNAT to one of them) from a client the service's source ranges admit; to a
//!   backend on another node it also SNATs them to the uplink's address with a port no
//!   other flow to that backend holds, and sends them on (redirect) to that node's MAC; an
//!   ARP request for the announced VIP gets the exact reply; every other frame comes out
//!   byte for byte unchanged, passed, or dropped with its reason when it is addressed to a
//!   VIP (fragment, malformed, ICMP, unknown port, outside the source ranges, no backend);
//! - ingress also rewrites exactly the well-formed replies from a backend on another node
//!   to the port a flow SNATed to it holds (source back to the VIP port, destination back
//!   to the client) and sends them on to the client (its MAC when the node knows it; a
//!   client without a route is dropped as `drop_no_route`, unchanged);
//! - egress rewrites exactly the well-formed replies from a local backend on a flow the
//!   ingress side balanced to it (source back to the VIP port); everything else passes
//!   unchanged;
//! - ICMP (README, "ICMP"): ingress answers an echo request to a VIP (code 0, no IP
//!   options, to a unicast MAC) with the exact reply, and drops any other ICMP to a VIP
//!   (`drop_icmp`); it translates an error to a VIP whose quote (a 20-byte IPv4 header, not
//!   a later fragment, TCP or UDP, 8 bytes of it at least) is a tracked flow's reply as it
//!   left from the VIP, to the flow's backend (a SNATed one from the node's address, sent
//!   on to the other node), and drops every other error to a VIP (`drop_icmp_error`); it
//!   translates an error to the node about a packet it SNATed (to the client, from the VIP,
//!   sent on as the flow's replies). Egress translates an error about a client's packet to
//!   a local backend on a tracked flow (from the VIP). Errors not to a VIP that name a
//!   backend but no tracked flow are passed and counted (`icmp_error_passed`). A
//!   translation changes only the addresses and ports named, the checksums over them (the
//!   quoted TCP one only with the whole header quoted, a UDP one of zero never) and the MACs
//!   of a frame sent on, and keeps every checksum's verdict, the quoted TCP/UDP one over the
//!   bytes quoted;
//! - a rewrite changes only the addresses, the ports, the two checksums and (for a frame
//!   sent on) the MACs, and keeps each checksum's verdict: a packet whose checksums verify
//!   comes out with checksums that verify, one whose checksums do not stays as wrong as it
//!   was (the datapath does not verify checksums, the receiving stack does);
//! - the counters move by exactly the reasons predicted.
//!
//! "Well-formed", as the README's drop reasons define it: version 4, a header length of at
//! least 20 bytes, a total length that covers the IP header and the whole TCP or UDP
//! header and lies within the frame (Ethernet padding after it is fine), a TCP data offset
//! of at least 20 bytes within the total length, a UDP length of at least 8 within it, and
//! not a fragment. IP options are carried opaquely, as are the checksums.
//!
//! Frames come from the shared builder (`support/frame.rs`: byte by byte, so any field can
//! be made wrong) and are judged with its checksum oracle. Seeded (`support/rng.rs`):
//! `FUZZ_SEED=<u64>` replays a run; a failure prints the seed, the frame's number and
//! generator, the frame and the output in hex.

use std::collections::{BTreeMap, HashMap, HashSet};

use gateway_agent::{
    capacity::Capacity,
    config::Ipv4Net,
    datapath::tcx::Direction,
    model::{Announcement, DesiredState, Protocol},
};
use gateway_common::{Counter, CtKey, proto};

mod support;
use support::{rng::Rng, *};

/// Random frames on top of the deterministic truncation sweep.
const RANDOM_FRAMES: usize = 100_000;
const DEFAULT_SEED: u64 = 0x6761_7465_7761_7921;

// ---------------------------------------------------------------------------------------
// The oracle.

/// An address, a port and a protocol.
type Socket = ([u8; 4], u16, u8);

/// The Cluster service's VIP (its backends run on the other node).
const VIP_CLUSTER: [u8; 4] = [192, 168, 10, 52];

/// What the fuzzer serves: the reference's services, source ranges on the external one,
/// and a Cluster service (TCP and UDP) whose backend runs on the other node; the internal
/// VIP announced on the uplink.
fn fuzz_state() -> DesiredState {
    let mut desired = reference_state();
    desired.frontends[2].source_ranges = Some(
        ["192.168.10.0/25", "10.0.0.0/8"]
            .map(|n| n.parse().unwrap())
            .to_vec(),
    );
    desired.frontends.push(cluster(frontend(
        "cluster",
        VIP_CLUSTER,
        80,
        Protocol::Tcp,
        None,
        &[(POD_REMOTE, 8080)],
    )));
    desired.frontends.push(cluster(frontend(
        "cluster-dns",
        VIP_CLUSTER,
        53,
        Protocol::Udp,
        None,
        &[(POD_REMOTE, 5353)],
    )));
    desired.announcements = vec![Announcement {
        interface: netns::UPLINK.into(),
        vip: VIP_AFFINITY.into(),
        service: svc("internal"),
        policy: "l2-policy".into(),
    }];
    desired
}

/// One service as the oracle sees it.
struct Served {
    backends: Vec<Endpoint>,
    /// Its backends run on the other node: SNAT.
    remote: bool,
    /// `Some`: only clients in these prefixes start flows.
    ranges: Option<Vec<Ipv4Net>>,
}

impl Served {
    fn admits(&self, client: [u8; 4]) -> bool {
        self.ranges
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|net| net.contains(client.into())))
    }
}

/// The services as programmed, as the oracle sees them.
struct World {
    /// (VIP, port, protocol) -> the service.
    services: HashMap<Socket, Served>,
    vips: Vec<[u8; 4]>,
    /// VIPs announced on the interface the test frames arrive on.
    announced: Vec<[u8; 4]>,
    /// (backend address, port, protocol) -> the frontends (VIP, port) it serves.
    frontends_of: HashMap<Socket, Vec<Endpoint>>,
    /// Addresses of backends on the other node.
    remote: HashSet<[u8; 4]>,
}

impl World {
    fn of(desired: &DesiredState) -> Self {
        let mut world = World {
            services: HashMap::new(),
            vips: Vec::new(),
            announced: desired
                .announcements
                .iter()
                .filter(|a| a.interface == netns::UPLINK)
                .map(|a| a.vip.octets())
                .collect(),
            frontends_of: HashMap::new(),
            remote: HashSet::new(),
        };
        for f in &desired.frontends {
            let protocol = match f.protocol {
                Protocol::Tcp => proto::TCP,
                Protocol::Udp => proto::UDP,
            };
            let vip = f.vip.octets();
            let backends: Vec<Endpoint> = f
                .backends
                .iter()
                .map(|b| (b.addr.octets(), b.port))
                .collect();
            for &(addr, port) in &backends {
                world
                    .frontends_of
                    .entry((addr, port, protocol))
                    .or_default()
                    .push((vip, f.port));
            }
            let remote = !f.backends.is_empty() && f.backends.iter().all(|b| b.remote);
            if remote {
                world.remote.extend(backends.iter().map(|b| b.0));
            }
            let served = Served {
                backends,
                remote,
                ranges: f.source_ranges.clone(),
            };
            world.services.insert((vip, f.port, protocol), served);
            if !world.vips.contains(&vip) {
                world.vips.push(vip);
            }
        }
        world
    }
}

/// What the IPv4 header and the TCP/UDP header of a frame say, as far as they can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Not IPv4, or too short for the fixed IPv4 header: the destination cannot be read.
    NotIpv4,
    Malformed,
    Fragment,
    /// Neither TCP, UDP nor ICMP: this protocol.
    OtherProtocol(u8),
    Flow(Flow),
    /// An ICMP message whose header lies within the total length.
    Icmp(Icmp),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Icmp {
    src: [u8; 4],
    dst: [u8; 4],
    /// Offset of the ICMP header; bytes from it to the end of the IPv4 packet.
    at: usize,
    len: usize,
    kind: u8,
    code: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    protocol: u8,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    /// Offset of the L4 header, and of its checksum field.
    l4: usize,
    csum: usize,
    /// Bytes the L4 checksum covers.
    l4_len: usize,
}

/// The destination address, when the fixed IPv4 header is there to read it from, and the
/// class of the packet.
fn classify(frame: &[u8]) -> (Option<[u8; 4]>, Class) {
    if frame.len() < 14 + 20 || frame[12..14] != ETH_IP {
        return (None, Class::NotIpv4);
    }
    let ip = &frame[14..];
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let version = ip[0] >> 4;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if version != 4 || ihl < 20 {
        return (Some(dst), Class::Malformed);
    }
    let more_fragments = ip[6] & 0x20 != 0;
    let offset = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]);
    if more_fragments || offset != 0 {
        return (Some(dst), Class::Fragment);
    }
    let protocol = ip[9];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if protocol == proto::ICMP {
        if total < ihl + 8 || 14 + total > frame.len() {
            return (Some(dst), Class::Malformed);
        }
        let at = 14 + ihl;
        let icmp = Icmp {
            src: ip[12..16].try_into().unwrap(),
            dst,
            at,
            len: total - ihl,
            kind: frame[at],
            code: frame[at + 1],
        };
        return (Some(dst), Class::Icmp(icmp));
    }
    let l4_min = match protocol {
        proto::TCP => 20,
        proto::UDP => 8,
        _ => return (Some(dst), Class::OtherProtocol(protocol)),
    };
    if total < ihl + l4_min || 14 + total > frame.len() {
        return (Some(dst), Class::Malformed);
    }
    let l4 = 14 + ihl;
    let covered = if protocol == proto::TCP {
        let doff = usize::from(frame[l4 + 12] >> 4) * 4;
        if doff < 20 || ihl + doff > total {
            return (Some(dst), Class::Malformed);
        }
        total - ihl
    } else {
        let udp_len = usize::from(u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]));
        if udp_len < 8 || ihl + udp_len > total {
            return (Some(dst), Class::Malformed);
        }
        udp_len
    };
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let flow = Flow {
        protocol,
        src: ip[12..16].try_into().unwrap(),
        dst,
        sport: port(l4),
        dport: port(l4 + 2),
        l4,
        csum: l4 + if protocol == proto::TCP { 16 } else { 6 },
        l4_len: covered,
    };
    (Some(dst), Class::Flow(flow))
}

/// The two checksum residues of a flow's packet (0xffff: verifies); no L4 residue for a UDP
/// datagram without checksum.
fn residues(frame: &[u8], flow: &Flow) -> (u16, Option<u16>) {
    let ihl = flow.l4 - 14;
    let ip = residue(&frame[14..14 + ihl], 0);
    if flow.protocol == proto::UDP && frame[flow.csum..flow.csum + 2] == [0, 0] {
        return (ip, None);
    }
    let sum = pseudo_header(&frame[26..30], &frame[30..34], flow.protocol, flow.l4_len);
    (
        ip,
        Some(residue(&frame[flow.l4..flow.l4 + flow.l4_len], sum)),
    )
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Passed on, unchanged.
    Pass,
    /// Dropped, unchanged, the counter moved by one.
    Drop(Counter),
    /// Turned into exactly this ARP reply and sent back out.
    ArpReply(Vec<u8>),
    /// Destination rewritten to one of these backends.
    Dnat(Vec<Endpoint>),
    /// Destination rewritten to one of these backends on the other node, source to the
    /// uplink's address and a port no other flow to it holds, sent on to that node.
    Snat(Vec<Endpoint>),
    /// A reply to a SNATed flow: source rewritten to the frontend, destination to the
    /// client, sent on with these MACs (`None`: left to the kernel's neighbour resolution).
    SnatReply {
        frontend: Endpoint,
        client: Endpoint,
        macs: Option<([u8; 6], [u8; 6])>,
    },
    /// Source rewritten to one of these frontends.
    RevNat(Vec<Endpoint>),
    /// Passed on unchanged, the counter moved by one.
    PassCounted(Counter),
    /// Turned into the echo reply and sent back out.
    EchoReply,
    /// An ICMP error translated.
    IcmpNat(Translated),
}

impl Expect {
    fn name(&self) -> String {
        match self {
            Expect::Pass => "pass".into(),
            Expect::Drop(c) => c.name().into(),
            Expect::ArpReply(_) => "arp_reply".into(),
            Expect::Dnat(_) => "dnat".into(),
            Expect::Snat(_) => "snat".into(),
            Expect::SnatReply { .. } => "snat_reply".into(),
            Expect::RevNat(_) => "rev_nat".into(),
            Expect::PassCounted(c) => c.name().into(),
            Expect::EchoReply => "icmp_echo_reply".into(),
            Expect::IcmpNat(_) => "icmp_error_nat".into(),
        }
    }
}

fn expect_ingress(world: &World, tracked: &Tracked, frame: &[u8]) -> Expect {
    if frame.len() >= 14 && frame[12..14] == ETH_ARP {
        return expect_arp(world, frame);
    }
    let (dst, class) = classify(frame);
    let Some(dst) = dst.filter(|d| world.vips.contains(d)) else {
        return expect_snat_reply(world, tracked, frame, class);
    };
    match class {
        Class::NotIpv4 => Expect::Pass,
        Class::Malformed => Expect::Drop(Counter::DropMalformed),
        Class::Fragment => Expect::Drop(Counter::DropFragment),
        Class::Icmp(icmp) => expect_icmp_to_vip(tracked, frame, &icmp),
        Class::OtherProtocol(_) => Expect::Drop(Counter::DropUnknownPort),
        Class::Flow(flow) => match world.services.get(&(dst, flow.dport, flow.protocol)) {
            None => Expect::Drop(Counter::DropUnknownPort),
            // Flows of clients outside the ranges are never tracked (the ranges stay).
            Some(s) if !s.admits(flow.src) => Expect::Drop(Counter::DropSourceRange),
            Some(s) if s.backends.is_empty() => Expect::Drop(Counter::DropNoBackend),
            Some(s) if s.remote => Expect::Snat(s.backends.clone()),
            Some(s) => Expect::Dnat(s.backends.clone()),
        },
    }
}

/// A packet to something else than a VIP: the reply of a SNATed flow when it comes from the
/// flow's backend to the very address and port the flow holds; passed otherwise.
fn expect_snat_reply(world: &World, tracked: &Tracked, frame: &[u8], class: Class) -> Expect {
    if let Class::Icmp(icmp) = class {
        return expect_icmp_to_node(tracked, frame, &icmp);
    }
    let Class::Flow(flow) = class else {
        return Expect::Pass;
    };
    if !world.remote.contains(&flow.src) || flow.dst != NODE {
        return Expect::Pass;
    }
    let tuple = ((flow.src, flow.sport), flow.dport, flow.protocol);
    let Some(&key) = tracked.snat_owner.get(&tuple) else {
        return Expect::Pass;
    };
    let Some(&(backend, Some(port))) = tracked.flows.get(&key) else {
        return Expect::Pass;
    };
    if backend != (flow.src, flow.sport) || port != flow.dport {
        return Expect::Pass;
    }
    let (client, client_port, _, vip, vip_port) = key;
    // The test namespace routes only the segment (not to its broadcast address nor to the
    // node itself), and knows the MACs of CLIENT and of the other node only.
    let Some(macs) = route_to_client(client) else {
        return Expect::Drop(Counter::DropNoRoute);
    };
    Expect::SnatReply {
        frontend: (vip, vip_port),
        client: (client, client_port),
        macs,
    }
}

/// How the test namespace routes a frame to a client: `None` when it has no route (it
/// routes only the segment, not to its broadcast address nor to the node itself); else the
/// MACs, when it knows them (CLIENT and the other node only; `None` is left to the kernel's
/// neighbour resolution).
fn route_to_client(client: [u8; 4]) -> Option<Option<([u8; 6], [u8; 6])>> {
    if client[..3] != [192, 168, 10] || client[3] == 255 || client == NODE {
        return None;
    }
    Some(match client {
        CLIENT => Some((CLIENT_MAC, NODE_MAC)),
        REMOTE_NODE => Some((REMOTE_NODE_MAC, NODE_MAC)),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// The oracle for ICMP (README, "ICMP"): echo requests to a VIP answered; errors whose
// quoted packet is exactly a tracked flow's translated; nothing else rewritten.

/// The packet an error quotes, as the README says it must be to be translated: an IPv4
/// header of 20 bytes, not a later fragment, TCP or UDP, with at least 8 bytes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quote {
    /// Offset of the quoted IPv4 header.
    at: usize,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    protocol: u8,
    /// Offset of the quoted L4 header, and how many of its bytes are quoted.
    l4: usize,
    l4_len: usize,
    /// Offset of its TCP/UDP checksum, when translated (TCP: only with the whole header).
    csum: Option<usize>,
}

fn is_error(icmp: &Icmp) -> bool {
    matches!(
        icmp.kind,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    )
}

fn quote_of(frame: &[u8], icmp: &Icmp) -> Option<Quote> {
    let quoted = icmp.len - 8;
    let at = icmp.at + 8;
    if quoted < 28 {
        return None;
    }
    let q = &frame[at..];
    let later_fragment = u16::from_be_bytes([q[6], q[7]]) & 0x1fff != 0;
    if q[0] != 0x45 || later_fragment || !matches!(q[9], proto::TCP | proto::UDP) {
        return None;
    }
    let l4 = at + 20;
    let csum = match q[9] {
        proto::TCP => (quoted >= 40).then_some(l4 + 16),
        _ => Some(l4 + 6),
    };
    let port = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
    Some(Quote {
        at,
        src: q[12..16].try_into().unwrap(),
        dst: q[16..20].try_into().unwrap(),
        sport: port(l4),
        dport: port(l4 + 2),
        protocol: q[9],
        l4,
        l4_len: quoted - 20,
        csum,
    })
}

/// A translated ICMP error: the new outer addresses and quoted ends, where they change.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Translated {
    outer_src: Option<[u8; 4]>,
    outer_dst: Option<[u8; 4]>,
    inner_src: Option<Endpoint>,
    inner_dst: Option<Endpoint>,
    /// Sent on by the datapath with these MACs (`Some(None)`: MACs left to the kernel);
    /// `None`: handed to the stack.
    routed: Option<Option<([u8; 6], [u8; 6])>>,
    /// The flow's conntrack key: when its entry was evicted, nothing is translated.
    flow: Option<FlowKey>,
}

fn expect_icmp_to_vip(tracked: &Tracked, frame: &[u8], icmp: &Icmp) -> Expect {
    if icmp.kind == ICMP_ECHO_REQUEST && icmp.code == 0 {
        let unicast = frame[0] & 1 == 0;
        return if icmp.at == 14 + 20 && unicast {
            Expect::EchoReply
        } else {
            Expect::Drop(Counter::DropIcmp)
        };
    }
    if !is_error(icmp) {
        return Expect::Drop(Counter::DropIcmp);
    }
    // About a reply that left as the VIP: VIP:port -> client.
    let Some(q) = quote_of(frame, icmp).filter(|q| q.src == icmp.dst) else {
        return Expect::Drop(Counter::DropIcmpError);
    };
    let key = (q.dst, q.dport, q.protocol, q.src, q.sport);
    let Some(&(backend, snat)) = tracked.flows.get(&key) else {
        return Expect::Drop(Counter::DropIcmpError);
    };
    Expect::IcmpNat(match snat {
        None => Translated {
            outer_dst: Some(backend.0),
            inner_src: Some(backend),
            flow: Some(key),
            ..Default::default()
        },
        Some(port) => Translated {
            outer_src: Some(NODE),
            outer_dst: Some(backend.0),
            inner_src: Some(backend),
            inner_dst: Some((NODE, port)),
            routed: Some(Some((REMOTE_NODE_MAC, NODE_MAC))),
            flow: Some(key),
        },
    })
}

fn expect_icmp_to_node(tracked: &Tracked, frame: &[u8], icmp: &Icmp) -> Expect {
    if !is_error(icmp) {
        return Expect::Pass;
    }
    // About a packet SNATed to a backend on another node: node:port -> backend.
    let remote_bit = gateway_common::vip_filter_bit(POD_REMOTE);
    let Some(q) = quote_of(frame, icmp)
        .filter(|q| q.src == icmp.dst && gateway_common::vip_filter_bit(q.dst) == remote_bit)
    else {
        return Expect::Pass;
    };
    let tuple = ((q.dst, q.dport), q.sport, q.protocol);
    let owner = tracked.snat_owner.get(&tuple).copied().filter(|key| {
        q.src == NODE && tracked.flows.get(key) == Some(&((q.dst, q.dport), Some(q.sport)))
    });
    let Some(key) = owner else {
        return Expect::PassCounted(Counter::IcmpErrorPassed);
    };
    let (client, client_port, _, vip, vip_port) = key;
    let Some(macs) = route_to_client(client) else {
        return Expect::Drop(Counter::DropNoRoute);
    };
    Expect::IcmpNat(Translated {
        outer_src: Some(vip),
        outer_dst: Some(client),
        inner_src: Some((client, client_port)),
        inner_dst: Some((vip, vip_port)),
        routed: Some(macs),
        flow: None,
    })
}

/// At egress: an error about a client's packet to a local backend (client -> backend).
fn expect_icmp_from_backend(world: &World, tracked: &Tracked, frame: &[u8], icmp: &Icmp) -> Expect {
    if !is_error(icmp) {
        return Expect::Pass;
    }
    let Some(q) = quote_of(frame, icmp).filter(|q| q.src == icmp.dst) else {
        return Expect::Pass;
    };
    let backend = (q.dst, q.dport);
    let Some(frontends) = world.frontends_of.get(&(q.dst, q.dport, q.protocol)) else {
        return Expect::Pass;
    };
    let flow = frontends.iter().find_map(|&(vip, port)| {
        let key = (q.src, q.sport, q.protocol, vip, port);
        (tracked.flows.get(&key) == Some(&(backend, None))).then_some((key, (vip, port)))
    });
    match flow {
        Some((key, frontend)) => Expect::IcmpNat(Translated {
            outer_src: Some(frontend.0),
            inner_dst: Some(frontend),
            flow: Some(key),
            ..Default::default()
        }),
        None => Expect::PassCounted(Counter::IcmpErrorPassed),
    }
}

fn expect_arp(world: &World, frame: &[u8]) -> Expect {
    if frame.len() < 14 + 28 {
        return Expect::Pass;
    }
    let arp = &frame[14..];
    let (sha, spa, tpa) = (&arp[8..14], &arp[14..18], &arp[24..28]);
    let request = arp[0..2] == [0, 1] // Ethernet
        && arp[2..4] == ETH_IP
        && arp[4] == 6
        && arp[5] == 4
        && arp[6..8] == [0, 1]
        && spa != tpa; // gratuitous ARP asks nothing
    if !request || !world.announced.iter().any(|v| v == tpa) {
        return Expect::Pass;
    }
    let mut reply = Vec::with_capacity(frame.len());
    reply.extend_from_slice(sha);
    reply.extend_from_slice(&NODE_MAC);
    reply.extend_from_slice(&ETH_ARP);
    reply.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    reply.extend_from_slice(&NODE_MAC);
    reply.extend_from_slice(tpa);
    reply.extend_from_slice(sha);
    reply.extend_from_slice(spa);
    reply.extend_from_slice(&frame[42..]);
    Expect::ArpReply(reply)
}

/// A flow the ingress side balanced: (client, client port, protocol, VIP, VIP port).
type FlowKey = ([u8; 4], u16, u8, [u8; 4], u16);
/// A backend, the SNAT port a flow holds on it, and the protocol.
type SnatTuple = (Endpoint, u16, u8);

/// The flows balanced so far.
#[derive(Default)]
struct Tracked {
    /// Each flow's backend, and its SNAT port when it is SNATed.
    flows: HashMap<FlowKey, (Endpoint, Option<u16>)>,
    /// The same keys, to pick from.
    keys: Vec<FlowKey>,
    /// The flow each SNAT tuple was last given to.
    snat_owner: HashMap<SnatTuple, FlowKey>,
    /// The SNATed flows' keys, to pick from.
    snat_keys: Vec<FlowKey>,
}

fn expect_egress(world: &World, tracked: &Tracked, frame: &[u8]) -> Expect {
    let flow = match classify(frame).1 {
        Class::Flow(flow) => flow,
        Class::Icmp(icmp) => return expect_icmp_from_backend(world, tracked, frame, &icmp),
        _ => return Expect::Pass,
    };
    let backend = (flow.src, flow.sport);
    let frontends: Vec<Endpoint> = world
        .frontends_of
        .get(&(flow.src, flow.sport, flow.protocol))
        .into_iter()
        .flatten()
        .copied()
        .filter(|&(vip, port)| {
            // A SNATed flow's replies come back to the node, never past it.
            let key = (flow.dst, flow.dport, flow.protocol, vip, port);
            tracked.flows.get(&key) == Some(&(backend, None))
        })
        .collect();
    if frontends.is_empty() {
        Expect::Pass
    } else {
        Expect::RevNat(frontends)
    }
}

// ---------------------------------------------------------------------------------------
// Running frames and judging the results.

/// The counters whose every move the oracle predicts.
const PREDICTED: [Counter; 17] = [
    Counter::IcmpEchoReply,
    Counter::IcmpErrorNat,
    Counter::DropIcmpError,
    Counter::IcmpErrorPassed,
    Counter::ArpReply,
    Counter::RevNat,
    Counter::DropUnknownPort,
    Counter::DropIcmp,
    Counter::DropNoBackend,
    Counter::DropBackendGone,
    Counter::DropFragment,
    Counter::DropMalformed,
    Counter::DropNatFailed,
    Counter::DropSourceRange,
    Counter::DropSnatExhausted,
    Counter::DropNoSnatAddr,
    Counter::DropNoRoute,
];

struct Fuzzer {
    h: Harness,
    world: World,
    seed: u64,
    rng: Rng,
    /// Flows balanced so far.
    tracked: Tracked,
    /// Clients seen, to come back with (conntrack hits).
    clients: Vec<Endpoint>,
    /// The counters when last read, by `Counter as usize`.
    counters: Vec<u64>,
    /// Predicted counter moves since then, and what was run since then.
    pending: Vec<u64>,
    since_read: Vec<String>,
    /// Frames run, by generator; outcomes, by direction and kind.
    frames: BTreeMap<&'static str, usize>,
    outcomes: BTreeMap<String, usize>,
    refused: BTreeMap<String, usize>,
    evicted: usize,
    runs: usize,
    /// Non-VIP addresses that share a VIP's filter bit.
    twins: Vec<[u8; 4]>,
}

impl Fuzzer {
    fn new(seed: u64) -> Self {
        let desired = fuzz_state();
        let h = Harness::with(&desired, Capacity::default());
        let counters = read_counters(&h);
        Fuzzer {
            h,
            world: World::of(&desired),
            seed,
            rng: Rng::new(seed),
            tracked: Tracked::default(),
            clients: vec![(CLIENT, 40000)],
            counters,
            pending: vec![0; Counter::COUNT as usize],
            since_read: Vec::new(),
            frames: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            refused: BTreeMap::new(),
            evicted: 0,
            runs: 0,
            twins: filter_twins(),
        }
    }

    fn fail(&self, n: usize, generator: &str, dir: Direction, frame: &[u8], why: String) -> ! {
        panic!(
            "seed {:#x} (FUZZ_SEED={}), frame #{n} from {generator:?}, {dir:?}:\n{why}\n\
             frame: {}",
            self.seed,
            self.seed,
            hex(frame)
        )
    }

    /// Runs `frame` through ingress, then egress, and judges both.
    fn run(&mut self, n: usize, generator: &'static str, frame: &[u8]) {
        *self.frames.entry(generator).or_default() += 1;
        for dir in Direction::ALL {
            self.run_one(n, generator, dir, frame);
        }
    }

    fn run_one(&mut self, n: usize, generator: &'static str, dir: Direction, frame: &[u8]) {
        let expect = match dir {
            Direction::Ingress => expect_ingress(&self.world, &self.tracked, frame),
            Direction::Egress => expect_egress(&self.world, &self.tracked, frame),
        };
        let uplink = self.h.uplink;
        let (verdict, out) = match self.h.try_run_on(dir.program(), uplink, frame) {
            Ok((verdict, out, _)) => (verdict, out),
            Err(error) => {
                // Only frames the kernel cannot make an skb of; the oracle says which.
                if !kernel_refuses(frame) {
                    self.fail(
                        n,
                        generator,
                        dir,
                        frame,
                        format!("test_run failed: {error}"),
                    );
                }
                *self.refused.entry(refusal(frame)).or_default() += 1;
                return;
            }
        };
        self.runs += 1;
        let mut expect = expect;
        if let Expect::RevNat(_) = &expect
            && verdict == PASS
            && out == frame
            && self.evicted_from_conntrack(frame)
        {
            // The LRU table made room: the flow is no longer tracked, so not rewritten.
            self.evicted += 1;
            expect = Expect::Pass;
        }
        if let Expect::IcmpNat(Translated {
            flow: Some(key), ..
        }) = &expect
            && out == frame
            && verdict != OK
            && verdict != REDIRECT
            && self.h.dp.maps.conntrack.get(&ct_key(key), 0).is_err()
        {
            // The LRU table made room: the flow the error is about is no longer tracked.
            self.evicted += 1;
            expect = match dir {
                Direction::Ingress => Expect::Drop(Counter::DropIcmpError),
                Direction::Egress => Expect::PassCounted(Counter::IcmpErrorPassed),
            };
        }
        if let Err(why) = self.judge(&expect, frame, verdict, &out) {
            let why = format!(
                "expected {expect:?}, got verdict {verdict:#x}: {why}\noutput: {}",
                hex(&out)
            );
            self.fail(n, generator, dir, frame, why);
        }
        let kind = format!("{dir} {}", expect.name());
        *self.outcomes.entry(kind).or_default() += 1;

        let moved = match &expect {
            Expect::Drop(c) => Some(*c),
            Expect::ArpReply(_) => Some(Counter::ArpReply),
            Expect::RevNat(_) | Expect::SnatReply { .. } => Some(Counter::RevNat),
            Expect::PassCounted(c) => Some(*c),
            Expect::EchoReply => Some(Counter::IcmpEchoReply),
            Expect::IcmpNat(_) => Some(Counter::IcmpErrorNat),
            Expect::Pass | Expect::Dnat(_) | Expect::Snat(_) => None,
        };
        if let Some(c) = moved {
            self.pending[c as usize] += 1;
        }
        self.since_read
            .push(format!("#{n} {generator} {dir:?} {}", hex(frame)));
        if moved.is_some() || self.since_read.len() >= 512 {
            self.check_counters(n, generator, dir, frame);
        }
    }

    /// Whether the conntrack entry of the reply's flow is gone (LRU eviction).
    fn evicted_from_conntrack(&self, frame: &[u8]) -> bool {
        let Class::Flow(flow) = classify(frame).1 else {
            return false;
        };
        self.world
            .frontends_of
            .get(&(flow.src, flow.sport, flow.protocol))
            .into_iter()
            .flatten()
            .all(|&(vip, port)| {
                let key = CtKey {
                    client_addr: flow.dst,
                    vip,
                    client_port: flow.dport,
                    vip_port: port,
                    proto: flow.protocol,
                    _pad: [0; 3],
                };
                self.h.dp.maps.conntrack.get(&key, 0).is_err()
            })
    }

    fn judge(
        &mut self,
        expect: &Expect,
        frame: &[u8],
        verdict: u32,
        out: &[u8],
    ) -> Result<(), String> {
        let unchanged = |want: u32| {
            if verdict != want {
                return Err(format!("verdict {verdict:#x}, expected {want:#x}"));
            }
            if out != frame {
                return Err("the frame was changed".into());
            }
            Ok(())
        };
        let flow_key = |frame: &[u8]| {
            let Class::Flow(flow) = classify(frame).1 else {
                unreachable!("only flows are rewritten")
            };
            (flow.src, flow.sport, flow.protocol, flow.dst, flow.dport)
        };
        match expect {
            Expect::Pass | Expect::PassCounted(_) => unchanged(PASS),
            Expect::Drop(_) => unchanged(SHOT),
            Expect::EchoReply => echo_replied(frame, out, verdict),
            Expect::IcmpNat(t) => icmp_translated(frame, out, verdict, t),
            Expect::ArpReply(reply) => {
                if verdict != REDIRECT || out != reply.as_slice() {
                    return Err(format!("expected the reply {}", hex(reply)));
                }
                Ok(())
            }
            Expect::Dnat(backends) => {
                let to = rewritten(frame, out, verdict, OK, Rewrite::Destination)?.dst;
                if !backends.contains(&to) {
                    return Err(format!("DNAT to {to:?}, not a backend of the service"));
                }
                self.track(flow_key(frame), to, None);
                Ok(())
            }
            Expect::Snat(backends) => {
                let macs = Some((REMOTE_NODE_MAC, NODE_MAC));
                let after = rewritten(frame, out, verdict, REDIRECT, Rewrite::Both(macs))?;
                if !backends.contains(&after.dst) {
                    return Err(format!(
                        "DNAT to {:?}, not a backend of the service",
                        after.dst
                    ));
                }
                let (addr, port) = after.src;
                if addr != NODE {
                    return Err(format!("SNAT to {addr:?}, not the uplink's address"));
                }
                let key = flow_key(frame);
                let tuple = (after.dst, port, key.2);
                if let Some(&owner) = self.tracked.snat_owner.get(&tuple)
                    && owner != key
                    && self.tracked.flows.get(&owner) == Some(&(after.dst, Some(port)))
                {
                    return Err(format!(
                        "SNAT port {port} to {:?} is held by the flow {owner:?}",
                        after.dst
                    ));
                }
                self.track(key, after.dst, Some(port));
                Ok(())
            }
            Expect::SnatReply {
                frontend,
                client,
                macs,
            } => {
                let after = rewritten(frame, out, verdict, REDIRECT, Rewrite::Both(*macs))?;
                if (after.src, after.dst) != (*frontend, *client) {
                    return Err(format!(
                        "translated to {:?} -> {:?}, not {frontend:?} -> {client:?}",
                        after.src, after.dst
                    ));
                }
                Ok(())
            }
            Expect::RevNat(frontends) => {
                let from = rewritten(frame, out, verdict, OK, Rewrite::Source)?.src;
                if !frontends.contains(&from) {
                    return Err(format!("reverse NAT to {from:?}, not the flow's frontend"));
                }
                Ok(())
            }
        }
    }

    /// Records a balanced flow (and the SNAT tuple it holds).
    fn track(&mut self, key: FlowKey, backend: Endpoint, snat: Option<u16>) {
        let tracked = &mut self.tracked;
        if tracked.flows.insert(key, (backend, snat)).is_none() {
            tracked.keys.push(key);
        }
        if let Some(port) = snat
            && tracked.snat_owner.insert((backend, port, key.2), key) != Some(key)
        {
            tracked.snat_keys.push(key);
        }
    }

    fn check_counters(&mut self, n: usize, generator: &str, dir: Direction, frame: &[u8]) {
        let now = read_counters(&self.h);
        for c in PREDICTED {
            let moved = now[c as usize] - self.counters[c as usize];
            let predicted = self.pending[c as usize];
            if moved != predicted {
                let why = format!(
                    "counter {} moved by {moved}, predicted {predicted}, over these runs:\n{}",
                    c.name(),
                    self.since_read.join("\n")
                );
                self.fail(n, generator, dir, frame, why);
            }
        }
        self.counters = now;
        self.pending.fill(0);
        self.since_read.clear();
    }
}

fn read_counters(h: &Harness) -> Vec<u64> {
    let mut counters = vec![0; Counter::COUNT as usize];
    for (c, value) in h.dp.maps.counters().unwrap() {
        counters[c as usize] = value;
    }
    counters
}

/// Which parts of a flow's packet a rewrite may change.
#[derive(Clone, Copy)]
enum Rewrite {
    Destination,
    Source,
    /// Both ends, and the MACs of a frame sent on by the datapath: to these (`None`: left
    /// as they are, for the kernel's neighbour resolution).
    Both(Option<([u8; 6], [u8; 6])>),
}

/// Both ends of a rewritten packet.
struct Ends {
    src: Endpoint,
    dst: Endpoint,
}

/// Checks a rewrite: the verdict, that nothing but what `rewrite` allows changed, and that
/// both checksums keep their verdicts; returns the new ends.
fn rewritten(
    frame: &[u8],
    out: &[u8],
    verdict: u32,
    want: u32,
    rewrite: Rewrite,
) -> Result<Ends, String> {
    if verdict != want {
        return Err(format!("verdict {verdict:#x}, expected {want:#x}"));
    }
    let Class::Flow(flow) = classify(frame).1 else {
        unreachable!("only flows are rewritten")
    };
    if out.len() != frame.len() {
        return Err("the length changed".into());
    }
    let (src, dst, macs) = match rewrite {
        Rewrite::Destination => (false, true, None),
        Rewrite::Source => (true, false, None),
        Rewrite::Both(macs) => (true, true, macs),
    };
    let may_change = |i: usize| {
        (24..26).contains(&i)
            || (src && ((26..30).contains(&i) || (flow.l4..flow.l4 + 2).contains(&i)))
            || (dst && ((30..34).contains(&i) || (flow.l4 + 2..flow.l4 + 4).contains(&i)))
            || (flow.csum..flow.csum + 2).contains(&i)
            || (macs.is_some() && i < 12)
    };
    if let Some(i) = (0..frame.len()).find(|&i| frame[i] != out[i] && !may_change(i)) {
        return Err(format!("byte {i} changed"));
    }
    if let Some((dmac, smac)) = macs
        && (out[..6] != dmac || out[6..12] != smac)
    {
        return Err(format!(
            "MACs {}, expected {dmac:02x?} {smac:02x?}",
            hex(&out[..12])
        ));
    }
    let (ip_before, l4_before) = residues(frame, &flow);
    let (ip_after, l4_after) = residues(out, &flow);
    if ip_before != ip_after {
        return Err(format!(
            "IPv4 checksum residue {ip_before:#x} became {ip_after:#x}"
        ));
    }
    if l4_before != l4_after {
        return Err(format!(
            "L4 checksum residue {l4_before:x?} became {l4_after:x?}"
        ));
    }
    let ihl = flow.l4 - 14;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    // The shared helper takes the L4 length from the IP header.
    let helper_applies = flow.protocol == proto::TCP || flow.l4_len == total - ihl;
    if ip_before == 0xffff && l4_before.is_none_or(|r| r == 0xffff) && helper_applies {
        // A packet whose checksums verified: so do the output's.
        assert_checksums(out);
    }
    let end = |addr: usize, port: usize| -> Endpoint {
        (
            out[addr..addr + 4].try_into().unwrap(),
            u16::from_be_bytes([out[port], out[port + 1]]),
        )
    };
    Ok(Ends {
        src: end(26, flow.l4),
        dst: end(30, flow.l4 + 2),
    })
}

fn ct_key(&(client, client_port, protocol, vip, vip_port): &FlowKey) -> CtKey {
    CtKey {
        client_addr: client,
        vip,
        client_port,
        vip_port,
        proto: protocol,
        _pad: [0; 3],
    }
}

/// The bytes of `frame` and `out` that differ outside `may_change`.
fn changed_outside(
    frame: &[u8],
    out: &[u8],
    may_change: impl Fn(usize) -> bool,
) -> Result<(), String> {
    if out.len() != frame.len() {
        return Err("the length changed".into());
    }
    match (0..frame.len()).find(|&i| frame[i] != out[i] && !may_change(i)) {
        Some(i) => Err(format!("byte {i} changed")),
        None => Ok(()),
    }
}

/// The residues of a checksummed range before and after (0xffff: verifies) must agree.
fn same_residue(what: &str, before: u16, after: u16) -> Result<(), String> {
    if before != after {
        return Err(format!(
            "{what} checksum residue {before:#x} became {after:#x}"
        ));
    }
    Ok(())
}

fn echo_replied(frame: &[u8], out: &[u8], verdict: u32) -> Result<(), String> {
    if verdict != REDIRECT {
        return Err(format!("verdict {verdict:#x}, expected a redirect"));
    }
    let icmp = 14 + 20;
    changed_outside(frame, out, |i| {
        i < 12 || i == 22 || (24..34).contains(&i) || i == icmp || (icmp + 2..icmp + 4).contains(&i)
    })?;
    if out[..6] != frame[6..12] || out[6..12] != frame[..6] {
        return Err("MACs not swapped".into());
    }
    if out[26..30] != frame[30..34] || out[30..34] != frame[26..30] {
        return Err("addresses not swapped".into());
    }
    if out[22] != 64 || out[icmp] != ICMP_ECHO_REPLY {
        return Err("not an echo reply with TTL 64".into());
    }
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    same_residue("IPv4", residue(&frame[14..34], 0), residue(&out[14..34], 0))?;
    same_residue(
        "ICMP",
        residue(&frame[icmp..14 + total], 0),
        residue(&out[icmp..14 + total], 0),
    )
}

/// Checks a translated ICMP error: the verdict, that only what `t` names (and the
/// checksums over it) changed, to exactly what it says, and that every checksum keeps its
/// verdict: the outer IPv4 header's, the ICMP message's, the quoted IPv4 header's, and the
/// quoted TCP/UDP checksum's over the bytes quoted (the same partial sum before and after,
/// since only the pseudo-header's addresses, the ports and the checksum itself change).
fn icmp_translated(frame: &[u8], out: &[u8], verdict: u32, t: &Translated) -> Result<(), String> {
    let want = if t.routed.is_some() { REDIRECT } else { OK };
    if verdict != want {
        return Err(format!("verdict {verdict:#x}, expected {want:#x}"));
    }
    let Class::Icmp(icmp) = classify(frame).1 else {
        unreachable!("only ICMP errors are translated")
    };
    let q = quote_of(frame, &icmp).expect("only quotes of flows are translated");
    let macs = matches!(t.routed, Some(Some(_)));
    let within = |i: usize, at: usize, len: usize| (at..at + len).contains(&i);
    changed_outside(frame, out, |i| {
        (macs && i < 12)
            || within(i, 24, 2)
            || (t.outer_src.is_some() && within(i, 26, 4))
            || (t.outer_dst.is_some() && within(i, 30, 4))
            || within(i, icmp.at + 2, 2)
            || within(i, q.at + 10, 2)
            || (t.inner_src.is_some() && (within(i, q.at + 12, 4) || within(i, q.l4, 2)))
            || (t.inner_dst.is_some() && (within(i, q.at + 16, 4) || within(i, q.l4 + 2, 2)))
            || q.csum.is_some_and(|at| within(i, at, 2))
    })?;
    if let Some(Some((dmac, smac))) = t.routed
        && (out[..6] != dmac || out[6..12] != smac)
    {
        return Err(format!(
            "MACs {}, expected {dmac:02x?} {smac:02x?}",
            hex(&out[..12])
        ));
    }
    let addr = |f: &[u8], at: usize| <[u8; 4]>::try_from(&f[at..at + 4]).unwrap();
    let port = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let ends = [
        (t.outer_src.map(|a| (a, 0)), (addr(out, 26), 0)),
        (t.outer_dst.map(|a| (a, 0)), (addr(out, 30), 0)),
        (t.inner_src, (addr(out, q.at + 12), port(out, q.l4))),
        (t.inner_dst, (addr(out, q.at + 16), port(out, q.l4 + 2))),
    ];
    for (want, got) in ends {
        if let Some(want) = want
            && want != got
        {
            return Err(format!("translated to {got:?}, expected {want:?}"));
        }
    }
    same_residue(
        "outer IPv4",
        residue(&frame[14..icmp.at], 0),
        residue(&out[14..icmp.at], 0),
    )?;
    let message = icmp.at..icmp.at + icmp.len;
    same_residue(
        "ICMP",
        residue(&frame[message.clone()], 0),
        residue(&out[message], 0),
    )?;
    let inner = q.at..q.at + 20;
    same_residue(
        "quoted IPv4",
        residue(&frame[inner.clone()], 0),
        residue(&out[inner], 0),
    )?;
    if let Some(at) = q.csum {
        if q.protocol == proto::UDP && frame[at..at + 2] == [0, 0] {
            if out[at..at + 2] != [0, 0] {
                return Err("a quoted UDP checksum of zero (none) was changed".into());
            }
        } else {
            let partial = |f: &[u8]| {
                let pseudo = pseudo_header(
                    &f[q.at + 12..q.at + 16],
                    &f[q.at + 16..q.at + 20],
                    q.protocol,
                    q.l4_len,
                );
                residue(&f[q.l4..q.l4 + q.l4_len], pseudo)
            };
            same_residue("quoted L4", partial(frame), partial(out))?;
        }
    }
    Ok(())
}

/// BPF_PROG_TEST_RUN makes an skb of the frame and refuses an IPv4 or IPv6 frame too short
/// for its network header.
fn kernel_refuses(frame: &[u8]) -> bool {
    (frame[12..14] == ETH_IP && frame.len() < 14 + 20)
        || (frame[12..14] == ETH_IPV6 && frame.len() < 14 + 40)
}

fn refusal(frame: &[u8]) -> String {
    format!("EtherType {}", hex(&frame[12..14]))
}

// ---------------------------------------------------------------------------------------
// Generators.

impl Fuzzer {
    fn served(&self) -> Vec<Socket> {
        let mut served: Vec<_> = self
            .world
            .services
            .iter()
            .filter(|(_, s)| !s.backends.is_empty())
            .map(|(&key, _)| key)
            .collect();
        served.sort();
        served
    }

    /// A client, often one seen before (so flows come back to conntrack).
    fn client(&mut self) -> Endpoint {
        if self.rng.percent(30) {
            return self.clients[self.rng.below(self.clients.len())];
        }
        let addr = if self.rng.percent(70) {
            [192, 168, 10, self.rng.u8()]
        } else {
            self.rng.addr()
        };
        let port = if self.rng.percent(5) {
            self.rng.pick(&[0, 1, 65535])
        } else {
            1024 + self.rng.below(64512) as u16
        };
        if self.clients.len() < 4096 {
            self.clients.push((addr, port));
        } else {
            let i = self.rng.below(self.clients.len());
            self.clients[i] = (addr, port);
        }
        (addr, port)
    }

    /// A VIP destination: mostly a served port, also the one without backends and ports
    /// and protocols the VIP does not serve.
    fn vip_target(&mut self) -> Socket {
        let vip = self.rng.pick(&self.world.vips.clone());
        match self.rng.below(10) {
            0..=5 => {
                let served = self.served();
                served[self.rng.below(served.len())]
            }
            6 => (VIP_EMPTY, 80, proto::TCP),
            7 => (
                vip,
                self.rng.u16(),
                self.rng.pick(&[proto::TCP, proto::UDP]),
            ),
            8 => (vip, 80, proto::UDP),
            _ => (vip, 53, proto::TCP),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.below(10) {
            0..=3 => TCP_SYN,
            4..=5 => TCP_ACK,
            6 => TCP_ACK | TCP_PSH,
            7 => TCP_ACK | TCP_FIN,
            8 => self.rng.pick(&[TCP_RST, TCP_RST | TCP_ACK]),
            _ => self.rng.u8(),
        }
    }

    fn ip_options(&mut self) -> Vec<u8> {
        let mut options = if self.rng.percent(60) {
            match self.rng.below(5) {
                0 => vec![1, 1, 1, 1],
                1 => vec![0, 0, 0, 0],
                2 => vec![7, 7, 4, 0, 0, 0, 0], // record route, one empty slot
                3 => vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0], // timestamp
                _ => vec![148, 4, 0, 0],        // router alert
            }
        } else {
            let words = 1 + self.rng.below(10);
            self.rng.bytes(words * 4)
        };
        while options.len() % 4 != 0 {
            options.push(0);
        }
        options
    }

    /// Payload, TCP options, IP options and a missing UDP checksum, now and then.
    fn dress(&mut self, p: &mut Packet) {
        p.tcp_flags = self.tcp_flags();
        let len = if self.rng.percent(50) {
            0
        } else {
            self.rng.below(48)
        };
        p.payload = self.rng.bytes(len);
        if self.rng.percent(10) {
            p.tcp_options = match self.rng.below(3) {
                0 => vec![2, 4, 5, 0xb4],
                1 => vec![1, 1, 1, 1, 1, 1, 1, 0],
                _ => {
                    let words = 1 + self.rng.below(10);
                    self.rng.bytes(words * 4)
                }
            };
        }
        if self.rng.percent(8) {
            p.ip_options = self.ip_options();
        }
        p.udp_no_checksum = self.rng.percent(10);
        if self.rng.percent(10) {
            let len = 1 + self.rng.below(20);
            p.trailer = self.rng.bytes(len);
        }
    }

    fn vip_packet(&mut self) -> Packet {
        let client = self.client();
        let (vip, port, protocol) = self.vip_target();
        let mut p = Packet::new(client, (vip, port), protocol);
        self.dress(&mut p);
        p
    }

    /// A reply from the backend of a balanced flow (often a recent one), now and then from
    /// another port or to another client port: a flow that is not tracked.
    fn reply_packet(&mut self) -> Packet {
        if self.tracked.keys.is_empty() {
            return self.vip_packet();
        }
        let n = self.tracked.keys.len();
        let i = if self.rng.percent(50) {
            n - 1 - self.rng.below(n.min(256))
        } else {
            self.rng.below(n)
        };
        let key = self.tracked.keys[i];
        let (client, client_port, protocol, _, _) = key;
        let ((mut backend, mut backend_port), _) = self.tracked.flows[&key];
        let mut client_port = client_port;
        match self.rng.below(20) {
            0 => backend_port = backend_port.wrapping_add(1),
            1 => client_port = client_port.wrapping_add(1),
            2 => backend = self.rng.pick(&[POD_A, POD_B]),
            _ => {}
        }
        let mut p = Packet::new((backend, backend_port), (client, client_port), protocol);
        self.dress(&mut p);
        p
    }

    /// A reply from the backend of a SNATed flow to the port the flow holds (often a recent
    /// one), now and then to another port or address, or from another port.
    fn snat_reply_packet(&mut self) -> Packet {
        if self.tracked.snat_keys.is_empty() {
            return self.vip_packet();
        }
        let n = self.tracked.snat_keys.len();
        let i = if self.rng.percent(50) {
            n - 1 - self.rng.below(n.min(256))
        } else {
            self.rng.below(n)
        };
        let key = self.tracked.snat_keys[i];
        let ((backend, mut backend_port), port) = self.tracked.flows[&key];
        let (mut node, mut port) = (NODE, port.unwrap_or(0));
        match self.rng.below(20) {
            0 => backend_port = backend_port.wrapping_add(1),
            1 => port = port.wrapping_add(1),
            2 => node = [192, 168, 10, self.rng.u8()],
            _ => {}
        }
        let mut p = Packet::new((backend, backend_port), (node, port), key.2);
        self.dress(&mut p);
        p
    }

    fn non_vip_packet(&mut self) -> Packet {
        let dst = loop {
            let dst = match self.rng.below(4) {
                0 => self.rng.addr(),
                1 => [192, 168, 10, self.rng.u8()],
                2 => NODE,
                _ => self.twins[self.rng.below(self.twins.len())],
            };
            if !self.world.vips.contains(&dst) {
                break dst;
            }
        };
        let client = self.client();
        let port = if self.rng.percent(50) {
            80
        } else {
            self.rng.u16()
        };
        let protocol = self.rng.pick(&[proto::TCP, proto::UDP]);
        let mut p = Packet::new(client, (dst, port), protocol);
        self.dress(&mut p);
        p
    }

    fn any_packet(&mut self) -> Packet {
        match self.rng.below(5) {
            0..=2 => self.vip_packet(),
            3 => self.reply_packet(),
            _ => self.non_vip_packet(),
        }
    }

    fn arp(&mut self) -> Vec<u8> {
        let sender = if self.rng.percent(80) {
            [192, 168, 10, self.rng.u8()]
        } else {
            self.rng.addr()
        };
        let target = match self.rng.below(10) {
            0..=4 => VIP_AFFINITY,
            5 => VIP_RANDOM,
            6 => sender, // gratuitous
            7 => NODE,
            _ => self.rng.addr(),
        };
        let mut frame = arp_frame(1, sender, target);
        if self.rng.percent(30) {
            let mac = self.rng.bytes(6); // another sender
            frame[6..12].copy_from_slice(&mac);
            frame[22..28].copy_from_slice(&mac);
        }
        if self.rng.percent(30) {
            frame.resize(60, 0); // padded to the minimum frame
            if self.rng.percent(50) {
                let tail = self.rng.bytes(18);
                frame[42..].copy_from_slice(&tail);
            }
        }
        if self.rng.percent(50) {
            match self.rng.below(7) {
                0 => frame[14..16].copy_from_slice(&self.rng.u16().to_be_bytes()), // htype
                1 => frame[16..18].copy_from_slice(&self.rng.u16().to_be_bytes()), // ptype
                2 => frame[18] = self.rng.u8(),                                    // hlen
                3 => frame[19] = self.rng.u8(),                                    // plen
                4 => frame[20..22].copy_from_slice(&(self.rng.below(5) as u16).to_be_bytes()),
                5 => {
                    let cut = 14 + self.rng.below(frame.len() - 14);
                    frame.truncate(cut);
                }
                _ => frame[0..6].copy_from_slice(&self.rng.bytes(6)), // unicast, anywhere
            }
        }
        frame
    }

    fn ipv6(&mut self) -> Vec<u8> {
        let p = self.vip_packet().frame();
        let l4 = &p[14 + usize::from(p[14] & 0x0f) * 4..];
        let any = self.rng.u8();
        let next_header = self.rng.pick(&[proto::TCP, proto::UDP, 0, 58, any]);
        let src: [u8; 16] = self.rng.bytes(16).try_into().unwrap();
        // The destination: random, or a VIP as an IPv4-mapped address.
        let mut dst = [0u8; 16];
        if self.rng.percent(50) {
            dst[10..12].copy_from_slice(&[0xff, 0xff]);
            dst[12..].copy_from_slice(&self.rng.pick(&self.world.vips.clone()));
        } else {
            dst = self.rng.bytes(16).try_into().unwrap();
        }
        let mut frame = ipv6_frame(src, dst, next_header, l4);
        if self.rng.percent(10) {
            frame[12..14].copy_from_slice(&ETH_IP); // IPv6 under the IPv4 EtherType
        }
        frame
    }

    fn vlan(&mut self) -> Vec<u8> {
        let inner = if self.rng.percent(20) {
            arp_frame(1, CLIENT, VIP_AFFINITY)
        } else {
            self.vip_packet().frame()
        };
        let mut tci = self.rng.u16().to_be_bytes().to_vec();
        let tags = match self.rng.below(3) {
            0 => [ETH_VLAN.to_vec(), tci].concat(),
            1 => {
                let inner_tci = self.rng.u16().to_be_bytes().to_vec();
                [ETH_QINQ.to_vec(), tci.clone(), ETH_VLAN.to_vec(), inner_tci].concat()
            }
            _ => {
                tci.splice(0..0, [0x91, 0x00]); // the pre-standard QinQ tag
                tci
            }
        };
        [&inner[..12], &tags, &inner[12..]].concat()
    }

    /// A bad IHL, version, total length, UDP length or TCP data offset.
    fn bad_lengths(&mut self) -> Vec<u8> {
        let p = if self.rng.percent(80) {
            self.vip_packet()
        } else {
            self.reply_packet()
        };
        let mut frame = p.frame();
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let l4 = 14 + ihl;
        let total = u16::from_be_bytes([frame[16], frame[17]]);
        match self.rng.below(5) {
            0 => frame[14] = 0x40 | self.rng.below(16) as u8,
            1 => frame[14] = (self.rng.below(16) as u8) << 4 | (frame[14] & 0x0f),
            2 => {
                let any = self.rng.u16();
                let wrong = self.rng.pick(&[
                    0,
                    19,
                    20,
                    ihl as u16 + 7,
                    ihl as u16 + 19,
                    total - 1,
                    total + 1,
                    (frame.len() - 14 + 1) as u16,
                    0xffff,
                    any,
                ]);
                frame[16..18].copy_from_slice(&wrong.to_be_bytes());
            }
            3 if p.protocol == proto::UDP => {
                let len = total - ihl as u16;
                let any = self.rng.u16();
                let wrong = self.rng.pick(&[0, 1, 7, len - 1, len + 1, 0xffff, any]);
                frame[l4 + 4..l4 + 6].copy_from_slice(&wrong.to_be_bytes());
            }
            _ if p.protocol == proto::TCP => {
                frame[l4 + 12] = (self.rng.below(16) as u8) << 4 | (frame[l4 + 12] & 0x0f);
            }
            _ => frame[16..18].copy_from_slice(&self.rng.u16().to_be_bytes()),
        }
        if self.rng.percent(80) {
            fix_ip_checksum(&mut frame, 14);
        }
        frame
    }

    fn fragment(&mut self) -> Vec<u8> {
        let mut frame = self.any_packet().frame();
        let offset = 1 + self.rng.below(0x1fff) as u16;
        let field: u16 = match self.rng.below(4) {
            0 => 0x2000,          // the first fragment: MF, offset 0
            1 => 0x2000 | offset, // a middle one
            2 => offset,          // the last one
            _ => 0x6000 | offset, // DF and MF together
        };
        frame[20..22].copy_from_slice(&field.to_be_bytes());
        if self.rng.percent(80) {
            fix_ip_checksum(&mut frame, 14);
        }
        frame
    }

    fn truncated(&mut self) -> Vec<u8> {
        let mut frame = if self.rng.percent(15) {
            arp_frame(1, CLIENT, VIP_AFFINITY)
        } else {
            self.any_packet().frame()
        };
        let cut = 14 + self.rng.below(frame.len() - 14);
        frame.truncate(cut);
        if frame[12..14] == ETH_IP && cut >= 34 && self.rng.percent(40) {
            // Cut consistently: the total length says where the frame ends.
            frame[16..18].copy_from_slice(&((cut - 14) as u16).to_be_bytes());
            fix_ip_checksum(&mut frame, 14);
        }
        frame
    }

    /// ICMP, mostly to a VIP: an echo request or any other type, now and then with IP
    /// options.
    fn icmp(&mut self) -> Vec<u8> {
        let dst = if self.rng.percent(70) {
            self.rng.pick(&self.world.vips.clone())
        } else {
            self.rng.addr()
        };
        let client = self.client();
        let mut p = Packet::new(client, (dst, self.rng.u16()), proto::ICMP);
        let len = self.rng.below(48);
        p.payload = self.rng.bytes(len);
        if self.rng.percent(10) {
            p.ip_options = self.ip_options();
        }
        let mut frame = p.frame();
        if self.rng.percent(30) {
            let l4 = IP + usize::from(frame[IP] & 0x0f) * 4;
            frame[l4] = self.rng.u8(); // another type
        }
        frame
    }

    /// An ICMP error about a flow balanced so far (often a recent one), quoting the packet
    /// the README says it may be about: the flow's reply as it left from the VIP (to the
    /// VIP), the client's packet as it reached a local backend (from the backend or the
    /// node, to the client), or a SNATed packet as it left for the other node (to the node);
    /// cut at any length, and now and then a lie in the quote or another type.
    fn icmp_error(&mut self) -> Vec<u8> {
        if self.tracked.keys.is_empty() {
            return self.icmp();
        }
        let n = self.tracked.keys.len();
        let i = if self.rng.percent(50) {
            n - 1 - self.rng.below(n.min(256))
        } else {
            self.rng.below(n)
        };
        let key = self.tracked.keys[i];
        let (client, client_port, protocol, vip, vip_port) = key;
        let (backend, snat) = self.tracked.flows[&key];
        let router = [192, 168, 10, self.rng.u8()];
        let (mut p, src, dst) = match (self.rng.below(3), snat) {
            (1, None) => {
                let from = self.rng.pick(&[backend.0, NODE]);
                (
                    Packet::new((client, client_port), backend, protocol),
                    from,
                    client,
                )
            }
            (1 | 2, Some(port)) => {
                let from = self.rng.pick(&[REMOTE_NODE, backend.0, router]);
                (Packet::new((NODE, port), backend, protocol), from, NODE)
            }
            _ => {
                let from = self.rng.pick(&[router, client]);
                (
                    Packet::new((vip, vip_port), (client, client_port), protocol),
                    from,
                    vip,
                )
            }
        };
        self.dress(&mut p);
        p.trailer.clear();
        let packet = p.frame();
        let len = self
            .rng
            .pick(&[27, 28, 30, 38, 39, 40, 41, 60, 200, 548, 2000]);
        let mut quoted = quote(&packet, len);
        match self.rng.below(10) {
            // A lie anywhere in what names the flow.
            0..=1 => {
                let at = self.rng.below(quoted.len().min(28));
                quoted[at] ^= 1 + self.rng.below(255) as u8;
            }
            // Another port of the same ends: a flow that is not tracked.
            2 if quoted.len() >= 24 => {
                let at = 20 + 2 * self.rng.below(2);
                let port = u16::from_be_bytes([quoted[at], quoted[at + 1]]).wrapping_add(1);
                quoted[at..at + 2].copy_from_slice(&port.to_be_bytes());
            }
            _ => {}
        }
        let kind = match self.rng.below(10) {
            0..=4 => (ICMP_DEST_UNREACH, self.rng.below(16) as u8),
            5..=6 => (ICMP_TIME_EXCEEDED, self.rng.below(2) as u8),
            7 => (ICMP_PARAMETER_PROBLEM, 0),
            _ => (self.rng.u8(), self.rng.u8()),
        };
        let rest = self.rng.bytes(4).try_into().unwrap();
        icmp_error(src, dst, kind, rest, &quoted)
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let len = 14 + self.rng.below(300);
        let mut frame = self.rng.bytes(len);
        if self.rng.percent(60) {
            let ether_type = self
                .rng
                .pick(&[ETH_IP, ETH_IP, ETH_ARP, ETH_IPV6, ETH_VLAN]);
            frame[12..14].copy_from_slice(&ether_type);
            if ether_type == ETH_IP && len >= 34 && self.rng.percent(50) {
                let vip = self.rng.pick(&self.world.vips.clone());
                frame[30..34].copy_from_slice(&vip);
            }
        }
        frame
    }

    /// One random byte changed, often in the headers, with the IPv4 checksum now and then
    /// made right again.
    fn one_byte_changed(&mut self, mut frame: Vec<u8>) -> Vec<u8> {
        let headers = (14 + 60 + 20).min(frame.len());
        let i = if self.rng.percent(70) {
            self.rng.below(headers)
        } else {
            self.rng.below(frame.len())
        };
        frame[i] ^= 1 + self.rng.below(255) as u8;
        if self.rng.percent(30) {
            fix_ip_checksum(&mut frame, 14);
        }
        frame
    }

    fn generate(&mut self) -> (&'static str, Vec<u8>) {
        match self.rng.below(100) {
            0..=13 => ("vip flow", self.vip_packet().frame()),
            14..=31 => {
                let frame = self.vip_packet().frame();
                ("vip flow, one byte changed", self.one_byte_changed(frame))
            }
            32..=37 => ("reply", self.reply_packet().frame()),
            38..=41 => ("reply to SNAT", self.snat_reply_packet().frame()),
            42..=45 => {
                let frame = self.reply_packet().frame();
                ("reply, one byte changed", self.one_byte_changed(frame))
            }
            46..=48 => {
                let frame = self.snat_reply_packet().frame();
                (
                    "reply to SNAT, one byte changed",
                    self.one_byte_changed(frame),
                )
            }
            49..=54 => {
                let mut p = self.any_packet();
                p.ip_options = self.ip_options();
                ("ip options", p.frame())
            }
            55..=60 => ("fragment", self.fragment()),
            61..=68 => ("bad lengths", self.bad_lengths()),
            69..=73 => ("truncated", self.truncated()),
            74..=77 => ("vlan", self.vlan()),
            78..=80 => ("ipv6", self.ipv6()),
            81..=86 => ("arp", self.arp()),
            87..=89 => ("icmp error", self.icmp_error()),
            90 => {
                let frame = self.icmp_error();
                ("icmp error, one byte changed", self.one_byte_changed(frame))
            }
            91 => ("random bytes", self.random_bytes()),
            92..=93 => ("icmp", self.icmp()),
            _ => {
                let frame = self.non_vip_packet().frame();
                if self.rng.percent(30) {
                    ("not a vip, one byte changed", self.one_byte_changed(frame))
                } else {
                    ("not a vip", frame)
                }
            }
        }
    }

    /// Every frame of a few templates cut at every length, as cut and with the IPv4 total
    /// length saying where the cut is.
    fn truncation_sweep(&mut self, n: &mut usize) {
        let syn = Packet::new((CLIENT, 45000), (VIP_RANDOM, 80), proto::TCP).frame();
        self.run(*n, "sweep: setup", &syn);
        *n += 1;
        let key = (CLIENT, 45000, proto::TCP, VIP_RANDOM, 80);
        let (backend, _) = self.tracked.flows[&key];

        let mut tcp = Packet::new((CLIENT, 45001), (VIP_AFFINITY, 80), proto::TCP);
        tcp.ip_options = vec![7, 7, 4, 0, 0, 0, 0, 0];
        tcp.tcp_options = vec![2, 4, 5, 0xb4];
        tcp.payload = b"GET / HTTP/1.1\r\n".to_vec();
        let mut udp = Packet::new((CLIENT, 5353), (VIP_AFFINITY, 53), proto::UDP);
        udp.payload = b"query".to_vec();
        let mut reply = Packet::new(backend, (CLIENT, 45000), proto::TCP);
        reply.tcp_flags = TCP_ACK;
        reply.payload = b"HTTP/1.1 200 OK\r\n".to_vec();
        let mut arp = arp_request(CLIENT, VIP_AFFINITY);
        arp.resize(60, 0);
        let mut vlan = tcp.frame();
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        let mut mapped_vip = [0u8; 16];
        mapped_vip[10..].copy_from_slice(&[0xff, 0xff, 192, 168, 10, 49]);
        let ipv6 = ipv6_frame([0xfd; 16], mapped_vip, proto::TCP, &tcp.frame()[14 + 28..]);
        let templates = [tcp.frame(), udp.frame(), reply.frame(), arp, vlan, ipv6];
        for template in templates {
            for cut in 14..=template.len() {
                let frame = &template[..cut];
                self.run(*n, "sweep: cut", frame);
                *n += 1;
                if frame[12..14] == ETH_IP && cut >= 34 {
                    let mut consistent = frame.to_vec();
                    consistent[16..18].copy_from_slice(&((cut - 14) as u16).to_be_bytes());
                    fix_ip_checksum(&mut consistent, 14);
                    self.run(*n, "sweep: cut, total length too", &consistent);
                    *n += 1;
                }
            }
        }
    }
}

/// Addresses that share a VIP's filter bit: they take the datapath's slow way.
fn filter_twins() -> Vec<[u8; 4]> {
    let bits: Vec<_> = [VIP_AFFINITY, VIP_RANDOM, VIP_EMPTY]
        .map(gateway_common::vip_filter_bit)
        .to_vec();
    (0u32..)
        .map(|i| [10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
        .filter(|a| bits.contains(&gateway_common::vip_filter_bit(*a)))
        .take(16)
        .collect()
}

#[test]
fn random_and_mutated_frames_are_rewritten_only_when_valid() {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("fuzz_frames: seed {seed:#x} (FUZZ_SEED={seed})");
    let mut f = Fuzzer::new(seed);
    let mut n = 0;
    f.truncation_sweep(&mut n);
    for _ in 0..RANDOM_FRAMES {
        let (generator, frame) = f.generate();
        f.run(n, generator, &frame);
        n += 1;
    }
    f.check_counters(n, "end", Direction::Egress, &[]);

    eprintln!("{n} frames, {} program runs; by generator:", f.runs);
    for (generator, count) in &f.frames {
        eprintln!("  {count:7}  {generator}");
    }
    eprintln!("outcomes:");
    for (outcome, count) in &f.outcomes {
        eprintln!("  {count:7}  {outcome}");
    }
    eprintln!("refused by BPF_PROG_TEST_RUN: {:?}", f.refused);
    eprintln!("replies whose flow the LRU evicted: {}", f.evicted);

    assert!(n >= RANDOM_FRAMES);
    // Every kind of outcome happened often enough for the properties to mean something.
    for outcome in [
        "ingress pass",
        "ingress dnat",
        "ingress arp_reply",
        "ingress drop_unknown_port",
        "ingress drop_icmp",
        "ingress drop_no_backend",
        "ingress drop_fragment",
        "ingress drop_malformed",
        "ingress drop_source_range",
        "ingress snat",
        "ingress snat_reply",
        "ingress drop_no_route",
        "egress pass",
        "egress rev_nat",
    ] {
        let count = f.outcomes.get(outcome).copied().unwrap_or(0);
        assert!(count >= 500, "only {count} times {outcome}");
    }
    for outcome in [
        "ingress icmp_echo_reply",
        "ingress icmp_error_nat",
        "ingress drop_icmp_error",
        "ingress icmp_error_passed",
        "egress icmp_error_nat",
        "egress icmp_error_passed",
    ] {
        let count = f.outcomes.get(outcome).copied().unwrap_or(0);
        assert!(count >= 50, "only {count} times {outcome}");
    }
}
