//! The deployment files in deploy/ kept honest: the systemd unit passes `systemd-analyze
//! verify` and keeps its hardening; installed as the README says on a Debian booted with a
//! real systemd (a container on a lab node), it does what an operator expects of start,
//! reload, an edit, restart, a crash and stop; the agent serves with exactly the unit's
//! capabilities and fails without any one of them; both bpffs guards mount once; the
//! DaemonSet has what a node agent needs, grants exactly what the agent uses, and applies to a
//! real API server whose answers to its account match that (with `$KUBEBUILDER_ASSETS`); the Dockerfile
//! builds the way `cargo xtask setup` installs. The lab, systemd and bpffs tests need root,
//! and those that run the agent need it built (`cargo build -p gateway-agent`), like the lab
//! tests; the systemd test boots the Debian root `cargo xtask test` caches under target/
//! (building it first when it is missing).

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use gateway_tests::agent::{self, Agent};
use gateway_tests::container::{Bind, Container, ContainerSpec};
use gateway_tests::debian_root;
use gateway_tests::eventually;
use gateway_tests::http::{Answer, request};
use gateway_tests::kube_api::{self, KubeApi};
use gateway_tests::lab::{self, CLIENT, Lab, LabSpec, PortSpec, SPARE_VIPS, VIP_EXTERNAL};
use gateway_tests::process::checked;
use serde::Deserialize;
use serde_json::{Value, json};

const UNIT: &str = "deploy/gateway-agent.service";
const DAEMONSET: &str = "deploy/daemonset.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const SETUP: &str = "xtask/src/setup.rs";
const INSTALLED_AGENT: &str = "/usr/local/bin/gateway-agent";
/// What the unit runs: a node without API access reads its objects from a file.
const RUN_ARGS: [&str; 3] = ["run", "--config", "/etc/gateway/objects.yaml"];
/// What the image and the DaemonSet run: the cluster, as the pod's service account.
const POD_RUN_ARGS: [&str; 1] = ["run"];
const CRDS: &str = "deploy/crds.yaml";
const NODE: &str = "w1";
/// The unit as systemd knows it once installed.
const SERVICE: &str = "gateway-agent";
/// What the unit and the CLI use as `--bpffs`, below the node's bpffs.
const PIN_DIR: &str = "/sys/fs/bpf/gateway";
/// The system calls the agent needs beyond systemd-nspawn's default filter.
const AGENT_SYSTEM_CALLS: [&str; 2] = ["bpf", "perf_event_open"];
/// Where the container sees the files the README's install steps take (read-only).
const INSTALL_DIR: &str = "/root/gateway";
/// The objects file inside the container.
const OBJECTS: &str = "/etc/gateway/objects.yaml";
/// How long systemd may take to start the agent (it loads and attaches the datapath), and
/// a change of the file to show.
const SETTLE: Duration = Duration::from_secs(60);
/// What the agent logs once it serves after a start.
fn start_line() -> String {
    format!("node {NODE}: serving after")
}

fn read(path: &str) -> Result<String> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("gateway-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A unit file's settings in order, as (section, key, value).
struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn parse(text: &str) -> Result<Self> {
        let mut section = String::new();
        let mut settings = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            ensure!(!line.ends_with('\\'), "continued line in the unit: {line}");
            let (key, value) = line
                .split_once('=')
                .with_context(|| format!("not a setting: {line}"))?;
            settings.push((section.clone(), key.trim().into(), value.trim().into()));
        }
        Ok(Self(settings))
    }

    fn values(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    fn service(&self, key: &str) -> Result<&str> {
        match self.values("Service", key).as_slice() {
            [one] => Ok(one),
            other => bail!("{UNIT}: expected one {key}=, found {other:?}"),
        }
    }

    /// The bounding set: the capabilities the agent runs with.
    fn capabilities(&self) -> Result<Vec<String>> {
        Ok(self
            .service("CapabilityBoundingSet")?
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }
}

fn unit() -> Result<Unit> {
    Unit::parse(&read(UNIT)?)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> Result<Output> {
    match Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
    {
        Ok(output) => Ok(output),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("systemd-analyze is not installed: run `cargo xtask setup`")
        }
        Err(e) => Err(e).context("running systemd-analyze"),
    }
}

fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn unit_passes_systemd_analyze_verify_and_security() -> Result<()> {
    // verify checks that ExecStart's binary exists: point it at one that does, and change
    // nothing else.
    let text = read(UNIT)?;
    let exec_start = format!("ExecStart={INSTALLED_AGENT} ");
    let rewritten: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix(&exec_start) {
            Some(args) => format!("ExecStart=/bin/true {args}"),
            None => l.to_owned(),
        })
        .collect();
    let changed = text.lines().zip(&rewritten).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 1, "{UNIT} has no single `{exec_start}...` line");
    let dir = TempDir::new("deploy-unit")?;
    let copy = dir.0.join("gateway-agent.service");
    fs::write(&copy, rewritten.join("\n") + "\n")?;

    let verify = systemd_analyze(&["verify"], &copy)?;
    assert!(
        verify.status.success() && said(&verify).trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{}",
        verify.status,
        said(&verify)
    );
    // The exposure score (0-100; systemd rates up to 20 "OK") guards the hardening as a whole.
    let security = systemd_analyze(&["security", "--offline=true", "--threshold=20"], &copy)?;
    assert!(
        security.status.success(),
        "systemd-analyze security {UNIT} rates it above 2.0 ({}):\n{}",
        security.status,
        said(&security)
    );
    Ok(())
}

