//! The gateway as a user sees it: the agent running on the lab's nodes, real ARP and real
//! TCP from the client namespace through the real kernel, answered by nginx in the pods.
//! Needs root; every test builds its own lab and tears it down, also when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::http::{Answer, request};
use gateway_tests::lab::{
    self, CLIENT, CLIENT_2, ENVOY_W1A, HTTP_PORT, Lab, LabSpec, PortSpec, SPARE_VIPS, ServiceSpec,
    SessionAffinity, UNUSED_ADDR, VIP_EXTERNAL, VIP_INTERNAL,
};
use gateway_tests::netns::Netns;

/// How `lb list` names the external gateway's frontend.
fn frontend_external() -> String {
    format!("{VIP_EXTERNAL}:80/TCP")
}
/// How long a reload, a refusal or gratuitous ARP may take to show.
const WAIT: Duration = Duration::from_secs(5);

/// A lab with the agent running on some of its nodes. Agents stop before the lab goes.
struct Cluster {
    agents: BTreeMap<String, Agent>,
    config: PathBuf,
    lab: Lab,
}

impl Cluster {
    fn up(spec: LabSpec, nodes: &[&str]) -> Result<Self> {
        let lab = Lab::up(spec.with_teardown_agent(agent::binary()?))?;
        let config = agent::write_config(&lab, &lab.config_yaml()?)?;
        let mut cluster = Cluster {
            agents: BTreeMap::new(),
            config,
            lab,
        };
        for node in nodes {
            cluster.start(node)?;
        }
        Ok(cluster)
    }

    fn start(&mut self, node: &str) -> Result<()> {
        let agent = Agent::start(&self.lab, node, &self.config)?;
        self.agents.insert(node.into(), agent);
        Ok(())
    }

    fn agent(&self, node: &str) -> &Agent {
        &self.agents[node]
    }

    /// The node whose agent announces `vip`; fails unless exactly one does.
    fn announcer(&self, vip: Ipv4Addr) -> Result<String> {
        let mut announcers = Vec::new();
        for (node, agent) in &self.agents {
            if agent.announced()?.contains(&vip) {
                announcers.push(node.clone());
            }
        }
        match announcers.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("{vip} is announced by {announcers:?}, not by exactly one node"),
        }
    }

    fn pods_of(&self, node: &str) -> BTreeSet<String> {
        self.lab
            .pods()
            .iter()
            .filter(|p| p.node() == node)
            .map(|p| p.name().to_owned())
            .collect()
    }

    /// GETs `url` from the client (optionally from `source`) and parses the pod's answer.
    fn get(&self, url: &str, source: Option<Ipv4Addr>) -> Result<Answer> {
        Answer::parse(&self.lab.client().curl(url, source)?)
    }
}

#[test]
fn arp_is_answered_by_exactly_one_worker_per_vip_and_only_for_announced_vips() -> Result<()> {
    let c = Cluster::up(
        LabSpec::reference(&lab::unique_prefix("gwa")),
        &["cp1", "w1", "w2"],
    )?;
    let client = c.lab.client();
    for vip in [VIP_INTERNAL, VIP_EXTERNAL] {
        let announcer = c.announcer(vip)?;
        assert_ne!(
            announcer, "cp1",
            "the L2 policy excludes control-plane nodes"
        );
        client.flush_neigh()?;
        let macs = client.arping(vip)?;
        assert_eq!(
            macs,
            vec![c.lab.node(&announcer).mac().to_owned()],
            "ARP for {vip}"
        );
    }
    // An address of the pool that no service holds, and any other address: no answer.
    for unannounced in [SPARE_VIPS[0], UNUSED_ADDR] {
        assert_eq!(
            client.arping(unannounced)?,
            Vec::<String>::new(),
            "{unannounced}"
        );
    }
    assert!(c.agent("cp1").announced()?.is_empty());
    // The kernel still answers for the nodes' own addresses.
    assert_eq!(
        client.arping(c.lab.node("w1").addr())?,
        vec![c.lab.node("w1").mac().to_owned()]
    );
    // Every reply was counted by the node that sent it.
    let replies: u64 = ["w1", "w2"]
        .iter()
        .map(|n| c.agent(n).counter("arp_reply"))
        .sum::<Result<u64>>()?;
    assert_eq!(replies, 2);
    Ok(())
}

#[test]
fn requests_reach_a_local_backend_that_sees_the_client_address() -> Result<()> {
    let c = Cluster::up(
        LabSpec::reference(&lab::unique_prefix("gwb")),
        &["w1", "w2"],
    )?;
    for vip in [VIP_INTERNAL, VIP_EXTERNAL] {
        let announcer = c.announcer(vip)?;
        let local_pods = c.pods_of(&announcer);
        for (port, backend_port) in [(80, 8080), (443, 8443)] {
            for _ in 0..5 {
                let a = c.get(&format!("http://{vip}:{port}/"), None)?;
                assert!(local_pods.contains(&a.backend), "{a:?} not on {announcer}");
                assert_eq!(a.client.ip(), CLIENT, "no SNAT: the pod sees the client");
                assert_eq!(a.local.port(), backend_port);
            }
        }
        // The flows are tracked on the announcer with the client's own address.
        let flows = c.agent(&announcer).json(&["ct", "list"])?;
        let frontend = format!("{vip}:80/TCP");
        assert!(
            flows
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["frontend"] == frontend.as_str()
                    && f["client"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("{CLIENT}:"))),
            "{flows:#}"
        );
    }
    // Each node programs only its own ready endpoints.
    for node in ["w1", "w2"] {
        let lb = c.agent(node).json(&["lb", "list"])?;
        let own: BTreeSet<Ipv4Addr> = c
            .lab
            .pods()
            .iter()
            .filter(|p| p.node() == node)
            .map(|p| p.addr())
            .collect();
        for frontend in lb.as_array().unwrap() {
            for b in frontend["backends"].as_array().unwrap() {
                let addr: SocketAddr = b["address"].as_str().unwrap().parse()?;
                assert!(
                    matches!(addr.ip(), std::net::IpAddr::V4(ip) if own.contains(&ip)),
                    "{node}: {lb:#}"
                );
            }
        }
    }
    Ok(())
}

