//! Read-only views of a running (or stopped) datapath, from its pinned maps alone:
//! `status`, `lb list`, `ct list`, `affinity list`, `l2 list`. Each view is a plain
//! serializable struct (for `--output json`) with a table rendering for humans. The metrics
//! endpoint (`run --metrics-address`) reads the maps through these same readers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use aya::maps::IterableMap;
use gateway_common::{
    AGENT_F_CHECKSUMS_IN_PLACE, AGENT_F_HAIRPIN, AgentState, BACKEND_F_ACTIVE, BACKEND_F_REMOTE,
    CT_F_ESTABLISHED, CT_F_FIN_BACKEND, CT_F_FIN_CLIENT, CT_F_RST, CT_F_SNAT, CT_F_TCP, Counter,
    CtEntry, DatapathConfig, FINDING_LINE, SERVICE_F_AFFINITY, SERVICE_F_SOURCE_RANGES, SlotKey,
    proto_name, read_text, timeouts::NS_PER_SEC, write_text,
};
use serde::Serialize;

use super::table::Table;
use crate::config::{Finding, Severity};
use crate::datapath::{
    Maps, attach,
    interfaces::{self},
    monotonic_ns,
    tcx::{self, Direction},
};
use crate::plan::frontend_label;

#[derive(Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: String,
    /// On another node: reached through SNAT to this node's address.
    pub remote: bool,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

#[derive(Serialize)]
pub struct ServiceView {
    pub frontend: String,
    /// `namespace/name:port`, the port by its name when it has one.
    pub service: String,
    pub protocol: &'static str,
    pub id: u32,
    pub affinity_timeout_secs: Option<u64>,
    /// This node's own processes and pods reach the frontend through the hairpin socket
    /// hooks (this node announces the VIP and the hooks are attached).
    pub hairpin: bool,
    /// The backends new flows go to.
    pub backends: Vec<BackendView>,
    /// Backends still listed that take no new flows (terminating): their flows go on.
    pub draining: Vec<BackendView>,
    /// `loadBalancerSourceRanges`: the prefixes admitted (`None`: every client).
    pub source_ranges: Option<Vec<String>>,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Packets from clients outside the source ranges, dropped.
    pub denied_packets: u64,
}

/// `lb list`: every frontend with its backends, flags and counters, ordered by VIP:port.
pub fn services(bpffs: &Path, maps: &Maps) -> Result<Vec<ServiceView>> {
    let state = maps.read_state()?;
    let hooked = crate::datapath::hairpin::attached(bpffs).len()
        == gateway_common::program_names::HAIRPIN.len();
    let hairpin = if hooked {
        maps.read_hairpin()?
    } else {
        BTreeMap::new()
    };
    let mut views = Vec::new();
    for (key, service) in &state.services {
        let (mut backends, mut draining) = (Vec::new(), Vec::new());
        let slots = SlotKey {
            service_id: service.id,
            slot: 1,
        }..SlotKey {
            service_id: service.id + 1,
            slot: 0,
        };
        for (slot, &id) in state.slots.range(slots) {
            let Some(b) = state.backends.get(&id) else {
                continue;
            };
            let t = maps.backend_traffic(id)?;
            let view = BackendView {
                id,
                address: crate::plan::backend_label(b),
                remote: b.flags & BACKEND_F_REMOTE != 0,
                packets: t.fwd_packets,
                bytes: t.fwd_bytes,
                reply_packets: t.rev_packets,
                reply_bytes: t.rev_bytes,
            };
            if slot.slot <= u32::from(service.backend_count) {
                backends.push(view);
            } else {
                draining.push(view);
            }
        }
        let t = maps.service_traffic(service.id)?;
        views.push(ServiceView {
            frontend: frontend_label(key),
            service: state.names.get(&service.id).cloned().unwrap_or_default(),
            protocol: proto_name(key.proto),
            id: service.id,
            affinity_timeout_secs: (service.flags & SERVICE_F_AFFINITY != 0)
                .then_some(service.affinity_timeout_ns / NS_PER_SEC),
            hairpin: hairpin.contains_key(&gateway_common::VipKey { addr: key.vip }),
            backends,
            draining,
            source_ranges: (service.flags & SERVICE_F_SOURCE_RANGES != 0).then(|| {
                let ranges = state.source_ranges.iter();
                ranges
                    .filter(|(id, _)| *id == service.id)
                    .map(|(_, net)| net.to_string())
                    .collect()
            }),
            packets: t.fwd_packets,
            bytes: t.fwd_bytes,
            reply_packets: t.rev_packets,
            reply_bytes: t.rev_bytes,
            denied_packets: t.denied_packets,
        });
    }
    Ok(views)
}

