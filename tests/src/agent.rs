//! The gateway agent running on a lab node, and its CLI run there.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::lab::{Lab, Node};
use crate::process::Process;

/// How long the agent may take to load, program and attach.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent binary cargo built beside the running one: `target/<profile>/gateway-agent`,
/// seen from a test (`target/<profile>/deps/<test>`) or from xtask (`target/<profile>/xtask`).
pub fn binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running binary")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("gateway-agent"))
        .collect();
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!("no gateway-agent at {candidates:?}: run `cargo build -p gateway-agent` first")
        })
}

/// Writes the lab's objects to `run_dir/config.yaml` and returns the path.
pub fn write_config(lab: &Lab, yaml: &str) -> Result<PathBuf> {
    let path = lab.run_dir().join("config.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `gateway-agent run` on one node, stopped (SIGTERM) when dropped.
pub struct Agent {
    binary: PathBuf,
    node: String,
    ns: String,
    bpffs: PathBuf,
    process: Process,
    /// Where this run's output starts in the (appended) log file.
    log_start: usize,
}

impl Agent {
    /// Starts the agent built beside this binary on `node` with `config`, pinning under the
    /// node's bpffs directory, and waits until it serves.
    pub fn start(lab: &Lab, node: &str, config: &Path) -> Result<Self> {
        let bpffs = lab.bpffs_dir(node).to_owned();
        Self::launch(lab, node, config, &binary()?, &bpffs, &[])
    }

    /// Starts the agent built beside this binary on `node` with `config` and `extra` flags
    /// (e.g. the cluster's), pinning under the node's bpffs directory, and waits until it
    /// serves.
    pub fn start_with(lab: &Lab, node: &str, config: &Path, extra: &[&str]) -> Result<Self> {
        let bpffs = lab.bpffs_dir(node).to_owned();
        Self::launch(lab, node, config, &binary()?, &bpffs, extra)
    }

    /// Starts the agent built beside this binary on `node`, reading the cluster through
    /// `kubeconfig` (see [`crate::kube_api`]), and waits until it serves.
    pub fn start_in_cluster(lab: &Lab, node: &str, kubeconfig: &Path) -> Result<Self> {
        Self::start_in_cluster_with(lab, node, kubeconfig, &[])
    }

    /// [`Agent::start_in_cluster`] with `extra` flags (`--load-balancer-class`, ...).
    pub fn start_in_cluster_with(
        lab: &Lab,
        node: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let bpffs = lab.bpffs_dir(node).to_owned();
        let kubeconfig = kubeconfig.display().to_string();
        Self::launch_reading(
            lab,
            node,
            &["--kubeconfig", &kubeconfig],
            &binary()?,
            &bpffs,
            extra,
        )
    }

    /// Starts `binary run` on `node` with `config`, pins under `bpffs`, with `extra` flags,
    /// and waits until it serves.
    pub fn launch(
        lab: &Lab,
        node: &str,
        config: &Path,
        binary: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let config = config.display().to_string();
        Self::launch_reading(lab, node, &["--config", &config], binary, bpffs, extra)
    }

    /// Starts `binary run` on `node` reading the objects as `objects` says (`--config FILE`
    /// or `--kubeconfig FILE`), pins under `bpffs`, with `extra` flags, and waits until it
    /// serves.
    pub fn launch_reading(
        lab: &Lab,
        node: &str,
        objects: &[&str],
        binary: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let n: &Node = lab.node(node);
        let mut args: Vec<String> = vec![binary.display().to_string(), "run".into()];
        args.extend(objects.iter().map(|a| a.to_string()));
        args.extend([
            "--node-name".into(),
            node.into(),
            "--bpffs".into(),
            bpffs.display().to_string(),
            // Never the default, the machine's own root cgroup.
            "--cgroup".into(),
            n.cgroup().display().to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let name = format!("agent-{node}");
        let log_before =
            std::fs::read_to_string(lab.run_dir().join("logs").join(format!("{name}.log")))
                .unwrap_or_default();
        let process = lab.spawn(n.ns(), &name, &args)?;
        let mut agent = Self {
            binary: binary.to_owned(),
            node: node.into(),
            ns: n.ns().name().into(),
            bpffs: bpffs.to_owned(),
            process,
            log_start: log_before.len(),
        };
        agent.wait_for_log("programs on", START_TIMEOUT)?;
        Ok(agent)
    }

    /// Waits until this run of the agent has logged a line containing `text`; returns the
    /// last such line.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().rev().find(|l| l.contains(text)) {
                return Ok(line.to_owned());
            }
            self.process.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "agent on {} did not log {text:?} within {timeout:?}:\n{}",
                    self.node,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until the agent has sent no gratuitous ARP for `quiet` (longer than the
    /// interval between its rounds): at 10,000 VIPs, the announcements of a start are tens
    /// of thousands of broadcast frames, which a measurement should not share the machine
    /// with.
    pub fn wait_announcements_sent(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let sent = || -> Result<u64> {
            let announcements = self.json(&["l2", "list"])?;
            let list = announcements
                .as_array()
                .context("`l2 list` is not a list")?;
            Ok(list.iter().filter_map(|a| a["garp_sent"].as_u64()).sum())
        };
        let deadline = Instant::now() + timeout;
        let (mut last, mut since) = (sent()?, Instant::now());
        loop {
            thread::sleep(Duration::from_millis(100));
            let now = sent()?;
            if now != last {
                (last, since) = (now, Instant::now());
            } else if last > 0 && since.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agent on {}: gratuitous ARP still going after {timeout:?} ({last} frames)",
                    self.node
                );
            }
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// What this run of the agent has logged so far.
    pub fn log(&self) -> String {
        let log = self.process.log();
        log.get(self.log_start..).unwrap_or_default().to_owned()
    }

    /// Runs `gateway-agent ARGS --bpffs DIR` in the node's namespace; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli(&self.binary, &self.ns, &self.bpffs, args)
    }

    /// Like [`Agent::cli`] with `--output json`, parsed.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = self.cli(&args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("parsing `{}` output: {out}", args.join(" ")))
    }

    /// The backend addresses (`ip:port`) programmed for `frontend` (`VIP:port/PROTO`).
    pub fn backends(&self, frontend: &str) -> Result<BTreeSet<String>> {
        let lb = self.json(&["lb", "list"])?;
        let mut backends = BTreeSet::new();
        for f in lb.as_array().context("lb list is not a list")? {
            if f["frontend"] == frontend {
                for b in f["backends"].as_array().context("backends")? {
                    backends.insert(b["address"].as_str().context("address")?.to_owned());
                }
            }
        }
        Ok(backends)
    }

    /// The reload `status` reports as refused (null when the last one was applied).
    pub fn refused_reload(&self) -> Result<Value> {
        Ok(self.json(&["status"])?["agent"]["rejected"].clone())
    }

    /// The VIPs this node answers ARP for.
    pub fn announced(&self) -> Result<Vec<Ipv4Addr>> {
        let l2 = self.json(&["l2", "list"])?;
        l2.as_array()
            .context("l2 list is not a list")?
            .iter()
            .map(|a| Ok(a["vip"].as_str().context("vip")?.parse()?))
            .collect()
    }

    /// A datapath counter from `status`.
    pub fn counter(&self, name: &str) -> Result<u64> {
        self.json(&["status"])?["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name}"))
    }

    /// Kills the agent without letting it clean up (SIGKILL), as a crash or OOM would.
    pub fn kill(mut self) -> Result<()> {
        kill(Pid::from_raw(self.process.pid() as i32), Signal::SIGKILL).context("SIGKILL")?;
        self.process.stop();
        Ok(())
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop(mut self) {
        self.process.stop();
    }

    /// Sends SIGHUP (reload) to the agent.
    pub fn reload(&self) -> Result<()> {
        kill(Pid::from_raw(self.process.pid() as i32), Signal::SIGHUP).context("SIGHUP")
    }
}

/// `gateway-agent ARGS --bpffs DIR` in namespace `ns`.
pub fn cli(binary: &Path, ns: &str, bpffs: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(binary)
        .args(args)
        .arg("--bpffs")
        .arg(bpffs);
    crate::process::checked(&mut cmd)
}
