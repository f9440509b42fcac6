//! The eBPF object, built by build.rs and embedded in the agent binary.

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));
