//! `gateway-agent doctor`: the reference's troubleshooting tree as a command. It walks the
//! objects (intermittent connectivity -> externalTrafficPolicy -> duplicate L2 policies ->
//! session affinity) and the live datapath (announcements, attachments, map fill, timeouts)
//! and says, for each finding, how bad it is, what it means and how to fix it. The exit
//! status is the worst finding: 0 fine, 1 warning, 2 error.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use aya::maps::IterableMap;
use gateway_common::{AGENT_F_CHECKSUMS_IN_PLACE, Counter, read_text, timeouts};
use regex::Regex;
use serde::Serialize;

use super::inspect;
use super::table::Table;
use crate::config::{self, Config};
use crate::datapath::{
    Maps, attach, interfaces,
    tcx::{self, Direction},
};
use crate::model::{self, TrafficPolicy, selector::service_labels};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Error,
}

#[derive(Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: &'static str,
    pub subject: String,
    pub finding: String,
    pub fix: String,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            severity,
            check,
            subject: subject.into(),
            finding: finding.into(),
            fix: fix.into(),
        });
    }
}

/// What the doctor looks at.
pub struct Patient<'a> {
    pub config: Option<PathBuf>,
    pub node_name: Option<String>,
    pub bpffs: &'a Path,
    pub devices: &'a Regex,
}

/// The objects, following the reference's decision tree.
fn check_objects(config: &Config, f: &mut Findings) {
    for service in &config.services {
        let name = service.object.to_string();
        let labels = service_labels(service);
        let policies: Vec<&str> = config
            .l2_policies
            .iter()
            .filter(|p| p.load_balancer_ips && p.service_selector.matches(&labels))
            .map(|p| p.name.as_str())
            .collect();
        if service.traffic_policy == TrafficPolicy::Cluster {
            f.add(
                Severity::Error,
                "externalTrafficPolicy",
                &name,
                "Cluster: traffic is SNATed (backends see the node's address, not the client's) and may hop to \
                 another node's backend, so one client's requests land on different envoys and sessions, \
                 cookies and WebSocket upgrades break (the reference's root cause). gateway does not program it.",
                "set spec.externalTrafficPolicy: Local",
            );
        } else {
            f.add(
                Severity::Ok,
                "externalTrafficPolicy",
                &name,
                "Local: no SNAT, the client's address reaches a backend on the announcing node",
                "",
            );
        }
        match policies.as_slice() {
            [] => f.add(
                Severity::Warning,
                "L2 policies",
                &name,
                "no CiliumL2AnnouncementPolicy with loadBalancerIPs: true selects it: no node answers ARP for its VIP",
                "add it to the one L2 policy's serviceSelector",
            ),
            [one] => f.add(Severity::Ok, "L2 policies", &name, format!("announced under {one}"), ""),
            many => f.add(
                Severity::Error,
                "L2 policies",
                &name,
                format!("{} policies select it ({}): several nodes may answer ARP for one VIP (ARP conflicts)", many.len(), many.join(", ")),
                "keep exactly one CiliumL2AnnouncementPolicy",
            ),
        }
        match service.affinity_timeout_secs {
            None => f.add(
                Severity::Warning,
                "sessionAffinity",
                &name,
                "None: a client's new connections may go to different backends (sessions held in the backend are lost)",
                "set spec.sessionAffinity: ClientIP with timeoutSeconds: 10800",
            ),
            Some(t) if t < timeouts::AFFINITY => f.add(
                Severity::Info,
                "sessionAffinity",
                &name,
                format!("ClientIP for {t} s, shorter than the reference's {} s", timeouts::AFFINITY),
                "raise sessionAffinityConfig.clientIP.timeoutSeconds to 10800",
            ),
            Some(t) => f.add(Severity::Ok, "sessionAffinity", &name, format!("ClientIP for {t} s"), ""),
        }
    }
}

