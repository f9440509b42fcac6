//! Datapath behaviour through BPF_PROG_TEST_RUN: the real programs, loaded into the real
//! kernel with private (unpinned) maps programmed by the agent's own plan code, fed crafted
//! frames. Asserts verdicts, exact output bytes, checksums and map contents.
//! Needs root (CAP_BPF); touches no interface.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use gateway_agent::{
    capacity::Capacity,
    datapath::monotonic_ns,
    model::{DesiredState, Protocol},
    plan,
};
use gateway_common::{Counter, CtKey, cluster::Gate, proto};

mod support;
use support::{rng::Rng, *};

#[test]
fn traffic_to_a_non_vip_address_passes_untouched() {
    let mut h = Harness::new();
    let frame = tcp_frame((CLIENT, 40000), (NODE, 22), Tcp::Syn, b"");
    assert_eq!(h.ingress(&frame), (PASS, frame.clone()));
    let reply = tcp_frame((NODE, 22), (CLIENT, 40000), Tcp::Ack, b"x");
    assert_eq!(h.egress(&reply), (PASS, reply.clone()));
    assert_eq!(h.counter(Counter::CtCreated), 0);
}

#[test]
fn an_address_sharing_a_vips_filter_bit_still_passes_untouched() {
    let mut h = Harness::new();
    // Another address whose filter bit is that of a VIP: it takes the slow way and must
    // still come out as not ours, unchanged.
    let twin = (0u32..)
        .map(|i| [10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
        .find(|a| {
            gateway_common::vip_filter_bit(*a) == gateway_common::vip_filter_bit(VIP_AFFINITY)
        })
        .unwrap();
    for frame in [
        tcp_frame((CLIENT, 40000), (twin, 80), Tcp::Syn, b""),
        tcp_frame((CLIENT, 40000), (twin, 8443), Tcp::Ack, b"x"),
    ] {
        assert_eq!(h.ingress(&frame), (PASS, frame.clone()));
    }
    let mut malformed = tcp_frame((CLIENT, 40000), (twin, 80), Tcp::Ack, b"x");
    malformed[IP_FRAGMENT] |= 0x20; // a fragment
    assert_eq!(h.ingress(&malformed), (PASS, malformed.clone()));
    assert_eq!(
        h.counter(Counter::DropUnknownPort) + h.counter(Counter::DropFragment),
        0
    );
}

#[test]
fn arp_request_for_an_announced_vip_gets_an_exact_reply() {
    let mut h = Harness::new();
    let (verdict, out) = h.ingress(&arp_request(CLIENT, VIP_AFFINITY));
    assert_eq!(
        verdict, REDIRECT,
        "sent back out of the interface it came in on"
    );
    let mut expected = CLIENT_MAC.to_vec(); // to the asker
    expected.extend_from_slice(&NODE_MAC); // from the interface's MAC
    expected.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]); // ARP reply
    expected.extend_from_slice(&NODE_MAC);
    expected.extend_from_slice(&VIP_AFFINITY);
    expected.extend_from_slice(&CLIENT_MAC);
    expected.extend_from_slice(&CLIENT);
    assert_eq!(out, expected);
    assert_eq!(h.counter(Counter::ArpReply), 1);
    let entry = h.dp.maps.l2.iter().next().unwrap().unwrap().1;
    assert_eq!(entry.arp_replies, 1, "per-announcement counter");
}

#[test]
fn arp_is_answered_only_while_the_gate_is_open() {
    let mut h = Harness::new();
    let request = arp_request(CLIENT, VIP_AFFINITY);
    // The gate on the datapath's clock (jiffies read as CLOCK_MONOTONIC_COARSE), a second
    // either side of now: far more than the tick both clocks advance by.
    let now = monotonic_ns();
    let second = 1_000_000_000;
    h.dp.maps
        .write_gate(Gate {
            until_ns: now + second,
        })
        .unwrap();
    assert_eq!(
        h.ingress(&request).0,
        REDIRECT,
        "open until a second from now"
    );
    h.dp.maps
        .write_gate(Gate {
            until_ns: now - second,
        })
        .unwrap();
    assert_eq!(
        h.ingress(&request),
        (PASS, request.clone()),
        "closed: passed to the kernel untouched"
    );
    // A fresh map reads zero: closed until the agent opens it.
    h.dp.maps.write_gate(Gate::default()).unwrap();
    assert_eq!(h.ingress(&request), (PASS, request.clone()));
    assert_eq!(h.counter(Counter::ArpReply), 1);
    assert_eq!(h.counter(Counter::ArpGated), 2);
    let entry = h.dp.maps.l2.iter().next().unwrap().unwrap().1;
    assert_eq!(entry.arp_replies, 1, "gated requests are not replies");
    // Requests the gate does not concern stay uncounted.
    let stranger = arp_request(CLIENT, VIP_RANDOM);
    assert_eq!(h.ingress(&stranger), (PASS, stranger.clone()));
    assert_eq!(h.counter(Counter::ArpGated), 2);
}

#[test]
fn arp_for_anything_else_goes_to_the_kernel_untouched() {
    let mut h = Harness::new();
    for frame in [
        arp_request(CLIENT, VIP_RANDOM),         // a VIP not announced here
        arp_request(CLIENT, NODE),               // the node's own address
        arp_request(VIP_AFFINITY, VIP_AFFINITY), // gratuitous ARP
    ] {
        assert_eq!(h.ingress(&frame), (PASS, frame.clone()));
    }
    let mut reply = arp_request(CLIENT, VIP_AFFINITY);
    reply[21] = 2; // an ARP reply, not a request
    assert_eq!(h.ingress(&reply), (PASS, reply.clone()));
    assert_eq!(h.counter(Counter::ArpReply), 0);
}