fn backend_text(b: &BackendView) -> String {
    let via = if b.remote { ", SNAT" } else { "" };
    format!("{} (#{}{via}, {} pkts)", b.address, b.id, b.packets)
}

pub fn render_services(views: &[ServiceView]) -> String {
    let mut t = Table::new(vec![
        "FRONTEND", "SERVICE", "AFFINITY", "SOURCES", "HAIRPIN", "PACKETS", "BACKENDS",
    ]);
    for v in views {
        let mut backends = if v.backends.is_empty() {
            "(none)".to_owned()
        } else {
            v.backends
                .iter()
                .map(backend_text)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !v.draining.is_empty() {
            let draining: Vec<String> = v.draining.iter().map(backend_text).collect();
            backends.push_str(&format!("; draining: {}", draining.join(", ")));
        }
        t.row(vec![
            v.frontend.clone(),
            v.service.clone(),
            v.affinity_timeout_secs
                .map_or("-".into(), |s| format!("ClientIP {s}s")),
            match &v.source_ranges {
                None => "any".into(),
                Some(ranges) if ranges.is_empty() => "none".into(),
                Some(ranges) => format!("{} ({} denied)", ranges.join(" "), v.denied_packets),
            },
            if v.hairpin { "yes" } else { "-" }.into(),
            v.packets.to_string(),
            backends,
        ]);
    }
    t.render()
}

#[derive(Serialize)]
pub struct FlowView {
    pub client: String,
    pub frontend: String,
    pub backend: String,
    /// The source the backend sees when the flow is SNATed to a backend on another node.
    pub snat: Option<String>,
    pub backend_id: u32,
    pub service_id: u32,
    pub state: &'static str,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
}

fn flow_state(e: &CtEntry) -> &'static str {
    if e.flags & CT_F_TCP == 0 {
        "udp"
    } else if e.is_closed() {
        if e.flags & CT_F_RST != 0 {
            "reset"
        } else {
            "closed"
        }
    } else if e.flags & (CT_F_FIN_CLIENT | CT_F_FIN_BACKEND) != 0 {
        "closing"
    } else if e.flags & CT_F_ESTABLISHED != 0 {
        "established"
    } else {
        "syn"
    }
}

/// `ct list`: live tracked flows (expired entries are gone for the datapath too).
pub fn flows(maps: &Maps) -> Result<Vec<FlowView>> {
    let config = maps.read_config()?;
    let now = monotonic_ns();
    let mut views = Vec::new();
    for entry in maps.conntrack.iter() {
        let (k, e) = entry?;
        if !e.is_alive(now, &config) {
            continue;
        }
        let idle = now.saturating_sub(e.last_seen_ns);
        views.push(FlowView {
            client: format!("{}:{}", Ipv4Addr::from(k.client_addr), k.client_port),
            frontend: format!(
                "{}:{}/{}",
                Ipv4Addr::from(k.vip),
                k.vip_port,
                proto_name(k.proto)
            ),
            backend: format!("{}:{}", Ipv4Addr::from(e.backend_addr), e.backend_port),
            snat: (e.flags & CT_F_SNAT != 0)
                .then(|| format!("{}:{}", Ipv4Addr::from(e.snat_addr), e.snat_port)),
            backend_id: e.backend_id,
            service_id: e.service_id,
            state: flow_state(&e),
            idle_secs: idle / NS_PER_SEC,
            expires_in_secs: e.lifetime_ns(&config).saturating_sub(idle) / NS_PER_SEC,
        });
    }
    views.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    Ok(views)
}

