//! Datapath cost per packet, through BPF_PROG_TEST_RUN, beside the floor of an empty TC
//! program measured the same way in the same run.
//!
//! BPF_PROG_TEST_RUN does not restore the frame between repeats, so a rewriting program
//! would measure its own output from the second pass on. Each case is measured two ways:
//!
//! - warm: the `gateway-bench` wrapper restores the frame before every pass (a new flow
//!   per pass where the case needs one) and tail-calls the measured program, many passes
//!   per run; the floor is the same wrapper tail-calling the empty program, so the
//!   wrapper's cost cancels. Every counter's change over a run must equal passes x what one
//!   pass of the case does (e.g. one conntrack entry created, one affinity hit), and the
//!   last pass's verdict and output bytes are checked.
//! - single-shot: repeat 1 with a fresh frame, the kernel's own measure of each run, the
//!   median over many runs minus the floor's (Katran's method); caches are cold, as for a
//!   packet arriving after other work. Every run's verdict and output bytes are checked.
//!
//! Either way a figure can never come from the wrong path.
//!
//! `cargo bench -p gateway-agent --bench datapath -- [--quick] [--out FILE] [--case TEXT]`
//! (root); writes JSON for `cargo xtask bench`. `--case` measures only the cases whose name
//! contains TEXT (to profile one path: under `perf record -a -g`).

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, ProgramArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use gateway_agent::capacity::Capacity;
use gateway_agent::model::{DesiredState, Protocol};
use gateway_common::{
    Counter, CtEntry, CtKey,
    bench::{self, BenchFrame, FRAME_MAX},
    program_names, proto,
};
use serde::Serialize;

#[path = "../tests/support/mod.rs"]
mod support;
use support::*;

const BACKEND_PORT: u16 = 8080;
/// The client of the established flow and of the affinity-hit flows.
const CLIENT_PORT: u16 = 40000;
/// The client of the warm affinity-hit flows (its own, so its ports are all new).
const CLIENT_WARM: [u8; 4] = [192, 168, 10, 20];
/// The first client address of the warm affinity misses (one more per pass).
const CLIENT_MISS_WARM: [u8; 4] = [100, 100, 0, 0];
/// The Cluster service: no affinity (Kubernetes' default), its one backend on the other
/// node, reached through SNAT; the established SNATed flow's client port.
const VIP_CLUSTER: [u8; 4] = VIP_RANDOM;
const SNAT_PORT: u16 = 60001;
/// A router on the segment, the source of ICMP errors about flows.
const ROUTER: [u8; 4] = [192, 168, 10, 1];
/// The clients of the new SNATed flows, single-shot and warm (a new source port per run or
/// pass, which SNAT keeps: each is a new tuple at the backend; the port ranges of the two
/// and of the established flow do not meet, as SNAT ports are per backend, not per client).
const CLIENT_SNAT: [u8; 4] = [192, 168, 10, 30];
const CLIENT_SNAT_WARM: [u8; 4] = [192, 168, 10, 31];

/// The benchmark's wrapper object, built beside the datapath by build.rs.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-bench"));

#[derive(Serialize)]
struct Measurement {
    case: &'static str,
    services: usize,
    conntrack_entries: usize,
    median_ns: u64,
    p90_ns: u64,
    floor_ns: u64,
    above_floor_ns: i64,
    ratio_to_floor: f64,
    verdict: &'static str,
    checked: String,
    /// Warm: median over runs of the kernel's mean time per pass.
    warm_ns: u64,
    warm_floor_ns: u64,
    warm_above_floor_ns: i64,
    warm_checked: String,
}

#[derive(Serialize)]
struct Report {
    runs_per_case: usize,
    warm_runs: usize,
    warm_passes_per_run: u32,
    measurements: Vec<Measurement>,
}

/// The measured services on 192.168.10.49:80 (ClientIP affinity, two backends) and the
/// Cluster one on 192.168.10.50:80 (one backend on the other node), plus `n - 1` others on
/// their own VIPs, each with two backends of its own.
fn services(n: usize) -> DesiredState {
    let mut desired = reference_state();
    desired
        .frontends
        .retain(|f| f.vip == Ipv4Addr::from(VIP_AFFINITY) && f.port == 80);
    desired.frontends.push(cluster(frontend(
        "cluster",
        VIP_CLUSTER,
        80,
        Protocol::Tcp,
        None,
        &[(POD_REMOTE, BACKEND_PORT)],
    )));
    for i in 1..n {
        let (hi, lo) = ((i >> 8) as u8, i as u8);
        desired.frontends.push(frontend(
            &format!("svc-{i}"),
            [10, 96, hi, lo],
            80,
            Protocol::Tcp,
            None,
            &[
                ([10, 245, hi, lo], BACKEND_PORT),
                ([10, 246, hi, lo], BACKEND_PORT),
            ],
        ));
    }
    desired
}

