//! `gateway-agent run`: read the objects, program the maps, attach, then serve until told
//! to stop. SIGHUP or a change of the file re-reads it; a file that does not parse changes
//! nothing (the error is logged and kept for `status`), and an object that cannot be served
//! changes only itself (its findings are logged when they appear and kept for `status`).
//! Refused at start, the agent exits with `check`'s status for a refused file, 2. Stopping
//! leaves the datapath attached and its maps pinned, so traffic keeps flowing and the next
//! start adopts conntrack and affinity as they are.
//!
//! Every read goes source -> store -> model -> plan -> datapath: the file source turns the
//! file into a batch of events, the store applies it, the model computes this node's state
//! from the store, and the plan's writes bring the maps there. A read refused on the way (by the source, or by the maps'
//! sizes and writes) leaves the store and the source as they were.
//!
//! Who announces is `cluster.rs`'s: alone, what the model elects; with other agents, what
//! the cluster gives this node (its socket and timers are two more arms of the loop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use gateway_common::{AGENT_F_CHECKSUMS_IN_PLACE, AgentState, DatapathConfig, L2Key, write_text};
use log::{error, info, warn};
use regex::Regex;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::sleep_until,
};

mod cluster;
mod hairpin;
mod watch;

pub use cluster::ClusterOptions;

use cluster::Announced;

use crate::cluster::transport::{self, Datagram};

use crate::{
    capacity::Capacity,
    cli::inspect,
    config::{Finding, LoadBalancerClasses, Severity},
    datapath::{Datapath, LoadOptions, attach, bpffs, garp, interfaces},
    metrics::{AgentMetrics, Endpoint},
    model::{self, DesiredState, ModelCache},
    plan::{self, Interface, MapState, Op},
    source::file::{self, Documents, FileSource},
    store::{Store, Undo},
};

pub struct RunOptions {
    pub config: PathBuf,
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

/// Announcements named in a log line; more are counted (a line naming 10,000 is unreadable).
const NAMED_ANNOUNCEMENTS: usize = 8;

fn summary(desired: &DesiredState) -> String {
    let backends: usize = desired.frontends.iter().map(|f| f.backends.len()).sum();
    let announcements = &desired.announcements;
    let mut announced: Vec<String> = announcements
        .iter()
        .take(NAMED_ANNOUNCEMENTS)
        .map(|a| format!("{} on {}", a.vip, a.interface))
        .collect();
    if announcements.len() > NAMED_ANNOUNCEMENTS {
        announced.push(format!(
            "and {} more",
            announcements.len() - NAMED_ANNOUNCEMENTS
        ));
    }
    format!(
        "{} frontends, {} backend slots; announcing {}",
        desired.frontends.len(),
        backends,
        if announced.is_empty() {
            "nothing".into()
        } else {
            announced.join(", ")
        }
    )
}

/// What [`Agent::apply`] did: the number of writes, the announcements that started, and
/// the state planned before, handed back so that freeing it (10,000 services' worth) can
/// wait until the change is reported.
struct Applied {
    writes: usize,
    announced: Vec<Announced>,
    previous: Option<DesiredState>,
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
    /// The digest of the documents last applied.
    applied: Option<u64>,
    garp: garp::Schedule,
    garp_sender: garp::Sender,
    metrics: AgentMetrics,
    /// Who announces: alone, the model; with other agents, the cluster.
    cluster: cluster::Cluster,
    /// This node's own connections to the VIPs it announces.
    hairpin: hairpin::Hairpin,
}

/// Where the objects come from and what the model made of them last: the file source, the
/// store it feeds, the model's per-service results, and the findings of the state served.
struct Objects {
    source: FileSource,
    store: Store,
    model: ModelCache,
    /// Logged when they appear, not on every reload.
    findings: Vec<Finding>,
}

/// A read of the file that the store and the model took, not served yet: what it asks of
/// the maps, and what keeps or drops it once the maps are written or refused it.
struct Proposal {
    desired: DesiredState,
    undo: Undo,
    documents: Documents,
}

impl Objects {
    fn new(path: &Path, classes: LoadBalancerClasses) -> Self {
        let source = FileSource::new(path, classes);
        let store = Store::new(source.name());
        Self {
            source,
            store,
            model: ModelCache::default(),
            findings: Vec::new(),
        }
    }

