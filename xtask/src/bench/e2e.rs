//! End to end in the lab: real TCP from the client namespace to nginx in a pod behind
//! worker w1, with wrk, through three paths measured in turn on the same topology:
//! the gateway datapath, kube-proxy-shaped iptables DNAT, and the pod directly (the ceiling).
//! And a Cluster service whose only endpoint is a pod behind worker w2: through the gateway
//! on w1 (DNAT + SNAT, routed on to w2), through kube-proxy's rules on w1 (DNAT +
//! MASQUERADE), through w1 as a plain router both ways (the same crossings, no load
//! balancer), and the client straight to that pod.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{self, Lab, LabSpec};
use serde::Serialize;

use super::objects::{self, ChainService, External};

pub const NODE: &str = "w1";
const POD: &str = "envoy-w1a";
/// The other worker and its pod, the Cluster service's only endpoint.
const REMOTE_NODE: &str = "w2";
const REMOTE_POD: &str = "envoy-w2a";
const REMOTE_SERVICE: &str = "bench-remote";
const VIP_REMOTE: Ipv4Addr = lab::SPARE_VIPS[0];
/// The measured service: the reference's internal gateway.
const VIP: Ipv4Addr = lab::VIP_INTERNAL;
const CONNECTIONS: &str = "32";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Path3 {
    #[serde(rename = "gateway")]
    Gateway,
    #[serde(rename = "iptables")]
    Iptables,
    #[serde(rename = "direct")]
    Direct,
    /// The gateway on w1 to the Cluster service's pod on w2 (DNAT + SNAT).
    #[serde(rename = "gateway_remote")]
    GatewayRemote,
    /// kube-proxy's way on w1 to the same pod (iptables DNAT + MASQUERADE, the kernel
    /// routing on to w2): the same path with another load balancer.
    #[serde(rename = "iptables_remote")]
    IptablesRemote,
    /// The client to the pod on w2 through w1 as a plain router, both ways: the crossings of
    /// the gateway's path without any load balancer.
    #[serde(rename = "routed_remote")]
    RoutedRemote,
    /// The client straight to the pod on w2 (routed via w2).
    #[serde(rename = "direct_remote")]
    DirectRemote,
}

