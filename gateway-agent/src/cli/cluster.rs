//! The cluster from the pins: `members` (every member, its state and the VIPs it claims),
//! the cluster lines of `status`, and `drain`/`undrain`, which write the operator's request
//! into `gw_drain` (where it outlives agent restarts) and wait for the running agent to act
//! on it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gateway_common::{
    cluster::{
        CLAIM_F_ANSWERED, CLUSTER_F_ACTIVE, CLUSTER_F_DRAINING, CLUSTER_F_KEYED,
        CLUSTER_F_TAKEOVER_ON_SILENCE, ClusterRecord, MEMBER_ALIVE, MEMBER_DOWN, MEMBER_F_DRAINING,
        MEMBER_F_HOLDING, MEMBER_SUSPECT, MemberRecord,
    },
    read_text,
};
use serde::Serialize;

use super::table::Table;
use crate::datapath::{Maps, monotonic_ns};

/// How long `drain` and `undrain` wait for the agent (it reads the request every 100 ms).
const WAIT: Duration = Duration::from_secs(5);

#[derive(Serialize)]
pub struct MembersView {
    /// Other agents take part; false: this node announces alone, as the score elects.
    pub cluster: bool,
    /// The agent that wrote this view runs.
    pub agent_running: bool,
    /// How long ago the agent last wrote it (it does at least every second).
    pub updated_ms_ago: Option<u64>,
    pub known: u32,
    pub alive: u32,
    pub quorum: u32,
    pub takeover_on_silence: bool,
    pub keyed: bool,
    pub draining: bool,
    pub port: u16,
    pub refused: Refused,
    /// Authentic datagrams from nodes not in the objects, and membership messages refused.
    pub strangers: u64,
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    /// This node first.
    pub members: Vec<MemberView>,
}

#[derive(Serialize)]
pub struct Refused {
    pub malformed: u64,
    pub untagged: u64,
    pub bad_tag: u64,
    pub not_for_us: u64,
    pub replayed: u64,
    pub total: u64,
}

#[derive(Serialize)]
pub struct MemberView {
    pub name: String,
    /// Where its agent listens (this node's: none when alone).
    pub address: Option<String>,
    /// alive, suspect, down, or unknown (never heard from).
    pub state: &'static str,
    pub draining: bool,
    /// Restarting: counted alive for the hold it asked for.
    pub holding: bool,
    pub incarnation: u64,
    pub heard_ms_ago: Option<u64>,
    /// The VIPs it claims, and of those the ones it answers for (holds a quorum's grants).
    pub vips: Vec<Ipv4Addr>,
    pub answering: Vec<Ipv4Addr>,
}

fn state_name(state: u8) -> &'static str {
    match state {
        MEMBER_ALIVE => "alive",
        MEMBER_SUSPECT => "suspect",
        MEMBER_DOWN => "down",
        _ => "unknown",
    }
}

/// `members`.
pub fn members(maps: &Maps) -> Result<MembersView> {
    let record = maps.read_cluster()?;
    let now = monotonic_ns();
    let ago = |at: u64| (at != 0).then(|| now.saturating_sub(at) / 1_000_000);
    let mut claimed: BTreeMap<u32, (Vec<Ipv4Addr>, Vec<Ipv4Addr>)> = BTreeMap::new();
    for (key, claim) in maps.read_claims()? {
        let (vips, answering) = claimed.entry(key.member).or_default();
        vips.push(Ipv4Addr::from(key.vip));
        if claim.flags & CLAIM_F_ANSWERED != 0 {
            answering.push(Ipv4Addr::from(key.vip));
        }
    }
    let records = maps.read_members(record.members.min(gateway_common::cluster::MEMBERS_MAX))?;
    let members = records
        .iter()
        .enumerate()
        .map(|(i, m)| member_view(m, claimed.remove(&(i as u32)).unwrap_or_default(), ago))
        .collect();
    let [malformed, untagged, bad_tag, not_for_us, replayed] = record.refused;
    Ok(MembersView {
        cluster: record.flags & CLUSTER_F_ACTIVE != 0,
        agent_running: agent_running(maps)?,
        updated_ms_ago: ago(record.updated_ns),
        known: record.members,
        alive: record.alive,
        quorum: record.quorum,
        takeover_on_silence: record.flags & CLUSTER_F_TAKEOVER_ON_SILENCE != 0,
        keyed: record.flags & CLUSTER_F_KEYED != 0,
        draining: record.flags & CLUSTER_F_DRAINING != 0,
        port: record.port,
        refused: Refused {
            malformed,
            untagged,
            bad_tag,
            not_for_us,
            replayed,
            total: record.refused.iter().sum(),
        },
        strangers: record.strangers,
        sent: record.sent,
        received: record.received,
        send_errors: record.send_errors,
        members,
    })
}

fn member_view(
    m: &MemberRecord,
    (mut vips, mut answering): (Vec<Ipv4Addr>, Vec<Ipv4Addr>),
    ago: impl Fn(u64) -> Option<u64>,
) -> MemberView {
    vips.sort();
    answering.sort();
    MemberView {
        name: read_text(&m.name).to_owned(),
        address: (m.addr != [0; 4])
            .then(|| SocketAddrV4::new(Ipv4Addr::from(m.addr), m.port).to_string()),
        state: state_name(m.state),
        draining: m.flags & MEMBER_F_DRAINING != 0,
        holding: m.flags & MEMBER_F_HOLDING != 0,
        incarnation: m.incarnation,
        heard_ms_ago: ago(m.heard_ns),
        vips,
        answering,
    }
}

