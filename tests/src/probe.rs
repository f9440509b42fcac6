//! A client that watches a VIP as the failover tests and the benchmark need it: every
//! [`PERIOD`] it sends an ARP request for the VIP (and records every MAC that answers that
//! request) and opens a new connection with one HTTP request (and records which pod
//! answered, and when). From the log: ARP requests answered by two different MACs (two
//! nodes answering at once), and how long after a moment (a kill) requests were first
//! served through another node.
//!
//! Both run on threads of their own inside the client's namespace; ARP goes through a raw
//! packet socket on the client's segment interface.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};

use crate::http::Answer;
use crate::lab::{CLIENT_IFACE, Client};

/// How often each probe goes out.
pub const PERIOD: Duration = Duration::from_millis(50);
/// A request not answered by then failed (its SYN went to a node that no longer answers).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1_000);
const ETH_P_ARP: u16 = 0x0806;
const ARP_FRAME: usize = 42;

/// One ARP request and the MACs that answered it.
#[derive(Clone, Debug)]
pub struct ArpRound {
    pub sent: Instant,
    pub macs: Vec<[u8; 6]>,
}

/// One HTTP request: when it started and ended, and the pod that answered (`None`: no
/// answer within the timeout).
#[derive(Clone, Debug)]
pub struct Request {
    pub started: Instant,
    pub ended: Instant,
    pub backend: Option<String>,
}

/// What the probe saw.
#[derive(Clone, Debug, Default)]
pub struct Log {
    pub arp: Vec<ArpRound>,
    pub requests: Vec<Request>,
}

impl Log {
    /// The ARP requests two or more MACs answered.
    pub fn double_answers(&self) -> Vec<&ArpRound> {
        self.arp.iter().filter(|r| r.macs.len() > 1).collect()
    }

    /// How long after `since` a request was first answered by a pod `served` accepts
    /// (e.g. one on another node than the one killed at `since`).
    pub fn served_after(&self, since: Instant, served: impl Fn(&str) -> bool) -> Option<Duration> {
        self.requests
            .iter()
            .filter(|r| r.ended >= since && r.backend.as_deref().is_some_and(&served))
            .map(|r| r.ended - since)
            .min()
    }

    /// The MACs that answered ARP requests sent at or after `since`.
    pub fn macs_after(&self, since: Instant) -> Vec<[u8; 6]> {
        let mut macs: Vec<[u8; 6]> = self
            .arp
            .iter()
            .filter(|r| r.sent >= since)
            .flat_map(|r| r.macs.iter().copied())
            .collect();
        macs.sort_unstable();
        macs.dedup();
        macs
    }

    /// The pods that answered requests started at or after `since`.
    pub fn backends_after(&self, since: Instant) -> Vec<String> {
        let mut pods: Vec<String> = self
            .requests
            .iter()
            .filter(|r| r.started >= since)
            .filter_map(|r| r.backend.clone())
            .collect();
        pods.sort_unstable();
        pods.dedup();
        pods
    }

    /// Requests started at or after `since` that got no answer.
    pub fn failed_after(&self, since: Instant) -> usize {
        self.requests
            .iter()
            .filter(|r| r.started >= since && r.backend.is_none())
            .count()
    }
}

/// The running probe; [`Probe::stop`] ends it and returns the log.
pub struct Probe {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Probe {
    /// Starts probing `vip` (HTTP on `port`) from `client`.
    pub fn start(client: &Client, vip: Ipv4Addr, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let ns = client.ns().path();
        let mac = parse_mac(client.mac())?;
        let me = client.addr();
        let arp = {
            let (ns, stop, log) = (ns.clone(), Arc::clone(&stop), Arc::clone(&log));
            thread::spawn(move || -> Result<()> {
                enter(&ns)?;
                arp_probe(&stop, &log, mac, me, vip)
            })
        };
        let http = {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            thread::spawn(move || -> Result<()> {
                enter(&ns)?;
                http_probe(&stop, &log, SocketAddr::from((vip, port)))
            })
        };
        Ok(Probe {
            stop,
            log,
            threads: vec![arp, http],
        })
    }

    /// What it saw so far.
    pub fn log(&self) -> Log {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops it; the log, or why a probe failed.
    pub fn stop(mut self) -> Result<Log> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a probe thread panicked"))??;
        }
        Ok(self.log())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Moves this thread (and the threads it spawns from now on) into the namespace at `path`.
fn enter(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering the network namespace {}", path.display()))
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text:?} has not six bytes"))
}

/// A raw packet socket for ARP on the client's segment interface.
fn arp_socket() -> Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(CLIENT_IFACE)?;
    // SAFETY: a NUL-terminated interface name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    ensure!(ifindex > 0, "no interface {CLIENT_IFACE} in the client");
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    ensure!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let address = link_address(ifindex, [0; 6]);
    // SAFETY: a valid sockaddr_ll of the size given.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(
        bound == 0,
        "binding to {CLIENT_IFACE}: {}",
        std::io::Error::last_os_error()
    );
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 5_000,
    };
    // SAFETY: a valid timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    ensure!(set == 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    Ok((socket, ifindex))
}

