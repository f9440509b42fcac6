//! Flows to a backend on another node (externalTrafficPolicy Cluster), through
//! BPF_PROG_TEST_RUN on the uplink of the test thread's own network namespace (see
//! `support::netns`: the node's address, a route to the other node's pods, neighbours):
//! DNAT and SNAT to the uplink's address, routed out through the FIB; the replies,
//! recognised at ingress, translated back and routed to the client. Exact bytes, verdicts
//! and map contents. Needs root.

use gateway_agent::{
    capacity::Capacity,
    model::{DesiredState, Protocol},
};
use gateway_common::{CT_F_SNAT, Counter, CtKey, DatapathConfig, proto, snat};

mod support;
use support::*;

const VIP: [u8; 4] = VIP_RANDOM;

/// A Cluster service on VIP:80 with one backend on the other node, one on this node, and
/// a UDP port with the remote one only.
fn state() -> DesiredState {
    DesiredState {
        frontends: vec![
            cluster(frontend(
                "web",
                VIP,
                80,
                Protocol::Tcp,
                None,
                &[(POD_REMOTE, 8080)],
            )),
            cluster(frontend(
                "mixed",
                VIP,
                81,
                Protocol::Tcp,
                None,
                &[(POD_A, 8080), (POD_REMOTE, 8081)],
            )),
            cluster(frontend(
                "dns",
                VIP,
                53,
                Protocol::Udp,
                None,
                &[(POD_REMOTE, 5353)],
            )),
        ],
        ..Default::default()
    }
}

/// The harness of [`state`] with SNAT ports `ports` only (lifetimes as the defaults, changed
/// by `tune` first); returns the configuration written.
fn with_ports(
    ports: (u16, u16),
    tune: impl FnOnce(&mut DatapathConfig),
) -> (Harness, DatapathConfig) {
    let mut h = Harness::with(&state(), Capacity::default());
    let mut config =
        DatapathConfig::from_secs(21600, 3600, h.dp.clock).with_snat_ports(ports.0, ports.1);
    tune(&mut config);
    h.dp.maps.write_config(config).unwrap();
    (h, config)
}

fn eth(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    let mac = |at: usize| <[u8; 6]>::try_from(&frame[at..at + 6]).unwrap();
    (mac(0), mac(6))
}

fn ct_key(client: ([u8; 4], u16), vip: ([u8; 4], u16), protocol: u8) -> CtKey {
    CtKey {
        client_addr: client.0,
        vip: vip.0,
        client_port: client.1,
        vip_port: vip.1,
        proto: protocol,
        _pad: [0; 3],
    }
}

/// The flow holding SNAT port `to` (this node's address and port) for replies from
/// `backend`, as its `gw_snat_ports` slot says; `None` when the slot was never claimed.
fn holder(h: &Harness, backend: ([u8; 4], u16), to: ([u8; 4], u16), protocol: u8) -> Option<CtKey> {
    let slot =
        h.dp.maps
            .snat_ports
            .get(&snat::slot(to.0, backend, protocol, to.1), 0)
            .unwrap();
    (slot.generation != 0).then(|| {
        assert_eq!(slot.generation % 2, 0, "no claim left half-done");
        slot.holder(protocol)
    })
}

/// The slots ever claimed: (index, generation, holder).
fn claimed(h: &Harness) -> Vec<(u32, u32, CtKey)> {
    (0..gateway_common::SNAT_SLOTS)
        .filter_map(|i| {
            let slot = h.dp.maps.snat_ports.get(&i, 0).unwrap();
            (slot.generation != 0).then(|| (i, slot.generation, slot.holder(proto::TCP)))
        })
        .collect()
}

