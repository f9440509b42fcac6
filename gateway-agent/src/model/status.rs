//! The status model: what LB-IPAM decided for every Service and pool, in the shape the
//! objects' status takes. The model computes it (a pure function of the objects, their
//! status and creation times included), so every agent computes the same; only the one
//! holding the lease writes it.
//!
//! What a status writer does with it:
//!
//! - [`ServiceStatus`], one per LoadBalancer Service of a class this agent serves (a
//!   Service of another class or type is absent: leave it alone; one that still carries
//!   this agent's condition or VIPs, as its `managedFields` tell, from before it changed
//!   class or type gets them removed, as Cilium does):
//!   - `status.loadBalancer.ingress` = one `{ip}` per [`ServiceVip`], in this order (sorted
//!     by address; IPv6 entries a dual-stack Service holds from another controller are not
//!     this agent's to write);
//!   - the condition [`SERVICE_CONDITION`] with status `True`/`False` from `satisfied`,
//!     `reason` and `message` as they are;
//!   - an Event per [`crate::config::Finding`] about the Service (`reason`, `message`;
//!     type `Warning` for warning and error severities, `Normal` for info), when it first
//!     appears (told again by a new writer once, and when it comes back after it went
//!     away), and a `Normal` one when its request is met again after it was not.
//! - [`PoolStatus`], one per `CiliumLoadBalancerIPPool`: the condition
//!   [`POOL_CONFLICT_CONDITION`] (`True` with reason `PoolConflict` and the message when
//!   `conflict` is set, else `False` with reason `Resolved`), and the counts as Cilium
//!   writes them: [`POOL_IPS_TOTAL_CONDITION`], [`POOL_IPS_AVAILABLE_CONDITION`],
//!   [`POOL_IPS_USED_CONDITION`], status `Unknown`, reason `NoReason`, the number in the
//!   message. `kubectl get ippools` then shows CONFLICTING and IPS AVAILABLE.
//!
//! A writer only writes when what it would write differs from what the object holds, and
//! sets `lastTransitionTime` when a condition's status changes.

use std::net::Ipv4Addr;

use super::{Name, ObjectRef, TrafficPolicy};
use crate::config::Reason;

/// The Service condition Cilium's LB-IPAM sets.
pub const SERVICE_CONDITION: &str = "cilium.io/IPAMRequestSatisfied";
/// The pool conditions Cilium's LB-IPAM sets, which `kubectl get ippools` prints.
pub const POOL_CONFLICT_CONDITION: &str = "cilium.io/PoolConflict";
pub const POOL_IPS_TOTAL_CONDITION: &str = "cilium.io/IPsTotal";
pub const POOL_IPS_AVAILABLE_CONDITION: &str = "cilium.io/IPsAvailable";
pub const POOL_IPS_USED_CONDITION: &str = "cilium.io/IPsUsed";

/// One Service's LB-IPAM result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStatus {
    pub service: ObjectRef,
    pub traffic_policy: TrafficPolicy,
    /// Sorted by address: `status.loadBalancer.ingress`. Empty when none was granted.
    pub vips: Vec<ServiceVip>,
    /// Every requested VIP (or, without a request, one VIP) and every required family is
    /// granted.
    pub satisfied: bool,
    /// [`Reason::Satisfied`], or why not (the first request that failed).
    pub reason: Reason,
    /// Empty when satisfied without anything to say.
    pub message: String,
}

/// A VIP granted to a Service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServiceVip {
    pub vip: Ipv4Addr,
    /// The pool it belongs to.
    pub pool: Name,
    /// Asked for with `spec.loadBalancerIP` or `lbipam.cilium.io/ips`.
    pub requested: bool,
    /// The other Services on the same VIP (a sharing key), sorted.
    pub shared_with: Vec<ObjectRef>,
    /// The node elected to answer ARP for it, if any (not status: what `check` shows).
    pub announcer: Option<Name>,
}

/// One pool's status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    pub pool: Name,
    /// `spec.disabled`.
    pub disabled: bool,
    /// Why it conflicts with another pool (it allocates nothing new), if it does.
    pub conflict: Option<String>,
    /// Why it allocates nothing new though neither disabled nor conflicting (a
    /// serviceSelector that cannot be read), if so.
    pub broken: Option<String>,
    /// Addresses that can be handed out (the first and last of a block left out with
    /// `allowFirstLastIPs: No`).
    pub total: u64,
    /// Addresses granted to Services (a shared VIP counts once).
    pub used: u64,
    /// `total - used`.
    pub available: u64,
}
