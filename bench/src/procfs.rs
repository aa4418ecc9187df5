//! What /proc says about a process: CPU time, resident memory, bytes it
//! caused to be written to storage.

use std::time::Duration;

use nix::unistd::{SysconfVar, sysconf};

fn field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// User + system CPU time used so far.
pub(crate) fn cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of those.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    let per_second = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Resident memory now and at its peak, in MiB.
pub(crate) fn rss_mib(pid: i32) -> (f64, f64) {
    let status = format!("/proc/{pid}/status");
    let kib = |k| field(&status, k).unwrap_or(0) as f64 / 1024.0;
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Bytes the process caused to be sent to the storage layer.
pub(crate) fn write_bytes(pid: i32) -> u64 {
    field(&format!("/proc/{pid}/io"), "write_bytes:").unwrap_or(0)
}
