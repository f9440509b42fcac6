//! Attaching the hairpin programs (socket-level load balancing, see gateway-ebpf's
//! `hairpin`) to the cgroup `--cgroup` names, with links pinned under `<bpffs>/hairpin/` so
//! that they outlive the agent as the tcx links do. A restarted agent attaches its programs
//! afresh and renames the new link's pin over the old one, which detaches the old program:
//! for that moment both run, which is harmless (the second sees a backend, not a VIP, at
//! `connect()`, and a VIP, not a backend, at `getpeername()`). `teardown` unpins them.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink};
use gateway_common::program_names;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use crate::datapath::{Datapath, attach::detach};

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("hairpin")
}

/// `<bpffs>/hairpin/<program>`.
fn link_pin(bpffs: &Path, program: &str) -> PathBuf {
    links_dir(bpffs).join(program)
}

/// Opens `cgroup`, refusing anything but a cgroup v2 directory (on a host with the hybrid
/// layout, `/sys/fs/cgroup` is a tmpfs and the v2 hierarchy is `/sys/fs/cgroup/unified`).
fn open_cgroup(cgroup: &Path) -> Result<File> {
    let fs = statfs(cgroup).with_context(|| format!("--cgroup {}", cgroup.display()))?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        bail!(
            "--cgroup {} is not a cgroup v2 directory (on a host with the hybrid cgroup layout, \
             the v2 hierarchy is mounted at /sys/fs/cgroup/unified)",
            cgroup.display()
        );
    }
    File::open(cgroup).with_context(|| format!("opening --cgroup {}", cgroup.display()))
}

/// Attaches every hairpin program to `cgroup`, replacing the links a previous run pinned
/// (whatever cgroup they were attached to).
pub fn attach_all(datapath: &mut Datapath, bpffs: &Path, cgroup: &Path) -> Result<()> {
    let cgroup_file = open_cgroup(cgroup)?;
    let dir = links_dir(bpffs);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in program_names::HAIRPIN {
        let program = datapath.hairpin_program(name)?;
        let id = program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = program.take_link(id)?.try_into().context("cgroup link")?;
        // bpffs names cannot hold dots.
        let fresh = dir.join(format!("{name}-new"));
        if fresh.exists() {
            detach(&fresh)?;
        }
        link.pin(&fresh)
            .with_context(|| format!("pinning link {}", fresh.display()))?;
        let pin = link_pin(bpffs, name);
        fs::rename(&fresh, &pin)
            .with_context(|| format!("renaming {} to {}", fresh.display(), pin.display()))?;
    }
    Ok(())
}

/// The hairpin programs whose links are pinned under `bpffs`.
pub fn attached(bpffs: &Path) -> Vec<&'static str> {
    program_names::HAIRPIN
        .into_iter()
        .filter(|name| link_pin(bpffs, name).exists())
        .collect()
}

/// Detaches every hairpin link pinned under `bpffs`; returns a line per link removed.
pub fn detach_all(bpffs: &Path) -> Result<Vec<String>> {
    let dir = links_dir(bpffs);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let pin = entry?.path();
        detach(&pin)?;
        removed.push(format!(
            "hairpin link {}",
            pin.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    removed.sort();
    fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(removed)
}

/// The loaded hairpin program `name`.
pub(super) fn program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not a cgroup sock_addr program"))
}
