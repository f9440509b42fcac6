//! `cargo xtask`: the developer's and CI's entry points (setup, demo, lab, test).

mod bench;
mod cmd;
mod demo;
mod lab;
mod setup;
mod soak;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer and CI tasks for gateway")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine needs: rust-src and clippy for nightly, bpf-linker, Debian
    /// packages
    Setup,
    /// Build or remove the lab topology (network namespaces; needs root)
    Lab {
        #[command(subcommand)]
        action: lab::Action,
    },
    /// Set up, build, run the agent on the lab and show what it does
    Demo,
    /// Measure the datapath, end-to-end throughput and the control plane; write target/bench/
    Bench {
        /// A short smoke run with small sizes (what the test suite runs)
        #[arg(long)]
        quick: bool,
        /// Measure one part only and print its figures (no report is written)
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
    /// Set up, build, and run every test (what CI runs)
    Test,
    /// The soak test at full size: 1,000 connections, 50 reloads, 5 agent restarts
    Soak,
}

fn main() -> Result<()> {
    let workspace = workspace_root();
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Lab { action } => lab::run(action, &workspace),
        Task::Demo => demo::run(&workspace),
        Task::Bench { quick, only } => bench::run(&workspace, quick, only),
        Task::Test => test::run(&workspace),
        Task::Soak => soak::run(&workspace),
    }
}

/// xtask lives one level below the workspace root.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
