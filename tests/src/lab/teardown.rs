//! Where a lab keeps its state on the machine, and removing all of it again.
//!
//! Teardown needs nothing but the prefix, so a fresh process (`cargo xtask lab down`) can
//! remove a lab another process built: namespaces are found by name, the node list is
//! read from the run directory, the bpffs is found by its path.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::netns::{self, NETNS_DIR};
use crate::process;

/// Every lab's run directory (configs, logs, the bpffs) lives below this, away from the
/// source tree.
pub const RUN_ROOT: &str = "/run/gateway-lab";
/// The agent's own teardown should take seconds; past this it is hung.
const AGENT_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix)
}

pub(crate) fn bpffs_root(prefix: &str) -> PathBuf {
    run_dir(prefix).join("bpffs")
}

/// Lists the lab's nodes, one per line, for a later teardown's agent hook.
fn nodes_file(prefix: &str) -> PathBuf {
    run_dir(prefix).join("nodes")
}

pub(crate) fn namespace(prefix: &str, role: &str) -> String {
    format!("{prefix}-{role}")
}

/// The lab's namespaces. Prefixes are letters and digits only, so `{prefix}-` cannot
/// match another lab's names.
fn namespaces(prefix: &str) -> Result<Vec<String>> {
    let start = namespace(prefix, "");
    Ok(netns::list()?
        .into_iter()
        .filter(|name| name.starts_with(&start))
        .collect())
}

/// Whether anything of lab `prefix` exists.
pub(crate) fn exists(prefix: &str) -> Result<bool> {
    Ok(run_dir(prefix).exists() || !namespaces(prefix)?.is_empty())
}

pub(crate) fn record_nodes(prefix: &str, nodes: &[&str]) -> Result<()> {
    let path = nodes_file(prefix);
    fs::write(&path, nodes.join("\n")).with_context(|| format!("writing {}", path.display()))
}

/// Mounts the lab's one bpffs. It lives outside /sys because `ip netns exec` remounts /sys
/// for every command, which would hide a bpffs mounted there from all other commands.
pub(crate) fn mount_bpffs(prefix: &str) -> Result<()> {
    let dir = bpffs_root(prefix);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    mount(
        Some("bpf"),
        &dir,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpffs on {}", dir.display()))
}

/// Removes everything of lab `prefix`: stops every process in its namespaces, runs
/// `AGENT teardown --bpffs DIR` in each node when `agent` is given (failures ignored),
/// deletes the namespaces, kills what is left in the nodes' cgroups and removes them, unmounts the bpffs (dropping every pin, which frees the
/// programs, maps and links) and removes the run directory. Idempotent; reports every
/// step that failed after trying all of them.
pub fn down(prefix: &str, agent: Option<&Path>) -> Result<()> {
    let namespaces = namespaces(prefix)?;
    let mut failures = Vec::new();
    // A running agent would re-apply what its teardown removes: stop everything first.
    for ns in &namespaces {
        if let Err(e) = netns::kill_all(ns) {
            failures.push(e);
        }
    }
    if let Some(agent) = agent {
        run_agent_teardown(prefix, &namespaces, agent);
    }
    for ns in &namespaces {
        if let Err(e) = netns::delete(ns) {
            failures.push(e);
        }
    }
    if let Err(e) = super::cgroup::remove(prefix) {
        failures.push(e);
    }
    if let Err(e) = unmount_bpffs(prefix) {
        failures.push(e);
    }
    release_netns_dir();
    let dir = run_dir(prefix);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            failures.push(anyhow!(e).context(format!("removing {}", dir.display())))
        }
        _ => {}
    }
    // Shared by all labs: only goes once the last lab is gone.
    let _ = fs::remove_dir(RUN_ROOT);
    match failures.len() {
        0 => Ok(()),
        _ => Err(anyhow!(
            "tearing down lab {prefix}: {}",
            failures
                .iter()
                .map(|e| format!("{e:#}"))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

fn run_agent_teardown(prefix: &str, namespaces: &[String], agent: &Path) {
    let nodes = fs::read_to_string(nodes_file(prefix)).unwrap_or_default();
    for node in nodes.lines() {
        let ns = namespace(prefix, node);
        if !namespaces.contains(&ns) {
            continue;
        }
        let dir = bpffs_root(prefix).join(node);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(agent)
            .args(["teardown", "--bpffs"])
            .arg(&dir);
        let failure = match process::output_within(&mut cmd, AGENT_TEARDOWN_TIMEOUT) {
            Ok(out) if out.status.success() => continue,
            Ok(out) => format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("{e:#}"),
        };
        // The bpffs unmount below drops whatever the agent left pinned.
        eprintln!(
            "note: `{}` failed, continuing: {failure}",
            process::display(&cmd)
        );
    }
}

fn unmount_bpffs(prefix: &str) -> Result<()> {
    let dir = bpffs_root(prefix);
    if !is_mount_point(&dir)? {
        return Ok(());
    }
    match umount2(&dir, MntFlags::empty()) {
        // Something still has it open: detach it now, the kernel frees it after the last user.
        Err(Errno::EBUSY) => umount2(&dir, MntFlags::MNT_DETACH),
        other => other,
    }
    .with_context(|| format!("unmounting the bpffs {}", dir.display()))
}

/// `ip netns add` turns /run/netns into a bind mount of itself the first time and never
/// undoes it. Once no namespace is left, undo it so the lab leaves no mount behind. This is
/// safe against other users: unmounting is refused while any namespace is mounted below
/// it, and the directory reads the same with or without the bind.
fn release_netns_dir() {
    let dir = Path::new(NETNS_DIR);
    let empty = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty && is_mount_point(dir).unwrap_or(false) {
        let _ = umount2(dir, MntFlags::empty());
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // The fifth field is the mount point; lab paths need none of mountinfo's escapes.
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(mount_point) == path))
}

/// Tears the lab down when dropped, unless disarmed; also covers a lab half built by
/// `Lab::up` and a test that panics.
pub(crate) struct Guard {
    prefix: String,
    agent: Option<PathBuf>,
    armed: bool,
}

impl Guard {
    pub(crate) fn arm(prefix: &str, agent: Option<PathBuf>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            agent,
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = down(&self.prefix, self.agent.as_deref())
        {
            eprintln!("warning: {e:#}");
        }
    }
}