pub fn render_flows(views: &[FlowView]) -> String {
    let mut t = Table::new(vec![
        "CLIENT",
        "FRONTEND",
        "BACKEND",
        "SNAT",
        "STATE",
        "IDLE",
        "EXPIRES IN",
    ]);
    for v in views {
        t.row(vec![
            v.client.clone(),
            v.frontend.clone(),
            v.backend.clone(),
            v.snat.clone().unwrap_or_else(|| "-".into()),
            v.state.into(),
            format!("{}s", v.idle_secs),
            format!("{}s", v.expires_in_secs),
        ]);
    }
    t.render()
}

#[derive(Serialize)]
pub struct AffinityView {
    pub client: String,
    pub frontend: String,
    pub service_id: u32,
    pub backend: String,
    pub backend_id: u32,
    pub idle_secs: u64,
    pub expires_in_secs: u64,
}

/// `affinity list`: live ClientIP affinity entries.
pub fn affinities(maps: &Maps) -> Result<Vec<AffinityView>> {
    let state = maps.read_state()?;
    let by_id: BTreeMap<u32, (&gateway_common::ServiceKey, &gateway_common::Service)> =
        state.services.iter().map(|(k, s)| (s.id, (k, s))).collect();
    let now = monotonic_ns();
    let mut views = Vec::new();
    for entry in maps.affinity.iter() {
        let (k, a) = entry?;
        let Some((key, service)) = by_id.get(&k.service_id) else {
            continue;
        };
        let idle = now.saturating_sub(a.last_used_ns);
        if idle > service.affinity_timeout_ns {
            continue;
        }
        let backend = maps.backends.get(&a.backend_id, 0)?;
        views.push(AffinityView {
            client: Ipv4Addr::from(k.client_addr).to_string(),
            frontend: frontend_label(key),
            service_id: k.service_id,
            backend: if backend.flags & BACKEND_F_ACTIVE != 0 {
                crate::plan::backend_label(&backend)
            } else {
                "(removed)".into()
            },
            backend_id: a.backend_id,
            idle_secs: idle / NS_PER_SEC,
            expires_in_secs: (service.affinity_timeout_ns - idle) / NS_PER_SEC,
        });
    }
    views.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    Ok(views)
}

pub fn render_affinities(views: &[AffinityView]) -> String {
    let mut t = Table::new(vec!["CLIENT", "FRONTEND", "BACKEND", "IDLE", "EXPIRES IN"]);
    for v in views {
        t.row(vec![
            v.client.clone(),
            v.frontend.clone(),
            v.backend.clone(),
            format!("{}s", v.idle_secs),
            format!("{}s", v.expires_in_secs),
        ]);
    }
    t.render()
}

