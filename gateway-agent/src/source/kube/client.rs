//! Connecting to the API server: `--kubeconfig FILE`; without it, `$KUBECONFIG` or
//! `~/.kube/config`, and inside a pod its service account (kube-rs's inference).

use std::path::Path;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How findings and the log name the Kubernetes source: this, then the API server's URL.
pub const SOURCE_PREFIX: &str = "kubernetes ";

/// A client of the API server, and the source's name (`kubernetes https://HOST:PORT`).
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub name: String,
}

/// A client for the cluster `kubeconfig` names, or the one kube-rs infers.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Cluster> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no cluster to read: no --kubeconfig, no $KUBECONFIG or ~/.kube/config, and not in a \
             pod with a service account (or pass --config FILE to read a file)",
        )?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).with_context(|| format!("a client for {url}"))?;
    Ok(Cluster {
        client,
        name: format!("{SOURCE_PREFIX}{}", url.trim_end_matches('/')),
    })
}
