//! The heartbeat every agent sends every member each [`HEARTBEAT_PERIOD`], and at once when
//! its claims change or it answers a new claim. Encoded with postcard (varints), a few dozen
//! bytes when nothing changes.
//!
//! [`HEARTBEAT_PERIOD`]: super::timing::HEARTBEAT_PERIOD

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::claims::Entry;

/// VIPs per claims chunk: 100 (address, epoch, answered) stay under 1,200 bytes.
pub const CHUNK: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The receiver's incarnation and the highest sequence number we received from it: the
    /// grant below counts from when the receiver sent that datagram.
    pub echo: Option<(u64, u64)>,
    /// Draining: our claims are being handed over, we take no new ones.
    pub draining: bool,
    /// Restarting: count us alive for this long (ms) whatever the membership says, so that
    /// nobody claims our VIPs; we are coming back.
    pub hold_ms: u32,
    /// The version of our claims.
    pub version: u32,
    /// The version of the receiver's claims we hold in full (its incarnation's).
    pub ack: Option<(u64, u32)>,
    /// Part of our claims, while the receiver's ack lags behind our version.
    pub chunk: Option<Chunk>,
    /// Our grant for the receiver's claims.
    pub grant: Option<Grant>,
}

/// Part `index` of `count` of a version of a node's record (its claims, and the VIPs it
/// cannot announce), sorted by VIP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub version: u32,
    pub index: u16,
    pub count: u16,
    pub entries: Vec<(Ipv4Addr, Entry)>,
}

/// "You may answer for the VIPs of your claims `version`, except `denied`, until
/// [`LEASE`] after you sent the datagram echoed."
///
/// [`LEASE`]: super::timing::LEASE
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub version: u32,
    pub denied: Vec<Ipv4Addr>,
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a heartbeat always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Claim;

    #[test]
    fn heartbeats_round_trip_and_stay_small() {
        let quiet = Heartbeat {
            echo: Some((1_700_000_000_000_000, 12_345)),
            version: 3,
            ack: Some((1_700_000_000_000_001, 7)),
            grant: Some(Grant {
                version: 7,
                denied: vec![],
            }),
            ..Heartbeat::default()
        };
        let bytes = quiet.encode();
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        assert_eq!(Heartbeat::decode(&bytes), Some(quiet));

        let full = Heartbeat {
            chunk: Some(Chunk {
                version: u32::MAX,
                index: 0,
                count: 1,
                entries: (0..CHUNK as u32)
                    .map(|i| {
                        let claim = Claim {
                            epoch: u32::MAX,
                            answered: true,
                        };
                        (Ipv4Addr::from(u32::MAX - i), Entry::Claim(claim))
                    })
                    .collect(),
            }),
            ..Heartbeat::default()
        };
        let bytes = full.encode();
        assert!(
            bytes.len() + super::super::auth::OVERHEAD_MAX <= super::super::timing::MAX_DATAGRAM,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(Heartbeat::decode(&bytes), Some(full));
        assert_eq!(Heartbeat::decode(&bytes[..bytes.len() - 1]), None);
    }
}
