//! gateway-tests: the lab that system tests and `cargo xtask lab` run in.
//!
//! Everything here lives in network namespaces this crate creates itself: the machine's
//! own namespace (whose uplink `eth0` matches the L2 policy's `^e.*`) is never touched.
//!
//! - [`process`]: running commands with errors that quote stderr; server guards.
//! - [`netns`]: one network namespace, deleted with its processes on drop.
//! - [`agent`]: the gateway agent on a lab node, and its CLI.
//! - [`debian_root`]: a minimal Debian root with systemd, made by debootstrap and cached.
//! - [`container`]: that root booted by systemd-nspawn in a lab node's network namespace.
//! - [`http`]: the answers of the lab's pods, and requests on open connections.
//! - [`prometheus`]: a real Prometheus server in a lab namespace, queried through its API.
//! - [`probe`]: a client that sends an ARP request and a request to a VIP every 50 ms, and
//!   tells who answered (failover tests and benchmark).
//! - [`kube_api`]: a real Kubernetes API server (etcd and kube-apiserver from
//!   `$KUBEBUILDER_ASSETS`) in a namespace, stopped and removed on drop.
//! - [`lab`]: the reference topology (client, L2 segment, nodes, envoy-like pods) and the
//!   Kubernetes-shaped objects that describe it.

pub mod agent;
pub mod container;
pub mod debian_root;
pub mod http;
pub mod kube_api;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod process;
pub mod prometheus;

use std::time::{Duration, Instant};

use anyhow::Result;

/// Probes until `done` holds of the value or `timeout` passes; returns the last value seen,
/// so the caller's assertion on it says what was there when the wait ended.
pub fn eventually<T>(
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe()?;
        if done(&value) || Instant::now() > deadline {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
