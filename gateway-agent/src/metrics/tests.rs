//! The exposition as Prometheus reads it: names, HELP and TYPE lines, label escaping, and
//! counters that never go down. (A real Prometheus scrapes a real agent in
//! `tests/tests/metrics.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_common::Counter;

use super::datapath::{Evictions, Snapshot};
use super::*;
use crate::cli::inspect::{AnnouncementView, AttachmentView, BackendView, Fill, ServiceView};
use crate::cluster::{membership::Liveness, node::MemberView};
use crate::datapath::tcx::Direction;

fn backend(id: u32, address: &str, packets: u64) -> BackendView {
    BackendView {
        id,
        address: address.into(),
        remote: false,
        packets,
        bytes: packets * 100,
        reply_packets: packets / 2,
        reply_bytes: packets * 50,
    }
}

fn frontend(frontend: &str, service: &str, backends: Vec<BackendView>) -> ServiceView {
    let packets = backends.iter().map(|b| b.packets).sum();
    ServiceView {
        frontend: frontend.into(),
        service: service.into(),
        protocol: "TCP",
        id: 1,
        affinity_timeout_secs: None,
        hairpin: false,
        backends,
        draining: Vec::new(),
        source_ranges: None,
        packets,
        bytes: packets * 100,
        reply_packets: packets / 2,
        reply_bytes: packets * 50,
        denied_packets: 0,
    }
}

fn fill(evicted: Evictions) -> Fill {
    Fill {
        conntrack_entries: 3,
        conntrack_max: 262_144,
        conntrack_evicted: evicted.conntrack,
        affinities: 2,
        affinity_max: 65_536,
        affinity_evicted: evicted.affinity,
    }
}

fn snapshot(services: Vec<ServiceView>, evicted: Evictions) -> Snapshot {
    Snapshot::fixture(
        Counter::ALL.iter().map(|&c| (c, 10 + c as u64)).collect(),
        services,
        fill(evicted),
        vec![AnnouncementView {
            interface: "ens18".into(),
            ifindex: 2,
            vip: "192.168.10.50".into(),
            mac: "02:00:00:00:00:01".into(),
            arp_replies: 4,
            garp_sent: 6,
        }],
        vec![AttachmentView {
            interface: "ens18".into(),
            direction: Direction::Ingress,
            attached: true,
            packets: 1000,
            run_time_ns: 300_000,
            ns_per_packet: Some(300.0),
        }],
    )
}

/// The reference's external gateway, its backend also serving a second port.
fn reference() -> Vec<ServiceView> {
    vec![
        frontend(
            "192.168.10.50:80/TCP",
            "gateway/cilium-gateway-gateway-external:http",
            vec![backend(1, "10.244.1.10:8080", 10)],
        ),
        frontend(
            "192.168.10.50:8080/TCP",
            "gateway/cilium-gateway-gateway-external:alt",
            vec![backend(1, "10.244.1.10:8080", 10)],
        ),
    ]
}

fn text(agent: &AgentMetrics, snapshot: Snapshot) -> String {
    encode(agent, snapshot).unwrap()
}