#[test]
fn a_flow_to_a_remote_backend_is_snated_to_the_node_and_routed_to_the_backends_node() {
    let mut h = Harness::with(&state(), Capacity::default());
    let syn = tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Syn, b"");
    let (verdict, out) = h.uplink_ingress(&syn);
    assert_eq!(verdict, REDIRECT, "sent on by the datapath, not the stack");
    assert_eq!(ip_dst(&out), (POD_REMOTE, 8080));
    assert_eq!(
        ip_src(&out),
        (NODE, 40000),
        "from the uplink's address, the client's port kept"
    );
    assert_eq!(
        eth(&out),
        (REMOTE_NODE_MAC, NODE_MAC),
        "to the node the route goes through, from the uplink"
    );
    assert_checksums(&out);
    // Only the MACs, the addresses, the ports and the checksums changed.
    let changed: Vec<usize> = (0..syn.len()).filter(|&i| syn[i] != out[i]).collect();
    let allowed: Vec<usize> = (0..12)
        .chain([IP_CHECK, IP_CHECK + 1])
        .chain(IP_SRC..IP_DST + 4)
        .chain(L4..L4 + 4)
        .chain([TCP_CHECK, TCP_CHECK + 1])
        .collect();
    assert!(changed.iter().all(|i| allowed.contains(i)), "{changed:?}");

    let key = ct_key((CLIENT, 40000), (VIP, 80), proto::TCP);
    let entry = h.dp.maps.conntrack.get(&key, 0).expect("conntrack entry");
    assert_ne!(entry.flags & CT_F_SNAT, 0);
    assert_eq!((entry.snat_addr, entry.snat_port), (NODE, 40000));
    assert_eq!(
        holder(&h, (POD_REMOTE, 8080), (NODE, 40000), proto::TCP),
        Some(key),
        "the port's slot names the flow"
    );
    assert_eq!(h.counter(Counter::CtCreated), 1);
    assert_eq!(h.counter(Counter::SnatCreated), 1);

    // The rest of the flow goes the same way, without another entry.
    let (verdict, out) =
        h.uplink_ingress(&tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Ack, b"GET /"));
    assert_eq!(verdict, REDIRECT);
    assert_eq!(
        (ip_src(&out), ip_dst(&out)),
        ((NODE, 40000), (POD_REMOTE, 8080))
    );
    assert_checksums(&out);
    assert_eq!(h.counter(Counter::CtCreated), 1);
    assert_eq!(claimed(&h).len(), 1, "one port claimed, once");
    assert_eq!(h.dp.maps.ct_reply.keys().count(), 0, "no reply-side entry");
}

#[test]
fn a_reply_to_the_node_is_translated_back_to_the_vip_and_routed_to_the_client() {
    let mut h = Harness::with(&state(), Capacity::default());
    h.uplink_ingress(&tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Syn, b""));
    let reply = tcp_frame((POD_REMOTE, 8080), (NODE, 40000), Tcp::SynAck, b"");
    let (verdict, out) = h.uplink_ingress(&reply);
    assert_eq!(verdict, REDIRECT);
    assert_eq!(ip_src(&out), (VIP, 80), "the client sees the VIP");
    assert_eq!(ip_dst(&out), (CLIENT, 40000));
    assert_eq!(eth(&out), (CLIENT_MAC, NODE_MAC));
    assert_checksums(&out);
    assert_eq!(h.counter(Counter::RevNat), 1);

    // A client the node has no neighbour entry for: the kernel resolves it
    // (bpf_redirect_neigh), so the frame leaves the program with its MACs as they were.
    h.uplink_ingress(&tcp_frame((CLIENT_2, 40001), (VIP, 80), Tcp::Syn, b""));
    let reply = tcp_frame((POD_REMOTE, 8080), (NODE, 40001), Tcp::SynAck, b"");
    let (verdict, out) = h.uplink_ingress(&reply);
    assert_eq!(verdict, REDIRECT);
    assert_eq!((ip_src(&out), ip_dst(&out)), ((VIP, 80), (CLIENT_2, 40001)));
    assert_eq!(eth(&out), eth(&reply));
    assert_checksums(&out);

    // The same reply on its way out (egress) is not ours: replies of SNATed flows come
    // back to the node, never past it.
    let (verdict, out) = h.uplink_egress(&reply);
    assert_eq!((verdict, out), (PASS, reply.clone()));

    // Anything else from the backend to the node: passed untouched, to the node's stack.
    for frame in [
        tcp_frame((POD_REMOTE, 8080), (NODE, 40999), Tcp::Ack, b"x"),
        tcp_frame((POD_REMOTE, 8080), (NODE, 22), Tcp::Ack, b"x"),
        tcp_frame((POD_REMOTE, 9999), (NODE, 40000), Tcp::Ack, b"x"),
        udp_frame((POD_REMOTE, 8080), (NODE, 40000), b"x"),
        icmp_echo_request(POD_REMOTE, NODE),
    ] {
        assert_eq!(h.uplink_ingress(&frame), (PASS, frame.clone()));
    }
    assert_eq!(h.counter(Counter::RevNat), 2);
}

