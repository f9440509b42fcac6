//! The writer: while this agent holds the Lease, it brings every object's status to what
//! it should say, writing only where what the watches show differs, and tells what it
//! found about each Service in Events (`events`). A Service it no longer answers for (it
//! stopped being a LoadBalancer, or came back with another controller's class) that still
//! carries what the agent wrote gets its ingress and condition removed, as Cilium's LB-IPAM
//! does, so the next controller starts from a clean status; its VIP is already free in the
//! pools' counts (the model only counts what it serves). Agents that do not hold the Lease
//! compute the same answer and write nothing.
//!
//! Nothing is written before the run loop published what the status should say: until
//! every kind was listed, every Service would look like one the agent no longer answers for.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use log::{info, warn};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use super::MANAGER;
use super::desired::{Condition, Desired, PoolStatus, SERVICE_CONDITION, ServiceStatus};
use super::events::{self, Telling, Told};
use super::lease::{self, Election, RETRY};
use super::observed::{Observed, Seen, Snapshot};
use crate::config::{Kind, ObjectRef};
use crate::source::kube::resources;

/// Status writes (and Events) in flight at once (a cold start writes every Service).
const CONCURRENT_WRITES: usize = 16;

/// One status write.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Service {
        object: ObjectRef,
        status: ServiceStatus,
        /// The condition's transition time: kept while its status stays.
        since: String,
        /// The request is met again after it was not: worth an Event (no finding says so).
        news: bool,
    },
    /// A Service the agent no longer answers for, which still carries what it wrote: that
    /// is removed, unless the Service changed since it was seen (`version`).
    Release {
        object: ObjectRef,
        /// Its condition is the agent's.
        condition: bool,
        /// Its ingress holds the agent's VIPs.
        ingress: bool,
        version: String,
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
            (a @ Write::Release { .. }, b @ Write::Release { .. }) => a == b,
            _ => false,
        }
    }
}

fn key(write: &Write) -> String {
    match write {
        Write::Service { object, .. } | Write::Release { object, .. } => object.to_string(),
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
        // Worth an Event: a request met again (a first VIP is no news: 10,000 of them at a
        // cold start would be noise; a request not met is a finding, told as such).
        let news = status.condition.is_true()
            && seen
                .and_then(|s| s.condition(SERVICE_CONDITION))
                .is_some_and(|c| c.condition.status == "False");
        let write = Write::Service {
            object: object.clone(),
            status: status.clone(),
            since: since(seen, &status.condition, now),
            news,
        };
        push(write, seen);
    }
    for (object, seen) in observed.services() {
        if desired.services.contains_key(object) || !seen.carries_own() {
            continue;
        }
        let write = Write::Release {
            object: object.clone(),
            condition: seen.owned.condition,
            ingress: seen.owned.ingress && !seen.ingress.is_empty(),
            version: seen.version.clone(),
        };
        push(write, Some(seen));
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
        Write::Release {
            condition,
            ingress,
            version,
            ..
        } => {
            let mut status = serde_json::Map::new();
            if *condition {
                // Strategic: only that condition goes, others' stay.
                status.insert(
                    "conditions".into(),
                    json!([{"type": SERVICE_CONDITION, "$patch": "delete"}]),
                );
            }
            if *ingress {
                status.insert("loadBalancer".into(), json!({"ingress": Value::Null}));
            }
            // A precondition: refused (409) if another controller wrote since.
            json!({"metadata": {"resourceVersion": version}, "status": status})
        }
        Write::Pool { status, since, .. } => json!({"status": {
            "conditions": status.conditions.iter().zip(since).map(|(c, s)| condition_json(c, s)).collect::<Vec<_>>(),
        }}),
    }
}

/// The writer's connection to the cluster.
struct Writer {
    client: Client,
    /// This agent, as its Events name it.
    identity: String,
    /// Where pools are written, once the API server is found to serve them.
    pools: Option<ApiResource>,
    written: Written,
    told: Told,
}

