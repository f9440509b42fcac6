//! The cluster's UDP socket: what [`ClusterNode`] sends goes out through it, what arrives
//! goes into it, and its clock is the one the node, the leases and the gate are measured on.
//! The run loop (`agent`) selects on [`receive`] from [`Transport::socket`] and on a sleep
//! until [`Transport::instant`] of [`ClusterNode::next_wake`].

use std::io;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use log::debug;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::node::ClusterNode;
use super::timing::MAX_DATAGRAM;

pub struct Transport {
    socket: Arc<UdpSocket>,
    origin: Instant,
    /// Datagrams the kernel would not take (a full socket buffer, an unreachable peer).
    pub send_errors: u64,
}

impl Transport {
    /// Listens on `addr` (the node's InternalIP and `--cluster-port`). Within a tokio
    /// runtime.
    pub fn bind(addr: SocketAddrV4) -> Result<Self> {
        let bound = || -> io::Result<UdpSocket> {
            let socket = std::net::UdpSocket::bind(addr)?;
            socket.set_nonblocking(true)?;
            UdpSocket::from_std(socket)
        };
        let socket = bound().with_context(|| {
            format!(
                "binding the cluster port {addr} (UDP; under the systemd unit a drop-in must \
                 allow AF_INET and the nodes' addresses, see README.md, \"With systemd\")"
            )
        })?;
        Ok(Transport {
            socket: Arc::new(socket),
            origin: Instant::now(),
            send_errors: 0,
        })
    }

    /// Now, on the node's clock.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The tokio instant of a time on the node's clock.
    pub fn instant(&self, at: Duration) -> Instant {
        self.origin + at
    }

    /// The socket, for a receive that borrows nothing else (a `select!` arm).
    pub fn socket(&self) -> Arc<UdpSocket> {
        Arc::clone(&self.socket)
    }

    /// Waits for one datagram and hands it to `node`.
    pub async fn receive(&self, node: &mut ClusterNode) -> io::Result<()> {
        let mut buf = Datagram::new();
        if let Some(datagram) = receive(&self.socket, &mut buf).await? {
            node.receive(self.now(), datagram);
        }
        Ok(())
    }

    /// Sends what `node` has queued. Call it only after applying [`ClusterNode::announce`].
    pub fn flush(&mut self, node: &mut ClusterNode) {
        for (to, datagram) in node.take_outbox() {
            if let Err(e) = self.socket.try_send_to(&datagram, to.into()) {
                self.send_errors += 1;
                debug!("cluster: sending to {to}: {e}");
            }
        }
    }
}

/// Room for the largest datagram and one byte more, to tell an oversized one.
pub struct Datagram(Box<[u8; MAX_DATAGRAM + 1]>);

impl Datagram {
    pub fn new() -> Self {
        Datagram(Box::new([0; MAX_DATAGRAM + 1]))
    }
}

impl Default for Datagram {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits for one datagram; `None` for one larger than any we send (dropped).
pub async fn receive<'b>(
    socket: &UdpSocket,
    buf: &'b mut Datagram,
) -> io::Result<Option<&'b [u8]>> {
    let (len, from) = socket.recv_from(&mut buf.0[..]).await?;
    if len > MAX_DATAGRAM {
        debug!("cluster: oversized datagram from {from} dropped");
        return Ok(None);
    }
    Ok(Some(&buf.0[..len]))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    use super::*;
    use crate::cluster::auth::Key;
    use crate::cluster::identity::Peer;
    use crate::cluster::membership::Liveness;
    use crate::cluster::node::{Pinned, Settings};

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 49);

    /// Two agents on loopback addresses with one port between them, over real UDP: they
    /// find each other and one of them, not both, answers for the VIP; a third party
    /// without the key is refused and counted.
    #[tokio::test]
    async fn two_agents_agree_over_real_udp() {
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let addrs = [
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 21), port),
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 22), port),
        ];
        let names = ["a", "b"];
        let key = || Some(Key::new(b"loopback test key, 32 bytes long").expect("key"));
        let eligible = BTreeMap::from([(VIP, names.iter().map(|n| n.to_string()).collect())]);
        let mut transports = Vec::new();
        let mut nodes = Vec::new();
        for (i, (name, addr)) in names.iter().zip(addrs).enumerate() {
            let transport = Transport::bind(addr).expect("bind");
            let other = 1 - i;
            let peers = vec![Peer {
                name: names[other].to_string(),
                addr: addrs[other],
            }];
            let mut node = ClusterNode::new(
                name,
                addr,
                1 + i as u64,
                peers,
                key(),
                Settings {
                    two_node_takeover: true,
                    ..Settings::default()
                },
                &Pinned::default(),
                transport.now(),
            );
            node.set_eligible(transport.now(), eligible.clone(), BTreeSet::new());
            transports.push(transport);
            nodes.push(node);
        }
        let mut intruder =
            Transport::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 23), port)).expect("bind");
        let mut stranger = ClusterNode::new(
            "a",
            SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 23), port),
            99,
            vec![Peer {
                name: "b".into(),
                addr: addrs[1],
            }],
            None,
            Settings::default(),
            &Pinned::default(),
            intruder.now(),
        );
        // Bounded: the test fails rather than hangs if they never agree.
        let deadline = Instant::now() + Duration::from_secs(20);
        let agreed = loop {
            assert!(Instant::now() < deadline, "no agreement within 20 s");
            let (a, b) = nodes.split_at_mut(1);
            let (ta, tb) = transports.split_at_mut(1);
            let wake = ta[0]
                .instant(a[0].next_wake())
                .min(tb[0].instant(b[0].next_wake()));
            tokio::select! {
                r = ta[0].receive(&mut a[0]) => r.expect("receive"),
                r = tb[0].receive(&mut b[0]) => r.expect("receive"),
                _ = tokio::time::sleep_until(wake) => {
                    a[0].poll(ta[0].now());
                    b[0].poll(tb[0].now());
                    stranger.poll(intruder.now());
                }
            }
            intruder.flush(&mut stranger);
            ta[0].flush(&mut a[0]);
            tb[0].flush(&mut b[0]);
            let answering: Vec<bool> = nodes
                .iter()
                .map(|n| n.announce().vips.contains(&VIP))
                .collect();
            assert!(!(answering[0] && answering[1]), "both answer");
            let both_alive = nodes.iter().all(|n| {
                n.members(Duration::ZERO)
                    .iter()
                    .all(|m| m.liveness == Some(Liveness::Alive))
            });
            if both_alive && answering.iter().any(|a| *a) && nodes[1].refusals().untagged > 0 {
                break answering;
            }
        };
        assert_eq!(agreed.iter().filter(|a| **a).count(), 1);
    }
}