#[test]
fn a_local_backend_of_a_cluster_service_keeps_the_client_address() {
    let mut h = Harness::with(&state(), Capacity::default());
    let mut seen = std::collections::BTreeSet::new();
    for port in 41000..41040 {
        let (verdict, out) = h.uplink_ingress(&tcp_frame((CLIENT, port), (VIP, 81), Tcp::Syn, b""));
        assert_checksums(&out);
        match ip_dst(&out) {
            (POD_A, 8080) => {
                assert_eq!((verdict, ip_src(&out)), (OK, (CLIENT, port)), "DNAT only");
            }
            (POD_REMOTE, 8081) => {
                assert_eq!((verdict, ip_src(&out)), (REDIRECT, (NODE, port)));
            }
            other => panic!("{other:?}"),
        }
        seen.insert(ip_dst(&out).0);
    }
    assert_eq!(seen.len(), 2, "both backends take flows");
}

#[test]
fn clients_on_the_same_port_get_different_snat_ports_and_their_own_replies() {
    let mut h = Harness::with(&state(), Capacity::default());
    let clients = [CLIENT, CLIENT_2, [192, 168, 10, 12], [192, 168, 10, 13]];
    let mut ports = Vec::new();
    for client in clients {
        let (verdict, out) =
            h.uplink_ingress(&tcp_frame((client, 40000), (VIP, 80), Tcp::Syn, b""));
        assert_eq!(verdict, REDIRECT);
        let (addr, port) = ip_src(&out);
        assert_eq!(addr, NODE);
        assert!((1024..=65535).contains(&port));
        ports.push(port);
    }
    assert_eq!(ports[0], 40000, "the first keeps the client's port");
    let mut distinct = ports.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        clients.len(),
        "no two flows share a tuple: {ports:?}"
    );
    for (client, port) in clients.iter().zip(&ports) {
        let reply = tcp_frame((POD_REMOTE, 8080), (NODE, *port), Tcp::Ack, b"mine");
        let (verdict, out) = h.uplink_ingress(&reply);
        assert_eq!(verdict, REDIRECT);
        assert_eq!(ip_dst(&out), (*client, 40000), "port {port}");
    }
    // A new connection on a closed flow's tuple takes the same port again.
    h.uplink_ingress(&tcp_frame((CLIENT_2, 40000), (VIP, 80), Tcp::Rst, b""));
    let (_, out) = h.uplink_ingress(&tcp_frame((CLIENT_2, 40000), (VIP, 80), Tcp::Syn, b""));
    assert_eq!(ip_src(&out), (NODE, ports[1]));
    assert_eq!(h.counter(Counter::CtReplaced), 1);
}

#[test]
fn snat_ports_running_out_drop_new_flows_and_never_take_a_held_port() {
    let (mut h, _) = with_ports((50000, 50001), |_| ());
    let clients = [CLIENT, CLIENT_2, [192, 168, 10, 12]];
    let mut ports = Vec::new();
    for client in &clients[..2] {
        let (verdict, out) =
            h.uplink_ingress(&tcp_frame((*client, 40000), (VIP, 80), Tcp::Syn, b""));
        assert_eq!(verdict, REDIRECT);
        ports.push(ip_src(&out).1);
    }
    ports.sort();
    assert_eq!(
        ports,
        [50000, 50001],
        "outside the range: ports from the range"
    );
    let held = claimed(&h);
    assert_eq!(held.len(), 2);
    // Both ports are held by live flows: the third client's flow is dropped, counted.
    let syn = tcp_frame((clients[2], 40000), (VIP, 80), Tcp::Syn, b"");
    assert_eq!(h.uplink_ingress(&syn), (SHOT, syn.clone()));
    assert_eq!(h.counter(Counter::DropSnatExhausted), 1);
    assert_eq!(claimed(&h), held, "the held ports keep their flows");
    assert!(
        h.dp.maps
            .conntrack
            .get(&ct_key((clients[2], 40000), (VIP, 80), proto::TCP), 0)
            .is_err(),
        "no flow for the dropped packet"
    );
    assert_eq!(h.counter(Counter::SnatCreated), 2);
}

