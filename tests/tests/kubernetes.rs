//! The agent reading a real cluster: etcd and kube-apiserver from `$KUBEBUILDER_ASSETS`
//! (see `gateway_tests::kube_api`), started on the lab's segment so every node's agent
//! reaches it through a kubeconfig, objects applied with kubectl as an operator would.
//! Without `KUBEBUILDER_ASSETS` every test here says it was skipped, and passes.
//! Needs root, like every lab test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gateway_tests::agent::{self, Agent};
use gateway_tests::eventually;
use gateway_tests::http::Answer;
use gateway_tests::kube_api::{self, KubeApi};
use gateway_tests::lab::{
    self, CLIENT, ENVOY_W1A, ENVOY_W1B, Lab, LabSpec, SPARE_VIPS, VIP_EXTERNAL, VIP_INTERNAL,
};

/// How long a change in the cluster may take to show (measured in the bench: well under
/// a second; this only bounds a failing test).
const WAIT: Duration = Duration::from_secs(30);

/// One API server at a time: each test starts its own etcd and kube-apiserver, whose start
/// takes most of the machine's two cores for seconds; run side by side with a lab's agents,
/// they starve what the tests wait for.
static ONE_SERVER: Mutex<()> = Mutex::new(());

fn one_server_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed holding it left nothing shared behind.
    ONE_SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lab whose nodes' agents read the cluster of an API server on the segment. Agents stop
/// first, then the API server, then the lab.
struct Cluster {
    agents: BTreeMap<String, Agent>,
    api: KubeApi,
    kubeconfig: PathBuf,
    spec: LabSpec,
    lab: Lab,
}

impl Cluster {
    /// The lab of `spec` with an API server holding its nodes, pool and policy (services
    /// too, unless `without_services`), and agents on `nodes`; `None` (after saying why)
    /// without `KUBEBUILDER_ASSETS`.
    fn up(
        test: &str,
        spec: LabSpec,
        nodes: &[&str],
        without_services: bool,
    ) -> Result<Option<Self>> {
        Self::up_as(test, spec, nodes, without_services, false)
    }

    /// [`Cluster::up`]; with `as_agent_account`, the agents read and write as the
    /// DaemonSet's ServiceAccount, with exactly its RBAC.
    fn up_as(
        test: &str,
        spec: LabSpec,
        nodes: &[&str],
        without_services: bool,
        as_agent_account: bool,
    ) -> Result<Option<Self>> {
        let Some(assets) = kube_api::assets_or_skip(test) else {
            return Ok(None);
        };
        let lab = Lab::up(spec.clone().with_teardown_agent(agent::binary()?))?;
        let api = KubeApi::in_lab(&assets, &lab)?;
        let mut applied = spec.clone();
        if without_services {
            applied.services.clear();
        }
        api.apply_lab(&applied)?;
        let kubeconfig = if as_agent_account {
            api.agent_kubeconfig()?
        } else {
            api.kubeconfig().to_owned()
        };
        let mut cluster = Self {
            agents: BTreeMap::new(),
            api,
            kubeconfig,
            spec,
            lab,
        };
        for node in nodes {
            let agent = Agent::start_in_cluster(&cluster.lab, node, &cluster.kubeconfig)?;
            cluster.agents.insert((*node).into(), agent);
        }
        Ok(Some(cluster))
    }

    fn agent(&self, node: &str) -> &Agent {
        &self.agents[node]
    }

    /// The services of the lab's spec, applied with kubectl.
    fn apply_services(&self) -> Result<()> {
        self.api.apply_lab(&self.spec)
    }

