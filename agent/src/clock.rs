//! The clock leases are measured on: CLOCK_BOOTTIME.
//!
//! CLOCK_MONOTONIC (what `Instant` uses on Linux) stops while the machine
//! is suspended, so a laptop or VM that sleeps through its lease would wake
//! believing the lease still runs. CLOCK_BOOTTIME keeps counting through
//! suspend, so a lease measured on it ends no later in real time than it
//! should.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// Time since boot, suspend included.
pub fn now() -> Duration {
    // CLOCK_BOOTTIME exists on every Linux this runs on; if it ever failed,
    // the monotonic clock is the next best (it only stops during suspend),
    // and with no clock at all every lease counts as over: fencing is the
    // safe side.
    match clock_gettime(ClockId::CLOCK_BOOTTIME)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
    {
        Ok(ts) => Duration::new(
            u64::try_from(ts.tv_sec()).unwrap_or(0),
            u32::try_from(ts.tv_nsec()).unwrap_or(0),
        ),
        Err(_) => Duration::MAX,
    }
}
