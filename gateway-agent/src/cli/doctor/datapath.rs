//! The live datapath: is the agent running, are the programs attached, does this node
//! answer ARP for what the objects elect it for (with other agents: see `cluster`), do the
//! maps fit, are the timeouts the reference's, which packets were dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use aya::maps::IterableMap;
use gateway_common::{
    AGENT_F_CHECKSUMS_IN_PLACE, AgentState, Counter, DatapathConfig, read_text, timeouts,
};

use super::Patient;
use super::finding::{Finding, Severity};
use crate::cli::inspect;
use crate::config::Config;
use crate::datapath::{
    Maps, attach, interfaces,
    tcx::{self, Direction},
};
use crate::model::{self, ServiceStatus, ServiceVip};

/// Every datapath finding, in the order the report lists them.
pub fn check_datapath(
    p: &Patient<'_>,
    maps: &Maps,
    config: Option<&Config>,
    node: Option<&str>,
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let agent = maps.read_agent()?;
    let running = agent_running(agent.pid);
    findings.push(agent_process(&agent, running));
    findings.extend(checksum_updates(&agent, running));
    findings.extend(refused_reload(&agent));
    findings.push(hairpin(&inspect::hairpin(p.bpffs, maps, &agent)?));

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
            findings.push(attachment(&iface.name, direction, attached));
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
    // With other agents the cluster decides, not the score: its own findings.
    let members = crate::cli::cluster::members(maps)?;
    if members.cluster {
        let (vips, eligible): (Vec<_>, BTreeMap<_, _>) = match config.zip(node) {
            Some((config, node)) => {
                let desired = model::desired_state(config, node, &[]);
                let vips = (desired.services.iter())
                    .flat_map(|s| s.vips.iter().map(|v| (v.vip, s.service.clone())))
                    .collect();
                let eligible = (desired.eligible.iter())
                    .map(|(vip, nodes)| (*vip, nodes.iter().map(|n| n.to_string()).collect()))
                    .collect();
                (vips, eligible)
            }
            None => Default::default(),
        };
        findings.extend(super::cluster::check_cluster(&members, &vips, &eligible));
    } else if let (Some(config), Some(node)) = (config, node) {
        for service in &model::cluster_state(config).services {
            for vip in &service.vips {
                let here = answered.get(&vip.vip).map(Vec::as_slice);
                findings.push(announcement(service, vip, node, here));
            }
        }
    }

    // Map fill, as `status` counts it.
    let status = inspect::status(p.bpffs, maps)?;
    findings.push(conntrack_fill(
        status.conntrack_entries as u64,
        u64::from(status.conntrack_max),
        status.conntrack_evicted,
    ));
    let affinity_max = u64::from(maps.affinity.map().info()?.max_entries());
    findings.push(affinity_fill(
        status.affinities as u64,
        affinity_max,
        status.affinity_evicted,
    ));

    let config = maps.read_config()?;
    findings.extend(TIMEOUTS.iter().map(|t| timeout(t, &config)));
    findings.extend(DROPS.iter().filter_map(|d| drops(d, &status.counters)));
    Ok(findings)
}

/// No datapath pinned under `bpffs` (or it cannot be read): nothing is served from there.
pub fn no_datapath(bpffs: &Path, error: &anyhow::Error) -> Finding {
    Finding::new(
        Severity::Error,
        "datapath",
        bpffs.display().to_string(),
        format!("{error:#}"),
        "start the agent, or pass the --bpffs it uses",
    )
}

/// Whether `pid` is a running gateway-agent (pid 0: no agent ever wrote its state).
fn agent_running(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| pid != 0 && String::from_utf8_lossy(&c).contains("gateway-agent"))
}

/// The agent that pinned the datapath: without it the datapath keeps serving, but nothing
/// new is applied and no gratuitous ARP is sent (a warning).
fn agent_process(agent: &AgentState, running: bool) -> Finding {
    if running {
        Finding::new(
            Severity::Ok,
            "agent",
            format!("pid {}", agent.pid),
            "running",
            "",
        )
    } else {
        Finding::new(
            Severity::Warning,
            "agent",
            read_text(&agent.node_name),
            "not running: the datapath keeps serving the last state, but file changes are not applied and no gratuitous ARP is sent",
            "start gateway-agent (systemctl start gateway-agent, or the DaemonSet's pod)",
        )
    }
}

