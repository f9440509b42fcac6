//! Every kind listed once, judged as the watches judge it, into a store of its own: what
//! `check` and `doctor` read when they are given no file.

use std::path::Path;

use anyhow::{Context, Result};
use kube::api::{Api, DynamicObject, ListParams};

use super::client::{Cluster, connect};
use super::object::judge;
use super::pending::Pending;
use super::resources;
use super::watch::Update;
use crate::config::{
    Config, ConfigError, ConfigErrors, Finding, Kind, LoadBalancerClasses, Reason, Severity,
};
use crate::store::Store;

/// Objects per page, as kube-rs's watcher and client-go list them.
const PAGE: u32 = 500;

/// Connects as `kubeconfig` says (see [`connect`]) and reads every object once, serving
/// Services of `classes`. Objects that cannot be served are findings about them; the only
/// error is a cluster that cannot be read.
pub fn load(
    kubeconfig: Option<&Path>,
    classes: &LoadBalancerClasses,
) -> Result<Config, ConfigErrors> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreadable("the cluster", anyhow::Error::from(e)))?;
    runtime.block_on(async {
        let cluster = connect(kubeconfig)
            .await
            .map_err(|e| unreadable("the cluster", e))?;
        let pending = read(&cluster, classes)
            .await
            .map_err(|e| unreadable(&cluster.name, e))?;
        let mut store = Store::new(&cluster.name);
        store.apply(pending);
        Ok(store.into_config())
    })
}

fn unreadable(source: &str, error: anyhow::Error) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: source.to_owned(),
        object: None,
        field: String::new(),
        message: format!("cannot read the objects: {error:#}"),
    }])
}

/// Every kind, as one batch.
async fn read(cluster: &Cluster, classes: &LoadBalancerClasses) -> Result<crate::store::Batch> {
    let mut pending = Pending::default();
    for kind in Kind::ALL {
        let resource = match resources::built_in(kind) {
            Some(resource) => resource,
            None => match resources::served(&cluster.client, kind)
                .await
                .with_context(|| format!("looking for {}", kind.name()))?
            {
                Some(resource) => resource,
                None => {
                    let finding = Finding {
                        file: cluster.name.clone(),
                        object: None,
                        field: String::new(),
                        message: format!(
                            "the API server does not serve {}: no {}",
                            kind.name(),
                            resources::wanted(kind)
                        ),
                        reason: Reason::KindNotServed,
                        severity: Severity::Warning,
                    };
                    pending.absorb(Update::Missing(kind, finding));
                    continue;
                }
            },
        };
        let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &resource);
        let mut outcomes = Vec::new();
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = api
                .list(&params)
                .await
                .with_context(|| format!("listing {} ({})", kind.name(), resource.api_version))?;
            outcomes.extend(
                page.items
                    .into_iter()
                    .map(|raw| judge(kind, raw, &cluster.name, classes)),
            );
            match page.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        pending.absorb(Update::Relist(kind, outcomes));
    }
    Ok(pending.take())
}