/// w2's only pod not ready: w2 is not eligible, so w1 announces both VIPs and balances
/// over its two pods. The external service has no affinity.
fn two_local_backends_spec(prefix: &str) -> LabSpec {
    let mut spec = LabSpec::reference(prefix).with_client_addr(CLIENT_2);
    spec.pod_mut("envoy-w2a").ready = false;
    spec.service_mut("cilium-gateway-gateway-external")
        .session_affinity = SessionAffinity::None;
    spec
}

#[test]
fn client_ip_affinity_holds_across_new_connections() -> Result<()> {
    let c = Cluster::up(
        two_local_backends_spec(&lab::unique_prefix("gwc")),
        &["w1", "w2"],
    )?;
    assert_eq!(c.announcer(VIP_INTERNAL)?, "w1");
    assert_eq!(c.announcer(VIP_EXTERNAL)?, "w1");
    for source in [CLIENT, CLIENT_2] {
        let backends: BTreeSet<String> = (0..12)
            .map(|_| {
                c.get(&format!("http://{VIP_INTERNAL}/"), Some(source))
                    .map(|a| a.backend)
            })
            .collect::<Result<_>>()?;
        assert_eq!(
            backends.len(),
            1,
            "one client, one backend: {source} got {backends:?}"
        );
    }
    let affinity = c.agent("w1").json(&["affinity", "list"])?;
    let clients: BTreeSet<&str> = affinity
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["client"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        BTreeSet::from([CLIENT.to_string().as_str(), CLIENT_2.to_string().as_str()])
    );
    let entry = &affinity.as_array().unwrap()[0];
    assert!(
        entry["expires_in_secs"].as_u64().unwrap() > 10700,
        "3 hours: {entry}"
    );

    // Without affinity the same client is spread over both local pods.
    let spread: BTreeSet<String> = (0..24)
        .map(|_| {
            c.get(&format!("http://{VIP_EXTERNAL}/"), None)
                .map(|a| a.backend)
        })
        .collect::<Result<_>>()?;
    assert_eq!(
        spread,
        BTreeSet::from(["envoy-w1a".to_owned(), "envoy-w1b".to_owned()])
    );
    Ok(())
}

#[test]
fn a_vip_port_that_is_not_served_is_dropped_and_counted() -> Result<()> {
    let c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gwd")), &["w1"])?;
    let out = c.lab.client().ns().exec([
        "curl",
        "-sS",
        "--connect-timeout",
        "1",
        &format!("http://{VIP_INTERNAL}:8080/"),
    ])?;
    assert!(!out.status.success(), "nothing serves VIP:8080");
    assert!(c.agent("w1").counter("drop_unknown_port")? >= 1);
    // The pod port is not reachable through the VIP, and the VIP still serves port 80.
    c.get(&format!("http://{VIP_INTERNAL}/"), None)?;
    Ok(())
}

#[test]
fn the_nodes_own_traffic_is_unaffected() -> Result<()> {
    let c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gwe")), &["w1"])?;
    let w1 = c.lab.node("w1");
    let client = c.lab.client();
    client.ping(w1.addr())?;
    assert_eq!(
        client.curl(&format!("http://{}/", w1.addr()), None)?,
        format!("node=w1 client={CLIENT}\n")
    );
    // The node reaches the client and its own pods directly.
    w1.ns()
        .run(["ping", "-n", "-c", "1", "-W", "2", &CLIENT.to_string()])?;
    let pod = c.lab.pod("envoy-w1a");
    let body = w1.ns().run([
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{}:8080/", pod.addr()),
    ])?;
    assert!(
        body.contains(&format!("client={}:", pod.gateway())),
        "{body}"
    );
    // None of it was balanced.
    assert_eq!(c.agent("w1").counter("ct_created")?, 0);
    Ok(())
}

#[test]
fn an_agent_restart_keeps_tracked_connections_and_traffic_flows_while_it_is_down() -> Result<()> {
    let mut c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gwf")), &["w1"])?;
    let to = SocketAddr::from((VIP_EXTERNAL, 80));
    let mut conn = c
        .lab
        .client()
        .ns()
        .connect_tcp(to, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let first = request(&mut conn, VIP_EXTERNAL)?;
    let flow_of = |agent: &Agent| -> Result<serde_json::Value> {
        let flows = agent.json(&["ct", "list"])?;
        let port = first.client.port();
        flows
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["client"] == format!("{CLIENT}:{port}").as_str())
            .cloned()
            .with_context(|| format!("flow from port {port} not tracked: {flows:#}"))
    };
    let before = flow_of(c.agent("w1"))?;
    let garp_sent = |agent: &Agent| -> Result<Vec<u64>> {
        let l2 = agent.json(&["l2", "list"])?;
        Ok(l2
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["garp_sent"].as_u64().unwrap())
            .collect())
    };
    c.agent("w1")
        .wait_announcements_sent(Duration::from_millis(1500), WAIT)?;
    let announced = garp_sent(c.agent("w1"))?;
    assert!(
        !announced.is_empty() && announced.iter().all(|&n| n > 0),
        "{announced:?}"
    );

    // Killed outright: the datapath keeps serving the connection and new ones.
    c.agents.remove("w1").unwrap().kill()?;
    assert_eq!(request(&mut conn, VIP_EXTERNAL)?.backend, first.backend);
    c.get(&format!("http://{VIP_EXTERNAL}/"), None)?;
    c.lab.client().flush_neigh()?;
    assert_eq!(
        c.lab.client().arping(VIP_EXTERNAL)?,
        vec![c.lab.node("w1").mac().to_owned()]
    );

    // Started again: it adopts the maps, and the connection keeps its backend.
    c.start("w1")?;
    let log = c.agent("w1").log();
    assert!(log.contains("adopted the pinned state"), "{log}");
    assert!(log.contains("replaced in place"), "{log}");
    let after = flow_of(c.agent("w1"))?;
    assert_eq!(after["backend"], before["backend"]);
    assert_eq!(after["backend_id"], before["backend_id"]);
    assert_eq!(request(&mut conn, VIP_EXTERNAL)?.backend, first.backend);
    // The datapath answered ARP throughout (one node: its gate never closes), so nothing
    // is announced again: no broadcast burst on every restart.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(garp_sent(c.agent("w1"))?, announced);
    Ok(())
}

