//! One frontend of the desired state as map keys and values, and the human names of map
//! entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use gateway_common::{
    BACKEND_F_ACTIVE, Backend, Frontend as RevNatFrontend, Ipv4, L2Key, RevNat, RevNatKey,
    SERVICE_F_AFFINITY, Service, ServiceKey, SlotKey, capacity, proto, timeouts,
};

use super::{Interface, PlanError};
use crate::model::{DesiredState, Protocol};

pub(super) fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// A backend as the maps key it: (address, port, protocol).
pub(super) type BackendKey = (Ipv4, u16, u8);

pub(super) fn backend_key(f: &crate::model::Frontend, b: &crate::model::BackendAddr) -> BackendKey {
    (b.addr.octets(), b.port, proto_number(f.protocol))
}

pub(super) fn service_key(f: &crate::model::Frontend) -> ServiceKey {
    ServiceKey {
        vip: f.vip.octets(),
        port: f.port,
        proto: proto_number(f.protocol),
        _pad: 0,
    }
}

/// Backend `slot` (0-based) of a service; slot 0 of the map is the service's own.
pub(super) fn slot_key(service_id: u32, slot: usize) -> SlotKey {
    SlotKey {
        service_id,
        slot: slot as u32 + 1,
    }
}

pub(super) fn revnat_key((addr, port, proto): BackendKey) -> RevNatKey {
    RevNatKey {
        addr,
        port,
        proto,
        _pad: 0,
    }
}

pub(super) fn revnat_frontend(key: &ServiceKey) -> RevNatFrontend {
    RevNatFrontend {
        vip: key.vip,
        port: key.port,
        _pad: 0,
    }
}

/// The `gw_backends` value of a backend in use.
pub(super) fn backend_entry((addr, port, proto): BackendKey) -> Backend {
    Backend {
        addr,
        port,
        proto,
        flags: BACKEND_F_ACTIVE,
    }
}

pub(super) fn service_entry(f: &crate::model::Frontend, id: u32) -> Result<Service, PlanError> {
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
pub(super) fn service_name(f: &crate::model::Frontend) -> String {
    if f.port_name.is_empty() {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port)
    } else {
        format!("{}/{}:{}", f.service.namespace, f.service.name, f.port_name)
    }
}

/// The frontends one backend serves, as reverse NAT holds them.
pub(super) fn revnat_entry(
    key: &RevNatKey,
    frontends: &BTreeSet<RevNatFrontend>,
) -> Result<RevNat, PlanError> {
    if frontends.len() > capacity::REVNAT_FRONTENDS {
        return Err(PlanError::TooManyFrontends {
            backend: format!("{}:{}", Ipv4Addr::from(key.addr), key.port),
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
    let by_name: BTreeMap<&str, &Interface> =
        interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
    desired
        .announcements
        .iter()
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