#[test]
fn unit_runs_the_agent_hardened_and_leaves_the_datapath_on_stop() -> Result<()> {
    let unit = unit()?;
    assert_eq!(
        unit.service("ExecStart")?,
        format!(
            "{INSTALLED_AGENT} {} $GATEWAY_AGENT_ARGS",
            RUN_ARGS.join(" ")
        )
    );
    for (key, value) in [
        ("EnvironmentFile", "-/etc/default/gateway-agent"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("User", "root"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "-/sys/fs/bpf/gateway"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_NETLINK AF_PACKET"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(unit.service(key)?, value, "{UNIT}: {key}=");
    }
    let env = unit.values("Service", "Environment");
    assert!(
        env.contains(&"NODE_NAME=%H"),
        "{UNIT}: Environment= {env:?}"
    );
    assert!(!unit.service("RestartSec")?.is_empty());
    // The pin directory exists before the sandbox that makes it the one writable path.
    assert_eq!(
        unit.values("Service", "ExecStartPre").get(1),
        Some(&format!("+/bin/mkdir -p {PIN_DIR}").as_str()),
        "{UNIT}: ExecStartPre="
    );
    assert_eq!(
        unit.capabilities()?,
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_NET_RAW"],
        "{UNIT}: CapabilityBoundingSet="
    );
    // The datapath outlives the agent: nothing tears it down, and the node's network is the
    // agent's.
    for key in ["ExecStop", "ExecStopPost", "PrivateNetwork", "PrivateUsers"] {
        let set = unit.values("Service", key);
        assert!(set.is_empty(), "{UNIT}: {key}={set:?}");
    }
    assert_eq!(unit.values("Unit", "After"), ["network-online.target"]);
    assert_eq!(unit.values("Unit", "Wants"), ["network-online.target"]);
    assert_eq!(unit.values("Install", "WantedBy"), ["multi-user.target"]);
    Ok(())
}

/// A script that runs the agent with only `capabilities` (systemd's CAP_ names), as the
/// unit's CapabilityBoundingSet and NoNewPrivileges do for root.
fn agent_with(dir: &Path, name: &str, capabilities: &[&str]) -> Result<PathBuf> {
    let bounding: Vec<String> = capabilities
        .iter()
        .map(|c| {
            let name = c.strip_prefix("CAP_").context("capability without CAP_")?;
            Ok(format!(",+{}", name.to_ascii_lowercase()))
        })
        .collect::<Result<_>>()?;
    let script = dir.join(format!("{name}.sh"));
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all{} {} \"$@\"\n",
            bounding.concat(),
            agent::binary()?.display()
        ),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

#[test]
fn agent_serves_with_exactly_the_units_capabilities() -> Result<()> {
    let capabilities = unit()?.capabilities()?;
    let binary = agent::binary()?;
    let lab = Lab::up(
        LabSpec::reference(&lab::unique_prefix("gwcap")).with_teardown_agent(binary.clone()),
    )?;
    let config = agent::write_config(&lab, &lab.config_yaml()?)?;
    let bpffs = lab.bpffs_dir(NODE).to_owned();
    let ns = lab.node(NODE).ns().name().to_owned();
    // Every attempt starts from nothing pinned, so each one creates, loads and attaches.
    let teardown = || agent::cli(&binary, &ns, &bpffs, &["teardown"]);

    for missing in &capabilities {
        let fewer: Vec<&str> = capabilities
            .iter()
            .filter(|c| c != &missing)
            .map(String::as_str)
            .collect();
        let script = agent_with(&lab.run_dir(), &format!("agent-without-{missing}"), &fewer)?;
        teardown()?;
        let Err(e) = Agent::launch(&lab, NODE, &config, &script, &bpffs, &[]) else {
            bail!("the agent served without {missing}: the unit grants more than it needs");
        };
        let e = format!("{e:#}");
        assert!(
            e.contains("Operation not permitted") || e.contains("Permission denied"),
            "without {missing} the agent failed, but not for want of permission: {e}"
        );
    }

    let all: Vec<&str> = capabilities.iter().map(String::as_str).collect();
    let script = agent_with(&lab.run_dir(), "agent-unit-capabilities", &all)?;
    teardown()?;
    let agent = Agent::launch(&lab, NODE, &config, &script, &bpffs, &[])?;
    // The same capabilities read the pins back (status is the DaemonSet's readiness probe),
    // and the datapath they loaded answers a client.
    let status = agent.json(&["status"])?;
    assert!(status["counters"].is_object(), "status: {status}");
    let vip = *agent
        .announced()?
        .first()
        .context("the agent announces nothing")?;
    let answer = lab.client().curl(&format!("http://{vip}/"), None)?;
    assert!(answer.contains("backend="), "{vip} answered {answer:?}");
    // And they are enough for the faster datapath (the kfunc call and the read of
    // ip_summed), not only for its fallback.
    let log = agent.log();
    assert!(log.contains("L4 checksums updated in place"), "{log}");
    Ok(())
}

/// The README's steps for installing the unit, as a script to run from a directory that
/// holds what they install (`target/release/gateway-agent`, `deploy/gateway-agent.service`,
/// `objects.yaml`), with this node's name in /etc/default/gateway-agent.
fn readme_install_script() -> Result<String> {
    let readme = read("README.md")?;
    let (_, section) = readme
        .split_once("### With systemd")
        .context("README.md has no `### With systemd` section")?;
    let block = section
        .split_once("```\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .context("README.md: no code block in `### With systemd`")?;
    let example = "NODE_NAME=worker-2";
    ensure!(
        block.contains(example) && block.contains("systemctl enable --now gateway-agent"),
        "README.md's install steps changed: teach this test the new ones:\n{block}"
    );
    Ok(block.replace(example, &format!("NODE_NAME={NODE}")))
}

/// Where the unit's agent serves metrics once turned on, on the node's own address.
const METRICS_PORT: u16 = 9655;
/// The Prometheus server the README's metrics drop-in lets in.
const README_SCRAPER: &str = "192.168.10.5";

/// The README's steps for turning metrics on under the unit (the drop-in, the restart),
/// letting `scraper` in.
fn readme_metrics_script(scraper: Ipv4Addr) -> Result<String> {
    let readme = read("README.md")?;
    let (_, section) = readme
        .split_once("### With systemd")
        .context("README.md has no `### With systemd` section")?;
    let block = section
        .split("```")
        .find(|block| block.contains("metrics.conf <<'END'"))
        .context("README.md: no metrics drop-in in `### With systemd`")?;
    let allow = format!("IPAddressAllow={README_SCRAPER}");
    ensure!(
        block.contains(&allow)
            && block.contains("RestrictAddressFamilies=AF_INET")
            && block.contains("systemctl restart gateway-agent"),
        "README.md's metrics steps changed: teach this test the new ones:\n{block}"
    );
    // The block is indented under its list item.
    let script: Vec<&str> = block.lines().map(str::trim_start).collect();
    Ok(script
        .join("\n")
        .replace(&allow, &format!("IPAddressAllow={scraper}")))
}

/// Puts what the README's install steps take into `dir`, laid out as in the source tree:
/// the agent the tests run (built beside them), the unit, and `objects`.
fn stage_install(dir: &Path, objects: &str) -> Result<()> {
    let files = [
        ("target/release/gateway-agent", agent::binary()?),
        (
            "deploy/gateway-agent.service",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(UNIT),
        ),
    ];
    for (to, from) in files {
        let to = dir.join(to);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    let objects_file = dir.join("objects.yaml");
    fs::write(&objects_file, objects).with_context(|| format!("writing {}", objects_file.display()))
}

/// A node whose agent runs under the container's systemd, seen as an operator sees it:
/// through systemctl, journalctl and the agent's CLI inside, and a client on the segment.
struct SystemdNode<'a> {
    lab: &'a Lab,
    container: &'a Container,
}

impl SystemdNode<'_> {
    /// The agent's process as systemd knows it; 0 while it does not run.
    fn main_pid(&self) -> Result<u32> {
        let pid = self.container.property(SERVICE, "MainPID")?;
        pid.parse()
            .with_context(|| format!("MainPID of {SERVICE} is {pid:?}"))
    }

    /// The agent's messages since the container booted.
    fn journal(&self) -> Result<String> {
        self.container.journal(SERVICE)
    }

    /// Waits until the journal holds `count` lines containing all of `parts`.
    fn wait_for_journal(&self, parts: &[&str], count: usize) -> Result<()> {
        let matching = |journal: &String| {
            journal
                .lines()
                .filter(|l| parts.iter().all(|p| l.contains(p)))
                .count()
        };
        let journal = eventually(SETTLE, || self.journal(), |j| matching(j) >= count)?;
        ensure!(
            matching(&journal) >= count,
            "journalctl -u {SERVICE} did not show {count} line(s) with {parts:?} within {SETTLE:?}"
        );
        Ok(())
    }

    /// `gateway-agent status --output json` inside the container: the pins, read back.
    fn status(&self) -> Result<serde_json::Value> {
        let out = self
            .container
            .run(["gateway-agent", "status", "--output", "json"])?;
        serde_json::from_str(&out).with_context(|| format!("gateway-agent status printed {out}"))
    }

    /// A new connection from the client to `vip`, answered by one of w1's pods, which saw
    /// the client's own address.
    fn served(&self, vip: Ipv4Addr) -> Result<Answer> {
        let body = self
            .lab
            .client()
            .curl(&format!("http://{vip}/"), None)
            .with_context(|| format!("a new connection to {vip}"))?;
        let answer = Answer::parse(&body)?;
        ensure!(
            self.lab.pod(&answer.backend).node() == NODE && answer.client.ip() == CLIENT,
            "{vip} answered {answer:?}: not a pod of {NODE} seeing the client {CLIENT}"
        );
        Ok(answer)
    }

    /// Replaces the objects file inside the container as an editor does (a new file renamed
    /// over the old), so the agent never reads half a file.
    fn edit_objects(&self, spec: &LabSpec) -> Result<()> {
        let new = self.container.path(&format!("{OBJECTS}.new"));
        fs::write(&new, lab::config_yaml(spec)?)
            .with_context(|| format!("writing {}", new.display()))?;
        let file = self.container.path(OBJECTS);
        fs::rename(&new, &file)
            .with_context(|| format!("renaming {} to {}", new.display(), file.display()))
    }
}

/// The reference with w2's pod not ready: only w1 is eligible, so it announces both VIPs.
fn systemd_spec(prefix: &str) -> LabSpec {
    let mut spec = LabSpec::reference(prefix);
    spec.pod_mut("envoy-w2a").ready = false;
    spec
}

/// `spec` with one more service on `vip`, port 80 to w1's pods.
fn with_service(mut spec: LabSpec, name: &str, vip: Ipv4Addr) -> LabSpec {
    let mut added = spec.service_mut("cilium-gateway-gateway-external").clone();
    added.name = name.into();
    added.requested_ip = Some(vip);
    added.ports = vec![PortSpec::tcp("http", 80, lab::HTTP_PORT)];
    spec.services.push(added);
    spec
}

#[test]
fn unit_serves_under_a_real_systemd_as_the_readme_installs_it() -> Result<()> {
    let root = debian_root::bootable_root()?;
    let spec = systemd_spec(&lab::unique_prefix("gwsd"));
    let lab = Lab::up(spec.clone())?;
    let install = lab.run_dir().join("install");
    stage_install(&install, &lab.config_yaml()?)?;
    // The node's bpffs, as systemd would have mounted it at boot.
    let bpffs = lab.bpffs_dir(NODE).to_owned();
    fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    let capabilities = unit()?.capabilities()?;
    let capabilities: Vec<&str> = capabilities.iter().map(String::as_str).collect();
    let container = Container::boot(&ContainerSpec {
        name: &format!("{}-{NODE}", lab.prefix()),
        hostname: NODE,
        root: &root,
        netns: lab.node(NODE).ns(),
        binds: &[
            Bind {
                outside: &bpffs,
                inside: "/sys/fs/bpf",
                read_only: false,
            },
            Bind {
                outside: &install,
                inside: INSTALL_DIR,
                read_only: true,
            },
        ],
        capabilities: &capabilities,
        system_calls: &AGENT_SYSTEM_CALLS,
        log: &lab.run_dir().join("logs").join("container.log"),
    })?;
    let node = SystemdNode {
        lab: &lab,
        container: &container,
    };
    // Whatever fails, say what systemd says about the service.
    operate(&node, spec).map_err(|e| anyhow!("{e:#}\n{}", container.report(SERVICE)))
}

/// What an operator does with the unit, and what each step must show.
fn operate(node: &SystemdNode, spec: LabSpec) -> Result<()> {
    let c = node.container;
    let systemd = c.run(["systemctl", "--version"])?;
    println!("{}", systemd.lines().next().unwrap_or_default());

    // Installed and started as the README says.
    c.shell(&format!("cd {INSTALL_DIR}\n{}", readme_install_script()?))
        .context("the README's install steps")?;
    node.wait_for_journal(&[&start_line()], 1)?;
    ensure!(
        c.property(SERVICE, "ActiveState")? == "active",
        "after `systemctl enable --now`"
    );
    node.served(VIP_EXTERNAL)?;
    let status = node.status()?;
    ensure!(
        status["agent"]["running"] == true
            && status["agent"]["node_name"] == NODE
            && status["agent"]["pid"] == node.main_pid()?,
        "gateway-agent status does not show the agent systemd runs: {}",
        status["agent"]
    );
    let attached: BTreeSet<String> = status["attachments"]
        .as_array()
        .context("status: attachments")?
        .iter()
        .filter(|a| a["attached"] == true)
        .map(|a| {
            format!(
                "{}/{}",
                a["interface"].as_str().unwrap_or("?"),
                a["direction"].as_str().unwrap_or("?")
            )
        })
        .collect();
    ensure!(
        attached == BTreeSet::from(["ens18/ingress".to_owned(), "ens18/egress".to_owned()]),
        "status shows the programs on {attached:?}, not on ens18 both ways"
    );

    // A long-lived connection, which every later step must leave on its backend.
    let mut held = node
        .lab
        .client()
        .ns()
        .connect_tcp(SocketAddr::from((VIP_EXTERNAL, 80)), Duration::from_secs(5))?;
    held.set_read_timeout(Some(Duration::from_secs(5)))?;
    let backend = request(&mut held, VIP_EXTERNAL)?.backend;
    let still_held = |held: &mut TcpStream, when: &str| -> Result<()> {
        let answer = request(held, VIP_EXTERNAL)
            .with_context(|| format!("the long-lived connection {when}"))?;
        ensure!(
            answer.backend == backend,
            "the long-lived connection moved from {backend} to {} {when}",
            answer.backend
        );
        Ok(())
    };

    // `systemctl reload` re-reads the file: the reload it triggers serves the added service.
    let pid = node.main_pid()?;
    let reloaded = with_service(spec, "reload-added", SPARE_VIPS[0]);
    node.edit_objects(&reloaded)?;
    c.systemctl(&["reload", SERVICE])?;
    let vip = SPARE_VIPS[0].to_string();
    node.wait_for_journal(&["(SIGHUP)", &vip], 1)?;
    node.served(SPARE_VIPS[0])?;
    ensure!(
        node.main_pid()? == pid,
        "`systemctl reload` restarted the agent"
    );

    // Editing the file is enough.
    let edited = with_service(reloaded, "edit-added", SPARE_VIPS[1]);
    let frontends: usize = edited.services.iter().map(|s| s.ports.len()).sum();
    node.edit_objects(&edited)?;
    node.wait_for_journal(&["(file changed)", &SPARE_VIPS[1].to_string()], 1)?;
    node.served(SPARE_VIPS[1])?;

    // Metrics turned on as the README says: the flag in /etc/default, the drop-in that
    // allows an IPv4 socket and lets the client in, and `systemctl restart`, which adopts
    // the datapath: the held connection keeps its backend.
    let metrics = SocketAddr::from((node.lab.node(NODE).addr(), METRICS_PORT));
    c.shell(&format!(
        "sed -i 's|^GATEWAY_AGENT_ARGS=\"\\(.*\\)\"$|GATEWAY_AGENT_ARGS=\"\\1 --metrics-address {metrics}\"|' \
         /etc/default/gateway-agent\n{}",
        readme_metrics_script(CLIENT)?
    ))
    .context("the README's metrics steps")?;
    node.wait_for_journal(&[&start_line(), "adopted the pinned state"], 1)?;
    let exposition = node
        .lab
        .client()
        .curl(&format!("http://{metrics}/metrics"), None)
        .context("metrics under the unit with the README's drop-in")?;
    ensure!(
        exposition.contains("gateway_build_info{version=")
            && exposition.contains("gateway_reloads_total{result=\"applied\"} 0"),
        "{exposition}"
    );
    ensure!(
        node.main_pid()? != pid,
        "`systemctl restart` left the agent running"
    );
    still_held(&mut held, "after `systemctl restart`")?;
    node.served(VIP_EXTERNAL)?;

    // A crash: systemd restarts the agent (Restart=on-failure), and the datapath serves
    // while it is down.
    c.systemctl(&["kill", "-s", "KILL", SERVICE])?;
    let down = eventually(
        SETTLE,
        || c.property(SERVICE, "SubState"),
        |s| s == "auto-restart",
    )?;
    ensure!(
        down == "auto-restart",
        "after SIGKILL the service is {down:?}, not waiting to restart"
    );
    node.served(VIP_EXTERNAL)?;
    still_held(&mut held, "while the killed agent waits to restart")?;
    // RestartSec=5s: the requests above were served in the meantime, not after it.
    let after = c.property(SERVICE, "SubState")?;
    ensure!(
        after == "auto-restart",
        "the agent was restarted ({after}) before the requests without it finished"
    );
    let restarts = eventually(SETTLE, || c.property(SERVICE, "NRestarts"), |n| n == "1")?;
    ensure!(restarts == "1", "NRestarts={restarts} after one crash");
    node.wait_for_journal(&[&start_line(), "adopted the pinned state"], 2)?;
    ensure!(
        c.property(SERVICE, "ActiveState")? == "active",
        "after the restart"
    );
    still_held(&mut held, "after the restart that followed the crash")?;

    // `systemctl stop` leaves the datapath serving, and the pins readable.
    c.systemctl(&["stop", SERVICE])?;
    ensure!(
        c.property(SERVICE, "ActiveState")? == "inactive",
        "after `systemctl stop`"
    );
    // The second time it says so: the first was `systemctl restart`'s stop.
    node.wait_for_journal(&["the datapath stays attached and keeps serving"], 2)?;
    node.served(VIP_EXTERNAL)?;
    node.served(SPARE_VIPS[1])?;
    still_held(&mut held, "after `systemctl stop`")?;
    let status = node.status()?;
    ensure!(
        status["agent"]["running"] == false && status["frontends"] == frontends,
        "gateway-agent status after stop, {frontends} frontends expected: {status:#}"
    );
    Ok(())
}

/// The shell line the unit's first ExecStartPre runs outside the sandbox, with systemd's
/// `%%` unescaped.
fn unit_bpffs_guard(unit: &Unit) -> Result<String> {
    let pre = unit.values("Service", "ExecStartPre");
    let line = pre.first().context("the unit has no ExecStartPre")?;
    let script = line
        .strip_prefix("+/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .with_context(|| format!("ExecStartPre is not `+/bin/sh -c '...'`: {line}"))?;
    let script = script.replace("%%", "%");
    ensure!(
        !script.contains('$') && !script.contains('\''),
        "ExecStartPre needs more unescaping than this test does: {line}"
    );
    Ok(script)
}

fn manifests() -> Result<Vec<Value>> {
    let text = read(DAEMONSET)?;
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml = serde_yaml_ng::Value::deserialize(doc).context(DAEMONSET)?;
            serde_json::to_value(yaml).context(DAEMONSET)
        })
        .collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    match docs
        .iter()
        .filter(|d| d["kind"] == kind)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [one] => Ok(one),
        other => bail!("{DAEMONSET}: {} {kind} documents, not one", other.len()),
    }
}

