//! `v1 Service` of `type: LoadBalancer`: ports, traffic policy, affinity, the VIPs requested
//! and shared, the external IPs, the IP families, and the VIPs a previous allocation left
//! in `status`.
//!
//! A Service is delivered whenever it is a LoadBalancer of a class this agent serves, also
//! when it cannot be served: then it carries why ([`Service::unservable`]), which LB-IPAM
//! puts in its condition instead of a VIP. A port that cannot be served is skipped with a
//! finding; the others serve.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::error::ObjectDiagnostics;
use super::prefix::source_ranges;
use super::{Ipv4Net, ObjectRef, Protocol, Reason};

/// Cilium LB-IPAM's annotation requesting VIPs (comma-separated).
pub const LB_IPAM_IPS_ANNOTATION: &str = "lbipam.cilium.io/ips";
/// The older spelling Cilium still honours when the annotation above is absent.
pub const LB_IPAM_IPS_ANNOTATION_ALIAS: &str = "io.cilium/lb-ipam-ips";
/// Services with the same value share their VIPs when their ports do not clash.
pub const LB_IPAM_SHARING_KEY_ANNOTATION: &str = "lbipam.cilium.io/sharing-key";
pub const LB_IPAM_SHARING_KEY_ANNOTATION_ALIAS: &str = "io.cilium/lb-ipam-sharing-key";
/// The other namespaces (comma-separated, or `*`) a Service may share its VIPs with; both
/// Services must allow each other.
pub const LB_IPAM_SHARING_CROSS_NAMESPACE_ANNOTATION: &str =
    "lbipam.cilium.io/sharing-cross-namespace";
pub const LB_IPAM_SHARING_CROSS_NAMESPACE_ANNOTATION_ALIAS: &str =
    "io.cilium/lb-ipam-sharing-cross-namespace";