#[test]
fn teardown_detaches_the_programs_and_removes_every_pin() -> Result<()> {
    let mut c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gwg")), &["w1"])?;
    c.get(&format!("http://{VIP_INTERNAL}/"), None)?;
    let agent = c.agents.remove("w1").unwrap();
    let bpffs = agent.bpffs().to_owned();
    agent.stop();
    let w1 = c.lab.node("w1");
    let binary = agent::binary()?;
    let removed = agent::cli(&binary, w1.ns().name(), &bpffs, &["teardown"])?;
    assert!(removed.contains("link ens18@"), "{removed}");
    assert!(!bpffs.exists(), "{} left behind", bpffs.display());
    let net = w1.ns().run(["bpftool", "net", "show", "dev", "ens18"])?;
    assert!(
        !net.contains("gw_ingress") && !net.contains("gw_egress"),
        "{net}"
    );
    // Nobody answers for the VIP any more.
    c.lab.client().flush_neigh()?;
    assert!(c.lab.client().arping(VIP_INTERNAL)?.is_empty());
    Ok(())
}

/// `ethtool -K DEV SETTINGS...` inside `ns`.
fn offload(ns: &Netns, dev: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["ethtool", "-K", dev];
    args.extend(settings);
    ns.run(args)?;
    Ok(())
}

#[test]
fn checksums_stay_right_with_partial_and_with_full_checksums() -> Result<()> {
    checksums_stay_right(&[])
}

/// The same with the kernel's helpers doing every checksum update (`--checksum-helpers`):
/// the path a kernel without BTF, or a `CHECKSUM_COMPLETE` frame, takes. The doctor and
/// `status` say which one serves.
#[test]
fn checksums_stay_right_through_the_kernels_helpers() -> Result<()> {
    checksums_stay_right(&["--checksum-helpers"])
}

fn checksums_stay_right(agent_flags: &[&str]) -> Result<()> {
    let c = Cluster::up(dns_spec(&lab::unique_prefix("gwh")), &[])?;
    let _servers = udp_servers(&c)?;
    let n = c.lab.node("w1");
    // Stopped (dropped) before the lab goes.
    let agent = Agent::launch(
        &c.lab,
        "w1",
        &c.config,
        &agent::binary()?,
        n.bpffs_dir(),
        agent_flags,
    )?;
    let helpers = !agent_flags.is_empty();
    let status = agent.json(&["status"])?;
    assert_eq!(
        status["agent"]["checksums_in_place"], !helpers,
        "{status:#}"
    );
    let (_, report) = doctor(&c, "w1", &[])?;
    assert_eq!(
        findings(&report, "datapath", "info").len(),
        usize::from(helpers),
        "{report:#}"
    );
    let (client, w1) = (c.lab.client(), c.lab.node("w1"));
    let pods: Vec<_> = ["envoy-w1a", "envoy-w1b"].map(|p| c.lab.pod(p)).into();
    // Receivers verify every checksum: veth otherwise marks frames as already checked.
    offload(client.ns(), lab::CLIENT_IFACE, &["rx", "off"])?;
    for pod in &pods {
        offload(pod.ns(), lab::POD_IFACE, &["rx", "off"])?;
    }
    let fetch_all = |mode: &str| -> Result<()> {
        for i in 0..6 {
            let a = c
                .get(&format!("http://{VIP_EXTERNAL}/"), None)
                .with_context(|| {
                    format!("{mode} checksums, request {i}: a bad checksum is a drop")
                })?;
            ensure!(a.client.ip() == CLIENT);
            let answer = udp_query(&c, i).with_context(|| {
                format!("{mode} checksums, UDP query {i}: a bad checksum is a drop")
            })?;
            ensure!(answer.starts_with("backend="), "{answer}");
        }
        Ok(())
    };
    // Partial: the senders leave the sum to "hardware" (CHECKSUM_PARTIAL through the NAT),
    // and the node's devices complete it in software on the way out.
    for pod in &pods {
        offload(w1.ns(), pod.host_iface(), &["tx", "off"])?;
    }
    offload(w1.ns(), lab::NODE_UPLINK, &["tx", "off"])?;
    fetch_all("partial")?;
    // Full: the senders compute complete checksums, which the NAT updates incrementally.
    offload(client.ns(), lab::CLIENT_IFACE, &["tx", "off"])?;
    for pod in &pods {
        offload(pod.ns(), lab::POD_IFACE, &["tx", "off"])?;
    }
    fetch_all("full")?;
    Ok(())
}

const VIP_DNS: Ipv4Addr = SPARE_VIPS[0];

