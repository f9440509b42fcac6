//! The benchmark's wrapper (`cargo xtask bench`), a separate object the agent never loads.
//!
//! BPF_PROG_TEST_RUN runs one skb many times without restoring it, so a program that
//! rewrites the packet would meet its own output from the second pass on. This program
//! writes the case's frame back before each pass (optionally a new flow each time) and
//! tail-calls the measured program; the floor is the same wrapper tail-calling the empty
//! program, so the wrapper's own cost cancels out.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    btf_maps::{Array, ProgramArray},
    helpers::bpf_skb_store_bytes,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use gateway_common::{
    bench::{BenchFrame, FRAME_MAX},
    csum::{diff2, update_complete},
};

#[btf_map(name = "gw_bench_frame")]
static FRAME: Array<BenchFrame, 1> = Array::new();

#[btf_map(name = "gw_bench_target")]
static TARGET: ProgramArray<1> = ProgramArray::new();

#[inline(always)]
fn read16(frame: &[u8; FRAME_MAX], off: usize) -> [u8; 2] {
    [frame[off], frame[off + 1]]
}

#[inline(always)]
fn write16(frame: &mut [u8; FRAME_MAX], off: usize, [hi, lo]: [u8; 2]) {
    frame[off] = hi;
    frame[off + 1] = lo;
}

/// Adds one to the varied field (at an even offset) and updates the checksums over it.
#[inline(always)]
fn next_flow(f: &mut BenchFrame) {
    // Fields are 16-bit aligned: masking keeps every access inside the frame for the
    // verifier (which does not follow a range check through LLVM's rewrites).
    let off = f.vary_off as usize & (FRAME_MAX - 2);
    if off == 0 {
        return;
    }
    let old = u16::from_be_bytes(read16(&f.frame, off));
    let new = old.wrapping_add(1);
    write16(&mut f.frame, off, new.to_be_bytes());
    for csum_off in f.csum_offs {
        let csum_off = csum_off as usize & (FRAME_MAX - 2);
        if csum_off == 0 {
            continue;
        }
        let check = update_complete(read16(&f.frame, csum_off), diff2(old, new));
        write16(&mut f.frame, csum_off, check);
    }
}

#[classifier]
pub fn gw_bench(ctx: TcContext) -> i32 {
    let Some(f) = FRAME.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: the array's only element, valid until the program returns; only the
    // benchmark's single-threaded runs touch it.
    let f = unsafe { &mut *f };
    next_flow(f);
    let len = f.len;
    if len == 0 || len as usize > FRAME_MAX || len != ctx.len() {
        return TC_ACT_SHOT;
    }
    // SAFETY: `len` bytes of the frame buffer, which holds FRAME_MAX >= len, into the
    // program's own skb (whose length is `len`).
    let stored = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb as *mut _,
            0,
            f.frame.as_ptr() as *const _,
            len,
            0,
        )
    };
    if stored != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: a tail call from the program's own context; it does not return on success.
    unsafe { TARGET.tail_call(&ctx, 0) };
    // Only reached if the slot is empty: a misconfigured benchmark, not a measurement.
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
