//! Events on the Services the agent answers for (`events.k8s.io/v1`, what `kubectl describe
//! svc` lists): one per finding about the Service when it first appears, `Warning` for a
//! warning or an error, `Normal` for what is only worth knowing; and a `Normal` one when
//! its request is met again after it was not (no finding says that).
//!
//! A finding is not told again while it stays. The writer remembers what it published, and
//! forgets a finding once it is gone (whether this agent writes or not), so one that comes
//! back is told again. That memory is the process's own: a new writer (another agent took
//! the Lease over, or this one restarted) tells the findings that stand once more, once. The
//! alternative, reading the Events back at every change of writer, costs a LIST of every
//! Event of the namespaces at that moment and is only as good as the Events' lifetime (one
//! hour by default); a repeat after a change of writer tells the operator what the new
//! writer sees, and costs nothing while it keeps the Lease.
//!
//! The Events are created here rather than through kube-rs's `Recorder`: it keys its Events
//! without their note, so two findings with the same reason about one Service (two SCTP
//! ports) within six minutes would become one Event counted twice, with the first's note.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::Resource as _;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::MANAGER;
use super::desired::Notice;
use crate::config::ObjectRef;

/// The API server refuses a longer note.
const NOTE_MAX: usize = 1024;

/// What an Event says about the Service it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telling {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    /// What the agent did: `Serve` (how it serves the Service), `Allocate` (its VIPs).
    pub action: &'static str,
}

impl Telling {
    pub fn of(notice: &Notice) -> Self {
        Self {
            warning: notice.warning,
            reason: notice.reason.as_str().to_owned(),
            note: notice.message.clone(),
            action: "Serve",
        }
    }
}

/// The findings told so far that still stand, per Service.
#[derive(Default)]
pub struct Told(HashMap<ObjectRef, BTreeSet<Notice>>);

impl Told {
    /// Forgets what no longer stands in `notices` (the findings of now).
    pub fn forget_gone(&mut self, notices: &BTreeMap<ObjectRef, BTreeSet<Notice>>) {
        self.0.retain(|object, told| match notices.get(object) {
            Some(standing) => {
                told.retain(|notice| standing.contains(notice));
                !told.is_empty()
            }
            None => false,
        });
    }

    /// The findings of `notices` not told yet.
    pub fn due<'a>(
        &self,
        notices: &'a BTreeMap<ObjectRef, BTreeSet<Notice>>,
    ) -> Vec<(&'a ObjectRef, &'a Notice)> {
        notices
            .iter()
            .flat_map(|(object, standing)| standing.iter().map(move |n| (object, n)))
            .filter(|(object, notice)| !self.0.get(*object).is_some_and(|t| t.contains(*notice)))
            .collect()
    }

    pub fn told(&mut self, object: &ObjectRef, notice: Notice) {
        self.0.entry(object.clone()).or_default().insert(notice);
    }
}

