//! Soak: many long-lived connections through a VIP while the objects are reloaded again
//! and again (backends and services added and removed) and the agent is killed, stopped,
//! upgraded and restarted. Nothing a client holds may break: no reset and no lost
//! connection whose backend survived, the VIP answers ARP throughout, and at the end the
//! maps hold exactly what a fresh start from the final objects would write.
//!
//! `cargo xtask test` runs it at a size that fits CI; `cargo xtask soak` (GATEWAY_SOAK=full)
//! at full size: 1,000 connections, 50 reloads, 5 restarts.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::http::request;
use gateway_tests::lab::{self, Lab, LabSpec, PodSpec, PortSpec, SessionAffinity};

const VIP: Ipv4Addr = lab::VIP_EXTERNAL;
const EXTRA_VIP: Ipv4Addr = lab::SPARE_VIPS[1];

struct Size {
    connections: usize,
    reloads: usize,
    restarts: usize,
}

fn size() -> Size {
    if std::env::var("GATEWAY_SOAK").as_deref() == Ok("full") {
        Size {
            connections: 1000,
            reloads: 50,
            restarts: 5,
        }
    } else {
        Size {
            connections: 100,
            reloads: 12,
            restarts: 3,
        }
    }
}

/// w1 with three pods: envoy-w1a and envoy-w1b always serve the external gateway (without
/// affinity, so connections spread over both); envoy-w1c comes and goes, as does an extra
/// service on .52. w2's pod is not ready, so w1 announces everything.
fn spec(prefix: &str, round: usize) -> LabSpec {
    let mut spec = LabSpec::reference(prefix);
    spec.pod_mut("envoy-w2a").ready = false;
    spec.node_mut("w1")
        .pods
        .push(PodSpec::new("envoy-w1c", lab::SPARE_POD_W1));
    spec.pod_mut("envoy-w1c").ready = round % 2 == 1;
    let external = spec.service_mut("cilium-gateway-gateway-external");
    external.session_affinity = SessionAffinity::None;
    external.backends.push("envoy-w1c".into());
    if round % 3 == 1 {
        let mut extra = external.clone();
        extra.name = "soak-extra".into();
        extra.requested_ip = Some(EXTRA_VIP);
        extra.ports = vec![PortSpec::tcp("http", 80, lab::HTTP_PORT)];
        extra.backends = vec!["envoy-w1c".into(), "envoy-w1a".into()];
        spec.services.push(extra);
    }
    spec
}

/// How long one request may go unanswered: a flow the datapath drops never answers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One client connection and the backend it was balanced to.
struct Connection {
    stream: TcpStream,
    backend: String,
    /// It failed once: not swept again.
    broken: bool,
}

/// Tells the sweeping threads to stop, also when the test returns early.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Fails at once, with what the datapath and the agent say, when a connection broke.
fn no_failures(lab: &Lab, agent: &Agent, failures: &Mutex<Vec<String>>, after: &str) -> Result<()> {
    // No backend with connections ever leaves: a flow dropped as its backend's is one
    // the agent cut, seen at its first packet rather than after the sweeper's timeout.
    let cut = agent.counter("drop_backend_gone")?;
    ensure!(
        cut == 0,
        "{cut} packets of established flows dropped by {after}\n{}",
        diagnosis(lab, agent)
    );
    let failures = failures.lock().unwrap();
    ensure!(
        failures.is_empty(),
        "{} connections broke by {after}, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        diagnosis(lab, agent)
    );
    Ok(())
}

