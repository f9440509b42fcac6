//! What flows SNATed to backends on other nodes need besides the backends themselves: the
//! address of every interface the programs run on (the source such a flow leaves from),
//! and `gw_remote_filter`, the bitmap of those backends' addresses (only packets from them
//! may be replies to SNAT, which spares the node's own traffic a lookup).

use std::collections::{BTreeMap, BTreeSet};

use gateway_common::{
    BACKEND_F_REMOTE, Backend, IfaceInfo, Ipv4, maps::IFACES_MAX, vip_filter_bit,
};

use super::diff::merge;
use super::{Change, Interface, MapState};

/// `gw_ifaces`: every interface with an address, by ifindex (without one, or with an
/// ifindex past the array, flows arriving there cannot be SNATed: `drop_no_snat_addr`).
pub(super) fn ifaces(interfaces: &[Interface]) -> BTreeMap<u32, IfaceInfo> {
    interfaces
        .iter()
        .filter(|i| i.addr.is_some() && i.index < IFACES_MAX)
        .map(|i| {
            let addr = i.addr.map_or([0; 4], |a| a.octets());
            (i.index, IfaceInfo { addr })
        })
        .collect()
}

/// The filter word and bit of a backend address.
fn bit(addr: Ipv4) -> (u32, u64) {
    let bit = vip_filter_bit(addr);
    (bit / 64, 1 << (bit % 64))
}

fn is_remote(b: &Backend) -> bool {
    b.flags & BACKEND_F_REMOTE != 0
}

/// The filter words of every backend on another node among `backends`.
pub(super) fn filter<'b>(backends: impl Iterator<Item = &'b Backend>) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for b in backends.filter(|b| is_remote(b)) {
        let (word, bit) = bit(b.addr);
        *words.entry(word).or_default() |= bit;
    }
    words
}

/// The interfaces (compared in full: they are few) and the filter words a change of
/// backends touches: the words of remote backends that come or go, rebuilt from every
/// remote backend the change leaves (a walk over all backends, only when remote ones come
/// or go).
pub(super) fn plan(current: &MapState, interfaces: &[Interface], change: &mut Change) {
    let wanted = ifaces(interfaces);
    let _ = merge(&current.ifaces, &wanted, |index, new, old| {
        if let Some(old) = old {
            change.before.ifaces.insert(*index, *old);
        }
        if let Some(new) = new {
            change.after.ifaces.insert(*index, *new);
        }
        Ok::<(), std::convert::Infallible>(())
    });

    let touched: BTreeSet<Ipv4> = change
        .before
        .backends
        .values()
        .chain(change.after.backends.values())
        .filter(|b| is_remote(b))
        .map(|b| b.addr)
        .collect();
    if touched.is_empty() {
        return;
    }
    let words: BTreeSet<u32> = touched.iter().map(|&addr| bit(addr).0).collect();
    let (before, after) = (&mut change.before, &mut change.after);
    let left = current
        .backends
        .iter()
        .filter(|(id, _)| !before.backends.contains_key(id))
        .map(|(_, b)| b)
        .chain(after.backends.values());
    let rebuilt = filter(left.filter(|b| words.contains(&bit(b.addr).0)));
    for word in words {
        if let Some(&bits) = current.remote_filter.get(&word) {
            before.remote_filter.insert(word, bits);
        }
        if let Some(&bits) = rebuilt.get(&word) {
            after.remote_filter.insert(word, bits);
        }
    }
}
