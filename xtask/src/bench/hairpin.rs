//! What hairpin's socket hooks cost the node's other traffic: `connect()`s per second to an
//! address that is not a VIP, by a process in the node's cgroup (where the agent attached
//! the hooks) and by the same process outside it (no hooks), in rotating order. UDP
//! `connect()` sends no packet, so the system calls, the hook's run included, are all that
//! is measured: the worst case for the hook's share.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
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
    /// The connect hook's own run time per `connect()` to the non-VIP address, as the
    /// kernel's BPF statistics count it.
    pub hook_ns: f64,
    /// A `connect()` loop iteration without the hooks, in ns (`1e9 / without_hooks`).
    pub connect_ns: f64,
}

/// Runs and nanoseconds of the connect hook the agent pinned under `bpffs`.
fn hook_totals(bpffs: &Path) -> Result<(u64, u64)> {
    // The agent pins its links by program name (gateway_common::program_names).
    let pin = bpffs.join("hairpin").join("gw_connect4");
    let link = FdLink::from(
        PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?,
    );
    let id = link.info().context("link info")?.program_id();
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} of {}", pin.display()))?;
    Ok((info.run_count(), info.run_time().as_nanos() as u64))
}

fn rate(cmd: &mut Command) -> Result<f64> {
    let out = process::checked(cmd)?;
    out.trim()
        .strip_prefix("connects_per_sec=")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("hairpin-client printed {out:?}"))
}

pub fn run(
    lab: &Lab,
    binary: &Path,
    client: &Path,
    rounds: usize,
    seconds: u64,
) -> Result<HairpinCost> {
    let config = agent::write_config(lab, &lab.config_yaml()?)?;
    let node = lab.node(NODE);
    let agent = Agent::launch(lab, NODE, &config, binary, node.bpffs_dir(), &[])?;
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
    let (runs, ns) = {
        // Statistics stay on while this fd is open, and only then.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let before = hook_totals(node.bpffs_dir())?;
        rate(&mut node.command_in_cgroup(node.ns(), &args))?;
        let after = hook_totals(node.bpffs_dir())?;
        (after.0 - before.0, after.1 - before.1)
    };
    agent.stop();
    let (with_hooks, without_hooks) = (median(&with), median(&without));
    Ok(HairpinCost {
        rounds,
        seconds,
        with_hooks,
        without_hooks,
        ratio: with_hooks / without_hooks.max(1.0),
        hook_ns: ns as f64 / runs.max(1) as f64,
        connect_ns: 1e9 / without_hooks.max(1.0),
    })
}
