//! Builds the eBPF object (gateway-ebpf, for the bpfel target, with the nightly toolchain and
//! bpf-linker) twice and leaves both in OUT_DIR, where `datapath::object` embeds them: the
//! agent is one self-contained binary. `gateway` has no logging code; `gateway-log` carries
//! the aya-log debug events and is loaded only when debug logging is on.

use std::{env, fs, path::PathBuf};

use anyhow::Context;
use aya_build::{Package, Toolchain};

const EBPF_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");

fn build(features: &[&str]) -> anyhow::Result<()> {
    let package = Package {
        name: "gateway-ebpf",
        root_dir: EBPF_DIR,
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}

fn main() -> anyhow::Result<()> {
    // The object depends on the shared map layouts too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-common/src")
    );
    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    build(&["log"])?;
    fs::rename(out.join("gateway"), out.join("gateway-log"))
        .context("keeping the logging object")?;
    build(&[])
}
