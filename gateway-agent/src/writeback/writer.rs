//! The writer: while this agent holds the Lease, it brings every object's status to what
//! it should say, writing only where what the watches show differs, and records an Event
//! on a Service whose condition changes. Agents that do not hold the Lease compute the same
//! answer and write nothing.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt, stream};
use k8s_openapi::Resource as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use log::{info, warn};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::desired::{Condition, Desired, PoolStatus, SERVICE_CONDITION, ServiceStatus};
use super::lease::{self, Election, RETRY};
use super::observed::{Observed, Seen, Snapshot};
use crate::config::{Kind, ObjectRef};
use crate::source::kube::resources;

/// The field manager and the Events' reporting controller.
pub const MANAGER: &str = "gateway-agent";
/// Status writes in flight at once (a cold start writes every Service).
const CONCURRENT_WRITES: usize = 16;

/// One status write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Service {
        object: ObjectRef,
        status: ServiceStatus,
        /// The condition's transition time: kept while its status stays.
        since: String,
        /// The condition changed: worth an Event.
        news: bool,
    },
    Pool {
        name: String,
        status: PoolStatus,
        since: Vec<String>,
    },
}

/// What was written last per object, with what the watch showed then: the same write is
/// not repeated until the watch shows something new.
#[derive(Default)]
pub struct Written(HashMap<String, (Write, Option<Seen>)>);