/// A port is held while its flow lives, whatever became of the flow's tuple elsewhere, and
/// free again as soon as the flow is over: its entry expired or gone, or the flow moved to
/// another port. (A port used to stay taken until the LRU evicted its reply-side entry:
/// with one backend, a node stopped SNATing after 64,512 flows, live or not.)
#[test]
fn a_port_is_free_again_as_soon_as_its_flow_is_over() {
    let (mut h, config) = with_ports((50000, 50000), |_| ());
    let backend = (POD_REMOTE, 8080);
    let clients = [CLIENT, CLIENT_2, [192, 168, 10, 12], [192, 168, 10, 13]];
    let syn = |client: [u8; 4]| tcp_frame((client, 40000), (VIP, 80), Tcp::Syn, b"");
    let key = |client: [u8; 4]| ct_key((client, 40000), (VIP, 80), proto::TCP);
    let expect_port = |h: &mut Harness, client: [u8; 4], why: &str| {
        let (verdict, out) = h.uplink_ingress(&syn(client));
        assert_eq!((verdict, ip_src(&out)), (REDIRECT, (NODE, 50000)), "{why}");
        assert_eq!(
            holder(h, backend, (NODE, 50000), proto::TCP),
            Some(key(client))
        );
        let reply = tcp_frame(backend, (NODE, 50000), Tcp::SynAck, b"");
        assert_eq!(
            ip_dst(&h.uplink_ingress(&reply).1),
            (client, 40000),
            "{why}: replies"
        );
    };
    let expect_held = |h: &mut Harness, client: [u8; 4], why: &str| {
        let dropped = h.counter(Counter::DropSnatExhausted);
        assert_eq!(h.uplink_ingress(&syn(client)).0, SHOT, "{why}");
        assert_eq!(h.counter(Counter::DropSnatExhausted), dropped + 1, "{why}");
    };

    expect_port(&mut h, clients[0], "the only port, free");
    expect_held(&mut h, clients[1], "held by a live flow");
    // The holder's entry expires: its port is free for the next flow.
    let mut entry = h.dp.maps.conntrack.get(&key(clients[0]), 0).unwrap();
    entry.last_seen_ns -= config.ct_syn_ns + 1_000_000_000;
    h.dp.maps
        .conntrack
        .insert(key(clients[0]), entry, 0)
        .unwrap();
    expect_port(&mut h, clients[1], "the holder expired");
    // The holder's entry is gone (evicted, or ended by the agent).
    h.dp.maps.conntrack.remove(&key(clients[1])).unwrap();
    expect_port(&mut h, clients[2], "the holder's entry gone");
    // A connection that closed keeps its port while it may linger at the backend
    // (TIME_WAIT): the port is not handed to another client at once.
    h.uplink_ingress(&tcp_frame((clients[2], 40000), (VIP, 80), Tcp::Rst, b""));
    expect_held(&mut h, clients[3], "closing, not yet over");
    // The holder moved to another port (its entry says so): its old slot is free.
    let mut entry = h.dp.maps.conntrack.get(&key(clients[2]), 0).unwrap();
    entry.snat_port = 50001;
    h.dp.maps
        .conntrack
        .insert(key(clients[2]), entry, 0)
        .unwrap();
    expect_port(&mut h, clients[3], "the holder moved on");
    assert_eq!(h.counter(Counter::SnatCreated), 3 + 1);
}

