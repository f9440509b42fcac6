//! Failover between nodes (issue 11).
pub mod auth;
pub mod claims;
pub mod election;
pub mod heartbeat;
pub mod identity;
pub mod lease;
pub mod membership;
pub mod node;
#[cfg(test)]
mod sim;
pub mod timing;
