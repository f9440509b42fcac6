//! gateway-tests: the lab that system tests and `cargo xtask lab` run in.
//!
//! Everything here lives in network namespaces this crate creates itself: the machine's
//! own namespace (whose uplink `eth0` matches the L2 policy's `^e.*`) is never touched.
//!
//! - [`process`]: running commands with errors that quote stderr; server guards.
//! - [`netns`]: one network namespace, deleted with its processes on drop.
//! - [`agent`]: the gateway agent on a lab node, and its CLI.
//! - [`http`]: the answers of the lab's pods, and requests on open connections.
//! - [`lab`]: the reference topology (client, L2 segment, nodes, envoy-like pods) and the
//!   Kubernetes-shaped objects that describe it.

pub mod agent;
pub mod http;
pub mod lab;
pub mod netns;
pub mod process;
