//! `cargo xtask bench [--quick]`: the datapath's cost per packet against an empty program,
//! end-to-end throughput against kube-proxy-shaped iptables and no load balancer at all, the
//! control plane at scale, failover between nodes, what hairpin's socket hooks cost the
//! node's other connections, and the agent reading a real cluster (with `$KUBEBUILDER_ASSETS`),
//! in one run on this machine. Writes target/bench/report.md,
//! report.json and chart.svg. `--quick` is the small smoke version the test suite runs so the
//! harness cannot rot; its figures are not figures.

mod control;
mod e2e;
mod failover;
mod hairpin;
mod kubernetes;
mod objects;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use gateway_tests::kube_api;
use gateway_tests::lab::Lab;

use crate::{cmd, setup};

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} x {cpu}, kernel {}", kernel.trim())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A part of the benchmark that can be measured on its own.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Part {
    /// The datapath's cost per packet (BPF_PROG_TEST_RUN), every case at every size, with
    /// the targets checked on it
    Datapath,
    /// The control plane: programming many services, and a one-service change
    Control,
    /// Failover between nodes: 20 node kills, 20 agent-only kills, 5 agent restarts
    Failover,
    /// New connections and requests through a backend on another node (Cluster, SNAT):
    /// the gateway, kube-proxy's rules and plain routing on the announcing node, and the
    /// client straight to that pod
    Remote,
    /// What hairpin's socket hooks cost the node's other connect()s
    Hairpin,
    /// The agent reading a real API server ($KUBEBUILDER_ASSETS): cold start, a Service
    /// applied with kubectl, endpoint changes, requests while idle
    Kubernetes,
}

/// The kubernetes part, or `None` after saying why it was skipped.
fn kubernetes_part(
    binary: &Path,
    quick: bool,
    services: usize,
    per_service: usize,
) -> Result<Option<kubernetes::Kubernetes>> {
    let Some(assets) = kube_api::assets_or_skip("the kubernetes part of the benchmark") else {
        return Ok(None);
    };
    let settings = kubernetes::Settings {
        services,
        per_service,
        idle: std::time::Duration::from_secs(if quick { 3 } else { 30 }),
    };
    kubernetes::run(&assets, binary, &settings).map(Some)
}

/// Where cargo builds, as cargo itself decides it.
fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

/// The datapath benchmark (`gateway-agent/benches/datapath.rs`), its JSON kept in `out`.
fn datapath(workspace: &Path, quick: bool, out: &Path) -> Result<report::DatapathRun> {
    eprintln!("== datapath cost per packet");
    let datapath_json = out.join("datapath.json");
    let mut bench = Command::new("cargo");
    bench
        .args(["bench", "-p", "gateway-agent", "--bench", "datapath", "--"])
        .current_dir(workspace);
    if quick {
        bench.arg("--quick");
    }
    cmd::run(bench.arg("--out").arg(&datapath_json))?;
    serde_json::from_str(&std::fs::read_to_string(&datapath_json)?)
        .context("reading the datapath benchmark's output")
}

