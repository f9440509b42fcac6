//! What the objects' status says now, as the watches see it: for each Service its ingress
//! addresses and the agent's condition, for each pool the agent's conditions, and which of
//! it this agent wrote (the object's `managedFields`: what the field manager
//! [`MANAGER`](super::MANAGER) set and nobody changed since). The writer compares it with
//! what should be there and writes only the difference; a write shows up here once the
//! watch delivers it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::DynamicObject;
use serde_json::Value;
use tokio::sync::Notify;

use super::MANAGER;
use super::desired::{Condition, OWN_CONDITIONS, SERVICE_CONDITION};
use crate::config::{Kind, ObjectRef};

/// A condition as it is on the object, with when it last changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenCondition {
    pub condition: Condition,
    pub last_transition: String,
}

/// The part of an object's status the agent writes, as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `status.loadBalancer.ingress[].ip` (Services; IPv4 only).
    pub ingress: Vec<Ipv4Addr>,
    /// The conditions of the agent's types, sorted by type.
    pub conditions: Vec<SeenCondition>,
    /// What of it this agent wrote (Services).
    pub owned: Owned,
    /// `metadata.resourceVersion`: a write that must not undo someone else's since carries
    /// it.
    pub version: String,
    /// `metadata.uid`, which Events name.
    pub uid: String,
}

/// What of a Service's status is as this agent wrote it: another controller (Cilium's
/// LB-IPAM, with the same condition type) that wrote over it owns it since.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// The values of the condition [`SERVICE_CONDITION`].
    pub condition: bool,
    /// `status.loadBalancer.ingress` (the field: the API server empties it when the
    /// Service stops being a LoadBalancer, and the agent stays its manager).
    pub ingress: bool,
}

impl Owned {
    /// What the field manager [`MANAGER`] holds of the status, by `managed_fields`.
    pub fn of(managed_fields: &[ManagedFieldsEntry]) -> Self {
        let condition_key = format!("k:{{\"type\":\"{SERVICE_CONDITION}\"}}");
        managed_fields
            .iter()
            .filter(|entry| {
                entry.manager.as_deref() == Some(MANAGER)
                    && entry.subresource.as_deref() == Some("status")
            })
            .filter_map(|entry| entry.fields_v1.as_ref()?.0.get("f:status"))
            .fold(Self::default(), |owned, status| Self {
                // Only the type left: someone else set the values since.
                condition: owned.condition
                    || status
                        .pointer("/f:conditions")
                        .and_then(|c| c.get(&condition_key))
                        .is_some_and(|c| c.get("f:status").is_some()),
                ingress: owned.ingress || status.pointer("/f:loadBalancer/f:ingress").is_some(),
            })
    }
}