#[test]
fn a_new_flow_is_dnated_to_a_backend_with_valid_checksums_and_the_client_address_kept() {
    let mut h = Harness::new();
    let frame = tcp_frame((CLIENT, 40000), (VIP_AFFINITY, 80), Tcp::Syn, b"");
    let sent = monotonic_ns();
    let (verdict, out) = h.ingress(&frame);
    let sent = sent..=monotonic_ns();
    assert_eq!(verdict, OK);
    let (addr, port) = ip_dst(&out);
    assert!(
        [POD_A, POD_B].contains(&addr),
        "DNAT to a backend, got {addr:?}"
    );
    assert_eq!(port, 8080);
    assert_eq!(ip_src(&out), (CLIENT, 40000), "no SNAT");
    assert_checksums(&out);
    // Only the destination address, port and the two checksums changed.
    let changed: Vec<usize> = (0..frame.len()).filter(|&i| frame[i] != out[i]).collect();
    assert!(
        changed
            .iter()
            .all(|i| [24, 25, 30, 31, 32, 33, 36, 37, 50, 51].contains(i)),
        "{changed:?}"
    );

    let key = CtKey {
        client_addr: CLIENT,
        vip: VIP_AFFINITY,
        client_port: 40000,
        vip_port: 80,
        proto: proto::TCP,
        _pad: [0; 3],
    };
    let entry = h.dp.maps.conntrack.get(&key, 0).expect("conntrack entry");
    assert_eq!(Ipv4Addr::from(entry.backend_addr), Ipv4Addr::from(addr));
    assert_eq!(h.counter(Counter::CtCreated), 1);
    // Stamped with the datapath's clock (jiffies), which reads as the agent's own to within
    // a tick: ages in `ct list` are right to a few milliseconds.
    let tick = h.dp.clock.tick_ns;
    assert!(
        (1_000_000..=10_000_000).contains(&tick),
        "a tick of {tick} ns (HZ 100 to 1000)"
    );
    // Within two ticks of the agent's clock around the packet (one for either clock's tick,
    // one for the offset measured at load).
    let stamped_within = |stamp: u64, around: &std::ops::RangeInclusive<u64>| {
        stamp + 2 * tick >= *around.start() && stamp <= around.end() + 2 * tick
    };
    assert!(
        stamped_within(entry.last_seen_ns, &sent),
        "stamped {} for a packet sent in {sent:?}, tick {tick}",
        entry.last_seen_ns
    );

    // The rest of the flow follows the entry to the same backend.
    for _ in 0..5 {
        let (v, out) = h.ingress(&tcp_frame(
            (CLIENT, 40000),
            (VIP_AFFINITY, 80),
            Tcp::Ack,
            b"GET /",
        ));
        assert_eq!(v, OK);
        assert_eq!(ip_dst(&out), (addr, 8080));
        assert_checksums(&out);
    }
    assert_eq!(h.counter(Counter::CtCreated), 1);

    // And it keeps pace: 300 ms later, a packet is stamped with the agent's time again.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let later = monotonic_ns();
    h.ingress(&tcp_frame(
        (CLIENT, 40000),
        (VIP_AFFINITY, 80),
        Tcp::Ack,
        b"",
    ));
    let later = later..=monotonic_ns();
    let stamp = h.dp.maps.conntrack.get(&key, 0).unwrap().last_seen_ns;
    assert!(
        stamped_within(stamp, &later) && stamp - entry.last_seen_ns >= 250_000_000,
        "stamped {stamp} for a packet sent in {later:?}, 300 ms after one stamped {}",
        entry.last_seen_ns
    );
}

#[test]
fn replies_from_the_backend_are_rewritten_back_to_the_vip() {
    let mut h = Harness::new();
    let (_, out) = h.ingress(&tcp_frame((CLIENT, 40001), (VIP_RANDOM, 80), Tcp::Syn, b""));
    let backend = ip_dst(&out);
    let reply = tcp_frame(backend, (CLIENT, 40001), Tcp::Ack, b"HTTP/1.1 200 OK");
    let (verdict, out) = h.egress(&reply);
    assert_eq!(verdict, OK);
    assert_eq!(ip_src(&out), (VIP_RANDOM, 80), "the client sees the VIP");
    assert_eq!(ip_dst(&out), (CLIENT, 40001));
    assert_checksums(&out);
    assert_eq!(h.counter(Counter::RevNat), 1);

    // A packet from the backend that belongs to no tracked flow is not touched.
    let unrelated = tcp_frame(backend, (CLIENT, 40999), Tcp::Ack, b"x");
    assert_eq!(h.egress(&unrelated), (PASS, unrelated.clone()));
}

