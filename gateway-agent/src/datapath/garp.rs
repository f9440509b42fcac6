//! Gratuitous ARP: when this node starts announcing a VIP on an interface (at start, on a
//! reload, when a local endpoint becomes ready), it says so at once, in both forms (an ARP
//! request and an ARP reply for its own address, as `arping -U` and `arping -A` send them),
//! a few times over a couple of seconds, so that clients and switches move over without
//! waiting for their caches to expire.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gateway_common::{ETH_P_ARP, ETH_P_IP, Ipv4, L2Key};
use nix::libc;

/// Rounds per announcement, `INTERVAL` apart; each round sends both forms.
pub const ROUNDS: u32 = 3;
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Frames in one round.
pub const FRAMES_PER_ROUND: u64 = 2;
/// Announcements sent per turn of the agent's loop. A node announcing ten thousand VIPs
/// sends their rounds in slices, so a reload or a signal waits for one slice (about a
/// millisecond), never for the whole burst (tens of milliseconds).
pub const BATCH: usize = 256;

const BROADCAST: [u8; 6] = [0xff; 6];

/// The two gratuitous frames for `vip` from `mac`: a request (RFC 5227 announcement: target
/// hardware address zero) and a reply (target hardware address our own).
pub fn frames(mac: [u8; 6], vip: Ipv4) -> [[u8; 42]; 2] {
    let frame = |op: u8, tha: [u8; 6]| {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&BROADCAST);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let [ip_hi, ip_lo] = ETH_P_IP.to_be_bytes();
        // Ethernet hardware addresses (6 bytes), IPv4 protocol addresses (4).
        f[14..22].copy_from_slice(&[0, 1, ip_hi, ip_lo, 6, 4, 0, op]);
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&vip);
        f[32..38].copy_from_slice(&tha);
        f[38..42].copy_from_slice(&vip);
        f
    };
    [frame(1, [0; 6]), frame(2, mac)]
}

/// A raw packet socket to send frames out of any interface.
pub struct Sender {
    socket: OwnedFd,
}

impl Sender {
    pub fn new() -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            bail!(
                "opening a packet socket for gratuitous ARP: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            // SAFETY: fd is a fresh, valid descriptor nobody else owns.
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn send(&self, ifindex: u32, frame: &[u8]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&BROADCAST);
        // SAFETY: the buffer and address outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            bail!(
                "sending gratuitous ARP on interface #{ifindex}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

struct Pending {
    mac: [u8; 6],
    rounds_left: u32,
    next: Instant,
}

/// Announcements waiting for their next round of gratuitous ARP.
#[derive(Default)]
pub struct Schedule {
    pending: HashMap<L2Key, Pending>,
}

impl Schedule {
    /// Starts (or restarts) the rounds for an announcement, the first one now.
    pub fn announce(&mut self, key: L2Key, mac: [u8; 6], now: Instant) {
        self.pending.insert(
            key,
            Pending {
                mac,
                rounds_left: ROUNDS,
                next: now,
            },
        );
    }

    /// When the next round is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next).min()
    }

    /// At most `limit` announcements whose round is due at `now`, those waiting longest
    /// first; their next round is scheduled. The rest stay due.
    pub fn due(&mut self, now: Instant, limit: usize) -> Vec<(L2Key, [u8; 6])> {
        let mut due: Vec<(&L2Key, &mut Pending)> = self
            .pending
            .iter_mut()
            .filter(|(_, p)| p.next <= now)
            .collect();
        due.sort_unstable_by_key(|(key, p)| (p.next, **key));
        due.truncate(limit);
        let sent = due.iter().map(|(key, p)| (**key, p.mac)).collect();
        for (_, p) in due {
            p.rounds_left -= 1;
            p.next = now + INTERVAL;
        }
        self.pending.retain(|_, p| p.rounds_left > 0);
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x6f];
    const VIP: Ipv4 = [192, 168, 10, 49];

    #[test]
    fn both_forms_announce_the_vip_from_our_mac() {
        let [request, reply] = frames(MAC, VIP);
        for f in [&request, &reply] {
            assert_eq!(&f[0..6], &BROADCAST, "broadcast");
            assert_eq!(&f[6..12], &MAC);
            assert_eq!(&f[12..14], &[0x08, 0x06]);
            assert_eq!(&f[22..28], &MAC, "sender hardware address");
            assert_eq!(&f[28..32], &VIP, "sender protocol address");
            assert_eq!(
                &f[38..42],
                &VIP,
                "target protocol address: the same, gratuitous"
            );
        }
        assert_eq!(&request[20..22], &[0, 1]);
        assert_eq!(&request[32..38], &[0; 6]);
        assert_eq!(&reply[20..22], &[0, 2]);
        assert_eq!(&reply[32..38], &MAC);
    }

    #[test]
    fn each_announcement_gets_its_rounds_then_stops() {
        let key = L2Key {
            ifindex: 2,
            vip: VIP,
        };
        let mut s = Schedule::default();
        let t0 = Instant::now();
        s.announce(key, MAC, t0);
        let mut rounds = 0;
        let mut now = t0;
        while let Some(next) = s.next_due() {
            now = now.max(next);
            rounds += s.due(now, BATCH).len();
        }
        assert_eq!(rounds, ROUNDS as usize);
        assert!(now - t0 >= INTERVAL * (ROUNDS - 1));
        assert!(s.due(now + INTERVAL * 10, BATCH).is_empty());
    }

    #[test]
    fn a_large_burst_goes_out_in_slices_and_every_announcement_gets_its_rounds() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let vips = 2 * BATCH + 10;
        for i in 0..vips {
            let key = L2Key {
                ifindex: 2,
                vip: [10, 96, (i >> 8) as u8, i as u8],
            };
            s.announce(key, MAC, t0);
        }
        // Announcing one again restarts it rather than adding a second entry.
        s.announce(
            L2Key {
                ifindex: 2,
                vip: [10, 96, 0, 0],
            },
            MAC,
            t0,
        );
        let mut sent: HashMap<L2Key, u32> = HashMap::new();
        let mut slices = 0;
        let mut now = t0;
        while let Some(next) = s.next_due() {
            now = now.max(next);
            let slice = s.due(now, BATCH);
            assert!(!slice.is_empty() && slice.len() <= BATCH);
            for (key, _) in slice {
                *sent.entry(key).or_default() += 1;
            }
            slices += 1;
        }
        assert_eq!(sent.len(), vips);
        assert!(sent.values().all(|&rounds| rounds == ROUNDS));
        assert_eq!(slices, ROUNDS as usize * vips.div_ceil(BATCH));
    }
}
