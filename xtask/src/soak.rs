//! `cargo xtask soak`: the soak test at full size (1,000 connections, 50 reloads, 5 agent
//! restarts); `cargo xtask test` runs the same test at a size that fits CI.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run(workspace: &Path) -> Result<()> {
    setup::run()?;
    cmd::run(
        Command::new("cargo")
            .args(["build", "-p", "gateway-agent"])
            .current_dir(workspace),
    )?;
    cmd::run(
        Command::new("cargo")
            .args([
                "test",
                "-p",
                "gateway-tests",
                "--test",
                "soak",
                "--",
                "--nocapture",
            ])
            .env("GATEWAY_SOAK", "full")
            .current_dir(workspace),
    )
}