/// A flow the agent ended because its backend left (its entry's backend cleared, as a
/// reload does) gives its port up at once, though its entry lives on until it expires.
/// (POD_REMOTE:8081 and a cleared backend fall in the same row of ports: without that rule
/// the ended flow would hold its port for hours.)
#[test]
fn a_flow_ended_by_a_reload_gives_its_port_up_at_once() {
    let (mut h, _) = with_ports((50000, 50000), |_| ());
    let backend = (POD_REMOTE, 8081);
    let ended_row = snat::slot(NODE, ([0; 4], 0), proto::TCP, 50000);
    assert_eq!(
        snat::slot(NODE, backend, proto::TCP, 50000),
        ended_row,
        "the case this test is for"
    );
    // Clients until one is balanced to the remote backend, given the only port.
    let remote_flow = |h: &mut Harness, first: u8| -> (CtKey, u32) {
        for last in first..=250 {
            let client = [192, 168, 20, last];
            let (verdict, out) =
                h.uplink_ingress(&tcp_frame((client, 40000), (VIP, 81), Tcp::Syn, b""));
            match verdict {
                OK => continue,
                REDIRECT => {
                    assert_eq!((ip_src(&out), ip_dst(&out)), ((NODE, 50000), backend));
                    return (ct_key((client, 40000), (VIP, 81), proto::TCP), last as u32);
                }
                other => panic!("client {last}: verdict {other}: the port is held"),
            }
        }
        panic!("no client went to the remote backend")
    };
    let (first, at) = remote_flow(&mut h, 1);
    // What the agent's end_flow writes.
    let mut entry = h.dp.maps.conntrack.get(&first, 0).unwrap();
    entry.backend_addr = [0; 4];
    entry.backend_port = 0;
    h.dp.maps.conntrack.insert(first, entry, 0).unwrap();
    let (second, _) = remote_flow(&mut h, at as u8 + 1);
    assert_eq!(holder(&h, backend, (NODE, 50000), proto::TCP), Some(second));
}

