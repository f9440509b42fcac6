//! Claims: which VIPs a node holds, each with its epoch (how often the VIP changed hands)
//! and whether the node answers for it (holds a quorum's grants), versioned and
//! synchronised to every peer in chunks over the heartbeats until the peer acknowledges the
//! version. The same record carries the VIPs the node cannot announce although the objects
//! make it eligible (no interface of its own matches the policy): only it knows its
//! interfaces, and the others must not elect it for those.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::heartbeat::{CHUNK, Chunk};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    pub epoch: u32,
    /// The claimant answers for it: of two claimants, the one answering keeps the VIP.
    pub answered: bool,
}

pub type Claims = BTreeMap<Ipv4Addr, Claim>;

/// What a node's record says of one VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Entry {
    Claim(Claim),
    /// Eligible by the objects, but no interface of the node matches the policy.
    Unable,
}

/// A peer's claims as far as we know them: the last complete version (kept across its
/// restarts until the new incarnation's claims are complete) and one being assembled.
#[derive(Clone, Debug, Default)]
pub struct PeerClaims {
    /// The incarnation and version of `claims` and `unable`; `None` until one arrived in
    /// full.
    pub complete: Option<(u64, u32)>,
    pub claims: Claims,
    pub unable: BTreeSet<Ipv4Addr>,
    assembling: Option<Assembly>,
}

#[derive(Clone, Debug)]
struct Assembly {
    incarnation: u64,
    version: u32,
    parts: BTreeMap<u16, Vec<(Ipv4Addr, Entry)>>,
    count: u16,
}

impl PeerClaims {
    /// Adds a chunk of `incarnation`'s claims; true when it completed a newer version.
    pub fn receive(&mut self, incarnation: u64, chunk: Chunk) -> bool {
        if chunk.count == 0 || chunk.index >= chunk.count {
            return false;
        }
        if self
            .complete
            .is_some_and(|done| done >= (incarnation, chunk.version))
        {
            return false;
        }
        let assembly = match &mut self.assembling {
            Some(a) if (a.incarnation, a.version) == (incarnation, chunk.version) => a,
            Some(a) if (a.incarnation, a.version) > (incarnation, chunk.version) => return false,
            slot => slot.insert(Assembly {
                incarnation,
                version: chunk.version,
                parts: BTreeMap::new(),
                count: chunk.count,
            }),
        };
        if assembly.count != chunk.count {
            return false;
        }
        assembly.parts.insert(chunk.index, chunk.entries);
        if assembly.parts.len() < usize::from(assembly.count) {
            return false;
        }
        let assembly = self.assembling.take().expect("assembling");
        self.claims.clear();
        self.unable.clear();
        for (vip, entry) in assembly.parts.into_values().flatten() {
            match entry {
                Entry::Claim(claim) => {
                    self.claims.insert(vip, claim);
                }
                Entry::Unable => {
                    self.unable.insert(vip);
                }
            }
        }
        self.complete = Some((assembly.incarnation, assembly.version));
        true
    }

    /// The version of `incarnation`'s claims we hold in full, for the ack.
    pub fn ack(&self, incarnation: u64) -> Option<(u64, u32)> {
        self.complete.filter(|(inc, _)| *inc == incarnation)
    }
}

/// A node's record: its claims, and the VIPs it cannot announce (those it claims left out).
pub fn record(claims: &Claims, unable: &BTreeSet<Ipv4Addr>) -> Vec<(Ipv4Addr, Entry)> {
    let mut record: Vec<(Ipv4Addr, Entry)> = claims
        .iter()
        .map(|(vip, claim)| (*vip, Entry::Claim(*claim)))
        .chain(
            unable
                .iter()
                .filter(|vip| !claims.contains_key(vip))
                .map(|vip| (*vip, Entry::Unable)),
        )
        .collect();
    record.sort_unstable_by_key(|(vip, _)| *vip);
    record
}

