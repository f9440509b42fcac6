//! The eBPF objects, built by build.rs and embedded in the agent binary.

/// The datapath. Opens with libbpf too (`bpftool prog loadall`): only BTF maps.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// The same datapath with aya-log debug events (and aya-log's legacy ring buffer map).
pub static OBJECT_WITH_LOG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-log"));
