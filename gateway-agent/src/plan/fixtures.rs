//! Desired states and a map state the plan tests share.

use std::net::Ipv4Addr;

use super::{Interface, MapState, Op, diff, target};
use crate::capacity::Capacity;
use crate::config::ObjectRef;
use crate::model::{Announcement, BackendAddr, DesiredState, Frontend, Protocol};

pub(super) fn svc(name: &str) -> ObjectRef {
    ObjectRef {
        kind: "Service".into(),
        namespace: "gateway".into(),
        name: name.into(),
    }
}

pub(super) fn frontend(
    name: &str,
    vip: [u8; 4],
    port: u16,
    backends: &[([u8; 4], u16)],
) -> Frontend {
    Frontend {
        service: svc(name),
        port_name: "http".into(),
        vip: Ipv4Addr::from(vip),
        port,
        protocol: Protocol::Tcp,
        affinity_timeout_secs: Some(10800),
        backends: backends
            .iter()
            .map(|&(a, p)| BackendAddr {
                addr: Ipv4Addr::from(a),
                port: p,
                remote: false,
            })
            .collect(),
        draining: Vec::new(),
        source_ranges: None,
    }
}

pub(super) fn ens18() -> Vec<Interface> {
    vec![Interface {
        name: "ens18".into(),
        index: 2,
        mac: [2, 0, 0, 0, 0, 0x11],
        addr: Some(Ipv4Addr::new(192, 168, 10, 111)),
    }]
}

pub(super) fn desired(frontends: Vec<Frontend>) -> DesiredState {
    let announcements = frontends
        .iter()
        .map(|f| Announcement {
            interface: "ens18".into(),
            vip: f.vip,
            service: f.service.clone(),
            policy: "l2-policy".into(),
        })
        .collect();
    DesiredState {
        frontends,
        announcements,
        ..Default::default()
    }
}

pub(super) const POD_A: ([u8; 4], u16) = ([10, 244, 1, 10], 8080);
pub(super) const POD_B: ([u8; 4], u16) = ([10, 244, 1, 11], 8080);
pub(super) const POD_C: ([u8; 4], u16) = ([10, 244, 1, 12], 8080);

/// Applies a desired state on top of `current` and returns the ops and the new state.
pub(super) fn step(current: &MapState, d: &DesiredState) -> (Vec<Op>, MapState) {
    let t = target(d, &ens18(), current, &Capacity::default()).unwrap();
    let ops = diff(current, &t);
    let mut s = current.clone();
    apply(&mut s, &ops);
    assert_eq!(s, t, "applying the diff reaches the target");
    (ops, t)
}

/// Applies `ops` to an in-memory state, as the maps would see them: the tests check that a
/// diff's writes reach its target.
#[cfg(test)]
pub(super) fn apply(state: &mut MapState, ops: &[Op]) {
    for op in ops {
        match op {
            Op::PutBackend(id, b) => {
                state.backends.insert(*id, *b);
            }
            Op::PutSlot(k, v) => {
                state.slots.insert(*k, *v);
            }
            Op::PutService(k, v) => {
                state.services.insert(*k, *v);
            }
            Op::PutName(k, v) => {
                state.names.insert(*k, v.clone());
            }
            Op::PutRevNat(k, v) => {
                state.revnat.insert(*k, *v);
            }
            Op::PutVip(k, v) => {
                state.vips.insert(*k, *v);
            }
            Op::PutVipFilter(word, bits) | Op::ShrinkVipFilter(word, bits) => {
                if *bits == 0 {
                    state.vip_filter.remove(word);
                } else {
                    state.vip_filter.insert(*word, *bits);
                }
            }
            Op::PutL2(k, v) => {
                state.l2.insert(*k, *v);
            }
            Op::PutRemoteFilter(word, bits) | Op::ShrinkRemoteFilter(word, bits) => {
                if *bits == 0 {
                    state.remote_filter.remove(word);
                } else {
                    state.remote_filter.insert(*word, *bits);
                }
            }
            Op::PutIface(k, v) => {
                state.ifaces.insert(*k, *v);
            }
            Op::PutSourceRange(id, net) => {
                state.source_ranges.insert((*id, *net));
            }
            Op::DeleteSourceRange(id, net) => {
                state.source_ranges.remove(&(*id, *net));
            }
            Op::DeleteIface(k) => {
                state.ifaces.remove(k);
            }
            Op::DeleteL2(k) => {
                state.l2.remove(k);
            }
            Op::DeleteVip(k) => {
                state.vips.remove(k);
            }
            Op::DeleteService(k) => {
                state.services.remove(k);
            }
            Op::DeleteName(k) => {
                state.names.remove(k);
            }
            Op::DeleteSlot(k) => {
                state.slots.remove(k);
            }
            Op::DeleteRevNat(k) => {
                state.revnat.remove(k);
            }
            Op::DeactivateBackend(k) => {
                state.backends.remove(k);
            }
            Op::ResetBackendStats(_)
            | Op::ResetServiceStats(_)
            | Op::EndMemberships(_)
            | Op::EndAffinity(_)
            | Op::DenyOutside(_) => {}
        }
    }
}
