//! `cargo xtask test`: what CI runs on a fresh clone, as root: setup, build, clippy on the
//! eBPF crate, every test, and the benchmark's smoke run so its harness cannot rot.

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
    lint_ebpf(workspace)?;
    // The deploy test boots it; built here (about a minute, once: it is cached under
    // target/) so that its progress shows rather than a silent test.
    let root = debian_root::bootable_root()?;
    println!("test: Debian root with systemd at {}", root.display());
    cmd::run(Command::new("cargo").arg("test").current_dir(workspace))?;
    bench::run(workspace, true, None)
}

/// Clippy on the eBPF crate, with and without its logging code. The build script builds it
/// with rustc, which ignores clippy's lints (the workspace's `undocumented_unsafe_blocks`
/// among them), and a workspace `cargo clippy` leaves it out with the other non-default
/// members.
fn lint_ebpf(workspace: &Path) -> Result<()> {
    for features in ["", "log"] {
        cmd::run(
            Command::new("rustup")
                .args(["run", "nightly", "cargo", "clippy", "--package"])
                .args([
                    "gateway-ebpf",
                    "--bins",
                    "--release",
                    "--features",
                    features,
                ])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .arg("--target-dir")
                .arg(workspace.join("target").join("ebpf-clippy"))
                .args(["--", "-D", "warnings"])
                .current_dir(workspace.join("gateway-ebpf"))
                // The host build's compiler settings must not leak into the nightly build.
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("RUSTFLAGS"),
        )?;
    }
    Ok(())
}