pub fn run(workspace: &Path, quick: bool, only: Option<Part>) -> Result<()> {
    setup::run()?;
    let out = workspace.join("target").join("bench");
    std::fs::create_dir_all(&out)?;
    // Figures come from optimized builds; the smoke run reuses the test build.
    let profile = if quick { "debug" } else { "release" };
    let mut build = Command::new("cargo");
    build
        .args(["build", "-p", "gateway-agent"])
        .current_dir(workspace);
    if !quick {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let binary = target_dir(workspace).join(profile).join("gateway-agent");
    let mut build = Command::new("cargo");
    build
        .args(["build", "-p", "gateway-tests", "--bin", "hairpin-client"])
        .current_dir(workspace);
    if !quick {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let hairpin_client = target_dir(workspace).join(profile).join("hairpin-client");
    let (services, per_service) = if quick { (100, 8) } else { (10_000, 8) };
    let (kills, restarts) = if quick { (2, 1) } else { (20, 5) };

    match only {
        Some(Part::Datapath) => {
            let datapath = datapath(workspace, quick, &out)?;
            let mut md = String::new();
            report::checks_table(&mut md, &report::datapath_checks(&datapath.measurements));
            md.push('\n');
            report::datapath_table(&mut md, &datapath.measurements);
            println!("{md}");
            return Ok(());
        }
        Some(Part::Control) => {
            let lab = Lab::up(e2e::spec(&binary))?;
            let control_plane = control::run(&lab, &binary, services, per_service)?;
            println!("{}", serde_json::to_string_pretty(&control_plane)?);
            return Ok(());
        }
        Some(Part::Hairpin) => {
            let lab = Lab::up(e2e::spec(&binary))?;
            let (rounds, seconds) = if quick { (1, 1) } else { (7, 3) };
            let cost = hairpin::run(&lab, &binary, &hairpin_client, rounds, seconds)?;
            println!("{}", serde_json::to_string_pretty(&cost)?);
            return Ok(());
        }
        Some(Part::Failover) => {
            let run = failover::run(&binary, kills, restarts)?;
            std::fs::write(
                out.join("failover.json"),
                serde_json::to_string_pretty(&run)?,
            )?;
            let mut md = failover::markdown(&run);
            md.push_str(
                "
| | measured | target | |
|---|---|---|---|
",
            );
            for c in failover::checks(&run) {
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    c.what,
                    c.value,
                    c.target,
                    if c.pass { "PASS" } else { "FAIL" }
                ));
            }
            std::fs::write(out.join("failover.md"), &md)?;
            println!("{md}");
            return Ok(());
        }
        Some(Part::Remote) => {
            let lab = Lab::up(e2e::spec(&binary))?;
            e2e::wire(&lab)?;
            let settings = e2e::Settings {
                sizes: vec![1],
                rounds: if quick { 1 } else { 7 },
                seconds: if quick { 1 } else { 5 },
            };
            let remote = e2e::remote(&lab, &binary, &settings)?;
            println!("{}", serde_json::to_string_pretty(&remote)?);
            let mut md = String::new();
            report::checks_table(&mut md, &Vec::from_iter(report::remote_check(&remote)));
            println!("{md}");
            return Ok(());
        }
        Some(Part::Kubernetes) => {
            if let Some(figures) = kubernetes_part(&binary, quick, services, per_service)? {
                println!("{}", serde_json::to_string_pretty(&figures)?);
                for (what, value, target, pass) in kubernetes::checks(&figures) {
                    let verdict = if pass { "met" } else { "NOT MET" };
                    println!("{what}: {value} (target {target}): {verdict}");
                }
            }
            return Ok(());
        }
        None => {}
    }

    let datapath = datapath(workspace, quick, &out)?;

    eprintln!("== end to end and control plane, in the lab");
    let lab = Lab::up(e2e::spec(&binary))?;
    e2e::wire(&lab)?;
    let settings = if quick {
        e2e::Settings {
            sizes: vec![1, 100],
            rounds: 1,
            seconds: 1,
        }
    } else {
        e2e::Settings {
            sizes: vec![1, 10_000],
            // Two cores shared by wrk, nginx and the kernel: single runs vary by several
            // percent, the targets by less.
            rounds: 7,
            seconds: 5,
        }
    };
    let end_to_end = e2e::run(&lab, &binary, &settings)?;
    let control_plane = control::run(&lab, &binary, services, per_service)?;
    eprintln!("== hairpin: connect() to a non-VIP address with and without the socket hooks");
    let (rounds, seconds) = if quick { (1, 1) } else { (7, 3) };
    // The control plane's run left its own objects: the hooks' VIPs are the lab's again.
    let hairpin = hairpin::run(&lab, &binary, &hairpin_client, rounds, seconds)?;
    drop(lab);
    eprintln!("== the agent reading a real cluster");
    let kubernetes = kubernetes_part(&binary, quick, services, per_service)?;

    eprintln!("== failover, in the failover lab");
    let failover = failover::run(&binary, kills, restarts)?;

    let mut checks = report::checks(
        &datapath.measurements,
        &end_to_end.throughput,
        &control_plane,
    );
    checks.extend(failover::checks(&failover));
    checks.push(report::hairpin_check(&hairpin));
    checks.extend(kubernetes.iter().flat_map(kubernetes::checks).map(
        |(what, value, target, pass)| report::Check {
            what,
            value,
            target,
            pass,
        },
    ));
    let report = report::Report {
        date: today(),
        machine: machine(),
        quick,
        runs_per_case: datapath.runs_per_case,
        warm_runs: datapath.warm_runs,
        warm_passes_per_run: datapath.warm_passes_per_run,
        datapath: datapath.measurements,
        end_to_end: end_to_end.throughput,
        datapath_time: end_to_end.datapath_time,
        control_plane,
        failover,
        hairpin,
        kubernetes,
        checks,
    };
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let markdown = report::markdown(&report);
    std::fs::write(out.join("report.md"), &markdown)?;
    report::chart(&report, &out.join("chart.svg"))?;
    println!("{markdown}");
    println!(
        "written: {}",
        ["report.md", "report.json", "chart.svg"]
            .map(|f| out.join(f).display().to_string())
            .join(", ")
    );
    Ok(())
}