    /// The node whose agent announces `vip`, once exactly one does.
    fn announcer(&self, vip: Ipv4Addr) -> Result<String> {
        let announcers = eventually(
            WAIT,
            || {
                let mut announcers = Vec::new();
                for (node, agent) in &self.agents {
                    if agent.announced()?.contains(&vip) {
                        announcers.push(node.clone());
                    }
                }
                Ok(announcers)
            },
            |announcers| announcers.len() == 1,
        )?;
        match announcers.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("{vip} is announced by {announcers:?}, not by exactly one node"),
        }
    }

    fn get(&self, url: &str) -> Result<Answer> {
        Answer::parse(&self.lab.client().curl(url, None)?)
    }

    fn start(&mut self, node: &str) -> Result<()> {
        self.start_with(node, &[])
    }

    /// Starts the agent on `node` with `extra` flags.
    fn start_with(&mut self, node: &str, extra: &[&str]) -> Result<()> {
        let agent = Agent::start_in_cluster_with(&self.lab, node, &self.kubeconfig, extra)?;
        self.agents.insert(node.into(), agent);
        Ok(())
    }

    /// `kubectl get -o jsonpath=PATH` of `object` (`svc/NAME -n NS`, ...).
    fn jsonpath(&self, object: &[&str], path: &str) -> Result<String> {
        let mut args = vec!["get"];
        args.extend_from_slice(object);
        let path = format!("-o=jsonpath={path}");
        args.push(&path);
        self.api.kubectl(&args)
    }

    /// The EXTERNAL-IP of Service `gateway/NAME` once it has one (empty if it never does).
    fn external_ip(&self, name: &str) -> Result<String> {
        eventually(
            WAIT,
            || {
                self.jsonpath(
                    &["svc", name, "-n", "gateway"],
                    "{.status.loadBalancer.ingress[*].ip}",
                )
            },
            |ip| !ip.is_empty(),
        )
    }

    /// What Service `gateway/NAME`'s status says: its ingress addresses and the agent's
    /// condition as `STATUS REASON` (empty when it has none).
    fn service_status(&self, name: &str) -> Result<(String, String)> {
        let status = self.jsonpath(
            &["svc", name, "-n", "gateway"],
            "{.status.loadBalancer.ingress[*].ip};{.status.conditions[?(@.type==\"cilium.io/IPAMRequestSatisfied\")]['status','reason']}",
        )?;
        let (ingress, condition) = status.split_once(';').unwrap_or((&status, ""));
        Ok((ingress.to_owned(), condition.to_owned()))
    }

    /// The first pool's `cilium.io/IPsUsed`, once it is `expected`.
    fn pool_used(&self, expected: &str) -> Result<String> {
        eventually(
            WAIT,
            || {
                self.jsonpath(
                    &["ippools", "first-pool"],
                    "{.status.conditions[?(@.type==\"cilium.io/IPsUsed\")].message}",
                )
            },
            |used| used == expected,
        )
    }

    /// The Events the agent recorded on Service `gateway/NAME`, as (type, reason, note),
    /// sorted.
    fn events_of(&self, name: &str) -> Result<Vec<(String, String, String)>> {
        let list =
            self.api
                .kubectl(&["get", "events.events.k8s.io", "-n", "gateway", "-o", "json"])?;
        let list: serde_json::Value = serde_json::from_str(&list)?;
        let text = |event: &serde_json::Value, field: &str| {
            event[field].as_str().unwrap_or_default().to_owned()
        };
        let mut events: Vec<_> = list["items"]
            .as_array()
            .context("events")?
            .iter()
            .filter(|e| {
                e["regarding"]["name"] == name && e["reportingController"] == "gateway-agent"
            })
            .map(|e| (text(e, "type"), text(e, "reason"), text(e, "note")))
            .collect();
        events.sort();
        Ok(events)
    }

    /// Who holds the status Lease, once someone does.
    fn lease_holder(&self) -> Result<String> {
        eventually(
            WAIT,
            || {
                self.jsonpath(
                    &[
                        "lease",
                        "gateway-agent-status",
                        "-n",
                        kube_api::AGENT_NAMESPACE,
                    ],
                    "{.spec.holderIdentity}",
                )
                .or_else(|_| Ok(String::new()))
            },
            |holder| !holder.is_empty(),
        )
    }
}

/// What the agent logs when it starts or stops writing status.
const LEADS: &str = "holds the Lease";