#[test]
fn udp_is_balanced_and_a_zero_checksum_stays_zero() {
    let mut h = Harness::new();
    let frame = udp_frame((CLIENT, 5000), (VIP_AFFINITY, 53), b"query");
    let (verdict, out) = h.ingress(&frame);
    assert_eq!(verdict, OK);
    assert_eq!(ip_dst(&out), (POD_A, 5353));
    assert_checksums(&out);

    let mut no_csum = frame.clone();
    no_csum[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    let (verdict, out) = h.ingress(&no_csum);
    assert_eq!(verdict, OK);
    assert_eq!(
        &out[UDP_CHECK..UDP_CHECK + 2],
        &[0, 0],
        "a UDP checksum of zero means none"
    );
    assert_checksums(&out);

    let reply = udp_frame((POD_A, 5353), (CLIENT, 5000), b"answer");
    let (verdict, out) = h.egress(&reply);
    assert_eq!(verdict, OK);
    assert_eq!(ip_src(&out), (VIP_AFFINITY, 53));
    assert_checksums(&out);
}

/// The datapath writes L4 checksums in place where it can read `ip_summed` (in
/// BPF_PROG_TEST_RUN the frame is CHECKSUM_NONE); the result must be byte for byte what the
/// kernel's own helpers write, for every rewrite and random contents, and for UDP's corner
/// cases: a zero checksum ("none") stays zero, a result of zero goes out as 0xffff.
#[test]
fn checksums_written_in_place_equal_those_of_the_kernels_helpers() {
    let kern_ctx = gateway_agent::datapath::running_kern_ctx()
        .expect("this kernel's BTF has bpf_cast_to_kern_ctx and sk_buff.ip_summed");
    let mut state = reference_state();
    // One backend, so both datapaths balance each new flow to the same place.
    state.frontends.push(frontend(
        "single",
        VIP_RANDOM,
        443,
        gateway_agent::model::Protocol::Tcp,
        None,
        &[(POD_B, 8443)],
    ));
    let capacity = gateway_agent::capacity::Capacity::default();
    let mut in_place = Harness::with_kern_ctx(&state, capacity, Some(kern_ctx));
    let mut helpers = Harness::with_kern_ctx(&state, capacity, None);
    // The in-place code is in the loaded programs, not pruned as dead: the verifier was
    // given ip_summed's offset (without it, only the helper path is left).
    for program in [
        gateway_common::program_names::INGRESS,
        gateway_common::program_names::EGRESS,
    ] {
        let size = |h: &mut Harness| {
            h.dp.program(program)
                .unwrap()
                .info()
                .unwrap()
                .size_translated()
        };
        assert!(size(&mut in_place) > size(&mut helpers), "{program}");
    }
    let mut both = |egress: bool, frame: &[u8]| {
        let run = |h: &mut Harness| {
            if egress {
                h.egress(frame)
            } else {
                h.ingress(frame)
            }
        };
        let (verdict, out) = run(&mut in_place);
        assert_eq!((verdict, &out), (OK, &run(&mut helpers).1), "{frame:02x?}");
        assert_checksums(&out);
        out
    };
    let mut rng = Rng::new(0x9e37_79b9);
    for _ in 0..200 {
        let client = [192, 168, rng.u8(), rng.u8()];
        let port = 1024 + rng.below(60000) as u16;
        let len = rng.below(40);
        let payload = rng.bytes(len);
        both(
            false,
            &tcp_frame((client, port), (VIP_RANDOM, 443), Tcp::Syn, b""),
        );
        both(
            false,
            &tcp_frame((client, port), (VIP_RANDOM, 443), Tcp::Ack, &payload),
        );
        both(
            true,
            &tcp_frame((POD_B, 8443), (client, port), Tcp::Ack, &payload),
        );
        both(
            false,
            &udp_frame((client, port), (VIP_AFFINITY, 53), &payload),
        );
        both(true, &udp_frame((POD_A, 5353), (client, port), &payload));
    }

    // UDP: no checksum stays no checksum.
    let mut none = udp_frame((CLIENT, 5000), (VIP_AFFINITY, 53), b"query");
    none[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    assert_eq!(&both(false, &none)[UDP_CHECK..UDP_CHECK + 2], &[0, 0]);
    // UDP: a datagram whose checksum after the rewrite is zero. With a payload word of 0 it
    // comes out as C; with C in that word the sum of the rewritten datagram is 0xffff, so
    // its checksum is 0, which UDP must send as 0xffff.
    let with_word = |w: [u8; 2]| udp_frame((CLIENT, 5001), (VIP_AFFINITY, 53), &[w[0], w[1], 7]);
    let c = both(false, &with_word([0, 0]));
    let out = both(false, &with_word([c[UDP_CHECK], c[UDP_CHECK + 1]]));
    assert_eq!(&out[UDP_CHECK..UDP_CHECK + 2], &[0xff, 0xff]);
}

/// A kernel whose verifier refuses the in-place checksums (here: a kfunc id that is no
/// function) still gets a working datapath, with the kernel's checksum helpers.
#[test]
fn a_refused_kfunc_falls_back_to_the_checksum_helpers() {
    let running = gateway_agent::datapath::running_kern_ctx().unwrap();
    let bogus = gateway_agent::datapath::KernCtx {
        cast_btf_id: 1,
        ..running
    };
    let mut h = Harness::with_kern_ctx(
        &reference_state(),
        gateway_agent::capacity::Capacity::default(),
        Some(bogus),
    );
    assert_eq!(h.dp.kern_ctx, None);
    let (verdict, out) = h.ingress(&tcp_frame((CLIENT, 40000), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(verdict, OK);
    assert!([POD_A, POD_B].contains(&ip_dst(&out).0));
    assert_checksums(&out);
    assert_eq!(Harness::new().dp.kern_ctx, Some(running));
}

/// Opens `flows` new connections (fresh source ports from `first_port`) and returns the
/// backends they were sent to.
fn backends_seen(h: &mut Harness, vip: [u8; 4], first_port: u16, flows: u16) -> BTreeSet<[u8; 4]> {
    (0..flows)
        .map(|i| {
            let (v, out) = h.ingress(&tcp_frame(
                (CLIENT, first_port + i),
                (vip, 80),
                Tcp::Syn,
                b"",
            ));
            assert_eq!(v, OK);
            ip_dst(&out).0
        })
        .collect()
}

#[test]
fn client_ip_affinity_sends_every_new_flow_of_a_client_to_one_backend() {
    let mut h = Harness::new();
    let seen = backends_seen(&mut h, VIP_AFFINITY, 41000, 40);
    assert_eq!(
        seen.len(),
        1,
        "40 connections of one client, one backend: {seen:?}"
    );
    assert_eq!(h.counter(Counter::AffinityHit), 39);
    // Without affinity the same 40 flows spread over both backends.
    let spread = backends_seen(&mut h, VIP_RANDOM, 42000, 40);
    assert_eq!(spread.len(), 2, "random selection uses every backend");
}

#[test]
fn affinity_pointing_at_a_removed_backend_is_replaced() {
    let mut h = Harness::new();
    let first = *backends_seen(&mut h, VIP_AFFINITY, 41000, 1)
        .iter()
        .next()
        .unwrap();
    let other = if first == POD_A { POD_B } else { POD_A };
    let mut desired = reference_state();
    desired.frontends[0]
        .backends
        .retain(|b| b.addr != Ipv4Addr::from(first));
    h.program(&desired);
    let seen = backends_seen(&mut h, VIP_AFFINITY, 41100, 10);
    assert_eq!(seen, BTreeSet::from([other]));
}

#[test]
fn a_flow_whose_backend_was_removed_is_dropped_not_moved() {
    let mut h = Harness::new();
    let (_, out) = h.ingress(&tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Syn, b""));
    let backend = ip_dst(&out).0;
    let mut desired = reference_state();
    for f in &mut desired.frontends {
        f.backends.retain(|b| b.addr != Ipv4Addr::from(backend));
    }
    h.program(&desired);
    let mid_stream = tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Ack, b"more");
    assert_eq!(h.ingress(&mid_stream), (SHOT, mid_stream.clone()));
    assert_eq!(h.counter(Counter::DropBackendGone), 1);
    // A new connection reusing the tuple is balanced afresh.
    let (v, out) = h.ingress(&tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(v, OK);
    assert_ne!(ip_dst(&out).0, backend);
}

#[test]
fn a_closed_connection_tuple_reused_by_a_new_syn_is_balanced_afresh() {
    let mut h = Harness::new();
    h.ingress(&tcp_frame((CLIENT, 42100), (VIP_RANDOM, 80), Tcp::Syn, b""));
    h.ingress(&tcp_frame((CLIENT, 42100), (VIP_RANDOM, 80), Tcp::Fin, b""));
    assert_eq!(h.counter(Counter::CtCreated), 1);
    // Retransmitted SYNs of a live connection keep their backend...
    h.ingress(&tcp_frame((CLIENT, 42101), (VIP_RANDOM, 80), Tcp::Syn, b""));
    h.ingress(&tcp_frame((CLIENT, 42101), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(h.counter(Counter::CtCreated), 2);
    // ...but once both sides sent FIN the tuple is free for a new connection.
    let (_, out) = h.ingress(&tcp_frame((CLIENT, 42100), (VIP_RANDOM, 80), Tcp::Syn, b""));
    h.egress(&tcp_frame(ip_dst(&out), (CLIENT, 42100), Tcp::Fin, b""));
    h.ingress(&tcp_frame((CLIENT, 42100), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(
        h.counter(Counter::CtCreated),
        3,
        "the SYN after FIN both ways is a new flow"
    );
}

#[test]
fn a_vip_port_that_is_not_served_is_dropped_and_counted() {
    let mut h = Harness::new();
    let frame = tcp_frame((CLIENT, 40000), (VIP_AFFINITY, 8443), Tcp::Syn, b"");
    assert_eq!(h.ingress(&frame), (SHOT, frame.clone()));
    let udp = udp_frame((CLIENT, 40000), (VIP_RANDOM, 53), b"q");
    assert_eq!(h.ingress(&udp), (SHOT, udp.clone()));
    assert_eq!(h.counter(Counter::DropUnknownPort), 2);
}

#[test]
fn a_service_without_backends_drops_with_its_own_reason() {
    let mut h = Harness::new();
    let frame = tcp_frame((CLIENT, 40000), (VIP_EMPTY, 80), Tcp::Syn, b"");
    assert_eq!(h.ingress(&frame), (SHOT, frame.clone()));
    assert_eq!(h.counter(Counter::DropNoBackend), 1);
}

#[test]
fn a_service_whose_backends_were_all_removed_drops_new_and_established_flows() {
    let mut h = Harness::new();
    let (verdict, out) = h.ingress(&tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(verdict, OK);
    let backend = ip_dst(&out);
    // Its backend pods are gone: a re-plan leaves the service (still programmed, so its
    // traffic is dropped and counted rather than forwarded) without any backend.
    let mut desired = reference_state();
    for f in &mut desired.frontends {
        f.backends
            .retain(|b| ![POD_A, POD_B].contains(&b.addr.octets()) || b.port != 8080);
    }
    assert!(desired.frontends[2].backends.is_empty());
    h.program(&desired);
    let service = h
        .state
        .services
        .iter()
        .find(|(k, _)| k.vip == VIP_RANDOM)
        .unwrap()
        .1;
    assert_eq!(service.backend_count, 0);

    // The established flow: dropped as its backend's, not moved, its replies untouched.
    let established = tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Ack, b"more");
    assert_eq!(h.ingress(&established), (SHOT, established.clone()));
    assert_eq!(h.counter(Counter::DropBackendGone), 1);
    let reply = tcp_frame(backend, (CLIENT, 42000), Tcp::Ack, b"late");
    assert_eq!(h.egress(&reply), (PASS, reply.clone()));

    // New flows, and a new connection on the established flow's tuple: nothing to balance
    // them to.
    for frame in [
        tcp_frame((CLIENT, 42001), (VIP_RANDOM, 80), Tcp::Syn, b""),
        tcp_frame((CLIENT, 42002), (VIP_RANDOM, 80), Tcp::Ack, b"x"),
        tcp_frame((CLIENT, 42000), (VIP_RANDOM, 80), Tcp::Syn, b""),
    ] {
        assert_eq!(h.ingress(&frame), (SHOT, frame.clone()));
    }
    assert_eq!(h.counter(Counter::DropNoBackend), 3);
    assert_eq!(h.counter(Counter::DropBackendGone), 1);
    assert_eq!(h.counter(Counter::CtCreated), 1);

    // Backends back: new flows are balanced again.
    h.program(&reference_state());
    let (verdict, _) = h.ingress(&tcp_frame((CLIENT, 42003), (VIP_RANDOM, 80), Tcp::Syn, b""));
    assert_eq!(verdict, OK);
}

#[test]
fn truncated_and_malformed_frames_are_never_rewritten() {
    let mut h = Harness::new();
    let good = tcp_frame((CLIENT, 40000), (VIP_AFFINITY, 80), Tcp::Ack, b"payload");
    // A truncated ARP request is not answered. (BPF_PROG_TEST_RUN itself refuses IPv4
    // frames shorter than a bare IPv4 header, so those cannot be fed here.)
    for len in [14, 20, 41] {
        let frame = &arp_request(CLIENT, VIP_AFFINITY)[..len];
        assert_eq!(h.ingress(frame), (PASS, frame.to_vec()), "ARP cut at {len}");
    }
    // Addressed to a VIP but cut inside the TCP header or its IP options, or lying about
    // its lengths.
    let mut cases = vec![good[..40].to_vec()];
    let mut options_cut = good[..40].to_vec();
    options_cut[IP] = 0x4f; // IHL 15: 60 bytes of header, the frame holds 26
    cases.push(options_cut);
    let mut bad_ihl = good.clone();
    bad_ihl[IP] = 0x44; // IHL 4 (< 20 bytes)
    cases.push(bad_ihl);
    let mut long_total = good.clone();
    long_total[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(long_total);
    let mut short_total = good.clone();
    short_total[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&30u16.to_be_bytes());
    cases.push(short_total);
    let mut bad_doff = good.clone();
    bad_doff[TCP_DATA_OFFSET] = 0x20; // data offset 2 words
    cases.push(bad_doff);
    for frame in &cases {
        assert_eq!(h.ingress(frame), (SHOT, frame.clone()));
    }
    assert_eq!(h.counter(Counter::DropMalformed), cases.len() as u64);
    assert_eq!(h.counter(Counter::CtCreated), 0);
}

#[test]
fn a_udp_length_past_the_ipv4_total_length_is_malformed() {
    // Found by fuzz_frames: a datagram whose UDP length runs past the IPv4 packet was
    // balanced and rewritten (the receiving stack drops it as truncated).
    let mut h = Harness::new();
    let good = udp_frame((CLIENT, 5000), (VIP_AFFINITY, 53), b"query");
    let mut cases = Vec::new();
    for udp_len in [14u16, 0xffff, 7, 0] {
        let mut frame = good.clone();
        frame[UDP_LEN..UDP_LEN + 2].copy_from_slice(&udp_len.to_be_bytes());
        cases.push(frame);
    }
    // Cut after the UDP header, the total length saying so, the UDP length still 13.
    let mut cut = good[..42].to_vec();
    cut[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&28u16.to_be_bytes());
    fix_ip_checksum(&mut cut, IP);
    cases.push(cut);
    for frame in &cases {
        assert_eq!(h.ingress(frame), (SHOT, frame.clone()));
    }
    assert_eq!(h.counter(Counter::DropMalformed), cases.len() as u64);
    // A reply lying the same way is not reverse-NATed either.
    let (_, out) = h.ingress(&good);
    assert_eq!(ip_dst(&out), (POD_A, 5353));
    let mut reply = udp_frame((POD_A, 5353), (CLIENT, 5000), b"answer");
    reply[UDP_LEN..UDP_LEN + 2].copy_from_slice(&15u16.to_be_bytes());
    assert_eq!(h.egress(&reply), (PASS, reply.clone()));
    assert_eq!(h.counter(Counter::CtCreated), 1);
}

#[test]
fn fragments_to_a_vip_are_dropped_deliberately() {
    let mut h = Harness::new();
    let mut first = tcp_frame((CLIENT, 40000), (VIP_AFFINITY, 80), Tcp::Ack, b"payload");
    first[IP_FRAGMENT] |= 0x20; // more fragments
    let mut later = tcp_frame((CLIENT, 40000), (VIP_AFFINITY, 80), Tcp::Ack, b"payload");
    later[IP_FRAGMENT + 1] = 0x10; // offset
    for frame in [first, later] {
        assert_eq!(h.ingress(&frame), (SHOT, frame.clone()));
    }
    assert_eq!(h.counter(Counter::DropFragment), 2);
}

#[test]
fn ip_options_are_skipped_to_find_the_ports() {
    let mut h = Harness::new();
    let plain = tcp_frame((CLIENT, 40000), (VIP_RANDOM, 80), Tcp::Syn, b"");
    // Insert 4 bytes of options (NOPs + EOL) and fix lengths and the header checksum.
    let mut frame = plain[..L4].to_vec();
    frame.extend_from_slice(&[1, 1, 1, 0]);
    frame.extend_from_slice(&plain[L4..]);
    frame[IP] = 0x46;
    let total = u16::from_be_bytes([frame[IP_TOTAL_LEN], frame[IP_TOTAL_LEN + 1]]) + 4;
    frame[IP_TOTAL_LEN..IP_TOTAL_LEN + 2].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut frame, IP);
    assert_checksums(&frame);
    let (verdict, out) = h.ingress(&frame);
    assert_eq!(verdict, OK);
    assert_eq!(ip_dst(&out).1, 8080);
    assert_checksums(&out);
}

#[test]
fn per_service_and_per_backend_counters_add_up() {
    let mut h = Harness::new();
    let frame = tcp_frame((CLIENT, 43000), (VIP_RANDOM, 80), Tcp::Syn, b"");
    let (_, out) = h.ingress(&frame);
    h.ingress(&tcp_frame(
        (CLIENT, 43000),
        (VIP_RANDOM, 80),
        Tcp::Ack,
        b"12345",
    ));
    h.egress(&tcp_frame(
        ip_dst(&out),
        (CLIENT, 43000),
        Tcp::Ack,
        b"reply",
    ));
    let (key, service) = h
        .state
        .services
        .iter()
        .find(|(k, _)| Ipv4Addr::from(k.vip) == Ipv4Addr::from(VIP_RANDOM))
        .unwrap();
    let t = h.dp.maps.service_traffic(service.id).unwrap();
    assert_eq!(
        (t.fwd_packets, t.rev_packets),
        (2, 1),
        "{}",
        plan::frontend_label(key)
    );
    assert_eq!(t.fwd_bytes, (frame.len() * 2 + 5) as u64);
    let backend_id = h
        .state
        .backends
        .iter()
        .find(|(_, b)| (b.addr, b.port) == ip_dst(&out))
        .unwrap()
        .0;
    let b = h.dp.maps.backend_traffic(*backend_id).unwrap();
    assert_eq!((b.fwd_packets, b.rev_packets), (2, 1));
}

#[test]
fn affinity_of_a_surviving_backend_stays_across_a_replan() {
    let mut h = Harness::new();
    let first = *backends_seen(&mut h, VIP_AFFINITY, 44000, 1)
        .iter()
        .next()
        .unwrap();
    // A third backend joins the service: make-before-break leaves the client's entry alone.
    let mut desired = reference_state();
    desired.frontends[0]
        .backends
        .push(gateway_agent::model::BackendAddr {
            addr: [10, 244, 1, 12].into(),
            port: 8080,
            remote: false,
        });
    h.program(&desired);
    let seen = backends_seen(&mut h, VIP_AFFINITY, 44100, 20);
    assert_eq!(
        seen,
        BTreeSet::from([first]),
        "the client stays with its backend"
    );
    assert_eq!(h.dp.maps.affinity.iter().count(), 1);
}

#[test]
fn conntrack_evictions_of_a_full_table_can_be_counted() {
    let capacity = gateway_agent::capacity::Capacity {
        conntrack: 64,
        ..Default::default()
    };
    let mut h = Harness::with(&reference_state(), capacity);
    for i in 0..300u16 {
        let (v, _) = h.ingress(&tcp_frame(
            (CLIENT, 45000 + i),
            (VIP_RANDOM, 80),
            Tcp::Syn,
            b"",
        ));
        assert_eq!(v, OK);
    }
    // A closed connection's tuple taken over by a new one is not an eviction.
    h.ingress(&tcp_frame((CLIENT, 45299), (VIP_RANDOM, 80), Tcp::Fin, b""));
    let (_, out) = h.ingress(&tcp_frame((CLIENT, 45299), (VIP_RANDOM, 80), Tcp::Ack, b""));
    h.egress(&tcp_frame(ip_dst(&out), (CLIENT, 45299), Tcp::Fin, b""));
    h.ingress(&tcp_frame((CLIENT, 45299), (VIP_RANDOM, 80), Tcp::Syn, b""));
    let present = h.dp.maps.conntrack.keys().count() as u64;
    assert!(present <= 64, "{present}");
    assert_eq!(h.counter(Counter::CtCreated), 301);
    assert_eq!(h.counter(Counter::CtReplaced), 1);
    let evicted = h.counter(Counter::CtCreated) - h.counter(Counter::CtReplaced) - present;
    assert_eq!(
        evicted,
        300 - present,
        "every flow beyond the table's size pushed one out"
    );
}

#[test]
fn affinity_evictions_of_a_full_table_can_be_counted() {
    let capacity = gateway_agent::capacity::Capacity {
        affinity: 64,
        ..Default::default()
    };
    let mut h = Harness::with(&reference_state(), capacity);
    let client = |i: u16| [100, 64, (i >> 8) as u8, i as u8];
    let mut backend_of = BTreeMap::new();
    for i in 0..300u16 {
        let (v, out) = h.ingress(&tcp_frame(
            (client(i), 46000),
            (VIP_AFFINITY, 80),
            Tcp::Syn,
            b"",
        ));
        assert_eq!(v, OK);
        backend_of.insert(client(i), ip_dst(&out).0);
    }
    // A second flow of a client still remembered is a hit, not a new entry.
    let remembered =
        h.dp.maps
            .affinity
            .keys()
            .next()
            .unwrap()
            .unwrap()
            .client_addr;
    h.ingress(&tcp_frame(
        (remembered, 46001),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    assert_eq!(h.counter(Counter::AffinityHit), 1);
    assert_eq!(h.counter(Counter::AffinityCreated), 300);
    let present = h.dp.maps.affinity.keys().count() as u64;
    assert!(present <= 64, "{present}");

    // POD_B leaves the service: the agent removes its clients' entries and counts them, so
    // the estimate of evictions does not grow.
    let on_b =
        h.dp.maps
            .affinity
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(k, _)| backend_of[&k.client_addr] == POD_B)
            .count() as u64;
    assert!(on_b > 0, "some remembered client is on POD_B");
    let mut desired = reference_state();
    desired.frontends[0]
        .backends
        .retain(|b| b.addr.octets() != POD_B);
    h.program(&desired);
    assert_eq!(h.counter(Counter::AffinityRemoved), on_b);
    let left = h.dp.maps.affinity.keys().count() as u64;
    assert_eq!(left, present - on_b);
    let evicted = h.counter(Counter::AffinityCreated) - h.counter(Counter::AffinityRemoved) - left;
    assert_eq!(
        evicted,
        300 - present,
        "every client beyond the table's size pushed one out, and only those"
    );
}

#[test]
fn a_flow_whose_backend_left_its_service_is_dropped_even_if_the_backend_serves_another() {
    let mut h = Harness::new();
    // A flow to the external service on POD_A, and one to the internal service on POD_A.
    let port = (46000u16..)
        .find(|&p| {
            let (_, out) = h.ingress(&tcp_frame((CLIENT, p), (VIP_RANDOM, 80), Tcp::Syn, b""));
            ip_dst(&out).0 == POD_A
        })
        .unwrap();
    let other = (47000u16..)
        .find(|&p| {
            let client = [192, 168, 10, (p % 200) as u8 + 20];
            let (_, out) = h.ingress(&tcp_frame((client, p), (VIP_AFFINITY, 80), Tcp::Syn, b""));
            ip_dst(&out).0 == POD_A
        })
        .unwrap();
    // POD_A leaves the external service but still serves the internal one.
    let mut desired = reference_state();
    desired.frontends[2]
        .backends
        .retain(|b| b.addr != Ipv4Addr::from(POD_A));
    h.program(&desired);
    let gone = h.counter(Counter::DropBackendGone);
    let frame = tcp_frame((CLIENT, port), (VIP_RANDOM, 80), Tcp::Ack, b"more");
    assert_eq!(
        h.ingress(&frame),
        (SHOT, frame.clone()),
        "not forwarded half-NATed"
    );
    assert_eq!(h.counter(Counter::DropBackendGone), gone + 1);
    let client = [192, 168, 10, (other % 200) as u8 + 20];
    let (v, out) = h.ingress(&tcp_frame(
        (client, other),
        (VIP_AFFINITY, 80),
        Tcp::Ack,
        b"more",
    ));
    assert_eq!(
        (v, ip_dst(&out).0),
        (OK, POD_A),
        "the other service's flow goes on"
    );
}

/// A reload's last steps end the flows and affinity its writes took away. An agent killed
/// before them leaves flows on a backend that left the service (it still serves another,
/// so nothing else stops them), affinity to it, and flows from clients outside new source
/// ranges; the next agent finds them from the flows themselves when it adopts the maps.
#[test]
fn flows_a_killed_reload_left_behind_are_settled_when_the_next_agent_adopts_the_maps() {
    use gateway_agent::config::Ipv4Net;
    let mut h = Harness::new();
    // A flow and an affinity entry on POD_A for the internal service (POD_A:8080 also
    // serves the external one), and a flow of CLIENT_2 to the external service.
    let client = (1u8..)
        .map(|i| [192, 168, 10, 100 + i])
        .find(|&c| {
            let (_, out) = h.ingress(&tcp_frame((c, 40000), (VIP_AFFINITY, 80), Tcp::Syn, b""));
            ip_dst(&out).0 == POD_A
        })
        .unwrap();
    let (verdict, _) = h.ingress(&tcp_frame(
        (CLIENT_2, 40000),
        (VIP_RANDOM, 80),
        Tcp::Syn,
        b"",
    ));
    assert_eq!(verdict, OK);

    // The reload: POD_A leaves the internal service, the external one admits CLIENT only.
    let mut desired = reference_state();
    desired.frontends[0]
        .backends
        .retain(|b| b.addr != Ipv4Addr::from(POD_A));
    desired.frontends[2].source_ranges = Some(vec!["192.168.10.10/32".parse::<Ipv4Net>().unwrap()]);
    h.program_but(&desired, |op| {
        matches!(op, plan::Op::EndMemberships(_) | plan::Op::DenyOutside(_))
    });
    let flow = tcp_frame((client, 40000), (VIP_AFFINITY, 80), Tcp::Ack, b"more");
    let outside = tcp_frame((CLIENT_2, 40000), (VIP_RANDOM, 80), Tcp::Ack, b"more");
    // What the killed agent left: both flows go on, the client's next flow goes to POD_A.
    assert_eq!(ip_dst(&h.ingress(&flow).1).0, POD_A);
    assert_eq!(h.ingress(&outside).0, OK);
    let (_, out) = h.ingress(&tcp_frame(
        (client, 40001),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    assert_eq!(
        ip_dst(&out).0,
        POD_A,
        "affinity still points at the backend that left"
    );

    let rules = h.state.flow_rules();
    let settled = h.dp.maps.settle_flows(&rules).unwrap();
    assert_eq!(
        (
            settled.flows_ended,
            settled.flows_denied,
            settled.affinity_ended
        ),
        (2, 1, 1),
        "two flows of the client on POD_A, CLIENT_2's flow, the client's affinity"
    );
    let gone = h.counter(Counter::DropBackendGone);
    assert_eq!(h.ingress(&flow), (SHOT, flow.clone()));
    assert_eq!(h.counter(Counter::DropBackendGone), gone + 1);
    let denied = h.counter(Counter::DropSourceRange);
    assert_eq!(h.ingress(&outside), (SHOT, outside.clone()));
    assert_eq!(h.counter(Counter::DropSourceRange), denied + 1);
    let (verdict, out) = h.ingress(&tcp_frame(
        (client, 40002),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    assert_eq!(
        (verdict, ip_dst(&out).0),
        (OK, POD_B),
        "a new flow finds POD_B"
    );

    // Settled flows stay settled; a consistent state has nothing to settle.
    assert!(h.dp.maps.settle_flows(&rules).unwrap().is_empty());
    let mut fresh = Harness::new();
    fresh.ingress(&tcp_frame(
        (CLIENT, 40000),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    fresh.program(&desired);
    let rules = fresh.state.flow_rules();
    assert!(fresh.dp.maps.settle_flows(&rules).unwrap().is_empty());
}

/// One backend address may serve any number of frontends (five gateways in front of one
/// envoy): 64 services on POD_A:8080, each flow's reply carries its own VIP. The first
/// four are found through the backend's reverse NAT entry, the others through the
/// reply-side conntrack entries their flows get; a flow opened while the backend served
/// only one frontend keeps being reverse-NATed after 63 more arrive.
#[test]
fn sixty_four_services_on_one_backend_each_reply_carries_its_own_vip() {
    let vip = |i: u16| [10, 96, 1, i as u8];
    let services = |n: u16| DesiredState {
        frontends: (0..n)
            .map(|i| {
                frontend(
                    &format!("gw-{i}"),
                    vip(i),
                    443,
                    Protocol::Tcp,
                    None,
                    &[(POD_A, 8443)],
                )
            })
            .collect(),
        ..Default::default()
    };
    let mut h = Harness::with(&services(1), Capacity::default());
    let open = |h: &mut Harness, i: u16, port: u16| {
        let (v, out) = h.ingress(&tcp_frame((CLIENT, port), (vip(i), 443), Tcp::Syn, b""));
        assert_eq!((v, ip_dst(&out)), (OK, (POD_A, 8443)), "service {i}");
    };
    open(&mut h, 0, 30000);
    h.program(&services(64));
    for i in 0..64 {
        open(&mut h, i, 31000 + i);
    }
    // Replies in another order than the flows were opened.
    for i in (0..64).rev() {
        let reply = tcp_frame((POD_A, 8443), (CLIENT, 31000 + i), Tcp::Ack, b"hello");
        let (v, out) = h.egress(&reply);
        assert_eq!(v, OK, "service {i}");
        assert_eq!(ip_src(&out), (vip(i), 443), "service {i}");
        assert_eq!(ip_dst(&out), (CLIENT, 31000 + i));
        assert_checksums(&out);
    }
    let reply = tcp_frame((POD_A, 8443), (CLIENT, 30000), Tcp::Ack, b"");
    assert_eq!(
        ip_src(&h.egress(&reply).1),
        (vip(0), 443),
        "the oldest flow"
    );
    assert_eq!(h.counter(Counter::RevNat), 65);
    // Every flow opened while the backend serves more frontends than its reverse NAT entry
    // lists has a reply-side entry; the older flow has none.
    assert_eq!(h.dp.maps.ct_reply.keys().count(), 64);
    // Back to one service: its flow is still reverse-NATed, the others' flows are over.
    h.program(&services(1));
    assert_eq!(ip_src(&h.egress(&reply).1), (vip(0), 443));
    let gone = tcp_frame((POD_A, 8443), (CLIENT, 31063), Tcp::Ack, b"");
    assert_eq!(h.egress(&gone), (PASS, gone.clone()));
}

/// A backend whose endpoint terminates drains (KEP-1669): its flows and their replies go on,
/// its clients' affinity ends so their new connections go elsewhere, and it takes no new
/// flow; once it leaves the EndpointSlice its flows end as a removed backend's do.
#[test]
fn a_draining_backend_keeps_its_flows_and_takes_no_new_ones() {
    let mut h = Harness::new();
    let (_, out) = h.ingress(&tcp_frame(
        (CLIENT, 48000),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    let draining = ip_dst(&out).0;
    let other = if draining == POD_A { POD_B } else { POD_A };
    let mut desired = reference_state();
    let f = &mut desired.frontends[0];
    let (leaving, staying): (Vec<_>, Vec<_>) = f
        .backends
        .iter()
        .partition(|b| b.addr == Ipv4Addr::from(draining));
    f.draining = leaving;
    f.backends = staying;
    h.program(&desired);

    let established = tcp_frame((CLIENT, 48000), (VIP_AFFINITY, 80), Tcp::Ack, b"more");
    let (verdict, out) = h.ingress(&established);
    assert_eq!(
        (verdict, ip_dst(&out)),
        (OK, (draining, 8080)),
        "the flow goes on"
    );
    let reply = tcp_frame((draining, 8080), (CLIENT, 48000), Tcp::Ack, b"data");
    assert_eq!(ip_src(&h.egress(&reply).1), (VIP_AFFINITY, 80));
    // The same client's new connections, and everyone else's, go to the other backend.
    assert_eq!(
        backends_seen(&mut h, VIP_AFFINITY, 48100, 20),
        BTreeSet::from([other])
    );
    for i in 0..20u8 {
        let client = [192, 168, 10, 100 + i];
        let (_, out) = h.ingress(&tcp_frame(
            (client, 48200),
            (VIP_AFFINITY, 80),
            Tcp::Syn,
            b"",
        ));
        assert_eq!(ip_dst(&out).0, other);
    }
    assert_eq!(h.counter(Counter::DropBackendGone), 0);

    // Gone from the slice: its flow ends.
    desired.frontends[0].draining.clear();
    h.program(&desired);
    assert_eq!(h.ingress(&established), (SHOT, established.clone()));
    assert_eq!(h.counter(Counter::DropBackendGone), 1);
}

/// `loadBalancerSourceRanges`: only clients in the service's prefixes start flows; others
/// are dropped and counted, globally and for the service; a reload that changes the ranges
/// ends the flows of clients it leaves out; an empty list of IPv4 ranges admits nobody, no
/// ranges at all everybody.
#[test]
fn source_ranges_admit_only_their_clients_and_a_reload_applies_to_open_flows() {
    use gateway_agent::config::Ipv4Net;
    let ranges = |nets: &[&str]| Some(nets.iter().map(|n| n.parse::<Ipv4Net>().unwrap()).collect());
    let mut desired = reference_state();
    desired.frontends[2].source_ranges = ranges(&["192.168.10.10/32", "10.0.0.0/8"]);
    let mut h = Harness::with(&desired, Capacity::default());
    let syn =
        |client: [u8; 4], port: u16| tcp_frame((client, port), (VIP_RANDOM, 80), Tcp::Syn, b"");
    let (verdict, _) = h.ingress(&syn(CLIENT, 49000));
    assert_eq!(verdict, OK, "in the first range");
    let (verdict, _) = h.ingress(&syn([10, 1, 2, 3], 49000));
    assert_eq!(verdict, OK, "in the second range");
    let outside = syn(CLIENT_2, 49000);
    assert_eq!(h.ingress(&outside), (SHOT, outside.clone()));
    assert_eq!(h.counter(Counter::DropSourceRange), 1);
    assert_eq!(h.counter(Counter::CtCreated), 2);
    let id = |h: &Harness| {
        h.state
            .services
            .iter()
            .find(|(k, _)| k.vip == VIP_RANDOM && k.port == 80)
            .unwrap()
            .1
            .id
    };
    assert_eq!(h.dp.maps.service_traffic(id(&h)).unwrap().denied_packets, 1);
    // Other services of the VIP's node are not restricted.
    let (verdict, _) = h.ingress(&tcp_frame(
        (CLIENT_2, 49000),
        (VIP_AFFINITY, 80),
        Tcp::Syn,
        b"",
    ));
    assert_eq!(verdict, OK);

    // The ranges change: CLIENT's open flow ends, CLIENT_2 is admitted now.
    desired.frontends[2].source_ranges = ranges(&["192.168.10.11/32"]);
    h.program(&desired);
    let established = tcp_frame((CLIENT, 49000), (VIP_RANDOM, 80), Tcp::Ack, b"more");
    assert_eq!(h.ingress(&established), (SHOT, established.clone()));
    assert_eq!(h.counter(Counter::DropSourceRange), 2);
    assert_eq!(
        h.ingress(&syn(CLIENT, 49000)).0,
        SHOT,
        "a new SYN is judged afresh"
    );
    assert_eq!(h.ingress(&syn(CLIENT_2, 49001)).0, OK);
    let (verdict, _) = h.ingress(&tcp_frame(
        ([10, 1, 2, 3], 49000),
        (VIP_RANDOM, 80),
        Tcp::Ack,
        b"",
    ));
    assert_eq!(verdict, SHOT, "10/8 is gone too");

    // IPv6 ranges only (left out by the config): nobody. No ranges: everybody.
    desired.frontends[2].source_ranges = Some(Vec::new());
    h.program(&desired);
    assert_eq!(h.ingress(&syn(CLIENT_2, 49002)).0, SHOT);
    desired.frontends[2].source_ranges = None;
    h.program(&desired);
    assert_eq!(h.ingress(&syn([203, 0, 113, 9], 49003)).0, OK);
    assert_eq!(h.dp.maps.source_ranges.keys().count(), 0);
}
