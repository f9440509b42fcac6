//! `gateway-agent run`: read the objects, program the maps, attach, then serve until told
//! to stop. The objects come from a file (`--config`) or from the cluster (watched through
//! the API server). A change of the file, a change in the cluster, or SIGHUP is applied; a
//! file that does not parse changes nothing (the error is logged and kept for `status`),
//! and an object that cannot be served changes only itself (its findings are logged when
//! they appear and kept for `status`). Refused at start, the agent exits with `check`'s
//! status for a refused file, 2. Stopping leaves the datapath attached and its maps pinned,
//! so traffic keeps flowing and the next start adopts conntrack and affinity as they are.
//!
//! Every read goes source -> store -> model -> plan -> datapath: the source turns the file,
//! or what the watches delivered, into a batch of events, the store applies it, the model
//! computes this node's state from the store, and the plan's writes bring the maps there. A
//! read refused on the way (by the source, or by the maps' sizes and writes) leaves the
//! store as it was and the source ready to offer it again.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the agent: start, reload, and the loop that waits on every input |
//! | `objects.rs` | the source (file or cluster), the store it feeds and the model's cache: a read proposed, then kept or taken back |
//! | `file.rs` | the file source's input: its directory watched, a change acted on once settled |
//! | `watch.rs` | the watch of the file's directory, and when a change has settled enough to be read (its modification time) |
//! | `apply.rs` | a desired state written to the maps through the plan |
//! | `garp.rs` | gratuitous ARP for the announcements that started |
//! | `hairpin.rs` | `gw_hairpin` following the VIPs this node answers ARP for, and the hairpin programs on `--cgroup` |
//! | `cluster.rs` | who announces: alone, what the model elects; with other agents, what the cluster gives this node (its socket and timers are two arms of the loop) |
//! | `writeback.rs` | the status every read calls for, handed to the write-back (cluster mode) |
//!
//! An input of the loop (a source, a timer, a socket) lives in its own file and adds one
//! arm to [`Agent::serve`]'s `select!`, or a task spawned before it (the metrics endpoint).

mod apply;
mod cluster;
mod file;
mod garp;
mod hairpin;
mod objects;
mod watch;
mod writeback;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use gateway_common::{
    AGENT_F_CHECKSUMS_IN_PLACE, AgentState, DatapathConfig, map_names, write_text,
};
use log::{error, info, warn};
use regex::Regex;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::sleep_until,
};

use cluster::Announced;
pub use cluster::ClusterOptions;

use crate::{
    capacity::Capacity,
    cli::inspect,
    cluster::transport::{self, Datagram},
    config::LoadBalancerClasses,
    datapath::{self, Datapath, LoadOptions, attach, bpffs, interfaces, monotonic_ns},
    metrics::{AgentMetrics, Endpoint},
    model::DesiredState,
    plan::{Interface, MapState},
    source::{Origin, kube},
    writeback::{Observed, StatusWriter},
};
use apply::summary;
use objects::{Objects, Proposal};

