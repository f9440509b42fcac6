//! One frontend of the desired state as map keys and values, and the human names of map
//! entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::{Range, RangeInclusive};

use gateway_common::{
    BACKEND_F_ACTIVE, BACKEND_F_REMOTE, BACKEND_F_REPLY_CT, Backend, Frontend as RevNatFrontend,
    HairpinVip, Ipv4, L2Key, REVNAT_F_REPLY_CT, RevNat, RevNatKey, SERVICE_F_AFFINITY,
    SERVICE_F_SOURCE_RANGES, Service, ServiceKey, SlotKey, VipKey, capacity, proto, timeouts,
};

use super::{Interface, MapState, Membership, PlanError};
use crate::config::Ipv4Net;
use crate::model::{Announcement, BackendAddr, DesiredState, Frontend, Protocol};

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// A backend as the maps tell backends apart: one id, one `gw_backends` entry and one
/// reverse NAT entry for every frontend that lists the same address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct BackendKey {
    pub(super) addr: Ipv4,
    pub(super) port: u16,
    pub(super) proto: u8,
}

impl BackendKey {
    /// Backend `b` of frontend `f`, which gives it its protocol.
    pub(super) fn of(f: &Frontend, b: &BackendAddr) -> Self {
        Self {
            addr: b.addr.octets(),
            port: b.port,
            proto: proto_number(f.protocol),
        }
    }

    /// The backend a `gw_backends` entry holds.
    pub(super) fn of_entry(b: &Backend) -> Self {
        Self {
            addr: b.addr,
            port: b.port,
            proto: b.proto,
        }
    }

    /// The `gw_backends` value of the backend in use, on another node or not. Its
    /// [`BACKEND_F_REPLY_CT`] follows from its reverse NAT entry ([`with_revnat`]).
    pub(super) fn entry(self, remote: bool) -> Backend {
        Backend {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            flags: BACKEND_F_ACTIVE | if remote { BACKEND_F_REMOTE } else { 0 },
        }
    }

    /// The key of the backend's reverse NAT entry.
    pub(super) fn revnat_key(self) -> RevNatKey {
        RevNatKey {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            _pad: 0,
        }
    }
}

pub(super) fn service_key(f: &Frontend) -> ServiceKey {
    ServiceKey {
        vip: f.vip.octets(),
        port: f.port,
        proto: proto_number(f.protocol),
        _pad: 0,
    }
}

/// Backend `slot` (0-based) of a service; slot 0 of the map is the service's own.
fn slot_key(service_id: u32, slot: usize) -> SlotKey {
    SlotKey {
        service_id,
        slot: slot as u32 + 1,
    }
}

/// Every backend slot of service `service_id`.
pub(super) fn slots_of(service_id: u32) -> Range<SlotKey> {
    slot_key(service_id, 0)..slot_key(service_id + 1, 0)
}

pub(super) fn revnat_frontend(key: &ServiceKey) -> RevNatFrontend {
    RevNatFrontend {
        vip: key.vip,
        port: key.port,
        _pad: 0,
    }
}

fn service_entry(f: &Frontend, id: u32) -> Result<Service, PlanError> {
    let affinity = f.affinity_timeout_secs;
    Ok(Service {
        affinity_timeout_ns: affinity.map_or(0, |s| u64::from(s) * timeouts::NS_PER_SEC),
        id,
        backend_count: u16::try_from(f.backends.len()).map_err(|_| PlanError::Capacity {
            what: "backends in one service",
            needed: f.backends.len(),
            max: u16::MAX.into(),
        })?,
        flags: if affinity.is_some() {
            SERVICE_F_AFFINITY
        } else {
            0
        } | if f.source_ranges.is_some() {
            SERVICE_F_SOURCE_RANGES
        } else {
            0
        },
    })
}

/// Every source range entry of service `service_id`.
pub(super) fn source_ranges_of(service_id: u32) -> RangeInclusive<(u32, Ipv4Net)> {
    let least = Ipv4Net {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };
    let most = Ipv4Net {
        addr: Ipv4Addr::BROADCAST,
        len: u8::MAX,
    };
    (service_id, least)..=(service_id, most)
}

/// What `lb list` and the counters call the frontend: `namespace/name:port-name`.
fn service_name(f: &Frontend) -> String {
    if f.port_name.is_empty() {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port)
    } else {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port_name)
    }
}