/// Samples by name and label text (`{a="b",...}` as written), with their values.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    samples(text)
        .get(series)
        .copied()
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn every_family_has_help_and_type_and_every_sample_belongs_to_one() {
    let text = text(
        &AgentMetrics::default(),
        snapshot(reference(), Evictions::default()),
    );
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = Vec::new();
    let mut last_family = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.is_empty(), "{line}");
            helped.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(
                helped.last().map(String::as_str),
                Some(name),
                "HELP before TYPE"
            );
            assert!(name.starts_with("gateway_"), "{name}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}"),
                other => panic!("{name}: unexpected type {other}"),
            }
            assert!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} declared twice"
            );
            last_family = Some((name.to_owned(), kind.to_owned()));
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let (family, kind) = last_family.as_ref().expect("a sample before any TYPE");
            let belongs = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name == format!("{family}{s}")),
                _ => name == family,
            };
            assert!(belongs, "{name} under # TYPE {family} {kind}");
        }
    }
    for expected in [
        "gateway_service_packets_total",
        "gateway_service_bytes_total",
        "gateway_backend_packets_total",
        "gateway_backend_bytes_total",
        "gateway_drops_total",
        "gateway_flows_created_total",
        "gateway_conntrack_entries",
        "gateway_conntrack_entries_limit",
        "gateway_conntrack_evictions_total",
        "gateway_affinity_entries",
        "gateway_affinity_entries_limit",
        "gateway_arp_replies_total",
        "gateway_gratuitous_arp_sent_total",
        "gateway_announcements",
        "gateway_announcements_gained_total",
        "gateway_announcements_lost_total",
        "gateway_reloads_total",
        "gateway_reload_duration_seconds",
        "gateway_config_last_reload_successful",
        "gateway_program_runs_total",
        "gateway_program_run_seconds_total",
        "gateway_build_info",
    ] {
        assert!(
            families.contains_key(expected),
            "{expected} missing:\n{text}"
        );
    }
}

#[test]
fn per_cpu_sums_show_per_frontend_and_once_per_backend() {
    let text = text(
        &AgentMetrics::default(),
        snapshot(reference(), Evictions::default()),
    );
    let http = r#"{service="gateway/cilium-gateway-gateway-external",port="http",frontend="192.168.10.50:80/TCP",direction="request"}"#;
    assert_eq!(
        value(&text, &format!("gateway_service_packets_total{http}")),
        10.0
    );
    assert_eq!(
        value(&text, &format!("gateway_service_bytes_total{http}")),
        1000.0
    );
    let reply = http.replace("request", "reply");
    assert_eq!(
        value(&text, &format!("gateway_service_packets_total{reply}")),
        5.0
    );
    // Two frontends list the backend; its counters show once, not twice.
    let backend = r#"{backend="10.244.1.10:8080",protocol="TCP",direction="request"}"#;
    assert_eq!(
        value(&text, &format!("gateway_backend_packets_total{backend}")),
        10.0
    );
    assert_eq!(
        text.matches("gateway_backend_packets_total{").count(),
        2,
        "one backend, two directions:\n{text}"
    );
}

#[test]
fn every_drop_reason_is_a_reason_label_and_other_counters_have_names() {
    let text = text(
        &AgentMetrics::default(),
        snapshot(vec![], Evictions::default()),
    );
    let drops: Vec<&str> = Counter::ALL
        .iter()
        .map(|c| c.name())
        .filter(|n| n.starts_with("drop_"))
        .collect();
    assert!(drops.contains(&"drop_unknown_port"));
    for (c, name) in Counter::ALL.iter().map(|c| (*c, c.name())) {
        let series = format!("gateway_drops_total{{reason=\"{name}\"}}");
        if drops.contains(&name) {
            assert_eq!(value(&text, &series), (10 + c as u64) as f64);
        } else {
            assert!(!text.contains(&series), "{series}");
        }
    }
    assert_eq!(
        value(&text, "gateway_flows_created_total"),
        (10 + Counter::CtCreated as u64) as f64
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_arp_replies_total{interface="ens18",vip="192.168.10.50"}"#
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_program_run_seconds_total{interface="ens18",direction="ingress"}"#
        ),
        0.0003
    );
}

