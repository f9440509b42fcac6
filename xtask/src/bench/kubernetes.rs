//! The agent reading a real cluster (etcd and kube-apiserver from `$KUBEBUILDER_ASSETS`, on
//! the lab's segment): a cold start over many services, a Service applied with kubectl until
//! it is served, an endpoint becoming ready and going away until the maps have it, and what
//! the API server sees of the agent while nothing changes (watches, not lists; lease
//! renewals). Without `KUBEBUILDER_ASSETS` the part says so and measures nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gateway_tests::agent::{self, Agent};
use gateway_tests::kube_api::KubeApi;
use gateway_tests::lab::{Lab, SPARE_VIPS};
use serde::Serialize;
use serde_json::{Value, json};

use super::e2e::NODE;
use super::objects::filler_vip;
use super::{control, e2e};

/// The namespace of the services the bench adds.
const NAMESPACE: &str = "bench";
/// The pod behind the measured service, and an address no pod holds (an endpoint that only
/// needs to reach the maps).
const POD: &str = "envoy-w1a";
const EXTRA_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 99);
/// kubectl create runs this many at once over the filler objects.
const CREATE_PARALLEL: usize = 4;
/// How long a measured change may take before the bench gives up on it.
const GIVE_UP: Duration = Duration::from_secs(60);
/// The verbs the API server counts per resource, as `apiserver_request_total` names them.
const WATCHED: [&str; 5] = [
    "services",
    "endpointslices",
    "nodes",
    "ciliumloadbalancerippools",
    "ciliuml2announcementpolicies",
];

#[derive(Clone, Debug, Serialize)]
pub struct Kubernetes {
    pub services: usize,
    pub backends_per_service: usize,
    /// Agent start to serving every service, as the agent logs it (list included).
    pub program_ms: f64,
    /// The same from outside: spawn to the log line.
    pub program_wall_ms: f64,
    pub peak_rss_mib: f64,
    /// A Service (and its EndpointSlice) applied with kubectl: from starting kubectl to the
    /// VIP announced in the node's maps, to an ARP reply, to a request answered by the pod.
    pub apply_kubectl_ms: f64,
    pub apply_announced_ms: f64,
    pub apply_served_ms: f64,
    /// An endpoint becoming ready, then going away: from starting kubectl to the node's
    /// backends showing it.
    pub endpoint_ready_ms: f64,
    pub endpoint_gone_ms: f64,
    /// What the API server counted while nothing changed, over this window.
    pub idle_window_s: f64,
    /// LISTs of the watched resources in the window (the watches' own requests are WATCHes).
    pub idle_lists: u64,
    /// WATCH requests in the window (a watch is reopened every minute per resource).
    pub idle_watches: u64,
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

/// `apiserver_request_total` summed by (verb, resource) over the watched resources.
fn requests(api: &KubeApi) -> Result<BTreeMap<(String, String), u64>> {
    let metrics = api.kubectl(&["get", "--raw", "/metrics"])?;
    let mut counts = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_owned())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !WATCHED.contains(&resource.as_str())
            || label("subresource").is_some_and(|s| !s.is_empty())
        {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .context("a metric without a value")?;
        *counts.entry((verb, resource)).or_default() += value as u64;
    }
    Ok(counts)
}

fn delta(
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
    verb: &str,
) -> u64 {
    after
        .iter()
        .filter(|((v, _), _)| v == verb)
        .map(|(key, n)| n.saturating_sub(before.get(key).copied().unwrap_or(0)))
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

    let bpffs = lab.run_dir().join("bpffs").join("kubernetes");
    let kubeconfig = api.kubeconfig().display().to_string();
    let started = Instant::now();
    let mut agent = Agent::launch_reading(
        &lab,
        NODE,
        &["--kubeconfig", &kubeconfig],
        binary,
        &bpffs,
        &["--backends-max", "131072"],
    )?;
    let program_wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let serving = agent.wait_for_log("serving after", Duration::from_secs(1))?;
    let program_ms = control::logged_ms(&serving, "serving after ")?;
    let peak_rss_mib = control::peak_rss_mib(agent.pid())?;

    // Nothing changes for a while: what does the API server see of the agent?
    let before = requests(&api)?;
    let idle_started = Instant::now();
    thread::sleep(settings.idle);
    let after = requests(&api)?;
    let idle_window_s = idle_started.elapsed().as_secs_f64();

    // One more Service with its endpoints, applied as an operator does.
    let name = "bench-applied";
    let vip = SPARE_VIPS[0];
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

    let frontend = format!("{vip}:80/TCP");
    let extra = format!("{EXTRA_ENDPOINT}:8080");
    let started = Instant::now();
    api.apply(
        &applied(vec![endpoint(pod, true), endpoint(EXTRA_ENDPOINT, true)]),
        &[],
    )?;
    let endpoint_ready_ms = until(started, "the ready endpoint in the maps", || {
        Ok(agent.backends(&frontend)?.contains(&extra))
    })?;
    let started = Instant::now();
    api.apply(
        &applied(vec![endpoint(pod, true), endpoint(EXTRA_ENDPOINT, false)]),
        &[],
    )?;
    let endpoint_gone_ms = until(started, "the endpoint gone from the maps", || {
        Ok(!agent.backends(&frontend)?.contains(&extra))
    })?;

    agent.wait_for_log("reloaded", Duration::from_secs(1))?;
    agent.stop();
    agent::cli(binary, lab.node(NODE).ns().name(), &bpffs, &["teardown"])?;
    drop(api);
    drop(lab);
    Ok(Kubernetes {
        services: settings.services,
        backends_per_service: settings.per_service,
        program_ms,
        program_wall_ms,
        peak_rss_mib,
        apply_kubectl_ms,
        apply_announced_ms,
        apply_served_ms,
        endpoint_ready_ms,
        endpoint_gone_ms,
        idle_window_s,
        idle_lists: delta(&before, &after, "LIST"),
        idle_watches: delta(&before, &after, "WATCH"),
    })
}

/// The targets, on what was measured: (what, value, target, met).
pub fn checks(k: &Kubernetes) -> Vec<(String, String, String, bool)> {
    vec![
        (
            format!(
                "{} services x {} endpoints programmed from a cold start (agent's own figure)",
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
            "an endpoint becoming ready is in the maps".into(),
            format!("{:.0} ms", k.endpoint_ready_ms),
            "< 500 ms".into(),
            k.endpoint_ready_ms < 500.0,
        ),
        (
            "an endpoint going away is out of the maps".into(),
            format!("{:.0} ms", k.endpoint_gone_ms),
            "< 500 ms".into(),
            k.endpoint_gone_ms < 500.0,
        ),
        (
            format!("LIST requests while idle ({:.0} s)", k.idle_window_s),
            k.idle_lists.to_string(),
            "0 (watches, not polling)".into(),
            k.idle_lists == 0,
        ),
    ]
}