/// The Event telling `telling` about Service `object` (its `uid`, so `kubectl describe`
/// finds it), reported by this agent (`instance`: its node) at `now`.
pub fn event(
    object: &ObjectRef,
    uid: &str,
    telling: &Telling,
    instance: &str,
    now: Timestamp,
) -> Event {
    let regarding = ObjectReference {
        api_version: Some(Service::API_VERSION.into()),
        kind: Some(Service::KIND.into()),
        namespace: Some(object.namespace.to_string()),
        name: Some(object.name.to_string()),
        uid: (!uid.is_empty()).then(|| uid.to_owned()),
        ..ObjectReference::default()
    };
    Event {
        metadata: ObjectMeta {
            namespace: Some(object.namespace.to_string()),
            // client-go's: the object's name and the time in hexadecimal nanoseconds.
            name: Some(format!("{}.{:x}", object.name, unique_nanos(now))),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if telling.warning { "Warning" } else { "Normal" }.into()),
        reason: Some(telling.reason.clone()),
        note: Some(truncated(&telling.note, NOTE_MAX)),
        action: Some(telling.action.into()),
        regarding: Some(regarding),
        reporting_controller: Some(MANAGER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

/// `now` in nanoseconds since the epoch, later than at any call before: Events of one
/// Service created in the same instant get different names.
fn unique_nanos(now: Timestamp) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(now.as_nanosecond()).unwrap_or_default();
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or_default();
    now.max(previous + 1)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Reason;

    fn service(name: &str) -> ObjectRef {
        ObjectRef {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn notice(reason: Reason, message: &str) -> Notice {
        Notice {
            reason,
            message: message.into(),
            warning: true,
        }
    }

    fn notices(of: &[(&str, Notice)]) -> BTreeMap<ObjectRef, BTreeSet<Notice>> {
        let mut notices: BTreeMap<ObjectRef, BTreeSet<Notice>> = BTreeMap::new();
        for (name, notice) in of {
            notices
                .entry(service(name))
                .or_default()
                .insert(notice.clone());
        }
        notices
    }

    #[test]
    fn a_finding_is_told_once_while_it_stands_and_again_when_it_comes_back() {
        let sctp = notice(Reason::UnsupportedProtocol, "spec.ports[1].protocol: SCTP");
        let sctp_again = notice(Reason::UnsupportedProtocol, "spec.ports[2].protocol: SCTP");
        let no_pool = notice(Reason::NoPool, "no pool");
        let mut told = Told::default();
        let now = notices(&[("web", sctp.clone()), ("web", sctp_again.clone())]);
        // Two findings with one reason: two Events.
        let due = told.due(&now);
        assert_eq!(due.len(), 2);
        for (object, notice) in due {
            told.told(object, notice.clone());
        }
        assert!(told.due(&now).is_empty(), "told while it stands");
        // Something else appears: only that is told.
        let later = notices(&[
            ("web", sctp.clone()),
            ("web", sctp_again.clone()),
            ("api", no_pool.clone()),
        ]);
        told.forget_gone(&later);
        let due = told.due(&later);
        assert_eq!(due, [(&service("api"), &no_pool)]);
        told.told(&service("api"), no_pool.clone());
        // One goes away and comes back: told again.
        let fixed = notices(&[("web", sctp.clone()), ("api", no_pool.clone())]);
        told.forget_gone(&fixed);
        assert!(told.due(&fixed).is_empty());
        told.forget_gone(&later);
        assert_eq!(told.due(&later), [(&service("web"), &sctp_again)]);
        // Nothing stands any more: nothing is remembered.
        told.forget_gone(&BTreeMap::new());
        assert!(told.0.is_empty());
    }

    #[test]
    fn the_event_names_the_service_by_uid_and_says_its_type() {
        let now = Timestamp::now();
        // Two-byte characters after one: 1,024 bytes would cut one in half.
        let long = format!("x{}", "é".repeat(600));
        let mut telling = Telling::of(&notice(Reason::InvalidPort, &long));
        let event = event(&service("web"), "uid-1", &telling, "node-a", now);
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some("InvalidPort"));
        assert_eq!(event.note.as_ref().map(String::len), Some(1023));
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        let name = event.metadata.name.clone().unwrap();
        assert!(name.starts_with("web."), "{name}");
        // The same instant again: another name.
        let twin = super::event(&service("web"), "uid-1", &telling, "node-a", now);
        assert_ne!(twin.metadata.name, Some(name));
        let regarding = event.regarding.unwrap();
        assert_eq!(regarding.uid.as_deref(), Some("uid-1"));
        assert_eq!(regarding.kind.as_deref(), Some("Service"));
        assert_eq!(event.reporting_controller.as_deref(), Some(MANAGER));
        assert_eq!(event.reporting_instance.as_deref(), Some("node-a"));
        telling.warning = false;
        let event = super::event(&service("web"), "", &telling, "node-a", now);
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.regarding.unwrap().uid, None);
    }
}