    /// What this node must serve, from the file (`text`, its content as the watch read it
    /// once it had settled, or else read now). A read the source refuses changes neither the
    /// source nor the store; one object's trouble is in the state's findings.
    fn propose(
        &mut self,
        node_name: &str,
        interfaces: &[Interface],
        text: Option<&str>,
    ) -> Result<Proposal> {
        let update = match text {
            Some(text) => self.source.read_text(text)?,
            None => self.source.read()?,
        };
        let undo = self.store.apply(update.batch);
        let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
        let config = self.store.config();
        let desired = model::desired_state_cached(config, node_name, &names, &mut self.model);
        Ok(Proposal {
            desired,
            undo,
            documents: update.documents,
        })
    }

    /// The proposal's state, with these findings, is served: the next read is compared with
    /// its file, and the findings not logged before are.
    fn keep(&mut self, documents: Documents, findings: Vec<Finding>) {
        self.source.accept(documents);
        let before: std::collections::BTreeSet<&Finding> = self.findings.iter().collect();
        for f in findings.iter().filter(|f| !before.contains(f)) {
            match f.severity {
                Severity::Info => info!("{f} ({})", f.reason),
                Severity::Warning | Severity::Error => warn!("{f} ({})", f.reason),
            }
        }
        self.findings = findings;
    }

    /// The proposal's state was refused: the store goes back to what serves.
    fn take_back(&mut self, undo: Undo) {
        self.store.undo(undo);
    }
}

impl Agent {
    /// Brings the maps to `desired`, make-before-break.
    fn apply(&mut self, desired: DesiredState, interfaces: &[Interface]) -> Result<Applied> {
        let limits = &self.options.capacity;
        let (mut writes, mut announced, mut gained, mut lost) = (0, Vec::new(), 0, 0);
        let maps = &mut self.datapath.maps;
        let held = &self.state;
        let mut write = |op| {
            maps.apply(&op)?;
            writes += 1;
            match op {
                Op::PutL2(key, mac) => {
                    gained += usize::from(!held.l2.contains_key(&key));
                    announced.push((key, mac));
                }
                Op::DeleteL2(_) => lost += 1,
                // Flows are cut: say whose.
                Op::EndMemberships(ended) => info!("{}", plan::ended_label(held, &ended)),
                _ => {}
            }
            anyhow::Ok(())
        };
        let result = match &self.planned {
            Some(previous) => {
                let change = plan::change(&self.state, previous, &desired, interfaces, limits)?;
                let result = plan::diff_each(&change.before, &change.after, &mut write);
                if result.is_ok() {
                    self.state.apply(change);
                }
                result
            }
            None => {
                let target = plan::target(&desired, interfaces, &self.state, limits)?;
                let result = plan::diff_each(&self.state, &target, &mut write);
                if result.is_ok() {
                    self.state = target;
                }
                result
            }
        };
        self.metrics.announcements(gained, lost);
        match result {
            Ok(()) => Ok(Applied {
                writes,
                announced,
                previous: self.planned.replace(desired),
            }),
            // Some writes made it: what the maps hold now is the truth.
            Err(e) => {
                self.planned = None;
                self.state = self.datapath.maps.read_state()?;
                Err(e)
            }
        }
    }

