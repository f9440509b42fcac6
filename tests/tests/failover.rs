//! Failover between nodes, as a client sees it (issue 11): three workers, each with a pod of
//! the service, every one running an agent from the same file, the agents a cluster. A
//! client sends an ARP request and a new request to the VIP every 50 ms throughout
//! (`gateway_tests::probe`). Asserted: no ARP request is ever answered by two MACs, and
//! the VIP is served again through another node after each fault; timings are printed, not
//! asserted (`cargo xtask bench --only failover` measures them).
//!
//! Needs root; each test builds its own lab and tears it down, also when it fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{self, Lab, LabSpec, VIP_INTERNAL};
use gateway_tests::probe::{Log, Probe};

/// How long a failover may take before the test gives up on it (generous: CI machines are
/// busy; the benchmark measures the real figures).
const WAIT: Duration = Duration::from_secs(15);
/// Longer than a starting agent waits for the others' claims (2 s), and than a lease: a VIP
/// that was going to move back would have by then.
const SETTLE: Duration = Duration::from_secs(4);
const NODES: [&str; 3] = ["w1", "w2", "w3"];
const KEY: &str = "the failover lab's shared cluster key";

struct Cluster {
    agents: BTreeMap<String, Agent>,
    config: PathBuf,
    key: PathBuf,
    lab: Lab,
}

impl Cluster {
    fn up(name: &str) -> Result<Self> {
        let lab = Lab::up(
            LabSpec::failover(&lab::unique_prefix(name)).with_teardown_agent(agent::binary()?),
        )?;
        let config = agent::write_config(&lab, &lab.config_yaml()?)?;
        let key = lab.run_dir().join("cluster.key");
        std::fs::write(&key, KEY).context("writing the cluster key")?;
        let mut cluster = Cluster {
            agents: BTreeMap::new(),
            config,
            key,
            lab,
        };
        for node in NODES {
            cluster.start(node)?;
        }
        cluster.served_by_one()?;
        Ok(cluster)
    }

    fn start(&mut self, node: &str) -> Result<()> {
        let key = self.key.display().to_string();
        self.start_with_key(node, &key)
    }

    fn start_with_key(&mut self, node: &str, key: &str) -> Result<()> {
        let agent = Agent::start_with(&self.lab, node, &self.config, &["--cluster-key-file", key])?;
        self.agents.insert(node.into(), agent);
        Ok(())
    }

    fn agent(&self, node: &str) -> Result<&Agent> {
        self.agents
            .get(node)
            .with_context(|| format!("no agent runs on {node}"))
    }

    /// The node whose MAC answers ARP for the VIP; fails unless exactly one does.
    fn announcer(&self) -> Result<String> {
        let macs = self.lab.client().arping(VIP_INTERNAL)?;
        match macs.as_slice() {
            [mac] => self
                .lab
                .nodes()
                .iter()
                .find(|n| n.mac() == mac)
                .map(|n| n.name().to_owned())
                .with_context(|| format!("{mac} is no node's")),
            _ => bail!("{VIP_INTERNAL} answered by {macs:?}, not by exactly one MAC"),
        }
    }

    /// Waits until exactly one node answers for the VIP (the agents' start: claims wait up
    /// to 2 s for every member's).
    fn served_by_one(&self) -> Result<String> {
        let found = gateway_tests::eventually(WAIT, || Ok(self.announcer().ok()), Option::is_some)?;
        found.with_context(|| format!("nobody answers for {VIP_INTERNAL} alone within {WAIT:?}"))
    }

    fn node_of_pod(&self, pod: &str) -> String {
        self.lab.pod(pod).node().to_owned()
    }

    fn probe(&self) -> Result<Probe> {
        Probe::start(self.lab.client(), VIP_INTERNAL, 80)
    }

    /// Waits until a request started after `since` was answered through another node than
    /// `old`; returns how long after `since` that was.
    fn served_elsewhere(&self, probe: &Probe, since: Instant, old: &str) -> Result<Duration> {
        let log = gateway_tests::eventually(
            WAIT,
            || Ok(probe.log()),
            |log| self.moved(log, since, old).is_some(),
        )?;
        self.moved(&log, since, old)
            .with_context(|| format!("not served through another node than {old} within {WAIT:?}"))
    }

    fn moved(&self, log: &Log, since: Instant, old: &str) -> Option<Duration> {
        log.served_after(since, |pod| self.node_of_pod(pod) != old)
    }

    /// The probe's log once it ran `for_at_least` after `since`.
    fn watch(&self, probe: &Probe, since: Instant, for_at_least: Duration) -> Log {
        std::thread::sleep((since + for_at_least).saturating_duration_since(Instant::now()));
        probe.log()
    }

    fn macs_of(&self, log: &Log, since: Instant) -> Vec<String> {
        log.macs_after(since)
            .iter()
            .map(|mac| {
                let mac = mac.map(|b| format!("{b:02x}")).join(":");
                self.lab
                    .nodes()
                    .iter()
                    .find(|n| n.mac() == mac)
                    .map_or(mac, |n| n.name().to_owned())
            })
            .collect()
    }
}

