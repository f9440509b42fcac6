//! The bpf filesystem the pins live on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where a host mounts its bpffs; the agent mounts it there when it is missing.
const HOST_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a bpf filesystem, mounting one at /sys/fs/bpf when `dir` is
/// below it and nothing is mounted there yet.
pub fn prepare(dir: &Path) -> Result<()> {
    let host = Path::new(HOST_BPFFS);
    if dir.starts_with(host) && host.is_dir() && !is_bpffs(host) {
        mount(
            Some("bpf"),
            host,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpf filesystem at {HOST_BPFFS}"))?;
    }
    let existing: PathBuf = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .into();
    if !is_bpffs(&existing) {
        bail!(
            "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf DIR` or choose a \
             --bpffs below {HOST_BPFFS})",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}