/// Writes frontend `f`, under service id `id`, into `state`: its service entry, its name,
/// and one slot per backend pointing at the backend's id in `backend_ids`: first those that
/// take new flows, then the draining ones.
pub(super) fn put_frontend(
    state: &mut MapState,
    f: &Frontend,
    id: u32,
    backend_ids: &BTreeMap<BackendKey, u32>,
) -> Result<(), PlanError> {
    state.services.insert(service_key(f), service_entry(f, id)?);
    state.names.insert(id, service_name(f));
    for (slot, b) in f.listed().enumerate() {
        let backend = BackendKey::of(f, b);
        state
            .slots
            .insert(slot_key(id, slot), backend_ids[&backend]);
    }
    for net in f.source_ranges.iter().flatten() {
        state.source_ranges.insert((id, *net));
    }
    Ok(())
}

/// The frontends a reverse NAT entry lists.
pub(super) fn revnat_frontends(revnat: &RevNat) -> &[RevNatFrontend] {
    let count = (revnat.count as usize).min(revnat.frontends.len());
    &revnat.frontends[..count]
}

/// The reverse NAT entry of a backend serving `frontends`, which `held` (the entry the maps
/// hold, if any) becomes. The frontends it lists keep their places: their flows' replies
/// are found through them (flows made while the backend served no more frontends than fit
/// have no reply-side entry). Free places go to the others in order; a backend with more
/// frontends than places is marked [`REVNAT_F_REPLY_CT`]: its flows from then on get a
/// reply-side entry. There is no limit.
pub(super) fn revnat_entry(frontends: &BTreeSet<RevNatFrontend>, held: Option<&RevNat>) -> RevNat {
    let kept: Vec<&RevNatFrontend> = held
        .map(revnat_frontends)
        .unwrap_or_default()
        .iter()
        .filter(|f| frontends.contains(f))
        .collect();
    let others = frontends.iter().filter(|f| !kept.contains(f));
    let mut revnat = RevNat::default();
    for (slot, f) in revnat
        .frontends
        .iter_mut()
        .zip(kept.iter().copied().chain(others))
    {
        *slot = *f;
        revnat.count += 1;
    }
    if frontends.len() > capacity::REVNAT_FRONTENDS {
        revnat.flags |= REVNAT_F_REPLY_CT;
    }
    revnat
}

/// A backend's `gw_backends` value with the mark its reverse NAT entry asks for: each new
/// flow gets a reply-side entry while the backend serves more frontends than it lists.
pub(super) fn with_revnat(mut backend: Backend, revnat: &RevNat) -> Backend {
    backend.flags &= !BACKEND_F_REPLY_CT;
    if revnat.flags & REVNAT_F_REPLY_CT != 0 {
        backend.flags |= BACKEND_F_REPLY_CT;
    }
    backend
}

/// The announcements on the interfaces this node has.
pub(super) fn announced(
    desired: &DesiredState,
    interfaces: &[Interface],
) -> BTreeMap<L2Key, [u8; 6]> {
    l2_entries(&desired.announcements, interfaces)
}

/// `gw_l2`'s entries for `announcements`, on the interfaces this node has: what the cluster
/// wiring writes when the VIPs this node answers change between reloads.
pub fn l2_entries<'a>(
    announcements: impl IntoIterator<Item = &'a Announcement>,
    interfaces: &[Interface],
) -> BTreeMap<L2Key, [u8; 6]> {
    let by_name: BTreeMap<&str, &Interface> =
        interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
    announcements
        .into_iter()
        .filter_map(|a| {
            let iface = by_name.get(a.interface.as_str())?;
            let key = L2Key {
                ifindex: iface.index,
                vip: a.vip.octets(),
            };
            Some((key, iface.mac))
        })
        .collect()
}

/// `gw_hairpin`'s entries: every VIP this node answers ARP for (`l2`, as `gw_l2` holds it),
/// with the address of the lowest-numbered interface announcing it (`addresses`, by
/// ifindex) as the client address of this node's own connections, 0.0.0.0 when that
/// interface has none.
pub fn hairpin_entries<V>(
    l2: &BTreeMap<L2Key, V>,
    addresses: &BTreeMap<u32, Ipv4Addr>,
) -> BTreeMap<VipKey, HairpinVip> {
    let mut entries = BTreeMap::new();
    // `L2Key` sorts by ifindex first: the first interface seen for a VIP is its lowest.
    for key in l2.keys() {
        entries
            .entry(VipKey { addr: key.vip })
            .or_insert(HairpinVip {
                client_addr: addresses.get(&key.ifindex).map_or([0; 4], |a| a.octets()),
            });
    }
    entries
}