/// Fills conntrack with `n` flows of other clients to the other services.
fn prefill_conntrack(h: &mut Harness, n: usize) -> Result<()> {
    let backend_id = *h.state.backends.keys().next().context("a backend")?;
    let backend = h.state.backends[&backend_id];
    for i in 0..n {
        let key = CtKey {
            client_addr: [172, 16, (i >> 8) as u8, i as u8],
            vip: [10, 96, 0, 1],
            client_port: 1024 + (i >> 16) as u16,
            vip_port: 80,
            proto: proto::TCP,
            _pad: [0; 3],
        };
        let entry = CtEntry {
            last_seen_ns: gateway_agent::datapath::monotonic_ns(),
            backend_id,
            service_id: 1,
            backend_addr: backend.addr,
            backend_port: backend.port,
            flags: gateway_common::CT_F_TCP | gateway_common::CT_F_ESTABLISHED,
            ..Default::default()
        };
        h.dp.maps.conntrack.insert(key, entry, 0)?;
    }
    Ok(())
}

/// Checks one run's verdict, input and output frames; returns what it checked.
type Check = dyn Fn(u32, &[u8], &[u8]) -> Result<String>;

/// How a case's frames look and what each run must do to them.
struct Case {
    name: &'static str,
    program: &'static str,
    /// The frame arrives on the uplink (whose address flows to other nodes are SNATed to);
    /// otherwise on loopback, the kernel's default.
    uplink: bool,
    /// The frame of run `i`.
    frame: Box<dyn Fn(usize) -> Vec<u8>>,
    /// Checks one run's verdict and output; returns what it checked.
    check: Box<Check>,
    warm: Warm,
}

/// Which field the wrapper advances before every warm pass, so each pass is a new flow.
#[derive(Clone, Copy)]
enum Vary {
    Nothing,
    /// The TCP source port (same client: an affinity hit after the first).
    SourcePort,
    /// The low half of the client address (a new client: an affinity miss).
    ClientAddress,
}

/// The warm measurement of a case: its first frame, and what one pass does to the counters.
struct Warm {
    frame: Vec<u8>,
    vary: Vary,
    per_pass: &'static [Counter],
    /// Checks the last pass's verdict and output against the frame it was given.
    check: Box<Check>,
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        OK => "TC_ACT_OK",
        SHOT => "TC_ACT_SHOT",
        REDIRECT => "TC_ACT_REDIRECT",
        PASS => "TC_ACT_UNSPEC (pass)",
        _ => "other",
    }
}

fn dnat_to_backend(verdict: u32, input: &[u8], out: &[u8]) -> Result<String> {
    ensure!(verdict == OK, "verdict {verdict}");
    let (addr, port) = ip_dst(out);
    ensure!(
        port == BACKEND_PORT && [POD_A, POD_B].contains(&addr),
        "DNAT to {addr:?}:{port}"
    );
    ensure!(ip_src(out) == ip_src(input), "source kept");
    assert_checksums(out);
    Ok(format!(
        "dst {}:{port}, src kept, checksums valid",
        Ipv4Addr::from(addr)
    ))
}

fn passed_untouched(v: u32, input: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == PASS && input == out, "passed untouched");
    Ok("passed, bytes unchanged".into())
}

fn arp_answered(v: u32, _: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == REDIRECT, "verdict {v}");
    ensure!(
        out[20..22] == [0, 2] && out[28..32] == VIP_AFFINITY,
        "an ARP reply for the VIP"
    );
    Ok("ARP reply from the interface MAC".into())
}

fn reverse_natted(v: u32, _: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == OK, "verdict {v}");
    ensure!(
        ip_src(out) == (VIP_AFFINITY, 80),
        "source rewritten to the VIP"
    );
    assert_checksums(out);
    Ok("src 192.168.10.49:80, checksums valid".into())
}

