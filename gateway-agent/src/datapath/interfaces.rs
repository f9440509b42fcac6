//! The node's network interfaces, from netlink (glibc's getifaddrs asks the kernel over
//! netlink), never from /sys: under `nsenter --net` /sys still shows another namespace.

use anyhow::{Context, Result};
use nix::ifaddrs::getifaddrs;
use regex::Regex;

use crate::plan::Interface;

/// Every interface with a link-layer (MAC) address, sorted by name.
pub fn all() -> Result<Vec<Interface>> {
    let mut interfaces: Vec<Interface> = getifaddrs()
        .context("listing network interfaces")?
        .filter_map(|ifa| {
            let link = ifa.address.as_ref()?.as_link_addr()?;
            Some(Interface {
                name: ifa.interface_name.clone(),
                index: u32::try_from(link.ifindex()).ok()?,
                mac: link.addr()?,
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    interfaces.dedup_by(|a, b| a.name == b.name);
    Ok(interfaces)
}

/// The interfaces whose name matches `devices` (loopback never does: it has no uplink role).
pub fn matching(devices: &Regex) -> Result<Vec<Interface>> {
    Ok(all()?
        .into_iter()
        .filter(|i| i.name != "lo" && devices.is_match(&i.name))
        .collect())
}