/// Human name of a frontend key, e.g. `192.168.10.49:443/TCP`.
pub fn frontend_label(key: &ServiceKey) -> String {
    format!(
        "{}:{}/{}",
        Ipv4Addr::from(key.vip),
        key.port,
        gateway_common::proto_name(key.proto)
    )
}

/// Human name of a backend, e.g. `10.244.1.10:8443`.
pub fn backend_label(b: &Backend) -> String {
    format!("{}:{}", Ipv4Addr::from(b.addr), b.port)
}

/// Memberships named in a log line; more are counted.
const NAMED_MEMBERSHIPS: usize = 8;

/// What the agent logs when memberships end (their flows are cut), naming each service and
/// backend as `state` (the maps before the change) holds them, e.g. `ended 1 membership
/// (its flows are dropped): gateway/gw:http (service 3) <- 10.244.1.10:8080 (backend 1)`.
pub fn ended_label(state: &MapState, ended: &BTreeSet<Membership>) -> String {
    let mut named: Vec<String> = ended
        .iter()
        .take(NAMED_MEMBERSHIPS)
        .map(|m| {
            let service = state.names.get(&m.service_id).map_or("?", String::as_str);
            let backend = state
                .backends
                .get(&m.backend_id)
                .map_or("?".into(), backend_label);
            format!(
                "{service} (service {}) <- {backend} (backend {})",
                m.service_id, m.backend_id
            )
        })
        .collect();
    if ended.len() > NAMED_MEMBERSHIPS {
        named.push(format!("and {} more", ended.len() - NAMED_MEMBERSHIPS));
    }
    let (count, whose) = match ended.len() {
        1 => ("1 membership".to_owned(), "its"),
        n => (format!("{n} memberships"), "their"),
    };
    format!(
        "ended {count} ({whose} flows are dropped): {}",
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_memberships_are_named_by_service_and_backend_and_many_are_counted() {
        let mut state = MapState::default();
        state.names.insert(3, "gateway/gw:http".into());
        state.backends.insert(
            1,
            BackendKey::of_entry(&Backend {
                addr: [10, 244, 1, 10],
                port: 8080,
                proto: 6,
                flags: 0,
            })
            .entry(false),
        );
        let one = BTreeSet::from([Membership {
            service_id: 3,
            backend_id: 1,
        }]);
        assert_eq!(
            ended_label(&state, &one),
            "ended 1 membership (its flows are dropped): gateway/gw:http (service 3) <- \
             10.244.1.10:8080 (backend 1)"
        );
        let many: BTreeSet<Membership> = (1..=10)
            .map(|backend_id| Membership {
                service_id: 3,
                backend_id,
            })
            .collect();
        let line = ended_label(&state, &many);
        assert!(
            line.starts_with("ended 10 memberships (their flows are dropped): "),
            "{line}"
        );
        assert!(line.ends_with("(backend 8), and 2 more"), "{line}");
    }

    #[test]
    fn hairpin_takes_every_announced_vip_once_with_its_lowest_interfaces_address() {
        let key = |ifindex, last| L2Key {
            ifindex,
            vip: [192, 168, 10, last],
        };
        // .49 on two interfaces, .50 on one without an address, .51 nowhere.
        let l2: BTreeMap<L2Key, [u8; 6]> = [
            (key(7, 49), [7; 6]),
            (key(3, 49), [3; 6]),
            (key(9, 50), [9; 6]),
        ]
        .into_iter()
        .collect();
        let addresses: BTreeMap<u32, Ipv4Addr> = [
            (3, Ipv4Addr::new(192, 168, 10, 111)),
            (7, Ipv4Addr::new(10, 0, 0, 1)),
        ]
        .into_iter()
        .collect();
        let entries = hairpin_entries(&l2, &addresses);
        let vip = |last| VipKey {
            addr: [192, 168, 10, last],
        };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[&vip(49)].client_addr, [192, 168, 10, 111]);
        assert_eq!(entries[&vip(50)].client_addr, [0; 4]);
        assert!(!entries.contains_key(&vip(51)));
        assert!(hairpin_entries(&BTreeMap::<L2Key, ()>::new(), &addresses).is_empty());
    }
}
