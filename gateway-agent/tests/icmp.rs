//! ICMP through the real programs (BPF_PROG_TEST_RUN): echo requests to a VIP answered from
//! the VIP, and ICMP errors about tracked flows translated both ways, for flows to a local
//! backend and flows SNATed to a backend on another node. Exact bytes: every translated
//! error must be, byte for byte, the error its sender would have sent had the packet it
//! quotes never been translated (built from scratch by the shared frame builder, every
//! checksum computed over whole headers); errors whose quote is truncated, inconsistent or
//! of no tracked flow are never rewritten. Needs root.

use gateway_agent::{
    capacity::Capacity,
    model::{DesiredState, Protocol},
};
use gateway_common::{Counter, proto};

mod support;
use support::*;

/// A router on the segment, between the node and clients elsewhere.
const ROUTER: [u8; 4] = [192, 168, 10, 1];
const VIP_CLUSTER: [u8; 4] = [192, 168, 10, 52];
const FRAG_NEEDED: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED);
const PORT_UNREACH: (u8, u8) = (ICMP_DEST_UNREACH, ICMP_PORT_UNREACH);
const TTL_EXPIRED: (u8, u8) = (ICMP_TIME_EXCEEDED, 0);
/// What a Linux router quotes at most: 576 bytes in all, less its own headers.
const LINUX_QUOTE: usize = 576 - 20 - 8;
/// The least every router quotes: the IPv4 header and 8 bytes.
const MIN_QUOTE: usize = 28;

/// The reference's services, and a Cluster service whose backends run on the other node.
fn state() -> DesiredState {
    let mut desired = reference_state();
    for (name, port, protocol, backend) in [
        ("cluster", 80, Protocol::Tcp, (POD_REMOTE, 8080)),
        ("cluster-dns", 53, Protocol::Udp, (POD_REMOTE, 5353)),
    ] {
        desired.frontends.push(cluster(frontend(
            name,
            VIP_CLUSTER,
            port,
            protocol,
            None,
            &[backend],
        )));
    }
    desired
}

fn harness() -> Harness {
    Harness::with(&state(), Capacity::default())
}

fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// The exact echo reply to `request`: MACs and addresses swapped, TTL 64, type 0, both
/// checksums computed afresh.
fn echo_reply_to(request: &[u8]) -> Vec<u8> {
    let mut reply = request.to_vec();
    reply[..6].copy_from_slice(&request[6..12]);
    reply[6..12].copy_from_slice(&request[..6]);
    reply[IP_SRC..IP_SRC + 4].copy_from_slice(&request[IP_DST..IP_DST + 4]);
    reply[IP_DST..IP_DST + 4].copy_from_slice(&request[IP_SRC..IP_SRC + 4]);
    reply[IP + 8] = 64;
    fix_ip_checksum(&mut reply, IP);
    reply[L4] = ICMP_ECHO_REPLY;
    reply[L4 + 2..L4 + 4].copy_from_slice(&[0, 0]);
    let csum = !(ones_sum(&reply[L4..], 0) as u16);
    reply[L4 + 2..L4 + 4].copy_from_slice(&csum.to_be_bytes());
    reply
}

#[test]
fn an_echo_request_to_a_vip_is_answered_from_the_vip() {
    let mut h = harness();
    for vip in [VIP_AFFINITY, VIP_RANDOM, VIP_EMPTY, VIP_CLUSTER] {
        let mut request = Packet::new((CLIENT, 0x1234), (vip, 7), proto::ICMP);
        request.payload = (0..56).collect();
        let mut request = request.frame();
        // Any TTL the client chose: the reply has its own.
        request[IP + 8] = 3;
        fix_ip_checksum(&mut request, IP);
        let (verdict, out) = h.ingress(&request);
        assert_eq!(
            verdict, REDIRECT,
            "sent back out of the interface it came in on"
        );
        assert_eq!(hex(&out), hex(&echo_reply_to(&request)));
        assert_icmp_checksums(&out);
    }
    assert_eq!(h.counter(Counter::IcmpEchoReply), 4);
    assert_eq!(h.counter(Counter::DropIcmp), 0);
    // The node's own pings are the kernel's.
    let ping = icmp_echo_request(CLIENT, NODE);
    assert_eq!(h.ingress(&ping), (PASS, ping.clone()));
    assert_eq!(h.counter(Counter::IcmpEchoReply), 4);
}

