//! From the desired state to map contents, and from current map contents to the ordered
//! list of writes that gets there make-before-break. Pure: no kernel, no clock.
//!
//! Ids are the long-lived part: conntrack and affinity entries refer to service and backend
//! ids, so a service or backend that survives a plan keeps its id, and a new one takes the
//! lowest id free in both the current and the target state.
//!
//! - `state`: what the maps hold ([`MapState`]), one write ([`Op`]), a re-plan's before and
//!   after ([`Change`]).
//! - `entries`: one frontend of the desired state as map keys and values.
//! - `ids`: the id allocator.
//! - `target`: the full plan, the map contents that serve a desired state.
//! - `change`: the incremental plan, from what changed since the previous desired state.
//! - `diff`: the ordered, make-before-break writes from one map state to another.
//! - `remote`: what flows SNATed to backends on other nodes need: the interfaces' addresses
//!   and the filter of those backends' addresses.

mod change;
mod diff;
mod entries;
mod error;
mod ids;
mod remote;
mod state;
mod target;

#[cfg(test)]
mod fixtures;

pub use change::change;
pub use diff::{diff, diff_each};
pub use entries::{backend_label, ended_label, frontend_label, hairpin_entries, l2_entries};
pub use error::PlanError;
pub use state::{Change, FlowRules, MapState, Membership, Op};
pub use target::target;

/// A network interface of this node, as the datapath sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    /// Its first IPv4 address: flows arriving on it for a backend on another node are
    /// SNATed to it.
    pub addr: Option<std::net::Ipv4Addr>,
}
