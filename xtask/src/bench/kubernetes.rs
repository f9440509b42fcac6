//! The agent reading a real cluster (etcd and kube-apiserver from `$KUBEBUILDER_ASSETS`, on
//! the lab's segment): a cold start over many services, a Service applied with kubectl until
//! it is served, an endpoint becoming ready and going away until the maps have it, and what
//! the API server sees of the agent while nothing changes (watches, not lists; lease
//! renewals). Without `KUBEBUILDER_ASSETS` the part says so and measures nothing.
//!
//! The requests are counted from the API server's audit log, by who made them: its request
//! metrics count every client, and the server itself lists every Service every 3 minutes
//! (kube-apiserver's NodePort repair loop, `pkg/registry/core/service/portallocator/
//! controller/repair.go`, run every `repairLoopInterval` of `pkg/controlplane/instance.go`),
//! which a 30 s window catches one time in six.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gateway_tests::agent::{self, Agent};
use gateway_tests::kube_api::{AGENT_ACCOUNT, AGENT_NAMESPACE, Audited, KubeApi};
use gateway_tests::lab::{Lab, SPARE_VIPS};
use serde::Serialize;
use serde_json::{Value, json};

use super::e2e::NODE;
use super::objects::filler_vip;
use super::{control, e2e};

/// The namespace of the services the bench adds.
const NAMESPACE: &str = "bench";
/// The pod behind the measured service.
const POD: &str = "envoy-w1a";
/// kubectl create runs this many at once over the filler objects.
const CREATE_PARALLEL: usize = 4;
/// Cold starts measured.
const STARTS: usize = 3;
/// A probe request that has not connected by then failed: the endpoint is gone.
const PROBE_TIMEOUT: &str = "0.2";
/// After creating the filler objects, the API server settles (its caches, etcd) before the
/// agent starts: the start is measured against a server at rest.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a measured change may take before the bench gives up on it (the status of
/// 10,000 Services at a cold start takes a while).
const GIVE_UP: Duration = Duration::from_secs(600);
/// The Lease holder renews at most this often.
const RENEWAL_PERIOD_S: f64 = 2.0;

#[derive(Clone, Debug, Serialize)]
pub struct Kubernetes {
    pub services: usize,
    pub backends_per_service: usize,
    /// Agent start to serving every service, as the agent logs it (list included): the
    /// median of [`STARTS`] cold starts (the datapath removed in between).
    pub program_ms: f64,
    pub program_runs_ms: Vec<f64>,
    /// Agent start to every service's VIP written to its status (one writer, a fresh
    /// cluster where no Service has a status yet).
    pub statuses_written_ms: f64,
    /// The same from outside: spawn to the log line (median).
    pub program_wall_ms: f64,
    /// The highest peak RSS of those starts.
    pub peak_rss_mib: f64,
    /// A Service (and its EndpointSlice) applied with kubectl: from starting kubectl to the
    /// VIP announced in the node's maps, to a request answered by the pod (the client's ARP
    /// request answered first), to the VIP in the Service's status.
    pub apply_kubectl_ms: f64,
    pub apply_announced_ms: f64,
    pub apply_served_ms: f64,
    pub apply_status_ms: f64,
    /// The applied Service's one endpoint (the pod) going away, then becoming ready again:
    /// from starting kubectl to the first request that fails (within [`PROBE_TIMEOUT`]), then
    /// to the first one the pod answers.
    pub endpoint_gone_ms: f64,
    pub endpoint_ready_ms: f64,
    /// What the API server's audit log shows while nothing changed, over this window.
    pub idle_window_s: f64,
    /// LISTs by the agent in the window (its watches' own requests are WATCHes).
    pub idle_lists: u64,
    /// WATCH requests by the agent in the window (a watch is reopened every minute per
    /// resource).
    pub idle_watches: u64,
    /// Writes (renewals) of the status Lease by the agent in the window.
    pub idle_lease_writes: u64,
    /// The shortest time between two of them.
    pub idle_lease_min_gap_s: Option<f64>,
    /// Every request in the window, as `WHO VERB resource[/subresource]` (WHO: `agent`, or
    /// the user: `system:apiserver` is the API server's own loopback client).
    pub idle_requests: BTreeMap<String, u64>,
    /// Every LIST over the whole run, by the same key: the agent's are its starts' lists.
    pub run_lists: BTreeMap<String, u64>,
}