/// A running agent's datapath that leaves TCP/UDP checksums to the kernel's helpers costs
/// about 50 ns more per rewritten packet: worth knowing, and why.
fn checksum_updates(agent: &AgentState, running: bool) -> Option<Finding> {
    (running && agent.flags & AGENT_F_CHECKSUMS_IN_PLACE == 0).then(|| {
        Finding::new(
            Severity::Info,
            "datapath",
            read_text(&agent.node_name),
            "TCP/UDP checksums go through the kernel's helpers (about 50 ns more per rewritten packet): the kernel has no BTF at /sys/kernel/btf/vmlinux, no kfunc bpf_cast_to_kern_ctx (Linux 6.3), or its verifier refused the in-place update (the agent's log at start says which)",
            "run a kernel with CONFIG_DEBUG_INFO_BTF, Linux 6.3 or later",
        )
    })
}

/// Hairpin: this node's own processes and pods reach the VIPs it announces only while the
/// socket hooks are attached (a warning when they are not).
fn hairpin(view: &inspect::HairpinView) -> Finding {
    if view.active {
        Finding::new(
            Severity::Ok,
            "hairpin",
            view.cgroup.clone().unwrap_or_default(),
            format!(
                "this node's processes and pods reach the {} VIPs it announces",
                view.vips.len()
            ),
            "",
        )
    } else {
        Finding::new(
            Severity::Warning,
            "hairpin",
            "this node",
            format!(
                "{}: connections from this node and its pods to the VIPs it announces fail",
                view.off.as_deref().unwrap_or("off")
            ),
            "start the agent with --cgroup naming the cgroup v2 root (/sys/fs/cgroup, or \
             /sys/fs/cgroup/unified on a host with the hybrid layout)",
        )
    }
}

/// The last reload was refused: the file on disk is not what is served (an error).
fn refused_reload(agent: &AgentState) -> Option<Finding> {
    (agent.refused != 0).then(|| {
        Finding::new(
            Severity::Error,
            "configuration",
            read_text(&agent.config),
            format!(
                "the last reload was refused, the file on disk is not what is served: {}",
                read_text(&agent.last_error)
            ),
            "fix the file; it is applied as soon as it validates",
        )
    })
}

/// A selected interface's `direction` without our program: VIP traffic there is not
/// balanced (an error).
fn attachment(interface: &str, direction: Direction, attached: bool) -> Finding {
    let subject = format!("{interface} {direction}");
    if attached {
        Finding::new(Severity::Ok, "attachment", subject, "program attached", "")
    } else {
        Finding::new(
            Severity::Error,
            "attachment",
            subject,
            "no gateway program on this selected interface: VIP traffic arriving here is not balanced",
            "restart the agent (it attaches to every interface matching --devices)",
        )
    }
}

/// One VIP's announcement: this node, if elected, answers ARP for it (else clients cannot
/// reach it) and, if not, does not (else two nodes answer: an ARP conflict). `answered_on`:
/// the interfaces this node answers on for it.
fn announcement(
    service: &ServiceStatus,
    vip: &ServiceVip,
    node: &str,
    answered_on: Option<&[String]>,
) -> Finding {
    let subject = format!("{} ({})", vip.vip, service.service);
    let announcer = vip.announcer.as_deref();
    match (announcer == Some(node), answered_on) {
        (true, Some(ifaces)) => Finding::new(
            Severity::Ok,
            "announcement",
            subject,
            format!("answered here on {}", ifaces.join(", ")),
            "",
        ),
        (true, None) => Finding::new(
            Severity::Error,
            "announcement",
            subject,
            "this node is elected to answer ARP for it but does not: clients cannot reach the VIP",
            "check that an interface matches the L2 policy's interfaces and --devices, then reload",
        ),
        (false, Some(ifaces)) => Finding::new(
            Severity::Error,
            "announcement",
            subject,
            format!(
                "answered here on {} although {} is elected: ARP conflict",
                ifaces.join(", "),
                announcer.unwrap_or("no node")
            ),
            "make sure every node runs the agent with the same file",
        ),
        (false, None) => Finding::new(
            Severity::Info,
            "announcement",
            subject,
            match announcer {
                Some(n) => format!("answered by {n}"),
                None => {
                    "no node is eligible (Ready, selected by the L2 policy, with a ready endpoint)"
                        .into()
                }
            },
            "",
        ),
    }
}