/// Chunk `index` (wrapped into range) of `record` at `version`.
pub fn chunk(record: &[(Ipv4Addr, Entry)], version: u32, index: u16) -> Chunk {
    let count = record.len().div_ceil(CHUNK).max(1);
    let index = usize::from(index) % count;
    Chunk {
        version,
        index: index as u16,
        count: count as u16,
        entries: record
            .iter()
            .skip(index * CHUNK)
            .take(CHUNK)
            .copied()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(n: u32) -> Claims {
        (0..n)
            .map(|i| {
                let claim = Claim {
                    epoch: i,
                    answered: i % 2 == 0,
                };
                (Ipv4Addr::from(0x0a00_0000 + i), claim)
            })
            .collect()
    }

    fn chunk_of(claims: &Claims, version: u32, index: u16) -> Chunk {
        chunk(&record(claims, &BTreeSet::new()), version, index)
    }

    #[test]
    fn claims_arrive_in_chunks_in_any_order() {
        let sent = claims(250);
        let mut received = PeerClaims::default();
        let chunks: Vec<Chunk> = (0..3).map(|i| chunk_of(&sent, 4, i)).collect();
        assert!(chunks.iter().all(|c| c.count == 3));
        assert!(!received.receive(9, chunks[2].clone()));
        assert!(!received.receive(9, chunks[0].clone()));
        assert!(received.receive(9, chunks[1].clone()));
        assert_eq!(received.claims, sent);
        assert_eq!(received.ack(9), Some((9, 4)));
        assert_eq!(received.ack(10), None);
        // A repeat of an older or the same version changes nothing.
        assert!(!received.receive(9, chunk_of(&claims(1), 3, 0)));
        assert!(!received.receive(9, chunks[1].clone()));
        assert_eq!(received.claims, sent);
    }

    #[test]
    fn an_empty_claim_set_is_one_empty_chunk() {
        let empty = chunk_of(&Claims::new(), 1, 5);
        assert_eq!((empty.index, empty.count), (0, 1));
        let mut received = PeerClaims {
            claims: claims(2),
            ..PeerClaims::default()
        };
        assert!(received.receive(1, empty));
        assert!(received.claims.is_empty());
    }

    #[test]
    fn a_new_incarnation_replaces_the_old_claims_once_complete() {
        let mut received = PeerClaims::default();
        assert!(!received.receive(1, chunk_of(&claims(150), 9, 0)));
        assert!(received.receive(1, chunk_of(&claims(150), 9, 1)));
        // The restarted agent starts again at version 1: newer, since its incarnation is.
        let restarted = claims(120);
        assert!(!received.receive(2, chunk_of(&restarted, 1, 1)));
        assert_eq!(received.claims, claims(150), "kept until complete");
        assert!(received.receive(2, chunk_of(&restarted, 1, 0)));
        assert_eq!(received.claims, restarted);
        // A late chunk of the old incarnation is ignored.
        assert!(!received.receive(1, chunk_of(&claims(1), 10, 0)));
    }

    #[test]
    fn the_vips_a_node_cannot_announce_travel_with_its_claims() {
        let mine = claims(3);
        let unable: BTreeSet<Ipv4Addr> = [
            Ipv4Addr::new(192, 168, 10, 60),
            *mine.keys().next().expect("a claim"),
        ]
        .into();
        let sent = record(&mine, &unable);
        // A claimed VIP is not also unable.
        assert_eq!(sent.len(), 4);
        let mut received = PeerClaims::default();
        assert!(received.receive(1, chunk(&sent, 1, 0)));
        assert_eq!(received.claims, mine);
        assert_eq!(
            received.unable,
            BTreeSet::from([Ipv4Addr::new(192, 168, 10, 60)])
        );
        // The next version without it clears it.
        assert!(received.receive(1, chunk(&record(&mine, &BTreeSet::new()), 2, 0)));
        assert!(received.unable.is_empty());
    }
}
