//! Gratuitous ARP: when this node starts announcing a VIP on an interface (at start, on a
//! reload, when a local endpoint becomes ready), it says so at once, in both forms (an ARP
//! request and an ARP reply for its own address, as `arping -U` and `arping -A` send them),
//! a few times over a couple of seconds, so that clients and switches move over without
//! waiting for their caches to expire.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use gateway_common::{Ipv4, L2Key};
use nix::libc;

/// Rounds per announcement, `INTERVAL` apart; each round sends both forms.
pub const ROUNDS: u32 = 3;
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Frames in one round.
pub const FRAMES_PER_ROUND: u64 = 2;

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The two gratuitous frames for `vip` from `mac`: a request (RFC 5227 announcement: target
/// hardware address zero) and a reply (target hardware address our own).
pub fn frames(mac: [u8; 6], vip: Ipv4) -> [[u8; 42]; 2] {
    let frame = |op: u8, tha: [u8; 6]| {
        let mut f = [0u8; 42];
        f[0..6].copy_from_slice(&BROADCAST);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op]);
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
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        Ok(Self {
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
    key: L2Key,
    mac: [u8; 6],
    rounds_left: u32,
    next: Instant,
}

/// Announcements waiting for their next round of gratuitous ARP.
#[derive(Default)]
pub struct Schedule {
    pending: Vec<Pending>,
}

impl Schedule {
    /// Starts (or restarts) the rounds for an announcement, the first one now.
    pub fn announce(&mut self, key: L2Key, mac: [u8; 6], now: Instant) {
        self.pending.retain(|p| p.key != key);
        self.pending.push(Pending {
            key,
            mac,
            rounds_left: ROUNDS,
            next: now,
        });
    }

    /// When the next round is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.next).min()
    }

    /// The announcements whose round is due at `now`; their next round is scheduled.
    pub fn due(&mut self, now: Instant) -> Vec<(L2Key, [u8; 6])> {
        let mut due = Vec::new();
        for p in &mut self.pending {
            if p.next <= now {
                due.push((p.key, p.mac));
                p.rounds_left -= 1;
                p.next = now + INTERVAL;
            }
        }
        self.pending.retain(|p| p.rounds_left > 0);
        due
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
            rounds += s.due(now).len();
        }
        assert_eq!(rounds, ROUNDS as usize);
        assert!(now - t0 >= INTERVAL * (ROUNDS - 1));
        assert!(s.due(now + INTERVAL * 10).is_empty());
    }
}
