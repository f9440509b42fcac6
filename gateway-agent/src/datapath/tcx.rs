//! The two TC hooks the datapath attaches to, and what the interfaces' tcx chains hold now.

use std::fmt;

use aya::programs::{ProgramInfo, SchedClassifier, TcAttachType};
use gateway_common::program_names;
use serde::Serialize;

/// Which way the traffic a program sees goes through the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Frames arriving: ARP requests, and client traffic to balance.
    Ingress,
    /// Frames leaving: backends' replies to rewrite back to the VIP.
    Egress,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }

    /// The datapath's program for this direction.
    pub const fn program(self) -> &'static str {
        match self {
            Direction::Ingress => program_names::INGRESS,
            Direction::Egress => program_names::EGRESS,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Our program in the interface's tcx chain for `direction`, if it is there.
pub fn gateway_program(interface: &str, direction: Direction) -> Option<ProgramInfo> {
    let (_, programs) = SchedClassifier::query_tcx(interface, direction.attach_type()).ok()?;
    programs
        .into_iter()
        .find(|p| p.name_as_str() == Some(direction.program()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_read_back_from_their_names() {
        for d in Direction::ALL {
            assert_eq!(Direction::from_name(d.name()), Some(d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
        }
        assert_eq!(Direction::from_name("sideways"), None);
    }
}
