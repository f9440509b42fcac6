//! What the objects' status should say, from the model's answer (pure): each LoadBalancer
//! Service's VIPs in `status.loadBalancer.ingress` and Cilium's condition saying whether its
//! request is met and why not, and the findings about it that its Events tell; each pool's
//! counts of addresses and whether it conflicts, as `model::status` lays them out. The condition types are Cilium LB-IPAM's, so what
//! operators and their tools read from Cilium reads the same here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::config::{Finding, ObjectRef, Reason, Service, Severity};
use crate::model::{
    self, POOL_CONFLICT_CONDITION, POOL_IPS_AVAILABLE_CONDITION, POOL_IPS_TOTAL_CONDITION,
    POOL_IPS_USED_CONDITION,
};

pub use crate::model::SERVICE_CONDITION;

/// Every condition type the agent writes (it leaves others alone).
pub const OWN_CONDITIONS: [&str; 5] = [
    SERVICE_CONDITION,
    POOL_CONFLICT_CONDITION,
    POOL_IPS_TOTAL_CONDITION,
    POOL_IPS_AVAILABLE_CONDITION,
    POOL_IPS_USED_CONDITION,
];

/// One status condition, without its transition time (kept from what is there while the
/// status does not change).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Condition {
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    fn new(type_: &str, status: &str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn met(type_: &str, met: bool, reason: Reason, message: impl Into<String>) -> Self {
        let status = if met { "True" } else { "False" };
        Self::new(type_, status, reason.as_str(), message)
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// What a Service's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    pub ingress: Vec<Ipv4Addr>,
    pub condition: Condition,
}

/// What a pool's status should say: its conditions, sorted by type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    pub conditions: Vec<Condition>,
}

/// One finding about a Service, as an Event on it tells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Notice {
    pub reason: Reason,
    /// The field, then what was found.
    pub message: String,
    /// A warning or an error (`Warning` Event), or worth knowing (`Normal`).
    pub warning: bool,
}

/// The status of every object the agent answers for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ObjectRef, ServiceStatus>,
    /// By pool name.
    pub pools: BTreeMap<String, PoolStatus>,
    /// The findings about each Service of `services` (those without any are absent).
    pub notices: BTreeMap<ObjectRef, BTreeSet<Notice>>,
}

/// The status that the model's answer calls for: `services` and `pools` as the model
/// computed them (every agent computes the same), and `findings`, of which those about a
/// Service the source could not read give that Service its condition.
pub fn desired(
    services: &[model::ServiceStatus],
    pools: &[model::PoolStatus],
    findings: &[Finding],
) -> Desired {
    let mut desired = Desired::default();
    for service in services {
        let status = ServiceStatus {
            ingress: service.vips.iter().map(|v| v.vip).collect(),
            condition: Condition::met(
                SERVICE_CONDITION,
                service.satisfied,
                service.reason,
                service.message.clone(),
            ),
        };
        desired.services.insert(service.service.clone(), status);
    }
    // Services the source could not read are not in the store: they get no VIP, and say why.
    for finding in findings {
        let Some(object) = &finding.object else {
            continue;
        };
        if object.kind != Service::KIND || finding.reason != Reason::ObjectNotRead {
            continue;
        }
        let why = message(&finding.field, &finding.message);
        desired
            .services
            .entry(object.clone())
            .and_modify(|status| {
                if !status.condition.message.is_empty() {
                    status.condition.message.push_str("; ");
                }
                status.condition.message.push_str(&why);
            })
            .or_insert_with(|| ServiceStatus {
                ingress: Vec::new(),
                condition: Condition::met(SERVICE_CONDITION, false, Reason::ObjectNotRead, why),
            });
    }
    for pool in pools {
        desired
            .pools
            .insert(pool.pool.to_string(), pool_status(pool));
    }
    // Only the Services the agent answers for: another controller's are left alone.
    for finding in findings {
        let Some(object) = &finding.object else {
            continue;
        };
        if object.kind != Service::KIND || !desired.services.contains_key(object) {
            continue;
        }
        let notice = Notice {
            reason: finding.reason,
            message: message(&finding.field, &finding.message),
            warning: finding.severity != Severity::Info,
        };
        desired
            .notices
            .entry(object.clone())
            .or_default()
            .insert(notice);
    }
    desired
}

fn message(field: &str, message: &str) -> String {
    if field.is_empty() {
        message.to_owned()
    } else {
        format!("{field}: {message}")
    }
}

