//! Who a member is: its node name, where its agent listens, and which start of the agent
//! this is. The incarnation (microseconds since the epoch at start) makes a restarted agent
//! a new identity that wins over its previous one, so it rejoins at once instead of waiting
//! until the others forget the old one.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: SocketAddrV4,
    pub incarnation: u64,
}

impl Member {
    /// A peer we have not heard from yet: foca accepts an announce addressed to any
    /// identity with the right name, so the incarnation does not matter.
    pub fn seed(peer: &Peer) -> Self {
        Member {
            name: peer.name.clone(),
            addr: peer.addr,
            incarnation: 0,
        }
    }
}

impl foca::Identity for Member {
    type Addr = String;

    /// Declared down while alive (a lost refutation, a partition that healed): come back
    /// as the next incarnation.
    fn renew(&self) -> Option<Self> {
        Some(Member {
            incarnation: self.incarnation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> String {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Another node's agent, from the objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddrV4,
}

/// The peers to contact: every node of `nodes` (name, InternalIP) but `me`, at `port`,
/// sorted by name. A node listed without an address cannot be reached and is left out
/// (and named in the returned list, for a warning).
pub fn peers<'n>(
    nodes: impl IntoIterator<Item = (&'n str, Option<Ipv4Addr>)>,
    me: &str,
    port: u16,
) -> (Vec<Peer>, Vec<String>) {
    let (mut peers, mut unreachable) = (Vec::new(), Vec::new());
    for (name, address) in nodes {
        match address {
            _ if name == me => {}
            Some(ip) => peers.push(Peer {
                name: name.to_owned(),
                addr: SocketAddrV4::new(ip, port),
            }),
            None => unreachable.push(name.to_owned()),
        }
    }
    peers.sort();
    peers.dedup_by(|a, b| a.name == b.name);
    (peers, unreachable)
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    #[test]
    fn peers_are_the_other_nodes_at_the_cluster_port() {
        let nodes = [
            ("worker-2", Some(Ipv4Addr::new(192, 168, 10, 112))),
            ("cp-1", Some(Ipv4Addr::new(192, 168, 10, 100))),
            ("worker-1", Some(Ipv4Addr::new(192, 168, 10, 111))),
            ("edge", None),
        ];
        let (peers, unreachable) = peers(nodes, "worker-1", 7951);
        let names: Vec<(&str, String)> = peers
            .iter()
            .map(|p| (p.name.as_str(), p.addr.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("cp-1", "192.168.10.100:7951".to_owned()),
                ("worker-2", "192.168.10.112:7951".to_owned())
            ]
        );
        assert_eq!(unreachable, ["edge"]);
    }

    #[test]
    fn a_single_node_has_no_peers() {
        let (peers, unreachable) = peers([("cp-1", Some(Ipv4Addr::LOCALHOST))], "cp-1", 7951);
        assert!(peers.is_empty() && unreachable.is_empty());
    }

    #[test]
    fn a_later_start_wins_over_an_earlier_one_of_the_same_node() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(192, 168, 10, 111), 7951);
        let first = Member {
            name: "worker-1".into(),
            addr,
            incarnation: 1_000,
        };
        let renewed = first.renew().expect("renews");
        let restarted = Member {
            incarnation: 2_000,
            ..first.clone()
        };
        assert_eq!(first.addr(), renewed.addr());
        assert!(renewed.win_addr_conflict(&first));
        assert!(restarted.win_addr_conflict(&renewed));
        assert!(!first.win_addr_conflict(&restarted));
    }
}
