//! gateway-agent: reads Kubernetes-shaped objects, computes what this node must serve and
//! announce, and programs the gateway eBPF datapath.
//!
//! The data flows one way, one module per step:
//!
//! | module | step |
//! | --- | --- |
//! | `source` | reads the objects (`source::file`: a YAML file) and turns them into events: an object added or changed, an object removed, a kind replaced whole |
//! | `store` | holds the current objects with what the source found about each, applies a batch of events whole |
//! | `config` | the objects' types and their conversion, one kind per file; findings (one object's trouble stays with it) and what refuses a whole source; `Config`, the objects as the store hands them on |
//! | `model` | the desired state of this node from the store's objects: VIP allocation, election, frontends, announcements, and the status a writer puts on the objects (pure; it refuses nothing) |
//! | `plan` | the difference between the desired state and the pinned maps, as ordered writes (pure) |
//! | `datapath` | loads, pins and attaches the programs, writes the maps, sends gratuitous ARP |
//! | `agent` | the run loop: source -> store -> model -> plan -> datapath, on start and on every change, one file per input; `agent/cluster.rs`: who announces (alone, the model; with other agents, the cluster) and the gate |
//! | `cli` | the commands and their output: `check` and `doctor` read the objects as the agent does; `check` and `run` share one exit status rule |
//! | `metrics` | `run --metrics-address`: what the pinned maps and the run loop count, for Prometheus |
//! | `cluster` | failover between nodes: the `gateway-cluster` state machine (membership, claims, leases) and its UDP transport |
//! | `writeback` | the VIPs and the reasons written to the objects' status, by the one agent holding a Lease |
//! | `capacity` | map sizes from the capacity flags |

pub mod agent;
pub mod capacity;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod source;
pub mod store;
pub mod writeback;
