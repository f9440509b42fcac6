//! `gateway-agent check`: validates the file as the agent would (the file source into a
//! store, then the model), without touching the kernel, and shows the cluster-wide VIP
//! allocation (identical on every node).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::table::Table;
use crate::{
    config::ConfigErrors,
    model::{self, Allocation, Frontend},
    source::file,
};

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    valid: bool,
    errors: Vec<String>,
    warnings: Vec<String>,
    allocations: Vec<Allocation>,
    node: Option<&'a str>,
    frontends: Vec<Frontend>,
}

fn failed(path: &Path, errors: ConfigErrors, json: bool) -> Result<ExitCode> {
    if json {
        let report = Report {
            file: path.display().to_string(),
            valid: false,
            errors: errors.0.iter().map(ToString::to_string).collect(),
            warnings: Vec::new(),
            allocations: Vec::new(),
            node: None,
            frontends: Vec::new(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!("{errors}");
    }
    Ok(ExitCode::FAILURE)
}

pub fn run(path: &Path, node: Option<&str>, json: bool) -> Result<ExitCode> {
    let config = match file::load(path) {
        Ok(c) => c,
        Err(errors) => return failed(path, errors, json),
    };
    let cluster = match model::cluster_state(&config) {
        Ok(c) => c,
        Err(errors) => return failed(path, errors, json),
    };
    // No interfaces: `check` judges the file, not this machine.
    let frontends = match node
        .map(|n| model::desired_state(&config, n, &[]))
        .transpose()
    {
        Ok(state) => state.map(|s| s.frontends).unwrap_or_default(),
        Err(errors) => return failed(path, errors, json),
    };
    let report = Report {
        file: path.display().to_string(),
        valid: true,
        errors: Vec::new(),
        warnings: cluster.warnings,
        allocations: cluster.allocations,
        node,
        frontends,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}: valid", report.file);
    let mut t = Table::new(vec!["SERVICE", "VIP", "POOL", "POLICY", "ANNOUNCER"]);
    for a in &report.allocations {
        t.row(vec![
            format!("{}/{}", a.service.namespace, a.service.name),
            format!("{}{}", a.vip, if a.requested { " (requested)" } else { "" }),
            a.pool.to_string(),
            format!("{:?}", a.traffic_policy),
            a.announcer.as_deref().unwrap_or("-").to_owned(),
        ]);
    }
    print!("{}", t.render());
    if let Some(node) = node {
        println!("\nnode {node} serves:");
        let mut t = Table::new(vec!["FRONTEND", "SERVICE", "AFFINITY", "LOCAL BACKENDS"]);
        for f in &report.frontends {
            t.row(vec![
                format!("{}:{}/{:?}", f.vip, f.port, f.protocol).to_uppercase(),
                format!("{}/{}", f.service.namespace, f.service.name),
                f.affinity_timeout_secs
                    .map_or("-".into(), |s| format!("ClientIP {s}s")),
                if f.backends.is_empty() {
                    "(none)".into()
                } else {
                    f.backends
                        .iter()
                        .map(|b| format!("{}:{}", b.addr, b.port))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]);
        }
        print!("{}", t.render());
    }
    Ok(ExitCode::SUCCESS)
}