#[test]
fn other_icmp_to_a_vip_is_dropped_under_its_own_reason() {
    let mut h = harness();
    let ping = icmp_echo_request(CLIENT, VIP_RANDOM);
    // An echo reply, a redirect, a timestamp request: neither answered nor translated.
    for kind in [ICMP_ECHO_REPLY, 5, 13] {
        let mut frame = ping.clone();
        frame[L4] = kind;
        assert_eq!(h.ingress(&frame), (SHOT, frame.clone()), "type {kind}");
    }
    // An echo request with IP options, one with another code, one to a group MAC.
    let mut options = Packet::new((CLIENT, 1), (VIP_RANDOM, 1), proto::ICMP);
    options.ip_options = vec![7, 7, 4, 0, 0, 0, 0, 0];
    let options = options.frame();
    let mut code = ping.clone();
    code[L4 + 1] = 1;
    let mut multicast = ping.clone();
    multicast[..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
    for frame in [options, code, multicast] {
        assert_eq!(h.ingress(&frame), (SHOT, frame.clone()));
    }
    assert_eq!(h.counter(Counter::DropIcmp), 6);
    assert_eq!(h.counter(Counter::IcmpEchoReply), 0);
    // An ICMP header cut short by the total length: malformed.
    let mut short = ping.clone();
    short[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&27u16.to_be_bytes());
    fix_ip_checksum(&mut short, IP);
    assert_eq!(h.ingress(&short), (SHOT, short.clone()));
    assert_eq!(h.counter(Counter::DropMalformed), 1);
}

/// A TCP flow from the client to VIP_RANDOM:80, balanced to a local backend: the backend,
/// its reply as the backend sent it, and that reply as it left the node (from the VIP).
fn local_tcp_flow(h: &mut Harness, client: Endpoint) -> (Endpoint, Vec<u8>, Vec<u8>) {
    let (verdict, out) = h.ingress(&tcp_frame(client, (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(verdict, OK);
    let backend = ip_dst(&out);
    let body: Vec<u8> = (0..1400).map(|i| i as u8).collect();
    let reply = tcp_frame(backend, client, Tcp::Ack, &body);
    let (verdict, left) = h.egress(&reply);
    assert_eq!(verdict, OK);
    assert_eq!(ip_src(&left), (VIP_RANDOM, 80));
    (backend, reply, left)
}

#[test]
fn fragmentation_needed_about_a_reply_from_the_vip_reaches_the_backend_as_its_own() {
    let mut h = harness();
    let client = (CLIENT, 40000);
    let (backend, reply, left) = local_tcp_flow(&mut h, client);
    // A Linux router quotes the whole TCP header (its checksum is translated), a minimal one
    // only the ports (the checksum is not there to translate).
    for (n, len) in [LINUX_QUOTE, MIN_QUOTE, 20 + 18, 20 + 20]
        .into_iter()
        .enumerate()
    {
        let error = icmp_error(
            ROUTER,
            VIP_RANDOM,
            FRAG_NEEDED,
            mtu(1280),
            &quote(&left, len),
        );
        let (verdict, out) = h.ingress(&error);
        assert_eq!(
            verdict, OK,
            "to the stack, which delivers it to the local backend"
        );
        let expected = icmp_error(
            ROUTER,
            backend.0,
            FRAG_NEEDED,
            mtu(1280),
            &quote(&reply, len),
        );
        if len >= 40 {
            assert_eq!(hex(&out), hex(&expected), "quote of {len} bytes");
        } else {
            // The quoted TCP checksum (bytes 36..38 of the quote), if there, stays as it
            // was; everything else is the backend's own packet.
            let mut expected = expected;
            let (at, end) = (IP + 28 + 36, (IP + 28 + len).min(IP + 28 + 38));
            expected[at.min(end)..end].copy_from_slice(&out[at.min(end)..end]);
            fix_icmp_checksum(&mut expected);
            assert_eq!(hex(&out), hex(&expected), "quote of {len} bytes");
        }
        assert_icmp_checksums(&out);
        assert_eq!(h.counter(Counter::IcmpErrorNat), n as u64 + 1);
    }
    // A TTL expired on the way, about the same reply.
    let error = icmp_error(
        ROUTER,
        VIP_RANDOM,
        TTL_EXPIRED,
        [0; 4],
        &quote(&left, LINUX_QUOTE),
    );
    let (verdict, out) = h.ingress(&error);
    assert_eq!(verdict, OK);
    let expected = icmp_error(
        ROUTER,
        backend.0,
        TTL_EXPIRED,
        [0; 4],
        &quote(&reply, LINUX_QUOTE),
    );
    assert_eq!(hex(&out), hex(&expected));
    assert_eq!(h.counter(Counter::DropIcmpError), 0);
}

/// Recomputes the ICMP checksum of an ICMP frame without IP options.
fn fix_icmp_checksum(frame: &mut [u8]) {
    frame[L4 + 2..L4 + 4].copy_from_slice(&[0, 0]);
    let csum = !(ones_sum(&frame[L4..], 0) as u16);
    frame[L4 + 2..L4 + 4].copy_from_slice(&csum.to_be_bytes());
}

#[test]
fn a_port_unreachable_about_a_udp_reply_reaches_the_backend_with_its_udp_checksum() {
    let mut h = harness();
    let client = (CLIENT, 5353);
    let query = udp_frame(client, (VIP_AFFINITY, 53), b"query");
    let (verdict, out) = h.ingress(&query);
    assert_eq!(verdict, OK);
    let backend = ip_dst(&out);
    assert_eq!(backend, (POD_A, 5353));
    for answer in [b"answer".to_vec(), vec![0xff; 301]] {
        let reply = udp_frame(backend, client, &answer);
        let (_, left) = h.egress(&reply);
        assert_eq!(ip_src(&left), (VIP_AFFINITY, 53));
        // The client's host no longer listens: its port unreachable quotes the whole reply.
        let error = icmp_error(
            CLIENT,
            VIP_AFFINITY,
            PORT_UNREACH,
            [0; 4],
            &quote(&left, 1000),
        );
        let (verdict, out) = h.ingress(&error);
        assert_eq!(verdict, OK);
        let expected = icmp_error(CLIENT, POD_A, PORT_UNREACH, [0; 4], &quote(&reply, 1000));
        assert_eq!(hex(&out), hex(&expected));
    }
    // A datagram without checksum keeps none.
    let mut reply = Packet::new(backend, client, proto::UDP);
    reply.udp_no_checksum = true;
    let reply = reply.frame();
    let (_, left) = h.egress(&reply);
    let error = icmp_error(
        CLIENT,
        VIP_AFFINITY,
        PORT_UNREACH,
        [0; 4],
        &quote(&left, MIN_QUOTE),
    );
    let (_, out) = h.ingress(&error);
    let expected = icmp_error(
        CLIENT,
        POD_A,
        PORT_UNREACH,
        [0; 4],
        &quote(&reply, MIN_QUOTE),
    );
    assert_eq!(hex(&out), hex(&expected));
    assert_eq!(h.counter(Counter::IcmpErrorNat), 3);
}

#[test]
fn errors_a_local_backend_sends_a_client_carry_the_vip() {
    let mut h = harness();
    let client = (CLIENT, 40001);
    let query = udp_frame(client, (VIP_AFFINITY, 53), b"query");
    let (_, dnated) = h.ingress(&query);
    // The backend's port unreachable, and a fragmentation needed the node sends on the
    // backend's way (from its own address): both from the VIP, about the client's own packet.
    for (from, error) in [(POD_A, PORT_UNREACH), (NODE, FRAG_NEEDED)] {
        let frame = icmp_error(from, CLIENT, error, mtu(1400), &quote(&dnated, 1000));
        let (verdict, out) = h.egress(&frame);
        assert_eq!(verdict, OK);
        let expected = icmp_error(VIP_AFFINITY, CLIENT, error, mtu(1400), &quote(&query, 1000));
        assert_eq!(hex(&out), hex(&expected));
        assert_icmp_checksums(&out);
    }
    // A TCP flow, quoted minimally.
    let (backend, _, _) = local_tcp_flow(&mut h, (CLIENT, 40002));
    let syn = tcp_frame((CLIENT, 40002), (VIP_RANDOM, 80), Tcp::Ack, b"x");
    let (_, dnated) = h.ingress(&syn);
    assert_eq!(ip_dst(&dnated), backend);
    let frame = icmp_error(
        backend.0,
        CLIENT,
        TTL_EXPIRED,
        [0; 4],
        &quote(&dnated, LINUX_QUOTE),
    );
    let (verdict, out) = h.egress(&frame);
    assert_eq!(verdict, OK);
    let expected = icmp_error(
        VIP_RANDOM,
        CLIENT,
        TTL_EXPIRED,
        [0; 4],
        &quote(&syn, LINUX_QUOTE),
    );
    assert_eq!(hex(&out), hex(&expected));
    assert_eq!(h.counter(Counter::IcmpErrorNat), 3);
}

#[test]
fn errors_about_a_flow_snated_to_another_node_are_translated_both_ways() {
    let mut h = harness();
    let client = (CLIENT, 40003);
    let syn = tcp_frame(client, (VIP_CLUSTER, 80), Tcp::Syn, b"");
    let (verdict, snated) = h.uplink_ingress(&syn);
    assert_eq!(verdict, REDIRECT);
    let snat = ip_src(&snated);
    assert_eq!((ip_dst(&snated), snat.0), ((POD_REMOTE, 8080), NODE));

    // From the backend's direction: its node (or a router on the way) cannot take the
    // client's packet as it was SNATed. To the client, from the VIP, about its own packet.
    let error = icmp_error(
        REMOTE_NODE,
        NODE,
        FRAG_NEEDED,
        mtu(1400),
        &quote(&snated, 1000),
    );
    let (verdict, out) = h.uplink_ingress(&error);
    assert_eq!(verdict, REDIRECT, "routed to the client by the datapath");
    let expected = with_macs(
        icmp_error(
            VIP_CLUSTER,
            CLIENT,
            FRAG_NEEDED,
            mtu(1400),
            &quote(&syn, 1000),
        ),
        CLIENT_MAC,
        NODE_MAC,
    );
    assert_eq!(hex(&out), hex(&expected));

    // From the client's direction: an error about the backend's reply, as it left from the
    // VIP. To the backend, from the node, about the backend's own packet.
    let body: Vec<u8> = (0..1000).map(|i| (i * 7) as u8).collect();
    let reply = tcp_frame((POD_REMOTE, 8080), snat, Tcp::Ack, &body);
    let (verdict, left) = h.uplink_ingress(&reply);
    assert_eq!(verdict, REDIRECT);
    assert_eq!((ip_src(&left), ip_dst(&left)), ((VIP_CLUSTER, 80), client));
    let error = icmp_error(
        ROUTER,
        VIP_CLUSTER,
        FRAG_NEEDED,
        mtu(1280),
        &quote(&left, LINUX_QUOTE),
    );
    let (verdict, out) = h.uplink_ingress(&error);
    assert_eq!(
        verdict, REDIRECT,
        "routed to the backend's node by the datapath"
    );
    let expected = with_macs(
        icmp_error(
            NODE,
            POD_REMOTE,
            FRAG_NEEDED,
            mtu(1280),
            &quote(&reply, LINUX_QUOTE),
        ),
        REMOTE_NODE_MAC,
        NODE_MAC,
    );
    assert_eq!(hex(&out), hex(&expected));
    assert_eq!(h.counter(Counter::IcmpErrorNat), 2);
}

#[test]
fn errors_with_truncated_or_lying_quotes_are_never_translated() {
    let mut h = harness();
    let client = (CLIENT, 40004);
    let (_, _, left) = local_tcp_flow(&mut h, client);
    let (_, snated) = h.uplink_ingress(&tcp_frame(
        (CLIENT, 40005),
        (VIP_CLUSTER, 80),
        Tcp::Syn,
        b"",
    ));
    let good = quote(&left, LINUX_QUOTE);
    let lie = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut q = good.clone();
        edit(&mut q);
        q
    };
    let lies: Vec<(&str, Vec<u8>)> = vec![
        ("too short for the ports", good[..MIN_QUOTE - 1].to_vec()),
        (
            "another client port",
            lie(&|q| q[22..24].copy_from_slice(&40099u16.to_be_bytes())),
        ),
        (
            "another VIP port",
            lie(&|q| q[20..22].copy_from_slice(&81u16.to_be_bytes())),
        ),
        (
            "another client",
            lie(&|q| q[16..20].copy_from_slice(&CLIENT_2)),
        ),
        (
            "inner source not the VIP",
            lie(&|q| q[12..16].copy_from_slice(&VIP_AFFINITY)),
        ),
        ("IP options", lie(&|q| q[0] = 0x46)),
        ("a header length below 20", lie(&|q| q[0] = 0x44)),
        ("not version 4", lie(&|q| q[0] = 0x65)),
        (
            "a later fragment",
            lie(&|q| q[6..8].copy_from_slice(&[0, 8])),
        ),
        ("ICMP inside", lie(&|q| q[9] = proto::ICMP)),
        ("UDP for TCP", lie(&|q| q[9] = proto::UDP)),
    ];
    for (n, (what, quoted)) in lies.iter().enumerate() {
        let error = icmp_error(ROUTER, VIP_RANDOM, FRAG_NEEDED, mtu(1280), quoted);
        assert_eq!(h.ingress(&error), (SHOT, error.clone()), "{what}");
        assert_eq!(h.counter(Counter::DropIcmpError), n as u64 + 1, "{what}");
    }
    // An error quoting the flow truthfully, cut by its own total length below the quote.
    let mut cut = icmp_error(ROUTER, VIP_RANDOM, FRAG_NEEDED, mtu(1280), &good);
    cut[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&(20 + 8 + 27u16).to_be_bytes());
    fix_ip_checksum(&mut cut, IP);
    assert_eq!(h.ingress(&cut), (SHOT, cut.clone()));
    // Not to a VIP: passed on untouched, counted when the quote names a backend.
    let snat_quote = quote(&snated, 1000);
    let mut other_port = snat_quote.clone();
    other_port[20..22].copy_from_slice(&1u16.to_be_bytes());
    let error = icmp_error(REMOTE_NODE, NODE, FRAG_NEEDED, mtu(1400), &other_port);
    assert_eq!(h.uplink_ingress(&error), (PASS, error.clone()));
    assert_eq!(h.counter(Counter::IcmpErrorPassed), 1);
    let error = icmp_error(REMOTE_NODE, NODE, FRAG_NEEDED, mtu(1400), &snat_quote[..27]);
    assert_eq!(h.uplink_ingress(&error), (PASS, error.clone()));
    // At egress: a backend's error about a client it has no flow with.
    let stranger = quote(&tcp_frame((CLIENT_2, 1), (POD_A, 8080), Tcp::Ack, b""), 100);
    let error = icmp_error(POD_A, CLIENT_2, PORT_UNREACH, [0; 4], &stranger);
    assert_eq!(h.egress(&error), (PASS, error.clone()));
    assert_eq!(h.counter(Counter::IcmpErrorPassed), 2);
    assert_eq!(h.counter(Counter::IcmpErrorNat), 0);
}
