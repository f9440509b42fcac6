//! What the kernel knows about the frame that `__sk_buff` does not show: `ip_summed`, which
//! says how the L4 checksum field is to be updated (see `gateway_common::kern_ctx`).

use aya_ebpf::{cty::c_void, programs::TcContext};
use gateway_common::kern_ctx::CAST_PLACEHOLDER;

/// Bit offset of `ip_summed` in the running kernel's `struct sk_buff`, written by the agent
/// at load time; 0 when unknown. A frozen read-only global: the verifier reads its value
/// and treats it as a constant, so the offset below is a fixed one it can check against
/// the kernel's BTF, and with 0 it prunes the kfunc call as dead code.
#[unsafe(no_mangle)]
static GW_IP_SUMMED_AT: u32 = 0;

/// The frame's `skb->ip_summed`, or `None` where the agent could not find it.
#[inline(always)]
pub fn ip_summed(ctx: &TcContext) -> Option<u8> {
    // Volatile: the value is only known at load time, LLVM must not fold the 0 above.
    let at = unsafe { core::ptr::read_volatile(&GW_IP_SUMMED_AT) };
    if at == 0 {
        return None;
    }
    // The agent rewrites this call into the kfunc `bpf_cast_to_kern_ctx`, which the verifier
    // inlines to a register move: the context as the kernel's own `struct sk_buff *`.
    let cast: unsafe extern "C" fn(*mut c_void) -> *const u8 =
        unsafe { core::mem::transmute(CAST_PLACEHOLDER as usize) };
    let skb = unsafe { cast(ctx.skb.skb as *mut c_void) };
    let byte = unsafe { *skb.add((at / 8) as usize) };
    Some((byte >> (at % 8)) & 3)
}
