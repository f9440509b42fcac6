//! The node's network interfaces, from netlink (glibc's getifaddrs asks the kernel over
//! netlink), never from /sys: under `nsenter --net` /sys still shows another namespace.

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