/// Two local backends, and a UDP service on `VIP_DNS`:53 in front of port 5353 of both.
fn dns_spec(prefix: &str) -> LabSpec {
    let mut spec = two_local_backends_spec(prefix);
    let mut dns = spec.service_mut("cilium-gateway-gateway-external").clone();
    dns.name = "dns".into();
    dns.requested_ip = Some(VIP_DNS);
    dns.ports = vec![PortSpec::udp("dns", 53, 5353)];
    spec.services.push(dns);
    spec
}

/// A UDP server on port 5353 of each local backend, answering `backend=POD`.
fn udp_servers(c: &Cluster) -> Result<Vec<gateway_tests::process::Process>> {
    ["envoy-w1a", "envoy-w1b"]
        .into_iter()
        .map(|pod| {
            let reply = format!("SYSTEM:echo backend={pod}");
            c.lab.spawn(
                c.lab.pod(pod).ns(),
                &format!("udp-{pod}"),
                ["socat", "UDP4-RECVFROM:5353,fork", &reply],
            )
        })
        .collect()
}

/// One query to `VIP_DNS`:53 from a fresh client port; the answer.
fn udp_query(c: &Cluster, i: u16) -> Result<String> {
    // A connected socket only accepts datagrams from VIP:53: a reply that was not
    // reverse-NATed would never arrive.
    let socket = c
        .lab
        .client()
        .ns()
        .bind_udp(SocketAddr::from((CLIENT, 0)))?;
    socket.connect((VIP_DNS, 53))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    // socat may still be starting: a few retries per flow.
    for _ in 0..10 {
        socket.send(format!("query {i}").as_bytes())?;
        let mut buf = [0u8; 256];
        if let Ok(n) = socket.recv(&mut buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        }
    }
    bail!("no answer from {VIP_DNS}:53 for flow {i}")
}

#[test]
fn udp_is_balanced_to_local_backends_and_replies_come_from_the_vip() -> Result<()> {
    let c = Cluster::up(dns_spec(&lab::unique_prefix("gwi")), &["w1"])?;
    let servers = udp_servers(&c)?;
    let mut seen = BTreeSet::new();
    for i in 0..24u16 {
        seen.insert(udp_query(&c, i)?);
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "backend=envoy-w1a".to_owned(),
            "backend=envoy-w1b".to_owned()
        ])
    );
    let flows = c.agent("w1").json(&["ct", "list"])?;
    let udp: Vec<_> = flows
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["state"] == "udp")
        .collect();
    assert!(udp.len() >= 24, "{flows:#}");
    let frontend = format!("{VIP_DNS}:53/UDP");
    assert!(udp.iter().all(|f| f["frontend"] == frontend.as_str()));
    assert!(
        udp[0]["expires_in_secs"].as_u64().unwrap() > 3500,
        "ct-any-timeout 3600 s"
    );
    drop(servers);
    Ok(())
}

#[test]
fn sighup_applies_a_changed_file_and_a_bad_file_changes_nothing() -> Result<()> {
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwj"));
    let c = Cluster::up(spec.clone(), &["w1"])?;
    let w1 = c.agent("w1");
    let backends = || w1.backends(&frontend_external());
    assert_eq!(backends()?.len(), 2);

    // envoy-w1b stops being ready: after SIGHUP only envoy-w1a serves.
    spec.pod_mut("envoy-w1b").ready = false;
    std::fs::write(&c.config, lab::config_yaml(&spec)?)?;
    w1.reload()?;
    let only_w1a = BTreeSet::from([format!("{ENVOY_W1A}:{HTTP_PORT}")]);
    let after = gateway_tests::eventually(WAIT, backends, |b| *b == only_w1a)?;
    assert_eq!(after, only_w1a, "{}", w1.log());
    for _ in 0..6 {
        assert_eq!(
            c.get(&format!("http://{VIP_EXTERNAL}/"), None)?.backend,
            "envoy-w1a"
        );
    }

    // A file that does not parse is refused and the running state keeps serving.
    std::fs::write(
        &c.config,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, ports: [{port: ninety}]}\n",
    )?;
    w1.reload()?;
    let log = gateway_tests::eventually(WAIT, || Ok(w1.log()), |l| l.contains("reload of"))?;
    assert!(log.contains("still serving the previous state"), "{log}");
    assert!(
        log.contains("Service/default/x: spec.ports[0].port"),
        "names object and field: {log}"
    );
    assert_eq!(backends()?, only_w1a);
    assert_eq!(
        c.get(&format!("http://{VIP_EXTERNAL}/"), None)?.backend,
        "envoy-w1a"
    );
    Ok(())
}

/// The client's neighbour entry for `addr` (its MAC), if any.
fn client_neighbour(lab: &Lab, addr: Ipv4Addr) -> Result<Option<String>> {
    let out =
        lab.client()
            .ns()
            .ip(&["neigh", "show", &addr.to_string(), "dev", lab::CLIENT_IFACE])?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_owned))
}

