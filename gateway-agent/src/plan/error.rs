//! Why a desired state cannot be planned.

use std::fmt;

#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
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
