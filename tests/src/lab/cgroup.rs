//! Every lab node's cgroup (v2): the agent of the node attaches its hairpin programs there
//! (`--cgroup`), and the tests run the node's "own processes" and its "pods" in it. Never
//! the machine's cgroup: one of the lab's own per node, `<cgroup2>/gateway-lab-<prefix>/<node>`,
//! whose processes are killed and which is removed on teardown.
//!
//! `ip netns exec` mounts a fresh /sys for its command, which hides /sys/fs/cgroup: as with
//! the bpffs, the lab mounts the cgroup2 hierarchy once more under its run directory, and
//! names the nodes' cgroups by that path, which every command sees.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::teardown::{is_mount_point, run_dir};

/// How long killed processes get to leave a cgroup before removing it is refused.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a host with the hybrid layout).
fn hierarchy() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    crate::container::mount_point(&mountinfo, |fstype, _| fstype == "cgroup2")
        .context("no cgroup2 file system is mounted")
}

fn parent_name(prefix: &str) -> String {
    format!("gateway-lab-{prefix}")
}

/// The lab's own mount of the cgroup2 hierarchy.
fn mount_dir(prefix: &str) -> PathBuf {
    run_dir(prefix).join("cgroup2")
}

/// Mounts the hierarchy under the lab's run directory (once), creates node `node`'s cgroup
/// and returns its directory as seen through that mount.
pub(crate) fn create(prefix: &str, node: &str) -> Result<PathBuf> {
    let mounted = mount_dir(prefix);
    if !is_mount_point(&mounted)? {
        fs::create_dir_all(&mounted).with_context(|| format!("creating {}", mounted.display()))?;
        mount(
            Some("cgroup2"),
            &mounted,
            Some("cgroup2"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting the cgroup2 hierarchy on {}", mounted.display()))?;
    }
    let dir = mounted.join(parent_name(prefix)).join(node);
    fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir)
}

/// Kills every process in the lab's cgroups, removes them and unmounts the lab's mount of
/// the hierarchy; nothing there is fine.
pub(crate) fn remove(prefix: &str) -> Result<()> {
    remove_cgroups(prefix)?;
    let mounted = mount_dir(prefix);
    if is_mount_point(&mounted)? {
        match umount2(&mounted, MntFlags::empty()) {
            Err(Errno::EBUSY) => umount2(&mounted, MntFlags::MNT_DETACH),
            other => other,
        }
        .with_context(|| format!("unmounting {}", mounted.display()))?;
    }
    Ok(())
}

fn remove_cgroups(prefix: &str) -> Result<()> {
    let dir = hierarchy()?.join(parent_name(prefix));
    let nodes = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in nodes {
        let node = entry?.path();
        if node.is_dir() {
            remove_one(&node)?;
        }
    }
    fs::remove_dir(&dir).with_context(|| format!("removing cgroup {}", dir.display()))
}

fn remove_one(dir: &std::path::Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = fs::read_to_string(&procs).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "cgroup {} still holds processes {}",
                dir.display(),
                pids.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        // Linux 5.14 and later: SIGKILL to every process in the cgroup.
        fs::write(dir.join("cgroup.kill"), "1")
            .with_context(|| format!("killing the processes of cgroup {}", dir.display()))?;
        thread::sleep(Duration::from_millis(20));
    }
    fs::remove_dir(dir).with_context(|| format!("removing cgroup {}", dir.display()))
}