#[test]
fn a_node_that_starts_announcing_sends_gratuitous_arp_and_clients_move_at_once() -> Result<()> {
    let mut c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gwk")), &[])?;
    // The client still believes another machine has the VIP (a stale cache entry, as after
    // a failover); it would not ask again for minutes.
    let stale = "02:00:00:00:00:99";
    c.lab.client().ns().ip(&[
        "neigh",
        "replace",
        &VIP_EXTERNAL.to_string(),
        "lladdr",
        stale,
        "dev",
        lab::CLIENT_IFACE,
        "nud",
        "stale",
    ])?;
    c.start("w1")?;
    let w1_mac = c.lab.node("w1").mac().to_owned();
    let neighbour = gateway_tests::eventually(
        WAIT,
        || client_neighbour(&c.lab, VIP_EXTERNAL),
        |mac| mac.as_deref() == Some(w1_mac.as_str()),
    )?;
    assert_eq!(
        neighbour.as_deref(),
        Some(w1_mac.as_str()),
        "the client's cache still says {neighbour:?}"
    );
    // Counted per announcement: both forms, for a few rounds.
    std::thread::sleep(Duration::from_millis(2500));
    let l2 = c.agent("w1").json(&["l2", "list"])?;
    for entry in l2.as_array().unwrap() {
        assert_eq!(
            entry["garp_sent"].as_u64(),
            Some(6),
            "3 rounds of request + reply: {l2:#}"
        );
    }
    Ok(())
}

#[test]
fn a_changed_file_is_applied_without_a_signal_and_status_shows_a_refused_one() -> Result<()> {
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwl"));
    let c = Cluster::up(spec.clone(), &["w1"])?;
    let w1 = c.agent("w1");
    let lb_backends = || Ok(w1.backends(&frontend_external())?.len());
    assert_eq!(lb_backends()?, 2);
    // An editor-style replace: write elsewhere, rename over the file.
    spec.pod_mut("envoy-w1b").ready = false;
    let tmp = c.config.with_extension("tmp");
    std::fs::write(&tmp, lab::config_yaml(&spec)?)?;
    std::fs::rename(&tmp, &c.config)?;
    let after = gateway_tests::eventually(WAIT, lb_backends, |n| *n == 1)?;
    assert_eq!(after, 1, "{}", w1.log());
    assert!(w1.log().contains("(file changed)"), "{}", w1.log());
    let status = w1.json(&["status"])?;
    assert_eq!(status["agent"]["reloads"], 1);
    assert!(status["agent"]["rejected"].is_null());

    // A broken file: refused, the state stays, and status says so with the reason.
    std::fs::write(
        &c.config,
        "kind: Service\napiVersion: v1\nmetadata: {name: broken}\nspec: {type: LoadBalancer, ports: [{port: seventy}]}\n",
    )?;
    let rejected = gateway_tests::eventually(WAIT, || w1.refused_reload(), |r| !r.is_null())?;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap_or("")
            .contains("Service/default/broken"),
        "{rejected:#}"
    );
    assert!(rejected["at_unix"].as_u64().unwrap() > 0);
    assert_eq!(lb_backends()?, 1, "still serving the state applied before");
    let text = w1.cli(&["status"])?;
    assert!(text.contains("LAST RELOAD REFUSED"), "{text}");
    c.get(&format!("http://{VIP_EXTERNAL}/"), None)?;
    Ok(())
}

#[test]
fn status_shows_packets_and_run_time_per_program_while_bpf_statistics_are_on() -> Result<()> {
    let c = Cluster::up(two_local_backends_spec(&lab::unique_prefix("gws")), &["w1"])?;
    let w1 = c.agent("w1");
    let ingress = |status: &serde_json::Value| {
        status["attachments"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["direction"] == "ingress"))
            .cloned()
            .unwrap_or_default()
    };
    // Statistics on for this process's lifetime only (an fd; closed however the test ends).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let before = ingress(&w1.json(&["status"])?)["packets"]
        .as_u64()
        .unwrap_or(0);
    for _ in 0..3 {
        c.get(&format!("http://{VIP_EXTERNAL}/"), None)?;
    }
    let status = w1.json(&["status"])?;
    let after = ingress(&status);
    assert_eq!(after["attached"], true, "{status:#}");
    // Three connections are at least 3 x (SYN, ACK, request, FIN) through ingress.
    let packets = after["packets"].as_u64().unwrap_or(0);
    assert!(packets >= before + 12, "{before} -> {packets}: {after:#}");
    let ns = after["ns_per_packet"].as_f64().unwrap_or(0.0);
    assert!(ns > 0.0 && ns < 100_000.0, "{after:#}");
    let text = w1.cli(&["status"])?;
    assert!(text.contains("NS/PACKET"), "{text}");
    // This kernel has BTF and bpf_cast_to_kern_ctx: the faster datapath is the one serving.
    assert_eq!(status["agent"]["checksums_in_place"], true, "{status:#}");
    assert!(text.contains("checksums updated in place"), "{text}");
    Ok(())
}

/// `gateway-agent doctor` on a node: its exit status and JSON findings.
fn doctor(c: &Cluster, node: &str, extra: &[&str]) -> Result<(i32, serde_json::Value)> {
    let n = c.lab.node(node);
    let mut cmd = n.ns().command([agent::binary()?.display().to_string()]);
    cmd.args(["doctor", "--output", "json", "--bpffs"])
        .arg(n.bpffs_dir())
        .args(extra);
    let out = cmd.output()?;
    let report = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "doctor output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), report))
}

fn findings<'a>(
    report: &'a serde_json::Value,
    check: &str,
    severity: &str,
) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check && f["severity"] == severity)
        .collect()
}

