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
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is available on Linux");
    Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32)
}