fn named<'a>(list: &'a Value, name: &str) -> Result<&'a Value> {
    list.as_array()
        .and_then(|items| items.iter().find(|i| i["name"] == name))
        .with_context(|| format!("{DAEMONSET}: nothing named {name} in {list}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The command of the DaemonSet's init container that mounts the node's bpffs.
fn daemonset_bpffs_guard(pod: &Value) -> Result<String> {
    let init = named(&pod["initContainers"], "mount-bpffs")?;
    match strings(&init["command"]).as_slice() {
        ["/bin/sh", "-c", script] => {
            // Kubernetes expands $(VAR) in commands: keep the line free of it.
            ensure!(!script.contains('$'), "mount-bpffs: {script}");
            Ok((*script).to_owned())
        }
        other => bail!("mount-bpffs does not run `/bin/sh -c LINE`: {other:?}"),
    }
}

#[test]
fn bpffs_guards_mount_the_node_bpffs_once() -> Result<()> {
    let docs = manifests()?;
    let pod = &only(&docs, "DaemonSet")?["spec"]["template"]["spec"];
    let guards = [unit_bpffs_guard(&unit()?)?, daemonset_bpffs_guard(pod)?];
    assert_eq!(
        guards[0], guards[1],
        "the unit and the init container mount the bpffs differently"
    );
    // Twice, in a private mount namespace: whether or not this machine has a bpffs at
    // /sys/fs/bpf, afterwards there is exactly one, and a second run stacks no other.
    let script = format!(
        "{0}\n{0}\nstat -f -c %T /sys/fs/bpf\ngrep -c ' /sys/fs/bpf bpf ' /proc/self/mounts",
        guards[0]
    );
    let out = checked(Command::new("unshare").args([
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        &script,
    ]))?;
    assert_eq!(out, "bpf_fs\n1\n");
    Ok(())
}

#[test]
fn daemonset_runs_the_agent_on_every_node_in_the_node_network() -> Result<()> {
    let docs = manifests()?;
    let namespace = only(&docs, "Namespace")?["metadata"]["name"]
        .as_str()
        .context("Namespace name")?;
    let ds = only(&docs, "DaemonSet")?;
    let account = only(&docs, "ServiceAccount")?;
    let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding"];
    for doc in docs
        .iter()
        .filter(|d| !cluster_scoped.iter().any(|k| d["kind"] == *k))
    {
        assert_eq!(doc["metadata"]["namespace"], namespace, "{doc}");
    }
    let spec = &ds["spec"];
    assert_eq!(
        spec["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        pod["tolerations"]
            .as_array()
            .is_some_and(|t| t.contains(&json!({"operator": "Exists"}))),
        "not tolerated everywhere: {}",
        pod["tolerations"]
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64();
    assert!(grace.is_some_and(|g| g <= 30), "grace period {grace:?}");

    let agent = named(&pod["containers"], "agent")?;
    // Metrics on, at the port the pod names `metrics` and its annotations point scrapers at.
    let args = strings(&agent["args"]);
    assert_eq!(args[..POD_RUN_ARGS.len()], POD_RUN_ARGS);
    assert_eq!(
        args[POD_RUN_ARGS.len()..],
        [
            "--metrics-address",
            "0.0.0.0:9655",
            "--cluster-key-file",
            "/etc/gateway-cluster/key",
            "--cgroup",
            "/run/gateway/cgroupv2"
        ]
    );
    // Hairpin: the node's root cgroup, from the node.
    assert_eq!(
        named(&agent["volumeMounts"], "cgroup")?,
        &json!({"name": "cgroup", "mountPath": "/run/gateway/cgroupv2", "readOnly": true})
    );
    assert_eq!(
        named(&pod["volumes"], "cgroup")?["hostPath"],
        json!({"path": "/sys/fs/cgroup", "type": "Directory"})
    );
    // Failover: the cluster's port, and its key from a Secret.
    assert_eq!(
        named(&agent["ports"], "cluster")?,
        &json!({"name": "cluster", "containerPort": 7951, "protocol": "UDP"})
    );
    assert_eq!(
        named(&agent["volumeMounts"], "cluster-key")?,
        &json!({"name": "cluster-key", "mountPath": "/etc/gateway-cluster", "readOnly": true})
    );
    assert_eq!(
        named(&pod["volumes"], "cluster-key")?["secret"],
        json!({"secretName": "gateway-cluster-key", "defaultMode": 256})
    );
    assert_eq!(
        named(&agent["ports"], "metrics")?,
        &json!({"name": "metrics", "containerPort": 9655, "protocol": "TCP"})
    );
    assert_eq!(
        spec["template"]["metadata"]["annotations"],
        json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "9655",
            "prometheus.io/path": "/metrics"
        })
    );
    assert_eq!(
        named(&agent["env"], "NODE_NAME")?["valueFrom"],
        json!({"fieldRef": {"fieldPath": "spec.nodeName"}})
    );
    assert_eq!(
        named(&agent["env"], "POD_NAMESPACE")?["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    // The account's token is mounted: the agent reads the cluster with it.
    assert_ne!(account["automountServiceAccountToken"], false);
    assert_ne!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        strings(&agent["readinessProbe"]["exec"]["command"]),
        ["gateway-agent", "status", "--bpffs", "/sys/fs/bpf/gateway"]
    );
    assert_eq!(
        agent["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );

    // Unprivileged, with at least the capabilities the unit's test proves enough.
    let security = &agent["securityContext"];
    assert_eq!(security["privileged"], false);
    let added: BTreeSet<&str> = strings(&security["capabilities"]["add"])
        .into_iter()
        .collect();
    for capability in unit()?.capabilities()? {
        let name = capability.trim_start_matches("CAP_");
        assert!(added.contains(name), "the agent container lacks {name}");
    }

    // The node's bpffs, which the privileged init container mounts (Bidirectional, so it
    // outlives the pod) and the agent sees, the node's root cgroup (hairpin) and the cluster's
    // key; nothing else (the objects come from the API server, not a ConfigMap).
    let bpffs = named(&pod["volumes"], "bpffs")?;
    assert_eq!(
        bpffs["hostPath"],
        json!({"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"})
    );
    let init = named(&pod["initContainers"], "mount-bpffs")?;
    assert_eq!(init["securityContext"]["privileged"], true);
    assert_eq!(init["image"], agent["image"]);
    assert_eq!(
        named(&init["volumeMounts"], "bpffs")?,
        &json!({"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"})
    );
    assert_eq!(
        named(&agent["volumeMounts"], "bpffs")?,
        &json!({"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "HostToContainer"})
    );
    assert_eq!(
        strings(
            &pod["volumes"]
                .as_array()
                .map(|v| v.iter().map(|v| v["name"].clone()).collect())
                .unwrap_or(Value::Null)
        ),
        ["cgroup", "bpffs", "cluster-key"]
    );
    assert!(
        docs.iter().all(|d| d["kind"] != "ConfigMap"),
        "no objects file any more"
    );
    Ok(())
}

/// The rules of the one `kind` (ClusterRole or Role) as (group, resource, verb) triples.
fn rules(docs: &[Value], kind: &str) -> Result<BTreeSet<(String, String, String)>> {
    let mut triples = BTreeSet::new();
    for rule in only(docs, kind)?["rules"].as_array().context("rules")? {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    triples.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
                }
            }
        }
    }
    Ok(triples)
}

fn triples(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect()
}

/// What the agent does with the API, and nothing more: it watches what it serves from,
/// patches the status of Services and pools, records Events, and holds a Lease in its own
/// namespace.
const CLUSTER_RULES: [(&str, &str, &str); 18] = [
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "nodes", "get"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("discovery.k8s.io", "endpointslices", "get"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("cilium.io", "ciliumloadbalancerippools", "get"),
    ("cilium.io", "ciliumloadbalancerippools", "list"),
    ("cilium.io", "ciliumloadbalancerippools", "watch"),
    ("cilium.io", "ciliuml2announcementpolicies", "get"),
    ("cilium.io", "ciliuml2announcementpolicies", "list"),
    ("cilium.io", "ciliuml2announcementpolicies", "watch"),
    ("", "services/status", "patch"),
    ("cilium.io", "ciliumloadbalancerippools/status", "patch"),
    ("events.k8s.io", "events", "create"),
];
const LEASE_RULES: [(&str, &str, &str); 3] = [
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

#[test]
fn daemonset_grants_exactly_what_the_agent_uses() -> Result<()> {
    let docs = manifests()?;
    assert_eq!(rules(&docs, "ClusterRole")?, triples(&CLUSTER_RULES));
    assert_eq!(rules(&docs, "Role")?, triples(&LEASE_RULES));
    let account = &only(&docs, "ServiceAccount")?["metadata"];
    let namespace = &account["namespace"];
    for (binding, role) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let binding = only(&docs, binding)?;
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role,
                   "name": only(&docs, role)?["metadata"]["name"]})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": account["name"], "namespace": namespace}])
        );
    }
    Ok(())
}

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE]` as `kubeconfig`'s user, in `namespace`.
fn can_i(
    api: &KubeApi,
    kubeconfig: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> Result<bool> {
    let what = match resource.split_once('/') {
        Some((resource, sub)) => format!("{resource} --subresource={sub}"),
        None => resource.to_owned(),
    };
    // `can-i` exits 1 for "no".
    let out = api.in_ns(&[
        "sh",
        "-c",
        &format!(
            "kubectl --kubeconfig {kubeconfig} auth can-i {verb} {what} -n {namespace} || true"
        ),
    ])?;
    match out.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!("kubectl auth can-i {verb} {what}: {other}"),
    }
}

#[test]
fn deployment_applies_to_a_real_api_server_and_its_account_can_do_what_the_agent_does_only()
-> Result<()> {
    let Some(assets) = kube_api::assets_or_skip("deployment_applies_to_a_real_api_server") else {
        return Ok(());
    };
    let api = KubeApi::own(&assets)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // A dry run cannot create the namespace its other objects go to.
    api.ensure_namespace("gateway-system")?;
    for file in [CRDS, DAEMONSET] {
        let path = root.join(file).display().to_string();
        // Checked by the server (schemas, RBAC objects, the DaemonSet's pod) before anything
        // is stored, then stored.
        api.kubectl(&["apply", "--dry-run=server", "-f", &path])?;
        api.kubectl(&["apply", "-f", &path])?;
        if file == CRDS {
            api.install_crds()?;
        }
    }
    // The agent's own token, as the kubelet would mount it.
    let token = api.kubectl(&["create", "token", "gateway-agent", "-n", "gateway-system"])?;
    let kubeconfig = api.dir().join("agent.kubeconfig");
    api.write_kubeconfig(&kubeconfig, token.trim())?;
    let kubeconfig = kubeconfig.display().to_string();
    for (group, resource, verb) in CLUSTER_RULES {
        let resource = if group.is_empty() {
            resource.to_owned()
        } else {
            match resource.split_once('/') {
                Some((plural, sub)) => format!("{plural}.{group}/{sub}"),
                None => format!("{resource}.{group}"),
            }
        };
        assert!(
            can_i(&api, &kubeconfig, verb, &resource, "default")?,
            "{verb} {resource}"
        );
    }
    for (_, resource, verb) in LEASE_RULES {
        let resource = format!("{resource}.coordination.k8s.io");
        assert!(
            can_i(&api, &kubeconfig, verb, &resource, "gateway-system")?,
            "{verb} {resource}"
        );
        assert!(
            !can_i(&api, &kubeconfig, verb, &resource, "default")?,
            "{verb} {resource} elsewhere"
        );
    }
    for (verb, resource) in [
        ("update", "services"),
        ("patch", "services"),
        ("delete", "services"),
        ("create", "services"),
        ("update", "services/status"),
        ("patch", "nodes"),
        ("list", "secrets"),
        ("list", "pods"),
        ("patch", "ciliuml2announcementpolicies.cilium.io/status"),
        ("delete", "ciliumloadbalancerippools.cilium.io"),
        ("create", "events"),
        ("patch", "events.events.k8s.io"),
        ("delete", "leases.coordination.k8s.io"),
    ] {
        assert!(
            !can_i(&api, &kubeconfig, verb, resource, "gateway-system")?,
            "{verb} {resource} is not used"
        );
    }
    // With only that, the agent reads the cluster (every kind, discovery included).
    let binary = agent::binary()?.display().to_string();
    let out = api.in_ns(&[&binary, "check", "--kubeconfig", &kubeconfig])?;
    assert!(
        out.starts_with(&format!("kubernetes {}: valid", api.url())),
        "{out}"
    );
    Ok(())
}

/// `NAME: &str = "VALUE";` in Rust source.
fn rust_constant(source: &str, name: &str) -> Result<String> {
    let prefix = format!("const {name}: &str = \"");
    source
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix)?.strip_suffix("\";"))
        .map(str::to_owned)
        .with_context(|| format!("no `{prefix}...\";`"))
}