/// A table more than 90% full is about to evict.
fn fill_level(used: u64, max: u64) -> Severity {
    if used * 10 > max * 9 {
        Severity::Warning
    } else {
        Severity::Ok
    }
}

/// Conntrack: flows evicted from a full table lost their backend, and a table above 90% is
/// about to evict (warnings).
fn conntrack_fill(entries: u64, max: u64, evicted: u64) -> Finding {
    let subject = format!("{entries} of {max} entries");
    if evicted > 0 {
        return Finding::new(
            Severity::Warning,
            "conntrack",
            subject,
            format!(
                "{evicted} flows were evicted to make room: their connections lost their backend"
            ),
            "raise --ct-max",
        );
    }
    let level = fill_level(entries, max);
    let fix = if level == Severity::Ok {
        ""
    } else {
        "raise --ct-max before it fills"
    };
    Finding::new(level, "conntrack", subject, "no flow evicted", fix)
}

/// ClientIP affinity entries: above 90% of the table, clients are about to lose theirs;
/// once evicting, some have.
fn affinity_fill(entries: u64, max: u64, evicted: u64) -> Finding {
    if evicted > 0 {
        return Finding::new(
            Severity::Warning,
            "affinity",
            format!("{entries} of {max} entries"),
            format!(
                "{evicted} ClientIP affinity entries were evicted to make room: those clients' \
                 next flows may land on another backend"
            ),
            "raise --affinity-max",
        );
    }
    let level = fill_level(entries, max);
    let fix = if level == Severity::Ok {
        ""
    } else {
        "raise --affinity-max"
    };
    Finding::new(
        level,
        "affinity",
        format!("{entries} of {max} entries"),
        "ClientIP affinity entries",
        fix,
    )
}

/// A conntrack timeout the reference sets, and what a shorter one costs.
struct TimeoutRule {
    flag: &'static str,
    reference: u64,
    meaning: &'static str,
    nanoseconds: fn(&DatapathConfig) -> u64,
}

const TIMEOUTS: [TimeoutRule; 2] = [
    TimeoutRule {
        flag: "--ct-tcp-timeout",
        reference: timeouts::CT_TCP,
        meaning: "idle HTTP/2 and WebSocket connections are dropped sooner",
        nanoseconds: |c| c.ct_tcp_ns,
    },
    TimeoutRule {
        flag: "--ct-any-timeout",
        reference: timeouts::CT_ANY,
        meaning: "idle UDP flows are rebalanced sooner",
        nanoseconds: |c| c.ct_any_ns,
    },
];

/// A timeout below the reference's: a warning saying what it costs.
fn timeout(rule: &TimeoutRule, config: &DatapathConfig) -> Finding {
    let secs = (rule.nanoseconds)(config) / timeouts::NS_PER_SEC;
    let (what, reference) = (rule.flag, rule.reference);
    if secs < reference {
        Finding::new(
            Severity::Warning,
            "timeouts",
            what,
            format!(
                "{secs} s, below the reference's {reference} s: {}",
                rule.meaning
            ),
            format!("run with {what} {reference}"),
        )
    } else {
        Finding::new(Severity::Ok, "timeouts", what, format!("{secs} s"), "")
    }
}

/// A drop reason worth reporting, what its packets were, and what to do about it (empty:
/// nothing, it is the datapath doing its job).
struct DropRule {
    counter: Counter,
    severity: Severity,
    meaning: &'static str,
    fix: &'static str,
}

