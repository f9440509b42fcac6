//! `cargo xtask setup`: everything a fresh Debian 12 machine of this kind (rustup with
//! stable and nightly) needs to build and test gateway. Idempotent, and quick when there
//! is nothing to do.

use std::env;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use gateway_tests::process::checked;

use crate::cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// What the lab, the demo and the benchmarks run; systemd for `systemd-analyze verify` of
/// deploy/gateway-agent.service (a Debian 12 container image has no systemd); debootstrap
/// and systemd-container (systemd-nspawn) to boot a Debian with systemd as PID 1, where the
/// deploy test runs the unit as an operator would; openssl for the service-account keys of
/// the tests' own API server (with `$KUBEBUILDER_ASSETS`).
const DEBIAN_PACKAGES: [&str; 16] = [
    "bpftool",
    "iproute2",
    "arping",
    "iputils-ping",
    "curl",
    "nginx-light",
    "wrk",
    "ethtool",
    "tcpdump",
    "socat",
    "iptables",
    "nftables",
    "systemd",
    "debootstrap",
    "systemd-container",
    "openssl",
];
/// The metrics test's Prometheus server and `promtool`, without the node exporter Debian
/// recommends with it (a daemon nothing here uses).
const WITHOUT_RECOMMENDS: [&str; 1] = ["prometheus"];

fn all_packages() -> impl Iterator<Item = &'static str> {
    DEBIAN_PACKAGES.into_iter().chain(WITHOUT_RECOMMENDS)
}

pub fn run() -> Result<()> {
    nightly_components()?;
    bpf_linker()?;
    debian_packages()?;
    println!("setup: done");
    Ok(())
}

/// The eBPF crate is built with nightly's `-Z build-std`, which needs the std sources, and
/// linted with nightly's clippy (`cargo xtask test`).
fn nightly_components() -> Result<()> {
    let installed = checked(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|c| c.starts_with(component)) {
            println!("setup: {component} for nightly is installed");
            continue;
        }
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker must use the same LLVM as the rustc that emits the bitcode. No LLVM of that
/// version is packaged for Debian 12, but nightly ships its own as one shared library:
/// bpf-linker is built against that through a prefix of two symlinks to it.
fn bpf_linker() -> Result<()> {
    // A linker that no longer finds its LLVM (nightly was updated) fails here too: rebuild.
    let current = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = current
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} is installed");
        return Ok(());
    }

    let sysroot = checked(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let (llvm, major) = nightly_llvm(&Path::new(sysroot.trim()).join("lib"))?;
    // bpf-linker finds LLVM at run time through its RUNPATH, which points into this
    // prefix: it must outlive the build, unlike a temporary directory.
    let prefix = cargo_home()?.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    match fs::remove_dir_all(&prefix) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", prefix.display()));
        }
        _ => {}
    }
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm
        .file_name()
        .context("LLVM library path has no file name")?;
    // The sysroot's libLLVM-*.so is a linker script, not the library: link to the real one
    // under both the name the linker looks for and the library's own soname.
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        symlink(&llvm, lib.join(name)).with_context(|| {
            format!("linking {} to {}", lib.join(name).display(), llvm.display())
        })?;
    }
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )
}

/// Nightly's LLVM shared library (`libLLVM.so.22.1-rust-…`) and its major version.
fn nightly_llvm(sysroot_lib: &Path) -> Result<(PathBuf, String)> {
    let entries =
        fs::read_dir(sysroot_lib).with_context(|| format!("listing {}", sysroot_lib.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix("libLLVM.so.")) else {
            continue;
        };
        let major = version
            .split(['.', '-'])
            .next()
            .filter(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| anyhow!("cannot read the LLVM version in {}", name.display()))?;
        return Ok((entry.path(), major.to_owned()));
    }
    bail!("no libLLVM.so.* in {}", sysroot_lib.display())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!(
            "setup: Debian packages are installed ({})",
            all_packages().collect::<Vec<_>>().join(" ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    cmd::run(Command::new("apt-get").arg("update"))?;
    let (lean, full): (Vec<&str>, Vec<&str>) = missing
        .into_iter()
        .partition(|p| WITHOUT_RECOMMENDS.contains(p));
    for (packages, options) in [(full, &[][..]), (lean, &["--no-install-recommends"][..])] {
        if !packages.is_empty() {
            cmd::run(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y"])
                    .args(options)
                    .args(&packages),
            )?;
        }
    }
    Ok(())
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits non-zero when it knows a package not at all, yet still lists the
    // others: read its output either way.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Status}\n"])
        .args(all_packages())
        .output()
        .context("cannot run dpkg-query")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    Ok(all_packages().filter(|p| !installed.contains(p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_real_llvm_library_not_the_linker_script() {
        let lib = env::temp_dir().join(format!("xtask-sysroot-{}", std::process::id()));
        fs::create_dir_all(&lib).unwrap();
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
        ] {
            fs::write(lib.join(name), b"").unwrap();
        }
        let found = nightly_llvm(&lib);
        fs::remove_dir_all(&lib).unwrap();
        let (path, major) = found.unwrap();
        assert_eq!(path, lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert_eq!(major, "22");
    }
}
