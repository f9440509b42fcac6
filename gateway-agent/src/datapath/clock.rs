//! The datapath's clock (see `gateway_common::Clock`): jiffies in nanoseconds that read as
//! CLOCK_MONOTONIC_COARSE, so the agent compares entry stamps with its own clock.

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use gateway_common::{Clock, program_names};
use nix::time::{ClockId, clock_getres, clock_gettime};

const TC_ACT_OK: u32 = 0;

/// CLOCK_MONOTONIC_COARSE in nanoseconds: what the datapath's clock reads as.
pub fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .expect("CLOCK_MONOTONIC_COARSE is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Relates jiffies to CLOCK_MONOTONIC_COARSE by reading both in the kernel at once (the
/// object's `gw_clock` program, loaded for one run and unloaded again). Both advance in the
/// same tick, so the relation holds to within one tick for as long as the machine runs.
pub fn measure(ebpf: &mut Ebpf) -> Result<Clock> {
    // The resolution of the coarse clocks is the tick (TICK_NSEC).
    let res = clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).context("clock_getres")?;
    let tick_ns = res.tv_sec() as u64 * 1_000_000_000 + res.tv_nsec() as u64;
    ensure!(
        tick_ns > 0,
        "CLOCK_MONOTONIC_COARSE reports a resolution of 0"
    );
    let program: &mut SchedClassifier = ebpf
        .program_mut(program_names::CLOCK)
        .context("the eBPF object has no clock program")?
        .try_into()?;
    program.load().context("loading the clock program")?;
    let frame = [0u8; 64];
    let mut out = [0u8; 64];
    let run = program.test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ..Default::default()
    });
    program.unload().context("unloading the clock program")?;
    let run = run.context("running the clock program")?;
    ensure!(
        run.return_value == TC_ACT_OK && run.data_size_out >= 16,
        "the clock program returned {} with {} bytes",
        run.return_value,
        run.data_size_out
    );
    let word = |i: usize| u64::from_ne_bytes(out[i..i + 8].try_into().unwrap());
    let (jiffies, coarse_ns) = (word(0), word(8));
    Ok(Clock {
        tick_ns,
        offset_ns: coarse_ns.wrapping_sub(jiffies.wrapping_mul(tick_ns)),
    })
}
