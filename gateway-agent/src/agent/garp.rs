//! Gratuitous ARP for the announcements that started: the schedule says which are due,
//! a slice at a time, and each send is counted on its announcement.

use std::time::Instant;

use gateway_common::L2Key;
use log::warn;

use super::Agent;
use crate::datapath::garp;

impl Agent {
    /// When the next gratuitous ARP is due, if any is.
    pub(super) fn garp_due(&self) -> Option<tokio::time::Instant> {
        self.garp.next_due().map(tokio::time::Instant::from_std)
    }

    /// Sends the gratuitous ARP that is due now (one slice of it).
    pub(super) fn send_garp(&mut self) {
        for (key, mac) in self.garp.due(Instant::now(), garp::BATCH) {
            let L2Key { ifindex, vip } = key;
            let mut sent = 0;
            for frame in garp::frames(mac, vip) {
                match self.garp_sender.send(ifindex, &frame) {
                    Ok(()) => sent += 1,
                    Err(e) => warn!("{e:#}"),
                }
            }
            if let Err(e) = self.datapath.maps.count_garp(&key, sent) {
                warn!("counting gratuitous ARP: {e:#}");
            }
        }
    }
}
