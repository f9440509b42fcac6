//! The envelope of every cluster datagram: who sent it to whom, in which incarnation, with
//! which sequence number, and an HMAC-SHA256 tag under the shared key (`--cluster-key-file`).
//!
//! ```text
//!  0  magic "GWC1"             4  flags (bit 0: tagged)   5  kind (membership, heartbeat)
//!  6  sender id (u64, BE)     14  sender incarnation     22  sequence number
//! 30  receiver id             38  payload ...             [16-byte tag over all before it]
//! ```
//!
//! Node ids are FNV-1a 64 of the node names, so the header has a fixed size whatever the
//! names. A datagram is accepted only if its tag verifies (when we have a key), it is
//! addressed to us, and its sequence number was not seen before from that sender's
//! incarnation (a 64-wide sliding window, as IPsec's): a captured datagram replayed later
//! cannot keep a dead node alive nor renew its lease. Each refusal is counted by reason.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"GWC1";
const FLAG_TAGGED: u8 = 1;
const HEADER: usize = 38;
/// HMAC-SHA256 truncated to 128 bits (RFC 2104 allows truncation to half the output).
const TAG: usize = 16;
/// Header and tag: what the envelope adds to a payload.
pub const OVERHEAD_MAX: usize = HEADER + TAG;
/// Shorter keys are refused: a guessable key is no key.
const KEY_MIN: usize = 16;
const WINDOW: u64 = 64;

/// A node's id on the wire: FNV-1a 64 of its name.
pub fn node_id(name: &str) -> u64 {
    crate::score::fnv1a64(name.bytes())
}

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A foca (SWIM) message.
    Membership,
    /// A heartbeat of the fence (leases, grants, claims).
    Heartbeat,
}

/// The shared secret.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl Key {
    pub fn new(secret: &[u8]) -> Result<Self> {
        if secret.len() < KEY_MIN {
            bail!(
                "the cluster key has {} bytes; at least {KEY_MIN} are needed (32 random bytes, \
                 e.g. `head -c 32 /dev/urandom | base64`)",
                secret.len()
            );
        }
        Ok(Key(Hmac::new_from_slice(secret).context("HMAC-SHA256 key")?))
    }

    /// The file's content, without the trailing newline an editor or `echo` adds.
    pub fn from_file(path: &Path) -> Result<Self> {
        let secret = fs::read(path)
            .with_context(|| format!("reading the cluster key {}", path.display()))?;
        let secret = secret.trim_ascii_end();
        Self::new(secret).with_context(|| format!("cluster key {}", path.display()))
    }

    fn tag(&self, bytes: &[u8]) -> [u8; TAG] {
        let mut mac = self.0.clone();
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG];
        tag.copy_from_slice(&full[..TAG]);
        tag
    }

    fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(bytes);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Why a datagram was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter than the header (and tag), or not our magic and version.
    Malformed,
    /// No tag, and we have a key.
    Untagged,
    /// The tag does not verify: another key, or altered on the way.
    BadTag,
    /// Addressed to another node.
    NotForUs,
    /// A sequence number seen before, or too old for the window, or an earlier incarnation.
    Replayed,
}

/// Refusals by reason since the agent started (`members`, `status`, metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refusals {
    pub malformed: u64,
    pub untagged: u64,
    pub bad_tag: u64,
    pub not_for_us: u64,
    pub replayed: u64,
}

impl Refusals {
    fn count(&mut self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::Malformed => &mut self.malformed,
            Refusal::Untagged => &mut self.untagged,
            Refusal::BadTag => &mut self.bad_tag,
            Refusal::NotForUs => &mut self.not_for_us,
            Refusal::Replayed => &mut self.replayed,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.malformed + self.untagged + self.bad_tag + self.not_for_us + self.replayed
    }
}

/// An accepted datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'d> {
    pub kind: Kind,
    pub sender: u64,
    pub incarnation: u64,
    pub seq: u64,
    pub payload: &'d [u8],
}

/// The newest sequence number of one sender's incarnation, and which of the 64 before it
/// arrived (bit i: `newest - i`).
#[derive(Clone, Copy, Debug)]
struct Window {
    incarnation: u64,
    newest: u64,
    seen: u64,
}

