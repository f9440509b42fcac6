//! The datapath's metrics, read from the pinned maps at scrape time through the views'
//! readers (`cli::inspect`): per-CPU counters summed over CPUs, map fill, announcements and
//! the kernel's run-time statistics of the attached programs. Reading never touches the
//! datapath: it only looks up map entries and program info.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Result;
use gateway_common::Counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::cli::inspect::{self, AnnouncementView, AttachmentView, Fill, ServiceView};
use crate::datapath::Maps;

/// Where a datapath counter shows. Every `Counter` must have a place: a new one does not
/// compile until it is given one.
enum Place {
    /// A drop, under its name as the `reason` label of `gateway_drops_total`.
    Drop,
    /// A counter of its own: name (without `_total`) and help.
    Own(&'static str, &'static str),
    /// Per announcement, from `gw_l2` (`gateway_arp_replies_total`).
    PerAnnouncement,
}

const fn place(counter: Counter) -> Place {
    match counter {
        Counter::DropUnknownPort
        | Counter::DropNoBackend
        | Counter::DropBackendGone
        | Counter::DropFragment
        | Counter::DropMalformed
        | Counter::DropNatFailed
        | Counter::DropIcmp
        | Counter::DropIcmpError
        | Counter::DropSourceRange
        | Counter::DropSnatExhausted
        | Counter::DropNoSnatAddr
        | Counter::DropNoRoute => Place::Drop,
        Counter::CtCreated => Place::Own(
            "gateway_flows_created",
            "New flows balanced: a backend was chosen and the flow tracked.",
        ),
        Counter::AffinityHit => Place::Own(
            "gateway_affinity_hits",
            "New flows whose backend came from a live ClientIP affinity entry.",
        ),
        Counter::RevNat => Place::Own(
            "gateway_replies_rewritten",
            "Backend replies rewritten back to the VIP.",
        ),
        Counter::SnatCreated => Place::Own(
            "gateway_flows_snated",
            "New flows SNATed to a backend on another node (externalTrafficPolicy Cluster).",
        ),
        Counter::CtReplaced => Place::Own(
            "gateway_conntrack_takeovers",
            "New connections that took over the conntrack entry of a closed one with the \
             same addresses and ports.",
        ),
        Counter::IcmpEchoReply => Place::Own(
            "gateway_icmp_echo_replies",
            "ICMP echo requests to a VIP answered, from the VIP.",
        ),
        Counter::IcmpErrorNat => Place::Own(
            "gateway_icmp_errors_translated",
            "ICMP errors about a tracked flow translated (outer and inner headers) and passed on.",
        ),
        Counter::IcmpErrorPassed => Place::Own(
            "gateway_icmp_errors_passed",
            "ICMP errors not to a VIP naming a backend but none of its tracked flows, passed on \
             untouched.",
        ),
        Counter::ArpReply => Place::PerAnnouncement,
        Counter::ArpGated => Place::Own(
            "gateway_arp_gated",
            "ARP requests for an announced VIP left unanswered because the cluster's lease \
             (the gate) had ended: the agent stopped renewing it, or lost its quorum.",
        ),
        Counter::Hairpin => Place::Own(
            "gateway_hairpin_connections",
            "Connections and datagrams from this node's processes and pods to a VIP it \
             announces, sent straight to a backend by the hairpin socket hooks.",
        ),
        Counter::AffinityCreated => Place::Own(
            "gateway_affinity_created",
            "ClientIP affinity entries created (a client's first new flow to a service, or its \
             first since its entry went).",
        ),
        Counter::AffinityRemoved => Place::Own(
            "gateway_affinity_removed",
            "ClientIP affinity entries the agent removed because their backend left the \
             service.",
        ),
    }
}

/// Everything the datapath's metrics show, read in one go.
pub struct Snapshot {
    counters: Vec<(Counter, u64)>,
    services: Vec<ServiceView>,
    fill: Fill,
    announcements: Vec<AnnouncementView>,
    attachments: Vec<AttachmentView>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub fn read(bpffs: &Path, maps: &Maps) -> Result<Self> {
        let counters = maps.counters()?;
        let fill = inspect::fill(maps, &counters.iter().copied().collect())?;
        Ok(Self {
            counters,
            services: inspect::services(bpffs, maps)?,
            fill,
            announcements: inspect::announcements(maps)?,
            attachments: inspect::attachments(bpffs)?,
        })
    }

    /// What LRU eviction took out of conntrack and affinity, as estimated so far.
    pub fn evictions(&self) -> Evictions {
        Evictions {
            conntrack: self.fill.conntrack_evicted,
            affinity: self.fill.affinity_evicted,
        }
    }