/// Fails when any ARP request the probe sent was answered by two MACs.
fn never_two(log: &Log, what: &str) -> Result<()> {
    let doubles = log.double_answers();
    ensure!(
        doubles.is_empty(),
        "{what}: {} ARP requests answered by two MACs, the first {:?}",
        doubles.len(),
        doubles.first()
    );
    Ok(())
}

/// `gateway-agent doctor` on `node`: the (check, severity, subject) of its findings about the
/// cluster and the announcements.
fn doctor(c: &Cluster, node: &str) -> Result<Vec<(String, String, String)>> {
    let n = c.lab.node(node);
    let mut cmd = n.ns().command([agent::binary()?.display().to_string()]);
    cmd.args(["doctor", "--output", "json", "--bpffs"])
        .arg(n.bpffs_dir());
    let out = cmd.output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("doctor said {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(report["findings"]
        .as_array()
        .context("findings")?
        .iter()
        .filter(|f| f["check"] == "cluster" || f["check"] == "announcement")
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (text("check"), text("severity"), text("subject"))
        })
        .collect())
}

/// The members the agent on `node` sees, by name: (state, VIPs it answers for).
fn members(agent: &Agent) -> Result<BTreeMap<String, (String, usize)>> {
    let view = agent.json(&["members"])?;
    view["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| {
            Ok((
                m["name"].as_str().context("name")?.to_owned(),
                (
                    m["state"].as_str().context("state")?.to_owned(),
                    m["answering"].as_array().context("answering")?.len(),
                ),
            ))
        })
        .collect()
}

#[test]
fn killed_announcers_are_replaced_and_returning_or_restarting_ones_take_nothing() -> Result<()> {
    let mut c = Cluster::up("gwf")?;
    let first = c.announcer()?;
    // Every agent sees three members alive, and the announcer answering.
    let seen = gateway_tests::eventually(
        WAIT,
        || members(c.agent("w1")?),
        |m| m.values().filter(|(state, _)| state == "alive").count() == 3,
    )?;
    ensure!(
        seen.values().filter(|(state, _)| state == "alive").count() == 3 && seen[&first].1 == 1,
        "w1 sees {seen:?}"
    );
    let healthy = doctor(&c, "w1")?;
    ensure!(
        healthy.len() == 2 && healthy.iter().all(|(_, severity, _)| severity == "ok"),
        "doctor on a healthy cluster: {healthy:?}"
    );

    // Node kill: the announcer's agent SIGKILLed and its uplink down.
    let probe = c.probe()?;
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    c.agents
        .remove(&first)
        .context("the announcer's agent")?
        .kill()?;
    c.lab.set_uplink(&first, false)?;
    let took = c.served_elsewhere(&probe, killed, &first)?;
    let second = c.served_by_one()?;
    ensure!(second != first, "{first} is off the segment but answers");
    let log = c.watch(&probe, killed, took + Duration::from_secs(1));
    never_two(&log, "node kill")?;
    eprintln!("node kill: {first} -> {second}, served again after {took:?}");

    // The node returns (uplink, agent): it takes nothing back.
    let returned = Instant::now();
    c.lab.set_uplink(&first, true)?;
    c.start(&first)?;
    let log = c.watch(&probe, returned, SETTLE);
    never_two(&log, "node return")?;
    ensure!(
        c.macs_of(&log, returned) == [second.clone()] && c.announcer()? == second,
        "after {first} returned the VIP is answered by {:?}",
        c.macs_of(&log, returned)
    );

    // Agent-only kill: the datapath lives on, and stops answering when its lease ends.
    let killed = Instant::now();
    c.agents
        .remove(&second)
        .context("the announcer's agent")?
        .kill()?;
    let took = c.served_elsewhere(&probe, killed, &second)?;
    let third = c.served_by_one()?;
    let log = c.watch(&probe, killed, took + Duration::from_secs(1));
    never_two(&log, "agent-only kill")?;
    ensure!(
        third != second,
        "{second}'s agent is dead but it still answers alone"
    );
    eprintln!("agent-only kill: {second} -> {third}, served again after {took:?}");
    c.start(&second)?;

    // Agent restart (SIGTERM, start again): the VIP does not move.
    let restarted = Instant::now();
    c.agents
        .remove(&third)
        .context("the announcer's agent")?
        .stop();
    c.start(&third)?;
    let log = c.watch(&probe, restarted, SETTLE);
    let log_all = probe.stop()?;
    never_two(&log_all, "the whole run")?;
    ensure!(
        c.macs_of(&log, restarted) == [third.clone()]
            && log
                .backends_after(restarted)
                .iter()
                .all(|pod| c.node_of_pod(pod) == third),
        "after {third}'s agent restarted: ARP answered by {:?}, requests by {:?}",
        c.macs_of(&log, restarted),
        log.backends_after(restarted)
    );
    eprintln!(
        "agent restart on {third}: nothing moved, {} of {} requests failed meanwhile",
        log.failed_after(restarted),
        log.requests
            .iter()
            .filter(|r| r.started >= restarted)
            .count()
    );
    Ok(())
}