#[test]
fn a_service_applied_with_kubectl_is_served_to_the_client_with_its_address_kept() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(c) = Cluster::up(
        "a_service_applied_with_kubectl_is_served",
        LabSpec::reference(&lab::unique_prefix("kba")),
        &["w1", "w2"],
        true,
    )?
    else {
        return Ok(());
    };
    // Nothing is served before the services exist.
    assert!(
        c.agent("w1")
            .json(&["lb", "list"])?
            .as_array()
            .unwrap()
            .is_empty()
    );
    c.apply_services()?;
    for vip in [VIP_INTERNAL, VIP_EXTERNAL] {
        let announcer = c.announcer(vip)?;
        let client = c.lab.client();
        client.flush_neigh()?;
        assert_eq!(
            client.arping(vip)?,
            vec![c.lab.node(&announcer).mac().to_owned()],
            "ARP for {vip}"
        );
        let a = c.get(&format!("http://{vip}:80/"))?;
        let pods: BTreeSet<String> = c
            .lab
            .pods()
            .iter()
            .filter(|p| p.node() == announcer)
            .map(|p| p.name().to_owned())
            .collect();
        assert!(pods.contains(&a.backend), "{a:?} not on {announcer}");
        assert_eq!(a.client.ip(), CLIENT, "no SNAT: the pod sees the client");
    }
    // The agents read the cluster and say so.
    let log = c.agent("w1").log();
    assert!(
        log.contains("reading the objects from kubernetes https://"),
        "{log}"
    );
    Ok(())
}

#[test]
fn endpoint_changes_follow_into_the_maps() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(c) = Cluster::up(
        "endpoint_changes_follow_into_the_maps",
        LabSpec::reference(&lab::unique_prefix("kbb")),
        &["w1"],
        false,
    )?
    else {
        return Ok(());
    };
    let frontend = format!("{VIP_EXTERNAL}:80/TCP");
    let both: BTreeSet<String> = [ENVOY_W1A, ENVOY_W1B]
        .iter()
        .map(|a| format!("{a}:8080"))
        .collect();
    let w1 = c.agent("w1");
    let seen = eventually(WAIT, || w1.backends(&frontend), |b| *b == both)?;
    assert_eq!(seen, both);

    // envoy-w1b stops being ready: only envoy-w1a serves.
    let mut spec = c.spec.clone();
    spec.pod_mut("envoy-w1b").ready = false;
    c.api.apply_lab(&spec)?;
    let only_a: BTreeSet<String> = [format!("{ENVOY_W1A}:8080")].into();
    let seen = eventually(WAIT, || w1.backends(&frontend), |b| *b == only_a)?;
    assert_eq!(seen, only_a);

    // Ready again: both.
    c.api.apply_lab(&c.spec)?;
    let seen = eventually(WAIT, || w1.backends(&frontend), |b| *b == both)?;
    assert_eq!(seen, both);
    Ok(())
}

#[test]
fn an_object_that_cannot_be_served_is_reported_and_the_others_serve() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(c) = Cluster::up(
        "an_object_that_cannot_be_served_is_reported",
        LabSpec::reference(&lab::unique_prefix("kbc")),
        &["w1", "w2"],
        false,
    )?
    else {
        return Ok(());
    };
    c.announcer(VIP_EXTERNAL)?;
    // The API server takes this Service; the agent cannot read its VIP request.
    let broken = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: gateway\n  \
                  annotations:\n    lbipam.cilium.io/ips: not-an-address\nspec:\n  type: LoadBalancer\n  \
                  ports:\n  - port: 80\n";
    c.api.apply(broken, &[])?;
    // Another service applied after it is served all the same.
    let mut spec = c.spec.clone();
    let mut added = spec.services[0].clone();
    added.name = "added".into();
    added.requested_ip = Some(SPARE_VIPS[0]);
    spec.services.push(added);
    c.api.apply_lab(&spec)?;
    c.announcer(SPARE_VIPS[0])
        .with_context(|| c.agent("w1").log())?;
    let w1 = c.agent("w1");
    let logged = eventually(
        WAIT,
        || Ok(w1.log()),
        |log| log.contains("Service/gateway/broken"),
    )?;
    let line = logged
        .lines()
        .find(|l| l.contains("Service/gateway/broken"))
        .context("no line about the broken service")?;
    assert!(line.contains("not served"), "{line}");
    // Still serving what it served.
    c.announcer(VIP_EXTERNAL)?;
    Ok(())
}

