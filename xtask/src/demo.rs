//! `cargo xtask demo`: the main job on the embedded lab. Sets the machine up, builds the
//! agent, brings the reference topology up in network namespaces, runs the agent on every
//! node, sends real requests from the client to the VIPs and shows what happened: who
//! answered ARP, which backend served, the source address the backend saw, and affinity
//! holding; then an externalTrafficPolicy Cluster service served by a pod on the worker
//! that does not announce it. Where an API server is at hand (`$KUBEBUILDER_ASSETS`), the
//! agents then read the cluster instead of the file, and a Service applied with kubectl gets
//! its VIP in its status and is served; otherwise the demo says it skipped that part. Then
//! failover: three workers whose agents form a cluster, the announcer killed (agent and
//! uplink), and the VIP answered by another node within a second, never by two. Everything
//! is torn down at the end, also on failure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gateway_tests::agent::{self, Agent};
use gateway_tests::kube_api::{self, KubeApi};
use gateway_tests::lab::{self, Lab, LabSpec, ServiceSpec, TrafficPolicy};
use gateway_tests::probe::Probe;

use crate::{cmd, setup};

const VIPS: [Ipv4Addr; 2] = [lab::VIP_INTERNAL, lab::VIP_EXTERNAL];
const REQUESTS: usize = 6;
/// The Cluster service: its VIP, and its name in the lab.
const VIP_CLUSTER: Ipv4Addr = lab::SPARE_VIPS[0];
const CLUSTER_SERVICE: &str = "cilium-gateway-gateway-cluster";

/// Every claim the demo makes is checked against what it observed.
#[derive(Default)]
struct Findings {
    failed: Vec<String>,
    passed: BTreeMap<String, usize>,
}

impl Findings {
    fn check(&mut self, ok: bool, claim: String) {
        if ok {
            *self.passed.entry(claim).or_default() += 1;
        } else {
            self.failed.push(claim);
        }
    }

    fn report(&self) -> Result<()> {
        for claim in self.passed.keys() {
            println!("ok    {claim}");
        }
        for claim in &self.failed {
            println!("FAIL  {claim}");
        }
        anyhow::ensure!(
            self.failed.is_empty(),
            "{} demo checks failed",
            self.failed.len()
        );
        Ok(())
    }
}

fn section(title: &str) {
    println!("\n=== {title}");
}

