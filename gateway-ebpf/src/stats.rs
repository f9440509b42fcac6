//! Counters: per-CPU, so the hot path never bounces a cache line between cores.

use gateway_common::{Counter, Traffic};

use crate::maps::{BACKEND_STATS, COUNTERS, SERVICE_STATS};

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot of a per-CPU array, which only this program run touches
        // until it returns (programs run with migration disabled).
        unsafe { *c += 1 };
    }
}

/// Which way a packet of a balanced flow goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> backend (after DNAT).
    Forward,
    /// Backend -> client (after reverse NAT).
    Reverse,
}

/// Adds one packet of `bytes` to the service's and the backend's traffic counters.
#[inline(always)]
pub fn account(service_id: u32, backend_id: u32, bytes: u32, dir: Direction) {
    add(SERVICE_STATS.get_ptr_mut(service_id), bytes, dir);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes, dir);
}

/// Counts a packet of the service dropped for its source (`loadBalancerSourceRanges`).
#[inline(always)]
pub fn deny(service_id: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: as in `count`.
        unsafe { (*t).denied_packets += 1 };
    }
}

#[inline(always)]
fn add(traffic: Option<*mut Traffic>, bytes: u32, dir: Direction) {
    let Some(t) = traffic else { return };
    // SAFETY: as in `count`.
    let t = unsafe { &mut *t };
    if dir == Direction::Forward {
        t.fwd_packets += 1;
        t.fwd_bytes += bytes as u64;
    } else {
        t.rev_packets += 1;
        t.rev_bytes += bytes as u64;
    }
}
