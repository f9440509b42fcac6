//! One frontend of the desired state as map keys and values, and the human names of map
//! entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::ops::Range;

use gateway_common::{
    BACKEND_F_ACTIVE, Backend, Frontend as RevNatFrontend, Ipv4, L2Key, RevNat, RevNatKey,
    SERVICE_F_AFFINITY, Service, ServiceKey, SlotKey, capacity, proto, timeouts,
};

use super::{Interface, MapState, PlanError};
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

    /// The `gw_backends` value of the backend in use.
    pub(super) fn entry(self) -> Backend {
        Backend {
            addr: self.addr,
            port: self.port,
            proto: self.proto,
            flags: BACKEND_F_ACTIVE,
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
        },
    })
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
/// and one slot per backend pointing at the backend's id in `backend_ids`.
pub(super) fn put_frontend(
    state: &mut MapState,
    f: &Frontend,
    id: u32,
    backend_ids: &BTreeMap<BackendKey, u32>,
) -> Result<(), PlanError> {
    state.services.insert(service_key(f), service_entry(f, id)?);
    state.names.insert(id, service_name(f));
    for (slot, b) in f.backends.iter().enumerate() {
        let backend = BackendKey::of(f, b);
        state
            .slots
            .insert(slot_key(id, slot), backend_ids[&backend]);
    }
    Ok(())
}

/// The frontends a reverse NAT entry holds.
pub(super) fn revnat_frontends(revnat: &RevNat) -> &[RevNatFrontend] {
    let count = (revnat.count as usize).min(revnat.frontends.len());
    &revnat.frontends[..count]
}

/// The frontends one backend serves, as reverse NAT holds them.
pub(super) fn revnat_entry(
    backend: BackendKey,
    frontends: &BTreeSet<RevNatFrontend>,
) -> Result<RevNat, PlanError> {
    if frontends.len() > capacity::REVNAT_FRONTENDS {
        return Err(PlanError::TooManyFrontends {
            backend: format!("{}:{}", Ipv4Addr::from(backend.addr), backend.port),
            frontends: frontends
                .iter()
                .map(|f| format!("{}:{}", Ipv4Addr::from(f.vip), f.port))
                .collect(),
        });
    }
    let mut revnat = RevNat {
        count: frontends.len() as u32,
        ..Default::default()
    };
    for (slot, f) in revnat.frontends.iter_mut().zip(frontends) {
        *slot = *f;
    }
    Ok(revnat)
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
