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

/// One client connection and the backend it was balanced to.
struct Connection {
    stream: TcpStream,
    backend: String,
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
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let backend = request(&mut stream, VIP)?.backend;
        connections.push(Connection { stream, backend });
    }
    let backends: BTreeSet<&str> = connections.iter().map(|c| c.backend.as_str()).collect();
    ensure!(
        backends == BTreeSet::from(["envoy-w1a", "envoy-w1b"]),
        "spread: {backends:?}"
    );

    // Every connection keeps answering from its backend, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let requests = Arc::new(AtomicU64::new(0));
    let sweeper = {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, c) in connections.iter_mut().enumerate() {
                    match request(&mut c.stream, VIP) {
                        Ok(a) if a.backend == c.backend => {}
                        Ok(a) => failures.lock().unwrap().push(format!(
                            "connection {i} moved from {} to {}",
                            c.backend, a.backend
                        )),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("connection {i} ({}): {e:#}", c.backend)),
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
        let (stop, misses, checks) = (stop.clone(), arp_misses.clone(), arp_checks.clone());
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
        std::fs::write(&config, lab::config_yaml(&spec(&prefix, round))?)?;
        let a = agent.as_mut().context("agent")?;
        a.reload()?;
        reloads_applied += 1;
        wait_for_reloads(a, reloads_applied)?;
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
        }
    }
    // A last full sweep after everything.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut connections = sweeper.join().expect("sweeper");
    arper.join().expect("arper");
    for (i, c) in connections.iter_mut().enumerate() {
        let a = request(&mut c.stream, VIP)
            .with_context(|| format!("connection {i} after the soak"))?;
        ensure!(
            a.backend == c.backend,
            "connection {i} moved to {}",
            a.backend
        );
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures in {} requests, first: {:?}",
        failures.len(),
        requests.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
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