/// DNAT to the remote backend and SNAT to the uplink's address (the client's port kept),
/// sent out by the datapath with the next hop's MACs.
fn snat_forward(v: u32, input: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == REDIRECT, "verdict {v}");
    let (_, port) = ip_src(input);
    ensure!(
        ip_dst(out) == (POD_REMOTE, BACKEND_PORT),
        "DNAT to {:?}",
        ip_dst(out)
    );
    ensure!(ip_src(out) == (NODE, port), "SNAT to {:?}", ip_src(out));
    ensure!(
        out[..6] == REMOTE_NODE_MAC && out[6..12] == NODE_MAC,
        "to the other node's MAC"
    );
    assert_checksums(out);
    Ok(format!(
        "redirected, dst {}:{BACKEND_PORT} src {}:{port}, next hop's MACs, checksums valid",
        Ipv4Addr::from(POD_REMOTE),
        Ipv4Addr::from(NODE)
    ))
}

/// A reply to the uplink's address translated back (VIP -> client) and sent to the client.
fn snat_reply(v: u32, input: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == REDIRECT, "verdict {v}");
    let (_, port) = ip_dst(input);
    ensure!(ip_src(out) == (VIP_CLUSTER, 80), "src {:?}", ip_src(out));
    ensure!(ip_dst(out) == (CLIENT, port), "dst {:?}", ip_dst(out));
    ensure!(out[..6] == CLIENT_MAC, "to the client's MAC");
    assert_checksums(out);
    Ok("redirected, src 192.168.10.50:80 dst the client, checksums valid".into())
}

/// An echo request to the VIP turned into its reply, sent back out.
fn echo_answered(v: u32, input: &[u8], out: &[u8]) -> Result<String> {
    ensure!(v == REDIRECT, "verdict {v}");
    ensure!(out[L4] == ICMP_ECHO_REPLY, "ICMP type {}", out[L4]);
    ensure!(
        out[IP_SRC..IP_SRC + 4] == input[IP_DST..IP_DST + 4]
            && out[IP_DST..IP_DST + 4] == input[IP_SRC..IP_SRC + 4],
        "addresses swapped"
    );
    assert_icmp_checksums(out);
    Ok("redirected, echo reply from the VIP, checksums valid".into())
}

/// A fragmentation needed about the established flow's reply, translated to its backend.
fn icmp_error_to(backend: ([u8; 4], u16)) -> Box<Check> {
    Box::new(move |v, _, out| {
        ensure!(v == OK, "verdict {v}");
        ensure!(out[IP_DST..IP_DST + 4] == backend.0, "outer destination");
        let quoted = IP + 20 + 8;
        ensure!(out[quoted + 12..quoted + 16] == backend.0, "quoted source");
        assert_icmp_checksums(out);
        Ok("to the flow's backend, quoted source the backend, checksums valid".into())
    })
}

/// DNAT to `backend` in particular (the flow's, or the client's affinity backend).
fn dnat_to(backend: ([u8; 4], u16), what: &'static str) -> Box<Check> {
    Box::new(move |v, input, out| {
        let checked = dnat_to_backend(v, input, out)?;
        ensure!(ip_dst(out) == backend, "{what}");
        Ok(format!("{checked}, {what}"))
    })
}

