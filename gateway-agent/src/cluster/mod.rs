//! Failover between nodes: the state machine is the `gateway-cluster` crate (membership,
//! claims, election, leases; I/O-free, simulated in its tests), re-exported here; this
//! module adds what touches the machine: the UDP socket that drives it.

pub use gateway_cluster::{
    auth, claims, election, heartbeat, identity, lease, membership, node, timing,
};

pub mod transport;