pub fn run(workspace: &Path) -> Result<()> {
    setup::run()?;
    cmd::run(
        Command::new("cargo")
            .args(["build", "-p", "gateway-agent"])
            .current_dir(workspace),
    )?;
    let binary = agent::binary()?;

    section("lab: client, L2 segment, control plane cp1, workers w1 (2 envoy pods) and w2 (1)");
    let mut spec =
        LabSpec::reference(&lab::unique_prefix("gwdemo")).with_client_addr(lab::CLIENT_2);
    // A Cluster service, its endpoint chosen once the announcer is known.
    let mut cluster = ServiceSpec::gateway("gateway-cluster", VIP_CLUSTER, &[]);
    cluster.external_traffic_policy = TrafficPolicy::Cluster;
    spec.services.push(cluster);
    let lab = Lab::up(spec.clone().with_teardown_agent(&binary))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    println!("objects: {}", config.display());
    let check = Command::new(&binary)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    print!("{}", String::from_utf8_lossy(&check.stdout));

    section("gateway-agent run on every node");
    let mut agents = BTreeMap::new();
    for node in lab.nodes() {
        let agent = Agent::start(&lab, node.name(), &config)?;
        let announced = agent.announced()?;
        println!(
            "{:<4} agent up, pinned at {}; announces {}",
            node.name(),
            agent.bpffs().display(),
            if announced.is_empty() {
                "nothing".to_owned()
            } else {
                format!("{announced:?}")
            }
        );
        agents.insert(node.name().to_owned(), agent);
    }
    let mac_owner: BTreeMap<String, String> = lab
        .nodes()
        .iter()
        .map(|n| (n.mac().to_owned(), n.name().to_owned()))
        .collect();

    let client = lab.client();
    let mut findings = Findings::default();
    let mut announcers = Vec::new();
    for vip in VIPS {
        section(&format!("VIP {vip}"));
        client.flush_neigh()?;
        let owners: Vec<String> = client
            .arping(vip)?
            .iter()
            .map(|m| {
                mac_owner
                    .get(m)
                    .cloned()
                    .unwrap_or_else(|| format!("unknown MAC {m}"))
            })
            .collect();
        println!("ARP who-has {vip}: answered by {}", owners.join(", "));
        findings.check(
            owners.len() == 1 && owners[0] != "cp1",
            format!("exactly one worker answers ARP for {vip}: {owners:?}"),
        );
        let Some(announcer) = owners.first().cloned() else {
            continue;
        };
        for source in [client.addr(), lab::CLIENT_2] {
            let mut backends = Vec::new();
            for i in 0..REQUESTS {
                let body = client.curl(&format!("http://{vip}/"), Some(source))?;
                println!("  client {source:<14} request {}: {}", i + 1, body.trim());
                let field = |name: &str| {
                    body.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(name))
                        .unwrap_or("")
                        .to_owned()
                };
                let backend = field("backend=");
                let pod_node = lab
                    .pods()
                    .iter()
                    .find(|p| p.name() == backend)
                    .map(|p| p.node().to_owned());
                findings.check(
                    pod_node.as_deref() == Some(announcer.as_str()),
                    format!("{vip}: {backend} runs on the announcing node {announcer}"),
                );
                findings.check(
                    field("client=").starts_with(&format!("{source}:")),
                    format!("{vip}: the backend saw the client's own address {source}"),
                );
                backends.push(backend);
            }
            backends.dedup();
            findings.check(
                backends.len() == 1,
                format!("{vip}: client {source} kept one backend over {REQUESTS} connections: {backends:?}"),
            );
        }
        announcers.push(announcer);
    }

    cluster_service(&lab, spec, &agents, &mac_owner, &mut findings)?;

    announcers.dedup();
    for node in &announcers {
        let agent = &agents[node];
        for (title, args) in [
            ("lb list", vec!["lb", "list"]),
            ("l2 list", vec!["l2", "list"]),
            ("affinity list", vec!["affinity", "list"]),
            ("ct list", vec!["ct", "list"]),
            ("status", vec!["status"]),
        ] {
            section(&format!("gateway-agent {title} on {node}"));
            print!("{}", agent.cli(&args)?);
        }
    }

    let mut api = None;
    match kube_api::assets() {
        Ok(assets) => {
            drop(agents);
            let (cluster_agents, server) = reading_the_cluster(&lab, &assets, &mut findings)?;
            agents = cluster_agents;
            api = Some(server);
        }
        Err(why) => {
            section("reading a Kubernetes API server: skipped");
            println!("skipped: {why}");
        }
    }

    // The agents first, then the API server they read, then the lab.
    drop(agents);
    drop(api);
    drop(lab);
    failover(&binary, &mut findings)?;

    section("what this shows (checked)");
    findings.report()?;
    println!("\nlabs removed");
    Ok(())
}