/// The cases; `backend_of_flow` serves the established flow and the affinity client,
/// `warm_backend` the warm affinity client.
fn cases(backend_of_flow: ([u8; 4], u16), warm_backend: ([u8; 4], u16)) -> Vec<Case> {
    let non_vip = tcp_frame((CLIENT, CLIENT_PORT), (NODE, 22), Tcp::Ack, b"");
    let arp = arp_request(CLIENT, VIP_AFFINITY);
    let established = tcp_frame(
        (CLIENT, CLIENT_PORT),
        (VIP_AFFINITY, 80),
        Tcp::Ack,
        b"GET / HTTP/1.1",
    );
    let reply = tcp_frame(
        backend_of_flow,
        (CLIENT, CLIENT_PORT),
        Tcp::Ack,
        b"HTTP/1.1 200 OK",
    );
    let echo = {
        let mut p = Packet::new((CLIENT, 0x1234), (VIP_AFFINITY, 1), proto::ICMP);
        p.payload = (0..56).collect();
        p.frame()
    };
    // What a router quotes of the established flow's reply as it left from the VIP: the
    // headers and some payload, within the wrapper's frame.
    let left = tcp_frame(
        (VIP_AFFINITY, 80),
        (CLIENT, CLIENT_PORT),
        Tcp::Ack,
        b"HTTP/1.1 200 OK",
    );
    let frag_needed = icmp_error(
        ROUTER,
        VIP_AFFINITY,
        (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED),
        mtu(1280),
        &quote(&left, 60),
    );
    let snat_established = tcp_frame(
        (CLIENT, SNAT_PORT),
        (VIP_CLUSTER, 80),
        Tcp::Ack,
        b"GET / HTTP/1.1",
    );
    let snat_reply_frame = tcp_frame(
        (POD_REMOTE, BACKEND_PORT),
        (NODE, SNAT_PORT),
        Tcp::Ack,
        b"HTTP/1.1 200 OK",
    );
    vec![
        Case {
            name: "non-VIP packet",
            program: program_names::INGRESS,
            uplink: false,
            frame: Box::new({
                let f = non_vip.clone();
                move |_| f.clone()
            }),
            check: Box::new(passed_untouched),
            warm: Warm {
                frame: non_vip,
                vary: Vary::Nothing,
                per_pass: &[],
                check: Box::new(passed_untouched),
            },
        },
        Case {
            name: "ARP request answered",
            program: program_names::INGRESS,
            uplink: false,
            frame: Box::new({
                let f = arp.clone();
                move |_| f.clone()
            }),
            check: Box::new(arp_answered),
            warm: Warm {
                frame: arp,
                vary: Vary::Nothing,
                per_pass: &[Counter::ArpReply],
                check: Box::new(arp_answered),
            },
        },
        Case {
            name: "new flow, affinity miss",
            program: program_names::INGRESS,
            uplink: false,
            // A new client address per run: no conntrack, no affinity entry.
            frame: Box::new(|i| {
                let client = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
                tcp_frame((client, CLIENT_PORT), (VIP_AFFINITY, 80), Tcp::Syn, b"")
            }),
            check: Box::new(dnat_to_backend),
            warm: Warm {
                frame: tcp_frame(
                    (CLIENT_MISS_WARM, CLIENT_PORT),
                    (VIP_AFFINITY, 80),
                    Tcp::Syn,
                    b"",
                ),
                vary: Vary::ClientAddress,
                per_pass: &[Counter::CtCreated, Counter::AffinityCreated],
                check: Box::new(dnat_to_backend),
            },
        },
        Case {
            name: "new flow, affinity hit",
            program: program_names::INGRESS,
            uplink: false,
            // The affinity client, a new source port per run.
            frame: Box::new(|i| {
                tcp_frame(
                    (CLIENT, 1024 + (i % 60000) as u16),
                    (VIP_AFFINITY, 80),
                    Tcp::Syn,
                    b"",
                )
            }),
            check: dnat_to(backend_of_flow, "the client's affinity backend"),
            warm: Warm {
                frame: tcp_frame((CLIENT_WARM, 1024), (VIP_AFFINITY, 80), Tcp::Syn, b""),
                vary: Vary::SourcePort,
                per_pass: &[Counter::CtCreated, Counter::AffinityHit],
                check: dnat_to(warm_backend, "the client's affinity backend"),
            },
        },
        Case {
            name: "established flow",
            program: program_names::INGRESS,
            uplink: false,
            frame: Box::new({
                let f = established.clone();
                move |_| f.clone()
            }),
            check: dnat_to(backend_of_flow, "the flow's backend"),
            warm: Warm {
                frame: established,
                vary: Vary::Nothing,
                per_pass: &[],
                check: dnat_to(backend_of_flow, "the flow's backend"),
            },
        },
        Case {
            name: "reply reverse-NATed",
            program: program_names::EGRESS,
            uplink: false,
            frame: Box::new({
                let f = reply.clone();
                move |_| f.clone()
            }),
            check: Box::new(reverse_natted),
            warm: Warm {
                frame: reply,
                vary: Vary::Nothing,
                per_pass: &[Counter::RevNat],
                check: Box::new(reverse_natted),
            },
        },
        Case {
            name: "ICMP echo request answered",
            program: program_names::INGRESS,
            uplink: false,
            frame: Box::new({
                let f = echo.clone();
                move |_| f.clone()
            }),
            check: Box::new(echo_answered),
            warm: Warm {
                frame: echo,
                vary: Vary::Nothing,
                per_pass: &[Counter::IcmpEchoReply],
                check: Box::new(echo_answered),
            },
        },
        Case {
            name: "ICMP error translated",
            program: program_names::INGRESS,
            uplink: false,
            frame: Box::new({
                let f = frag_needed.clone();
                move |_| f.clone()
            }),
            check: icmp_error_to(backend_of_flow),
            warm: Warm {
                frame: frag_needed,
                vary: Vary::Nothing,
                per_pass: &[Counter::IcmpErrorNat],
                check: icmp_error_to(backend_of_flow),
            },
        },
        Case {
            name: "new flow, SNAT",
            program: program_names::INGRESS,
            uplink: true,
            frame: Box::new(|i| {
                tcp_frame(
                    (CLIENT_SNAT, 32000 + (i % 25000) as u16),
                    (VIP_CLUSTER, 80),
                    Tcp::Syn,
                    b"",
                )
            }),
            check: Box::new(snat_forward),
            warm: Warm {
                frame: tcp_frame((CLIENT_SNAT_WARM, 1024), (VIP_CLUSTER, 80), Tcp::Syn, b""),
                vary: Vary::SourcePort,
                per_pass: &[Counter::CtCreated, Counter::SnatCreated],
                check: Box::new(snat_forward),
            },
        },
        Case {
            name: "established flow, SNAT",
            program: program_names::INGRESS,
            uplink: true,
            frame: Box::new({
                let f = snat_established.clone();
                move |_| f.clone()
            }),
            check: Box::new(snat_forward),
            warm: Warm {
                frame: snat_established,
                vary: Vary::Nothing,
                per_pass: &[],
                check: Box::new(snat_forward),
            },
        },
        Case {
            name: "reply through SNAT",
            program: program_names::INGRESS,
            uplink: true,
            frame: Box::new({
                let f = snat_reply_frame.clone();
                move |_| f.clone()
            }),
            check: Box::new(snat_reply),
            warm: Warm {
                frame: snat_reply_frame,
                vary: Vary::Nothing,
                per_pass: &[Counter::RevNat],
                check: Box::new(snat_reply),
            },
        },
    ]
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Runs `frame(i)` for `runs` single-shot runs; returns the sorted run times and the check
/// of the first run.
fn measure(
    h: &mut Harness,
    (program, ifindex): (&str, u32),
    runs: usize,
    frame: &dyn Fn(usize) -> Vec<u8>,
    check: &Check,
) -> Result<(Vec<u64>, u32, String)> {
    let frames: Vec<Vec<u8>> = (0..runs).map(frame).collect();
    let mut times = Vec::with_capacity(runs);
    let mut first = None;
    for (i, f) in frames.iter().enumerate() {
        let (verdict, out, ns) = h.try_run_on(program, ifindex, f)?;
        // Every run is checked, not just the first: the figure is only of the right path.
        let checked = check(verdict, f, &out).with_context(|| format!("run {i}"))?;
        first.get_or_insert((verdict, checked));
        times.push(ns);
    }
    times.sort_unstable();
    let (verdict, checked) = first.context("no runs")?;
    Ok((times, verdict, checked))
}

/// The loaded wrapper: its program, the frame it restores and the program it tail-calls.
struct Wrapper {
    ebpf: Ebpf,
}

impl Wrapper {
    fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJECT)
            .context("loading the benchmark wrapper")?;
        Self::program(&mut ebpf)?.load()?;
        Ok(Self { ebpf })
    }

    fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
        Ok(ebpf
            .program_mut(bench::PROGRAM)
            .context("the wrapper program")?
            .try_into()?)
    }

    /// Points the wrapper at `program` of the datapath, starting from `frame`.
    fn prepare(&mut self, h: &mut Harness, program: &str, frame: &[u8], vary: Vary) -> Result<()> {
        let fd = h.dp.program(program)?.fd()?;
        let mut target =
            ProgramArray::try_from(self.ebpf.map_mut(bench::TARGET_MAP).context("target")?)?;
        target.set(0, fd, 0)?;
        ensure!(frame.len() <= FRAME_MAX, "frame of {} bytes", frame.len());
        // The source port opens the TCP header; the client address's low half is in the
        // IPv4 header and in the TCP pseudo-header.
        let (vary_off, csum_offs) = match vary {
            Vary::Nothing => (0, [0, 0]),
            Vary::SourcePort => (L4, [TCP_CHECK, 0]),
            Vary::ClientAddress => (IP_SRC + 2, [IP_CHECK, TCP_CHECK]),
        };
        let mut value = BenchFrame {
            len: frame.len() as u32,
            vary_off: vary_off as u16,
            csum_offs: csum_offs.map(|off| off as u16),
            _pad: [0; 6],
            frame: [0; FRAME_MAX],
        };
        value.frame[..frame.len()].copy_from_slice(frame);
        self.frames()?.set(0, value, 0)?;
        Ok(())
    }

    fn frames(&mut self) -> Result<Array<&mut aya::maps::MapData, BenchFrame>> {
        Ok(Array::try_from(
            self.ebpf.map_mut(bench::FRAME_MAP).context("frame")?,
        )?)
    }

    /// The frame the last pass was given.
    fn last_frame(&mut self) -> Result<Vec<u8>> {
        let value = self.frames()?.get(&0, 0)?;
        Ok(value.frame[..value.len as usize].to_vec())
    }

    /// One run of `passes` passes: the kernel's mean ns per pass, the last verdict and
    /// output.
    fn run(&mut self, frame_len: usize, passes: u32, ifindex: u32) -> Result<(u64, u32, Vec<u8>)> {
        // The wrapper overwrites the frame before the first pass; only its length counts.
        let input = vec![0u8; frame_len];
        let mut out = vec![0u8; frame_len + 256];
        let ctx = skb_ctx(ifindex);
        let result = Self::program(&mut self.ebpf)?.test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            ctx_in: (ifindex != TEST_IFINDEX).then_some(&ctx[..]),
            repeat: passes,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.duration.as_nanos() as u64, result.return_value, out))
    }
}