#[test]
fn doctor_walks_the_reference_tree_over_objects_and_datapath() -> Result<()> {
    let mut c = Cluster::up(
        LabSpec::reference(&lab::unique_prefix("gwm")),
        &["w1", "w2"],
    )?;
    // Healthy: Local, one policy, ClientIP, everything attached and announced where elected.
    let (code, report) = doctor(&c, "w1", &[])?;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        report["worst"], "info",
        "the other worker's VIP is reported, not faulted"
    );
    let here = c.agent("w1").announced()?;
    let announced = findings(&report, "announcement", "ok");
    assert_eq!(announced.len(), here.len(), "{report:#}");
    assert_eq!(
        findings(&report, "attachment", "ok").len(),
        2,
        "ens18 ingress and egress"
    );
    assert_eq!(findings(&report, "hairpin", "ok").len(), 1, "{report:#}");

    // The old, broken configuration of the reference: Cluster, two L2 policies, no affinity.
    let mut broken = c.lab.spec().clone();
    let svc = broken.service_mut("cilium-gateway-gateway-external");
    svc.external_traffic_policy = lab::TrafficPolicy::Cluster;
    svc.session_affinity = SessionAffinity::None;
    let mut second = broken.l2_policies[0].clone();
    second.name = "l2-announcement".into();
    broken.l2_policies.push(second);
    let file = c.lab.run_dir().join("broken.yaml");
    std::fs::write(&file, lab::config_yaml(&broken)?)?;
    // Warnings only: Cluster is served (hiding the client's address from backends on other
    // nodes), and no affinity; the agents, a cluster, keep the VIP with its announcer.
    let (code, report) = doctor(&c, "w1", &["--config", file.to_str().unwrap()])?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["worst"], "warning", "{report:#}");
    let cluster = findings(&report, "externalTrafficPolicy", "warning");
    assert_eq!(cluster.len(), 1);
    assert!(
        cluster[0]["subject"]
            .as_str()
            .unwrap()
            .contains("cilium-gateway-gateway-external")
    );
    assert!(cluster[0]["finding"].as_str().unwrap().contains("SNAT"));
    // Two policies are merged into one announcement: worth knowing, no longer a fault.
    let policies = findings(&report, "L2 policies", "info");
    assert_eq!(
        policies.len(),
        2,
        "both services are selected twice: {report:#}"
    );
    assert!(
        policies[0]["finding"]
            .as_str()
            .unwrap()
            .contains("l2-announcement, l2-policy): merged into one announcement")
    );
    assert_eq!(findings(&report, "sessionAffinity", "warning").len(), 1);

    // The agent gone: the datapath still serves, but the doctor says what is missing.
    c.agents.remove("w1").unwrap().kill()?;
    let (code, report) = doctor(&c, "w1", &[])?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(findings(&report, "agent", "warning").len(), 1);
    Ok(())
}

#[test]
fn objects_that_do_not_fit_the_maps_are_refused_and_the_previous_state_serves() -> Result<()> {
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwn"));
    let lab = Lab::up(spec.clone().with_teardown_agent(agent::binary()?))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    let bpffs = lab.bpffs_dir("w1").to_owned();
    // Room for 5 frontends: the reference's 4 fit.
    let w1 = Agent::launch(
        &lab,
        "w1",
        &config,
        &agent::binary()?,
        &bpffs,
        &["--services-max", "6"],
    )?;
    let mut extra = spec.service_mut("cilium-gateway-gateway-external").clone();
    extra.name = "one-too-many".into();
    extra.requested_ip = Some(SPARE_VIPS[1]);
    spec.services.push(extra);
    std::fs::write(&config, lab::config_yaml(&spec)?)?;
    w1.reload()?;
    let rejected = gateway_tests::eventually(WAIT, || w1.refused_reload(), |r| !r.is_null())?;
    let error = rejected["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("6 services needed but the datapath holds at most 5"),
        "{rejected:#}"
    );
    assert_eq!(
        w1.json(&["lb", "list"])?.as_array().unwrap().len(),
        4,
        "nothing of it was written"
    );
    let body = lab
        .client()
        .curl(&format!("http://{VIP_EXTERNAL}/"), None)?;
    assert!(body.starts_with("backend=envoy-w1"), "{body}");
    Ok(())
}

#[test]
fn an_agent_started_with_a_bad_file_exits_and_touches_nothing() -> Result<()> {
    let lab = Lab::up(LabSpec::reference(&lab::unique_prefix("gwo")))?;
    let config = agent::write_config(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, ports: [{port: 80, protocol: [SCTP]}]}\n",
    )?;
    let w1 = lab.node("w1");
    let mut cmd = w1.ns().command([agent::binary()?.display().to_string()]);
    cmd.args(["run", "--node-name", "w1", "--config"])
        .arg(&config)
        .arg("--bpffs")
        .arg(w1.bpffs_dir())
        .arg("--cgroup")
        .arg(w1.cgroup());
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Refused, as `check` says it: exit status 2.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Service/default/x: spec.ports[0].protocol"),
        "{stderr}"
    );
    assert!(!w1.bpffs_dir().exists(), "nothing pinned");
    let net = w1.ns().run(["bpftool", "net", "show", "dev", "ens18"])?;
    assert!(!net.contains("gw_"), "nothing attached: {net}");
    Ok(())
}

#[test]
fn a_local_endpoint_becoming_ready_starts_the_announcement_with_gratuitous_arp() -> Result<()> {
    // No ready pod anywhere for the external service: nobody announces .50.
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwp"));
    spec.pod_mut("envoy-w1a").ready = false;
    spec.pod_mut("envoy-w1b").ready = false;
    let c = Cluster::up(spec.clone(), &["w1"])?;
    let w1 = c.agent("w1");
    assert!(!w1.announced()?.contains(&VIP_EXTERNAL));
    assert!(c.lab.client().arping(VIP_EXTERNAL)?.is_empty());
    // envoy-w1a becomes ready: w1 is elected and says so at once.
    spec.pod_mut("envoy-w1a").ready = true;
    std::fs::write(&c.config, lab::config_yaml(&spec)?)?;
    w1.reload()?;
    let garp_sent = || -> Result<u64> {
        let l2 = w1.json(&["l2", "list"])?;
        Ok(l2
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["vip"] == VIP_EXTERNAL.to_string().as_str())
            .map(|a| a["garp_sent"].as_u64().unwrap())
            .sum())
    };
    let garp = gateway_tests::eventually(WAIT, garp_sent, |n| *n >= 2)?;
    assert!(garp >= 2, "gratuitous ARP for the new announcement: {garp}");
    assert_eq!(
        c.lab.client().arping(VIP_EXTERNAL)?,
        vec![c.lab.node("w1").mac().to_owned()]
    );
    Ok(())
}

