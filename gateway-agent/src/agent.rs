//! `gateway-agent run`: validate the objects, program the maps, attach, then serve until
//! told to stop. SIGHUP re-reads the file; a file that does not validate changes nothing.
//! Stopping leaves the datapath attached and its maps pinned, so traffic keeps flowing and
//! the next start adopts conntrack and affinity as they are.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use log::{error, info, warn};
use regex::Regex;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    capacity::Capacity,
    config::{self, DocumentCache},
    datapath::{Datapath, LoadOptions, attach, bpffs, interfaces},
    model::{self, DesiredState},
    plan::{self, Interface, MapState},
};
use gateway_common::DatapathConfig;

pub struct RunOptions {
    pub config: PathBuf,
    pub node_name: String,
    pub devices: Regex,
    pub bpffs: PathBuf,
    pub ct_tcp_timeout: u64,
    pub ct_any_timeout: u64,
    pub capacity: Capacity,
}

/// What this node must serve, from the file; nothing is touched when the file is invalid.
fn desired(
    options: &RunOptions,
    interfaces: &[Interface],
    cache: &mut DocumentCache,
) -> Result<DesiredState> {
    let config = config::load_cached(&options.config, cache).map_err(anyhow::Error::new)?;
    let names: Vec<String> = interfaces.iter().map(|i| i.name.clone()).collect();
    let desired =
        model::desired_state(&config, &options.node_name, &names).map_err(anyhow::Error::new)?;
    for w in &desired.warnings {
        warn!("{w}");
    }
    Ok(desired)
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

/// Brings the maps from `state` to `desired`, make-before-break; `state` follows.
fn apply(
    datapath: &mut Datapath,
    state: &mut MapState,
    desired: &DesiredState,
    interfaces: &[Interface],
    capacity: &Capacity,
) -> Result<usize> {
    let target = plan::target(desired, interfaces, state, capacity)?;
    let ops = plan::diff(state, &target);
    for op in &ops {
        datapath.maps.apply(op)?;
        plan::apply(state, std::slice::from_ref(op));
    }
    Ok(ops.len())
}

fn summary(desired: &DesiredState) -> String {
    let backends: usize = desired.frontends.iter().map(|f| f.backends.len()).sum();
    let announced: Vec<String> = desired
        .announcements
        .iter()
        .map(|a| format!("{} on {}", a.vip, a.interface))
        .collect();
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

pub async fn run(options: RunOptions) -> Result<()> {
    let started = Instant::now();
    let interfaces = selected_interfaces(&options)?;
    let mut cache = DocumentCache::default();
    let desired = desired(&options, &interfaces, &mut cache)?;

    bpffs::prepare(&options.bpffs)?;
    let mut datapath = Datapath::load(&LoadOptions {
        capacity: options.capacity,
        pin_dir: Some(&options.bpffs),
        log_level: log::max_level(),
    })?;
    datapath.maps.write_config(DatapathConfig::from_secs(
        options.ct_tcp_timeout,
        options.ct_any_timeout,
    ))?;
    let mut state = datapath
        .maps
        .read_state()
        .context("adopting the pinned maps")?;
    let adopted = !state.services.is_empty();
    let writes = apply(
        &mut datapath,
        &mut state,
        &desired,
        &interfaces,
        &options.capacity,
    )?;
    // Attach only once the maps hold the full state: the first packet sees all of it.
    attach::attach_all(&mut datapath, &options.bpffs, &interfaces)?;
    info!(
        "node {}: serving after {:.1?}: {} ({} map writes{}); programs on {}",
        options.node_name,
        started.elapsed(),
        summary(&desired),
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

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut logger = match datapath.logger.take() {
        // SAFETY: the logger owns its ring buffer fd and keeps it open, unchanged, for as
        // long as the AsyncFd owns the logger.
        Some(l) => Some(unsafe { AsyncFd::register(l) }.map_err(|e| e.into_parts().1)?),
        None => None,
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                                let started = Instant::now();
                match reload(&options, &mut datapath, &mut state, &mut cache) {
                    Ok(line) => info!("reloaded {} in {:.1?}: {line}", options.config.display(), started.elapsed()),
                    Err(e) => error!("reload of {} refused, still serving the previous state: {e:#}", options.config.display()),
                }
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
        options.bpffs.display()
    );
    Ok(())
}

fn reload(
    options: &RunOptions,
    datapath: &mut Datapath,
    state: &mut MapState,
    cache: &mut DocumentCache,
) -> Result<String> {
    let interfaces = selected_interfaces(options)?;
    let desired = desired(options, &interfaces, cache)?;
    let writes = apply(datapath, state, &desired, &interfaces, &options.capacity)?;
    attach::attach_all(datapath, &options.bpffs, &interfaces)?;
    Ok(format!("{} ({writes} map writes)", summary(&desired)))
}
