//! Hairpin: socket-level load balancing for this node's own processes and pods, as Cilium's
//! socket LB does it. The programs run in the cgroup the agent attaches them to
//! (`--cgroup`), at `connect()` and `sendto()` (the destination VIP:port becomes a backend,
//! chosen by the same service lookup, affinity and source ranges as a packet from a client
//! on the segment) and at `recvfrom()` and `getpeername()` (the backend reads as the VIP
//! again). Only VIPs this node announces (`gw_hairpin`) are balanced here: every other
//! address, VIPs other nodes announce included, is left to the routing table, so a process
//! reaches those across the segment as any client does. No packet is rewritten: the socket
//! talks to the backend directly, so TC never sees these flows.

use aya_ebpf::{helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use gateway_common::{Frontend, Ipv4, SockRevNatKey, VipKey, proto};

use crate::{
    ingress::may_be_vip,
    lb,
    maps::{CONFIG, HAIRPIN, SOCK_REVNAT},
    now_ns,
    packet::Flow,
    stats::count,
};

/// The hook lets the system call go on.
const ALLOW: i32 = 1;
/// `connect()` and `sendto()` fail with EPERM.
const REJECT: i32 = 0;
const AF_INET: u32 = 2;

/// The socket address as the application gave it (or as it will read it).
struct Addr {
    ip: Ipv4,
    /// Host byte order.
    port: u16,
    proto: u8,
}

/// `connect()` (TCP, UDP) and `sendto()` (UDP): a VIP this node announces becomes a backend.
#[inline(always)]
pub fn balance(ctx: &SockAddrContext) -> i32 {
    let Some(to) = destination(ctx) else {
        return ALLOW;
    };
    // The node's other connections pay one inlined array lookup, as at TC ingress.
    if !may_be_vip(to.ip) {
        return ALLOW;
    }
    let Some(hairpin) = HAIRPIN.get_ptr(VipKey { addr: to.ip }) else {
        return ALLOW;
    };
    // SAFETY: a value found in a hash map stays valid until the program returns.
    let client_addr = unsafe { (*hairpin).client_addr };
    let Some(config) = CONFIG.get(0) else {
        return ALLOW;
    };
    let flow = Flow {
        saddr: client_addr,
        daddr: to.ip,
        sport: 0,
        dport: to.port,
        proto: to.proto,
        tcp_flags: 0,
        l4_off: 0,
        csum_off: 0,
    };
    let selection = match lb::select(&flow, now_ns(config)) {
        Ok(s) => s,
        Err(reason) => {
            count(reason);
            return REJECT;
        }
    };
    let backend = selection.backend;
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        backend_addr: backend.addr,
        backend_port: backend.port,
        proto: to.proto,
        _pad: 0,
    };
    let frontend = Frontend {
        vip: to.ip,
        port: to.port,
        _pad: 0,
    };
    // Without the entry the application would see the backend's address as its peer; the
    // connection itself is right either way.
    let _ = SOCK_REVNAT.insert(key, frontend, 0);
    // SAFETY: the context the kernel passed; user_ip4 and user_port are writable at
    // connect4 and sendmsg4, with 32-bit stores.
    unsafe {
        let sa = ctx.sock_addr;
        core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(backend.addr));
        core::ptr::write_volatile(&mut (*sa).user_port, u32::from(backend.port.to_be()));
    }
    count(gateway_common::Counter::Hairpin);
    ALLOW
}

/// `recvfrom()` and `getpeername()`: a backend the socket was sent to reads as the VIP.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    let Some(from) = destination(ctx) else {
        return ALLOW;
    };
    let key = SockRevNatKey {
        cookie: cookie(ctx),
        backend_addr: from.ip,
        backend_port: from.port,
        proto: from.proto,
        _pad: 0,
    };
    if let Some(frontend) = SOCK_REVNAT.get_ptr(key) {
        // SAFETY: as in `balance`; writable at recvmsg4 and getpeername4.
        unsafe {
            let frontend = *frontend;
            let sa = ctx.sock_addr;
            core::ptr::write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(frontend.vip));
            core::ptr::write_volatile(&mut (*sa).user_port, u32::from(frontend.port.to_be()));
        }
    }
    // recvmsg4 and getpeername4 must allow.
    ALLOW
}

/// The IPv4 TCP or UDP address in the context; `None` for anything else (IPv6, ping
/// sockets), which is left alone.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> Option<Addr> {
    // SAFETY: the context the kernel passed; these fields are readable at every sock_addr
    // hook, with 32-bit loads (the verifier refuses narrower stores, so loads match).
    let (family, ip, port, protocol) = unsafe {
        let sa = ctx.sock_addr;
        (
            core::ptr::read_volatile(&(*sa).user_family),
            core::ptr::read_volatile(&(*sa).user_ip4),
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).protocol),
        )
    };
    if family != AF_INET {
        return None;
    }
    let proto = match protocol as u8 {
        proto::TCP => proto::TCP,
        proto::UDP => proto::UDP,
        _ => return None,
    };
    Some(Addr {
        ip: ip.to_ne_bytes(),
        port: u16::from_be(port as u16),
        proto,
    })
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: a helper every sock_addr program may call, on its own context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}
