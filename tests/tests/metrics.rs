//! `run --metrics-address` scraped by a real Prometheus (Debian's `prometheus`): the agent
//! on a lab node, Prometheus in the client's namespace scraping it across the segment, and
//! the values that real traffic, a dropped packet and a refused reload moved, read back
//! through Prometheus' HTTP API. Needs root; everything stays in the lab's namespaces and
//! goes (Prometheus and its directory included) also when the test fails.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{self, Lab, LabSpec, VIP_EXTERNAL, VIP_INTERNAL};
use gateway_tests::prometheus::{Prometheus, SCRAPE_INTERVAL};

const METRICS_PORT: u16 = 9655;
const EXTERNAL: &str = "gateway/cilium-gateway-gateway-external";
const INTERNAL: &str = "gateway/cilium-gateway-gateway-internal";
/// A scrape or two, and the agent's reaction to a signal.
const WAIT: Duration = Duration::from_secs(15);

/// `promtool check metrics`: the exposition parses, and its names, units and HELP lines
/// follow Prometheus' conventions (it lists what does not).
fn promtool_check(exposition: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("promtool's stdin")?,
        exposition.as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn prometheus_scrapes_what_traffic_drops_and_a_refused_reload_moved() -> Result<()> {
    // w2's only pod is not ready: w1 is elected for both VIPs.
    let mut spec = LabSpec::reference(&lab::unique_prefix("gwq"));
    spec.pod_mut("envoy-w2a").ready = false;
    let lab = Lab::up(spec.with_teardown_agent(agent::binary()?))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    let w1 = lab.node("w1");
    let endpoint = SocketAddr::from((w1.addr(), METRICS_PORT));
    let address = endpoint.to_string();
    let mut agent = Agent::launch(
        &lab,
        "w1",
        &config,
        &agent::binary()?,
        w1.bpffs_dir(),
        &["--metrics-address", &address],
    )?;
    let client = lab.client();

    // The endpoint itself, from the client across the segment.
    let exposition = client.curl(&format!("http://{endpoint}/metrics"), None)?;
    promtool_check(&exposition)?;
    let elsewhere = client.ns().exec([
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{endpoint}/"),
    ])?;
    assert_eq!(String::from_utf8_lossy(&elsewhere.stdout), "404");

    let dir = std::env::temp_dir().join(format!("gateway-prometheus-{}", lab.prefix()));
    let prometheus = Prometheus::start(
        client.ns(),
        "127.0.0.1:9090".parse()?,
        "gateway",
        &[endpoint],
        &dir,
    )?;
    // Run-time statistics on for this test's lifetime (an fd, closed however it ends).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;

    // Three requests through the external VIP, one packet to a port the internal VIP does
    // not serve, and a file that does not validate.
    for _ in 0..3 {
        client.curl(&format!("http://{VIP_EXTERNAL}/"), None)?;
    }
    let refused = client.ns().exec([
        "curl",
        "-sS",
        "--connect-timeout",
        "1",
        &format!("http://{VIP_INTERNAL}:8080/"),
    ])?;
    assert!(
        !refused.status.success(),
        "nothing serves {VIP_INTERNAL}:8080"
    );
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, ports: [{port: ninety}]}\n",
    )?;
    // The agent notices the edit by itself (a SIGHUP on top would be a second refusal).
    agent.wait_for_log("reload of", WAIT)?;

    // Once a scrape shows the refusal, it shows everything that happened before it.
    let reloads = |result: &str| format!("gateway_reloads_total{{result=\"{result}\"}}");
    let seen = gateway_tests::eventually(
        WAIT,
        || prometheus.value(&reloads("refused")),
        |v| *v == Some(1.0),
    )?;
    assert_eq!(
        seen,
        Some(1.0),
        "after {WAIT:?} at a {SCRAPE_INTERVAL:?} interval; prometheus log:\n{}",
        prometheus.log()
    );
    let value = |promql: &str| -> Result<f64> {
        prometheus
            .value(promql)?
            .with_context(|| format!("no series for {promql}"))
    };
    assert_eq!(value("up{job=\"gateway\"}")?, 1.0);
    assert_eq!(value(&reloads("applied"))?, 0.0);
    assert_eq!(
        value("gateway_reload_duration_seconds_count{result=\"refused\"}")?,
        1.0
    );
    assert_eq!(value("gateway_config_last_reload_successful")?, 0.0);

    // Per service: the external one carried three connections (at least SYN, ACK, request
    // and FIN each), and the internal one nothing.
    let traffic = |metric: &str, service: &str, direction: &str| {
        value(&format!(
            "sum({metric}{{service=\"{service}\",direction=\"{direction}\"}})"
        ))
    };
    let packets = traffic("gateway_service_packets_total", EXTERNAL, "request")?;
    assert!(packets >= 12.0, "{packets}");
    assert!(traffic("gateway_service_packets_total", EXTERNAL, "reply")? >= 9.0);
    assert!(traffic("gateway_service_bytes_total", EXTERNAL, "request")? >= packets * 40.0);
    assert_eq!(
        traffic("gateway_service_packets_total", INTERNAL, "request")?,
        0.0
    );
    let frontends = prometheus.query(&format!(
        "gateway_service_packets_total{{service=\"{EXTERNAL}\",direction=\"request\"}} > 0"
    ))?;
    assert_eq!(frontends.len(), 1, "{frontends:?}");
    assert_eq!(frontends[0].0["frontend"], format!("{VIP_EXTERNAL}:80/TCP"));
    assert_eq!(frontends[0].0["port"], "http");
    // Every balanced packet counts once for its frontend and once for its backend.
    assert_eq!(
        value("sum(gateway_backend_packets_total{direction=\"request\"})")?,
        value("sum(gateway_service_packets_total{direction=\"request\"})")?,
    );

    assert!(value("gateway_drops_total{reason=\"drop_unknown_port\"}")? >= 1.0);
    assert_eq!(
        value("gateway_drops_total{reason=\"drop_no_backend\"}")?,
        0.0
    );
    assert!(value("gateway_flows_created_total")? >= 3.0);
    assert!(value("gateway_conntrack_entries")? >= 3.0);
    assert_eq!(value("gateway_conntrack_entries_limit")?, 262_144.0);
    assert_eq!(value("gateway_conntrack_evictions_total")?, 0.0);
    // The external gateway keeps ClientIP affinity: the client's entry, created once (its
    // later connections are hits), nothing removed or evicted.
    assert_eq!(value("gateway_affinity_entries")?, 1.0);
    assert_eq!(value("gateway_affinity_created_total")?, 1.0);
    assert_eq!(value("gateway_affinity_hits_total")?, 2.0);
    assert_eq!(value("gateway_affinity_removed_total")?, 0.0);
    assert_eq!(value("gateway_affinity_evictions_total")?, 0.0);

    // Both VIPs announced on ens18 at start, answered and made known by gratuitous ARP.
    assert_eq!(value("gateway_announcements")?, 2.0);
    assert_eq!(value("gateway_announcements_gained_total")?, 2.0);
    assert_eq!(value("gateway_announcements_lost_total")?, 0.0);
    assert!(
        value(&format!(
            "gateway_arp_replies_total{{interface=\"ens18\",vip=\"{VIP_EXTERNAL}\"}}"
        ))? >= 1.0
    );
    assert!(value("sum(gateway_gratuitous_arp_sent_total)")? >= 4.0);

    // The kernel's statistics of the ingress program, with statistics on.
    let ingress = "{interface=\"ens18\",direction=\"ingress\"}";
    assert_eq!(value(&format!("gateway_program_attached{ingress}"))?, 1.0);
    assert!(value(&format!("gateway_program_runs_total{ingress}"))? >= 12.0);
    assert!(value(&format!("gateway_program_run_seconds_total{ingress}"))? > 0.0);

    // Prometheus read the HELP and TYPE lines.
    let metadata = prometheus.api("metadata", &[("metric", "gateway_drops_total")])?;
    let drops = &metadata["gateway_drops_total"][0];
    assert_eq!(drops["type"], "counter", "{metadata}");
    assert!(
        drops["help"].as_str().unwrap_or("").contains("dropped"),
        "{metadata}"
    );
    drop(prometheus);
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}
