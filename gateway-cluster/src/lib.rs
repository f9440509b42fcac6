//! Failover between nodes (issue 11): which agents are alive, who announces each VIP, and
//! the fence that keeps two nodes from ever answering ARP for one VIP.
//!
//! - `membership`: foca (SWIM + suspicion) decides who is alive, within about 0.5 s
//!   (`timing` says why each value).
//! - `auth`: every datagram is sealed (HMAC-SHA256 under `--cluster-key-file`), addressed,
//!   and numbered per sender incarnation; forged, altered, misaddressed and replayed ones
//!   are refused and counted.
//! - `claims` + `heartbeat`: each node's claimed VIPs (with epoch and whether it answers)
//!   reach every peer, acknowledged, over the heartbeats.
//! - `election`: the pure rule all nodes compute alike: a live claimant keeps its VIP, a
//!   VIP without one goes to the best-scoring alive eligible node; no new claim without a
//!   quorum; of two claimants the answering one, then the higher epoch, wins.
//! - `lease`: claiming is not answering. A node answers only under a quorum's grants; each
//!   member grants a VIP to one node at a time and moves it only after the holder withdrew
//!   or fell silent for a lease. The datapath gate closes at the earliest lease, so an
//!   agent that dies, or a node cut off from the others (not from the clients), stops
//!   answering before anyone may take over. Two nodes have no quorum: by default they take
//!   over only what the other withdraws (drain); `two_node_takeover` fails over on silence
//!   at the price of both answering while the link between them is cut.
//! - `score`: the rendezvous hash both this election and the agent's model rank nodes by.
//! - `node`: all of it as one I/O-free state machine; the agent drives it over UDP
//!   (`gateway-agent`'s `cluster::transport`), the simulation (`sim`, tests) over a
//!   simulated network.
//!
//! A crate of its own so that the simulation runs optimized in every build (see the
//! workspace's `Cargo.toml`): thousands of schedules per test run within seconds.
//!
//! One node in the objects: no cluster at all (no socket, no traffic), as before.

pub mod auth;
pub mod claims;
pub mod election;
pub mod heartbeat;
pub mod identity;
pub mod lease;
pub mod membership;
pub mod node;
pub mod score;
#[cfg(test)]
mod sim;
pub mod timing;

pub use score::announcer_score;
