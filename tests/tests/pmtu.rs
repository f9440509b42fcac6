//! ICMP through a VIP as real networks need it, in the lab: a client on another network,
//! behind two routers whose transit link has a 1280-byte MTU while the client's own link
//! has 1500 (so its TCP announces an MSS of 1460), downloads 10 MiB from a backend through
//! the VIP. The backend sends 1500-byte packets; the router in front of the segment cannot
//! forward them and answers "fragmentation needed" to their source, the VIP. Only if the
//! announcing node translates that error to the backend (outer destination and quoted
//! source) does the backend lower its path MTU; without it the download stalls (the
//! backend retransmits the same too-big segments until curl gives up). Also: the router's
//! "time exceeded" about a VIP flow reaches the backend, and the VIP answers pings.
//! Needs root; every test builds its own lab and tears it down, also when it fails.

use std::fs;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{
    self, FAR_CLIENT, HTTP_PORT, Lab, LabSpec, POD_IFACE, ROUTER_ADDR, VIP_INTERNAL,
};
use gateway_tests::netns::Netns;
use gateway_tests::process::Process;

const TRANSIT_MTU: u32 = 1280;
const FILE_LEN: usize = 10 << 20;
/// The download takes well under a second when path-MTU discovery works; a stalled one
/// never completes.
const DOWNLOAD_TIMEOUT_SECS: u32 = 60;
const WAIT: Duration = Duration::from_secs(10);
/// The pods on w1, the only node running the agent: they serve the internal VIP from it.
const W1_PODS: [&str; 2] = ["envoy-w1a", "envoy-w1b"];

/// A lab with a routed client and the agent on w1, the only node with ready backends, which
/// then announces every VIP. The agent stops before the lab goes.
struct Setup {
    agent: Agent,
    lab: Lab,
}