#[test]
fn check_and_doctor_read_the_cluster_without_a_file() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(assets) = kube_api::assets_or_skip("check_and_doctor_read_the_cluster") else {
        return Ok(());
    };
    let api = KubeApi::own(&assets)?;
    api.apply_lab(&LabSpec::reference("kbd"))?;
    let binary = agent::binary()?.display().to_string();
    let kubeconfig = api.kubeconfig().display().to_string();
    let out = api.in_ns(&[
        &binary,
        "check",
        "--kubeconfig",
        &kubeconfig,
        "--output",
        "json",
    ])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(report["verdict"], "valid", "{report:#}");
    assert_eq!(report["file"], format!("kubernetes {}", api.url()));
    let vips: BTreeSet<&str> = report["services"]
        .as_array()
        .context("services")?
        .iter()
        .flat_map(|s| s["vips"].as_array().into_iter().flatten())
        .filter_map(|v| v["vip"].as_str())
        .collect();
    assert_eq!(
        vips,
        [VIP_INTERNAL.to_string(), VIP_EXTERNAL.to_string()]
            .iter()
            .map(String::as_str)
            .collect()
    );
    // `doctor` with no file and no agent reads the cluster too: its object findings name it.
    let bpffs = api.dir().join("no-bpffs").display().to_string();
    let doctor = std::process::Command::new("ip")
        .args(["netns", "exec", api.ns(), &binary, "doctor", "--kubeconfig"])
        .args([&kubeconfig, "--bpffs", &bpffs, "--output", "json"])
        .output()?;
    let findings: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .with_context(|| String::from_utf8_lossy(&doctor.stderr).into_owned())?;
    let text = findings.to_string();
    assert!(!text.contains("cannot read the objects"), "{findings:#}");
    assert!(
        text.contains("cilium-gateway-gateway-external"),
        "{findings:#}"
    );
    Ok(())
}

/// Every frontend a node serves with its backends, and the VIPs it answers ARP for.
type Served = (BTreeMap<String, BTreeSet<String>>, Vec<Ipv4Addr>);

/// What a node serves, as its maps hold it.
fn served(agent: &Agent) -> Result<Served> {
    let mut frontends = BTreeMap::new();
    for frontend in agent.json(&["lb", "list"])?.as_array().context("lb list")? {
        let name = frontend["frontend"]
            .as_str()
            .context("frontend")?
            .to_owned();
        frontends.insert(name.clone(), agent.backends(&name)?);
    }
    Ok((frontends, agent.announced()?))
}

/// A Service the lab's spec does not have, requesting `vip`, with the backends of the
/// external gateway.
fn added_service(spec: &LabSpec, name: &str, vip: Ipv4Addr) -> LabSpec {
    let mut spec = spec.clone();
    let mut added = spec.services[0].clone();
    added.name = name.into();
    added.requested_ip = Some(vip);
    spec.services.push(added);
    spec
}