const DROPS: [DropRule; 9] = [
    DropRule {
        counter: Counter::DropBackendGone,
        severity: Severity::Info,
        meaning: "packets of flows whose backend was removed were dropped",
        fix: "",
    },
    DropRule {
        counter: Counter::DropNoBackend,
        severity: Severity::Info,
        meaning: "packets reached a service without a ready backend",
        fix: "",
    },
    DropRule {
        counter: Counter::DropUnknownPort,
        severity: Severity::Info,
        meaning: "packets reached a VIP on a port it does not serve",
        fix: "",
    },
    DropRule {
        counter: Counter::DropIcmp,
        severity: Severity::Info,
        meaning: "ICMP packets to a VIP that are neither echo requests nor errors were dropped \
                  (echo requests with IP options or to a multicast MAC are not answered)",
        fix: "",
    },
    DropRule {
        counter: Counter::DropIcmpError,
        severity: Severity::Info,
        meaning: "ICMP errors to a VIP about no tracked flow (or with a truncated or \
                  inconsistent inner header) were dropped, not translated",
        fix: "",
    },
    DropRule {
        counter: Counter::DropSourceRange,
        severity: Severity::Info,
        meaning: "packets from clients outside a service's loadBalancerSourceRanges were dropped",
        fix: "",
    },
    DropRule {
        counter: Counter::DropSnatExhausted,
        severity: Severity::Warning,
        meaning: "new connections to a backend on another node were dropped: every SNAT port \
                  tried was held by another flow to that backend",
        fix: "widen --snat-ports, or give the service more endpoints",
    },
    DropRule {
        counter: Counter::DropNoRoute,
        severity: Severity::Warning,
        meaning: "packets to a backend on another node (or their replies to the client) had no \
                  usable route",
        fix: "route the other nodes' pod networks (and the clients) through the uplinks, with \
              net.ipv4.ip_forward=1",
    },
    DropRule {
        counter: Counter::DropNoSnatAddr,
        severity: Severity::Warning,
        meaning: "new connections to a backend on another node arrived on an interface without \
                  an IPv4 address to SNAT them to",
        fix: "give the uplink an IPv4 address (or attach the programs to one that has)",
    },
];

/// Packets dropped for `rule`'s reason, if any: worth knowing.
fn drops(rule: &DropRule, counters: &BTreeMap<&'static str, u64>) -> Option<Finding> {
    let name = rule.counter.name();
    let n = counters.get(name).copied().unwrap_or(0);
    (n > 0).then(|| {
        Finding::new(
            rule.severity,
            "drops",
            name,
            format!("{n}: {}", rule.meaning),
            rule.fix,
        )
    })
}

#[cfg(test)]
mod tests {
    use gateway_common::write_text;

    use super::*;
    use crate::config::fixtures::reference;

    fn agent(pid: u32, flags: u32) -> AgentState {
        let mut agent = AgentState {
            pid,
            flags,
            ..Default::default()
        };
        write_text(&mut agent.node_name, "worker-1");
        write_text(&mut agent.config, "/etc/gateway/objects.yaml");
        agent
    }

    #[test]
    fn an_agent_that_stopped_is_a_warning_naming_the_node() {
        let running = agent_process(&agent(42, 0), true);
        assert_eq!(
            (running.severity, running.subject.as_str()),
            (Severity::Ok, "pid 42")
        );
        let stopped = agent_process(&agent(42, 0), false);
        assert_eq!(
            (stopped.severity, stopped.subject.as_str()),
            (Severity::Warning, "worker-1")
        );
        assert!(
            stopped
                .finding
                .starts_with("not running: the datapath keeps serving")
        );
    }

    #[test]
    fn checksum_helpers_are_reported_for_a_running_agent_only() {
        let helpers = checksum_updates(&agent(42, 0), true).expect("a finding");
        assert_eq!(
            (helpers.severity, helpers.check),
            (Severity::Info, "datapath")
        );
        let in_place = agent(42, AGENT_F_CHECKSUMS_IN_PLACE);
        assert_eq!(checksum_updates(&in_place, true), None);
        assert_eq!(checksum_updates(&agent(42, 0), false), None);
    }

    #[test]
    fn a_refused_reload_is_an_error_quoting_it() {
        assert_eq!(refused_reload(&agent(42, 0)), None);
        let mut refused = agent(42, 0);
        refused.refused = 1;
        write_text(
            &mut refused.last_error,
            "objects.yaml: Service/gateway/gw: bad port",
        );
        let f = refused_reload(&refused).expect("a finding");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(f.subject, "/etc/gateway/objects.yaml");
        assert_eq!(
            f.finding,
            "the last reload was refused, the file on disk is not what is served: \
             objects.yaml: Service/gateway/gw: bad port"
        );
    }

    #[test]
    fn a_selected_interface_without_the_program_is_an_error() {
        let f = attachment("ens18", Direction::Egress, false);
        assert_eq!(
            (f.severity, f.subject.as_str()),
            (Severity::Error, "ens18 egress")
        );
        assert_eq!(
            attachment("ens18", Direction::Ingress, true).severity,
            Severity::Ok
        );
    }