fn agent_running(maps: &Maps) -> Result<bool> {
    let pid = maps.read_agent()?.pid;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Ok(pid != 0 && String::from_utf8_lossy(&cmdline).contains("gateway-agent"))
}

pub fn render_members(v: &MembersView) -> String {
    let mut out = if !v.agent_running {
        "the agent is NOT RUNNING: this is its last view\n".to_owned()
    } else {
        String::new()
    };
    if !v.cluster {
        out.push_str(&format!(
            "no cluster: this node announces alone, as the score elects (no other Node with an \
             InternalIP in the objects){}\n",
            if v.draining { "; DRAINED" } else { "" }
        ));
    } else {
        out.push_str(&format!(
            "{} of {} members alive, quorum {}; {}; datagrams {}; {} refused \
             (malformed {}, untagged {}, bad tag {}, not for us {}, replayed {}), {} from \
             strangers{}\n",
            v.alive,
            v.known,
            v.quorum,
            if v.takeover_on_silence {
                "a silent member's VIPs are taken over"
            } else {
                "two members: only withdrawn or drained VIPs move"
            },
            if v.keyed {
                "authenticated"
            } else {
                "NOT AUTHENTICATED (no --cluster-key-file)"
            },
            v.refused.total,
            v.refused.malformed,
            v.refused.untagged,
            v.refused.bad_tag,
            v.refused.not_for_us,
            v.refused.replayed,
            v.strangers,
            if v.draining {
                "; this node is DRAINED"
            } else {
                ""
            },
        ));
    }
    let mut t = Table::new(vec!["MEMBER", "ADDRESS", "STATE", "HEARD", "VIPS"]);
    for m in &v.members {
        let mut state = m.state.to_owned();
        if m.draining {
            state.push_str(", draining");
        }
        if m.holding {
            state.push_str(", restarting");
        }
        let live = m.state == "alive" || m.holding;
        let vips = m
            .vips
            .iter()
            .map(|vip| match (live, m.answering.contains(vip)) {
                (false, _) => format!("{vip} (last known)"),
                (true, true) => vip.to_string(),
                (true, false) => format!("{vip} (claimed)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.row(vec![
            m.name.clone(),
            m.address.clone().unwrap_or_else(|| "-".into()),
            state,
            m.heard_ms_ago
                .map_or("never".into(), |ms| format!("{ms} ms ago")),
            if vips.is_empty() { "-".into() } else { vips },
        ]);
    }
    out.push_str(&t.render());
    out
}

/// This node's view of the cluster, for `status`.
#[derive(Serialize)]
pub struct ClusterStatus {
    pub cluster: bool,
    pub alive: u32,
    pub known: u32,
    /// How much longer the datapath answers ARP without a renewed lease: none without a
    /// cluster (the gate is open), 0 when it is closed.
    pub gate_ms_left: Option<u64>,
    pub draining: bool,
}

pub fn status(maps: &Maps) -> Result<ClusterStatus> {
    let record: ClusterRecord = maps.read_cluster()?;
    let gate = maps.read_gate()?;
    let now = monotonic_ns();
    Ok(ClusterStatus {
        cluster: record.flags & CLUSTER_F_ACTIVE != 0,
        alive: record.alive,
        known: record.members,
        gate_ms_left: (gate.until_ns != u64::MAX)
            .then(|| gate.until_ns.saturating_sub(now) / 1_000_000),
        draining: maps.drain_requested()?,
    })
}

pub fn render_status(s: &ClusterStatus) -> String {
    let drained = if s.draining {
        "; DRAINED (`gateway-agent undrain` ends it)"
    } else {
        ""
    };
    if !s.cluster {
        return format!("cluster: none, this node announces alone{drained}\n");
    }
    format!(
        "cluster: {} of {} members alive; ARP answered for {} more without a renewed lease{drained}\n",
        s.alive,
        s.known,
        match s.gate_ms_left {
            Some(0) | None => "0 ms (the gate is closed)".to_owned(),
            Some(ms) => format!("{ms} ms"),
        }
    )
}

/// `drain` / `undrain`: stores the request and waits (up to [`WAIT`]) for the running
/// agent to have handed this node's VIPs over, or to answer again.
pub fn drain(bpffs: &Path, drain: bool) -> Result<String> {
    let mut maps = Maps::open_pinned(bpffs)?;
    maps.request_drain(drain)?;
    let verb = if drain { "drained" } else { "undrained" };
    if !agent_running(&maps)? {
        return Ok(format!(
            "{verb}: the agent is not running; it starts {}",
            if drain { "drained" } else { "announcing" }
        ));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let record = maps.read_cluster()?;
        let acted = (record.flags & CLUSTER_F_DRAINING != 0) == drain;
        let announced = maps.read_state()?.l2.len();
        if acted && (!drain || announced == 0) {
            return Ok(if drain {
                format!(
                    "{verb}: this node announces nothing{}; it stays drained across restarts \
                     until `gateway-agent undrain`",
                    if record.flags & CLUSTER_F_ACTIVE != 0 {
                        ", the other members took its VIPs over"
                    } else {
                        " (no cluster: nobody takes its VIPs over)"
                    }
                )
            } else {
                format!(
                    "{verb}: this node announces again{}",
                    if record.flags & CLUSTER_F_ACTIVE != 0 {
                        " what the cluster gives it (it takes nothing back)"
                    } else {
                        ""
                    }
                )
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the request is stored, but the running agent has not acted on it within {WAIT:?} \
                 (it still announces {announced} VIP entries): see its log"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
