//! Datapath cost per packet, through BPF_PROG_TEST_RUN, beside the floor of an empty TC
//! program measured the same way in the same run.
//!
//! BPF_PROG_TEST_RUN does not restore the frame between repeats, so a rewriting program
//! would measure its own output from the second pass on. Every run here is single-shot
//! (repeat 1, a fresh copy of the frame), the kernel's own measure of that run is kept, and
//! the median over many runs is reported, minus the floor's median (Katran's method). Every
//! case checks the verdict and output bytes of its runs, so a figure can never come from the
//! wrong path.
//!
//! `cargo bench -p gateway-agent --bench datapath -- [--quick] [--out FILE]` (root); writes
//! JSON for `cargo xtask bench`.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use gateway_agent::capacity::Capacity;
use gateway_agent::model::{DesiredState, Protocol};
use gateway_common::{CtEntry, CtKey, program_names, proto};
use serde::Serialize;

#[path = "../tests/support/mod.rs"]
mod support;
use support::*;

const BACKEND_PORT: u16 = 8080;
/// The client of the established flow and of the affinity-hit flows.
const CLIENT_PORT: u16 = 40000;

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
}

#[derive(Serialize)]
struct Report {
    runs_per_case: usize,
    measurements: Vec<Measurement>,
}

/// The measured service on 192.168.10.49:80 (ClientIP affinity, two backends), plus `n - 1`
/// others on their own VIPs, each with two backends of its own.
fn services(n: usize) -> DesiredState {
    let mut desired = reference_state();
    desired
        .frontends
        .retain(|f| f.vip == Ipv4Addr::from(VIP_AFFINITY) && f.port == 80);
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
    /// The frame of run `i`.
    frame: Box<dyn Fn(usize) -> Vec<u8>>,
    /// Checks one run's verdict and output; returns what it checked.
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

fn cases(backend_of_flow: ([u8; 4], u16)) -> Vec<Case> {
    vec![
        Case {
            name: "non-VIP packet",
            program: program_names::INGRESS,
            frame: Box::new(|_| tcp_frame((CLIENT, CLIENT_PORT), (NODE, 22), Tcp::Ack, b"")),
            check: Box::new(|v, input, out| {
                ensure!(v == PASS && input == out, "passed untouched");
                Ok("passed, bytes unchanged".into())
            }),
        },
        Case {
            name: "ARP request answered",
            program: program_names::INGRESS,
            frame: Box::new(|_| arp_request(CLIENT, VIP_AFFINITY)),
            check: Box::new(|v, _, out| {
                ensure!(v == REDIRECT, "verdict {v}");
                ensure!(
                    out[20..22] == [0, 2] && out[28..32] == VIP_AFFINITY,
                    "an ARP reply for the VIP"
                );
                Ok("ARP reply from the interface MAC".into())
            }),
        },
        Case {
            name: "new flow, affinity miss",
            program: program_names::INGRESS,
            // A new client address per run: no conntrack, no affinity entry.
            frame: Box::new(|i| {
                let client = [100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
                tcp_frame((client, CLIENT_PORT), (VIP_AFFINITY, 80), Tcp::Syn, b"")
            }),
            check: Box::new(dnat_to_backend),
        },
        Case {
            name: "new flow, affinity hit",
            program: program_names::INGRESS,
            // The affinity client, a new source port per run.
            frame: Box::new(|i| {
                tcp_frame(
                    (CLIENT, 1024 + (i % 60000) as u16),
                    (VIP_AFFINITY, 80),
                    Tcp::Syn,
                    b"",
                )
            }),
            check: Box::new(move |v, input, out| {
                let checked = dnat_to_backend(v, input, out)?;
                ensure!(ip_dst(out) == backend_of_flow, "the affinity backend");
                Ok(format!("{checked}, the client's affinity backend"))
            }),
        },
        Case {
            name: "established flow",
            program: program_names::INGRESS,
            frame: Box::new(|_| {
                tcp_frame(
                    (CLIENT, CLIENT_PORT),
                    (VIP_AFFINITY, 80),
                    Tcp::Ack,
                    b"GET / HTTP/1.1",
                )
            }),
            check: Box::new(move |v, input, out| {
                let checked = dnat_to_backend(v, input, out)?;
                ensure!(ip_dst(out) == backend_of_flow, "the flow's backend");
                Ok(format!("{checked}, the flow's backend"))
            }),
        },
        Case {
            name: "reply reverse-NATed",
            program: program_names::EGRESS,
            frame: Box::new(move |_| {
                tcp_frame(
                    backend_of_flow,
                    (CLIENT, CLIENT_PORT),
                    Tcp::Ack,
                    b"HTTP/1.1 200 OK",
                )
            }),
            check: Box::new(|v, _, out| {
                ensure!(v == OK, "verdict {v}");
                ensure!(
                    ip_src(out) == (VIP_AFFINITY, 80),
                    "source rewritten to the VIP"
                );
                assert_checksums(out);
                Ok("src 192.168.10.49:80, checksums valid".into())
            }),
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
    program: &str,
    runs: usize,
    frame: &dyn Fn(usize) -> Vec<u8>,
    check: &Check,
) -> Result<(Vec<u64>, u32, String)> {
    let frames: Vec<Vec<u8>> = (0..runs).map(frame).collect();
    let mut times = Vec::with_capacity(runs);
    let mut first = None;
    for (i, f) in frames.iter().enumerate() {
        let (verdict, out, ns) = h.run_timed(program, f);
        // Every run is checked, not just the first: the figure is only of the right path.
        let checked = check(verdict, f, &out).with_context(|| format!("run {i}"))?;
        first.get_or_insert((verdict, checked));
        times.push(ns);
    }
    times.sort_unstable();
    let (verdict, checked) = first.context("no runs")?;
    Ok((times, verdict, checked))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .windows(2)
        .find(|w| w[0] == "--out")
        .map(|w| w[1].clone());
    let (runs, sizes, prefill): (usize, &[usize], usize) = if quick {
        (300, &[1, 100], 10_000)
    } else {
        (20_000, &[1, 1_000, 10_000], 100_000)
    };

    let mut report = Report {
        runs_per_case: runs,
        measurements: Vec::new(),
    };
    for &n in sizes {
        let started = Instant::now();
        let capacity = Capacity {
            conntrack: 262_144,
            ..Capacity::default()
        };
        let mut h = Harness::with(&services(n), capacity);
        prefill_conntrack(&mut h, prefill)?;
        // Open the established flow; its backend is also the affinity client's backend.
        let (v, syn) = h.ingress(&tcp_frame(
            (CLIENT, CLIENT_PORT),
            (VIP_AFFINITY, 80),
            Tcp::Syn,
            b"",
        ));
        if v != OK {
            bail!("opening the measured flow: verdict {v}");
        }
        let backend = ip_dst(&syn);
        eprintln!(
            "{n} services, {prefill} tracked flows: ready in {:?}",
            started.elapsed()
        );
        let (floor_times, _, _) = measure(
            &mut h,
            program_names::FLOOR,
            runs,
            &|_| tcp_frame((CLIENT, CLIENT_PORT), (VIP_AFFINITY, 80), Tcp::Ack, b""),
            &|v, _, _| {
                ensure!(v == OK, "the floor returns TC_ACT_OK");
                Ok("TC_ACT_OK".into())
            },
        )?;
        let floor = percentile(&floor_times, 50);
        for case in cases(backend) {
            let (times, verdict, checked) =
                measure(&mut h, case.program, runs, &*case.frame, &*case.check)?;
            let median = percentile(&times, 50);
            eprintln!("  {:<26} {median:>5} ns (floor {floor} ns)", case.name);
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