    #[test]
    fn announcements_match_the_election() {
        let cluster = model::cluster_state(&reference());
        let (service, a) = (&cluster.services[0], &cluster.services[0].vips[0]);
        let elected = a.announcer.as_deref().expect("the reference elects a node");
        let ens18 = ["ens18".to_owned()];
        let cases = [
            (elected, Some(&ens18[..]), Severity::Ok),
            (elected, None, Severity::Error),
            ("elsewhere", Some(&ens18[..]), Severity::Error),
            ("elsewhere", None, Severity::Info),
        ];
        for (node, answered_on, severity) in cases {
            let f = announcement(service, a, node, answered_on);
            assert_eq!(f.severity, severity, "{node} {answered_on:?}: {f:?}");
            assert_eq!(f.subject, format!("{} ({})", a.vip, service.service));
        }
        let conflict = announcement(service, a, "elsewhere", Some(&ens18));
        assert_eq!(
            conflict.finding,
            format!("answered here on ens18 although {elected} is elected: ARP conflict")
        );
        assert_eq!(
            announcement(service, a, "elsewhere", None).finding,
            format!("answered by {elected}")
        );
    }

    #[test]
    fn a_table_above_nine_tenths_or_evicting_is_a_warning() {
        let levels = [(90, 0), (91, 0), (10, 3)].map(|(entries, evicted)| {
            let f = conntrack_fill(entries, 100, evicted);
            (f.severity, f.fix)
        });
        assert_eq!(
            levels,
            [
                (Severity::Ok, String::new()),
                (Severity::Warning, "raise --ct-max before it fills".into()),
                (Severity::Warning, "raise --ct-max".into()),
            ]
        );
        assert_eq!(conntrack_fill(10, 100, 3).subject, "10 of 100 entries");
        assert_eq!(affinity_fill(90, 100, 0).severity, Severity::Ok);
        for full in [affinity_fill(100, 100, 0), affinity_fill(10, 100, 2)] {
            assert_eq!(
                (full.severity, full.fix.as_str()),
                (Severity::Warning, "raise --affinity-max")
            );
        }
    }

    #[test]
    fn timeouts_below_the_reference_are_warnings() {
        let reference = DatapathConfig {
            ct_tcp_ns: timeouts::CT_TCP * timeouts::NS_PER_SEC,
            ct_any_ns: timeouts::CT_ANY * timeouts::NS_PER_SEC,
            ..Default::default()
        };
        assert!(
            TIMEOUTS
                .iter()
                .all(|t| timeout(t, &reference).severity == Severity::Ok)
        );
        let short = DatapathConfig {
            ct_tcp_ns: 300 * timeouts::NS_PER_SEC,
            ..reference
        };
        let [tcp, any] = TIMEOUTS.each_ref().map(|t| timeout(t, &short));
        assert_eq!(any.severity, Severity::Ok);
        assert_eq!(tcp.severity, Severity::Warning);
        assert_eq!(tcp.subject, "--ct-tcp-timeout");
        assert_eq!(
            tcp.finding,
            "300 s, below the reference's 21600 s: idle HTTP/2 and WebSocket connections are dropped sooner"
        );
        assert_eq!(tcp.fix, "run with --ct-tcp-timeout 21600");
    }

    #[test]
    fn only_drop_reasons_that_dropped_are_reported() {
        let counters = BTreeMap::from([(Counter::DropNoBackend.name(), 3)]);
        let found: Vec<Finding> = DROPS.iter().filter_map(|d| drops(d, &counters)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, Counter::DropNoBackend.name());
        assert_eq!(
            found[0].finding,
            "3: packets reached a service without a ready backend"
        );
        assert_eq!(found[0].severity, Severity::Info);
    }

    #[test]
    fn snat_port_exhaustion_is_a_warning_with_a_fix() {
        let counters = BTreeMap::from([(Counter::DropSnatExhausted.name(), 2)]);
        let found: Vec<Finding> = DROPS.iter().filter_map(|d| drops(d, &counters)).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(
            found[0].finding.starts_with("2: new connections"),
            "{found:?}"
        );
        assert_eq!(
            found[0].fix,
            "widen --snat-ports, or give the service more endpoints"
        );
    }
}
