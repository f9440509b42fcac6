//! Builds the eBPF object (gateway-ebpf, for the bpfel target, with the nightly toolchain and
//! bpf-linker) and leaves it in OUT_DIR, where `datapath::object` embeds it: the agent is one
//! self-contained binary.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    // The object depends on the shared map layouts too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-common/src")
    );
    aya_build::build_ebpf(
        [Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