    /// The estimates of evictions are differences of reads that race with the datapath: a
    /// scrape may see one lower than the one before. A counter never goes down.
    pub fn evicted_at_least(&mut self, floor: Evictions) {
        self.fill.conntrack_evicted = self.fill.conntrack_evicted.max(floor.conntrack);
        self.fill.affinity_evicted = self.fill.affinity_evicted.max(floor.affinity);
    }
}

/// Entries LRU eviction took out of a full table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    pub conntrack: u64,
    pub affinity: u64,
}

/// `namespace/name:port` as the agent names a frontend's service in `gw_svc_names`, split.
fn service_and_port(name: &str) -> (&str, &str) {
    name.rsplit_once(':').unwrap_or((name, ""))
}

/// Both directions of a flow's traffic, as the `direction` label names them.
const REQUEST: &str = "request";
const REPLY: &str = "reply";

fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let series = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(series)?,
            _ => ConstGauge::new(value as i64).encode(series)?,
        }
    }
    Ok(())
}

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Counter, series)
}

fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    family(encoder, name, help, MetricType::Gauge, series)
}

/// No labels: one series.
fn single(value: u64) -> [([(&'static str, &'static str); 0], u64); 1] {
    [([], value)]
}

fn backend_labels<'a>(
    address: &'a str,
    protocol: &'static str,
    direction: &'static str,
) -> [(&'static str, &'a str); 3] {
    [
        ("backend", address),
        ("protocol", protocol),
        ("direction", direction),
    ]
}

/// A backend's traffic, once per backend however many frontends list it (the reference's
/// envoy pods serve every gateway's service): a backend is its address, port and protocol.
struct BackendTraffic {
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
}

impl Snapshot {
    fn backends(&self) -> BTreeMap<(&str, &'static str), BackendTraffic> {
        let mut backends = BTreeMap::new();
        for s in &self.services {
            // Draining backends carry traffic too (the flows they keep).
            for b in s.backends.iter().chain(&s.draining) {
                backends
                    .entry((b.address.as_str(), s.protocol))
                    .or_insert_with(|| BackendTraffic {
                        packets: b.packets,
                        bytes: b.bytes,
                        reply_packets: b.reply_packets,
                        reply_bytes: b.reply_bytes,
                    });
            }
        }
        backends
    }

    fn encode_traffic(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let frontend = |s: &'_ ServiceView, direction| {
            let (service, port) = service_and_port(&s.service);
            [
                ("service", service.to_owned()),
                ("port", port.to_owned()),
                ("frontend", s.frontend.clone()),
                ("direction", direction),
            ]
        };
        let per_frontend = |packets: bool| {
            self.services.iter().flat_map(move |s| {
                let (request, reply) = if packets {
                    (s.packets, s.reply_packets)
                } else {
                    (s.bytes, s.reply_bytes)
                };
                [
                    (frontend(s, REQUEST.to_owned()), request),
                    (frontend(s, REPLY.to_owned()), reply),
                ]
            })
        };
        counter(
            encoder,
            "gateway_service_packets",
            "Packets of a frontend's flows: client to backend (request) and back (reply).",
            per_frontend(true),
        )?;
        counter(
            encoder,
            "gateway_service_bytes",
            "Bytes of a frontend's flows: client to backend (request) and back (reply).",
            per_frontend(false),
        )?;
        counter(
            encoder,
            "gateway_service_denied_packets",
            "Packets from clients outside the frontend's loadBalancerSourceRanges, dropped.",
            self.services.iter().map(|s| {
                let (service, port) = service_and_port(&s.service);
                let labels = [
                    ("service", service.to_owned()),
                    ("port", port.to_owned()),
                    ("frontend", s.frontend.clone()),
                ];
                (labels, s.denied_packets)
            }),
        )?;

