//! The client on the segment and what tests do from it: ARP, HTTP, ping.

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use super::wiring::CLIENT_IFACE;
use crate::netns::Netns;

/// Seconds curl may take to connect, and for the whole request: a VIP nobody serves must
/// fail the test quickly rather than after TCP's minutes of retries.
const CURL_CONNECT_TIMEOUT: &str = "2";
const CURL_MAX_TIME: &str = "5";

#[derive(Debug)]
pub struct Client {
    ns: Netns,
    addrs: Vec<Ipv4Addr>,
    mac: String,
}

impl Client {
    pub(crate) fn new(ns: Netns, addrs: Vec<Ipv4Addr>, mac: String) -> Self {
        Self { ns, addrs, mac }
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The primary address, the source of connections that do not choose one.
    pub fn addr(&self) -> Ipv4Addr {
        self.addrs[0]
    }

    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.addrs
    }

    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// Sends one ARP request for `target` and returns the distinct MACs that replied, in
    /// order: empty when nobody answered, more than one when several nodes claim the address.
    pub fn arping(&self, target: Ipv4Addr) -> Result<Vec<String>> {
        let target = target.to_string();
        let out = self
            .ns
            .exec(["arping", "-c", "1", "-w", "2", "-I", CLIENT_IFACE, &target])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Thomas Habets' arping prints "42 bytes from 02:00:00:00:00:70 (192.168.10.50): ...".
        // arping also sees the replies to the kernel's own requests for the address (the
        // client may be resolving it at the same moment), so one node can show up twice:
        // only distinct MACs tell of a conflict.
        let mut macs: Vec<String> = Vec::new();
        for mac in stdout
            .lines()
            .filter_map(|line| line.split_once(" bytes from "))
            .filter_map(|(_, rest)| rest.split_whitespace().next())
        {
            if !macs.iter().any(|m| m == mac) {
                macs.push(mac.to_owned());
            }
        }
        // Exit status 1 means "no reply"; anything else without replies is a real failure.
        if macs.is_empty() && out.status.code() != Some(1) {
            bail!(
                "arping {target} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(macs)
    }

    /// GETs `url` (from `source`, one of the client's addresses, when given) and returns
    /// the body; connection failures and HTTP errors are errors.
    pub fn curl(&self, url: &str, source: Option<Ipv4Addr>) -> Result<String> {
        let mut args = vec![
            "curl".to_owned(),
            "-sS".into(),
            "--fail".into(),
            "--connect-timeout".into(),
            CURL_CONNECT_TIMEOUT.into(),
            "--max-time".into(),
            CURL_MAX_TIME.into(),
        ];
        if let Some(source) = source {
            args.extend(["--interface".into(), source.to_string()]);
        }
        args.push(url.to_owned());
        self.ns.run(args)
    }

    /// One ICMP echo to `addr`; the error says why there was no reply (e.g. "Network is
    /// unreachable" when the client has no route).
    pub fn ping(&self, addr: Ipv4Addr) -> Result<()> {
        self.ns
            .run(["ping", "-n", "-c", "1", "-W", "2", &addr.to_string()])?;
        Ok(())
    }

    /// Forgets every neighbour (ARP) entry, so the next packet to a VIP asks again who has it.
    pub fn flush_neigh(&self) -> Result<()> {
        self.ns.ip(&["neigh", "flush", "dev", CLIENT_IFACE])?;
        Ok(())
    }
}