/// The failover lab: the announcer dies, another node answers within a second.
fn failover(binary: &Path, findings: &mut Findings) -> Result<()> {
    section("failover lab: workers w1, w2, w3, one envoy pod each, the agents a cluster");
    let lab =
        Lab::up(LabSpec::failover(&lab::unique_prefix("gwdemof")).with_teardown_agent(binary))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    let key = lab.run_dir().join("cluster.key");
    std::fs::write(&key, "the demo's shared cluster key, 32b")?;
    let key = key.display().to_string();
    let mut agents = BTreeMap::new();
    for node in lab.nodes() {
        let agent = Agent::start_with(&lab, node.name(), &config, &["--cluster-key-file", &key])?;
        agents.insert(node.name().to_owned(), agent);
    }
    let vip = lab::VIP_INTERNAL;
    let owner = |mac: &str| {
        lab.nodes()
            .iter()
            .find(|n| n.mac() == mac)
            .map(|n| n.name().to_owned())
    };
    // A starting agent waits up to 2 s for the others' claims.
    let deadline = Instant::now() + Duration::from_secs(10);
    let announcer = loop {
        if let [mac] = lab.client().arping(vip)?.as_slice()
            && let Some(node) = owner(mac)
        {
            break node;
        }
        anyhow::ensure!(Instant::now() < deadline, "nobody answers for {vip}");
    };
    section(&format!("gateway-agent members on {announcer}"));
    print!("{}", agents[&announcer].cli(&["members"])?);

    section(&format!(
        "kill {announcer}: its agent (SIGKILL) and its uplink"
    ));
    let probe = Probe::start(lab.client(), vip, 80)?;
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    agents
        .remove(&announcer)
        .context("the announcer's agent")?
        .kill()?;
    lab.set_uplink(&announcer, false)?;
    let node_of = |pod: &str| lab.pod(pod).node().to_owned();
    let served = loop {
        let log = probe.log();
        if let Some(took) = log.served_after(killed, |pod| node_of(pod) != announcer) {
            break Some(took);
        }
        if killed.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    let log = probe.stop()?;
    let newcomer = lab.client().arping(vip)?.first().and_then(|m| owner(m));
    println!(
        "a client probing every 50 ms: {vip} answered again through {} {} after the kill",
        newcomer.as_deref().unwrap_or("nobody"),
        served.map_or("NEVER".to_owned(), |d| format!("{d:.0?}"))
    );
    findings.check(
        served.is_some_and(|d| d <= Duration::from_secs(1)),
        format!(
            "{vip} answered through another node within a second of {announcer}'s death: {served:?}"
        ),
    );
    findings.check(
        newcomer.as_ref().is_some_and(|n| *n != announcer),
        format!("{vip} is answered by a new announcer: {newcomer:?}"),
    );
    findings.check(
        log.double_answers().is_empty(),
        format!(
            "no ARP request for {vip} answered by two MACs ({} sent)",
            log.arp.len()
        ),
    );
    if let Some(newcomer) = &newcomer
        && let Some(agent) = agents.get(newcomer)
    {
        section(&format!("gateway-agent members on {newcomer}"));
        print!("{}", agent.cli(&["members"])?);
    }
    Ok(())
}

/// The Cluster service: announced by a worker without any endpoint, then given the other
/// worker's pod as its only endpoint; requests are served by that pod, which sees the
/// announcing node's address (SNAT), and replies come back from the VIP.
fn cluster_service(
    lab: &Lab,
    mut spec: LabSpec,
    agents: &BTreeMap<String, Agent>,
    mac_owner: &BTreeMap<String, String>,
    findings: &mut Findings,
) -> Result<()> {
    section(&format!(
        "VIP {VIP_CLUSTER}: externalTrafficPolicy Cluster, its endpoint on another node"
    ));
    let client = lab.client();
    client.flush_neigh()?;
    let owners: Vec<String> = client
        .arping(VIP_CLUSTER)?
        .iter()
        .filter_map(|m| mac_owner.get(m).cloned())
        .collect();
    println!(
        "ARP who-has {VIP_CLUSTER}: answered by {} (no endpoint needed)",
        owners.join(", ")
    );
    findings.check(
        owners.len() == 1 && owners[0] != "cp1",
        format!("exactly one worker answers ARP for the Cluster VIP {VIP_CLUSTER}: {owners:?}"),
    );
    let Some(announcer) = owners.first().cloned() else {
        return Ok(());
    };
    let other = if announcer == "w1" { "w2" } else { "w1" };
    let Some(pod) = lab.pods().iter().find(|p| p.node() == other) else {
        return Ok(());
    };
    println!(
        "its only endpoint: {} on {other}; the file is changed and every agent reloads",
        pod.name()
    );
    spec.service_mut(CLUSTER_SERVICE).backends = vec![pod.name().to_owned()];
    agent::write_config(lab, &lab::config_yaml(&spec)?)?;
    for agent in agents.values() {
        agent.reload()?;
    }
    let frontend = format!("{VIP_CLUSTER}:80/TCP");
    let wanted = format!("{}:{}", pod.addr(), lab::HTTP_PORT);
    let programmed = gateway_tests::eventually(
        std::time::Duration::from_secs(5),
        || agents[&announcer].backends(&frontend),
        |b| b.contains(&wanted),
    )?;
    findings.check(
        programmed.contains(&wanted),
        format!("{announcer} programs {frontend} with {wanted}, on {other}"),
    );
    let node_addr = lab.node(&announcer).addr();
    for i in 0..REQUESTS {
        let body = client.curl(&format!("http://{VIP_CLUSTER}/"), None)?;
        println!(
            "  client {:<14} request {}: {}",
            client.addr(),
            i + 1,
            body.trim()
        );
        findings.check(
            body.contains(&format!("backend={} ", pod.name())),
            format!("{VIP_CLUSTER}: served by {} on {other}", pod.name()),
        );
        findings.check(
            body.contains(&format!("client={node_addr}:")),
            format!("{VIP_CLUSTER}: the pod saw the announcing node's address {node_addr} (SNAT)"),
        );
    }
    let flows = agents[&announcer].json(&["ct", "list"])?;
    let snated = flows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["backend"] == wanted.as_str() && f["snat"].is_string())
        .count();
    findings.check(
        snated > 0,
        format!("{announcer}'s conntrack shows the flows SNATed to {node_addr}"),
    );
    println!(
        "snat_created on {announcer}: {}",
        agents[&announcer].counter("snat_created")?
    );
    Ok(())
}

