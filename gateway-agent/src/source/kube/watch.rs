//! One watch per kind, with kube-rs's `watcher`: a list, then a watch from its resource
//! version, resumed where it left off after a lost connection, relisted (`Init` ..
//! `InitDone`) when the server says the version is gone (410). Each object is judged as it
//! arrives (`object`); a relist is gathered whole and handed on as one update, so the
//! store replaces the kind at once and never sees it half listed.
//!
//! Errors never end a watch: it logs them and retries, backing off. A Cilium kind the API
//! server does not serve (no CRD) is reported missing, so the others serve, and looked for
//! again now and then until it appears.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use log::{debug, info, warn};
use tokio::sync::mpsc::UnboundedSender;

use super::object::{judge, object_ref};
use super::resources;
use crate::config::{Finding, Kind, LoadBalancerClasses, ObjectRef, Reason, Severity};
use crate::store::Entry;
use crate::writeback::Observed;
use crate::writeback::observed::Seen;

/// What the agent makes of one object.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Valid and served.
    Served(Entry),
    /// Not served, with why (it did not deserialize or convert).
    Rejected(ObjectRef, Vec<Finding>),
    /// Not one the agent serves (a Service of another type): silently left out.
    Ignored(ObjectRef),
}

/// What a watch tells the source.
#[derive(Debug)]
pub(crate) enum Update {
    /// Every object of the kind, after a (re)list.
    Relist(Kind, Vec<Outcome>),
    Changed(Outcome),
    Deleted(ObjectRef),
    /// The API server does not serve the kind: it has no objects; the finding says why.
    Missing(Kind, Finding),
}

/// A watch closes on the server's side after this long and is reopened from where it was:
/// a connection lost without a word is noticed within about this much.
const WATCH_TIMEOUT_SECS: u32 = 60;
/// Retries after an error back off from the first to the longest, doubling; anything the
/// watch delivers starts them from the first again.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_LONGEST: Duration = Duration::from_secs(5);
/// How often a kind the API server does not serve is looked for.
const MISSING_RECHECK: Duration = Duration::from_secs(30);

/// Watches `kind` until `updates` closes, sending what it sees; `source` names the API
/// server in findings.
pub(crate) async fn watch(
    client: Client,
    kind: Kind,
    source: String,
    classes: LoadBalancerClasses,
    updates: UnboundedSender<Update>,
    observed: Option<Observed>,
) {
    // Only the kinds whose status the agent writes are observed.
    let observed = observed.filter(|_| Observed::covers(kind));
    let mut reported_missing = false;
    loop {
        let resource = match resources::built_in(kind) {
            Some(resource) => resource,
            None => match resources::served(&client, kind).await {
                Ok(Some(resource)) => resource,
                Ok(None) => {
                    if !reported_missing {
                        let why = format!(
                            "the API server does not serve {}: no {} (install the CRDs: \
                             deploy/crds.yaml, or Cilium's)",
                            kind.name(),
                            resources::wanted(kind)
                        );
                        warn!("{why}; looking again every {MISSING_RECHECK:?}");
                        let finding = Finding {
                            file: source.clone(),
                            object: None,
                            field: String::new(),
                            message: why,
                            reason: Reason::KindNotServed,
                            severity: Severity::Warning,
                        };
                        if updates.send(Update::Missing(kind, finding)).is_err() {
                            return;
                        }
                        reported_missing = true;
                    }
                    tokio::time::sleep(MISSING_RECHECK).await;
                    continue;
                }
                Err(error) => {
                    warn!("looking for {} on the API server: {error}", kind.name());
                    tokio::time::sleep(BACKOFF_LONGEST).await;
                    continue;
                }
            },
        };
        reported_missing = false;
        if !watch_resource(
            &client,
            kind,
            &resource,
            (&source, &classes),
            &updates,
            observed.as_ref(),
        )
        .await
        {
            return;
        }
    }
}

/// Watches one resource; returns `false` once nobody listens, `true` when the resource is
/// gone (to look for it again).
async fn watch_resource(
    client: &Client,
    kind: Kind,
    resource: &ApiResource,
    (source, classes): (&str, &LoadBalancerClasses),
    updates: &UnboundedSender<Update>,
    observed: Option<&Observed>,
) -> bool {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let config = watcher::Config::default().timeout(WATCH_TIMEOUT_SECS);
    let mut events = watcher(api, config).backoff(Retry::default()).boxed();
    let mut relist: Option<Vec<Outcome>> = None;
    let mut relisted_statuses: Vec<(ObjectRef, Seen)> = Vec::new();
    let mut list_started = Instant::now();
    let what = format!("{} ({})", kind.name(), resource.api_version);
    // Retries are logged once per outage, not once per attempt.
    let mut failing = false;
    while let Some(event) = events.next().await {
        if event.is_ok() && std::mem::take(&mut failing) {
            info!("watching {what} again");
        }
        let update = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(Vec::new());
                list_started = Instant::now();
                relisted_statuses.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(raw)) => {
                if observed.is_some() {
                    let object = object_ref(kind, &raw.metadata);
                    relisted_statuses.push((object, Observed::seen(&raw)));
                }
                relist
                    .get_or_insert_with(Vec::new)
                    .push(judge(kind, raw, source, classes));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                let outcomes = relist.take().unwrap_or_default();
                info!(
                    "listed {what}: {} objects in {:.1?}",
                    outcomes.len(),
                    list_started.elapsed()
                );
                if let Some(observed) = observed {
                    observed.replace(kind, std::mem::take(&mut relisted_statuses));
                }
                Update::Relist(kind, outcomes)
            }
            Ok(watcher::Event::Apply(raw)) => {
                if let Some(observed) = observed {
                    observed.record(kind, &object_ref(kind, &raw.metadata), &raw);
                }
                Update::Changed(judge(kind, raw, source, classes))
            }
            Ok(watcher::Event::Delete(raw)) => {
                let object = object_ref(kind, &raw.metadata);
                if let Some(observed) = observed {
                    observed.forget(kind, &object);
                }
                Update::Deleted(object)
            }
            Err(error) => {
                if is_not_found(&error) {
                    warn!("{what} is no longer served: {error}");
                    return true;
                }
                if is_expired(&error) {
                    // The watcher lists again; the store keeps every object until the new
                    // list replaces the kind whole.
                    info!("the watch of {what} expired (410 Gone): listing again");
                } else if !std::mem::replace(&mut failing, true) {
                    warn!("watching {what}: {error}; retrying until it answers");
                } else {
                    debug!("watching {what}: {error}; retrying");
                }
                continue;
            }
        };
        if updates.send(update).is_err() {
            return false;
        }
    }
    true
}

/// The server no longer has the resource version the watch resumes from (410 Gone): the
/// watcher starts over with a list.
fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// The resource itself is gone (its CRD was removed, or the version no longer served).
fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

/// The delay before each retry after an error: doubling from [`BACKOFF_FIRST`] to
/// [`BACKOFF_LONGEST`], from the first again once the watch delivers.
#[derive(Default)]
struct Retry {
    next: Option<Duration>,
}

impl Iterator for Retry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next.unwrap_or(BACKOFF_FIRST);
        self.next = Some((delay * 2).min(BACKOFF_LONGEST));
        Some(delay)
    }
}

impl Backoff for Retry {
    fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_to_the_longest_and_start_over_after_a_reset() {
        let mut retry = Retry::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| retry.next().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        retry.reset();
        assert_eq!(retry.next(), Some(BACKOFF_FIRST));
    }
}