impl Window {
    /// Records `seq`; false if it is a replay.
    fn accept(&mut self, incarnation: u64, seq: u64) -> bool {
        if incarnation < self.incarnation {
            return false;
        }
        if incarnation > self.incarnation {
            *self = Window {
                incarnation,
                newest: seq,
                seen: 1,
            };
            return true;
        }
        if seq > self.newest {
            let shift = seq - self.newest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            } | 1;
            self.newest = seq;
            return true;
        }
        let age = self.newest - seq;
        if age >= WINDOW || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// Seals our datagrams and opens the others', keeping the replay windows and the refusals.
pub struct Envelope {
    key: Option<Key>,
    me: u64,
    incarnation: u64,
    next_seq: u64,
    windows: HashMap<u64, Window>,
    refusals: Refusals,
}

impl Envelope {
    pub fn new(key: Option<Key>, me: &str, incarnation: u64) -> Self {
        Envelope {
            key,
            me: node_id(me),
            incarnation,
            next_seq: 1,
            windows: HashMap::new(),
            refusals: Refusals::default(),
        }
    }

    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// The datagram for `payload` to node `to`, and the sequence number it carries.
    pub fn seal(&mut self, kind: Kind, to: u64, payload: &[u8]) -> (Vec<u8>, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut datagram = Vec::with_capacity(OVERHEAD_MAX + payload.len());
        datagram.extend_from_slice(MAGIC);
        datagram.push(if self.key.is_some() { FLAG_TAGGED } else { 0 });
        datagram.push(match kind {
            Kind::Membership => 0,
            Kind::Heartbeat => 1,
        });
        for word in [self.me, self.incarnation, seq, to] {
            datagram.extend_from_slice(&word.to_be_bytes());
        }
        datagram.extend_from_slice(payload);
        if let Some(key) = &self.key {
            let tag = key.tag(&datagram);
            datagram.extend_from_slice(&tag);
        }
        (datagram, seq)
    }