/// The sizes the part runs at.
pub struct Settings {
    pub services: usize,
    pub per_service: usize,
    pub idle: Duration,
}

/// Filler service `i` and its EndpointSlice, as the API server takes them: no node ports
/// (10,000 LoadBalancer services would exhaust them), `per_service` ready endpoints on
/// `NODE` that nothing answers.
fn filler(i: usize, per_service: usize) -> [Value; 2] {
    let name = format!("bench-{i}");
    let endpoints: Vec<Value> = (0..per_service)
        .map(|k| {
            let n = (i * per_service + k) as u32 + 1;
            let addr = Ipv4Addr::new(10, 128 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
            json!({"addresses": [addr.to_string()], "nodeName": NODE, "conditions": {"ready": true}})
        })
        .collect();
    [service(&name, filler_vip(i)), slice(&name, endpoints)]
}

fn service(name: &str, vip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "annotations": {"lbipam.cilium.io/ips": vip.to_string()}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "allocateLoadBalancerNodePorts": false,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    })
}

fn slice(service: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn endpoint(addr: Ipv4Addr, ready: bool) -> Value {
    json!({"addresses": [addr.to_string()], "nodeName": NODE, "conditions": {"ready": ready}})
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Creates the filler objects, several kubectl at once.
fn create_fillers(api: &KubeApi, services: usize, per_service: usize) -> Result<()> {
    let chunk = services.div_ceil(CREATE_PARALLEL).max(1);
    let files: Vec<_> = (0..services)
        .step_by(chunk)
        .enumerate()
        .map(|(n, start)| {
            let items = (start..(start + chunk).min(services))
                .flat_map(|i| filler(i, per_service))
                .collect();
            let path = api.dir().join(format!("fillers-{n}.json"));
            std::fs::write(&path, list(items)).map(|()| path)
        })
        .collect::<std::io::Result<_>>()?;
    thread::scope(|s| {
        let runs: Vec<_> = files
            .iter()
            .map(|path| {
                s.spawn(move || {
                    let path = path.display().to_string();
                    api.kubectl(&["create", "-f", &path, "-o", "name"])
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .map_err(|_| anyhow::anyhow!("kubectl thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(())
}

/// The agent's requests, as the audit log names its user.
fn is_agent(request: &Audited) -> bool {
    request.user == format!("system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_ACCOUNT}")
}

/// `WHO VERB resource[/subresource]` of `request` (the URL for a non-resource request).
fn request_key(request: &Audited) -> String {
    let who = if is_agent(request) {
        "agent"
    } else {
        request.user.as_str()
    };
    let what = match (request.resource.as_str(), request.subresource.as_str()) {
        ("", _) => request.uri.clone(),
        (resource, "") => resource.to_owned(),
        (resource, sub) => format!("{resource}/{sub}"),
    };
    format!("{who} {} {what}", request.verb.to_uppercase())
}

/// How many of `requests` there are of each [`request_key`].
fn counted<'a>(requests: impl Iterator<Item = &'a Audited>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for request in requests {
        *counts.entry(request_key(request)).or_default() += 1;
    }
    counts
}

/// The shortest time between two of `times` (sorted), if there are two.
fn shortest_gap(times: &[f64]) -> Option<f64> {
    times.windows(2).map(|w| w[1] - w[0]).reduce(f64::min)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// How many statuses the agent says it wrote (`wrote the status of N objects`).
fn written_statuses(log: &str) -> usize {
    log.lines()
        .filter_map(|line| {
            line.split_once("wrote the status of ")?
                .1
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Polls `done` until it holds; the milliseconds since `since`.
fn until(since: Instant, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<f64> {
    loop {
        if done()? {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        if since.elapsed() > GIVE_UP {
            bail!("{what}: not within {GIVE_UP:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(assets: &Path, binary: &Path, settings: &Settings) -> Result<Kubernetes> {
    let lab = Lab::up(e2e::spec(binary))?;
    let api = KubeApi::in_lab(assets, &lab)?;
    api.apply_lab(lab.spec())?;
    api.ensure_namespace(NAMESPACE)?;
    api.apply(
        "apiVersion: cilium.io/v2\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: bench-pool\n\
         spec:\n  blocks:\n  - cidr: 10.96.0.0/16\n",
        &[],
    )?;
    eprintln!(
        "kubernetes: creating {} services x {} endpoints",
        settings.services, settings.per_service
    );
    create_fillers(&api, settings.services, settings.per_service)?;

    thread::sleep(SETTLE);

    let bpffs = lab.run_dir().join("bpffs").join("kubernetes");
    // As deployed: the DaemonSet's namespace (where the Lease goes) and account.
    let kubeconfig = api.agent_kubeconfig()?.display().to_string();
    let start = || {
        Agent::launch_reading(
            &lab,
            NODE,
            &["--kubeconfig", &kubeconfig],
            binary,
            &bpffs,
            &["--backends-max", "131072"],
        )
    };
    let (mut program_runs_ms, mut wall_runs_ms, mut peak_rss_mib) = (Vec::new(), Vec::new(), 0f64);
    let mut statuses_written_ms = 0.0;
    let mut agent = None;
    for run in 0..STARTS {
        let started = Instant::now();
        let mut started_agent = start()?;
        wall_runs_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let serving = started_agent.wait_for_log("serving after", Duration::from_secs(1))?;
        program_runs_ms.push(control::logged_ms(&serving, "serving after ")?);
        peak_rss_mib = peak_rss_mib.max(control::peak_rss_mib(started_agent.pid())?);
        if run == 0 {
            // The first start finds no status on any Service: it writes them all.
            statuses_written_ms = until(started, "every Service's status written", || {
                Ok(written_statuses(&started_agent.log()) >= settings.services)
            })?;
        }
        if run + 1 == STARTS {
            agent = Some(started_agent);
        } else {
            started_agent.stop();
            agent::cli(binary, lab.node(NODE).ns().name(), &bpffs, &["teardown"])?;
        }
    }
    let mut agent = agent.context("no agent started")?;
    let program_ms = super::median(&program_runs_ms);
    let program_wall_ms = super::median(&wall_runs_ms);

    // Nothing changes for a while: what does the API server see of the agent?
    let idle_from = unix_now();
    thread::sleep(settings.idle);
    let idle_to = unix_now();
    let audited = api.audited()?;
    let idle: Vec<&Audited> = audited
        .iter()
        .filter(|r| (idle_from..idle_to).contains(&r.received_unix))
        .collect();
    let by_agent = |verb: &str| {
        idle.iter()
            .filter(|r| is_agent(r) && r.verb == verb)
            .count() as u64
    };
    let mut renewals: Vec<f64> = idle
        .iter()
        .filter(|r| is_agent(r) && r.verb == "update" && r.resource == "leases")
        .map(|r| r.received_unix)
        .collect();
    renewals.sort_by(f64::total_cmp);
    let idle_lists = by_agent("list");
    let idle_watches = by_agent("watch");
    let idle_requests = counted(idle.iter().copied());
    let run_lists = counted(audited.iter().filter(|r| r.verb == "list"));

    // One more Service with its endpoints, applied as an operator does.
    let name = "bench-applied";
    // The first spare VIP is the bench lab's Cluster service (on the other worker).
    let vip = SPARE_VIPS[1];
    let pod = lab.pod(POD).addr();
    let applied = |endpoints: Vec<Value>| list(vec![service(name, vip), slice(name, endpoints)]);
    let started = Instant::now();
    api.apply(&applied(vec![endpoint(pod, true)]), &[])?;
    let apply_kubectl_ms = started.elapsed().as_secs_f64() * 1000.0;
    let apply_announced_ms = until(started, "the applied VIP announced", || {
        Ok(agent.announced()?.contains(&vip))
    })?;
    let client = lab.client();
    // The client's kernel asks by ARP who has the VIP before the request goes out: an
    // answer from the pod means the ARP reply came too (arping itself lingers a second).
    let apply_served_ms = until(started, "the applied VIP served", || {
        Ok(client
            .curl(&format!("http://{vip}:80/"), None)
            .is_ok_and(|body| body.contains(&format!("backend={POD}"))))
    })?;

    let path = format!("/api/v1/namespaces/{NAMESPACE}/services/{name}");
    let apply_status_ms = until(started, "the applied VIP in the Service's status", || {
        let service: Value = serde_json::from_str(&api.get_raw(&path)?)?;
        Ok(service.pointer("/status/loadBalancer/ingress/0/ip") == Some(&json!(vip.to_string())))
    })?;

    // The pod stops being ready, then is ready again; requests tell when the maps changed.
    let answered = || {
        client
            .ns()
            .run([
                "curl",
                "-s",
                "--fail",
                "--connect-timeout",
                PROBE_TIMEOUT,
                "--max-time",
                "1",
                &format!("http://{vip}:80/"),
            ])
            .is_ok_and(|body| body.contains(&format!("backend={POD}")))
    };
    let started = Instant::now();
    api.apply(&applied(vec![endpoint(pod, false)]), &[])?;
    let endpoint_gone_ms = until(started, "the endpoint gone from the maps", || {
        Ok(!answered())
    })?;
    let started = Instant::now();
    api.apply(&applied(vec![endpoint(pod, true)]), &[])?;
    let endpoint_ready_ms = until(started, "the ready endpoint in the maps", || Ok(answered()))?;

    agent.wait_for_log("reloaded", Duration::from_secs(1))?;
    agent.stop();
    agent::cli(binary, lab.node(NODE).ns().name(), &bpffs, &["teardown"])?;
    drop(api);
    drop(lab);
    Ok(Kubernetes {
        services: settings.services,
        backends_per_service: settings.per_service,
        program_ms,
        program_runs_ms,
        statuses_written_ms,
        program_wall_ms,
        peak_rss_mib,
        apply_kubectl_ms,
        apply_announced_ms,
        apply_served_ms,
        apply_status_ms,
        endpoint_ready_ms,
        endpoint_gone_ms,
        idle_window_s: idle_to - idle_from,
        idle_lists,
        idle_watches,
        idle_lease_writes: renewals.len() as u64,
        idle_lease_min_gap_s: shortest_gap(&renewals),
        idle_requests,
        run_lists,
    })
}

/// The targets, on what was measured: (what, value, target, met).
pub fn checks(k: &Kubernetes) -> Vec<(String, String, String, bool)> {
    vec![
        (
            format!(
                "{} services x {} endpoints programmed from a cold start (agent's own figure, median of 3)",
                k.services, k.backends_per_service
            ),
            format!("{:.0} ms", k.program_ms),
            "< 3000 ms".into(),
            k.program_ms < 3000.0,
        ),
        (
            "peak RSS of that start".into(),
            format!("{:.1} MiB", k.peak_rss_mib),
            "< 150 MiB".into(),
            k.peak_rss_mib < 150.0,
        ),
        (
            "a Service applied with kubectl is served (ARP answered, request reaching the pod)"
                .into(),
            format!(
                "{:.0} ms (kubectl itself {:.0} ms)",
                k.apply_served_ms, k.apply_kubectl_ms
            ),
            "< 1000 ms".into(),
            k.apply_served_ms < 1000.0,
        ),
        (
            "... and its VIP in the Service's status (kubectl get svc shows it)".into(),
            format!("{:.0} ms", k.apply_status_ms),
            "< 1000 ms".into(),
            k.apply_status_ms < 1000.0,
        ),
        (
            "an endpoint becoming ready is in the maps (a request answered)".into(),
            format!("{:.0} ms", k.endpoint_ready_ms),
            "< 500 ms".into(),
            k.endpoint_ready_ms < 500.0,
        ),
        (
            format!(
                "an endpoint going away is out of the maps (a request refused, probes of {PROBE_TIMEOUT} s)"
            ),
            format!("{:.0} ms", k.endpoint_gone_ms),
            "< 500 ms".into(),
            k.endpoint_gone_ms < 500.0,
        ),
        (
            format!(
                "LIST requests by the agent while idle ({:.0} s)",
                k.idle_window_s
            ),
            k.idle_lists.to_string(),
            "0 (watches, not polling)".into(),
            k.idle_lists == 0,
        ),
        (
            format!(
                "Lease renewals by the agent while idle ({:.0} s, one agent; shortest gap {})",
                k.idle_window_s,
                k.idle_lease_min_gap_s
                    .map_or("-".into(), |gap| format!("{gap:.2} s"))
            ),
            k.idle_lease_writes.to_string(),
            format!(
                "1 to {:.0}, none closer than {RENEWAL_PERIOD_S:.0} s",
                (k.idle_window_s / RENEWAL_PERIOD_S).ceil()
            ),
            // At least one: a holder that stops renewing loses the Lease to another agent,
            // and a count that cannot see renewals must not pass. The audit log's times are
            // the server's clock in microseconds.
            k.idle_lease_writes >= 1
                && k.idle_lease_writes as f64 <= (k.idle_window_s / RENEWAL_PERIOD_S).ceil()
                && k.idle_lease_min_gap_s
                    .is_none_or(|gap| gap >= RENEWAL_PERIOD_S - 0.001),
        ),
    ]
}
