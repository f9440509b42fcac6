//! Why a desired state cannot be planned.

use std::fmt;

use gateway_common::capacity;

#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// One backend address serves more frontends than reverse NAT can tell apart.
    TooManyFrontends {
        backend: String,
        frontends: Vec<String>,
    },
    /// More services or backends than the maps hold.
    Capacity {
        what: &'static str,
        needed: usize,
        max: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::TooManyFrontends { backend, frontends } => write!(
                f,
                "backend {backend} serves {} frontends ({}); at most {} per backend address",
                frontends.len(),
                frontends.join(", "),
                capacity::REVNAT_FRONTENDS
            ),
            PlanError::Capacity { what, needed, max } => {
                write!(
                    f,
                    "{needed} {what} needed but the datapath holds at most {max}"
                )
            }
        }
    }
}

impl std::error::Error for PlanError {}