pub struct RunOptions {
    pub origin: Origin,
    /// Where the Lease that chooses the status writer lives (cluster mode).
    pub lease_namespace: String,
    pub node_name: String,
    pub devices: Regex,
    pub bpffs: PathBuf,
    pub ct_tcp_timeout: u64,
    pub ct_any_timeout: u64,
    /// Never update checksums in place (`--checksum-helpers`).
    pub checksum_helpers: bool,
    /// Source ports of SNATed flows, inclusive (`--snat-ports`).
    pub snat_ports: (u16, u16),
    /// The cgroup (v2) the hairpin programs go on (`--cgroup`); `None`: no hairpin
    /// (`--no-hairpin`).
    pub cgroup: Option<PathBuf>,
    pub capacity: Capacity,
    /// Serve Prometheus metrics there (`--metrics-address`).
    pub metrics_address: Option<SocketAddr>,
    /// The loadBalancerClasses served besides the default ones.
    pub classes: LoadBalancerClasses,
    pub cluster: ClusterOptions,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn selected_interfaces(options: &RunOptions) -> Result<Vec<Interface>> {
    let interfaces = interfaces::matching(&options.devices)?;
    if interfaces.is_empty() {
        bail!(
            "no network interface matches --devices '{}'",
            options.devices
        );
    }
    Ok(interfaces)
}

struct Agent {
    options: RunOptions,
    datapath: Datapath,
    state: MapState,
    /// What `state` was planned from, so that a reload plans only what changed; `None` when
    /// the maps hold something else (adopted at start, or a failed write).
    planned: Option<DesiredState>,
    objects: Objects,
    /// What `status` shows about this agent, pinned in `gw_agent`.
    record: AgentState,
    garp: datapath::garp::Schedule,
    garp_sender: datapath::garp::Sender,
    metrics: AgentMetrics,
    /// Who announces: alone, the model; with other agents, the cluster.
    cluster: cluster::Cluster,
    /// This node's own connections to the VIPs it announces.
    hairpin: hairpin::Hairpin,
    /// Cluster mode: the write-back of VIPs and reasons to the objects' status.
    status: Option<StatusWriter>,
}

impl Agent {
    async fn start(options: RunOptions) -> Result<Self> {
        let started = Instant::now();
        // Validate everything before touching the kernel: a bad file must not replace (or
        // even pin anything next to) what a previous run left serving.
        let interfaces = selected_interfaces(&options)?;
        let (mut objects, status) = match &options.origin {
            Origin::File(path) => (Objects::file(path, options.classes.clone()), None),
            Origin::Cluster { kubeconfig } => {
                let cluster = kube::connect(kubeconfig.as_deref()).await?;
                info!("reading the objects from {}", cluster.name);
                let observed = Observed::default();
                let status = StatusWriter::start(
                    &cluster,
                    &options.lease_namespace,
                    &options.node_name,
                    observed.clone(),
                );
                let objects = Objects::cluster(&cluster, options.classes.clone(), observed);
                (objects, Some(status))
            }
        };
        let proposal = objects
            .first_proposal(&options.node_name, &interfaces)
            .await?;
        bpffs::prepare(&options.bpffs)?;
        let datapath = Datapath::load(&LoadOptions {
            capacity: options.capacity,
            pin_dir: Some(&options.bpffs),
            log_level: log::max_level(),
            kern_ctx: if options.checksum_helpers {
                None
            } else {
                crate::datapath::running_kern_ctx()
            },
        })?;
        match datapath.kern_ctx {
            Some(k) => log::info!(
                "L4 checksums updated in place (ip_summed at bit {} of sk_buff, read through \
                 bpf_cast_to_kern_ctx)",
                k.ip_summed_at
            ),
            None if options.checksum_helpers => {
                log::info!("L4 checksums through the kernel's helpers (--checksum-helpers)")
            }
            None => log::info!("L4 checksums through the kernel's helpers"),
        }
        let mut record = AgentState {
            pid: std::process::id(),
            started_unix: unix_now(),
            flags: if datapath.kern_ctx.is_some() {
                AGENT_F_CHECKSUMS_IN_PLACE
            } else {
                0
            },
            ..Default::default()
        };
        write_text(&mut record.node_name, &options.node_name);
        write_text(&mut record.config, objects.name());
        let cluster = cluster::Cluster::new(
            options.cluster.clone(),
            &options.node_name,
            Duration::from_nanos(datapath.clock.tick_ns),
        )?;
        let hairpin = hairpin::Hairpin::new(options.cgroup.clone(), &datapath.maps)?;
        let mut agent = Agent {
            options,
            datapath,
            state: MapState::default(),
            planned: None,
            objects,
            record,
            garp: datapath::garp::Schedule::default(),
            garp_sender: datapath::garp::Sender::new()?,
            metrics: AgentMetrics::default(),
            cluster,
            hairpin,
            status,
        };

        let maps = &mut agent.datapath.maps;
        let (snat_min, snat_max) = agent.options.snat_ports;
        maps.write_config(
            DatapathConfig::from_secs(
                agent.options.ct_tcp_timeout,
                agent.options.ct_any_timeout,
                agent.datapath.clock,
            )
            .with_snat_ports(snat_min, snat_max),
        )?;
        agent.state = maps.read_state().context("adopting the pinned maps")?;
        let adopted = !agent.state.services.is_empty();
        // Announcements the datapath kept answering while no agent ran (its gate never
        // closed): no client's cache can have moved, and nobody else can have taken them.
        let answered_throughout = if adopted && maps.read_gate()?.is_open(monotonic_ns()) {
            agent.state.l2.clone()
        } else {
            BTreeMap::new()
        };
        // Who announces: the cluster (when there are other agents) takes over what the
        // datapath answers and its gate; the drain request outlives restarts.
        agent.cluster.read_drain(&agent.datapath.maps)?;
        agent.cluster.accept(
            agent.objects.config(),
            &proposal.desired,
            &interfaces,
            &agent.state,
            &agent.datapath.maps,
        )?;
        let mut desired = proposal.desired;
        agent.cluster.restrict(&mut desired, &agent.state);
        let summary = summary(&desired);
        let findings = desired.findings.clone();
        let writes = agent.apply(desired, &interfaces)?.writes;
        agent.objects.keep(proposal.delivery, findings);
        agent.follow_applied(&interfaces)?;
        // Upgraded from a version without `gw_snat_ports`: its SNATed flows get their ports'
        // slots before this version's programs, which find replies by them, are attached.
        if adopted && agent.datapath.fresh.contains(&map_names::SNAT_PORTS) {
            let restored = agent.datapath.maps.restore_snat_ports()?;
            info!(
                "gave {restored} SNATed flows adopted from an earlier version their ports' slots"
            );
        }
        // Attach only once the maps hold the full state: the first packet sees all of it.
        attach::attach_all(&mut agent.datapath, &agent.options.bpffs, &interfaces)?;
        // The previous agent may have been killed between a reload's writes: its flows are
        // brought in line with what the maps hold now (serving meanwhile).
        if adopted {
            agent.settle_flows("adopting the pinned maps")?;
        }
        agent
            .hairpin
            .attach(&mut agent.datapath, &agent.options.bpffs, &mut agent.record)?;
        // Every other announcement is news after a (re)start: a node may have taken over
        // while this one did not answer (a start announcing 10,000 VIPs sends 60,000
        // broadcast frames: not for nothing on every restart).
        let now = Instant::now();
        for (key, mac) in &agent.state.l2 {
            if answered_throughout.get(key) != Some(mac) {
                agent.garp.announce(*key, *mac, now);
            }
        }
        agent.objects.served();
        agent.publish_status();
        agent.record.last_applied_unix = unix_now();
        agent.datapath.maps.write_agent(&agent.record)?;
        info!(
            "node {}: serving after {:.1?}: {} ({} map writes{}); programs on {}",
            agent.options.node_name,
            started.elapsed(),
            summary,
            writes,
            if adopted {
                ", adopted the pinned state"
            } else {
                ""
            },
            interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(agent)
    }

    /// What follows a state the maps took: the findings recorded, the cluster told what this
    /// node may answer and the announcements settled with it, the hairpin hooks in step.
    fn follow_applied(&mut self, interfaces: &[Interface]) -> Result<cluster::Settled> {
        inspect::record_findings(&mut self.record, self.objects.findings());
        self.cluster.accept(
            self.objects.config(),
            self.planned.as_ref().context("applied")?,
            interfaces,
            &self.state,
            &self.datapath.maps,
        )?;
        let settled = self
            .cluster
            .settle(&mut self.datapath.maps, &mut self.state)?;
        self.metrics
            .announcements(settled.started.len(), settled.ended);
        self.hairpin
            .sync(&mut self.datapath.maps, &self.state.l2, true)?;
        Ok(settled)
    }

    /// Re-reads the source and applies the difference; a read refused changes nothing.
    fn reload(&mut self, why: &str) {
        let started = Instant::now();
        let result = (|| -> Result<(String, Option<DesiredState>)> {
            let interfaces = selected_interfaces(&self.options)?;
            let Proposal {
                mut desired,
                undo,
                delivery,
            } = self.objects.propose(&self.options.node_name, &interfaces)?;
            self.cluster.restrict(&mut desired, &self.state);
            let summary = summary(&desired);
            let findings = desired.findings.clone();
            let applied = match self.apply(desired, &interfaces) {
                Ok(applied) => applied,
                Err(e) => {
                    self.objects.take_back(undo, delivery);
                    return Err(e);
                }
            };
            self.objects.keep(delivery, findings);
            let settled = self.follow_applied(&interfaces)?;
            let mut announced = applied.announced;
            announced.extend(settled.started);
            attach::attach_all(&mut self.datapath, &self.options.bpffs, &interfaces)?;
            let now = Instant::now();
            for Announced { key, mac } in announced {
                self.garp.announce(key, mac, now);
            }
            let line = format!("{summary} ({} map writes)", applied.writes);
            Ok((line, applied.previous))
        })();
        let file = self.objects.name().to_owned();
        match result {
            Ok((line, previous)) => {
                info!(
                    "reloaded {file} ({why}) in {:.1?}: {line}",
                    started.elapsed()
                );
                // Applied and reported: only now free what was planned before.
                drop(previous);
                self.metrics.reload_applied(started.elapsed());
                self.objects.served();
                self.publish_status();
                self.record.reloads += 1;
                self.record.last_applied_unix = unix_now();
                self.record.refused = 0;
            }
            Err(e) => {
                error!("reload of {file} ({why}) refused, still serving the previous state: {e:#}");
                self.metrics.reload_refused(started.elapsed());
                self.record.last_error_unix = unix_now();
                self.record.refused = 1;
                write_text(&mut self.record.last_error, &format!("{e:#}"));
            }
        }
        if let Err(e) = self.datapath.maps.write_agent(&self.record) {
            warn!("recording the agent's state: {e:#}");
        }
    }

    async fn serve(mut self, signals: Signals) -> Result<()> {
        let Signals {
            mut terminate,
            mut interrupt,
            mut hangup,
        } = signals;
        let mut logger = match self.datapath.logger.take() {
            // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for
            // as long as the AsyncFd owns the logger.
            Some(l) => Some(unsafe { AsyncFd::register(l) }.map_err(|e| e.into_parts().1)?),
            None => None,
        };
        let mut datagram = Datagram::new();
        loop {
            let garp_due = self.garp_due();
            let socket = self.cluster.socket();
            let cluster_wake = self.cluster.next_wake();
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                received = async { transport::receive(socket.as_deref()?, &mut datagram).await.ok() }, if socket.is_some() => {
                    if let Some(Some(bytes)) = received {
                        self.cluster_received(bytes);
                    }
                }
                _ = sleep_until(cluster_wake) => self.cluster_woke(),
                _ = hangup.recv() => self.reload("SIGHUP"),
                why = self.objects.changed() => self.reload(why),
                _ = async { sleep_until(garp_due.unwrap_or_else(tokio::time::Instant::now)).await }, if garp_due.is_some() => {
                    self.send_garp();
                    // More may still be due: let the runtime look at signals and file
                    // events between slices rather than after the whole burst.
                    tokio::task::yield_now().await;
                }
                guard = async { logger.as_mut().unwrap().readable_mut().await }, if logger.is_some() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        self.cluster.stop();
        info!(
            "stopping; the datapath stays attached and keeps serving (`gateway-agent teardown --bpffs {}` removes it)",
            self.options.bpffs.display()
        );
        // Another agent takes the writing over at once.
        if let Some(status) = self.status.take() {
            status.stop().await;
        }
        Ok(())
    }
}

/// The signals the run loop acts on, registered before the agent starts: a SIGHUP sent as
/// soon as the start is logged must reload, not end the process (SIGHUP's default).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

pub async fn run(options: RunOptions) -> Result<()> {
    let signals = Signals {
        terminate: signal(SignalKind::terminate())?,
        interrupt: signal(SignalKind::interrupt())?,
        hangup: signal(SignalKind::hangup())?,
    };
    let endpoint = match options.metrics_address {
        Some(address) => Some(Endpoint::bind(address).await?),
        None => None,
    };
    let agent = Agent::start(options).await?;
    if let Some(endpoint) = endpoint {
        endpoint.serve(&agent.options.bpffs, agent.metrics.clone())?;
    }
    agent.serve(signals).await
}