/// The live datapath: is it attached, does it announce what the objects say, does it fit.
fn check_datapath(
    p: &Patient<'_>,
    maps: &Maps,
    config: Option<&Config>,
    node: Option<&str>,
    f: &mut Findings,
) -> Result<()> {
    let agent = maps.read_agent()?;
    let running = std::fs::read(format!("/proc/{}/cmdline", agent.pid))
        .is_ok_and(|c| agent.pid != 0 && String::from_utf8_lossy(&c).contains("gateway-agent"));
    if running {
        f.add(
            Severity::Ok,
            "agent",
            format!("pid {}", agent.pid),
            "running",
            "",
        );
    } else {
        f.add(
            Severity::Warning,
            "agent",
            read_text(&agent.node_name),
            "not running: the datapath keeps serving the last state, but file changes are not applied and no gratuitous ARP is sent",
            "start gateway-agent (systemctl start gateway-agent, or the DaemonSet's pod)",
        );
    }
    if running && agent.flags & AGENT_F_CHECKSUMS_IN_PLACE == 0 {
        f.add(
            Severity::Info,
            "datapath",
            read_text(&agent.node_name),
            "TCP/UDP checksums go through the kernel's helpers (about 50 ns more per rewritten packet): the kernel has no BTF at /sys/kernel/btf/vmlinux, no kfunc bpf_cast_to_kern_ctx (Linux 6.3), or its verifier refused the in-place update (the agent's log at start says which)",
            "run a kernel with CONFIG_DEBUG_INFO_BTF, Linux 6.3 or later",
        );
    }
    if agent.refused != 0 {
        f.add(
            Severity::Error,
            "configuration",
            read_text(&agent.config),
            format!(
                "the last reload was refused, the file on disk is not what is served: {}",
                read_text(&agent.last_error)
            ),
            "fix the file; it is applied as soon as it validates",
        );
    }

    // Programs attached on every selected device.
    let pins: Vec<(String, Direction)> = attach::pinned_links(p.bpffs)?
        .iter()
        .filter_map(|pin| attach::parse_link_pin(&pin.file_name()?.to_string_lossy()))
        .collect();
    for iface in interfaces::matching(p.devices)? {
        for direction in Direction::ALL {
            let pinned = pins
                .iter()
                .any(|(i, d)| *i == iface.name && *d == direction);
            let attached = pinned && tcx::gateway_program(&iface.name, direction).is_some();
            if attached {
                f.add(
                    Severity::Ok,
                    "attachment",
                    format!("{} {direction}", iface.name),
                    "program attached",
                    "",
                );
            } else {
                f.add(
                    Severity::Error,
                    "attachment",
                    format!("{} {direction}", iface.name),
                    "no gateway program on this selected interface: VIP traffic arriving here is not balanced",
                    "restart the agent (it attaches to every interface matching --devices)",
                );
            }
        }
    }

    // Announcements: what the objects elect this node for, against what it answers.
    let answered: BTreeMap<Ipv4Addr, Vec<String>> =
        inspect::announcements(maps)?
            .into_iter()
            .fold(BTreeMap::new(), |mut m, a| {
                m.entry(a.vip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
                    .or_insert_with(Vec::new)
                    .push(a.interface);
                m
            });
    if let (Some(config), Some(node)) = (config, node)
        && let Ok(cluster) = model::cluster_state(config)
    {
        for a in &cluster.allocations {
            let here = answered.get(&a.vip);
            let subject = format!("{} ({})", a.vip, a.service);
            match (a.announcer.as_deref() == Some(node), here) {
                (true, Some(ifaces)) => f.add(Severity::Ok, "announcement", subject, format!("answered here on {}", ifaces.join(", ")), ""),
                (true, None) => f.add(
                    Severity::Error,
                    "announcement",
                    subject,
                    "this node is elected to answer ARP for it but does not: clients cannot reach the VIP",
                    "check that an interface matches the L2 policy's interfaces and --devices, then reload",
                ),
                (false, Some(ifaces)) => f.add(
                    Severity::Error,
                    "announcement",
                    subject,
                    format!("answered here on {} although {} is elected: ARP conflict", ifaces.join(", "), a.announcer.as_deref().unwrap_or("no node")),
                    "make sure every node runs the agent with the same file",
                ),
                (false, None) => f.add(
                    Severity::Info,
                    "announcement",
                    subject,
                    match &a.announcer {
                        Some(n) => format!("answered by {n}"),
                        None => "no node is eligible (Ready, selected by the L2 policy, with a ready endpoint)".into(),
                    },
                    "",
                ),
            }
        }
    }

    // Map fill, as `status` counts it.
    let status = inspect::status(p.bpffs, maps)?;
    let (flows, ct_max) = (
        status.conntrack_entries as u64,
        u64::from(status.conntrack_max),
    );
    let fill = |used: u64, max: u64| {
        if used * 10 > max * 9 {
            Severity::Warning
        } else {
            Severity::Ok
        }
    };
    if status.conntrack_evicted > 0 {
        f.add(
            Severity::Warning,
            "conntrack",
            format!("{flows} of {ct_max} entries"),
            format!(
                "{} flows were evicted to make room: their connections lost their backend",
                status.conntrack_evicted
            ),
            "raise --ct-max",
        );
    } else {
        let level = fill(flows, ct_max);
        let fix = if level == Severity::Ok {
            ""
        } else {
            "raise --ct-max before it fills"
        };
        f.add(
            level,
            "conntrack",
            format!("{flows} of {ct_max} entries"),
            "no flow evicted",
            fix,
        );
    }
    let affinities = status.affinities as u64;
    let affinity_max = u64::from(maps.affinity.map().info()?.max_entries());
    let level = fill(affinities, affinity_max);
    let fix = if level == Severity::Ok {
        ""
    } else {
        "raise --affinity-max"
    };
    f.add(
        level,
        "affinity",
        format!("{affinities} of {affinity_max} entries"),
        "ClientIP affinity entries",
        fix,
    );

    // Timeouts against the reference's values.
    let dp = maps.read_config()?;
    for (what, secs, reference, meaning) in [
        (
            "--ct-tcp-timeout",
            dp.ct_tcp_ns / timeouts::NS_PER_SEC,
            timeouts::CT_TCP,
            "idle HTTP/2 and WebSocket connections are dropped sooner",
        ),
        (
            "--ct-any-timeout",
            dp.ct_any_ns / timeouts::NS_PER_SEC,
            timeouts::CT_ANY,
            "idle UDP flows are rebalanced sooner",
        ),
    ] {
        if secs < reference {
            f.add(
                Severity::Warning,
                "timeouts",
                what,
                format!("{secs} s, below the reference's {reference} s: {meaning}"),
                format!("run with {what} {reference}"),
            );
        } else {
            f.add(Severity::Ok, "timeouts", what, format!("{secs} s"), "");
        }
    }
    for (counter, meaning) in [
        (
            Counter::DropBackendGone,
            "packets of flows whose backend was removed were dropped",
        ),
        (
            Counter::DropNoBackend,
            "packets reached a service without a ready backend on this node",
        ),
        (
            Counter::DropUnknownPort,
            "packets reached a VIP on a port it does not serve",
        ),
    ] {
        let n = status.counters.get(counter.name()).copied().unwrap_or(0);
        if n > 0 {
            f.add(
                Severity::Info,
                "drops",
                counter.name(),
                format!("{n}: {meaning}"),
                "",
            );
        }
    }
    Ok(())
}

pub fn run(p: &Patient<'_>, json: bool) -> Result<ExitCode> {
    let mut f = Findings::default();
    let maps = Maps::open_pinned(p.bpffs);
    let agent = maps.as_ref().ok().and_then(|m| m.read_agent().ok());
    // The file and node the agent runs with, unless told otherwise.
    let config_path = p.config.clone().or_else(|| {
        agent
            .map(|a| PathBuf::from(read_text(&a.config)))
            .filter(|c| !c.as_os_str().is_empty())
    });
    let node = p.node_name.clone().or_else(|| {
        agent
            .map(|a| read_text(&a.node_name).to_owned())
            .filter(|n| !n.is_empty())
    });
    let config = match &config_path {
        Some(path) => match config::load(path) {
            Ok(config) => Some(config),
            Err(errors) => {
                for e in &errors.0 {
                    f.add(
                        Severity::Error,
                        "objects",
                        path.display().to_string(),
                        e.to_string(),
                        "fix the field named",
                    );
                }
                None
            }
        },
        None => {
            f.add(
                Severity::Info,
                "objects",
                "-",
                "no file given and no agent to ask: the objects were not checked",
                "pass --config FILE",
            );
            None
        }
    };
    if let Some(config) = &config {
        check_objects(config, &mut f);
        if let Err(errors) = model::cluster_state(config) {
            for e in &errors.0 {
                f.add(
                    Severity::Error,
                    "objects",
                    config.source.clone(),
                    e.to_string(),
                    "fix the objects named",
                );
            }
        }
    }
    match &maps {
        Ok(maps) => check_datapath(p, maps, config.as_ref(), node.as_deref(), &mut f)?,
        Err(e) => f.add(
            Severity::Error,
            "datapath",
            p.bpffs.display().to_string(),
            format!("{e:#}"),
            "start the agent, or pass the --bpffs it uses",
        ),
    }

    let worst = f.0.iter().map(|x| x.severity).max().unwrap_or(Severity::Ok);
    if json {
        #[derive(Serialize)]
        struct Report<'a> {
            worst: Severity,
            findings: &'a [Finding],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Report {
                worst,
                findings: &f.0
            })?
        );
    } else {
        let mut t = Table::new(vec!["SEVERITY", "CHECK", "SUBJECT", "FINDING", "FIX"]);
        let mut sorted: Vec<&Finding> = f.0.iter().collect();
        sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
        for x in sorted {
            t.row(vec![
                format!("{:?}", x.severity).to_uppercase(),
                x.check.into(),
                x.subject.clone(),
                x.finding.clone(),
                x.fix.clone(),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(ExitCode::from(match worst {
        Severity::Ok | Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
    }))
}