    /// The datagram's content if it is genuine, fresh and ours; otherwise the refusal is
    /// counted and returned.
    pub fn open<'d>(&mut self, datagram: &'d [u8]) -> Result<Opened<'d>, Refusal> {
        let opened = self.check(datagram);
        if let Err(refusal) = opened {
            self.refusals.count(refusal);
        }
        opened
    }

    fn check<'d>(&mut self, datagram: &'d [u8]) -> Result<Opened<'d>, Refusal> {
        if datagram.len() < HEADER || &datagram[..4] != MAGIC {
            return Err(Refusal::Malformed);
        }
        let tagged = datagram[4] & FLAG_TAGGED != 0;
        let kind = match datagram[5] {
            0 => Kind::Membership,
            1 => Kind::Heartbeat,
            _ => return Err(Refusal::Malformed),
        };
        let body = match (&self.key, tagged) {
            (Some(_), false) => return Err(Refusal::Untagged),
            (Some(key), true) => {
                let Some(split) = datagram.len().checked_sub(TAG).filter(|&s| s >= HEADER) else {
                    return Err(Refusal::Malformed);
                };
                let (body, tag) = datagram.split_at(split);
                if !key.verify(body, tag) {
                    return Err(Refusal::BadTag);
                }
                body
            }
            // Without a key we cannot check a tag; the tag is not payload either.
            (None, true) => {
                let Some(split) = datagram.len().checked_sub(TAG).filter(|&s| s >= HEADER) else {
                    return Err(Refusal::Malformed);
                };
                &datagram[..split]
            }
            (None, false) => datagram,
        };
        let word = |at: usize| {
            u64::from_be_bytes(
                body[at..at + 8]
                    .try_into()
                    .expect("eight bytes in the header"),
            )
        };
        let (sender, incarnation, seq, to) = (word(6), word(14), word(22), word(30));
        if to != self.me {
            return Err(Refusal::NotForUs);
        }
        let window = self.windows.entry(sender).or_insert(Window {
            incarnation,
            newest: 0,
            seen: 0,
        });
        if !window.accept(incarnation, seq) {
            return Err(Refusal::Replayed);
        }
        Ok(Opened {
            kind,
            sender,
            incarnation,
            seq,
            payload: &body[HEADER..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn pair(key_a: Option<&[u8]>, key_b: Option<&[u8]>) -> (Envelope, Envelope) {
        let key = |k: Option<&[u8]>| k.map(|k| Key::new(k).expect("valid key"));
        (
            Envelope::new(key(key_a), "worker-1", 7),
            Envelope::new(key(key_b), "worker-2", 9),
        )
    }

    #[test]
    fn a_sealed_datagram_opens_once_at_its_receiver() {
        let (mut a, mut b) = pair(Some(SECRET), Some(SECRET));
        let (datagram, seq) = a.seal(Kind::Heartbeat, node_id("worker-2"), b"hello");
        assert_eq!(datagram.len(), OVERHEAD_MAX + 5);
        assert_eq!(
            b.open(&datagram),
            Ok(Opened {
                kind: Kind::Heartbeat,
                sender: node_id("worker-1"),
                incarnation: 7,
                seq,
                payload: b"hello",
            })
        );
        assert_eq!(b.open(&datagram), Err(Refusal::Replayed));
        assert_eq!(b.refusals().replayed, 1);
        assert_eq!(b.refusals().total(), 1);
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let (mut a, mut b) = pair(Some(SECRET), Some(SECRET));
        let (datagram, _) = a.seal(Kind::Membership, node_id("worker-2"), b"claims");
        for at in 0..datagram.len() {
            let mut altered = datagram.clone();
            altered[at] ^= 0x20;
            assert!(b.open(&altered).is_err(), "byte {at}");
        }
        // The magic and the kind are refused as malformed, everything else by the tag.
        let r = b.refusals();
        assert_eq!(r.malformed, 5);
        assert_eq!(r.bad_tag, datagram.len() as u64 - 5);
        // Untouched, it still opens: none of the attempts used up its sequence number.
        assert!(b.open(&datagram).is_ok());
    }

    #[test]
    fn another_key_or_no_key_is_refused() {
        let (mut a, mut b) = pair(Some(b"another key, 16+ bytes long"), Some(SECRET));
        let (datagram, _) = a.seal(Kind::Heartbeat, node_id("worker-2"), b"x");
        assert_eq!(b.open(&datagram), Err(Refusal::BadTag));
        let (mut a, mut b) = pair(None, Some(SECRET));
        let (datagram, _) = a.seal(Kind::Heartbeat, node_id("worker-2"), b"x");
        assert_eq!(b.open(&datagram), Err(Refusal::Untagged));
        assert_eq!(b.refusals().untagged, 1);
    }

    #[test]
    fn truncated_datagrams_are_refused() {
        let (mut a, mut b) = pair(Some(SECRET), Some(SECRET));
        let (datagram, _) = a.seal(Kind::Heartbeat, node_id("worker-2"), b"payload");
        for len in 0..datagram.len() {
            assert!(b.open(&datagram[..len]).is_err(), "{len} bytes");
        }
        let r = b.refusals();
        assert_eq!(r.total(), datagram.len() as u64);
        assert_eq!(r.malformed, HEADER as u64 + TAG as u64);
        assert_eq!(r.bad_tag, r.total() - r.malformed);
    }

    #[test]
    fn a_datagram_for_another_node_is_refused() {
        let (mut a, mut b) = pair(Some(SECRET), Some(SECRET));
        let (datagram, _) = a.seal(Kind::Heartbeat, node_id("worker-3"), b"x");
        assert_eq!(b.open(&datagram), Err(Refusal::NotForUs));
    }

    #[test]
    fn without_keys_datagrams_pass_but_replays_do_not() {
        let (mut a, mut b) = pair(None, None);
        let (datagram, _) = a.seal(Kind::Heartbeat, node_id("worker-2"), b"open");
        assert_eq!(b.open(&datagram).map(|o| o.payload), Ok(&b"open"[..]));
        assert_eq!(b.open(&datagram), Err(Refusal::Replayed));
    }

    #[test]
    fn the_window_takes_reordered_datagrams_once_and_refuses_old_ones() {
        let (mut a, mut b) = pair(Some(SECRET), Some(SECRET));
        let to = node_id("worker-2");
        let sealed: Vec<Vec<u8>> = (0..100)
            .map(|_| a.seal(Kind::Heartbeat, to, b"").0)
            .collect();
        // 10 arrives first, then 3..10 late, each once.
        assert!(b.open(&sealed[10]).is_ok());
        for datagram in &sealed[3..10] {
            assert!(b.open(datagram).is_ok());
            assert_eq!(b.open(datagram), Err(Refusal::Replayed));
        }
        // 99 moves the window past 10: anything 64 or more behind is refused unseen.
        assert!(b.open(&sealed[99]).is_ok());
        assert_eq!(b.open(&sealed[20]), Err(Refusal::Replayed));
        assert!(b.open(&sealed[40]).is_ok());
    }

    #[test]
    fn an_earlier_incarnation_is_refused_after_a_later_one() {
        let key = || Some(Key::new(SECRET).expect("valid key"));
        let mut before = Envelope::new(key(), "worker-1", 1);
        let mut after = Envelope::new(key(), "worker-1", 2);
        let mut b = Envelope::new(key(), "worker-2", 1);
        let to = node_id("worker-2");
        let old = before.seal(Kind::Heartbeat, to, b"").0;
        assert!(b.open(&after.seal(Kind::Heartbeat, to, b"").0).is_ok());
        assert_eq!(b.open(&old), Err(Refusal::Replayed));
    }

    #[test]
    fn short_keys_are_refused_and_files_lose_their_newline() {
        assert!(Key::new(b"short").is_err());
        let dir = std::env::temp_dir().join(format!("gw-key-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("key");
        fs::write(&file, [SECRET, b"\n"].concat()).expect("write key");
        let from_file = Key::from_file(&file).expect("key file");
        let direct = Key::new(SECRET).expect("key");
        assert_eq!(from_file.tag(b"x"), direct.tag(b"x"));
        let missing = Key::from_file(&dir.join("missing"))
            .err()
            .expect("missing file");
        assert!(format!("{missing:#}").contains("missing"), "{missing:#}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