/// Two CPUs opening flows at once over a few ports whose flows live one tick of the
/// datapath's clock (SYNs with a lifetime of 0), so that ports keep coming free and both
/// CPUs keep racing for the same slots: a port is never given to a second flow while the
/// first lives (a flow may take a port only once its holder's tick is over, so two flows on
/// one slot stamped with the same tick would be two holders at once), no claim is left
/// half-done, every flow given a port was counted, and every other one dropped and counted.
#[test]
fn cpus_racing_for_ports_never_give_one_to_two_live_flows() {
    use std::sync::Barrier;

    use nix::sched::{CpuSet, sched_setaffinity, setns};
    use nix::unistd::Pid;

    const PER_CPU: u32 = 20_000;
    let (mut h, _) = with_ports((50000, 50015), |c| c.ct_syn_ns = 0);
    let uplink = h.uplink;
    let netns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    let start = Barrier::new(cpus);
    let program: &aya::programs::SchedClassifier =
        h.dp.program(gateway_common::program_names::INGRESS)
            .unwrap();
    let verdicts: Vec<(u32, u32)> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (netns, start) = (&netns, &start);
                scope.spawn(move || {
                    setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    let mut set = CpuSet::new();
                    set.set(cpu).unwrap();
                    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
                    let ctx = skb_ctx(uplink);
                    let (mut redirected, mut shot) = (0, 0);
                    start.wait();
                    for i in 0..PER_CPU {
                        let client = [172, 16 + cpu as u8, (i >> 8) as u8, i as u8];
                        let syn = tcp_frame((client, 50000), (VIP, 80), Tcp::Syn, b"");
                        let mut out = vec![0u8; syn.len() + 256];
                        let run = aya::programs::TestRun::test_run(
                            program,
                            aya::programs::TestRunOptions {
                                data_in: Some(&syn),
                                data_out: Some(&mut out),
                                ctx_in: Some(&ctx[..]),
                                ..Default::default()
                            },
                        )
                        .unwrap();
                        match run.return_value {
                            REDIRECT => redirected += 1,
                            SHOT => shot += 1,
                            other => panic!("verdict {other}"),
                        }
                    }
                    (redirected, shot)
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let (redirected, shot) = verdicts
        .iter()
        .fold((0, 0), |(r, s), (r1, s1)| (r + r1, s + s1));
    assert_eq!(redirected + shot, PER_CPU * cpus as u32);
    assert!(
        redirected > 16,
        "ports came free and were taken again: {redirected}"
    );
    assert_eq!(h.counter(Counter::SnatCreated), redirected as u64);
    assert_eq!(h.counter(Counter::DropSnatExhausted), shot as u64);
    // Every flow's entry, by (port, tick): never two.
    let mut holders = std::collections::BTreeMap::new();
    for entry in h.dp.maps.conntrack.iter() {
        let (key, entry) = entry.unwrap();
        if entry.flags & CT_F_SNAT == 0 {
            continue;
        }
        if let Some(other) = holders.insert((entry.snat_port, entry.last_seen_ns), key) {
            panic!(
                "port {} given to {other:?} and {key:?} in the same tick",
                entry.snat_port
            );
        }
    }
    for (_, generation, _) in claimed(&h) {
        assert_eq!(generation % 2, 0, "a claim left half-done");
    }
}

#[test]
fn udp_to_a_remote_backend_keeps_a_zero_checksum_zero() {
    let mut h = Harness::with(&state(), Capacity::default());
    let mut query = udp_frame((CLIENT, 5000), (VIP, 53), b"query");
    let (verdict, out) = h.uplink_ingress(&query);
    assert_eq!(verdict, REDIRECT);
    assert_eq!(
        (ip_src(&out), ip_dst(&out)),
        ((NODE, 5000), (POD_REMOTE, 5353))
    );
    assert_checksums(&out);
    query[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    let (_, out) = h.uplink_ingress(&query);
    assert_eq!(&out[UDP_CHECK..UDP_CHECK + 2], &[0, 0]);
    let (verdict, out) = h.uplink_ingress(&udp_frame((POD_REMOTE, 5353), (NODE, 5000), b"answer"));
    assert_eq!(verdict, REDIRECT);
    assert_eq!((ip_src(&out), ip_dst(&out)), ((VIP, 53), (CLIENT, 5000)));
    assert_checksums(&out);
}

#[test]
fn without_an_address_or_a_route_a_flow_to_a_remote_backend_is_dropped_and_counted() {
    let mut desired = state();
    // The DNS backend in 10.250.0.0/16: no route in the test namespace (which has no
    // default route either).
    desired.frontends[2].backends[0].addr = [10, 250, 0, 1].into();
    desired.frontends[2].backends[0].remote = true;
    let mut h = Harness::with(&desired, Capacity::default());
    // Loopback has no address to SNAT to.
    let syn = tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Syn, b"");
    assert_eq!(h.ingress(&syn), (SHOT, syn.clone()));
    assert_eq!(h.counter(Counter::DropNoSnatAddr), 1);
    let query = udp_frame((CLIENT, 5000), (VIP, 53), b"q");
    assert_eq!(
        h.uplink_ingress(&query),
        (SHOT, query.clone()),
        "dropped as it came"
    );
    assert_eq!(h.counter(Counter::DropNoRoute), 1);
}

/// A backend node going away: its endpoints leave the slices, the flows to them end
/// (dropped, never moved mid-connection, their replies no longer translated), and a new
/// connection from the same client tuple goes to a backend that is there.
#[test]
fn a_backend_node_going_away_ends_its_flows_cleanly() {
    let mut h = Harness::with(&state(), Capacity::default());
    let port = (42000..)
        .find(|&p| {
            let (_, out) = h.uplink_ingress(&tcp_frame((CLIENT, p), (VIP, 81), Tcp::Syn, b""));
            ip_dst(&out).0 == POD_REMOTE
        })
        .unwrap();
    let mut desired = state();
    for f in &mut desired.frontends {
        f.backends.retain(|b| !b.remote);
    }
    h.program(&desired);
    let mid_stream = tcp_frame((CLIENT, port), (VIP, 81), Tcp::Ack, b"more");
    assert_eq!(h.uplink_ingress(&mid_stream), (SHOT, mid_stream.clone()));
    assert_eq!(h.counter(Counter::DropBackendGone), 1);
    let late = tcp_frame((POD_REMOTE, 8081), (NODE, port), Tcp::Ack, b"late");
    assert_eq!(
        h.uplink_ingress(&late),
        (PASS, late.clone()),
        "no longer ours"
    );
    let (verdict, out) = h.uplink_ingress(&tcp_frame((CLIENT, port), (VIP, 81), Tcp::Syn, b""));
    assert_eq!(
        (verdict, ip_dst(&out), ip_src(&out)),
        (OK, (POD_A, 8080), (CLIENT, port))
    );
    // A service left without backends drops, and counts, what comes.
    let syn = tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Syn, b"");
    assert_eq!(h.uplink_ingress(&syn), (SHOT, syn.clone()));
    assert_eq!(h.counter(Counter::DropNoBackend), 1);
}

/// The FIB's answers are kept per CPU for a second (`gw_nexthops`): a neighbour that changes
/// its MAC (a node replaced under the same address) is followed once that second is over.
#[test]
fn a_changed_neighbour_is_followed_within_the_next_hop_caches_second() {
    let mut h = Harness::with(&state(), Capacity::default());
    let (_, out) = h.uplink_ingress(&tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Syn, b""));
    assert_eq!(eth(&out).0, REMOTE_NODE_MAC);
    let new_mac = "02:00:00:00:00:71";
    let status = std::process::Command::new("ip")
        .args(["neigh", "replace", "192.168.10.112", "lladdr", new_mac])
        .args(["dev", netns::UPLINK, "nud", "permanent"])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ack = tcp_frame((CLIENT, 40000), (VIP, 80), Tcp::Ack, b"");
    let (verdict, out) = h.uplink_ingress(&ack);
    assert_eq!(verdict, REDIRECT);
    assert_eq!(eth(&out).0, [0x02, 0, 0, 0, 0, 0x71]);
    let status = std::process::Command::new("ip")
        .args([
            "neigh",
            "replace",
            "192.168.10.112",
            "lladdr",
            "02:00:00:00:00:70",
        ])
        .args(["dev", netns::UPLINK, "nud", "permanent"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Both ends rewritten at once: where the datapath updates L4 checksums in place, the
/// result is byte for byte what the kernel's helpers write, for SNATed flows and their
/// replies, TCP and UDP, random contents, and UDP without a checksum.
#[test]
fn snat_checksums_written_in_place_equal_those_of_the_kernels_helpers() {
    let kern_ctx = gateway_agent::datapath::running_kern_ctx()
        .expect("this kernel's BTF has bpf_cast_to_kern_ctx and sk_buff.ip_summed");
    let mut in_place = Harness::with_kern_ctx(&state(), Capacity::default(), Some(kern_ctx));
    let mut helpers = Harness::with_kern_ctx(&state(), Capacity::default(), None);
    let mut both = |frame: &[u8]| {
        let (verdict, out) = in_place.uplink_ingress(frame);
        assert_eq!(
            (verdict, &out),
            (REDIRECT, &helpers.uplink_ingress(frame).1),
            "{frame:02x?}"
        );
        assert_checksums(&out);
        out
    };
    let mut rng = support::rng::Rng::new(0x05ee_d5a7);
    for _ in 0..200 {
        // Clients on the segment, past the nodes' addresses (a reply to the node itself has
        // no route).
        let client = [192, 168, 10, 120 + rng.below(100) as u8];
        let port = 1024 + rng.below(60000) as u16;
        let len = rng.below(40);
        let payload = rng.bytes(len);
        both(&tcp_frame((client, port), (VIP, 80), Tcp::Syn, b""));
        both(&tcp_frame((client, port), (VIP, 80), Tcp::Ack, &payload));
        both(&tcp_frame(
            (POD_REMOTE, 8080),
            (NODE, port),
            Tcp::Ack,
            &payload,
        ));
        both(&udp_frame((client, port), (VIP, 53), &payload));
        both(&udp_frame((POD_REMOTE, 5353), (NODE, port), &payload));
    }
    let mut none = udp_frame((CLIENT, 5000), (VIP, 53), b"query");
    none[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(&[0, 0]);
    assert_eq!(&both(&none)[UDP_CHECK..UDP_CHECK + 2], &[0, 0]);
}