/// The same nodes reading a real API server: the agents restart in cluster mode (adopting
/// what the file's agents pinned), and a Service applied with kubectl is served.
fn reading_the_cluster(
    lab: &Lab,
    assets: &Path,
    findings: &mut Findings,
) -> Result<(BTreeMap<String, Agent>, KubeApi)> {
    section("a Kubernetes API server on the segment; the agents read it instead of the file");
    let api = KubeApi::in_lab(assets, lab)?;
    api.apply_lab(lab.spec())?;
    println!("kube-apiserver at {}; the lab's objects applied", api.url());
    let mut agents = BTreeMap::new();
    for node in lab.nodes() {
        let agent = Agent::start_in_cluster(lab, node.name(), api.kubeconfig())?;
        println!("{:<4} agent reads the cluster", node.name());
        agents.insert(node.name().to_owned(), agent);
    }

    let vip = lab::SPARE_VIPS[0];
    let mut spec = lab.spec().clone();
    let mut web = spec.services[0].clone();
    web.name = "demo-web".into();
    web.requested_ip = Some(vip);
    spec.services = vec![web];
    let manifest = lab::config_json(&spec)?;
    section(
        "kubectl apply -f demo-web.json (a LoadBalancer Service asking for a VIP, and its EndpointSlice)",
    );
    print!("{}", api.apply(&manifest, &[])?);
    let external_ip = gateway_tests::eventually(
        std::time::Duration::from_secs(30),
        || {
            api.kubectl(&[
                "get",
                "svc",
                "demo-web",
                "-n",
                "gateway",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[*].ip}",
            ])
        },
        |ip| !ip.is_empty(),
    )?;
    section("kubectl get svc -n gateway");
    print!("{}", api.kubectl(&["get", "svc", "-n", "gateway"])?);
    findings.check(
        external_ip == vip.to_string(),
        format!("kubectl shows demo-web's EXTERNAL-IP {external_ip}, written back by the agents"),
    );
    let body = gateway_tests::eventually(
        std::time::Duration::from_secs(30),
        || {
            Ok(lab
                .client()
                .curl(&format!("http://{vip}/"), None)
                .unwrap_or_default())
        },
        |body| !body.is_empty(),
    )?;
    println!("client -> http://{vip}/: {}", body.trim());
    findings.check(
        body.contains(&format!("client={}:", lab.client().addr())),
        format!("demo-web at {vip} is served to the client, its address kept"),
    );
    let holder = api.kubectl(&[
        "get",
        "lease",
        "gateway-agent-status",
        "-n",
        kube_api::AGENT_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    println!(
        "status written by the agent on {} (the Lease's holder)",
        holder.unwrap_or_default()
    );
    Ok((agents, api))
}
