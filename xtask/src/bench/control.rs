//! Control plane: how long the real agent binary takes, and how much memory, to program many
//! services with several backends each from one file, to apply a one-service change on top
//! of that state (SIGHUP), and to answer a metrics scrape of it all.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::Lab;
use serde::Serialize;

use super::{e2e::NODE, objects};

#[derive(Clone, Debug, Serialize)]
pub struct ControlPlane {
    pub services: usize,
    pub backends_per_service: usize,
    /// From starting the process to programs attached over a full state, as the agent logs it.
    pub program_ms: f64,
    /// The same from outside: spawn to the log line.
    pub program_wall_ms: f64,
    /// Peak resident set size of the agent (VmHWM).
    pub peak_rss_mib: f64,
    /// A one-service change (one more backend in the file's first service, which moves
    /// every line after it): re-read, validate, diff and apply, as the agent logs it.
    pub change_ms: f64,
    /// The same from outside: SIGHUP to the log line.
    pub change_wall_ms: f64,
    pub change_map_writes: u64,
    /// One `GET /metrics` over the full state, as curl on the node times it, and its size.
    pub scrape_ms: f64,
    pub scrape_kib: f64,
    /// Peak resident set size of the agent once it has answered that scrape.
    pub scrape_peak_rss_mib: f64,
}

/// Where the agent under test serves its metrics (on the node's own address).
const METRICS_PORT: u16 = 9655;

/// Times one scrape of `endpoint` from the node itself: (milliseconds, KiB).
fn scrape(lab: &Lab, endpoint: SocketAddr) -> Result<(f64, f64)> {
    let out = lab.node(NODE).ns().run([
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "60",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{size_download}",
        &format!("http://{endpoint}/metrics"),
    ])?;
    let (seconds, bytes) = out
        .split_once(' ')
        .with_context(|| format!("curl -w printed {out:?}"))?;
    Ok((
        seconds.parse::<f64>()? * 1000.0,
        bytes.trim().parse::<f64>()? / 1024.0,
    ))
}

/// Parses a `{:.1?}` Duration as the agent logs it (e.g. `812.4ms`, `1.2s`, `950.0µs`).
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "s" => 1000.0,
        "ms" => 1.0,
        "µs" => 0.001,
        "ns" => 0.000_001,
        _ => return None,
    };
    Some(value * factor)
}

/// The duration the agent logged after `marker` (e.g. "serving after ").
pub(super) fn logged_ms(line: &str, marker: &str) -> Result<f64> {
    let rest = &line[line
        .find(marker)
        .with_context(|| format!("no {marker:?} in {line}"))?
        + marker.len()..];
    let token = rest.split([':', ' ']).next().unwrap_or("");
    parse_duration_ms(token).with_context(|| format!("no duration after {marker:?} in {line}"))
}

pub(super) fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    Ok(kib / 1024.0)
}

pub fn run(lab: &Lab, binary: &Path, services: usize, per_service: usize) -> Result<ControlPlane> {
    let base = lab.config_yaml()? + &objects::filler_pool();
    let config = lab.run_dir().join("control.yaml");
    std::fs::write(
        &config,
        base.clone() + &objects::filler_services(services, per_service, NODE),
    )?;
    let bpffs = lab.run_dir().join("bpffs").join("control");

    let metrics = SocketAddr::from((lab.node(NODE).addr(), METRICS_PORT));
    let started = Instant::now();
    let mut agent = Agent::launch(
        lab,
        NODE,
        &config,
        binary,
        &bpffs,
        &[
            "--backends-max",
            "131072",
            "--metrics-address",
            &metrics.to_string(),
        ],
    )?;
    let program_wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let serving = agent.wait_for_log("serving after", Duration::from_secs(1))?;
    let program_ms = logged_ms(&serving, "serving after ")?;
    let peak_rss_mib = peak_rss_mib(agent.pid())?;
    let (scrape_ms, scrape_kib) = scrape(lab, metrics)?;
    let scrape_peak_rss_mib = self::peak_rss_mib(agent.pid())?;

    // One service changes as a real edit changes it: its EndpointSlice gains an endpoint,
    // three lines that move every document after it.
    let changed = objects::with_added_endpoint(
        &objects::filler_services(services, per_service, NODE),
        "10.127.0.1".parse()?,
        NODE,
    )
    .context("a first EndpointSlice")?;
    std::fs::write(&config, base + &changed)?;
    let started = Instant::now();
    agent.reload()?;
    let reloaded = agent.wait_for_log("reloaded", Duration::from_secs(60))?;
    let change_wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let change_ms = logged_ms(&reloaded, " in ")?;
    let change_map_writes = reloaded
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);

    agent.stop();
    agent::cli(binary, lab.node(NODE).ns().name(), &bpffs, &["teardown"])?;
    Ok(ControlPlane {
        services,
        backends_per_service: per_service,
        program_ms,
        program_wall_ms,
        peak_rss_mib,
        change_ms,
        change_wall_ms,
        change_map_writes,
        scrape_ms,
        scrape_kib,
        scrape_peak_rss_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_durations_the_agent_logs() {
        assert_eq!(parse_duration_ms("812.4ms"), Some(812.4));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_duration_ms("250.0µs"), Some(0.25));
        let line = "[..] node w1: serving after 1.2s: 4 frontends";
        assert_eq!(logged_ms(line, "serving after ").unwrap(), 1200.0);
        let line = "[..] reloaded /x.yaml in 31.7ms: 4 frontends (3 map writes)";
        assert_eq!(logged_ms(line, " in ").unwrap(), 31.7);
    }
}
