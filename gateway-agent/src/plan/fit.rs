//! What of a desired state fits reverse NAT on this node: a backend (address, port,
//! protocol) can tell at most `REVNAT_FRONTENDS` frontends apart. A service whose frontends
//! would take one of its backends over that is not programmed on this node (nor are its
//! addresses announced from it), with a finding saying so; every other service is served,
//! instead of the whole state being refused. `check` and `run` both fit the model's state
//! before planning it, so they skip the same services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use gateway_common::Frontend as RevNatFrontend;
use gateway_common::capacity::REVNAT_FRONTENDS;

use super::PlanError;
use super::entries::{BackendKey, revnat_frontend, service_key};
use crate::config::{Finding, ObjectRef, Reason, Severity};
use crate::model::{DesiredState, Frontend};

/// Drops from `desired` the services that do not fit, services taken in `desired.services`
/// order (namespace, name); `source` names the objects' source in the findings.
pub fn fit(desired: &mut DesiredState, source: &str) {
    // Nearly always no backend serves that many frontends: one sorted list says so.
    let mut keys: Vec<BackendKey> = (desired.frontends.iter())
        .flat_map(|f| f.backends.iter().map(move |b| BackendKey::of(f, b)))
        .collect();
    keys.sort_unstable();
    if keys
        .chunk_by(|a, b| a == b)
        .all(|run| run.len() <= REVNAT_FRONTENDS)
    {
        return;
    }
    let mut by_service: BTreeMap<&ObjectRef, Vec<&Frontend>> = BTreeMap::new();
    for f in &desired.frontends {
        by_service.entry(&f.service).or_default().push(f);
    }
    let mut served: BTreeMap<BackendKey, BTreeSet<RevNatFrontend>> = BTreeMap::new();
    let mut skipped: BTreeSet<ObjectRef> = BTreeSet::new();
    let mut findings = Vec::new();
    for status in &desired.services {
        let Some(own) = by_service.get(&status.service) else {
            continue;
        };
        // (backend, frontend) pairs the service would add.
        let mut pairs: Vec<(BackendKey, RevNatFrontend)> = own
            .iter()
            .flat_map(|f| {
                let frontend = revnat_frontend(&service_key(f));
                f.backends
                    .iter()
                    .map(move |b| (BackendKey::of(f, b), frontend))
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let over = pairs.chunk_by(|(a, _), (b, _)| a == b).find(|run| {
            let held = served.get(&run[0].0);
            let new = run
                .iter()
                .filter(|(_, f)| held.is_none_or(|h| !h.contains(f)));
            held.map_or(0, BTreeSet::len) + new.count() > REVNAT_FRONTENDS
        });
        match over {
            Some(run) => {
                let backend = run[0].0;
                let mut frontends = served.get(&backend).cloned().unwrap_or_default();
                frontends.extend(run.iter().map(|(_, f)| *f));
                let refusal = PlanError::TooManyFrontends {
                    backend: format!("{}:{}", Ipv4Addr::from(backend.addr), backend.port),
                    frontends: (frontends.iter())
                        .map(|f| format!("{}:{}", Ipv4Addr::from(f.vip), f.port))
                        .collect(),
                };
                findings.push(Finding {
                    file: source.to_owned(),
                    object: Some(status.service.clone()),
                    field: String::new(),
                    message: format!(
                        "{refusal}: the service is not programmed on this node, nor its \
                         addresses announced from it"
                    ),
                    reason: Reason::BackendFrontendLimit,
                    severity: Severity::Error,
                });
                skipped.insert(status.service.clone());
            }
            None => {
                for (backend, frontend) in pairs {
                    served.entry(backend).or_default().insert(frontend);
                }
            }
        }
    }
    desired.frontends.retain(|f| !skipped.contains(&f.service));
    let still: BTreeSet<Ipv4Addr> = desired.frontends.iter().map(|f| f.vip).collect();
    let dropped: BTreeSet<Ipv4Addr> = (desired.services.iter())
        .filter(|s| skipped.contains(&s.service))
        .flat_map(|s| s.vips.iter().map(|v| v.vip))
        .filter(|vip| !still.contains(vip))
        .collect();
    desired.announcements.retain(|a| !dropped.contains(&a.vip));
    // Nor may the cluster give them to this node: it tells the others it cannot.
    desired.announceable.retain(|a| !dropped.contains(&a.vip));
    desired.findings.extend(findings);
    desired.findings.sort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::*;
    use crate::model::desired_state;

    /// The reference's nodes, pool and policy, and `count` services on port 80 whose one
    /// endpoint is the same pod on worker-1 (port 8443), as `count` Gateways on one envoy.
    fn on_one_pod(count: usize) -> String {
        let mut docs: Vec<String> = REFERENCE
            .split("\n---\n")
            .map(|doc| format!("{}\n", doc.trim_end()))
            .filter(|doc| {
                !doc.contains("kind: Service\n") && !doc.contains("kind: EndpointSlice\n")
            })
            .collect();
        docs.push(pool_doc("wide", "  blocks:\n    - cidr: 10.9.0.0/24\n"));
        for i in 0..count {
            docs.push(
                service_doc("gw", &format!("gw-{i:02}"))
                    .local()
                    .label("pool", "wide")
                    .ports(&[(443, "TCP")])
                    .requests(&format!("10.9.0.{}", 10 + i))
                    .yaml(),
            );
            docs.push(format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: gw-{i:02}-x\n\
                 \x20 namespace: gw\n  labels:\n    kubernetes.io/service-name: gw-{i:02}\n\
                 addressType: IPv4\nports:\n  - port: 8443\nendpoints:\n\
                 \x20 - addresses: [10.244.1.10]\n    nodeName: worker-1\n"
            ));
        }
        docs.join("---\n")
    }

    fn fitted(count: usize) -> DesiredState {
        let config = parse_ok(&on_one_pod(count));
        let mut desired = desired_state(&config, "worker-1", &["ens18".to_owned()]);
        fit(&mut desired, FILE);
        desired
    }

    #[test]
    fn four_services_on_one_backend_fit() {
        let desired = fitted(4);
        assert_eq!(desired.frontends.len(), 4);
        assert!(desired.findings.is_empty(), "{:#?}", desired.findings);
    }

    #[test]
    fn the_services_past_the_fourth_on_one_backend_are_skipped_on_this_node() {
        for count in [5, 64] {
            let desired = fitted(count);
            let served: Vec<String> = (desired.frontends.iter())
                .map(|f| f.service.name.to_string())
                .collect();
            assert_eq!(served, ["gw-00", "gw-01", "gw-02", "gw-03"], "{count}");
            // Announced only where served.
            let announced: BTreeSet<Ipv4Addr> =
                desired.announcements.iter().map(|a| a.vip).collect();
            let programmed: BTreeSet<Ipv4Addr> = desired.frontends.iter().map(|f| f.vip).collect();
            assert_eq!(announced, programmed, "{count}");
            let announceable: BTreeSet<Ipv4Addr> =
                desired.announceable.iter().map(|a| a.vip).collect();
            assert_eq!(announceable, programmed, "{count}");
            let skipped: Vec<&Finding> = (desired.findings.iter())
                .filter(|f| f.reason == Reason::BackendFrontendLimit)
                .collect();
            assert_eq!(skipped.len(), count - 4, "{count}");
            assert!(skipped.iter().all(|f| f.severity == Severity::Error));
            assert_eq!(
                skipped[0].to_string(),
                "objects.yaml: Service/gw/gw-04: backend 10.244.1.10:8443 serves 5 frontends \
                 (10.9.0.10:443, 10.9.0.11:443, 10.9.0.12:443, 10.9.0.13:443, 10.9.0.14:443); at \
                 most 4 per backend address: the service is not programmed on this node, nor its \
                 addresses announced from it"
            );
            // Elsewhere (no endpoint there), nothing is skipped.
            let config = parse_ok(&on_one_pod(count));
            let mut elsewhere = desired_state(&config, "worker-2", &[]);
            fit(&mut elsewhere, FILE);
            assert_eq!(elsewhere.frontends.len(), count);
            assert!(
                elsewhere
                    .findings
                    .iter()
                    .all(|f| f.reason != Reason::BackendFrontendLimit)
            );
        }
    }
}
