//! The gateway datapath: TC programs attached at ingress and egress of the node's uplinks.
//!
//! One concern per module, as in Cilium's bpf/lib: `packet` (every access to the frame, and
//! header parsing), `arp` (L2 announcement), `icmp` (echo replies from VIPs, errors about
//! tracked flows translated), `lb` (service lookup, source ranges, backend
//! selection, affinity), `conntrack`, `nat` (rewrites and checksums), `snat` (source NAT to
//! backends on other nodes, and their replies), `route` (sending a frame on through the
//! FIB), `skb` (`ip_summed`), `stats` (counters), `maps` (expanded from gateway-common's map
//! table), `log` (debug events); `ingress` and `egress` tie them together; `hairpin` is the
//! socket-level side (cgroup hooks that send this node's own connections to a VIP straight
//! to a backend). Every drop is counted under a named reason.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arp;
mod conntrack;
mod egress;
mod hairpin;
mod icmp;
mod ingress;
mod lb;
mod log;
mod maps;
mod nat;
mod packet;
mod route;
mod skb;
mod snat;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use gateway_common::{Counter, DatapathConfig};

use crate::packet::Packet;

/// Not ours: let the next program (tcx) or the stack have it, untouched.
pub const PASS: i32 = aya_ebpf::bindings::TC_ACT_UNSPEC;

// `#[classifier]` wraps these in the program's entry point; inlined always, so that LLVM's
// size heuristics never leave the whole datapath a function call away from it (a call and
// a stack frame of its own: ~8 ns per packet measured when the ICMP code tipped it over).
#[classifier]
#[inline(always)]
pub fn gw_ingress(ctx: TcContext) -> i32 {
    ingress::run(&mut Packet::new(&ctx))
}

#[classifier]
#[inline(always)]
pub fn gw_egress(ctx: TcContext) -> i32 {
    egress::run(&mut Packet::new(&ctx))
}

#[cgroup_sock_addr(connect4)]
pub fn gw_connect4(ctx: SockAddrContext) -> i32 {
    hairpin::balance(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn gw_sendmsg4(ctx: SockAddrContext) -> i32 {
    hairpin::balance(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn gw_recvmsg4(ctx: SockAddrContext) -> i32 {
    hairpin::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn gw_getpeername4(ctx: SockAddrContext) -> i32 {
    hairpin::reverse(&ctx)
}

/// Reads jiffies and CLOCK_MONOTONIC_COARSE side by side into the frame's first 16 bytes:
/// the agent runs it once through BPF_PROG_TEST_RUN at start to set the datapath's clock
/// (see `gateway_common::Clock`). Never attached.
#[classifier]
pub fn gw_clock(ctx: TcContext) -> i32 {
    use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
    // SAFETY: helpers without arguments.
    let clocks = unsafe { [bpf_jiffies64(), bpf_ktime_get_coarse_ns()] };
    match ctx.store(0, &clocks, 0) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

/// The empty TC program: the floor `cargo xtask bench` measures the datapath against. The
/// agent never loads it.
#[classifier]
pub fn gw_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// The datapath's clock (see `gateway_common::Clock`): jiffies, which the verifier inlines
/// into a single load, in nanoseconds that read as CLOCK_MONOTONIC_COARSE.
#[inline(always)]
pub fn now_ns(config: &DatapathConfig) -> u64 {
    // SAFETY: a helper without arguments.
    config
        .clock
        .at(unsafe { aya_ebpf::helpers::bpf_jiffies64() })
}

#[inline(always)]
pub fn drop(pkt: &Packet, reason: Counter) -> i32 {
    stats::count(reason);
    log::debug!(pkt.ctx(), "drop: {}", reason.name());
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