#[test]
fn dockerfile_builds_as_xtask_setup_installs() -> Result<()> {
    let dockerfile = read(DOCKERFILE)?;
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let has = |line: &str| lines.contains(&line);

    let linker = rust_constant(&read(SETUP)?, "BPF_LINKER_VERSION")?;
    assert!(
        has(&format!("ARG BPF_LINKER_VERSION={linker}")),
        "{DOCKERFILE} does not build bpf-linker {linker}, the version {SETUP} installs"
    );
    assert!(dockerfile.contains("cargo install bpf-linker --version \"$BPF_LINKER_VERSION\""));
    assert!(has(
        "RUN rustup toolchain install nightly --profile minimal --component rust-src"
    ));

    let manifest = read("Cargo.toml")?;
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \"")?.strip_suffix('"'))
        .context("no rust-version in Cargo.toml")?;
    assert!(
        has(&format!("FROM rust:{rust_version}-bookworm AS builder")),
        "{DOCKERFILE} does not build with Rust {rust_version}"
    );
    assert!(has("RUN cargo build --release -p gateway-agent"));
    assert!(has("FROM debian:12-slim"));
    assert!(has(&format!(
        "COPY --from=builder /src/target/release/gateway-agent {INSTALLED_AGENT}"
    )));
    assert!(has(r#"ENTRYPOINT ["gateway-agent"]"#));
    let cmd = format!(
        "CMD [{}]",
        POD_RUN_ARGS.map(|a| format!("\"{a}\"")).join(", ")
    );
    assert!(has(&cmd), "{DOCKERFILE} lacks `{cmd}`");
    Ok(())
}
