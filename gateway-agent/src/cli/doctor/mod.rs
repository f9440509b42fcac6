//! `gateway-agent doctor`: the reference's troubleshooting tree as a command. It walks the
//! objects (intermittent connectivity -> externalTrafficPolicy -> duplicate L2 policies ->
//! session affinity, then every finding the source and the model make about an object) and
//! the live datapath (announcements, attachments, map fill, timeouts) and says, for each
//! finding, how bad it is, what it means and how to fix it. The exit status is the worst
//! finding: 0 fine, 1 warning, 2 error.
//!
//! - `finding`: a finding and its severity.
//! - `objects`: the findings about the objects, one function each.
//! - `datapath`: the findings about the live datapath, one function each.
//! - `cluster`: the findings about the cluster (with other agents), one function each.
//! - `report`: the table, the JSON and the worst severity.

mod cluster;
mod datapath;
mod finding;
mod objects;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use gateway_common::read_text;
use regex::Regex;

use crate::config::LoadBalancerClasses;
use crate::datapath::Maps;
use crate::source::{Origin, kube};

/// What the doctor looks at.
pub struct Patient<'a> {
    pub config: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub bpffs: &'a Path,
    pub devices: &'a Regex,
    /// The loadBalancerClasses served, as given to `run`.
    pub classes: LoadBalancerClasses,
}

pub fn run(p: &Patient<'_>, json: bool) -> Result<ExitCode> {
    let mut findings = Vec::new();
    let maps = Maps::open_pinned(p.bpffs);
    let agent = maps.as_ref().ok().and_then(|m| m.read_agent().ok());
    // The file and node the agent runs with, unless told otherwise; without a file, the
    // cluster.
    let config_path = p.config.clone().or_else(|| {
        agent
            .map(|a| read_text(&a.config).to_owned())
            .filter(|c| !c.is_empty() && !c.starts_with(kube::SOURCE_PREFIX))
            .map(PathBuf::from)
    });
    let origin = match config_path {
        Some(path) => Origin::File(path),
        None => Origin::Cluster {
            kubeconfig: p.kubeconfig.clone(),
        },
    };
    let node = p.node_name.clone().or_else(|| {
        agent
            .map(|a| read_text(&a.node_name).to_owned())
            .filter(|n| !n.is_empty())
    });
    let config = match origin.load(p.classes.clone()) {
        Ok(config) => Some(config),
        Err(errors) => {
            findings.extend(objects::unreadable(&errors));
            None
        }
    };
    if let Some(config) = &config {
        findings.extend(objects::check_objects(config, node.as_deref()));
    }
    match &maps {
        Ok(maps) => findings.extend(datapath::check_datapath(
            p,
            maps,
            config.as_ref(),
            node.as_deref(),
        )?),
        Err(e) => findings.push(datapath::no_datapath(p.bpffs, e)),
    }

    if json {
        println!("{}", report::json(&findings)?);
    } else {
        print!("{}", report::table(&findings));
    }
    Ok(ExitCode::from(report::worst(&findings).exit_status()))
}
