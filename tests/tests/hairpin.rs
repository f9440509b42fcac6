//! Hairpin: a process on the node that announces a VIP, and a pod on that node, reach the
//! VIP through the agent's socket hooks (attached to the node's own cgroup in the lab), get
//! a backend with the service's affinity, and see the VIP as their peer; a process on
//! another node reaches it across the segment as any client does. Needs root; every test
//! builds its own lab (its nodes' cgroups included) and tears it down, also when it fails.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{
    self, CLIENT, ENVOY_W1A, Lab, LabSpec, Node, PortSpec, SPARE_VIPS, SessionAffinity,
    VIP_EXTERNAL, VIP_INTERNAL, W1_ADDR, W2_ADDR,
};
use gateway_tests::netns::Netns;
use gateway_tests::process::{self, Process};

const VIP_DNS: Ipv4Addr = SPARE_VIPS[0];
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_hairpin-client");

/// w1 announces both gateways (w2's pod is not ready) and a UDP service on `VIP_DNS`:53;
/// the internal gateway keeps ClientIP affinity, the external one none.
fn spec(prefix: &str) -> LabSpec {
    let mut spec = LabSpec::reference(prefix);
    spec.pod_mut("envoy-w2a").ready = false;
    spec.service_mut("cilium-gateway-gateway-external")
        .session_affinity = SessionAffinity::None;
    let mut dns = spec.service_mut("cilium-gateway-gateway-external").clone();
    dns.name = "dns".into();
    dns.requested_ip = Some(VIP_DNS);
    dns.ports = vec![PortSpec::udp("dns", 53, 5353)];
    spec.services.push(dns);
    spec
}

/// [`spec`] with `loadBalancerSourceRanges`: the external gateway admits w1's address, the
/// internal one only the client's.
fn ranged_spec(prefix: &str) -> LabSpec {
    let mut spec = spec(prefix);
    spec.service_mut("cilium-gateway-gateway-external")
        .source_ranges = vec![format!("{W1_ADDR}/32")];
    spec.service_mut("cilium-gateway-gateway-internal")
        .source_ranges = vec![format!("{CLIENT}/32")];
    spec
}

struct Setup {
    agents: Vec<Agent>,
    _udp: Vec<Process>,
    lab: Lab,
}

impl Setup {
    fn up(base: &str) -> Result<Self> {
        Self::up_with(spec(&lab::unique_prefix(base)))
    }

    fn up_with(spec: LabSpec) -> Result<Self> {
        let lab = Lab::up(spec.with_teardown_agent(agent::binary()?))?;
        let config = agent::write_config(&lab, &lab.config_yaml()?)?;
        let agents = vec![
            Agent::start(&lab, "w1", &config)?,
            Agent::start(&lab, "w2", &config)?,
        ];
        let udp = ["envoy-w1a", "envoy-w1b"]
            .into_iter()
            .map(|pod| {
                let reply = format!("SYSTEM:echo backend={pod}");
                lab.spawn(
                    lab.pod(pod).ns(),
                    &format!("udp-{pod}"),
                    ["socat", "UDP4-RECVFROM:5353,fork", &reply],
                )
            })
            .collect::<Result<_>>()?;
        ensure!(
            agents[0].announced()?.contains(&VIP_INTERNAL),
            "w1 announces"
        );
        ensure!(agents[1].announced()?.is_empty(), "w2 announces nothing");
        Ok(Self {
            agents,
            _udp: udp,
            lab,
        })
    }

    fn w1(&self) -> &Agent {
        &self.agents[0]
    }
}

/// One line of `hairpin-client`: the peer (or source) the application saw, the backend
/// that answered and the client address it saw.
#[derive(Debug)]
struct Seen {
    peer: String,
    backend: String,
    client: Option<Ipv4Addr>,
}

/// `hairpin-client MODE ADDR COUNT` in `ns` as a process of `node`'s cgroup.
fn client_in_cgroup(
    node: &Node,
    ns: &Netns,
    mode: &str,
    to: &str,
    count: u32,
) -> Result<Vec<Seen>> {
    let mut cmd = node.command_in_cgroup(ns, [CLIENT_BIN, mode, to, &count.to_string()]);
    parse(&process::checked(&mut cmd)?)
}