        let backends = self.backends();
        let per_backend = |packets: bool| {
            backends.iter().flat_map(move |(&(address, protocol), t)| {
                let (request, reply) = if packets {
                    (t.packets, t.reply_packets)
                } else {
                    (t.bytes, t.reply_bytes)
                };
                [
                    (backend_labels(address, protocol, REQUEST), request),
                    (backend_labels(address, protocol, REPLY), reply),
                ]
            })
        };
        counter(
            encoder,
            "gateway_backend_packets",
            "Packets to (request) and from (reply) a backend, over every frontend it serves.",
            per_backend(true),
        )?;
        counter(
            encoder,
            "gateway_backend_bytes",
            "Bytes to (request) and from (reply) a backend, over every frontend it serves.",
            per_backend(false),
        )
    }

    fn encode_counters(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        counter(
            encoder,
            "gateway_drops",
            "Packets to a VIP the datapath dropped, by reason.",
            self.counters
                .iter()
                .filter(|(c, _)| matches!(place(*c), Place::Drop))
                .map(|(c, v)| ([("reason", c.name())], *v)),
        )?;
        for (c, value) in &self.counters {
            if let Place::Own(name, help) = place(*c) {
                counter(encoder, name, help, single(*value))?;
            }
        }
        Ok(())
    }

    fn encode_fill(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let f = &self.fill;
        gauge(
            encoder,
            "gateway_conntrack_entries",
            "Conntrack entries present (live or expired).",
            single(f.conntrack_entries as u64),
        )?;
        gauge(
            encoder,
            "gateway_conntrack_entries_limit",
            "Conntrack entries the table holds (--ct-max); the least recently used flow is \
             evicted beyond.",
            single(u64::from(f.conntrack_max)),
        )?;
        counter(
            encoder,
            "gateway_conntrack_evictions",
            "Flows evicted from a full conntrack table (their connections lost their backend).",
            single(f.conntrack_evicted),
        )?;
        gauge(
            encoder,
            "gateway_affinity_entries",
            "ClientIP affinity entries present (live or expired).",
            single(f.affinities as u64),
        )?;
        gauge(
            encoder,
            "gateway_affinity_entries_limit",
            "ClientIP affinity entries the table holds (--affinity-max).",
            single(u64::from(f.affinity_max)),
        )?;
        counter(
            encoder,
            "gateway_affinity_evictions",
            "ClientIP affinity entries evicted from a full table (their clients' next flows \
             may get another backend).",
            single(f.affinity_evicted),
        )
    }

    fn encode_announcements(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels =
            |a: &AnnouncementView| [("interface", a.interface.clone()), ("vip", a.vip.clone())];
        gauge(
            encoder,
            "gateway_announcements",
            "Announcements (interface, VIP) this node answers ARP for.",
            single(self.announcements.len() as u64),
        )?;
        counter(
            encoder,
            "gateway_arp_replies",
            "ARP requests for an announced VIP answered by the datapath.",
            self.announcements
                .iter()
                .map(|a| (labels(a), a.arp_replies)),
        )?;
        counter(
            encoder,
            "gateway_gratuitous_arp_sent",
            "Gratuitous ARP frames (requests and replies) the agent sent for an announcement.",
            self.announcements.iter().map(|a| (labels(a), a.garp_sent)),
        )
    }

    fn encode_programs(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let labels = |a: &AttachmentView| {
            [
                ("interface", a.interface.clone()),
                ("direction", a.direction.name().to_owned()),
            ]
        };
        gauge(
            encoder,
            "gateway_program_attached",
            "1 while the datapath's program is in the interface's tcx chain.",
            self.attachments
                .iter()
                .map(|a| (labels(a), u64::from(a.attached))),
        )?;
        counter(
            encoder,
            "gateway_program_runs",
            "Packets the program ran for, counted by the kernel while \
             kernel.bpf_stats_enabled=1.",
            self.attachments.iter().map(|a| (labels(a), a.packets)),
        )?;
        let mut family = encoder.encode_descriptor(
            "gateway_program_run_seconds",
            "Time the program ran, counted by the kernel while kernel.bpf_stats_enabled=1 \
             (divided by gateway_program_runs_total: the time per packet).",
            None,
            MetricType::Counter,
        )?;
        for a in &self.attachments {
            ConstCounter::new(a.run_time_ns as f64 / 1e9)
                .encode(family.encode_family(&labels(a))?)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_traffic(&mut encoder)?;
        self.encode_counters(&mut encoder)?;
        self.encode_fill(&mut encoder)?;
        self.encode_announcements(&mut encoder)?;
        self.encode_programs(&mut encoder)
    }
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot made up by a test, as if read from maps holding these values.
    pub fn fixture(
        counters: Vec<(Counter, u64)>,
        services: Vec<ServiceView>,
        fill: Fill,
        announcements: Vec<AnnouncementView>,
        attachments: Vec<AttachmentView>,
    ) -> Self {
        Self {
            counters,
            services,
            fill,
            announcements,
            attachments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_place_and_drops_are_the_drop_reasons() {
        for c in Counter::ALL {
            assert_eq!(
                matches!(place(c), Place::Drop),
                c.name().starts_with("drop_"),
                "{}",
                c.name()
            );
            if let Place::Own(name, _) = place(c) {
                assert!(name.starts_with("gateway_") && !name.ends_with("_total"));
            }
        }
    }

    #[test]
    fn services_split_into_namespace_name_and_port() {
        assert_eq!(
            service_and_port("gateway/cilium-gateway-gateway-external:http"),
            ("gateway/cilium-gateway-gateway-external", "http")
        );
        assert_eq!(service_and_port("default/dns:53"), ("default/dns", "53"));
    }
}
