//! What the objects' status says now, as the watches see it: for each Service its ingress
//! addresses and the agent's condition, for each pool the agent's conditions. The writer
//! compares it with what should be there and writes only the difference; a write shows up
//! here once the watch delivers it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use kube::api::DynamicObject;
use serde_json::Value;
use tokio::sync::Notify;

use super::desired::{Condition, OWN_CONDITIONS};
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
        }
    }

    /// The condition of `type_`, if there is one.
    pub fn condition(&self, type_: &str) -> Option<&SeenCondition> {
        self.conditions.iter().find(|c| c.condition.type_ == type_)
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

    /// What the agent writes of `raw`'s status.
    pub fn seen(raw: &DynamicObject) -> Seen {
        Seen::of(raw.data.get("status").unwrap_or(&Value::Null))
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
}
