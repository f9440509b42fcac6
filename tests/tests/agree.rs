//! `check` and `run` agree: fed the same file, what `run` on a node skips `check` reports
//! for that node, finding for finding, with the same exit status rule; what `run` refuses
//! whole, `check` refuses with 2. Five and sixty-four services whose endpoint is the same
//! pod (Gateways on one envoy): both serve every one of them (a backend may serve any
//! number of frontends), and every reply comes back from its own VIP. Needs root; every
//! test builds its own lab.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{self, Lab, LabSpec};
use serde_json::Value;

/// The reference with `count` gateways in all, every extra one served by envoy-w1a alone,
/// and room in the pool for their VIPs.
fn gateways_on_one_pod(prefix: &str, count: usize) -> LabSpec {
    let mut spec = LabSpec::reference(prefix);
    spec.pools[0].cidrs.push("192.168.10.128/25".into());
    let template = spec.service_mut("cilium-gateway-gateway-external").clone();
    for i in 0..count - 2 {
        let mut gateway = template.clone();
        gateway.name = format!("gw-{i:02}");
        gateway.requested_ip = None;
        gateway.backends = vec!["envoy-w1a".into()];
        spec.services.push(gateway);
    }
    spec
}

/// `check --output json` on `node` (or every node) of `config`: its exit status and report.
fn check(config: &std::path::Path, node: Option<&str>) -> Result<(i32, Value)> {
    let mut cmd = Command::new(agent::binary()?);
    cmd.args(["check", "--output", "json", "--config"])
        .arg(config);
    if let Some(node) = node {
        cmd.args(["--node-name", node]);
    }
    let out = cmd.output().context("running check")?;
    let report = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("check said: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), report))
}

/// (reason, object) of every warning and error finding of a `check` report.
fn checked(report: &Value) -> BTreeSet<(String, String)> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["severity"] != "info")
        .map(|f| {
            let object = &f["object"];
            let object = format!(
                "{}/{}/{}",
                object["kind"].as_str().unwrap_or(""),
                object["namespace"].as_str().unwrap_or(""),
                object["name"].as_str().unwrap_or("")
            );
            (f["reason"].as_str().unwrap_or("").to_owned(), object)
        })
        .collect()
}

/// (reason, object) of every warning and error finding the running agent recorded, as
/// `status` shows them: `severity Reason file: Kind/namespace/name: ...`.
fn recorded(status: &Value) -> BTreeSet<(String, String)> {
    status["agent"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|line| {
            let mut words = line.as_str()?.splitn(4, ' ');
            let severity = words.next()?;
            let reason = words.next()?;
            let _file = words.next()?;
            let object = words.next()?.split(':').next()?;
            (severity != "info").then(|| (reason.to_owned(), object.to_owned()))
        })
        .collect()
}

/// The services `lb list` programs.
fn programmed(agent: &Agent) -> Result<BTreeSet<String>> {
    Ok(agent
        .json(&["lb", "list"])?
        .as_array()
        .context("lb list")?
        .iter()
        .filter_map(|f| f["service"].as_str())
        .map(|name| name.split(':').next().unwrap_or(name).to_owned())
        .collect())
}

fn gateways_on_one_pod_agree(count: usize) -> Result<()> {
    let spec = gateways_on_one_pod(&lab::unique_prefix("gwg"), count);
    let lab = Lab::up(spec.with_teardown_agent(agent::binary()?))?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;

    // Nothing is skipped, on the node that runs the pod or anywhere.
    for node in [Some("w1"), Some("w2"), None] {
        let (code, report) = check(&config, node)?;
        assert_eq!(
            (code, checked(&report)),
            (0, BTreeSet::new()),
            "{node:?}: {report:#}"
        );
    }

    // `run` on w1 programs them all, and says nothing against any.
    let w1 = Agent::start(&lab, "w1", &config)?;
    let status = w1.json(&["status"])?;
    assert_eq!(recorded(&status), BTreeSet::new(), "{status:#}");
    assert_eq!(
        status["agent"]["objects_not_served"].as_u64(),
        Some(0),
        "{status:#}"
    );
    assert!(status["agent"]["rejected"].is_null(), "{status:#}");
    let served = programmed(&w1)?;
    let gateways: Vec<String> = (0..count - 2)
        .map(|i| format!("gateway/gw-{i:02}"))
        .collect();
    for name in gateways
        .iter()
        .map(String::as_str)
        .chain(["gateway/cilium-gateway-gateway-external"])
    {
        assert!(
            served.contains(name),
            "{name} is not programmed: {served:?}"
        );
    }

    // Every gateway answers through the one pod, the reply from its own VIP (a reply with
    // another source would not complete the connection).
    let lb = w1.json(&["lb", "list"])?;
    let vips: BTreeSet<String> = lb
        .as_array()
        .context("lb list")?
        .iter()
        .filter(|f| {
            let service = f["service"].as_str().unwrap_or("");
            service.starts_with("gateway/gw-")
                && f["frontend"].as_str().unwrap_or("").ends_with(":80/TCP")
        })
        .map(|f| {
            f["frontend"]
                .as_str()
                .unwrap_or("")
                .trim_end_matches(":80/TCP")
                .to_owned()
        })
        .collect();
    assert_eq!(vips.len(), count - 2, "{lb:#}");
    for vip in &vips {
        let body = lab.client().curl(&format!("http://{vip}/"), None)?;
        assert!(body.contains("backend=envoy-w1a "), "{vip}: {body}");
    }
    assert!(w1.counter("rev_nat")? >= vips.len() as u64);
    Ok(())
}

#[test]
fn five_gateways_on_one_envoy_check_and_run_serve_them_all() -> Result<()> {
    gateways_on_one_pod_agree(5)
}

#[test]
fn sixty_four_gateways_on_one_envoy_check_and_run_serve_them_all() -> Result<()> {
    gateways_on_one_pod_agree(64)
}

#[test]
fn a_file_run_refuses_check_refuses_with_the_same_error_and_status() -> Result<()> {
    let lab = Lab::up(LabSpec::reference(&lab::unique_prefix("gwh")))?;
    let config = agent::write_config(
        &lab,
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: LoadBalancer, ports: [{port: 80, protocol: [SCTP]}]}\n",
    )?;
    let error =
        "Service/default/x: spec.ports[0].protocol: invalid type: sequence, expected a string";
    let checked = Command::new(agent::binary()?)
        .args(["check", "--config"])
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(error), "{stderr}");
    let w1 = lab.node("w1");
    let mut cmd = w1.ns().command([agent::binary()?.display().to_string()]);
    cmd.args(["run", "--node-name", "w1", "--config"])
        .arg(&config)
        .arg("--bpffs")
        .arg(w1.bpffs_dir())
        .arg("--cgroup")
        .arg(w1.cgroup());
    let ran = cmd.output()?;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(error), "{stderr}");
    assert!(!w1.bpffs_dir().exists(), "nothing pinned");
    Ok(())
}
