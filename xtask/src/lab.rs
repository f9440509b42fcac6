//! `cargo xtask lab up|down`: the reference topology for trying things by hand. It stays up
//! after `lab up` exits; `lab down` removes it from any shell.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gateway_tests::lab::{
    BRIDGE, CLIENT_IFACE, HTTP_PORT, Lab, LabSpec, NODE_HTTP_PORT, NODE_UPLINK, POD_IFACE, SEGMENT,
    SEGMENT_PREFIX_LEN, VIP_EXTERNAL,
};

const DEFAULT_PREFIX: &str = "gwlab";

#[derive(Subcommand)]
pub enum Action {
    /// Build the reference topology, write its objects to target/lab/config.yaml, leave it up
    Up {
        /// Namespace name prefix (lowercase letters and digits)
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Remove the lab: processes, namespaces, the bpffs and its pins, the run directory
    Down {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Run `AGENT teardown --bpffs DIR` in every node first
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

pub fn run(action: Action, workspace: &Path) -> Result<()> {
    match action {
        Action::Up { prefix } => up(&prefix, workspace),
        Action::Down { prefix, agent } => {
            Lab::down_by_prefix(&prefix, agent.as_deref())?;
            println!("lab {prefix} is down");
            Ok(())
        }
    }
}

fn up(prefix: &str, workspace: &Path) -> Result<()> {
    let lab = Lab::up(LabSpec::reference(prefix))?;
    let config = workspace.join("target").join("lab").join("config.yaml");
    if let Some(dir) = config.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&config, lab.config_yaml()?)
        .with_context(|| format!("writing {}", config.display()))?;
    print_summary(&lab, &config);
    lab.persist();
    Ok(())
}

fn print_summary(lab: &Lab, config: &Path) {
    let client = lab.client();
    let addrs: Vec<String> = client.addrs().iter().map(ToString::to_string).collect();
    println!(
        "lab {} is up; run dir {}",
        lab.prefix(),
        lab.run_dir().display()
    );
    println!(
        "  {:<22} segment  {BRIDGE} {SEGMENT}/{SEGMENT_PREFIX_LEN}",
        lab.segment().name()
    );
    println!(
        "  {:<22} client   {CLIENT_IFACE} {} {}",
        client.ns().name(),
        addrs.join(", "),
        client.mac()
    );
    for node in lab.nodes() {
        println!(
            "  {:<22} node {:<3} {NODE_UPLINK} {} {}  --bpffs {} --cgroup {}",
            node.ns().name(),
            node.name(),
            node.addr(),
            node.mac(),
            node.bpffs_dir().display(),
            node.cgroup().display()
        );
    }
    for pod in lab.pods() {
        println!(
            "  {:<22} pod on {:<3} {POD_IFACE} {} (node side {})",
            pod.ns().name(),
            pod.node(),
            pod.addr(),
            pod.host_iface()
        );
    }
    println!("objects: {}", config.display());
    let w1 = lab.node("w1");
    let client_ns = client.ns().name();
    println!("try:");
    println!(
        "  ip netns exec {w1ns} target/debug/gateway-agent run --config {} --node-name w1 --bpffs {} --cgroup {} &",
        config.display(),
        w1.bpffs_dir().display(),
        w1.cgroup().display(),
        w1ns = w1.ns().name()
    );
    println!(
        "  ip netns exec {w1ns} target/debug/gateway-agent lb list --bpffs {}",
        w1.bpffs_dir().display(),
        w1ns = w1.ns().name()
    );
    println!("  ip netns exec {client_ns} curl http://{VIP_EXTERNAL}/");
    println!(
        "  ip netns exec {client_ns} curl http://{}:{NODE_HTTP_PORT}/",
        w1.addr()
    );
    println!("  ip netns exec {client_ns} arping -c 1 -I {CLIENT_IFACE} {VIP_EXTERNAL}");
    println!(
        "  ip netns exec {} curl http://{}:{HTTP_PORT}/",
        w1.ns().name(),
        lab.pod("envoy-w1a").addr()
    );
    println!(
        "  ip netns exec {} tcpdump -ni {NODE_UPLINK}",
        w1.ns().name()
    );
    println!("  cargo xtask lab down --agent target/debug/gateway-agent");
}