fn parse(out: &str) -> Result<Vec<Seen>> {
    out.lines()
        .map(|line| {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            Ok(Seen {
                peer: field("peer=")
                    .or_else(|| field("from="))
                    .with_context(|| format!("no peer in {line:?}"))?,
                backend: field("backend=").with_context(|| format!("no backend in {line:?}"))?,
                client: field("client=")
                    .and_then(|c| c.split(':').next().map(str::to_owned))
                    .map(|c| c.parse())
                    .transpose()?,
            })
        })
        .collect()
}

#[test]
fn a_process_and_a_pod_on_the_announcing_node_get_a_backend_with_affinity_and_see_the_vip()
-> Result<()> {
    let s = Setup::up("hpa")?;
    let w1 = s.lab.node("w1");
    let internal = format!("{VIP_INTERNAL}:80");

    // A process of the node: every connection on one backend (ClientIP affinity), which
    // sees the node's address towards its pod, and getpeername() says the VIP.
    let seen = client_in_cgroup(w1, w1.ns(), "tcp", &internal, 6)?;
    assert_eq!(seen.len(), 6);
    let backends: BTreeSet<&str> = seen.iter().map(|s| s.backend.as_str()).collect();
    assert_eq!(backends.len(), 1, "affinity: {seen:?}");
    let backend = seen[0].backend.clone();
    let pod = s.lab.pod(&backend);
    for s in &seen {
        assert_eq!(s.peer, internal, "getpeername shows the VIP: {s:?}");
        assert_eq!(s.client, Some(pod.gateway()), "{s:?}");
    }
    // The node counts as its address on the uplink that announces the VIP.
    let affinity = s.w1().json(&["affinity", "list"])?;
    let clients: BTreeSet<&str> = affinity
        .as_array()
        .context("affinity list")?
        .iter()
        .filter_map(|a| a["client"].as_str())
        .collect();
    assert_eq!(clients, BTreeSet::from([W1_ADDR.to_string().as_str()]));

    // A pod on the node (its own network namespace, the node's cgroup): the same backend
    // (one client per node), which sees the pod's own address.
    let w1a = s.lab.pod("envoy-w1a");
    let from_pod = client_in_cgroup(w1, w1a.ns(), "tcp", &internal, 4)?;
    for s in &from_pod {
        assert_eq!(s.peer, internal, "{s:?}");
        assert_eq!(s.backend, backend, "the node's affinity: {s:?}");
        assert_eq!(s.client, Some(ENVOY_W1A), "{s:?}");
    }

    // Without affinity, connections spread over both local backends.
    let external = format!("{VIP_EXTERNAL}:80");
    let spread: BTreeSet<String> = client_in_cgroup(w1, w1.ns(), "tcp", &external, 24)?
        .into_iter()
        .map(|s| s.backend)
        .collect();
    assert_eq!(
        spread,
        BTreeSet::from(["envoy-w1a".to_owned(), "envoy-w1b".to_owned()])
    );

    // UDP: sendto() the VIP, recvfrom() says the VIP.
    let dns = format!("{VIP_DNS}:53");
    for s in client_in_cgroup(w1, w1.ns(), "udp", &dns, 4)? {
        assert_eq!(s.peer, dns, "{s:?}");
        assert!(s.backend.starts_with("envoy-w1"), "{s:?}");
    }

    // Counted, and no packet went through TC: the flows never touched the uplink.
    assert!(s.w1().counter("hairpin")? >= 6 + 4 + 24 + 4);
    assert_eq!(s.w1().counter("ct_created")?, 0);
    let status = s.w1().json(&["status"])?;
    assert_eq!(status["hairpin"]["active"], true, "{status:#}");
    assert_eq!(
        status["hairpin"]["cgroup"],
        w1.cgroup().display().to_string()
    );
    Ok(())
}

