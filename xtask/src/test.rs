//! `cargo xtask test`: what CI runs on a fresh clone, as root: setup, build, every test, and
//! the benchmark's smoke run so its harness cannot rot.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use gateway_tests::debian_root;

use crate::{bench, cmd, setup};

pub fn run(workspace: &Path) -> Result<()> {
    setup::run()?;
    // Without package flags cargo takes the workspace's default members: everything but
    // the eBPF crate, which targets bpfel and is built by gateway-agent's build script.
    cmd::run(Command::new("cargo").arg("build").current_dir(workspace))?;
    // The deploy test boots it; built here (about a minute, once: it is cached under
    // target/) so that its progress shows rather than a silent test.
    let root = debian_root::bootable_root()?;
    println!("test: Debian root with systemd at {}", root.display());
    cmd::run(Command::new("cargo").arg("test").current_dir(workspace))?;
    bench::run(workspace, true, None)
}