/// The node that does not announce `vip`, of the two workers.
fn other_worker(announcer: &str) -> &'static str {
    if announcer == "w1" { "w2" } else { "w1" }
}

/// externalTrafficPolicy Cluster: a service whose only endpoint runs on the worker that
/// does not announce its VIP is served, through SNAT to the announcing node's address
/// (what the pod sees) and back; a connection lives on across reloads that add local
/// endpoints; ClientIP affinity holds per client; both agents run (the other node's
/// datapath leaves the SNATed traffic alone).
#[test]
fn a_cluster_service_is_served_through_an_endpoint_on_another_node() -> Result<()> {
    let vip = SPARE_VIPS[0];
    let mut spec = LabSpec::reference(&lab::unique_prefix("gwcl")).with_client_addr(CLIENT_2);
    let mut service = ServiceSpec::gateway("gateway-cluster", vip, &[]);
    service.external_traffic_policy = lab::TrafficPolicy::Cluster;
    spec.services.push(service);
    let mut c = Cluster::up(spec.clone(), &["w1", "w2"])?;
    // Announced without any endpoint: any node the policy selects may.
    let announcer = c.announcer(vip)?;
    let other = other_worker(&announcer);
    let remote_pod = c.pods_of(other).into_iter().next().context("a pod")?;
    spec.service_mut("cilium-gateway-gateway-cluster").backends = vec![remote_pod.clone()];
    std::fs::write(&c.config, lab::config_yaml(&spec)?)?;
    for node in ["w1", "w2"] {
        c.agent(node).reload()?;
    }
    let frontend = format!("{vip}:80/TCP");
    let remote = format!("{}:{HTTP_PORT}", c.lab.pod(&remote_pod).addr());
    let programmed = gateway_tests::eventually(
        WAIT,
        || c.agent(&announcer).backends(&frontend),
        |b| b.contains(&remote),
    )?;
    assert_eq!(programmed, BTreeSet::from([remote.clone()]));

    let url = format!("http://{vip}/");
    let answer = c.get(&url, None)?;
    assert_eq!(answer.backend, remote_pod);
    assert_eq!(
        answer.client.ip(),
        std::net::IpAddr::V4(c.lab.node(&announcer).addr()),
        "the pod sees the announcing node's address"
    );
    let flows = c.agent(&announcer).json(&["ct", "list"])?;
    let snat = format!("{}:{}", c.lab.node(&announcer).addr(), answer.client.port());
    assert!(
        flows
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["snat"] == snat.as_str() && f["backend"] == remote.as_str()),
        "{flows:#}"
    );
    assert!(c.agent(&announcer).counter("snat_created")? >= 1);

    // A long-lived connection, then reloads that add the announcing node's own pods.
    let mut conn = c
        .lab
        .client()
        .ns()
        .connect_tcp(SocketAddr::from((vip, 80)), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    assert_eq!(request(&mut conn, vip)?.backend, remote_pod);
    let mut backends = vec![remote_pod.clone()];
    backends.extend(c.pods_of(&announcer));
    spec.service_mut("cilium-gateway-gateway-cluster").backends = backends.clone();
    std::fs::write(&c.config, lab::config_yaml(&spec)?)?;
    for node in ["w1", "w2"] {
        c.agent(node).reload()?;
    }
    let all = gateway_tests::eventually(
        WAIT,
        || c.agent(&announcer).backends(&frontend),
        |b| b.len() == backends.len(),
    )?;
    assert_eq!(all.len(), backends.len(), "{all:?}");
    for _ in 0..3 {
        assert_eq!(
            request(&mut conn, vip)?.backend,
            remote_pod,
            "same connection"
        );
    }

    // Affinity: each client stays with one backend; a local one sees the client itself.
    for source in [CLIENT, CLIENT_2] {
        let answers: Vec<Answer> = (0..10)
            .map(|_| c.get(&url, Some(source)))
            .collect::<Result<_>>()?;
        let seen: BTreeSet<&str> = answers.iter().map(|a| a.backend.as_str()).collect();
        assert_eq!(seen.len(), 1, "{source}: {seen:?}");
        let expected = if c.pods_of(&announcer).contains(&answers[0].backend) {
            source
        } else {
            c.lab.node(&announcer).addr()
        };
        assert_eq!(answers[0].client.ip(), std::net::IpAddr::V4(expected));
    }

    // The agent restarted: the SNATed connection goes on.
    c.agents.remove(&announcer).unwrap().stop();
    c.start(&announcer)?;
    assert_eq!(request(&mut conn, vip)?.backend, remote_pod);
    assert!(
        !c.agent(&announcer).log().contains("SNATed flows adopted"),
        "a restart of the same version has every port's slot"
    );

    // Upgraded from a version that kept SNAT ports in gw_ct_reply: it left no
    // gw_snat_ports. The new agent gives the flows it adopts their ports' slots before its
    // programs, which find replies by them, take over: the connection goes on.
    c.agents.remove(&announcer).unwrap().stop();
    std::fs::remove_file(c.lab.bpffs_dir(&announcer).join("gw_snat_ports"))?;
    c.start(&announcer)?;
    assert_eq!(
        request(&mut conn, vip)?.backend,
        remote_pod,
        "after the upgrade"
    );
    let log = c.agent(&announcer).log();
    assert!(
        log.contains("SNATed flows adopted from an earlier version"),
        "{log}"
    );
    assert_eq!(
        c.agent(other).counter("rev_nat")?,
        0,
        "the other node rewrote nothing"
    );
    Ok(())
}