#[test]
fn the_api_server_going_away_changes_nothing_served_and_the_watches_catch_up() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(mut c) = Cluster::up(
        "the_api_server_going_away_changes_nothing_served",
        LabSpec::reference(&lab::unique_prefix("kbf")),
        &["w1", "w2"],
        false,
    )?
    else {
        return Ok(());
    };
    let announcer = c.announcer(VIP_EXTERNAL)?;
    let before: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|n| served(c.agent(n)))
        .collect::<Result<_>>()?;

    // The API server stops (a restart, an upgrade): the agents lose their watches.
    c.api.stop_apiserver();
    for (node, agent) in &mut c.agents {
        agent
            .wait_for_log("retrying", WAIT)
            .with_context(|| node.clone())?;
    }
    let during: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|n| served(c.agent(n)))
        .collect::<Result<_>>()?;
    assert_eq!(
        during, before,
        "the datapath changed while the API server was away"
    );
    let a = c.get(&format!("http://{VIP_EXTERNAL}:80/"))?;
    assert_eq!(a.client.ip(), CLIENT);
    c.lab.client().flush_neigh()?;
    assert_eq!(
        c.lab.client().arping(VIP_EXTERNAL)?,
        vec![c.lab.node(&announcer).mac().to_owned()]
    );

    // Back: a Service created at once is served once the watches have caught up, and
    // nothing that served before was dropped on the way.
    c.api.start_apiserver()?;
    c.api
        .apply_lab(&added_service(&c.spec, "after-restart", SPARE_VIPS[0]))?;
    c.announcer(SPARE_VIPS[0])?;
    // The restarted server's watch cache starts afresh: the watches expired (410 Gone) and
    // listed again, and what served before still does.
    for (node, agent) in &c.agents {
        let log = agent.log();
        assert!(
            log.contains("expired (410 Gone): listing again"),
            "{node}: {log}"
        );
    }
    for (node, before) in ["w1", "w2"].iter().zip(&before) {
        let (frontends, _) = served(c.agent(node))?;
        for (frontend, backends) in &before.0 {
            assert_eq!(
                frontends.get(frontend),
                Some(backends),
                "{node}: {frontend}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_lost_connection_is_noticed_and_what_changed_meanwhile_is_caught_up() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(mut c) = Cluster::up(
        "a_lost_connection_is_noticed",
        LabSpec::reference(&lab::unique_prefix("kbg")),
        &["w1"],
        false,
    )?
    else {
        return Ok(());
    };
    let w1 = c.agent("w1");
    let frontend = format!("{VIP_EXTERNAL}:80/TCP");
    let before = eventually(WAIT, || w1.backends(&frontend), |b| b.len() == 2)?;
    // The connection to the API server is lost: nothing more arrives from it, attempts to
    // reconnect are refused, and the open connections are closed under the agent.
    let ns = c.lab.node("w1").ns();
    let api = c.api.addr().to_string();
    let rules = [
        ["INPUT", "-s", &api, "-j", "DROP"],
        ["OUTPUT", "-d", &api, "-j", "REJECT"],
    ];
    for rule in &rules {
        ns.run(["iptables", "-A"].iter().chain(rule))?;
    }
    ns.run(["ss", "-K", "dst", &api])?;
    let w1 = c.agents.get_mut("w1").context("w1")?;
    w1.wait_for_log("retrying until it answers", WAIT)?;
    let w1 = &*w1;
    // Meanwhile the cluster changes: a Service is added and an endpoint stops being ready.
    let mut spec = added_service(&c.spec, "meanwhile", SPARE_VIPS[1]);
    spec.pod_mut("envoy-w1b").ready = false;
    c.api.apply_lab(&spec)?;
    assert_eq!(
        w1.backends(&frontend)?,
        before,
        "w1 cannot have seen the change yet"
    );
    for rule in &rules {
        ns.run(["iptables", "-D"].iter().chain(rule))?;
    }
    let only_a: BTreeSet<String> = [format!("{ENVOY_W1A}:8080")].into();
    let seen = eventually(WAIT, || w1.backends(&frontend), |b| *b == only_a)?;
    assert_eq!(seen, only_a, "{}", w1.log());
    let added = format!("{}:80/TCP", SPARE_VIPS[1]);
    let seen = eventually(WAIT, || w1.backends(&added), |b| !b.is_empty())?;
    assert_eq!(seen, only_a);
    Ok(())
}

#[test]
fn one_of_two_agents_writes_status_and_hands_over_when_it_stops() -> Result<()> {
    let _server = one_server_at_a_time();
    let mut spec = LabSpec::reference(&lab::unique_prefix("kbh"));
    // Two services without a requested VIP, taken in creation order: the first gets the
    // pool's lowest free address, the second the next one.
    for name in ["first-dynamic", "second-dynamic"] {
        let mut service = spec.services[0].clone();
        service.name = name.into();
        service.requested_ip = None;
        spec.services.push(service);
    }
    let Some(mut c) = Cluster::up_as(
        "one_of_two_agents_writes_status",
        spec,
        &["w1", "w2"],
        false,
        true,
    )?
    else {
        return Ok(());
    };
    let holder = c.lease_holder()?;
    assert!(["w1", "w2"].contains(&holder.as_str()), "{holder}");
    let other = if holder == "w1" { "w2" } else { "w1" };
    let first = c.external_ip("first-dynamic")?;
    let second = c.external_ip("second-dynamic")?;
    assert_ne!(first, second);
    // Only the holder wrote; the other computed the same and wrote nothing.
    c.agents
        .get_mut(holder.as_str())
        .context("holder")?
        .wait_for_log("wrote the status", WAIT)?;
    assert!(c.agent(&holder).log().contains(LEADS));
    assert!(
        !c.agent(other).log().contains(LEADS),
        "{}",
        c.agent(other).log()
    );
    assert!(!c.agent(other).log().contains("wrote the status"));
    // Pools show their counts, as `kubectl get ippools` with Cilium.
    let used = eventually(
        WAIT,
        || {
            c.jsonpath(
                &["ippools", "first-pool"],
                "{.status.conditions[?(@.type==\"cilium.io/IPsUsed\")].message}",
            )
        },
        |used| used == "4",
    )?;
    assert_eq!(used, "4");
    // A Service the agent cannot serve says why, in its condition and in an Event.
    let broken = "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: gateway\n  \
                  annotations:\n    lbipam.cilium.io/ips: not-an-address\nspec:\n  type: LoadBalancer\n  \
                  ports:\n  - port: 80\n";
    c.api.apply(broken, &[])?;
    let condition = "{.status.conditions[?(@.type==\"cilium.io/IPAMRequestSatisfied\")].reason}";
    let reason = eventually(
        WAIT,
        || c.jsonpath(&["svc", "broken", "-n", "gateway"], condition),
        |reason| !reason.is_empty(),
    )
    .with_context(|| c.agent(&holder).log())?;
    assert_eq!(reason, "InvalidRequestedIP");
    let list = "jsonpath={range .items[*]}{.regarding.name} {.reason} {.type};{end}";
    let events = eventually(
        WAIT,
        || {
            c.api
                .kubectl(&["get", "events.events.k8s.io", "-n", "gateway", "-o", list])
        },
        |events| events.contains("broken InvalidRequestedIP Warning"),
    )?;
    assert!(
        events.contains("broken InvalidRequestedIP Warning"),
        "{events}"
    );

    // The holder stops: it gives the Lease up, the other takes over at its next read.
    c.agents.remove(holder.as_str()).context("holder")?.stop();
    let taken = eventually(WAIT, || c.lease_holder(), |h| h.as_str() == other)?;
    assert_eq!(taken, other);
    c.agents
        .get_mut(other)
        .context("other")?
        .wait_for_log(LEADS, WAIT)?;
    // The new writer writes: a Service added now gets its VIP in status.
    let mut spec = c.spec.clone();
    let mut added = spec.services[0].clone();
    added.name = "after-handover".into();
    added.requested_ip = Some(SPARE_VIPS[0]);
    // No endpoints: a backend serves at most four frontends, and the lab's already do.
    added.backends.clear();
    spec.services.push(added);
    c.api.apply_lab(&spec)?;
    let ip = c.external_ip("after-handover").unwrap_or_default();
    assert_eq!(ip, SPARE_VIPS[0].to_string(), "{}", c.agent(other).log());

    // Allocations are read back from status: with the first dynamic service gone and every
    // agent restarted, the second keeps its VIP (the lowest free address would be the
    // first's).
    c.api
        .kubectl(&["delete", "svc", "first-dynamic", "-n", "gateway"])?;
    let names: Vec<String> = c.agents.keys().cloned().collect();
    for node in names {
        c.agents.remove(&node).context("agent")?.stop();
    }
    c.start("w1")?;
    c.start("w2")?;
    c.lease_holder()?;
    let w1 = c.agent("w1");
    let kept = eventually(
        WAIT,
        || Ok(w1.json(&["lb", "list"])?.to_string()),
        |lb| lb.contains(&format!("{second}:80/TCP")),
    )?;
    assert!(kept.contains(&format!("{second}:80/TCP")), "{kept}");
    assert!(!kept.contains(&format!("{first}:80/TCP")), "{kept}");
    assert_eq!(c.external_ip("second-dynamic")?, second);
    Ok(())
}

/// A LoadBalancer Service `gateway/NAME` without node ports or endpoints (a backend serves
/// at most four frontends, and the lab's already do); `class` its loadBalancerClass.
fn bare_service(name: &str, class: Option<&str>) -> String {
    let class = class.map_or(String::new(), |c| format!("  loadBalancerClass: {c}\n"));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: gateway\nspec:\n  \
         type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n{class}  ports:\n  - port: 80\n"
    )
}