impl Write {
    /// The same status for the same object (whatever the transition times).
    fn same_target(&self, other: &Write) -> bool {
        match (self, other) {
            (
                Write::Service {
                    object: a,
                    status: x,
                    ..
                },
                Write::Service {
                    object: b,
                    status: y,
                    ..
                },
            ) => a == b && x == y,
            (
                Write::Pool {
                    name: a, status: x, ..
                },
                Write::Pool {
                    name: b, status: y, ..
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

fn key(write: &Write) -> String {
    match write {
        Write::Service { object, .. } => object.to_string(),
        Write::Pool { name, .. } => format!("pool/{name}"),
    }
}

/// When `condition` last changed: what is there, or `now` if it differs.
fn since(seen: Option<&Seen>, condition: &Condition, now: &str) -> String {
    match seen.and_then(|s| s.condition(&condition.type_)) {
        Some(there) if there.condition.status == condition.status => there.last_transition.clone(),
        _ => now.to_owned(),
    }
}

fn service_matches(seen: Option<&Seen>, status: &ServiceStatus) -> bool {
    seen.is_some_and(|seen| {
        seen.ingress == status.ingress
            && seen
                .condition(SERVICE_CONDITION)
                .is_some_and(|c| c.condition == status.condition)
    })
}

fn pool_matches(seen: Option<&Seen>, status: &PoolStatus) -> bool {
    seen.is_some_and(|seen| {
        seen.conditions.len() == status.conditions.len()
            && seen
                .conditions
                .iter()
                .zip(&status.conditions)
                .all(|(s, c)| s.condition == *c)
    })
}

/// The writes that bring what `observed` shows to `desired` (pure), leaving out those
/// already made while nothing new was seen since. `now` is the transition time of the
/// conditions that change.
pub fn writes(
    desired: &Desired,
    observed: &Snapshot<'_>,
    written: &Written,
    now: &str,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut push = |write: Write, seen: Option<&Seen>| {
        if let Some((last, seen_then)) = written.0.get(&key(&write))
            && last.same_target(&write)
            && seen_then.as_ref() == seen
        {
            return;
        }
        writes.push(write);
    };
    for (object, status) in &desired.services {
        let seen = observed.service(object);
        if service_matches(seen, status) {
            continue;
        }
        // Worth an Event: a request not met, or a change of whether it is (a first VIP
        // is no news: 10,000 of them at a cold start would be noise).
        let news = match seen.and_then(|s| s.condition(SERVICE_CONDITION)) {
            Some(c) => {
                c.condition.status != status.condition.status
                    || c.condition.reason != status.condition.reason
            }
            None => !status.condition.is_true(),
        };
        let write = Write::Service {
            object: object.clone(),
            status: status.clone(),
            since: since(seen, &status.condition, now),
            news,
        };
        push(write, seen);
    }
    for (name, status) in &desired.pools {
        let seen = observed.pool(name);
        if pool_matches(seen, status) {
            continue;
        }
        let write = Write::Pool {
            name: name.clone(),
            since: status
                .conditions
                .iter()
                .map(|c| since(seen, c, now))
                .collect(),
            status: status.clone(),
        };
        push(write, seen);
    }
    writes
}

fn condition_json(condition: &Condition, since: &str) -> Value {
    json!({
        "type": condition.type_,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": since,
    })
}

/// The status patch of `write`.
pub fn patch(write: &Write) -> Value {
    match write {
        Write::Service { status, since, .. } => {
            let ingress: Vec<Value> = status
                .ingress
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect();
            json!({"status": {
                // null removes it: a Service without a VIP shows `<pending>`.
                "loadBalancer": {"ingress": if ingress.is_empty() { Value::Null } else { Value::Array(ingress) }},
                "conditions": [condition_json(&status.condition, since)],
            }})
        }
        Write::Pool { status, since, .. } => json!({"status": {
            "conditions": status.conditions.iter().zip(since).map(|(c, s)| condition_json(c, s)).collect::<Vec<_>>(),
        }}),
    }
}

/// The writer's connection to the cluster.
struct Writer {
    client: Client,
    /// Where pools are written, once the API server is found to serve them.
    pools: Option<ApiResource>,
    recorder: Recorder,
    written: Written,
}

impl Writer {
    async fn write(&self, write: &Write) -> kube::Result<()> {
        let params = PatchParams::default();
        match write {
            Write::Service {
                object,
                status,
                news,
                ..
            } => {
                // Strategic: the Service's conditions merge by type, others' stay.
                let api: Api<Service> = Api::namespaced(self.client.clone(), &object.namespace);
                api.patch_status(&object.name, &params, &Patch::Strategic(patch(write)))
                    .await?;
                if *news {
                    self.record(object, status).await;
                }
            }
            Write::Pool { name, .. } => {
                let Some(pools) = &self.pools else {
                    return Ok(());
                };
                let api: Api<DynamicObject> = Api::all_with(self.client.clone(), pools);
                api.patch_status(name, &params, &Patch::Merge(patch(write)))
                    .await?;
            }
        }
        Ok(())
    }

    async fn record(&self, object: &ObjectRef, status: &ServiceStatus) {
        // The condition's reason is the Event's: Cilium's LB-IPAM reasons in CamelCase.
        let condition = &status.condition;
        let type_ = if condition.is_true() {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reference = ObjectReference {
            api_version: Some(Service::API_VERSION.into()),
            kind: Some(Service::KIND.into()),
            namespace: Some(object.namespace.to_string()),
            name: Some(object.name.to_string()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_,
            reason: condition.reason.clone(),
            note: Some(condition.message.clone()),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!("recording an Event on {object}: {e}");
        }
    }

    /// Makes every write that is due, a few at a time and only while this agent leads;
    /// failed ones are tried again at the next round.
    async fn reconcile(
        &mut self,
        desired: &Desired,
        observed: &Observed,
        election: &lease::Shared,
    ) {
        // What is gone is not remembered.
        self.written.0.retain(|_, (write, _)| match write {
            Write::Service { object, .. } => desired.services.contains_key(object),
            Write::Pool { name, .. } => desired.pools.contains_key(name),
        });
        if self.pools.is_none() && !desired.pools.is_empty() {
            self.pools = resources::served(&self.client, Kind::IpPool)
                .await
                .ok()
                .flatten();
        }
        let now = Timestamp::now().to_string();
        let due: Vec<(Write, Option<Seen>)> = {
            let snapshot = observed.snapshot();
            writes(desired, &snapshot, &self.written, &now)
                .into_iter()
                .map(|write| {
                    let seen = match &write {
                        Write::Service { object, .. } => snapshot.service(object).cloned(),
                        Write::Pool { name, .. } => snapshot.pool(name).cloned(),
                    };
                    (write, seen)
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let (mut wrote, mut failed) = (0, 0);
        let mut due = due.into_iter().peekable();
        // Each chunk only while the Lease is still this agent's: a long cold start must not
        // write on past it.
        while due.peek().is_some() && lease::leading(election) {
            let chunk: Vec<_> = due.by_ref().take(CONCURRENT_WRITES).collect();
            let this = &*self;
            let results: Vec<_> = stream::iter(chunk)
                .map(|(write, seen)| async move {
                    let result = this.write(&write).await;
                    (write, seen, result)
                })
                .buffer_unordered(CONCURRENT_WRITES)
                .collect()
                .await;
            for (write, seen, result) in results {
                match result {
                    Ok(()) => {
                        wrote += 1;
                        self.written.0.insert(key(&write), (write, seen));
                    }
                    Err(e) => {
                        failed += 1;
                        warn!("writing the status of {}: {e}", key(&write));
                    }
                }
            }
        }
        if wrote > 0 {
            info!("wrote the status of {wrote} objects ({failed} failed, tried again later)");
        }
    }
}

/// Runs the election and, while this agent leads, the writes, until `stop` fires (then
/// gives the Lease up).
pub async fn run(
    client: Client,
    namespace: String,
    identity: String,
    observed: Observed,
    mut desired: watch::Receiver<Arc<Desired>>,
    mut stop: oneshot::Receiver<()>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let election: lease::Shared = Arc::new(std::sync::Mutex::new(Election::new(&identity)));
    let campaign = tokio::spawn(lease::campaign(leases.clone(), Arc::clone(&election)));
    let mut writer = Writer {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity.clone()),
            },
        ),
        client,
        pools: None,
        written: Written::default(),
    };
    let mut was_leading = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // Leadership changes with the campaign's rounds: looked at as often.
            _ = tokio::time::sleep(RETRY) => {}
            changed = desired.changed() => if changed.is_err() { break },
            _ = observed.changed() => {}
        }
        let leading = lease::leading(&election);
        if leading != was_leading {
            if leading {
                info!(
                    "holds the Lease {namespace}/{}: writes the objects' status",
                    lease::LEASE_NAME
                );
                // What another writer did meanwhile is only known from the watches.
                writer.written = Written::default();
            } else {
                info!(
                    "no longer holds the Lease {namespace}/{}: writes nothing",
                    lease::LEASE_NAME
                );
            }
            was_leading = leading;
        }
        if leading {
            let target = desired.borrow().clone();
            writer.reconcile(&target, &observed, &election).await;
        }
    }
    campaign.abort();
    if let Err(e) = lease::release(&leases, &election).await {
        warn!("giving the status Lease up: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::POOL_IPS_USED_CONDITION as POOL_USED;

    fn service(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn satisfied(vip: &str) -> ServiceStatus {
        ServiceStatus {
            ingress: vec![vip.parse::<Ipv4Addr>().unwrap()],
            condition: Condition {
                type_: SERVICE_CONDITION.into(),
                status: "True".into(),
                reason: "satisfied".into(),
                message: format!("{vip} allocated"),
            },
        }
    }

    fn seen_as(observed: &Observed, name: &str, status: Value) {
        let raw: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "status": status,
        }))
        .unwrap();
        observed.record(crate::config::Kind::Service, &service(name), &raw);
    }

    fn desired_of(services: &[(&str, ServiceStatus)]) -> Desired {
        Desired {
            services: services
                .iter()
                .map(|(n, s)| (service(n), s.clone()))
                .collect(),
            pools: Default::default(),
        }
    }

    #[test]
    fn only_what_differs_is_written_and_not_twice_until_the_watch_shows_something() {
        let observed = Observed::default();
        seen_as(
            &observed,
            "done",
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": [
                {"type": SERVICE_CONDITION, "status": "True", "reason": "satisfied",
                 "message": "192.0.2.1 allocated", "lastTransitionTime": "T0"}]}),
        );
        let desired = desired_of(&[
            ("done", satisfied("192.0.2.1")),
            ("new", satisfied("192.0.2.2")),
        ]);
        let mut written = Written::default();
        let due = writes(&desired, &observed.snapshot(), &written, "T1");
        assert_eq!(due.len(), 1);
        let Write::Service {
            object,
            since,
            news,
            ..
        } = &due[0]
        else {
            panic!()
        };
        assert_eq!(object.name, "new");
        assert_eq!(since, "T1");
        assert!(!news, "a first VIP is no news");
        written.0.insert(key(&due[0]), (due[0].clone(), None));
        assert!(writes(&desired, &observed.snapshot(), &written, "T2").is_empty());
        // Someone changed it back meanwhile: written again.
        seen_as(&observed, "new", json!({}));
        assert_eq!(
            writes(&desired, &observed.snapshot(), &written, "T3").len(),
            1
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_stays() {
        let observed = Observed::default();
        seen_as(
            &observed,
            "web",
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}, "conditions": [
                {"type": SERVICE_CONDITION, "status": "True", "reason": "satisfied",
                 "message": "old words", "lastTransitionTime": "T0"}]}),
        );
        let desired = desired_of(&[("web", satisfied("192.0.2.1"))]);
        let due = writes(&desired, &observed.snapshot(), &Written::default(), "T1");
        let Write::Service { since, news, .. } = &due[0] else {
            panic!()
        };
        assert_eq!(since, "T0");
        assert!(!news, "the same status and reason is no news");
    }

    #[test]
    fn patches_set_the_ingress_and_the_condition_or_clear_the_ingress() {
        let write = Write::Service {
            object: service("web"),
            status: satisfied("192.0.2.1"),
            since: "T0".into(),
            news: false,
        };
        assert_eq!(
            patch(&write),
            json!({"status": {
                "loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]},
                "conditions": [{"type": SERVICE_CONDITION, "status": "True", "reason": "satisfied",
                                "message": "192.0.2.1 allocated", "lastTransitionTime": "T0"}],
            }})
        );
        let mut pending = satisfied("192.0.2.1");
        pending.ingress.clear();
        let write = Write::Service {
            object: service("web"),
            status: pending,
            since: "T0".into(),
            news: false,
        };
        assert_eq!(
            patch(&write)["status"]["loadBalancer"]["ingress"],
            Value::Null
        );
        let pool = Write::Pool {
            name: "p".into(),
            status: PoolStatus {
                conditions: vec![Condition {
                    type_: POOL_USED.into(),
                    status: "True".into(),
                    reason: "noreason".into(),
                    message: "3".into(),
                }],
            },
            since: vec!["T0".into()],
        };
        assert_eq!(patch(&pool)["status"]["conditions"][0]["message"], "3");
    }
}