fn link_address(ifindex: i32, mac: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(&mac);
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ETH_P_ARP.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    }
}

fn arp_request(mac: [u8; 6], me: Ipv4Addr, vip: Ipv4Addr) -> [u8; ARP_FRAME] {
    let mut frame = [0u8; ARP_FRAME];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&me.octets());
    frame[38..42].copy_from_slice(&vip.octets());
    frame
}

/// The sender MAC of an ARP reply from `vip` to `me`: an answer to a request of ours (or
/// of the client's kernel), not a gratuitous announcement.
fn reply_from(frame: &[u8], me: Ipv4Addr, vip: Ipv4Addr) -> Option<[u8; 6]> {
    if frame.len() < ARP_FRAME
        || frame[12..14] != ETH_P_ARP.to_be_bytes()
        || frame[20..22] != [0, 2]
        || frame[28..32] != vip.octets()
        || frame[38..42] != me.octets()
    {
        return None;
    }
    frame[22..28].try_into().ok()
}

fn arp_probe(
    stop: &AtomicBool,
    log: &Mutex<Log>,
    mac: [u8; 6],
    me: Ipv4Addr,
    vip: Ipv4Addr,
) -> Result<()> {
    let (socket, ifindex) = arp_socket()?;
    let request = arp_request(mac, me, vip);
    let to = link_address(ifindex, [0xff; 6]);
    let mut buf = [0u8; 1600];
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        // SAFETY: a valid frame and sockaddr_ll of the sizes given.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            bail!(
                "sending an ARP request: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut macs: Vec<[u8; 6]> = Vec::new();
        while sent.elapsed() < PERIOD {
            // SAFETY: a buffer of the size given.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            if let Some(from) = reply_from(&buf[..n as usize], me, vip)
                && !macs.contains(&from)
            {
                macs.push(from);
            }
        }
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .arp
            .push(ArpRound { sent, macs });
    }
    Ok(())
}

fn http_probe(stop: &AtomicBool, log: &Arc<Mutex<Log>>, to: SocketAddr) -> Result<()> {
    let mut next = Instant::now();
    let mut requests = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let log = Arc::clone(log);
        // A thread of its own: requests keep their cadence while one waits for a node that
        // no longer answers. It inherits this thread's namespace.
        requests.push(thread::spawn(move || {
            let started = Instant::now();
            let backend = get(to).ok();
            let request = Request {
                started,
                ended: Instant::now(),
                backend,
            };
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .requests
                .push(request);
        }));
        requests.retain(|r| !r.is_finished());
        next += PERIOD;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for request in requests {
        let _ = request.join();
    }
    Ok(())
}

/// One request on a new connection; the pod that answered.
fn get(to: SocketAddr) -> Result<String> {
    let mut conn = TcpStream::connect_timeout(&to, REQUEST_TIMEOUT)?;
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    write!(conn, "GET / HTTP/1.0\r\nHost: {}\r\n\r\n", to.ip())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(response.as_str(), |(_, body)| body);
    Ok(Answer::parse(body)?.backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replies_to_us_from_the_vip_count() {
        let me = Ipv4Addr::new(192, 168, 10, 10);
        let vip = Ipv4Addr::new(192, 168, 10, 49);
        let node = [2, 0, 0, 0, 0, 0x6f];
        let mut reply = arp_request(node, vip, me);
        reply[20..22].copy_from_slice(&[0, 2]);
        assert_eq!(reply_from(&reply, me, vip), Some(node));
        // Gratuitous: to the VIP itself.
        let mut gratuitous = reply;
        gratuitous[38..42].copy_from_slice(&vip.octets());
        assert_eq!(reply_from(&gratuitous, me, vip), None);
        // A request, not a reply.
        assert_eq!(reply_from(&arp_request(node, vip, me), me, vip), None);
        assert_eq!(parse_mac("02:00:00:00:00:6f").unwrap(), node);
    }

    #[test]
    fn the_log_tells_double_answers_and_when_service_came_back() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let log = Log {
            arp: vec![
                ArpRound {
                    sent: at(0),
                    macs: vec![[1; 6]],
                },
                ArpRound {
                    sent: at(50),
                    macs: vec![[1; 6], [2; 6]],
                },
            ],
            requests: vec![
                Request {
                    started: at(0),
                    ended: at(900),
                    backend: Some("envoy-w2a".into()),
                },
                Request {
                    started: at(100),
                    ended: at(700),
                    backend: Some("envoy-w3a".into()),
                },
                Request {
                    started: at(150),
                    ended: at(1150),
                    backend: None,
                },
            ],
        };
        assert_eq!(log.double_answers().len(), 1);
        assert_eq!(log.macs_after(at(10)), [[1; 6], [2; 6]]);
        let moved = log.served_after(at(50), |pod| pod != "envoy-w1a");
        assert_eq!(moved, Some(Duration::from_millis(650)));
        assert_eq!(log.served_after(at(50), |pod| pod == "envoy-w9a"), None);
        assert_eq!(log.backends_after(at(100)), ["envoy-w3a"]);
        assert_eq!(log.failed_after(at(100)), 1);
    }
}