#[test]
fn a_service_no_longer_served_here_loses_the_agents_status_and_frees_its_vip() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(mut c) = Cluster::up_as(
        "a_service_no_longer_served_here_loses_the_agents_status",
        LabSpec::reference(&lab::unique_prefix("kbi")),
        &[],
        false,
        true,
    )?
    else {
        return Ok(());
    };
    // The agent serves one more class, as an operator would ask it to.
    const CLASS: &str = "example.io/lb";
    c.start_with("w1", &["--load-balancer-class", CLASS])?;
    for (name, class) in [
        ("leaving", None),
        ("flagged", Some(CLASS)),
        ("recreated", None),
    ] {
        c.api.apply(&bare_service(name, class), &[])?;
    }
    let mut vips = BTreeMap::new();
    for name in ["leaving", "flagged", "recreated"] {
        let vip: Ipv4Addr = c.external_ip(name)?.parse()?;
        vips.insert(name, vip);
        assert_eq!(c.service_status(name)?.1, "True Satisfied", "{name}");
    }
    // The reference's two gateways and these three.
    c.pool_used("5")?;
    let w1 = c.agent("w1");
    eventually(WAIT, || w1.announced(), |a| a.contains(&vips["leaving"]))?;

    // Stops being a LoadBalancer: the API server empties its ingress and leaves the
    // condition; the agent removes that, and no longer answers for the VIP.
    c.api.kubectl(&[
        "patch",
        "svc",
        "leaving",
        "-n",
        "gateway",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP","allocateLoadBalancerNodePorts":null}}"#,
    ])?;
    let status = eventually(
        WAIT,
        || c.service_status("leaving"),
        |(_, condition)| condition.is_empty(),
    )?;
    let log = c.agent("w1").log();
    assert_eq!(status, (String::new(), String::new()), "{log}");
    assert_eq!(c.pool_used("4")?, "4");
    let w1 = c.agent("w1");
    let announced = eventually(WAIT, || w1.announced(), |a| !a.contains(&vips["leaving"]))?;
    assert!(!announced.contains(&vips["leaving"]), "{announced:?}");

    // Deleted and created again for another controller: its VIP is free, and the agent
    // writes nothing on it.
    c.api
        .kubectl(&["delete", "svc", "recreated", "-n", "gateway"])?;
    c.api
        .apply(&bare_service("recreated", Some("other.io/lb")), &[])?;
    assert_eq!(c.pool_used("3")?, "3");
    assert_eq!(
        c.service_status("recreated")?,
        (String::new(), String::new())
    );

    // The class the agent served is no longer given to it: restarted without the flag, it
    // finds its VIP and condition on another controller's Service (what it wrote is in the
    // Service's managedFields) and removes both.
    c.agents.remove("w1").context("w1")?.stop();
    c.start("w1")?;
    let status = eventually(
        WAIT,
        || c.service_status("flagged"),
        |(ingress, condition)| ingress.is_empty() && condition.is_empty(),
    )?;
    let log = c.agent("w1").log();
    assert_eq!(status, (String::new(), String::new()), "{log}");
    assert_eq!(c.pool_used("2")?, "2");
    assert!(
        log.contains("Service/gateway/flagged is no longer served here"),
        "{log}"
    );
    // A Service the agent answers for again gets a VIP again.
    c.api.kubectl(&[
        "patch",
        "svc",
        "leaving",
        "-n",
        "gateway",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"LoadBalancer","allocateLoadBalancerNodePorts":false}}"#,
    ])?;
    c.external_ip("leaving")?;
    assert_eq!(c.service_status("leaving")?.1, "True Satisfied");
    assert_eq!(c.pool_used("3")?, "3");
    Ok(())
}

