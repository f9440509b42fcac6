//! What hairpin's socket hooks cost the node's other traffic: `connect()`s per second to an
//! address that is not a VIP, by a process in the node's cgroup (where the agent attached
//! the hooks) and by the same process outside it (no hooks), in rotating order. UDP
//! `connect()` sends no packet, so the system calls, the hook's run included, are all that
//! is measured: the worst case for the hook's share.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use gateway_tests::agent::{self, Agent};
use gateway_tests::lab::{self, Lab};
use gateway_tests::process;
use serde::Serialize;

use super::{e2e::NODE, median};

#[derive(Serialize)]
pub struct HairpinCost {
    pub rounds: usize,
    pub seconds: u64,
    /// Median `connect()`s per second with the hooks attached to the process's cgroup.
    pub with_hooks: f64,
    /// The same, outside the cgroup.
    pub without_hooks: f64,
    /// `with_hooks / without_hooks`.
    pub ratio: f64,
}

fn rate(cmd: &mut Command) -> Result<f64> {
    let out = process::checked(cmd)?;
    out.trim()
        .strip_prefix("connects_per_sec=")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("hairpin-client printed {out:?}"))
}

pub fn run(lab: &Lab, binary: &Path, client: &Path, rounds: usize, seconds: u64) -> Result<HairpinCost> {
    let config = agent::write_config(lab, &lab.config_yaml()?)?;
    let node = lab.node(NODE);
    let agent = Agent::launch(lab, NODE, &config, binary, &node.bpffs_dir().to_owned(), &[])?;
    // A pod's address: routed, never a VIP.
    let target = format!("{}:{}", lab.pods()[0].addr(), lab::HTTP_PORT);
    let args = [
        client.display().to_string(),
        "connect-rate".into(),
        target,
        seconds.to_string(),
    ];
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first: the VM's drift lands on both alike.
        for hooked in [round % 2 == 0, round % 2 != 0] {
            if hooked {
                with.push(rate(&mut node.command_in_cgroup(node.ns(), &args))?);
            } else {
                without.push(rate(&mut node.ns().command(&args))?);
            }
        }
    }
    agent.stop();
    let (with_hooks, without_hooks) = (median(&with), median(&without));
    Ok(HairpinCost {
        rounds,
        seconds,
        with_hooks,
        without_hooks,
        ratio: with_hooks / without_hooks.max(1.0),
    })
}
