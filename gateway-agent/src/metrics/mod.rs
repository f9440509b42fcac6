//! `run --metrics-address ADDR:PORT`: the Prometheus text format at `/metrics`.
//!
//! - `datapath`: what the pinned maps hold, read at scrape time through the views' readers
//!   (the datapath itself is not changed or slowed for it).
//! - `agent`: what the run loop counts (reloads, announcements, membership).
//! - `http`: the endpoint.
//!
//! Names follow Prometheus' conventions: the `gateway_` prefix, `_total` on counters, base
//! units (seconds, bytes), a HELP and a TYPE line each; the README lists them all.

mod agent;
mod datapath;
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use agent::AgentMetrics;
use datapath::{Evictions, Snapshot};

use crate::datapath::Maps;

/// Everything one scrape shows: the agent's own metrics and the maps pinned under `bpffs`.
pub struct Exporter {
    bpffs: PathBuf,
    maps: Maps,
    agent: AgentMetrics,
    /// The highest eviction counts shown so far. Held for the whole scrape, so scrapes run
    /// one at a time.
    evicted: Mutex<Evictions>,
}

impl Exporter {
    /// Opens the maps the agent pinned under `bpffs`, as the views do.
    pub fn open(bpffs: &Path, agent: AgentMetrics) -> Result<Self> {
        Ok(Self {
            bpffs: bpffs.to_owned(),
            maps: Maps::open_pinned(bpffs).context("metrics")?,
            agent,
            evicted: Mutex::new(Evictions::default()),
        })
    }

    /// The text a scrape gets.
    pub fn scrape(&self) -> Result<String> {
        let mut evicted = self.evicted.lock().unwrap_or_else(|e| e.into_inner());
        let mut snapshot = Snapshot::read(&self.bpffs, &self.maps)?;
        never_lower(&mut snapshot, &mut evicted);
        Ok(encode(&self.agent, snapshot)?)
    }
}

/// Derived counters never go down from one scrape to the next (Prometheus would take a
/// dip for a restart from zero).
fn never_lower(snapshot: &mut Snapshot, evicted: &mut Evictions) {
    snapshot.evicted_at_least(*evicted);
    *evicted = snapshot.evictions();
}

fn encode(agent: &AgentMetrics, snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    agent.register(&mut registry);
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The endpoint, bound but not serving yet: binding comes first, so that a taken port fails
/// the start before anything is loaded; serving comes once the maps are pinned.
pub struct Endpoint(TcpListener);

impl Endpoint {
    pub async fn bind(address: SocketAddr) -> Result<Self> {
        Ok(Self(http::bind(address).await?))
    }

    /// Serves the maps pinned under `bpffs` and `agent`'s metrics, on the current runtime.
    pub fn serve(self, bpffs: &Path, agent: AgentMetrics) -> Result<()> {
        let exporter = Arc::new(Exporter::open(bpffs, agent)?);
        if let Ok(address) = self.0.local_addr() {
            log::info!("metrics at http://{address}{}", http::PATH);
        }
        tokio::spawn(http::serve(self.0, exporter));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
