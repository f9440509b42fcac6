//! Service lookup, `loadBalancerSourceRanges`, and backend selection with ClientIP affinity.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    btf_maps::lpm_trie::Key,
    helpers::bpf_get_prandom_u32,
};
use gateway_common::{
    Affinity, AffinityKey, BACKEND_F_ACTIVE, Backend, Counter, Ipv4, SERVICE_F_AFFINITY,
    SERVICE_F_SOURCE_RANGES, ServiceKey, SlotKey, SourceRange,
};

use crate::{
    maps::{AFFINITY, BACKENDS, SERVICES, SLOTS, SOURCE_RANGES},
    packet::Flow,
    stats::{count, deny},
};

/// The backend chosen for a new flow.
pub struct Selection {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: Backend,
}

/// The backend with this id, if it has not been removed.
#[inline(always)]
pub fn active_backend(id: u32) -> Option<Backend> {
    let backend = BACKENDS.get(id)?;
    (backend.flags & BACKEND_F_ACTIVE != 0).then_some(*backend)
}

/// Chooses a backend for a new flow to a VIP, or the reason to drop it.
#[inline(always)]
pub fn select(flow: &Flow, now: u64) -> Result<Selection, Counter> {
    let key = ServiceKey {
        vip: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    let service = SERVICES.get_ptr(key).ok_or(Counter::DropUnknownPort)?;
    // SAFETY: a value found in a hash map stays valid until the program returns (the kernel
    // frees replaced and deleted elements after an RCU grace period); the agent replaces a
    // service whole, never field by field.
    let service = unsafe { *service };
    if service.flags & SERVICE_F_SOURCE_RANGES != 0 && !admitted(service.id, flow.saddr) {
        deny(service.id);
        return Err(Counter::DropSourceRange);
    }
    if service.backend_count == 0 {
        return Err(Counter::DropNoBackend);
    }
    if service.flags & SERVICE_F_AFFINITY == 0 {
        return pick(service.id, service.backend_count);
    }
    let affinity_key = AffinityKey {
        client_addr: flow.saddr,
        service_id: service.id,
    };
    let existing = AFFINITY.get_ptr_mut(affinity_key);
    if let Some(entry) = existing {
        // SAFETY: as for `service` above.
        let affinity = unsafe { &mut *entry };
        // An entry pointing at a removed backend is ignored and replaced below.
        if now.saturating_sub(affinity.last_used_ns) <= service.affinity_timeout_ns
            && let Some(backend) = active_backend(affinity.backend_id)
        {
            count(Counter::AffinityHit);
            // Refreshed in place: no map update (and no LRU list work) on a hit.
            affinity.last_used_ns = now;
            return Ok(Selection {
                service_id: service.id,
                backend_id: affinity.backend_id,
                backend,
            });
        }
    }
    let selection = pick(service.id, service.backend_count)?;
    remember(&affinity_key, selection.backend_id, now, existing.is_some());
    Ok(selection)
}

/// Whether the client's address lies in one of the service's source ranges.
#[inline(always)]
pub fn admitted(service_id: u32, client: Ipv4) -> bool {
    let key = Key::new(
        SourceRange::trie_prefix_len(32),
        SourceRange {
            service_id: service_id.to_be_bytes(),
            addr: client,
        },
    );
    SOURCE_RANGES.get(&key).is_some()
}

/// A uniformly random slot among the service's backends.
#[inline(always)]
fn pick(service_id: u32, backend_count: u16) -> Result<Selection, Counter> {
    // SAFETY: a helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % backend_count as u32 + 1;
    let backend_id = SLOTS
        .get_ptr(SlotKey { service_id, slot })
        .ok_or(Counter::DropNoBackend)?;
    // SAFETY: as for `service` in `select`.
    let backend_id = unsafe { *backend_id };
    let backend = active_backend(backend_id).ok_or(Counter::DropNoBackend)?;
    Ok(Selection {
        service_id,
        backend_id,
        backend,
    })
}

/// Affinity lives from the client's last new flow, as with kube-proxy's `recent` match.
/// A new key is inserted with `BPF_NOEXIST` and counted only when this CPU created it, so
/// that `affinity_created` counts entries, not attempts, and the agent can tell how many
/// LRU eviction took (created, minus removed, minus present).
#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, now: u64, replacing: bool) {
    let entry = Affinity {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    if replacing {
        let _ = AFFINITY.insert(key, entry, BPF_ANY as u64);
    } else if AFFINITY.insert(key, entry, BPF_NOEXIST as u64).is_ok() {
        count(Counter::AffinityCreated);
    }
}