#[test]
fn a_process_on_another_node_reaches_the_vip_across_the_segment() -> Result<()> {
    let s = Setup::up("hpb")?;
    let w2 = s.lab.node("w2");
    let internal = format!("{VIP_INTERNAL}:80");
    // In w2's cgroup, under w2's hooks: w2 does not announce the VIP, so they leave the
    // connection to the routing table, and w1 answers it as any client's.
    let seen = client_in_cgroup(w2, w2.ns(), "tcp", &internal, 3)?;
    for s in &seen {
        assert_eq!(s.peer, internal, "{s:?}");
        assert!(s.backend.starts_with("envoy-w1"), "{s:?}");
        assert_eq!(s.client, Some(W2_ADDR), "no SNAT across the segment: {s:?}");
    }
    assert_eq!(s.agents[1].counter("hairpin")?, 0);
    assert_eq!(s.w1().counter("ct_created")?, 3);
    Ok(())
}

#[test]
fn hairpin_is_confined_to_the_cgroup_survives_a_restart_and_goes_with_teardown() -> Result<()> {
    let mut s = Setup::up("hpc")?;
    let w1 = s.lab.node("w1");
    let internal = format!("{VIP_INTERNAL}:80");
    let programs = |node: &Node| -> Result<usize> {
        let out = process::checked(
            std::process::Command::new("bpftool")
                .args(["cgroup", "show"])
                .arg(node.cgroup()),
        )?;
        Ok(out.lines().filter(|l| l.contains("gw_")).count())
    };
    assert_eq!(programs(w1)?, 4);

    // Outside the node's cgroup (the test's own processes, the machine's), nothing changes:
    // the node itself does not own the VIP, so nobody answers.
    let outside = w1.ns().exec([CLIENT_BIN, "tcp", &internal, "1"])?;
    assert!(!outside.status.success(), "no hairpin outside the cgroup");

    // The agent stops: hairpin goes on (as the TC datapath does); a new agent replaces the
    // programs rather than adding to them.
    let config = s.lab.run_dir().join("config.yaml");
    let agent = s.agents.remove(0);
    agent.stop();
    assert_eq!(client_in_cgroup(w1, w1.ns(), "tcp", &internal, 1)?.len(), 1);
    s.agents.insert(0, Agent::start(&s.lab, "w1", &config)?);
    assert_eq!(programs(w1)?, 4, "the previous run's links were replaced");
    assert_eq!(client_in_cgroup(w1, w1.ns(), "tcp", &internal, 1)?.len(), 1);

    let agent = s.agents.remove(0);
    let bpffs = agent.bpffs().to_owned();
    agent.stop();
    let removed = agent::cli(&agent::binary()?, w1.ns().name(), &bpffs, &["teardown"])?;
    assert!(removed.contains("hairpin link gw_connect4"), "{removed}");
    assert_eq!(programs(w1)?, 0);
    Ok(())
}

#[test]
fn source_ranges_judge_the_node_by_its_address() -> Result<()> {
    let s = Setup::up_with(ranged_spec(&lab::unique_prefix("hpd")))?;
    let w1 = s.lab.node("w1");
    // The external gateway admits w1's address: its processes are served.
    let external = format!("{VIP_EXTERNAL}:80");
    let served = client_in_cgroup(w1, w1.ns(), "tcp", &external, 2)?;
    assert!(served.iter().all(|s| s.peer == external), "{served:?}");
    // The internal one admits only the client: connect() is refused and counted.
    let refused = w1
        .command_in_cgroup(
            w1.ns(),
            [CLIENT_BIN, "tcp", &format!("{VIP_INTERNAL}:80"), "1"],
        )
        .output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "refused: {stderr}");
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert_eq!(s.w1().counter("drop_source_range")?, 1);
    // The client it admits is still served across the segment.
    let answer = s
        .lab
        .client()
        .curl(&format!("http://{VIP_INTERNAL}/"), None)?;
    assert!(answer.starts_with("backend=envoy-w1"), "{answer}");
    Ok(())
}