/// Warm measurement of `program` from `warm.frame`: the median over `runs` runs of the
/// mean ns per pass. Every counter must change by exactly `passes x warm.per_pass`, and the
/// last pass's output must pass `warm.check`; returns the figure and what was checked.
fn measure_warm(
    h: &mut Harness,
    wrapper: &mut Wrapper,
    (program, ifindex): (&str, u32),
    warm: &Warm,
    (runs, passes): (usize, u32),
) -> Result<(u64, String)> {
    let Warm {
        frame,
        vary,
        per_pass,
        check,
    } = warm;
    wrapper.prepare(h, program, frame, *vary)?;
    let before = h.dp.maps.counters()?;
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let (ns, verdict, out) = wrapper.run(frame.len(), passes, ifindex)?;
        times.push(ns);
        last = Some((verdict, out));
    }
    let after = h.dp.maps.counters()?;
    let total = runs as u64 * passes as u64;
    for ((counter, b), (_, a)) in before.iter().zip(&after) {
        let want = if per_pass.contains(counter) { total } else { 0 };
        ensure!(
            a - b == want,
            "{}: {} in {total} passes, expected {want}",
            counter.name(),
            a - b
        );
    }
    let (verdict, out) = last.context("no runs")?;
    let input = wrapper.last_frame()?;
    let checked = check(verdict, &input, &out).context("the last pass")?;
    times.sort_unstable();
    let counted = if per_pass.is_empty() {
        "no counter moved".to_owned()
    } else {
        per_pass
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
            + " +1 per pass, no other counter moved"
    };
    Ok((
        percentile(&times, 50),
        format!("{total} passes: {counted}; last pass {checked}"),
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .windows(2)
        .find(|w| w[0] == "--out")
        .map(|w| w[1].clone());
    let only = args
        .windows(2)
        .find(|w| w[0] == "--case")
        .map(|w| w[1].clone());
    let (runs, sizes, prefill): (usize, &[usize], usize) = if quick {
        (300, &[1, 100], 10_000)
    } else {
        (20_000, &[1, 1_000, 10_000], 100_000)
    };
    // Warm runs x passes; at most 65,536 passes per case, as the wrapper varies 16 bits.
    let warm: (usize, u32) = if quick { (5, 100) } else { (30, 1_000) };

    let mut report = Report {
        runs_per_case: runs,
        warm_runs: warm.0,
        warm_passes_per_run: warm.1,
        measurements: Vec::new(),
    };
    let mut wrapper = Wrapper::load()?;
    for &n in sizes {
        let started = Instant::now();
        // Room for the pre-filled flows and every flow and client the cases add: the LRU
        // maps give each CPU its own share, and an eviction here (the established flow's
        // entry, the warm client's affinity) would change the path a case measures.
        let capacity = Capacity {
            conntrack: 524_288,
            affinity: 262_144,
            ..Capacity::default()
        };
        let mut h = Harness::with(&services(n), capacity);
        prefill_conntrack(&mut h, prefill)?;
        // Open the established flow; its backend is also the affinity client's backend.
        let mut open = |client: [u8; 4], port: u16| -> Result<([u8; 4], u16)> {
            let (v, syn) = h.ingress(&tcp_frame(
                (client, port),
                (VIP_AFFINITY, 80),
                Tcp::Syn,
                b"",
            ));
            ensure!(v == OK, "opening a flow from {client:?}: verdict {v}");
            Ok(ip_dst(&syn))
        };
        let backend = open(CLIENT, CLIENT_PORT)?;
        // The warm affinity client's entry, so each of its passes is a hit.
        let warm_backend = open(CLIENT_WARM, 999)?;
        // The established SNATed flow.
        let (v, _) = h.uplink_ingress(&tcp_frame(
            (CLIENT, SNAT_PORT),
            (VIP_CLUSTER, 80),
            Tcp::Syn,
            b"",
        ));
        ensure!(v == REDIRECT, "opening the SNATed flow: verdict {v}");
        eprintln!(
            "{n} services, {prefill} tracked flows: ready in {:?}",
            started.elapsed()
        );
        let floor_frame = tcp_frame((CLIENT, CLIENT_PORT), (VIP_AFFINITY, 80), Tcp::Ack, b"");
        let (floor_times, _, _) = measure(
            &mut h,
            (program_names::FLOOR, TEST_IFINDEX),
            runs,
            &|_| floor_frame.clone(),
            &|v, _, _| {
                ensure!(v == OK, "the floor returns TC_ACT_OK");
                Ok("TC_ACT_OK".into())
            },
        )?;
        let floor = percentile(&floor_times, 50);
        let cases = cases(backend, warm_backend).into_iter().filter(|c| {
            only.as_ref()
                .is_none_or(|text| c.name.contains(text.as_str()))
        });
        for case in cases {
            let ifindex = if case.uplink { h.uplink } else { TEST_IFINDEX };
            // The floor of the warm figure: the same wrapper work, into the empty program.
            let floor_run = Warm {
                frame: case.warm.frame.clone(),
                vary: case.warm.vary,
                per_pass: &[],
                check: Box::new(|v, _, _| {
                    ensure!(v == OK, "the floor returns TC_ACT_OK");
                    Ok("TC_ACT_OK".into())
                }),
            };
            let (warm_floor, _) = measure_warm(
                &mut h,
                &mut wrapper,
                (program_names::FLOOR, ifindex),
                &floor_run,
                warm,
            )?;
            let (warm_ns, warm_checked) = measure_warm(
                &mut h,
                &mut wrapper,
                (case.program, ifindex),
                &case.warm,
                warm,
            )
            .with_context(|| format!("{}, warm", case.name))?;
            let (times, verdict, checked) = measure(
                &mut h,
                (case.program, ifindex),
                runs,
                &*case.frame,
                &*case.check,
            )
            .with_context(|| format!("{}, single-shot", case.name))?;
            let median = percentile(&times, 50);
            eprintln!(
                "  {:<26} warm {warm_ns:>4} ns (floor {warm_floor}), single-shot {median:>5} ns \
                 (floor {floor})",
                case.name
            );
            report.measurements.push(Measurement {
                case: case.name,
                services: n,
                conntrack_entries: prefill,
                median_ns: median,
                p90_ns: percentile(&times, 90),
                floor_ns: floor,
                above_floor_ns: median as i64 - floor as i64,
                ratio_to_floor: median as f64 / floor.max(1) as f64,
                verdict: verdict_name(verdict),
                checked,
                warm_ns,
                warm_floor_ns: warm_floor,
                warm_above_floor_ns: warm_ns as i64 - warm_floor as i64,
                warm_checked,
            });
        }
    }
    let json = serde_json::to_string_pretty(&report)?;
    match out {
        Some(path) => std::fs::write(&path, json).with_context(|| format!("writing {path}"))?,
        None => println!("{json}"),
    }
    Ok(())
}