/// A pool's conditions as Cilium writes them (`kubectl get ippools` prints CONFLICTING and
/// IPS AVAILABLE from them).
fn pool_status(pool: &model::PoolStatus) -> PoolStatus {
    let conflict = match &pool.conflict {
        Some(why) => Condition::new(POOL_CONFLICT_CONDITION, "True", "PoolConflict", why),
        None => Condition::new(POOL_CONFLICT_CONDITION, "False", "Resolved", ""),
    };
    let count = |type_, n: u64| Condition::new(type_, "Unknown", "NoReason", n.to_string());
    let mut conditions = vec![
        conflict,
        count(POOL_IPS_TOTAL_CONDITION, pool.total),
        count(POOL_IPS_AVAILABLE_CONDITION, pool.available),
        count(POOL_IPS_USED_CONDITION, pool.used),
    ];
    conditions.sort();
    PoolStatus { conditions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;
    use crate::config::fixtures::*;

    fn of(desired: &Desired, namespace: &str, name: &str) -> ServiceStatus {
        desired
            .services
            .iter()
            .find(|(o, _)| o.namespace == namespace && o.name == name)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no status for {namespace}/{name}: {desired:?}"))
    }

    fn counts(desired: &Desired, pool: &str) -> Vec<(String, String)> {
        desired.pools[pool]
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), format!("{} {}", c.status, c.message)))
            .collect()
    }

    fn of_config(config: &crate::config::Config) -> Desired {
        let cluster = model::cluster_state(config);
        desired(&cluster.services, &cluster.pools, &cluster.findings)
    }

    #[test]
    fn an_allocated_service_gets_its_vip_and_a_satisfied_condition() {
        let desired = of_config(&reference());
        let external = of(&desired, "gateway", "cilium-gateway-gateway-external");
        assert_eq!(
            external.ingress,
            ["192.168.10.50".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(external.condition.is_true());
        assert_eq!(external.condition.type_, SERVICE_CONDITION);
        assert_eq!(external.condition.reason, "Satisfied");
        // The /27 with its first and last address reserved: 30, of which 2 are used.
        assert_eq!(
            counts(&desired, "first-pool"),
            [
                ("cilium.io/IPsAvailable".into(), "Unknown 28".into()),
                ("cilium.io/IPsTotal".into(), "Unknown 30".into()),
                ("cilium.io/IPsUsed".into(), "Unknown 2".into()),
                ("cilium.io/PoolConflict".into(), "False ".into()),
            ]
        );
    }

    #[test]
    fn a_service_without_a_vip_says_why_in_cilium_terms() {
        let mut config = reference();
        config.pools = Default::default();
        let desired = of_config(&config);
        let external = of(&desired, "gateway", "cilium-gateway-gateway-external");
        assert!(external.ingress.is_empty());
        assert!(!external.condition.is_true());
        assert_eq!(external.condition.reason, "RequestedIPNotInPool");
        assert!(!external.condition.message.is_empty());
    }

    #[test]
    fn every_finding_about_a_served_service_is_a_notice_warnings_and_errors_as_warnings() {
        let service = |name: &str| ObjectRef {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: name.into(),
        };
        let finding = |object: ObjectRef, field: &str, reason, severity| Finding {
            file: FILE.into(),
            object: Some(object),
            field: field.into(),
            message: format!("{reason:?} found"),
            reason,
            severity,
        };
        let mut config = reference();
        config.pools = Default::default();
        let cluster = model::cluster_state(&config);
        let external = cluster
            .services
            .iter()
            .find(|s| s.service.name == "cilium-gateway-gateway-external")
            .expect("the reference's external gateway")
            .service
            .clone();
        let findings = [
            finding(
                external.clone(),
                "spec.ports[1].protocol",
                Reason::UnsupportedProtocol,
                Severity::Warning,
            ),
            finding(
                external.clone(),
                "spec.ports[2].protocol",
                Reason::UnsupportedProtocol,
                Severity::Warning,
            ),
            finding(external.clone(), "", Reason::IPv6NotServed, Severity::Info),
            // Another controller's Service, and a pool: no Event of the agent's.
            finding(
                service("elsewhere"),
                "spec.loadBalancerClass",
                Reason::LoadBalancerClassNotServed,
                Severity::Info,
            ),
            Finding {
                object: Some(ObjectRef::cluster_scoped("CiliumLoadBalancerIPPool", "p")),
                ..finding(
                    external.clone(),
                    "",
                    Reason::PoolConflict,
                    Severity::Warning,
                )
            },
        ];
        let told = desired(&cluster.services, &cluster.pools, &findings);
        assert_eq!(told.notices.len(), 1, "{:?}", told.notices);
        let notices: Vec<(&str, &str, bool)> = told.notices[&external]
            .iter()
            .map(|n| (n.reason.as_str(), n.message.as_str(), n.warning))
            .collect();
        assert_eq!(
            notices,
            [
                (
                    "UnsupportedProtocol",
                    "spec.ports[1].protocol: UnsupportedProtocol found",
                    true
                ),
                (
                    "UnsupportedProtocol",
                    "spec.ports[2].protocol: UnsupportedProtocol found",
                    true
                ),
                ("IPv6NotServed", "IPv6NotServed found", false),
            ]
        );
        // The model's own finding of the Service without a pool is one of them, too.
        let model = desired(&cluster.services, &cluster.pools, &cluster.findings);
        assert!(
            model.notices[&external]
                .iter()
                .any(|n| n.reason == Reason::RequestedIPNotInPool && n.warning),
            "{:?}",
            model.notices
        );
    }

    #[test]
    fn a_service_the_source_could_not_read_gets_no_vip_and_says_why() {
        let broken = ObjectRef {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: "broken".into(),
        };
        let finding = Finding {
            file: FILE.into(),
            object: Some(broken),
            field: "spec.ports[0].port".into(),
            message: "not served: invalid type".into(),
            reason: Reason::ObjectNotRead,
            severity: Severity::Error,
        };
        let desired = desired(&[], &[], &[finding]);
        let status = of(&desired, "shop", "broken");
        assert!(status.ingress.is_empty());
        assert_eq!(
            status.condition,
            Condition::new(
                SERVICE_CONDITION,
                "False",
                "ObjectNotRead",
                "spec.ports[0].port: not served: invalid type"
            )
        );
    }
}