    fn start(options: RunOptions) -> Result<Self> {
        let started = Instant::now();
        // Validate everything before touching the kernel: a bad file must not replace (or
        // even pin anything next to) what a previous run left serving.
        let interfaces = selected_interfaces(&options)?;
        let mut objects = Objects::new(&options.config, options.classes.clone());
        let proposal = objects.propose(&options.node_name, &interfaces, None)?;
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
        write_text(&mut record.config, &options.config.display().to_string());
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
            applied: None,
            garp: garp::Schedule::default(),
            garp_sender: garp::Sender::new()?,
            metrics: AgentMetrics::default(),
            cluster,
            hairpin,
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
        // Who announces: the cluster (when there are other agents) takes over what the
        // datapath answers and its gate; the drain request outlives restarts.
        agent.cluster.read_drain(&agent.datapath.maps)?;
        agent.cluster.accept(
            agent.objects.store.config(),
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
        agent.objects.keep(proposal.documents, findings);
        inspect::record_findings(&mut agent.record, &agent.objects.findings);
        agent.cluster.accept(
            agent.objects.store.config(),
            agent.planned.as_ref().context("applied")?,
            &interfaces,
            &agent.state,
            &agent.datapath.maps,
        )?;
        let settled = agent
            .cluster
            .settle(&mut agent.datapath.maps, &mut agent.state)?;
        agent
            .metrics
            .announcements(settled.started.len(), settled.ended);
        agent
            .hairpin
            .sync(&mut agent.datapath.maps, &agent.state.l2, true)?;
        // Attach only once the maps hold the full state: the first packet sees all of it.
        attach::attach_all(&mut agent.datapath, &agent.options.bpffs, &interfaces)?;
        agent
            .hairpin
            .attach(&mut agent.datapath, &agent.options.bpffs, &mut agent.record)?;
        // Every announcement is news after a (re)start: a node may have taken over meanwhile.
        let now = Instant::now();
        for (key, mac) in &agent.state.l2 {
            agent.garp.announce(*key, *mac, now);
        }
        agent.applied = Some(agent.objects.source.digest());
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

    /// Re-reads the file (or takes `text`, its content as the watch read it once it had
    /// settled) and applies the difference; an invalid file changes nothing.
    fn reload(&mut self, why: &str, text: Option<String>) {
        let started = Instant::now();
        let result = (|| -> Result<(String, Option<DesiredState>)> {
            let interfaces = selected_interfaces(&self.options)?;
            let Proposal {
                mut desired,
                undo,
                documents,
            } = self
                .objects
                .propose(&self.options.node_name, &interfaces, text.as_deref())?;
            self.cluster.restrict(&mut desired, &self.state);
            let summary = summary(&desired);
            let findings = desired.findings.clone();
            let applied = match self.apply(desired, &interfaces) {
                Ok(applied) => applied,
                Err(e) => {
                    self.objects.take_back(undo);
                    return Err(e);
                }
            };
            self.objects.keep(documents, findings);
            inspect::record_findings(&mut self.record, &self.objects.findings);
            self.cluster.accept(
                self.objects.store.config(),
                self.planned.as_ref().context("applied")?,
                &interfaces,
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
            let mut announced = applied.announced;
            announced.extend(settled.started);
            attach::attach_all(&mut self.datapath, &self.options.bpffs, &interfaces)?;
            let now = Instant::now();
            for (key, mac) in announced {
                self.garp.announce(key, mac, now);
            }
            let line = format!("{summary} ({} map writes)", applied.writes);
            Ok((line, applied.previous))
        })();
        let file = self.options.config.display();
        match result {
            Ok((line, previous)) => {
                info!(
                    "reloaded {file} ({why}) in {:.1?}: {line}",
                    started.elapsed()
                );
                // Applied and reported: only now free what was planned before.
                drop(previous);
                self.metrics.reload_applied(started.elapsed());
                self.applied = Some(self.objects.source.digest());
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

    fn send_garp(&mut self) {
        for (key, mac) in self.garp.due(Instant::now(), garp::BATCH) {
            let L2Key { ifindex, vip } = key;
            let mut sent = 0;
            for frame in garp::frames(mac, vip) {
                match self.garp_sender.send(ifindex, &frame) {
                    Ok(()) => sent += 1,
                    Err(e) => warn!("{e:#}"),
                }
            }
            if let Err(e) = self.datapath.maps.count_garp(&key, sent) {
                warn!("counting gratuitous ARP: {e:#}");
            }
        }
    }

    /// After an input of the cluster: the maps follow what it lets this node answer, the
    /// announcements that started get gratuitous ARP (a takeover is announced at once).
    fn cluster_changed(&mut self) {
        match self
            .cluster
            .settle(&mut self.datapath.maps, &mut self.state)
        {
            Ok(settled) => {
                self.metrics
                    .announcements(settled.started.len(), settled.ended);
                if let Err(e) = self
                    .hairpin
                    .sync(&mut self.datapath.maps, &self.state.l2, false)
                {
                    error!("hairpin: bringing the announced VIPs to gw_hairpin: {e:#}");
                }
                let now = Instant::now();
                for (key, mac) in settled.started {
                    info!(
                        "cluster: answering for {} on ifindex {}",
                        std::net::Ipv4Addr::from(key.vip),
                        key.ifindex
                    );
                    self.garp.announce(key, mac, now);
                }
            }
            Err(e) => error!("cluster: bringing the announcements to the maps: {e:#}"),
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
        let mut events = match watch::watch(&self.options.config) {
            Ok(events) => Some(events),
            Err(e) => {
                warn!("not watching for changes (SIGHUP still reloads): {e:#}");
                None
            }
        };
        // When a change in the file's directory has settled.
        let mut settled: Option<tokio::time::Instant> = None;
        let mut datagram = Datagram::new();
        loop {
            let garp_due = self.garp.next_due().map(tokio::time::Instant::from_std);
            let socket = self.cluster.socket();
            let cluster_wake = self.cluster.next_wake();
            tokio::select! {
                _ = terminate.recv() => {
                    self.cluster.stop();
                    break;
                }
                _ = interrupt.recv() => {
                    self.cluster.stop();
                    break;
                }
                received = async { transport::receive(socket.as_deref()?, &mut datagram).await.ok() }, if socket.is_some() => {
                    if let Some(Some(bytes)) = received {
                        self.cluster.received(bytes);
                        self.cluster_changed();
                    }
                }
                _ = sleep_until(cluster_wake) => {
                    if let Err(e) = self.cluster.wake(&self.datapath.maps) {
                        warn!("cluster: {e:#}");
                    }
                    self.cluster_changed();
                    let members = self.cluster.members();
                    if !members.is_empty() {
                        self.metrics.members(&members);
                    }
                }
                _ = hangup.recv() => self.reload("SIGHUP", None),
                Some(_) = async { events.as_mut()?.next().await }, if events.is_some() => {
                    settled = Some(tokio::time::Instant::now() + watch::SETTLE);
                }
                _ = async { sleep_until(settled.unwrap_or_else(tokio::time::Instant::now)).await }, if settled.is_some() => {
                    settled = None;
                    match watch::read_settled(&self.options.config) {
                        // Still being written: a half-written file must never be served.
                        Ok(watch::Read::Unsettled(wait)) => {
                            settled = Some(tokio::time::Instant::now() + wait);
                        }
                        // Unrelated events in the directory change nothing.
                        Ok(watch::Read::Settled(text)) => {
                            if Some(file::digest(&text)) != self.applied {
                                self.reload("file changed", Some(text));
                            }
                        }
                        // The reload says why it cannot read the file.
                        Err(_) => self.reload("file changed", None),
                    }
                }
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
        info!(
            "stopping; the datapath stays attached and keeps serving (`gateway-agent teardown --bpffs {}` removes it)",
            self.options.bpffs.display()
        );
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
    let agent = Agent::start(options)?;
    if let Some(endpoint) = endpoint {
        endpoint.serve(&agent.options.bpffs, agent.metrics.clone())?;
    }
    agent.serve(signals).await
}