impl Path3 {
    /// The paths to the local pod.
    pub const ALL: [Path3; 3] = [Path3::Gateway, Path3::Iptables, Path3::Direct];
    /// The paths to the pod on the other node.
    pub const REMOTE: [Path3; 4] = [
        Path3::GatewayRemote,
        Path3::IptablesRemote,
        Path3::RoutedRemote,
        Path3::DirectRemote,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path3::Gateway => "gateway",
            Path3::Iptables => "iptables",
            Path3::Direct => "direct",
            Path3::GatewayRemote => "gateway, remote backend",
            Path3::IptablesRemote => "iptables, remote backend",
            Path3::RoutedRemote => "routed through w1",
            Path3::DirectRemote => "direct to the remote pod",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Metric {
    /// HTTP requests/s over keep-alive connections.
    #[serde(rename = "keepalive_requests_per_s")]
    KeepAlive,
    /// New TCP connections/s, one request each.
    #[serde(rename = "new_connections_per_s")]
    NewConnections,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::KeepAlive, Metric::NewConnections];

    pub fn name(self) -> &'static str {
        match self {
            Metric::KeepAlive => "keep-alive requests/s",
            Metric::NewConnections => "new connections/s",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    pub services: usize,
    pub path: Path3,
    pub metric: Metric,
    pub runs: Vec<f64>,
    pub median: f64,
    /// wrk's socket errors over all runs (connect, read, write, timeout).
    pub socket_errors: u64,
}

/// Where the time of a connection goes: the datapath's own run time (BPF run-time
/// statistics) during one more connection-rate run through the gateway. That run is not one
/// of the measured rounds: the statistics cost two clock reads per program run.
#[derive(Clone, Debug, Serialize)]
pub struct DatapathTime {
    pub services: usize,
    pub connections_per_s: f64,
    /// Program runs (packets through ingress and egress) per connection.
    pub packets_per_connection: f64,
    pub ns_per_packet: f64,
    pub ns_per_connection: f64,
    /// The datapath's run time as a share of all the machine's CPU time in the run.
    pub cpu_share: f64,
}

pub struct Settings {
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub seconds: u32,
}

/// The bench topology: the client, worker w1 with one envoy-like pod (nginx, one worker),
/// and worker w2 with one, the only endpoint of a Cluster service (no agent runs on w2).
pub fn spec(agent: &Path) -> LabSpec {
    let mut spec = LabSpec::reference(&lab::unique_prefix("gwbench")).with_teardown_agent(agent);
    spec.nodes
        .retain(|n| n.name == NODE || n.name == REMOTE_NODE);
    spec.node_mut(NODE).pods.retain(|p| p.name == POD);
    for svc in &mut spec.services {
        svc.backends = vec![POD.to_owned()];
    }
    let mut remote = lab::ServiceSpec::gateway(REMOTE_SERVICE, VIP_REMOTE, &[REMOTE_POD]);
    remote.external_traffic_policy = lab::TrafficPolicy::Cluster;
    remote.session_affinity = lab::SessionAffinity::None;
    spec.services.push(remote);
    spec
}

/// The pod's address and port, the target of every path.
fn pod_target(lab: &Lab) -> (Ipv4Addr, u16) {
    (lab.pod(POD).addr(), lab::HTTP_PORT)
}

/// One wrk run from the client; returns requests/s and socket errors.
fn wrk(lab: &Lab, url: &str, metric: Metric, seconds: u32) -> Result<(f64, u64)> {
    let (rate, errors, _) = wrk_counted(lab, url, metric, seconds)?;
    Ok((rate, errors))
}

/// Like [`wrk`], with the number of requests completed.
fn wrk_counted(lab: &Lab, url: &str, metric: Metric, seconds: u32) -> Result<(f64, u64, u64)> {
    let duration = format!("{seconds}s");
    let mut args = vec!["wrk", "-t1", "-c", CONNECTIONS, "-d", &duration];
    if metric == Metric::NewConnections {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = lab.client().ns().run(args)?;
    let rate = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    if out.contains("Non-2xx") {
        bail!("wrk saw HTTP errors on {url}:\n{out}");
    }
    // "  123456 requests in 5.00s, 98.76MB read"
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{out}"))?;
    Ok((rate, errors, requests))
}

/// Packets and run time (ns) of the agent's attached programs so far, as `status` reports
/// them while BPF run-time statistics are on.
fn run_totals(agent: &Agent) -> Result<(f64, f64)> {
    let status = agent.json(&["status"])?;
    let attachments = status["attachments"]
        .as_array()
        .context("status without attachments")?;
    anyhow::ensure!(!attachments.is_empty(), "no attached programs: {status:#}");
    Ok(attachments.iter().fold((0.0, 0.0), |(packets, ns), a| {
        let p = a["packets"].as_f64().unwrap_or(0.0);
        (
            packets + p,
            ns + p * a["ns_per_packet"].as_f64().unwrap_or(0.0),
        )
    }))
}

/// One more connection-rate run through the gateway with BPF run-time statistics on.
fn datapath_time(
    lab: &Lab,
    binary: &Path,
    config: &Path,
    services: usize,
    seconds: u32,
) -> Result<DatapathTime> {
    let prepared = prepare(lab, Path3::Gateway, config, "", binary)?;
    let result = (|| {
        wrk(lab, &prepared.url, Metric::KeepAlive, 1)?;
        let agent = prepared.agent.as_ref().context("the agent")?;
        // Statistics stay on while this fd is open, and only then.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let before = run_totals(agent)?;
        let (rate, _, connections) =
            wrk_counted(lab, &prepared.url, Metric::NewConnections, seconds)?;
        let after = run_totals(agent)?;
        let (runs, ns) = (after.0 - before.0, after.1 - before.1);
        let connections = connections.max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Ok(DatapathTime {
            services,
            connections_per_s: rate,
            packets_per_connection: runs / connections,
            ns_per_packet: ns / runs.max(1.0),
            ns_per_connection: ns / connections,
            cpu_share: ns / (seconds as f64 * 1e9 * cores),
        })
    })();
    undo(lab, Path3::Gateway, prepared, binary)?;
    result
}

fn iptables_restore(lab: &Lab, rules: &str) -> Result<()> {
    let mut cmd = lab.node(NODE).ns().command(["iptables-restore"]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .context("starting iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "iptables-restore failed ({status})");
    Ok(())
}

/// Prepares one path; the returned guard (the agent) undoes it when dropped or torn down.
struct Prepared {
    agent: Option<Agent>,
    url: String,
    /// Routed through w1: the datagrams w1 had forwarded before, so that the path can be
    /// shown to have gone through it.
    forwarded: Option<u64>,
}

/// Datagrams w1's kernel has forwarded (`Ip: ForwDatagrams` of its namespace).
fn forwarded(lab: &Lab) -> Result<u64> {
    let snmp = lab.node(NODE).ns().run(["cat", "/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next(), ip.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Ip lines in w1's /proc/net/snmp:\n{snmp}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ForwDatagrams")
        .and_then(|(_, value)| value.parse().ok())
        .context("no ForwDatagrams in w1's /proc/net/snmp")
}

fn prepare(lab: &Lab, path: Path3, config: &Path, rules: &str, binary: &Path) -> Result<Prepared> {
    let vip_url = format!("http://{VIP}/");
    match path {
        Path3::Gateway | Path3::GatewayRemote => {
            let bpffs = lab.bpffs_dir(NODE).to_owned();
            let agent = Agent::launch(
                lab,
                NODE,
                config,
                binary,
                &bpffs,
                &["--backends-max", "131072"],
            )?;
            // A fresh start announces every VIP (10,000 in the large runs) with gratuitous
            // ARP over a few seconds: measured only once that is over.
            agent.wait_announcements_sent(Duration::from_millis(1500), Duration::from_secs(60))?;
            let url = if path == Path3::Gateway {
                vip_url
            } else {
                format!("http://{VIP_REMOTE}/")
            };
            Ok(Prepared {
                agent: Some(agent),
                url,
                forwarded: None,
            })
        }
        Path3::Iptables | Path3::IptablesRemote => {
            let (rules, url) = if path == Path3::Iptables {
                (rules.to_owned(), vip_url)
            } else {
                let remote = ChainService {
                    vip: VIP_REMOTE,
                    port: 80,
                    endpoints: vec![(lab.pod(REMOTE_POD).addr(), lab::HTTP_PORT)],
                };
                let rules = objects::kube_proxy_rules(&[remote], External::Cluster);
                (rules, format!("http://{VIP_REMOTE}/"))
            };
            iptables_restore(lab, &rules)?;
            // Repeated connection-rate runs would otherwise fill the conntrack table with
            // TIME_WAIT entries and measure drops instead of the datapath.
            lab.node(NODE)
                .ns()
                .sysctl(&[("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")])?;
            Ok(Prepared {
                agent: None,
                url,
                forwarded: None,
            })
        }
        Path3::Direct => {
            let (addr, port) = pod_target(lab);
            Ok(Prepared {
                agent: None,
                url: format!("http://{addr}:{port}/"),
                forwarded: None,
            })
        }
        Path3::RoutedRemote => {
            through_w1(lab, true)?;
            Ok(Prepared {
                agent: None,
                url: remote_pod_url(lab),
                forwarded: Some(forwarded(lab)?),
            })
        }
        Path3::DirectRemote => Ok(Prepared {
            agent: None,
            url: remote_pod_url(lab),
            forwarded: None,
        }),
    }
}

/// The pod on w2 itself, by its own address.
fn remote_pod_url(lab: &Lab) -> String {
    format!("http://{}:{}/", lab.pod(REMOTE_POD).addr(), lab::HTTP_PORT)
}

/// Routes the client's traffic to the pod on w2, and w2's replies to the client, through w1
/// (`on`), or back the straight way. w1 then forwards frames out of the interface they came
/// in on, so it must not send ICMP redirects, which would teach both ends to bypass it.
fn through_w1(lab: &Lab, on: bool) -> Result<()> {
    let (w1, w2) = (lab.node(NODE), lab.node(REMOTE_NODE));
    let client = lab.client().addr().to_string();
    let remote_pod = format!("{}/32", lab.pod(REMOTE_POD).addr());
    let redirects = if on { "0" } else { "1" };
    w1.ns().sysctl(&[
        ("net.ipv4.conf.all.send_redirects", redirects),
        (
            &format!("net.ipv4.conf.{}.send_redirects", lab::NODE_UPLINK),
            redirects,
        ),
    ])?;
    let via = if on { w1.addr() } else { w2.addr() };
    lab.client()
        .ns()
        .ip(&["route", "replace", &remote_pod, "via", &via.to_string()])?;
    if on {
        w2.ns().ip(&[
            "route",
            "replace",
            &format!("{client}/32"),
            "via",
            &w1.addr().to_string(),
        ])?;
    } else {
        w2.ns().ip(&["route", "del", &format!("{client}/32")])?;
    }
    Ok(())
}

fn undo(lab: &Lab, path: Path3, prepared: Prepared, binary: &Path) -> Result<()> {
    match path {
        Path3::Gateway | Path3::GatewayRemote => {
            if let Some(agent) = prepared.agent {
                let bpffs = agent.bpffs().to_owned();
                agent.stop();
                agent::cli(binary, lab.node(NODE).ns().name(), &bpffs, &["teardown"])?;
            }
        }
        // Deleting the table (iptables-nft's) also unhooks conntrack from the node's
        // namespace, so the next path does not pay for it.
        Path3::Iptables | Path3::IptablesRemote => {
            lab.node(NODE)
                .ns()
                .run(["nft", "delete", "table", "ip", "nat"])?;
        }
        Path3::RoutedRemote => {
            through_w1(lab, false)?;
            // Tens of thousands of requests went by: nearly all their packets, both ways,
            // must have been w1's to forward (not a path that learned to bypass it).
            let before = prepared.forwarded.context("w1's count before")?;
            let through = forwarded(lab)? - before;
            anyhow::ensure!(
                through >= 10_000,
                "routed through w1: w1 forwarded only {through} datagrams"
            );
        }
        Path3::Direct | Path3::DirectRemote => {}
    }
    Ok(())
}

/// Routes and neighbours the client needs for every path: the pods via w1 (direct), the
/// other worker's pod via that worker (straight to it), and the VIPs' neighbour entries, so
/// no path depends on who answers ARP.
pub fn wire(lab: &Lab) -> Result<()> {
    let w1 = lab.node(NODE);
    let client = lab.client().ns();
    client.ip(&["route", "add", lab::POD_CIDR, "via", &w1.addr().to_string()])?;
    let remote_pod = lab.pod(REMOTE_POD).addr();
    client.ip(&[
        "route",
        "add",
        &format!("{remote_pod}/32"),
        "via",
        &lab.node(REMOTE_NODE).addr().to_string(),
    ])?;
    for vip in [VIP, VIP_REMOTE] {
        client.ip(&[
            "neigh",
            "replace",
            &vip.to_string(),
            "lladdr",
            w1.mac(),
            "dev",
            lab::CLIENT_IFACE,
            "nud",
            "permanent",
        ])?;
    }
    // nginx closes each connection-rate request's connection first, so the pod keeps the
    // 4-tuple in TIME_WAIT for a minute; the client soon reuses its ports, and which path
    // runs after which would decide how many new SYNs meet an old TIME_WAIT. No TIME_WAIT
    // buckets in the pod keeps every path's connections equally fresh (kube-proxy's run
    // gets the same treatment for its conntrack entries in `prepare`).
    for pod in [POD, REMOTE_POD] {
        lab.pod(pod)
            .ns()
            .sysctl(&[("net.ipv4.tcp_max_tw_buckets", "0")])?;
    }
    Ok(())
}

/// What the end-to-end runs measured.
pub struct EndToEnd {
    pub throughput: Vec<Throughput>,
    pub datapath_time: Vec<DatapathTime>,
}

/// Medians and socket errors per (services, path, metric), as the rounds collect them.
type Results = BTreeMap<(usize, Path3, Metric), (Vec<f64>, u64)>;

/// The agent's objects with `services` frontends in all (fillers on w1 beside the lab's), and
/// the kube-proxy-shaped rules of as many, the measured service in the middle.
fn objects_of(lab: &Lab, services: usize) -> Result<(PathBuf, String)> {
    let (pod_addr, pod_port) = pod_target(lab);
    let fillers = services.saturating_sub(1);
    let mut yaml = lab.config_yaml()?;
    yaml.push_str(&objects::filler_pool());
    yaml.push_str(&objects::filler_services(fillers, 1, NODE));
    let config: PathBuf = lab.run_dir().join(format!("bench-{services}.yaml"));
    std::fs::write(&config, yaml)?;
    // The measured service sits in the middle of KUBE-SERVICES, as an average service would.
    let mut chain = objects::filler_chain_services(fillers);
    chain.insert(
        fillers / 2,
        ChainService {
            vip: VIP,
            port: 80,
            endpoints: vec![(pod_addr, pod_port)],
        },
    );
    Ok((config, objects::kube_proxy_rules(&chain, External::Local)))
}

/// `settings.rounds` rounds over `paths` at `services` services, each path first, second...
/// in turn, so none is always measured after the same other one.
fn rounds(
    lab: &Lab,
    binary: &Path,
    services: usize,
    paths: &[Path3],
    settings: &Settings,
    results: &mut Results,
) -> Result<PathBuf> {
    let (config, rules) = objects_of(lab, services)?;
    for round in 0..settings.rounds {
        for i in 0..paths.len() {
            let path = paths[(i + round) % paths.len()];
            let prepared = prepare(lab, path, &config, &rules, binary)?;
            // Warm up caches, conntrack and nginx before measuring.
            wrk(lab, &prepared.url, Metric::KeepAlive, 1)?;
            for metric in Metric::ALL {
                let (rate, errors) = wrk(lab, &prepared.url, metric, settings.seconds)?;
                eprintln!(
                    "  {services:>5} services, round {}, {:<24} {:<22} {rate:>9.0}",
                    round + 1,
                    path.name(),
                    metric.name()
                );
                let entry = results.entry((services, path, metric)).or_default();
                entry.0.push(rate);
                entry.1 += errors;
            }
            undo(lab, path, prepared, binary)?;
        }
    }
    Ok(config)
}

fn throughput(results: Results) -> Vec<Throughput> {
    results
        .into_iter()
        .map(
            |((services, path, metric), (runs, socket_errors))| Throughput {
                services,
                path,
                metric,
                median: super::median(&runs),
                runs,
                socket_errors,
            },
        )
        .collect()
}

/// Every path at every size; the remote backend's paths at the first size only (the number
/// of services changes nothing there that the local paths do not show).
pub fn run(lab: &Lab, binary: &Path, settings: &Settings) -> Result<EndToEnd> {
    let mut results = Results::new();
    let mut datapath_times = Vec::new();
    for &services in &settings.sizes {
        let mut paths = Path3::ALL.to_vec();
        if services == settings.sizes[0] {
            paths.extend(Path3::REMOTE);
        }
        let config = rounds(lab, binary, services, &paths, settings, &mut results)?;
        let time = datapath_time(lab, binary, &config, services, settings.seconds)?;
        eprintln!(
            "  {services:>5} services: the datapath ran {:.0} ns per connection ({:.1} packets \
             of {:.0} ns), {:.1} % of the CPU time",
            time.ns_per_connection,
            time.packets_per_connection,
            time.ns_per_packet,
            time.cpu_share * 100.0
        );
        datapath_times.push(time);
    }
    Ok(EndToEnd {
        throughput: throughput(results),
        datapath_time: datapath_times,
    })
}

/// The remote backend's paths alone, at one service (`cargo xtask bench --only remote`).
pub fn remote(lab: &Lab, binary: &Path, settings: &Settings) -> Result<Vec<Throughput>> {
    let mut results = Results::new();
    rounds(lab, binary, 1, &Path3::REMOTE, settings, &mut results)?;
    Ok(throughput(results))
}