#[test]
fn every_finding_about_a_service_is_an_event_once() -> Result<()> {
    let _server = one_server_at_a_time();
    let Some(mut c) = Cluster::up_as(
        "every_finding_about_a_service_is_an_event_once",
        LabSpec::reference(&lab::unique_prefix("kbj")),
        &["w1"],
        false,
        true,
    )?
    else {
        return Ok(());
    };
    // Two SCTP ports (a warning each, with the same reason), and an IPv6 address requested
    // beside the IPv4 one (worth knowing).
    let ports = |sctp: &[u16]| {
        let mut yaml = String::from("  ports:\n  - {port: 80, protocol: TCP, name: http}\n");
        for port in sctp {
            yaml.push_str(&format!(
                "  - {{port: {port}, protocol: SCTP, name: p{port}}}\n"
            ));
        }
        yaml
    };
    let mixed = |sctp: &[u16]| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: mixed\n  namespace: gateway\n  \
             annotations:\n    lbipam.cilium.io/ips: \"{},2001:db8::1\"\nspec:\n  type: LoadBalancer\n  \
             allocateLoadBalancerNodePorts: false\n{}",
            SPARE_VIPS[0],
            ports(sctp)
        )
    };
    c.api.apply(&mixed(&[81, 82]), &[])?;
    let shape = |events: &[(String, String, String)]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|(t, r, _)| (t.clone(), r.clone()))
            .collect()
    };
    let expected: Vec<(String, String)> = [
        ("Normal", "IPv6NotServed"),
        ("Warning", "UnsupportedProtocol"),
        ("Warning", "UnsupportedProtocol"),
    ]
    .iter()
    .map(|(t, r)| (t.to_string(), r.to_string()))
    .collect();
    let events = eventually(WAIT, || c.events_of("mixed"), |e| shape(e) == expected)?;
    assert_eq!(shape(&events), expected, "{}", c.agent("w1").log());
    // Each names its own port.
    assert!(
        events[1].2.starts_with("spec.ports[1].protocol:"),
        "{events:?}"
    );
    assert!(
        events[2].2.starts_with("spec.ports[2].protocol:"),
        "{events:?}"
    );
    assert!(events[0].2.contains("IPv6 is not served yet"), "{events:?}");
    // `kubectl describe` finds them (they name the Service's uid).
    let described = c
        .api
        .kubectl(&["describe", "svc", "mixed", "-n", "gateway"])?;
    assert!(described.contains("UnsupportedProtocol"), "{described}");

    // Unrelated changes (a label on it, another Service served after it) tell nothing new.
    c.api
        .kubectl(&["label", "svc", "mixed", "-n", "gateway", "team=shop"])?;
    c.api.apply(&bare_service("unrelated", None), &[])?;
    c.external_ip("unrelated")?;
    assert_eq!(c.events_of("mixed")?, events);
    assert!(c.events_of("unrelated")?.is_empty());

    // One finding goes away: nothing is told; it comes back: it is told again. (The
    // writer has seen it gone once a Service added after it has its VIP.)
    c.api.apply(&mixed(&[81]), &[])?;
    c.api.apply(&bare_service("after-fix", None), &[])?;
    c.external_ip("after-fix")?;
    assert_eq!(c.events_of("mixed")?, events);
    c.api.apply(&mixed(&[81, 82]), &[])?;
    let again = eventually(WAIT, || c.events_of("mixed"), |e| e.len() == 4)?;
    let port_2: Vec<_> = again
        .iter()
        .filter(|(_, _, note)| note.starts_with("spec.ports[2]"))
        .collect();
    assert_eq!(port_2.len(), 2, "{again:?}");

    // A request not met is a finding; met again, a Normal Event says so.
    let outside = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: moving\n  namespace: gateway\n  \
         annotations:\n    lbipam.cilium.io/ips: \"{UNUSED}\"\nspec:\n  type: LoadBalancer\n  \
         allocateLoadBalancerNodePorts: false\n  ports:\n  - port: 80\n",
        UNUSED = lab::UNUSED_ADDR
    );
    c.api.apply(&outside, &[])?;
    let failing = eventually(WAIT, || c.events_of("moving"), |e| !e.is_empty())?;
    assert_eq!(
        shape(&failing),
        [("Warning".to_owned(), "RequestedIPNotInPool".to_owned())]
    );
    c.api.apply(
        &outside.replace(&lab::UNUSED_ADDR.to_string(), &SPARE_VIPS[1].to_string()),
        &[],
    )?;
    let met = eventually(WAIT, || c.events_of("moving"), |e| e.len() == 2)?;
    assert!(
        met.contains(&(
            "Normal".to_owned(),
            "Satisfied".to_owned(),
            format!("the request is met: {}", SPARE_VIPS[1])
        )),
        "{met:?}"
    );

    // A new writer (the agent restarted) tells what stands once more, once.
    c.agents.remove("w1").context("w1")?.stop();
    c.start("w1")?;
    let retold = eventually(WAIT, || c.events_of("mixed"), |e| e.len() >= 7)?;
    c.api.apply(&bare_service("later", None), &[])?;
    c.external_ip("later")?;
    let after = c.events_of("mixed")?;
    assert_eq!(after.len(), 7, "{after:?}");
    assert_eq!(after, retold);
    Ok(())
}
