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
    // SAFETY: a read of a static u32 through a reference to it.
    let at = unsafe { core::ptr::read_volatile(&GW_IP_SUMMED_AT) };
    if at == 0 {
        return None;
    }
    // The agent rewrites this call into the kfunc `bpf_cast_to_kern_ctx`, which the verifier
    // inlines to a register move: the context as the kernel's own `struct sk_buff *`.
    // SAFETY: not a function pointer to call as such: BPF calls helpers by number, and this
    // one is the placeholder the agent turns into the kfunc (or the verifier prunes as dead).
    let cast: unsafe extern "C" fn(*mut c_void) -> *const u8 =
        unsafe { core::mem::transmute(CAST_PLACEHOLDER as usize) };
    // SAFETY: the kfunc takes the program's context and returns it, typed as the kernel's
    // `struct sk_buff *`.
    let skb = unsafe { cast(ctx.skb.skb as *mut c_void) };
    // SAFETY: `at` is the bit offset of `ip_summed` in the running kernel's `struct sk_buff`,
    // read from its BTF; the verifier checks the load against that BTF too.
    let byte = unsafe { *skb.add((at / 8) as usize) };
    Some((byte >> (at % 8)) & 3)
}