impl Writer {
    async fn write(&self, write: &Write, uid: &str) -> kube::Result<()> {
        // The agent's own field manager: what it wrote is known by it (`Owned`).
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
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
                    let vips: Vec<String> = status.ingress.iter().map(|v| v.to_string()).collect();
                    let telling = Telling {
                        warning: false,
                        reason: status.condition.reason.clone(),
                        note: format!("the request is met: {}", vips.join(", ")),
                        action: "Allocate",
                    };
                    self.tell(object, uid, &telling).await;
                }
            }
            Write::Release { object, .. } => {
                let api: Api<Service> = Api::namespaced(self.client.clone(), &object.namespace);
                api.patch_status(&object.name, &params, &Patch::Strategic(patch(write)))
                    .await?;
                info!("{object} is no longer served here: its VIP and condition removed");
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

    /// Records an Event on Service `object`. Best effort, as Events are: one that fails is
    /// logged, not tried again.
    async fn tell(&self, object: &ObjectRef, uid: &str, telling: &Telling) {
        let event = events::event(object, uid, telling, &self.identity, Timestamp::now());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &object.namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!("recording the Event {} on {object}: {e}", telling.reason);
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
        {
            let snapshot = observed.snapshot();
            self.written.0.retain(|_, (write, _)| match write {
                Write::Service { object, .. } => desired.services.contains_key(object),
                Write::Release { object, .. } => {
                    snapshot.service(object).is_some_and(Seen::carries_own)
                }
                Write::Pool { name, .. } => desired.pools.contains_key(name),
            });
        }
        if self.pools.is_none() && !desired.pools.is_empty() {
            self.pools = resources::served(&self.client, Kind::IpPool)
                .await
                .ok()
                .flatten();
        }
        let now = Timestamp::now().to_string();
        let (due, tellings) = {
            let snapshot = observed.snapshot();
            let due: Vec<(Write, Option<Seen>)> = writes(desired, &snapshot, &self.written, &now)
                .into_iter()
                .map(|write| {
                    let seen = match &write {
                        Write::Service { object, .. } | Write::Release { object, .. } => {
                            snapshot.service(object).cloned()
                        }
                        Write::Pool { name, .. } => snapshot.pool(name).cloned(),
                    };
                    (write, seen)
                })
                .collect();
            let tellings: Vec<(ObjectRef, _, String)> = self
                .told
                .due(&desired.notices)
                .into_iter()
                .map(|(object, notice)| {
                    let uid = snapshot.service(object).map(|s| s.uid.clone());
                    (object.clone(), notice.clone(), uid.unwrap_or_default())
                })
                .collect();
            (due, tellings)
        };
        self.tell_findings(tellings, election).await;
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
                    let uid = seen.as_ref().map_or("", |s| s.uid.as_str());
                    let result = this.write(&write, uid).await;
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

    /// Records an Event for each finding not told yet, a few at a time and only while this
    /// agent leads.
    async fn tell_findings(
        &mut self,
        tellings: Vec<(ObjectRef, super::desired::Notice, String)>,
        election: &lease::Shared,
    ) {
        let mut tellings = tellings.into_iter().peekable();
        while tellings.peek().is_some() && lease::leading(election) {
            let chunk: Vec<_> = tellings.by_ref().take(CONCURRENT_WRITES).collect();
            let this = &*self;
            stream::iter(&chunk)
                .for_each_concurrent(CONCURRENT_WRITES, |(object, notice, uid)| async move {
                    this.tell(object, uid, &Telling::of(notice)).await;
                })
                .await;
            for (object, notice, _) in chunk {
                self.told.told(&object, notice);
            }
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
    mut desired: watch::Receiver<Option<Arc<Desired>>>,
    mut stop: oneshot::Receiver<()>,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let election: lease::Shared = Arc::new(std::sync::Mutex::new(Election::new(&identity)));
    let campaign = tokio::spawn(lease::campaign(leases.clone(), Arc::clone(&election)));
    let mut writer = Writer {
        client,
        identity,
        pools: None,
        written: Written::default(),
        told: Told::default(),
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
        let Some(target) = desired.borrow().clone() else {
            continue;
        };
        // Whether this agent writes or not: a finding that went away is told again when it
        // comes back, whoever writes then.
        writer.told.forget_gone(&target.notices);
        if leading {
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
        seen_with(observed, name, status, json!([]));
    }

    /// As the watch delivers it, with `managed_fields`.
    fn seen_with(observed: &Observed, name: &str, status: Value, managed_fields: Value) {
        let raw: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7",
                         "managedFields": managed_fields},
            "status": status,
        }))
        .unwrap();
        observed.record(crate::config::Kind::Service, &service(name), &raw);
    }

    /// What the API server records of the agent's status patch: the condition and ingress
    /// are the agent's.
    fn written_by_agent() -> Value {
        json!([{"manager": MANAGER, "operation": "Update", "subresource": "status",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {
                    "f:conditions": {".": {}, "k:{\"type\":\"cilium.io/IPAMRequestSatisfied\"}": {
                        ".": {}, "f:type": {}, "f:status": {}, "f:reason": {}, "f:message": {},
                        "f:lastTransitionTime": {}}},
                    "f:loadBalancer": {"f:ingress": {}}}}}])
    }

    fn satisfied_status(vip: &str) -> Value {
        json!({"loadBalancer": {"ingress": [{"ip": vip}]}, "conditions": [
            {"type": SERVICE_CONDITION, "status": "True", "reason": "satisfied",
             "message": format!("{vip} allocated"), "lastTransitionTime": "T0"}]})
    }

    fn desired_of(services: &[(&str, ServiceStatus)]) -> Desired {
        Desired {
            services: services
                .iter()
                .map(|(n, s)| (service(n), s.clone()))
                .collect(),
            pools: Default::default(),
            notices: Default::default(),
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
    fn a_request_met_again_is_news_a_request_failing_is_told_by_its_finding() {
        let observed = Observed::default();
        seen_as(
            &observed,
            "web",
            json!({"conditions": [{"type": SERVICE_CONDITION, "status": "False",
                                   "reason": "NoPool", "message": "", "lastTransitionTime": "T0"}]}),
        );
        let desired = desired_of(&[("web", satisfied("192.0.2.1"))]);
        let due = writes(&desired, &observed.snapshot(), &Written::default(), "T1");
        let Write::Service { since, news, .. } = &due[0] else {
            panic!()
        };
        assert_eq!(since, "T1");
        assert!(news, "met again");
        let mut failing = satisfied("192.0.2.1");
        failing.ingress.clear();
        failing.condition.status = "False".into();
        failing.condition.reason = "OutOfIPs".into();
        let desired = desired_of(&[("web", failing)]);
        let due = writes(&desired, &observed.snapshot(), &Written::default(), "T1");
        let Write::Service { news, .. } = &due[0] else {
            panic!()
        };
        assert!(
            !news,
            "another reason to fail is a finding's Event, not this one"
        );
    }

    #[test]
    fn a_service_no_longer_served_that_carries_the_agents_status_is_released_once() {
        let observed = Observed::default();
        // Once served: the agent's VIP and condition. Now of another class (or type): not
        // in what the model answers for.
        seen_with(
            &observed,
            "moved",
            satisfied_status("192.0.2.1"),
            written_by_agent(),
        );
        // A LoadBalancer of another class whose status another controller wrote.
        seen_as(&observed, "theirs", satisfied_status("198.51.100.1"));
        // Turned into a ClusterIP Service: the API server emptied its ingress, the
        // condition stays.
        let condition_only = json!({"conditions": [
            {"type": SERVICE_CONDITION, "status": "True", "reason": "satisfied",
             "message": "", "lastTransitionTime": "T0"}], "loadBalancer": {}});
        seen_with(&observed, "cluster-ip", condition_only, written_by_agent());
        let desired = desired_of(&[("kept", satisfied("192.0.2.2"))]);
        let mut written = Written::default();
        let due = writes(&desired, &observed.snapshot(), &written, "T1");
        let mut releases: Vec<_> = due
            .iter()
            .filter_map(|w| match w {
                Write::Release {
                    object,
                    condition,
                    ingress,
                    version,
                } => Some((
                    object.name.to_string(),
                    *condition,
                    *ingress,
                    version.clone(),
                )),
                _ => None,
            })
            .collect();
        releases.sort();
        assert_eq!(
            releases,
            [
                ("cluster-ip".into(), true, false, "7".into()),
                ("moved".into(), true, true, "7".into()),
            ]
        );
        // The patch removes the condition and the ingress, if the Service did not change.
        let moved = due
            .iter()
            .find(|w| matches!(w, Write::Release { object, .. } if object.name == "moved"))
            .unwrap();
        assert_eq!(
            patch(moved),
            json!({"metadata": {"resourceVersion": "7"}, "status": {
                "conditions": [{"type": SERVICE_CONDITION, "$patch": "delete"}],
                "loadBalancer": {"ingress": null},
            }})
        );
        let cluster_ip = due
            .iter()
            .find(|w| matches!(w, Write::Release { object, .. } if object.name == "cluster-ip"))
            .unwrap();
        assert_eq!(
            patch(cluster_ip)["status"],
            json!({"conditions": [{"type": SERVICE_CONDITION, "$patch": "delete"}]})
        );
        // Made: not again until the watch shows something new.
        for write in &due {
            let seen = match write {
                Write::Release { object, .. } | Write::Service { object, .. } => {
                    observed.snapshot().service(object).cloned()
                }
                Write::Pool { .. } => None,
            };
            written.0.insert(key(write), (write.clone(), seen));
        }
        let again = writes(&desired, &observed.snapshot(), &written, "T2");
        assert!(
            !again.iter().any(|w| matches!(w, Write::Release { .. })),
            "{again:?}"
        );
        // The watch shows it released: nothing more to do.
        seen_with(
            &observed,
            "moved",
            json!({"loadBalancer": {}}),
            json!([{"manager": MANAGER, "operation": "Update", "subresource": "status",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:status": {"f:loadBalancer": {"f:ingress": {}}}}}]),
        );
        let after = writes(&desired, &observed.snapshot(), &Written::default(), "T3");
        assert!(
            !after
                .iter()
                .any(|w| matches!(w, Write::Release { object, .. } if object.name == "moved")),
            "{after:?}"
        );
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
