//! The gateway datapath: TC programs attached at ingress and egress of the node's uplinks.
//!
//! One concern per module, as in Cilium's bpf/lib: `packet` (parsing), `arp` (L2
//! announcement), `lb` (service lookup, backend selection, affinity), `conntrack`, `nat`
//! (rewrites and checksums), `stats` (counters), `maps`; `ingress` and `egress` tie them
//! together. Every drop is counted under a named reason.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arp;
mod conntrack;
mod egress;
mod ingress;
mod lb;
mod log;
mod maps;
mod nat;
mod packet;
mod skb;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use gateway_common::Counter;

/// Not ours: let the next program (tcx) or the stack have it, untouched.
pub const PASS: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;

#[classifier]
pub fn gw_ingress(ctx: TcContext) -> i32 {
    ingress::run(&ctx)
}

#[classifier]
pub fn gw_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

/// The empty TC program: the floor `cargo xtask bench` measures the datapath against. The
/// agent never loads it.
#[classifier]
pub fn gw_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

/// The datapath's clock, CLOCK_MONOTONIC_COARSE: timeouts are seconds, so the last tick's
/// time will do, and reading it costs no clock-source read (`bpf_ktime_get_ns` cost about
/// 15 ns per packet on the benchmark VM). The agent reads the same clock.
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn drop(ctx: &TcContext, reason: Counter) -> i32 {
    stats::count(reason);
    log::debug!(ctx, "drop: {}", reason.name());
    TC_ACT_SHOT as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
