//! The node's network interfaces, from netlink (glibc's getifaddrs asks the kernel over
//! netlink), never from /sys: under `nsenter --net` /sys still shows another namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use nix::ifaddrs::getifaddrs;
use regex::Regex;

use crate::plan::Interface;

/// Every interface with a link-layer (MAC) address, with its first IPv4 address (the
/// primary: the kernel lists an interface's addresses in the order they were added, and
/// secondaries after primaries), sorted by name.
pub fn all() -> Result<Vec<Interface>> {
    let addresses: Vec<_> = getifaddrs()
        .context("listing network interfaces")?
        .collect();
    let mut interfaces: Vec<Interface> = addresses
        .iter()
        .filter_map(|ifa| {
            let link = ifa.address.as_ref()?.as_link_addr()?;
            Some(Interface {
                name: ifa.interface_name.clone(),
                index: u32::try_from(link.ifindex()).ok()?,
                mac: link.addr()?,
                addr: None,
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    interfaces.dedup_by(|a, b| a.name == b.name);
    for interface in &mut interfaces {
        interface.addr = addresses.iter().find_map(|ifa| {
            let inet = ifa.address.as_ref()?.as_sockaddr_in()?;
            (ifa.interface_name == interface.name).then(|| inet.ip())
        });
    }
    Ok(interfaces)
}

/// The interfaces whose name matches `devices` (loopback never does: it has no uplink role).
pub fn matching(devices: &Regex) -> Result<Vec<Interface>> {
    Ok(all()?
        .into_iter()
        .filter(|i| i.name != "lo" && devices.is_match(&i.name))
        .collect())
}

/// The first IPv4 address of every interface that has one, by ifindex: the address a
/// hairpin connection counts as (see `plan::hairpin_entries`).
pub fn ipv4_by_index() -> Result<BTreeMap<u32, Ipv4Addr>> {
    let index: BTreeMap<String, u32> = all()?.into_iter().map(|i| (i.name, i.index)).collect();
    let mut addresses = BTreeMap::new();
    for ifa in getifaddrs().context("listing interface addresses")? {
        let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        if let Some(&ifindex) = index.get(&ifa.interface_name) {
            addresses.entry(ifindex).or_insert(addr.ip());
        }
    }
    Ok(addresses)
}