#[test]
fn label_values_are_escaped() {
    // Kubernetes names cannot hold these, but an interface name can hold a quote or a
    // backslash: the exposition must stay parseable whatever a label holds.
    let s = snapshot(
        vec![frontend(
            "192.168.10.49:80/TCP",
            "ns/we\"ird\\name:po\nrt",
            vec![],
        )],
        Evictions::default(),
    );
    let text = text(&AgentMetrics::default(), s);
    assert!(
        text.contains(r#"service="ns/we\"ird\\name",port="po\nrt""#),
        "{text}"
    );
    for line in text.lines() {
        assert!(!line.is_empty(), "a raw newline split a sample:\n{text}");
    }
}

#[test]
fn derived_counters_never_go_down_between_scrapes() {
    let mut shown = Evictions::default();
    let mut scrape = |conntrack: u64, affinity: u64| {
        let mut s = snapshot(
            vec![],
            Evictions {
                conntrack,
                affinity,
            },
        );
        never_lower(&mut s, &mut shown);
        let text = text(&AgentMetrics::default(), s);
        (
            value(&text, "gateway_conntrack_evictions_total"),
            value(&text, "gateway_affinity_evictions_total"),
        )
    };
    assert_eq!(scrape(5, 2), (5.0, 2.0));
    // A read that raced with new flows estimates lower: each counter holds on its own.
    assert_eq!(scrape(3, 4), (5.0, 4.0));
    assert_eq!(scrape(8, 1), (8.0, 4.0));
}

#[test]
fn reloads_count_by_result_with_their_duration() {
    let agent = AgentMetrics::default();
    let scrape = |agent: &AgentMetrics| text(agent, snapshot(vec![], Evictions::default()));
    let before = scrape(&agent);
    assert_eq!(
        value(&before, r#"gateway_reloads_total{result="refused"}"#),
        0.0
    );
    assert_eq!(value(&before, "gateway_config_last_reload_successful"), 1.0);

    agent.reload_applied(Duration::from_millis(30));
    agent.reload_refused(Duration::from_millis(2));
    agent.reload_applied(Duration::from_millis(700));
    let after = scrape(&agent);
    assert_eq!(
        value(&after, r#"gateway_reloads_total{result="applied"}"#),
        2.0
    );
    assert_eq!(
        value(&after, r#"gateway_reloads_total{result="refused"}"#),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"gateway_reload_duration_seconds_bucket{result="applied",le="0.05"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"gateway_reload_duration_seconds_bucket{result="applied",le="+Inf"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            r#"gateway_reload_duration_seconds_sum{result="applied"}"#
        ),
        0.73
    );
    assert_eq!(value(&after, "gateway_config_last_reload_successful"), 1.0);
    agent.reload_refused(Duration::from_millis(1));
    assert_eq!(
        value(&scrape(&agent), "gateway_config_last_reload_successful"),
        0.0
    );
}

#[test]
fn announcements_gained_and_lost_add_up() {
    let agent = AgentMetrics::default();
    agent.announcements(3, 0);
    agent.announcements(1, 2);
    let text = text(&agent, snapshot(vec![], Evictions::default()));
    assert_eq!(value(&text, "gateway_announcements_gained_total"), 4.0);
    assert_eq!(value(&text, "gateway_announcements_lost_total"), 2.0);
}

#[test]
fn the_membership_shows_only_once_the_cluster_reports_it() {
    let agent = AgentMetrics::default();
    let before = text(&agent, snapshot(vec![], Evictions::default()));
    assert!(!before.contains("gateway_cluster_members"), "{before}");
    let member = |name: &str, liveness| MemberView {
        name: name.into(),
        addr: "192.168.10.11:7946".parse().unwrap(),
        liveness,
        incarnation: None,
        draining: false,
        holding: false,
        vips: vec![],
        heard_ago: None,
    };
    // A clone counts into the same metrics: the run loop and the endpoint share them.
    agent.clone().members(&[
        member("w1", Some(Liveness::Alive)),
        member("w2", Some(Liveness::Alive)),
        member("w3", Some(Liveness::Suspect)),
        member("cp1", None),
    ]);
    let after = text(&agent, snapshot(vec![], Evictions::default()));
    assert_eq!(
        value(&after, r#"gateway_cluster_members{state="alive"}"#),
        2.0
    );
    assert_eq!(
        value(&after, r#"gateway_cluster_members{state="suspect"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"gateway_cluster_members{state="unknown"}"#),
        1.0
    );
}