#[derive(Serialize)]
pub struct AnnouncementView {
    pub interface: String,
    pub ifindex: u32,
    pub vip: String,
    pub mac: String,
    pub arp_replies: u64,
    /// Gratuitous ARP frames the agent sent for this announcement.
    pub garp_sent: u64,
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `l2 list`: the VIPs this node answers ARP for, per interface, with reply counters.
pub fn announcements(maps: &Maps) -> Result<Vec<AnnouncementView>> {
    let names: BTreeMap<u32, String> = interfaces::all()?
        .into_iter()
        .map(|i| (i.index, i.name))
        .collect();
    let mut views = Vec::new();
    for entry in maps.l2.iter() {
        let (k, e) = entry?;
        views.push(AnnouncementView {
            interface: names
                .get(&k.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("#{}", k.ifindex)),
            ifindex: k.ifindex,
            vip: Ipv4Addr::from(k.vip).to_string(),
            mac: mac_text(&e.mac),
            arp_replies: e.arp_replies,
            garp_sent: maps.garp.get(&k, 0).unwrap_or(0),
        });
    }
    views.sort_by(|a, b| (&a.interface, &a.vip).cmp(&(&b.interface, &b.vip)));
    Ok(views)
}

pub fn render_announcements(views: &[AnnouncementView]) -> String {
    let mut t = Table::new(vec![
        "INTERFACE",
        "VIP",
        "MAC",
        "ARP REPLIES",
        "GRATUITOUS ARP SENT",
    ]);
    for v in views {
        t.row(vec![
            v.interface.clone(),
            v.vip.clone(),
            v.mac.clone(),
            v.arp_replies.to_string(),
            v.garp_sent.to_string(),
        ]);
    }
    t.render()
}

#[derive(Serialize)]
pub struct AttachmentView {
    pub interface: String,
    pub direction: Direction,
    /// The gateway program is in the interface's tcx chain right now.
    pub attached: bool,
    /// Packets the program ran for, and its mean run time per packet: counted by the kernel
    /// only while BPF run-time statistics are on (`sysctl kernel.bpf_stats_enabled=1`).
    pub packets: u64,
    pub run_time_ns: u64,
    pub ns_per_packet: Option<f64>,
}

/// The programs pinned under `bpffs`, per interface and direction, and whether each is in
/// its interface's tcx chain now, with the kernel's run-time statistics.
pub fn attachments(bpffs: &Path) -> Result<Vec<AttachmentView>> {
    let mut attachments = Vec::new();
    for pin in attach::pinned_links(bpffs)? {
        let name = pin
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some((interface, direction)) = attach::parse_link_pin(&name) else {
            continue;
        };
        let program = tcx::gateway_program(&interface, direction);
        let packets = program.as_ref().map_or(0, |p| p.run_count());
        let run_time_ns = program
            .as_ref()
            .map_or(0, |p| p.run_time().as_nanos() as u64);
        attachments.push(AttachmentView {
            attached: program.is_some(),
            packets,
            run_time_ns,
            ns_per_packet: (packets > 0).then(|| run_time_ns as f64 / packets as f64),
            interface,
            direction,
        });
    }
    Ok(attachments)
}

/// How full conntrack and affinity are.
pub struct Fill {
    /// Conntrack entries present (live or expired) and the table's size.
    pub conntrack_entries: usize,
    pub conntrack_max: u32,
    /// Flows LRU eviction took out of a full table (created, minus taken-over tuples,
    /// minus present).
    pub conntrack_evicted: u64,
    pub affinities: usize,
    pub affinity_max: u32,
    /// Affinity entries LRU eviction took out of a full table (created, minus removed by
    /// the agent, minus present).
    pub affinity_evicted: u64,
}

/// Conntrack and affinity fill, from the maps and the datapath's `counters`.
pub fn fill(maps: &Maps, counters: &BTreeMap<Counter, u64>) -> Result<Fill> {
    let counter = |c| counters.get(&c).copied().unwrap_or(0);
    let conntrack_entries = maps.conntrack.keys().count();
    let affinities = maps.affinity.keys().count();
    Ok(Fill {
        conntrack_entries,
        conntrack_max: maps.conntrack.map().info()?.max_entries(),
        conntrack_evicted: counter(Counter::CtCreated)
            .saturating_sub(counter(Counter::CtReplaced) + conntrack_entries as u64),
        affinities,
        affinity_max: maps.affinity.map().info()?.max_entries(),
        affinity_evicted: counter(Counter::AffinityCreated)
            .saturating_sub(counter(Counter::AffinityRemoved) + affinities as u64),
    })
}

#[derive(Serialize)]
pub struct AgentView {
    pub node_name: String,
    pub config: String,
    pub pid: u32,
    /// That process is alive and is a gateway-agent.
    pub running: bool,
    pub started_unix: u64,
    pub last_applied_unix: u64,
    pub reloads: u32,
    /// The datapath updates TCP/UDP checksums in place (false: through the kernel's
    /// helpers, about 50 ns more per rewritten packet).
    pub checksums_in_place: bool,
    /// The last reload that was refused, if it came after the last one applied: the file on
    /// disk is not what is being served.
    pub rejected: Option<RejectedView>,
    /// Warning and error findings about the objects served: what of them is not served.
    pub objects_not_served: u32,
    /// The findings about the objects served (`severity Reason finding`), the most severe
    /// first, as many as the agent's record holds.
    pub findings: Vec<String>,
}

#[derive(Serialize)]
pub struct RejectedView {
    pub at_unix: u64,
    pub error: String,
}

/// Writes the findings about the objects served into the agent's record, for `status`
/// ([`agent_view`] reads them back): how many say something is not served, and as many
/// lines as fit, the most severe first, each cut at `FINDING_LINE` bytes.
pub fn record_findings(record: &mut AgentState, findings: &[Finding]) {
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    record.findings = sorted
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .count() as u32;
    let mut text = String::new();
    for f in sorted {
        let mut line = format!("{} {} {f}", f.severity, f.reason);
        if line.len() > FINDING_LINE {
            let mut end = FINDING_LINE - "...".len();
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str("...");
        }
        if text.len() + line.len() + 1 > record.findings_text.len() {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    write_text(&mut record.findings_text, &text);
}

fn agent_view(state: &AgentState) -> AgentView {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", state.pid)).unwrap_or_default();
    AgentView {
        node_name: read_text(&state.node_name).to_owned(),
        config: read_text(&state.config).to_owned(),
        pid: state.pid,
        running: state.pid != 0 && String::from_utf8_lossy(&cmdline).contains("gateway-agent"),
        started_unix: state.started_unix,
        last_applied_unix: state.last_applied_unix,
        reloads: state.reloads,
        checksums_in_place: state.flags & AGENT_F_CHECKSUMS_IN_PLACE != 0,
        rejected: (state.refused != 0).then(|| RejectedView {
            at_unix: state.last_error_unix,
            error: read_text(&state.last_error).to_owned(),
        }),
        objects_not_served: state.findings,
        findings: read_text(&state.findings_text)
            .lines()
            .map(str::to_owned)
            .collect(),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` (civil date from days since the epoch, Howard Hinnant's method).
fn utc(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[derive(Serialize)]
pub struct StatusView {
    pub agent: AgentView,
    pub bpffs: String,
    pub ct_tcp_timeout_secs: u64,
    pub ct_any_timeout_secs: u64,
    pub attachments: Vec<AttachmentView>,
    pub vips: usize,
    pub frontends: usize,
    pub backends: usize,
    pub announcements: usize,
    /// Backend slots and reverse-NAT entries: with the counts above, what a fresh start from
    /// the same objects would write.
    pub slots: usize,
    pub revnat: usize,
    /// Live tracked flows.
    pub flows: usize,
    /// Conntrack entries present (live or expired) and the table's size.
    pub conntrack_entries: usize,
    pub conntrack_max: u32,
    /// Flows LRU eviction took out of a full table (created, minus taken-over tuples,
    /// minus present).
    pub conntrack_evicted: u64,
    pub affinities: usize,
    /// Affinity entries LRU eviction took out of a full table (created, minus removed by
    /// the agent, minus present).
    pub affinity_evicted: u64,
    pub counters: BTreeMap<&'static str, u64>,
    pub services: Vec<ServiceView>,
    pub cluster: super::cluster::ClusterStatus,
    pub hairpin: HairpinView,
}

/// Hairpin: whether this node's own processes and pods reach the VIPs it announces.
#[derive(Serialize)]
pub struct HairpinView {
    /// Every hairpin program is attached (its link pinned under the bpffs).
    pub active: bool,
    /// The cgroup the agent attached them to.
    pub cgroup: Option<String>,
    /// Why the agent left hairpin off.
    pub off: Option<String>,
    /// The programs whose links are pinned.
    pub programs: Vec<&'static str>,
    /// The VIPs the hooks balance, each with the client address this node counts as.
    pub vips: Vec<HairpinVipView>,
}

#[derive(Serialize)]
pub struct HairpinVipView {
    pub vip: String,
    pub client: String,
}

pub fn hairpin(bpffs: &Path, maps: &Maps, agent: &AgentState) -> Result<HairpinView> {
    let programs = crate::datapath::hairpin::attached(bpffs);
    let on = agent.flags & AGENT_F_HAIRPIN != 0;
    let text = read_text(&agent.hairpin).to_owned();
    Ok(HairpinView {
        active: programs.len() == gateway_common::program_names::HAIRPIN.len(),
        cgroup: on.then(|| text.clone()),
        off: (!on && !text.is_empty()).then_some(text),
        programs,
        vips: maps
            .read_hairpin()?
            .into_iter()
            .map(|(vip, entry)| HairpinVipView {
                vip: Ipv4Addr::from(vip.addr).to_string(),
                client: Ipv4Addr::from(entry.client_addr).to_string(),
            })
            .collect(),
    })
}

fn render_hairpin(h: &HairpinView) -> String {
    match (&h.cgroup, &h.off) {
        _ if h.active => format!(
            "hairpin: on, cgroup {} ({} VIPs: {})\n",
            h.cgroup
                .as_deref()
                .unwrap_or("(as a previous agent left it)"),
            h.vips.len(),
            h.vips
                .iter()
                .map(|v| format!("{} as client {}", v.vip, v.client))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, Some(off)) => format!("hairpin: {off}\n"),
        _ => "hairpin: off\n".into(),
    }
}

/// `status`: configuration, attachments, map fill and counters.
pub fn status(bpffs: &Path, maps: &Maps) -> Result<StatusView> {
    let counters: BTreeMap<Counter, u64> = maps.counters()?.into_iter().collect();
    let fill = fill(maps, &counters)?;
    let config: DatapathConfig = maps.read_config()?;
    let state = maps.read_state()?;
    let agent = maps.read_agent()?;
    Ok(StatusView {
        hairpin: hairpin(bpffs, maps, &agent)?,
        agent: agent_view(&agent),
        bpffs: bpffs.display().to_string(),
        ct_tcp_timeout_secs: config.ct_tcp_ns / NS_PER_SEC,
        ct_any_timeout_secs: config.ct_any_ns / NS_PER_SEC,
        attachments: attachments(bpffs)?,
        vips: state.vips.len(),
        frontends: state.services.len(),
        backends: state.backends.len(),
        announcements: state.l2.len(),
        slots: state.slots.len(),
        revnat: state.revnat.len(),
        flows: flows(maps)?.len(),
        conntrack_entries: fill.conntrack_entries,
        conntrack_max: fill.conntrack_max,
        conntrack_evicted: fill.conntrack_evicted,
        affinities: fill.affinities,
        affinity_evicted: fill.affinity_evicted,
        counters: counters.into_iter().map(|(c, v)| (c.name(), v)).collect(),
        services: services(bpffs, maps)?,
        cluster: super::cluster::status(maps)?,
    })
}

/// What the agent found about the objects it serves: how many warnings and errors, and the
/// lines its record holds.
fn render_findings(a: &AgentView) -> String {
    if a.findings.is_empty() {
        return String::new();
    }
    let listed = a
        .findings
        .iter()
        .filter(|f| !f.starts_with("info "))
        .count();
    let mut out = format!(
        "objects: {} warnings or errors (what is not served, and why){}\n",
        a.objects_not_served,
        if listed < a.objects_not_served as usize {
            format!(", the first {listed} listed")
        } else {
            String::new()
        }
    );
    for finding in &a.findings {
        out.push_str(&format!("  {finding}\n"));
    }
    out
}

pub fn render_status(s: &StatusView) -> String {
    let a = &s.agent;
    let mut out = format!(
        "agent for node {} (config {}): {}, started {}, last applied {} ({} reloads)\n",
        a.node_name,
        a.config,
        if a.running {
            format!("running as pid {}", a.pid)
        } else {
            "NOT RUNNING (the datapath keeps serving)".into()
        },
        utc(a.started_unix),
        utc(a.last_applied_unix),
        a.reloads
    );
    if let Some(r) = &a.rejected {
        out.push_str(&format!(
            "LAST RELOAD REFUSED at {}, still serving the state applied before: {}\n",
            utc(r.at_unix),
            r.error
        ));
    }
    out.push_str(&render_findings(a));
    out.push_str(&super::cluster::render_status(&s.cluster));
    out.push_str(&render_hairpin(&s.hairpin));
    out.push_str(&format!(
        "datapath pinned at {}, checksums {}\nconntrack timeouts: TCP {}s, other {}s\n\n",
        s.bpffs,
        if a.checksums_in_place {
            "updated in place"
        } else {
            "through the kernel's helpers"
        },
        s.ct_tcp_timeout_secs,
        s.ct_any_timeout_secs
    ));
    let mut t = Table::new(vec![
        "INTERFACE",
        "DIRECTION",
        "PROGRAM",
        "PACKETS",
        "NS/PACKET",
    ]);
    for a in &s.attachments {
        t.row(vec![
            a.interface.clone(),
            a.direction.to_string(),
            if a.attached {
                "attached"
            } else {
                "NOT ATTACHED"
            }
            .into(),
            a.packets.to_string(),
            a.ns_per_packet.map_or("-".into(), |ns| format!("{ns:.0}")),
        ]);
    }
    out.push_str(&t.render());
    if s.attachments.iter().all(|a| a.packets == 0) {
        out.push_str(
            "(packets and run time are counted while `sysctl kernel.bpf_stats_enabled=1`)\n",
        );
    }
    out.push_str(&format!(
        "\n{} VIPs, {} frontends, {} backends, {} announcements, {} tracked flows, {} affinity entries\n\
         conntrack: {} of {} entries, {} flows evicted when full; {} affinity entries evicted when full\n\n",
        s.vips, s.frontends, s.backends, s.announcements, s.flows, s.affinities,
        s.conntrack_entries, s.conntrack_max, s.conntrack_evicted, s.affinity_evicted
    ));
    let mut t = Table::new(vec!["COUNTER", "VALUE"]);
    for (name, value) in &s.counters {
        t.row(vec![(*name).into(), value.to_string()]);
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&render_services(&s.services));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reason;

    fn finding(severity: Severity, name: &str, message: &str) -> Finding {
        Finding {
            file: "objects.yaml".into(),
            object: Some(crate::config::ObjectRef {
                kind: "Service".into(),
                namespace: "web".into(),
                name: name.into(),
            }),
            field: String::new(),
            message: message.into(),
            reason: Reason::NoPool,
            severity,
        }
    }

    #[test]
    fn the_record_keeps_the_most_severe_findings_first_each_on_one_cut_line() {
        let mut record = AgentState::default();
        let long = "x".repeat(400);
        let findings = [
            finding(Severity::Info, "a", "noted"),
            finding(Severity::Warning, "b", "skipped a port"),
            finding(Severity::Error, "c", &long),
        ];
        record_findings(&mut record, &findings);
        let view = agent_view(&record);
        assert_eq!(view.objects_not_served, 2);
        assert_eq!(view.findings.len(), 3);
        assert!(view.findings[0].starts_with("error NoPool objects.yaml: Service/web/c: xxx"));
        assert!(view.findings[0].ends_with("..."));
        assert_eq!(view.findings[0].len(), FINDING_LINE);
        assert_eq!(
            view.findings[1],
            "warning NoPool objects.yaml: Service/web/b: skipped a port"
        );
        assert_eq!(
            view.findings[2],
            "info NoPool objects.yaml: Service/web/a: noted"
        );
        // As many as fit; the count says how many there are.
        let many: Vec<Finding> = (0..500)
            .map(|i| finding(Severity::Warning, &format!("s{i:03}"), &long))
            .collect();
        record_findings(&mut record, &many);
        let view = agent_view(&record);
        assert_eq!(view.objects_not_served, 500);
        assert_eq!(
            view.findings.len(),
            record.findings_text.len() / (FINDING_LINE + 1)
        );
        assert!(render_findings(&view).contains(
            "objects: 500 warnings or errors (what is not served, and why), the first 81 listed"
        ));
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc(1_795_703_405), "2026-11-26 14:30:05 UTC");
        assert_eq!(utc(951_868_799), "2000-02-29 23:59:59 UTC");
        assert_eq!(utc(0), "-");
    }
}