impl Seen {
    /// Reads what the agent writes from `status`.
    pub fn of(status: &Value) -> Self {
        let ingress = status
            .pointer("/loadBalancer/ingress")
            .and_then(Value::as_array)
            .map(|ingress| {
                ingress
                    .iter()
                    .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let text = |c: &Value, key: &str| {
            c.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut conditions: Vec<SeenCondition> = status
            .get("conditions")
            .and_then(Value::as_array)
            .map(|conditions| {
                conditions
                    .iter()
                    .filter(|c| OWN_CONDITIONS.contains(&text(c, "type").as_str()))
                    .map(|c| SeenCondition {
                        condition: Condition {
                            type_: text(c, "type"),
                            status: text(c, "status"),
                            reason: text(c, "reason"),
                            message: text(c, "message"),
                        },
                        last_transition: text(c, "lastTransitionTime"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        conditions.sort_by(|a, b| a.condition.type_.cmp(&b.condition.type_));
        Self {
            ingress,
            conditions,
            ..Self::default()
        }
    }

    /// The condition of `type_`, if there is one.
    pub fn condition(&self, type_: &str) -> Option<&SeenCondition> {
        self.conditions.iter().find(|c| c.condition.type_ == type_)
    }

    /// It carries what this agent wrote: its condition, or VIPs in the ingress.
    pub fn carries_own(&self) -> bool {
        self.owned.condition || (self.owned.ingress && !self.ingress.is_empty())
    }
}

#[derive(Default)]
struct Statuses {
    services: HashMap<ObjectRef, Seen>,
    /// By pool name.
    pools: HashMap<String, Seen>,
}

/// The statuses seen, shared by the watches (which fill it) and the writer (which reads it
/// and is woken when it changes).
#[derive(Clone, Default)]
pub struct Observed {
    statuses: Arc<Mutex<Statuses>>,
    changed: Arc<Notify>,
}

/// The statuses, read under the lock.
pub struct Snapshot<'a>(MutexGuard<'a, Statuses>);

impl Snapshot<'_> {
    pub fn service(&self, object: &ObjectRef) -> Option<&Seen> {
        self.0.services.get(object)
    }

    pub fn pool(&self, name: &str) -> Option<&Seen> {
        self.0.pools.get(name)
    }

    /// Every Service seen, whatever its type or class.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectRef, &Seen)> {
        self.0.services.iter()
    }
}

impl Observed {
    fn lock(&self) -> MutexGuard<'_, Statuses> {
        // A writer that panicked left whole entries: they are still worth reading.
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot(self.lock())
    }

    /// Resolves when a status may have changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether the agent writes the status of objects of `kind`.
    pub fn covers(kind: Kind) -> bool {
        matches!(kind, Kind::Service | Kind::IpPool)
    }

    /// What the agent writes of `raw`'s status, and what of it the agent wrote.
    pub fn seen(raw: &DynamicObject) -> Seen {
        let metadata = &raw.metadata;
        Seen {
            owned: Owned::of(metadata.managed_fields.as_deref().unwrap_or_default()),
            version: metadata.resource_version.clone().unwrap_or_default(),
            uid: metadata.uid.clone().unwrap_or_default(),
            ..Seen::of(raw.data.get("status").unwrap_or(&Value::Null))
        }
    }

    /// `raw`, an object of `kind` named `object`, as the watch delivered it.
    pub fn record(&self, kind: Kind, object: &ObjectRef, raw: &DynamicObject) {
        let seen = Self::seen(raw);
        let mut statuses = self.lock();
        let changed = match kind {
            Kind::Service => statuses.services.insert(object.clone(), seen.clone()),
            Kind::IpPool => statuses.pools.insert(object.name.to_string(), seen.clone()),
            _ => return,
        } != Some(seen);
        drop(statuses);
        if changed {
            self.changed.notify_one();
        }
    }

    /// `object` of `kind` is gone.
    pub fn forget(&self, kind: Kind, object: &ObjectRef) {
        let mut statuses = self.lock();
        match kind {
            Kind::Service => statuses.services.remove(object),
            Kind::IpPool => statuses.pools.remove(object.name.as_str()),
            _ => None,
        };
    }

    /// These are all the objects of `kind` (after a relist).
    pub fn replace(&self, kind: Kind, seen: Vec<(ObjectRef, Seen)>) {
        let mut statuses = self.lock();
        match kind {
            Kind::Service => statuses.services = seen.into_iter().collect(),
            Kind::IpPool => {
                statuses.pools = seen
                    .into_iter()
                    .map(|(object, seen)| (object.name.to_string(), seen))
                    .collect()
            }
            _ => return,
        }
        drop(statuses);
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_ingress_and_only_the_agents_conditions() {
        let seen = Seen::of(&json!({
            "loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}, {"ip": "2001:db8::1"}]},
            "conditions": [
                {"type": "Other", "status": "True", "reason": "x", "message": ""},
                {"type": "cilium.io/IPAMRequestSatisfied", "status": "True", "reason": "satisfied",
                 "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ],
        }));
        assert_eq!(seen.ingress, ["192.0.2.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(seen.conditions.len(), 1);
        let condition = seen.condition("cilium.io/IPAMRequestSatisfied").unwrap();
        assert_eq!(condition.condition.reason, "satisfied");
        assert_eq!(condition.last_transition, "2026-01-01T00:00:00Z");
        assert_eq!(Seen::of(&Value::Null), Seen::default());
    }

    fn service(status: Value, managed_fields: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "42", "uid": "u-1",
                         "managedFields": managed_fields},
            "status": status,
        }))
        .unwrap()
    }

    /// The managedFields entry of `manager` on the status, holding `fields` of it.
    fn managed(manager: &str, fields: Value) -> Value {
        json!({"manager": manager, "operation": "Update", "subresource": "status",
               "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": fields}})
    }

    const CONDITION_KEY: &str = "k:{\"type\":\"cilium.io/IPAMRequestSatisfied\"}";

    #[test]
    fn what_the_agent_wrote_is_told_by_the_managed_fields() {
        let status = json!({
            "loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]},
            "conditions": [{"type": SERVICE_CONDITION, "status": "True", "reason": "Satisfied"}],
        });
        // As the API server records the agent's status patch.
        let ours = managed(
            MANAGER,
            json!({"f:conditions": {".": {}, CONDITION_KEY: {".": {}, "f:type": {}, "f:status": {},
                   "f:reason": {}, "f:message": {}, "f:lastTransitionTime": {}}},
                   "f:loadBalancer": {"f:ingress": {}}}),
        );
        let seen = Observed::seen(&service(status.clone(), json!([ours])));
        assert_eq!(
            seen.owned,
            Owned {
                condition: true,
                ingress: true
            }
        );
        assert!(seen.carries_own());
        assert_eq!((seen.version.as_str(), seen.uid.as_str()), ("42", "u-1"));

        // Another controller wrote over both: the agent keeps only the condition's type.
        let left = managed(
            MANAGER,
            json!({"f:conditions": {".": {}, CONDITION_KEY: {".": {}, "f:type": {}}}}),
        );
        let theirs = managed(
            "cilium-operator",
            json!({"f:conditions": {CONDITION_KEY: {"f:status": {}, "f:reason": {}}},
                   "f:loadBalancer": {"f:ingress": {}}}),
        );
        let seen = Observed::seen(&service(status.clone(), json!([left, theirs])));
        assert_eq!(seen.owned, Owned::default());
        assert!(!seen.carries_own());

        // The same fields set by the agent outside the status subresource, or by someone
        // else only: not the agent's.
        let mut spec_side = managed(MANAGER, json!({"f:loadBalancer": {"f:ingress": {}}}));
        spec_side["subresource"] = Value::Null;
        let seen = Observed::seen(&service(status.clone(), json!([spec_side])));
        assert_eq!(seen.owned, Owned::default());

        // The ingress field is the agent's but empty (the Service stopped being a
        // LoadBalancer: the API server cleared it): nothing of the agent's is left on it.
        let ingress_only = managed(MANAGER, json!({"f:loadBalancer": {"f:ingress": {}}}));
        let seen = Observed::seen(&service(json!({"loadBalancer": {}}), json!([ingress_only])));
        assert!(seen.owned.ingress && !seen.carries_own());
    }
}