impl Setup {
    fn up(base: &str) -> Result<Self> {
        let mut spec = LabSpec::reference(&lab::unique_prefix(base))
            .with_routed_client(TRANSIT_MTU)
            .with_teardown_agent(agent::binary()?);
        spec.pod_mut("envoy-w2a").ready = false;
        let lab = Lab::up(spec)?;
        let config = agent::write_config(&lab, &lab.config_yaml()?)?;
        let agent = Agent::start(&lab, "w1", &config)?;
        let deadline = Instant::now() + WAIT;
        while !agent.announced()?.contains(&VIP_INTERNAL) {
            ensure!(
                Instant::now() < deadline,
                "w1 never announced {VIP_INTERNAL}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Setup { agent, lab })
    }

    fn far_client(&self) -> &Netns {
        self.lab.far_client().expect("the spec has a routed client")
    }

    /// The path MTU the pod's kernel holds for the far client, if it learned one.
    fn learned_mtu(&self, pod: &str) -> Result<Option<u32>> {
        let route =
            self.lab
                .pod(pod)
                .ns()
                .run(["ip", "-4", "route", "get", &FAR_CLIENT.to_string()])?;
        // "10.99.0.10 via 10.244.1.1 dev eth0 src 10.244.1.10 uid 0 \    cache expires 587sec mtu 1280"
        let mut words = route.split_whitespace();
        Ok(words
            .by_ref()
            .find(|&w| w == "mtu")
            .and_then(|_| words.next())
            .map(str::parse)
            .transpose()?)
    }
}

/// 10 MiB that no compression or coincidence reproduces: SplitMix64's stream.
fn content() -> Vec<u8> {
    let mut state: u64 = 0x706d_7475;
    let mut out = Vec::with_capacity(FILE_LEN);
    while out.len() < FILE_LEN {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

#[test]
fn a_client_behind_a_smaller_mtu_downloads_10_mib_through_the_vip() -> Result<()> {
    let s = Setup::up("gwpm")?;
    let content = content();
    let file = s.lab.files_dir().join("big.bin");
    fs::write(&file, &content).with_context(|| format!("writing {}", file.display()))?;
    for pod in W1_PODS {
        assert_eq!(s.learned_mtu(pod)?, None, "{pod} knows no path MTU yet");
    }

    let got = s.lab.run_dir().join("downloaded.bin");
    let url = format!("http://{VIP_INTERNAL}/files/big.bin");
    s.far_client().run([
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        &DOWNLOAD_TIMEOUT_SECS.to_string(),
        "-o",
        got.to_str().context("download path")?,
        &url,
    ])?;
    let downloaded = fs::read(&got).with_context(|| format!("reading {}", got.display()))?;
    assert_eq!(downloaded.len(), FILE_LEN, "bytes downloaded");
    assert!(downloaded == content, "the download differs from the file");

    // The backend that served learned the transit link's MTU, from the router's error
    // translated to it: nothing else could have told it.
    let learned: Vec<(&str, Option<u32>)> = W1_PODS
        .iter()
        .map(|&pod| Ok((pod, s.learned_mtu(pod)?)))
        .collect::<Result<_>>()?;
    assert!(
        learned.iter().any(|&(_, mtu)| mtu == Some(TRANSIT_MTU)),
        "no backend learned a path MTU of {TRANSIT_MTU}: {learned:?}"
    );
    assert!(s.agent.counter("icmp_error_nat")? >= 1);
    assert_eq!(s.agent.counter("drop_icmp_error")?, 0);
    assert_eq!(s.agent.counter("drop_icmp")?, 0);

    // The VIP answers pings, from the far client and from the segment.
    s.far_client().run([
        "ping",
        "-n",
        "-c",
        "2",
        "-W",
        "2",
        &VIP_INTERNAL.to_string(),
    ])?;
    s.lab.client().ping(VIP_INTERNAL)?;
    assert!(s.agent.counter("icmp_echo_reply")? >= 3);
    Ok(())
}

/// tcpdump in `ns` until its first ICMP time exceeded, verbose (the quoted packet shown).
fn capture_time_exceeded(lab: &Lab, ns: &Netns, name: &str) -> Result<Process> {
    let mut tcpdump = lab.spawn(
        ns,
        name,
        [
            "tcpdump",
            "-i",
            POD_IFACE,
            "-n",
            "-v",
            "-l",
            "-c",
            "1",
            "icmp[0] == 11",
        ],
    )?;
    let deadline = Instant::now() + WAIT;
    while !tcpdump.log().contains("listening on") {
        tcpdump.ensure_running()?;
        ensure!(
            Instant::now() < deadline,
            "tcpdump in {} never listened",
            ns.name()
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(tcpdump)
}

#[test]
fn a_ttl_expired_from_the_router_about_a_vip_flow_reaches_the_backend() -> Result<()> {
    let s = Setup::up("gwttl")?;
    // The backends' packets get one hop past their node: the router cannot forward them.
    let mut captures = Vec::new();
    for pod in W1_PODS {
        let ns = s.lab.pod(pod).ns();
        ns.sysctl(&[("net.ipv4.ip_default_ttl", "2")])?;
        captures.push((
            pod,
            capture_time_exceeded(&s.lab, ns, &format!("tcpdump-{pod}"))?,
        ));
    }
    // The connection cannot complete (its SYN-ACK dies at the router); the error is what
    // this is about.
    let url = format!("http://{VIP_INTERNAL}/");
    let _ = s
        .far_client()
        .exec(["curl", "-sS", "--max-time", "3", &url])?;

    let deadline = Instant::now() + WAIT;
    let (pod, log) = loop {
        if let Some((pod, p)) = captures
            .iter()
            .find(|(_, p)| p.log().contains("time exceeded"))
        {
            break (*pod, p.log());
        }
        if Instant::now() > deadline {
            bail!("no backend saw a time exceeded");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let addr: Ipv4Addr = s.lab.pod(pod).addr();
    // From the router, to the backend, about the backend's own packet to the far client.
    assert!(
        log.contains(&format!(
            "{ROUTER_ADDR} > {addr}: ICMP time exceeded in-transit"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{addr}.{HTTP_PORT} > {FAR_CLIENT}.")),
        "the quoted packet is the backend's own: {log}"
    );
    assert!(s.agent.counter("icmp_error_nat")? >= 1);
    Ok(())
}
