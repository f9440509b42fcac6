//! Sources: where the objects come from. A source reads objects in the API's shapes, turns
//! each into a validated object with the kind's conversion (`convert`, which calls the
//! kind's conversion in `crate::config`), and hands the store (`crate::store`) batches of
//! events keyed by `ObjectRef`: what was added or changed, what is gone, or every object of
//! a kind at once (a relist).
//!
//! - `file`: one YAML file (the demo, the tests, nodes without API access), read whole on
//!   every change, checked before anything is applied.
//! - `kube`: the Kubernetes API, watched; one object's trouble stays with that object.

use std::path::PathBuf;

use crate::config::{Config, ConfigErrors, LoadBalancerClasses};

pub(crate) mod convert;
pub mod file;
pub mod kube;

/// Where `run`, `check` and `doctor` take the objects from.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A YAML file (`--config FILE`).
    File(PathBuf),
    /// The cluster: `--kubeconfig FILE`, else `$KUBECONFIG` or `~/.kube/config`, else the
    /// pod's service account.
    Cluster { kubeconfig: Option<PathBuf> },
}

impl Origin {
    /// Reads and validates every object once into a store of their own: what `check` and
    /// `doctor` judge, serving Services of `classes`.
    pub fn load(&self, classes: LoadBalancerClasses) -> Result<Config, ConfigErrors> {
        match self {
            Origin::File(path) => file::load(path, classes),
            Origin::Cluster { kubeconfig } => kube::load(kubeconfig.as_deref(), &classes),
        }
    }
}
