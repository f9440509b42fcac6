//! gateway-agent: reads Kubernetes-shaped objects, computes what this node must serve and
//! announce, and programs the gateway eBPF datapath.
//!
//! The data flows one way: `config` (parse + validate) -> `model` (desired state for this
//! node, pure) -> `plan` (diff against the pinned maps, pure) -> `datapath` (apply, attach).
//! `cli` holds the commands and their output.

pub mod agent;
pub mod capacity;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod model;
pub mod plan;