/// The drop counters and every run's log of the agent on w1.
fn diagnosis(lab: &Lab, agent: &Agent) -> String {
    let counters = agent
        .json(&["status"])
        .map(|s| {
            let counters = s["counters"].as_object().cloned().unwrap_or_default();
            let drops = counters.iter().filter(|(name, value)| {
                name.starts_with("drop") && value.as_u64().is_some_and(|v| v > 0)
            });
            drops
                .map(|(name, v)| format!("{name} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|e| format!("status: {e:#}"));
    let log = lab.run_dir().join("logs").join("agent-w1.log");
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("{}: {e}", log.display()));
    format!("drops: {counters}\nthe agent's log, every run:\n{log}")
}

#[test]
fn connections_survive_reloads_and_restarts() -> Result<()> {
    let size = size();
    let prefix = lab::unique_prefix("gws");
    let binary = agent::binary()?;
    let lab = Lab::up(spec(&prefix, 0).with_teardown_agent(&binary))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    let bpffs = lab.bpffs_dir("w1").to_owned();
    // The "upgrade": the same agent from another path, started over the running datapath.
    let upgraded = lab.run_dir().join("gateway-agent-upgraded");
    std::fs::copy(&binary, &upgraded)?;
    let mut agent = Some(Agent::start(&lab, "w1", &config)?);

    let client = lab.client().ns();
    let mut connections = Vec::new();
    for _ in 0..size.connections {
        let mut stream = client.connect_tcp(SocketAddr::from((VIP, 80)), Duration::from_secs(5))?;
        // A dropped flow answers nothing: each wait on it is bounded.
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let backend = request(&mut stream, VIP)?.backend;
        connections.push(Connection {
            stream,
            backend,
            broken: false,
        });
    }
    let backends: BTreeSet<&str> = connections.iter().map(|c| c.backend.as_str()).collect();
    ensure!(
        backends == BTreeSet::from(["envoy-w1a", "envoy-w1b"]),
        "spread: {backends:?}"
    );

    // Every connection keeps answering from its backend, all the time. The helpers stop when
    // this function returns, also early on a failure.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(AtomicU64::new(0));
    let sweeper = {
        let (stop, failures, requests) = (stop.0.clone(), failures.clone(), requests.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, c) in connections.iter_mut().enumerate() {
                    // A broken connection is reported once, not waited on again and again.
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if c.broken {
                        continue;
                    }
                    let failure = match request(&mut c.stream, VIP) {
                        Ok(a) if a.backend == c.backend => None,
                        Ok(a) => Some(format!(
                            "connection {i} moved from {} to {}",
                            c.backend, a.backend
                        )),
                        Err(e) => Some(format!("connection {i} ({}): {e:#}", c.backend)),
                    };
                    if let Some(failure) = failure {
                        c.broken = true;
                        failures.lock().unwrap().push(failure);
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            }
            connections
        })
    };
    // The VIP is answered in ARP all the time, agent or not.
    let arp_misses = Arc::new(AtomicU64::new(0));
    let arp_checks = Arc::new(AtomicU64::new(0));
    let arper = {
        let (stop, misses, checks) = (stop.0.clone(), arp_misses.clone(), arp_checks.clone());
        let ns = lab.client().ns().name().to_owned();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "arping",
                        "-c",
                        "1",
                        "-w",
                        "1",
                        "-I",
                        lab::CLIENT_IFACE,
                        &VIP.to_string(),
                    ])
                    .output();
                if !out.is_ok_and(|o| o.status.success()) {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
                checks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let restart_every = size.reloads / size.restarts;
    let mut reloads_applied = 0;
    for round in 1..=size.reloads {
        // Rewritten in place, as an editor or `>` does, while the agent watches the file:
        // it must never serve the file half-written.
        std::fs::write(&config, lab::config_yaml(&spec(&prefix, round))?)?;
        let a = agent.as_mut().context("agent")?;
        a.reload()?;
        reloads_applied += 1;
        wait_for_reloads(a, reloads_applied)?;
        no_failures(&lab, a, &failures, &format!("reload {round}"))?;
        if round % restart_every == 0 && round / restart_every <= size.restarts {
            let nth = round / restart_every;
            let old = agent.take().context("agent")?;
            match nth % 3 {
                0 => old.kill()?,
                _ => old.stop(),
            }
            thread::sleep(Duration::from_millis(300)); // running without an agent
            let next_binary = if nth % 3 == 2 { &upgraded } else { &binary };
            agent = Some(Agent::launch(
                &lab,
                "w1",
                &config,
                next_binary,
                &bpffs,
                &[],
            )?);
            reloads_applied = 0;
            let a = agent.as_ref().context("agent")?;
            no_failures(&lab, a, &failures, &format!("restart {nth}"))?;
        }
    }
    // A last full sweep after everything.
    thread::sleep(Duration::from_millis(500));
    stop.0.store(true, Ordering::Relaxed);
    let mut connections = sweeper.join().expect("sweeper");
    arper.join().expect("arper");
    let a = agent.as_ref().context("agent")?;
    no_failures(&lab, a, &failures, "the soak")?;
    for (i, c) in connections.iter_mut().enumerate() {
        let answer = request(&mut c.stream, VIP)
            .with_context(|| format!("connection {i} after the soak\n{}", diagnosis(&lab, a)));
        ensure!(
            answer?.backend == c.backend,
            "connection {i} moved after the soak"
        );
    }
    ensure!(requests.load(Ordering::Relaxed) > 0, "no request was swept");
    assert_eq!(
        arp_misses.load(Ordering::Relaxed),
        0,
        "ARP unanswered {} times of {}",
        arp_misses.load(Ordering::Relaxed),
        arp_checks.load(Ordering::Relaxed)
    );

    // The maps equal a fresh start from the final objects.
    let a = agent.as_ref().context("agent")?;
    assert_state_equals_fresh_start(&lab, a, &config)?;
    Ok(())
}

fn wait_for_reloads(agent: &Agent, reloads: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let status = agent.json(&["status"])?;
        if status["agent"]["reloads"].as_u64() >= Some(reloads) {
            ensure!(
                status["agent"]["rejected"].is_null(),
                "reload refused: {status:#}"
            );
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    anyhow::bail!("reload {reloads} not applied:\n{}", agent.log())
}

/// What `check` computes from the file (a fresh start's state) against what the maps hold.
fn assert_state_equals_fresh_start(
    lab: &Lab,
    agent: &Agent,
    config: &std::path::Path,
) -> Result<()> {
    let node = lab.node("w1");
    let mut cmd = node.ns().command([agent::binary()?.display().to_string()]);
    cmd.args(["check", "--node-name", "w1", "--output", "json", "--config"])
        .arg(config);
    let fresh: serde_json::Value = serde_json::from_slice(&cmd.output()?.stdout)?;
    // Each frontend with the backends that take new flows and those that drain.
    type Frontends = BTreeSet<(String, Vec<String>, Vec<String>)>;
    let sorted = |list: &serde_json::Value, address: &dyn Fn(&serde_json::Value) -> String| {
        let mut all: Vec<String> = list.as_array().unwrap().iter().map(address).collect();
        all.sort();
        all
    };
    let in_check = |b: &serde_json::Value| format!("{}:{}", b["addr"].as_str().unwrap(), b["port"]);
    let want: Frontends = fresh["frontends"]
        .as_array()
        .context("frontends")?
        .iter()
        .map(|f| {
            let frontend = format!(
                "{}:{}/{}",
                f["vip"].as_str().unwrap(),
                f["port"],
                f["protocol"].as_str().unwrap()
            );
            (
                frontend,
                sorted(&f["backends"], &in_check),
                sorted(&f["draining"], &in_check),
            )
        })
        .collect();
    let in_lb = |b: &serde_json::Value| b["address"].as_str().unwrap().to_owned();
    let have: Frontends = agent
        .json(&["lb", "list"])?
        .as_array()
        .context("lb list")?
        .iter()
        .map(|f| {
            (
                f["frontend"].as_str().unwrap().to_owned(),
                sorted(&f["backends"], &in_lb),
                sorted(&f["draining"], &in_lb),
            )
        })
        .collect();
    assert_eq!(have, want, "frontends and their backends");
    // Nothing stale underneath: every table holds exactly what those frontends need, the
    // draining backends included.
    let status = agent.json(&["status"])?;
    let distinct: BTreeSet<&String> = want
        .iter()
        .flat_map(|(_, b, d)| b.iter().chain(d))
        .collect();
    let vips: BTreeSet<&str> = want
        .iter()
        .map(|(f, _, _)| f.split(':').next().unwrap())
        .collect();
    assert_eq!(status["frontends"].as_u64(), Some(want.len() as u64));
    assert_eq!(status["backends"].as_u64(), Some(distinct.len() as u64));
    assert_eq!(status["revnat"].as_u64(), Some(distinct.len() as u64));
    assert_eq!(
        status["slots"].as_u64(),
        Some(
            want.iter()
                .map(|(_, b, d)| (b.len() + d.len()) as u64)
                .sum()
        )
    );
    assert_eq!(status["vips"].as_u64(), Some(vips.len() as u64));
    let announced: BTreeSet<String> = agent.announced()?.iter().map(ToString::to_string).collect();
    assert_eq!(
        announced,
        vips.iter().map(|v| v.to_string()).collect::<BTreeSet<_>>(),
        "announcements"
    );
    Ok(())
}