/// The class of Cilium's L2 announcer, which this agent stands in for.
pub const L2_ANNOUNCER_CLASS: &str = "io.cilium/l2-announcer";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// Kubernetes rejects ClientIP timeouts above one day.
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// A LoadBalancer service of a class this agent serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub object: ObjectRef,
    pub labels: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`: orders allocation, oldest first.
    pub created: Option<Timestamp>,
    /// `spec.selector`: Local services share a VIP only when they select the same pods.
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    pub traffic_policy: TrafficPolicy,
    /// `Some(seconds)` when `sessionAffinity: ClientIP`.
    pub affinity_timeout_secs: Option<u32>,
    /// The IPv4 VIPs asked for through `spec.loadBalancerIP` and the LB-IPAM annotation,
    /// each once, in the order written.
    pub requested_vips: Vec<FieldAddr>,
    /// IPv4 addresses of `status.loadBalancer.ingress[]`, in order: a previous allocation.
    pub status_vips: Vec<FieldAddr>,
    /// `lbipam.cilium.io/sharing-key`, with the namespaces it may be shared across.
    pub sharing: Option<Box<Sharing>>,
    /// `spec.externalIPs` (IPv4): served where an L2 policy with `externalIPs: true`
    /// announces them.
    pub external_ips: Vec<FieldAddr>,
    /// IPv6 is asked for besides IPv4 (a dual-stack Service): the IPv4 VIP is served and
    /// the IPv6 half is not yet.
    pub ipv6: Option<Ipv6Wanted>,
    /// Why the Service gets no VIP whatever the pools hold (an IPv6-only Service, a field
    /// Kubernetes would reject); the finding says it too.
    pub unservable: Option<Box<Unservable>>,
    /// `spec.loadBalancerSourceRanges`: `Some` admits only clients in its IPv4 prefixes;
    /// `None` (absent or empty) admits every client.
    pub source_ranges: Option<Vec<Ipv4Net>>,
}

/// An address together with the field it was read from, so findings can point at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldAddr {
    pub addr: Ipv4Addr,
    pub field: String,
}

/// The sharing key of a Service and whom it may share with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharing {
    pub key: String,
    /// The other namespaces allowed (`*` is every one); the Service's own always is.
    pub cross_namespace: Vec<String>,
}

impl Sharing {
    /// This side allows sharing with a Service in `namespace`.
    pub fn allows(&self, own: &str, namespace: &str) -> bool {
        own == namespace
            || (self.cross_namespace.iter()).any(|allowed| allowed == "*" || allowed == namespace)
    }
}

/// How the Service asks for IPv6 besides IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Wanted {
    /// `PreferDualStack`, or IPv6 addresses requested beside IPv4 ones: satisfied without.
    Preferred,
    /// `RequireDualStack`: not satisfied without, though the IPv4 VIP serves.
    Required,
}

/// Why a Service is not served at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unservable {
    pub reason: Reason,
    pub message: String,
}

/// `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TrafficPolicy {
    Local,
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.ports[].name` (may be empty).
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// `spec.ports[].targetPort`, defaulting to `port`.
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name: only EndpointSlice ports can resolve it.
    Named(String),
}

impl Service {
    pub const KIND: &str = "Service";
}

/// The `spec.loadBalancerClass`es this agent serves: none set, Cilium's L2 announcer's,
/// and those named with `--load-balancer-class`. A Service of any other class is another
/// controller's: it gets no VIP, no ARP and no finding beyond one info line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadBalancerClasses {
    also: Vec<String>,
}

impl LoadBalancerClasses {
    /// The default classes and `also`.
    pub fn new(also: Vec<String>) -> Self {
        Self { also }
    }

    pub fn serves(&self, class: Option<&str>) -> bool {
        match class {
            None => true,
            Some(class) => class == L2_ANNOUNCER_CLASS || self.also.iter().any(|c| c == class),
        }
    }
}

/// Whether `raw` is a LoadBalancer service; other types are ignored.
pub(crate) fn is_load_balancer(raw: &core::Service) -> bool {
    raw.spec
        .as_ref()
        .and_then(|spec| spec.type_.as_deref())
        .is_some_and(|t| t == "LoadBalancer")
}

/// Converts a LoadBalancer service; `None` (with an info line) when its class is another
/// controller's.
pub(crate) fn service(
    raw: &core::Service,
    object: ObjectRef,
    classes: &LoadBalancerClasses,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Option<Service> {
    let no_spec = core::ServiceSpec::default();
    let spec = raw.spec.as_ref().unwrap_or(&no_spec);
    let class = spec.load_balancer_class.as_deref();
    if !classes.serves(class) {
        diagnostics.info(
            Reason::LoadBalancerClassNotServed,
            "spec.loadBalancerClass",
            format!(
                "{:?} is another controller's class: left alone (no VIP, no ARP)",
                class.unwrap_or_default()
            ),
        );
        return None;
    }
    let mut unservable = None;
    let mut refuse =
        |diagnostics: &mut ObjectDiagnostics<'_>, reason: Reason, field: &str, message: String| {
            diagnostics.refuse(reason, field, message.clone());
            unservable.get_or_insert_with(|| Box::new(Unservable { reason, message }));
        };
    let ports = ports(spec.ports.as_deref().unwrap_or_default(), diagnostics);
    let traffic_policy = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(other) => {
            refuse(
                diagnostics,
                Reason::InvalidTrafficPolicy,
                "spec.externalTrafficPolicy",
                format!("unknown policy {other:?} (expected Local or Cluster): not served"),
            );
            TrafficPolicy::Cluster
        }
    };
    let affinity_timeout_secs = match affinity(spec) {
        Ok(timeout) => timeout,
        Err((field, message)) => {
            refuse(
                diagnostics,
                Reason::InvalidSessionAffinity,
                field,
                format!("{message}: not served"),
            );
            None
        }
    };
    let requested = requested_vips(raw);
    for (field, text) in &requested.invalid {
        refuse(
            diagnostics,
            Reason::InvalidRequestedIP,
            field,
            format!("{text:?} is not an IP address: not served"),
        );
    }
    let families = families(spec);
    if families.v6_only {
        refuse(
            diagnostics,
            Reason::IPv6NotServed,
            "spec.ipFamilies",
            format!(
                "an IPv6-only Service ({}): IPv6 is not served yet, and no IPv4 VIP is given \
                 in its place",
                families.written
            ),
        );
    } else if requested.v4.is_empty()
        && let Some((field, addr)) = requested.v6.first()
    {
        refuse(
            diagnostics,
            Reason::IPv6NotServed,
            field,
            format!(
                "requests only IPv6 ({addr}): IPv6 is not served yet, and no IPv4 VIP is \
                 given in its place"
            ),
        );
    }
    let (source_ranges, invalid_ranges) = source_ranges(
        spec.load_balancer_source_ranges
            .as_deref()
            .unwrap_or_default(),
        diagnostics,
    );
    for (field, message) in invalid_ranges {
        refuse(
            diagnostics,
            Reason::InvalidSourceRange,
            &field,
            format!("{message}: not served"),
        );
    }
    let ipv6 = if unservable.is_some() {
        None
    } else if families.v6_required {
        diagnostics.warn(
            Reason::IPv6NotServed,
            "spec.ipFamilyPolicy",
            "RequireDualStack: the IPv4 VIP is served, IPv6 is not served yet",
        );
        Some(Ipv6Wanted::Required)
    } else if families.v6_preferred || !requested.v6.is_empty() {
        let field = match requested.v6.first() {
            Some((field, _)) => field.as_str(),
            None => "spec.ipFamilyPolicy",
        };
        diagnostics.info(
            Reason::IPv6NotServed,
            field,
            "dual-stack: the IPv4 VIP is served, IPv6 is not served yet",
        );
        Some(Ipv6Wanted::Preferred)
    } else {
        None
    };
    // Kept for as long as the service is: 10,000 of them hold no spare capacity.
    let (mut requested_vips, mut status_vips) = (requested.v4, status_vips(raw, diagnostics));
    let mut external_ips = external_ips(spec, diagnostics);
    requested_vips.shrink_to_fit();
    status_vips.shrink_to_fit();
    external_ips.shrink_to_fit();
    let service = Service {
        object,
        labels: raw.metadata.labels.clone().unwrap_or_default(),
        created: raw.metadata.creation_timestamp.as_ref().map(|t| t.0),
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
        traffic_policy,
        affinity_timeout_secs,
        requested_vips,
        status_vips,
        sharing: sharing(raw),
        external_ips,
        ipv6,
        unservable,
        source_ranges,
    };
    Some(service)
}

/// k8s-openapi reads a missing required port as 0, so 0 also means "absent".
fn port_number(value: i32) -> Result<u16, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        Ok(_) => Err("0 or missing: a port in 1..=65535 is required".to_owned()),
        Err(_) => Err(format!("port {value} is outside 1..=65535")),
    }
}

/// The ports that can be served; each other one is skipped with a finding.
fn ports(raw: &[core::ServicePort], diagnostics: &mut ObjectDiagnostics<'_>) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let protocol = match raw.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some(other) => {
                diagnostics.warn(
                    Reason::UnsupportedProtocol,
                    format!("{at}.protocol"),
                    format!(
                        "unsupported protocol {other:?}: only TCP and UDP are served; the port \
                         is skipped"
                    ),
                );
                continue;
            }
        };
        let port = match port_number(raw.port) {
            Ok(port) => port,
            Err(why) => {
                let message = format!("{why}; the port is skipped");
                diagnostics.warn(Reason::InvalidPort, format!("{at}.port"), message);
                continue;
            }
        };
        let target_port = match &raw.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match port_number(*n) {
                Ok(n) => TargetPort::Number(n),
                Err(why) => {
                    let message = format!("{why}; the port is skipped");
                    diagnostics.warn(Reason::InvalidPort, format!("{at}.targetPort"), message);
                    continue;
                }
            },
            Some(IntOrString::String(name)) if name.is_empty() => {
                diagnostics.warn(
                    Reason::InvalidPort,
                    format!("{at}.targetPort"),
                    "empty port name; the port is skipped",
                );
                continue;
            }
            Some(IntOrString::String(name)) => TargetPort::Named(name.clone()),
        };
        if let Some(j) = ports
            .iter()
            .position(|p| p.port == port && p.protocol == protocol)
        {
            diagnostics.warn(
                Reason::DuplicatePort,
                format!("{at}.port"),
                format!("{port}/{protocol} is already spec.ports[{j}]; the port is skipped"),
            );
            continue;
        }
        ports.push(ServicePort {
            name: raw.name.clone().unwrap_or_default(),
            port,
            protocol,
            target_port,
        });
    }
    ports
}

/// The ClientIP timeout, or the field and why it is not one Kubernetes accepts.
fn affinity(spec: &core::ServiceSpec) -> Result<Option<u32>, (&'static str, String)> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECS)),
                Some(secs) => match u32::try_from(secs) {
                    Ok(secs) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&secs) => Ok(Some(secs)),
                    _ => Err((
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("{secs} is outside 1..={MAX_AFFINITY_TIMEOUT_SECS}"),
                    )),
                },
            }
        }
        Some(other) => Err((
            "spec.sessionAffinity",
            format!("unknown affinity {other:?} (expected None or ClientIP)"),
        )),
    }
}

/// The addresses a Service requests, by family, each with the field it is written in.
#[derive(Default)]
struct Requested {
    v4: Vec<FieldAddr>,
    v6: Vec<(String, std::net::Ipv6Addr)>,
    /// Entries that are not addresses: (field, text).
    invalid: Vec<(String, String)>,
}

/// The value of the first of `keys` the Service is annotated with (and not blank).
fn annotation<'s>(
    raw: &'s core::Service,
    keys: [&'static str; 2],
) -> Option<(&'static str, &'s str)> {
    let annotations = raw.metadata.annotations.as_ref()?;
    keys.into_iter().find_map(|key| {
        let value = annotations.get(key)?;
        (!value.trim().is_empty()).then_some((key, value.as_str()))
    })
}

/// The union of `spec.loadBalancerIP` and the LB-IPAM annotation, as Cilium takes it.
fn requested_vips(raw: &core::Service) -> Requested {
    let mut entries: Vec<(String, &str)> = Vec::new();
    if let Some(ip) = raw
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
    {
        entries.push(("spec.loadBalancerIP".to_owned(), ip));
    }
    if let Some((key, value)) =
        annotation(raw, [LB_IPAM_IPS_ANNOTATION, LB_IPAM_IPS_ANNOTATION_ALIAS])
    {
        let field = format!("metadata.annotations[{key:?}]");
        entries.extend(value.split(',').map(|ip| (field.clone(), ip)));
    }
    let mut requested = Requested::default();
    for (field, text) in entries {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => {
                if !requested.v4.iter().any(|r| r.addr == addr) {
                    requested.v4.push(FieldAddr { addr, field });
                }
            }
            Ok(IpAddr::V6(addr)) => requested.v6.push((field, addr)),
            Err(_) => requested.invalid.push((field, text.to_owned())),
        }
    }
    requested
}

/// What `spec.ipFamilyPolicy` and `spec.ipFamilies` ask for, read as Cilium's LB-IPAM
/// reads them.
struct Families {
    v6_only: bool,
    v6_preferred: bool,
    v6_required: bool,
    /// The fields as written, for the finding.
    written: String,
}

fn families(spec: &core::ServiceSpec) -> Families {
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let policy = spec.ip_family_policy.as_deref();
    let first_is_v6 = families.first().is_some_and(|f| f == "IPv6");
    let has = |family: &str| families.is_empty() || families.iter().any(|f| f == family);
    let written = format!(
        "spec.ipFamilyPolicy: {}, spec.ipFamilies: [{}]",
        policy.unwrap_or("-"),
        families.join(", ")
    );
    match policy {
        Some("RequireDualStack") => Families {
            v6_only: false,
            v6_preferred: false,
            v6_required: true,
            written,
        },
        Some("PreferDualStack") => Families {
            v6_only: !has("IPv4"),
            v6_preferred: has("IPv4") && has("IPv6"),
            v6_required: false,
            written,
        },
        // SingleStack, or no policy: the first family.
        _ => Families {
            v6_only: first_is_v6,
            v6_preferred: false,
            v6_required: false,
            written,
        },
    }
}

fn status_vips(raw: &core::Service, diagnostics: &mut ObjectDiagnostics<'_>) -> Vec<FieldAddr> {
    let ingress = raw
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut vips = Vec::new();
    for (i, entry) in ingress.iter().enumerate() {
        let Some(text) = entry.ip.as_deref() else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => vips.push(FieldAddr { addr, field }),
            // The IPv6 half of a dual-stack allocation: not ours to serve, nothing to say.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => diagnostics.warn(
                Reason::InvalidAddress,
                field,
                format!("{text:?} is not an IP address; the entry is ignored"),
            ),
        }
    }
    vips
}

fn sharing(raw: &core::Service) -> Option<Box<Sharing>> {
    let key = annotation(
        raw,
        [
            LB_IPAM_SHARING_KEY_ANNOTATION,
            LB_IPAM_SHARING_KEY_ANNOTATION_ALIAS,
        ],
    )?
    .1;
    let cross_namespace = annotation(
        raw,
        [
            LB_IPAM_SHARING_CROSS_NAMESPACE_ANNOTATION,
            LB_IPAM_SHARING_CROSS_NAMESPACE_ANNOTATION_ALIAS,
        ],
    )
    .map(|(_, value)| {
        (value.split(','))
            .map(str::trim)
            .filter(|namespace| !namespace.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default();
    Some(Box::new(Sharing {
        key: key.to_owned(),
        cross_namespace,
    }))
}

fn external_ips(
    spec: &core::ServiceSpec,
    diagnostics: &mut ObjectDiagnostics<'_>,
) -> Vec<FieldAddr> {
    let mut ips: Vec<FieldAddr> = Vec::new();
    for (i, text) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match text.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(addr)) => {
                if !ips.iter().any(|ip| ip.addr == addr) {
                    ips.push(FieldAddr { addr, field });
                }
            }
            Ok(IpAddr::V6(addr)) => diagnostics.info(
                Reason::IPv6NotServed,
                field,
                format!("IPv6 external IP {addr} is not served yet"),
            ),
            Err(_) => diagnostics.warn(
                Reason::InvalidAddress,
                field,
                format!("{text:?} is not an IP address; the entry is ignored"),
            ),
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::Severity;
    use super::super::fixtures::*;
    use super::*;

    fn only_service(text: &str) -> Service {
        let config = parse_ok(text);
        assert_eq!(config.services.len(), 1);
        std::sync::Arc::unwrap_or_clone(config.services[0].clone())
    }

    #[test]
    fn reads_every_field_of_the_reference_gateway_service() {
        let config = reference();
        let internal = &config.services[1];
        assert_eq!(
            internal.object.to_string(),
            "Service/gateway/cilium-gateway-gateway-internal"
        );
        assert_eq!(
            internal
                .labels
                .get("io.cilium.gateway/owning-gateway")
                .map(String::as_str),
            Some("gateway-internal")
        );
        assert_eq!(
            internal.created.map(|t| t.to_string()).as_deref(),
            Some("2025-10-23T10:00:00Z")
        );
        assert_eq!(internal.traffic_policy, TrafficPolicy::Local);
        assert_eq!(internal.affinity_timeout_secs, Some(10_800));
        assert_eq!(
            internal.ports,
            [
                ServicePort {
                    name: "port-80".into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(80),
                },
                ServicePort {
                    name: "port-443".into(),
                    port: 443,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(443),
                },
            ]
        );
        assert_eq!(
            internal.requested_vips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 49),
                field: "metadata.annotations[\"lbipam.cilium.io/ips\"]".into(),
            }]
        );
        assert_eq!(
            internal
                .selector
                .get("io.cilium.gateway/owning-gateway")
                .map(String::as_str),
            Some("gateway-internal")
        );
        assert_eq!(internal.sharing, None);
        assert_eq!(internal.external_ips, []);
        assert_eq!(internal.ipv6, None);
        assert_eq!(internal.unservable, None);
        assert_eq!(
            internal.status_vips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 49),
                field: "status.loadBalancer.ingress[0].ip".into(),
            }]
        );
        assert_eq!(
            config.services[0].requested_vips[0].addr,
            Ipv4Addr::new(192, 168, 10, 50)
        );
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let service = only_service(&lb_service("web", "shop", ""));
        assert_eq!(service.traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(service.affinity_timeout_secs, None);
        assert_eq!(service.requested_vips, []);
        assert_eq!(service.status_vips, []);
        assert_eq!(service.created, None);
        assert_eq!(
            service.ports,
            [ServicePort {
                name: String::new(),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(80),
            }]
        );
    }

    #[test]
    fn ports_protocols_and_target_ports() {
        let service = only_service(&lb_service(
            "web",
            "dns",
            "    - name: dns\n      port: 53\n      protocol: UDP\n      targetPort: 5353\n\
             \x20   - name: named\n      port: 8080\n      targetPort: http\n",
        ));
        assert_eq!(service.ports[1].protocol, Protocol::Udp);
        assert_eq!(service.ports[1].target_port, TargetPort::Number(5353));
        assert_eq!(service.ports[2].protocol, Protocol::Tcp);
        assert_eq!(
            service.ports[2].target_port,
            TargetPort::Named("http".into())
        );
    }

    #[test]
    fn session_affinity() {
        let cases = [
            ("  sessionAffinity: None\n", None),
            (
                "  sessionAffinity: ClientIP\n",
                Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
            ),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n",
                Some(1),
            ),
            (
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86400\n",
                Some(86_400),
            ),
            // The timeout means nothing without ClientIP affinity.
            (
                "  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 60\n",
                None,
            ),
        ];
        for (spec, expected) in cases {
            let service = only_service(&lb_service("web", "shop", spec));
            assert_eq!(service.affinity_timeout_secs, expected, "{spec}");
        }
    }

    #[test]
    fn traffic_policy() {
        for (spec, expected) in [
            ("  externalTrafficPolicy: Local\n", TrafficPolicy::Local),
            ("  externalTrafficPolicy: Cluster\n", TrafficPolicy::Cluster),
            ("", TrafficPolicy::Cluster),
        ] {
            let service = only_service(&lb_service("web", "shop", spec));
            assert_eq!(service.traffic_policy, expected, "{spec}");
        }
    }

    fn with_metadata(annotations: &str, spec: &str) -> String {
        lb_service("web", "shop", spec).replace(
            "  namespace: web\n",
            &format!("  namespace: web\n  annotations:\n{annotations}"),
        )
    }

    /// (requested addresses, their fields) of one service.
    fn requested(text: &str) -> Vec<(String, String)> {
        (only_service(text).requested_vips.iter())
            .map(|r| (r.addr.to_string(), r.field.clone()))
            .collect()
    }

    #[test]
    fn requested_vip_sources() {
        let annotation = "metadata.annotations[\"lbipam.cilium.io/ips\"]";
        let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
            (
                with_metadata("    x: y\n", "  loadBalancerIP: 192.168.10.40\n"),
                vec![("192.168.10.40", "spec.loadBalancerIP")],
            ),
            (
                with_metadata("    io.cilium/lb-ipam-ips: 192.168.10.41\n", ""),
                vec![(
                    "192.168.10.41",
                    "metadata.annotations[\"io.cilium/lb-ipam-ips\"]",
                )],
            ),
            // Dual-stack request: the IPv4 entry is the VIP.
            (
                with_metadata(
                    "    lbipam.cilium.io/ips: \"2001:db8::1, 192.168.10.42\"\n",
                    "",
                ),
                vec![("192.168.10.42", annotation)],
            ),
            // The same address twice is one request.
            (
                with_metadata(
                    "    lbipam.cilium.io/ips: 192.168.10.43\n",
                    "  loadBalancerIP: 192.168.10.43\n",
                ),
                vec![("192.168.10.43", "spec.loadBalancerIP")],
            ),
            // Several, in the order written: the union of both fields, as Cilium takes it.
            (
                with_metadata(
                    "    lbipam.cilium.io/ips: \"192.168.10.45,192.168.10.44\"\n",
                    "  loadBalancerIP: 192.168.10.46\n",
                ),
                vec![
                    ("192.168.10.46", "spec.loadBalancerIP"),
                    ("192.168.10.45", annotation),
                    ("192.168.10.44", annotation),
                ],
            ),
        ];
        for (text, expected) in cases {
            let expected: Vec<(String, String)> = (expected.into_iter())
                .map(|(a, f)| (a.to_owned(), f.to_owned()))
                .collect();
            assert_eq!(requested(&text), expected, "{text}");
        }
        let findings = parse_reasons(&with_metadata(
            "    lbipam.cilium.io/ips: \"2001:db8::1, 192.168.10.42\"\n",
            "",
        ));
        assert_eq!(findings.len(), 1, "{findings:?}");
        let (severity, reason, line) = &findings[0];
        assert_eq!(
            (*severity, *reason),
            (Severity::Info, Reason::IPv6NotServed)
        );
        assert!(
            line.starts_with(&format!(
                "objects.yaml: Service/web/shop: {annotation}: dual-stack"
            )),
            "{line}"
        );
    }

    #[test]
    fn ip_families() {
        let families = |spec: &str| {
            let service = only_service(&lb_service("web", "shop", spec));
            let (unservable, ipv6) = (service.unservable.map(|u| u.reason), service.ipv6);
            let reasons: Vec<(Severity, Reason)> =
                (parse_reasons(&lb_service("web", "shop", spec)).into_iter())
                    .map(|(severity, reason, _)| (severity, reason))
                    .collect();
            (unservable, ipv6, reasons)
        };
        let v6 = Some(Reason::IPv6NotServed);
        let cases = [
            ("", (None, None, vec![])),
            (
                "  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n",
                (None, None, vec![]),
            ),
            // IPv6-only: no VIP, and never an IPv4 one in its place.
            (
                "  ipFamilies: [IPv6]\n  ipFamilyPolicy: SingleStack\n",
                (v6, None, vec![(Severity::Error, Reason::IPv6NotServed)]),
            ),
            (
                "  ipFamilies: [IPv6, IPv4]\n",
                (v6, None, vec![(Severity::Error, Reason::IPv6NotServed)]),
            ),
            (
                "  ipFamilies: [IPv6]\n  ipFamilyPolicy: PreferDualStack\n",
                (v6, None, vec![(Severity::Error, Reason::IPv6NotServed)]),
            ),
            // Dual-stack: the IPv4 VIP, and a note.
            (
                "  ipFamilies: [IPv6, IPv4]\n  ipFamilyPolicy: PreferDualStack\n",
                (
                    None,
                    Some(Ipv6Wanted::Preferred),
                    vec![(Severity::Info, Reason::IPv6NotServed)],
                ),
            ),
            (
                "  ipFamilyPolicy: RequireDualStack\n",
                (
                    None,
                    Some(Ipv6Wanted::Required),
                    vec![(Severity::Warning, Reason::IPv6NotServed)],
                ),
            ),
            // Only IPv6 requested: refused, as an IPv6-only service.
            (
                "  loadBalancerIP: \"2001:db8::7\"\n",
                (v6, None, vec![(Severity::Error, Reason::IPv6NotServed)]),
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(families(spec), expected, "{spec}");
        }
        let (_, _, line) = &parse_reasons(&lb_service("web", "shop", "  ipFamilies: [IPv6]\n"))[0];
        assert!(
            line.contains("spec.ipFamilies: an IPv6-only Service (spec.ipFamilyPolicy: -, spec.ipFamilies: [IPv6]): IPv6 is not served yet, and no IPv4 VIP is given in its place"),
            "{line}"
        );
    }

    #[test]
    fn sharing_keys_and_external_ips() {
        let text = with_metadata(
            "    lbipam.cilium.io/sharing-key: dns\n    lbipam.cilium.io/sharing-cross-namespace: \"kube-system, web-2\"\n",
            "  externalIPs: [\"192.168.10.70\", \"2001:db8::70\", \"192.168.10.70\", nope]\n",
        );
        let service = only_service(&text);
        let sharing = service.sharing.clone().expect("a sharing key");
        assert_eq!(sharing.key, "dns");
        assert_eq!(sharing.cross_namespace, ["kube-system", "web-2"]);
        assert!(sharing.allows("web", "web") && sharing.allows("web", "web-2"));
        assert!(!sharing.allows("web", "other"));
        let everyone = crate::config::Sharing {
            key: "k".into(),
            cross_namespace: vec!["*".into()],
        };
        assert!(everyone.allows("a", "b"));
        assert_eq!(
            service.external_ips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 70),
                field: "spec.externalIPs[0]".into(),
            }]
        );
        let reasons = parse_severities(&text);
        assert_eq!(
            reasons,
            [
                (Severity::Info, Reason::IPv6NotServed),
                (Severity::Warning, Reason::InvalidAddress),
            ]
        );
    }

    #[test]
    fn other_load_balancer_classes_are_left_alone_with_one_info_line() {
        // An SCTP port too, which a served Service would be told about.
        let classed = |class: &str| {
            lb_service(
                "web",
                "shop",
                &format!("    - port: 9\n      protocol: SCTP\n  loadBalancerClass: {class}\n"),
            )
        };
        // Served: no class, Cilium's L2 announcer, and one named by a flag.
        assert_eq!(parse_ok(&lb_service("web", "shop", "")).services.len(), 1);
        assert_eq!(
            parse_ok(&classed("io.cilium/l2-announcer")).services.len(),
            1
        );
        let metallb = classed("metallb.io/metallb");
        let config = parse_ok(&metallb);
        assert!(config.services.is_empty());
        assert_eq!(
            parse_findings(&metallb),
            [
                "objects.yaml: Service/web/shop: spec.loadBalancerClass: \"metallb.io/metallb\" is another controller's class: left alone (no VIP, no ARP)"
            ]
        );
        assert_eq!(config.findings[0].severity, Severity::Info);
        let source = crate::source::file::FileSource::new(
            std::path::Path::new(FILE),
            LoadBalancerClasses::new(vec!["metallb.io/metallb".into()]),
        );
        let update = source.read_text(&metallb).expect("parses");
        let mut store = crate::store::Store::new(FILE);
        store.apply(update.batch);
        assert_eq!(store.config().services.len(), 1);
    }

    #[test]
    fn status_keeps_ipv4_ingress_addresses() {
        let text = format!(
            "{}status:\n  loadBalancer:\n    ingress:\n      - hostname: lb.example\n\
             \x20     - ip: 2001:db8::7\n      - ip: 192.168.10.44\n",
            lb_service("web", "shop", "")
        );
        let service = only_service(&text);
        assert_eq!(
            service.status_vips,
            [FieldAddr {
                addr: Ipv4Addr::new(192, 168, 10, 44),
                field: "status.loadBalancer.ingress[2].ip".into(),
            }]
        );
    }

    #[test]
    fn ports_that_cannot_be_served_are_skipped_and_the_others_serve() {
        let cases: Vec<(String, Reason, &str, &str)> = vec![
            (
                lb_service("web", "shop", "    - port: 9\n      protocol: SCTP\n"),
                Reason::UnsupportedProtocol,
                "spec.ports[1].protocol",
                "unsupported protocol \"SCTP\": only TCP and UDP are served; the port is skipped",
            ),
            (
                lb_service("web", "shop", "    - port: 70000\n"),
                Reason::InvalidPort,
                "spec.ports[1].port",
                "port 70000 is outside 1..=65535; the port is skipped",
            ),
            (
                lb_service("web", "shop", "    - name: x\n"),
                Reason::InvalidPort,
                "spec.ports[1].port",
                "0 or missing",
            ),
            (
                lb_service("web", "shop", "    - port: 81\n      targetPort: -1\n"),
                Reason::InvalidPort,
                "spec.ports[1].targetPort",
                "port -1 is outside 1..=65535",
            ),
            (
                lb_service("web", "shop", "    - port: 81\n      targetPort: \"\"\n"),
                Reason::InvalidPort,
                "spec.ports[1].targetPort",
                "empty port name",
            ),
            (
                lb_service("web", "shop", "    - port: 80\n      protocol: TCP\n"),
                Reason::DuplicatePort,
                "spec.ports[1].port",
                "80/TCP is already spec.ports[0]",
            ),
            (
                format!(
                    "{}status:\n  loadBalancer:\n    ingress:\n      - ip: nope\n",
                    lb_service("web", "shop", "")
                ),
                Reason::InvalidAddress,
                "status.loadBalancer.ingress[0].ip",
                "\"nope\" is not an IP address; the entry is ignored",
            ),
        ];
        for (text, reason, field, message) in cases {
            let service = only_service(&text);
            assert_eq!(service.unservable, None, "{text}");
            assert_eq!(service.ports.len(), 1, "{text}");
            assert_eq!(service.ports[0].port, 80, "{text}");
            let findings = parse_reasons(&text);
            assert_eq!(findings.len(), 1, "{findings:#?}");
            let (severity, found, line) = &findings[0];
            assert_eq!((*severity, *found), (Severity::Warning, reason), "{line}");
            assert_line(
                std::slice::from_ref(line),
                &[
                    &format!("objects.yaml: Service/web/shop: {field}: "),
                    message,
                ],
            );
        }
    }

    #[test]
    fn a_service_that_cannot_be_served_is_delivered_with_why() {
        let annotated = |value: &str| {
            lb_service("web", "shop", "").replace(
                "  namespace: web\n",
                &format!(
                    "  namespace: web\n  annotations:\n    lbipam.cilium.io/ips: \"{value}\"\n"
                ),
            )
        };
        let cases: Vec<(String, Reason, &str, &str)> = vec![
            (
                lb_service("web", "shop", "  externalTrafficPolicy: local\n"),
                Reason::InvalidTrafficPolicy,
                "spec.externalTrafficPolicy",
                "unknown policy \"local\"",
            ),
            (
                lb_service("web", "shop", "  sessionAffinity: Cookie\n"),
                Reason::InvalidSessionAffinity,
                "spec.sessionAffinity",
                "unknown affinity \"Cookie\"",
            ),
            (
                lb_service(
                    "web",
                    "shop",
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 0\n",
                ),
                Reason::InvalidSessionAffinity,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "0 is outside 1..=86400",
            ),
            (
                lb_service(
                    "web",
                    "shop",
                    "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 86401\n",
                ),
                Reason::InvalidSessionAffinity,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                "86401 is outside 1..=86400",
            ),
            (
                lb_service("web", "shop", "  loadBalancerIP: 192.168.10.300\n"),
                Reason::InvalidRequestedIP,
                "spec.loadBalancerIP",
                "\"192.168.10.300\" is not an IP address: not served",
            ),
            (
                annotated("192.168.10.49, banana"),
                Reason::InvalidRequestedIP,
                "metadata.annotations[\"lbipam.cilium.io/ips\"]",
                "\"banana\" is not an IP address",
            ),
        ];
        for (text, reason, field, message) in cases {
            let service = only_service(&text);
            let unservable = service.unservable.expect("unservable");
            assert_eq!(unservable.reason, reason, "{text}");
            assert!(unservable.message.contains(message), "{unservable:?}");
            let findings = parse_reasons(&text);
            assert_eq!(findings.len(), 1, "{findings:#?}");
            let (severity, found, line) = &findings[0];
            assert_eq!((*severity, *found), (Severity::Error, reason));
            assert_line(
                std::slice::from_ref(line),
                &[
                    &format!("objects.yaml: Service/web/shop: {field}: "),
                    message,
                ],
            );
        }
    }
}