/// A rollout drains instead of cutting (KEP-1669): a pod that starts terminating keeps its
/// connections and takes no new ones while another pod is ready; with every local pod
/// terminating, those still serving take new connections and the node keeps the VIP; a
/// pod that leaves the EndpointSlice ends its connections.
#[test]
fn terminating_endpoints_drain_their_connections_during_a_rollout() -> Result<()> {
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwt"));
    let c = Cluster::up(spec.clone(), &["w1"])?;
    let w1 = c.agent("w1");
    let url = format!("http://{VIP_EXTERNAL}/");
    let mut conn = c
        .lab
        .client()
        .ns()
        .connect_tcp(SocketAddr::from((VIP_EXTERNAL, 80)), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let leaving = request(&mut conn, VIP_EXTERNAL)?.backend;
    let staying = c
        .pods_of("w1")
        .into_iter()
        .find(|p| *p != leaving)
        .context("the other pod")?;
    let apply = |spec: &LabSpec, wanted: usize| -> Result<()> {
        std::fs::write(&c.config, lab::config_yaml(spec)?)?;
        w1.reload()?;
        let taking = gateway_tests::eventually(
            WAIT,
            || w1.backends(&frontend_external()),
            |b| b.len() == wanted,
        )?;
        ensure!(taking.len() == wanted, "{taking:?}: {}", w1.log());
        Ok(())
    };

    spec.pod_mut(&leaving).terminating = true;
    apply(&spec, 1)?;
    for _ in 0..3 {
        assert_eq!(request(&mut conn, VIP_EXTERNAL)?.backend, leaving, "drains");
    }
    for _ in 0..8 {
        assert_eq!(
            c.get(&url, None)?.backend,
            staying,
            "no new connection to it"
        );
    }
    let lb = w1.json(&["lb", "list"])?;
    let external = lb
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frontend"] == frontend_external().as_str())
        .unwrap();
    assert_eq!(external["draining"].as_array().unwrap().len(), 1, "{lb:#}");

    // Every local pod terminating, both still serving: they take new connections, and w1
    // keeps announcing (its connections would break on another node).
    spec.pod_mut(&staying).terminating = true;
    apply(&spec, 2)?;
    let seen: BTreeSet<String> = (0..16)
        .map(|_| c.get(&url, None).map(|a| a.backend))
        .collect::<Result<_>>()?;
    assert_eq!(seen, BTreeSet::from([leaving.clone(), staying.clone()]));
    assert!(w1.announced()?.contains(&VIP_EXTERNAL));
    assert_eq!(request(&mut conn, VIP_EXTERNAL)?.backend, leaving);

    // The pod is gone from the slice: its connection ends, new ones go to the other.
    spec.service_mut("cilium-gateway-gateway-external")
        .backends
        .retain(|p| *p != leaving);
    apply(&spec, 1)?;
    assert!(
        request(&mut conn, VIP_EXTERNAL).is_err(),
        "cut once it is gone"
    );
    assert!(w1.counter("drop_backend_gone")? >= 1);
    assert_eq!(c.get(&url, None)?.backend, staying);
    Ok(())
}

/// `loadBalancerSourceRanges`: a client inside the service's ranges is served, another is
/// dropped (and counted); a reload swapping the ranges swaps who is served, and cuts the
/// open connection of the client it leaves out; `lb list` shows the ranges.
#[test]
fn source_ranges_serve_the_clients_they_admit_and_drop_the_others() -> Result<()> {
    let mut spec = two_local_backends_spec(&lab::unique_prefix("gwr"));
    let name = "cilium-gateway-gateway-external";
    spec.service_mut(name).source_ranges = vec![format!("{CLIENT}/32")];
    let c = Cluster::up(spec.clone(), &["w1"])?;
    let w1 = c.agent("w1");
    let url = format!("http://{VIP_EXTERNAL}/");
    assert_eq!(
        c.get(&url, Some(CLIENT))?.client.ip(),
        std::net::IpAddr::V4(CLIENT)
    );
    assert!(c.get(&url, Some(CLIENT_2)).is_err(), "outside the ranges");
    assert!(w1.counter("drop_source_range")? >= 1);
    let lb = w1.json(&["lb", "list"])?;
    let external = lb
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frontend"] == frontend_external().as_str())
        .unwrap();
    assert_eq!(
        external["source_ranges"],
        serde_json::json!([format!("{CLIENT}/32")])
    );
    assert!(
        external["denied_packets"].as_u64().unwrap() >= 1,
        "{external:#}"
    );
    // The other service of the node is open to both.
    c.get(&format!("http://{VIP_INTERNAL}/"), Some(CLIENT_2))?;

    let mut conn = c
        .lab
        .client()
        .ns()
        .connect_tcp(SocketAddr::from((VIP_EXTERNAL, 80)), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    request(&mut conn, VIP_EXTERNAL)?;
    spec.service_mut(name).source_ranges = vec![format!("{CLIENT_2}/32")];
    std::fs::write(&c.config, lab::config_yaml(&spec)?)?;
    w1.reload()?;
    gateway_tests::eventually(
        WAIT,
        || c.get(&url, Some(CLIENT_2)).map(|_| true).or(Ok(false)),
        |served| *served,
    )?;
    assert!(c.get(&url, Some(CLIENT)).is_err());
    assert!(
        request(&mut conn, VIP_EXTERNAL).is_err(),
        "the open connection is cut"
    );
    Ok(())
}