#[test]
fn drains_eligibility_splits_and_strangers_never_answer_twice() -> Result<()> {
    let mut c = Cluster::up("gwg")?;
    let probe = c.probe()?;

    // Drain: handed over at once; undrain takes nothing back.
    let first = c.announcer()?;
    let drained = Instant::now();
    let said = c.agent(&first)?.cli(&["drain"])?;
    ensure!(said.contains("drained"), "drain said {said:?}");
    let took = c.served_elsewhere(&probe, drained, &first)?;
    let second = c.served_by_one()?;
    ensure!(second != first, "{first} is drained but answers");
    eprintln!("drain: {first} -> {second}, served after {took:?}");
    let status = c.agent(&first)?.json(&["status"])?;
    ensure!(
        status["cluster"]["draining"] == true,
        "status: {}",
        status["cluster"]
    );
    let undrained = Instant::now();
    c.agent(&first)?.cli(&["undrain"])?;
    let log = c.watch(&probe, undrained, SETTLE);
    ensure!(
        c.macs_of(&log, undrained) == [second.clone()],
        "after undrain: {:?}",
        c.macs_of(&log, undrained)
    );

    // Eligibility: the announcer's pod goes unready in the file every agent reads.
    let mut spec = c.lab.spec().clone();
    let pod = spec
        .nodes
        .iter()
        .find(|n| n.name == second)
        .and_then(|n| n.pods.first())
        .context("a pod")?
        .name
        .clone();
    spec.pod_mut(&pod).ready = false;
    let changed = Instant::now();
    agent::write_config(&c.lab, &lab::config_yaml(&spec)?)?;
    let took = c.served_elsewhere(&probe, changed, &second)?;
    let third = c.served_by_one()?;
    ensure!(
        third != second,
        "{second} has no ready endpoint but answers"
    );
    eprintln!("eligibility: {second} -> {third}, served after {took:?}");
    spec.pod_mut(&pod).ready = true;
    let restored = Instant::now();
    agent::write_config(&c.lab, &lab::config_yaml(&spec)?)?;
    let log = c.watch(&probe, restored, SETTLE);
    ensure!(
        c.macs_of(&log, restored) == [third.clone()],
        "after {pod} is ready again: {:?}",
        c.macs_of(&log, restored)
    );

    // Split: the announcer cut off from the other two, not from the client. It stops
    // answering when its lease ends; the majority takes over; healing moves nothing back.
    let split = Instant::now();
    c.lab.split(&[&third])?;
    let took = c.served_elsewhere(&probe, split, &third)?;
    let fourth = c.served_by_one()?;
    ensure!(fourth != third, "{third} is cut off but answers alone");
    eprintln!("split: {third} -> {fourth}, served after {took:?}");
    let healed = Instant::now();
    c.lab.heal()?;
    let log = c.watch(&probe, healed, SETTLE);
    ensure!(
        c.macs_of(&log, healed) == [fourth.clone()],
        "after healing: {:?}",
        c.macs_of(&log, healed)
    );

    // A member without the key: its datagrams are refused and counted, and it disturbs
    // nothing (a non-announcer, so that its restart hold moves nothing either).
    let stranger = NODES
        .iter()
        .find(|n| **n != fourth)
        .context("another node")?
        .to_string();
    c.agents.remove(&stranger).context("its agent")?.stop();
    let wrong = c.lab.run_dir().join("wrong.key");
    std::fs::write(&wrong, "not the key the others have, 32 b").context("writing a key")?;
    let keyless = Instant::now();
    c.start_with_key(&stranger, &wrong.display().to_string())?;
    let witness = NODES
        .iter()
        .find(|n| **n != stranger)
        .context("a witness")?;
    let refused = gateway_tests::eventually(
        WAIT,
        || Ok(c.agent(witness)?.json(&["members"])?["refused"]["bad_tag"].as_u64()),
        |n| n.is_some_and(|n| n > 0),
    )?;
    ensure!(
        refused.is_some_and(|n| n > 0),
        "{witness} counted {refused:?} bad tags"
    );
    let log = c.watch(&probe, keyless, SETTLE);
    ensure!(
        c.macs_of(&log, keyless) == [fourth.clone()],
        "with {stranger} keyed wrongly: {:?}",
        c.macs_of(&log, keyless)
    );
    let findings = doctor(&c, witness)?;
    ensure!(
        findings
            .iter()
            .any(|f| f.2 == "datagrams refused" && f.1 == "warning")
            && findings
                .iter()
                .any(|f| f.0 == "announcement" && f.1 == "ok"),
        "doctor on {witness} with {stranger} keyed wrongly: {findings:?}"
    );
    let seen = members(c.agent(&stranger)?)?;
    ensure!(
        seen.iter().all(|(node, (state, answering))| {
            *answering == 0 && (*node == stranger || state != "alive")
        }),
        "{stranger} with the wrong key sees {seen:?}"
    );
    never_two(&probe.stop()?, "the whole run")
}
