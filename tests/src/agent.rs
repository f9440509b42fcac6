//! The gateway agent running on a lab node, and its CLI run there.

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
}

impl Agent {
    /// Starts the agent on `node` with `config` and waits until it serves.
    pub fn start(lab: &Lab, node: &str, config: &Path) -> Result<Self> {
        let binary = binary()?;
        let n: &Node = lab.node(node);
        let bpffs = n.bpffs_dir().to_owned();
        let args: Vec<String> = vec![
            binary.display().to_string(),
            "run".into(),
            "--config".into(),
            config.display().to_string(),
            "--node-name".into(),
            node.into(),
            "--bpffs".into(),
            bpffs.display().to_string(),
        ];
        let log_before =
            std::fs::read_to_string(lab.run_dir().join("logs").join(format!("agent-{node}.log")))
                .unwrap_or_default();
        let process = lab.spawn(n.ns(), &format!("agent-{node}"), &args)?;
        let mut agent = Self {
            binary,
            node: node.into(),
            ns: n.ns().name().into(),
            bpffs,
            process,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            agent.process.ensure_running()?;
            let log = agent.process.log();
            if log[log_before.len().min(log.len())..].contains("programs on") {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!("agent on {node} not serving after {START_TIMEOUT:?}:\n{log}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn log(&self) -> String {
        self.process.log()
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
