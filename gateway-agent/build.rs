//! Builds the eBPF object (gateway-ebpf, for the bpfel target, with the nightly toolchain and
//! bpf-linker) twice and leaves both in OUT_DIR, where `datapath::object` embeds them: the
//! agent is one self-contained binary (the benchmark's wrapper object is left there too).
//! `gateway` has no logging code; `gateway-log` carries the aya-log debug events and is
//! loaded only when debug logging is on.
//!
//! This does what aya-build does, plus a code generation flag aya-build cannot pass (it
//! replaces the rustflags): BPF ISA v3, with 32-bit ALU and jump instructions (fewer,
//! cheaper instructions; kernel 5.1 and later). The workspace's clippy lints do not run here
//! (rustc ignores them): `cargo xtask test` runs clippy on the eBPF crate itself.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const PACKAGE: &str = "gateway-ebpf";
const BIN: &str = "gateway";
/// The benchmark's frame-restoring wrapper; embedded only by `benches/datapath.rs`.
const BENCH_BIN: &str = "gateway-bench";
const TARGET: &str = "bpfel-unknown-none";
const RUSTFLAGS: [&str; 4] = [
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
    "-Ctarget-cpu=v3",
    "--cfg=bpf_target_arch=\"x86_64\"",
];

/// Builds the eBPF binaries with `features` and copies each `(binary, destination)`.
fn build(
    ebpf_dir: &Path,
    target_dir: &Path,
    features: &[&str],
    outputs: &[(&str, &Path)],
) -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--release",
    ])
    .args(["--target", TARGET, "-Z", "build-std=core"])
    .arg("--features")
    .arg(features.join(","))
    .arg("--target-dir")
    .arg(target_dir)
    .current_dir(ebpf_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
    // The host build's compiler settings must not leak into the nightly build.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS");
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Surface the compiler's diagnostics in the host build.
    for line in stderr
        .lines()
        .filter(|l| l.starts_with("warning") || l.starts_with("error"))
    {
        println!("cargo:warning={line}");
    }
    if !output.status.success() {
        bail!("building the eBPF object failed:\n{stderr}");
    }
    for (bin, out) in outputs {
        let built = target_dir.join(TARGET).join("release").join(bin);
        std::fs::copy(&built, out)
            .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("..").join(PACKAGE);
    let common_dir = manifest.join("..").join("gateway-common");
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let target_dir = out.join("ebpf-target");
    build(
        &ebpf_dir,
        &target_dir,
        &["log"],
        &[(BIN, &out.join("gateway-log"))],
    )?;
    build(
        &ebpf_dir,
        &target_dir,
        &[],
        &[
            (BIN, &out.join("gateway")),
            (BENCH_BIN, &out.join("gateway-bench")),
        ],
    )
}
