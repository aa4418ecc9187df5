//! `failover-soak`: the fault-injection suite over many seeds for as long
//! as you like, with a summary: faults injected, failovers, violations
//! (which must be 0) and dark time (the longest a group had nobody acting
//! as primary while a coordinator ran). Exit status 1 if any promise was
//! broken.
//!
//!   cargo build --release --bins
//!   target/release/failover-soak --seeds 1..20 --per-seed 2m
//!   target/release/failover-soak --seeds 1..5 --per-seed 2m --store etcd
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tests::faults::{FaultConfig, run};

#[derive(Parser)]
#[command(
    name = "failover-soak",
    about = "Long fault-injection runs against real processes"
)]
struct Args {
    /// Seeds to run, as FIRST..END (END excluded).
    #[arg(long, default_value = "1..11", value_parser = parse_range)]
    seeds: std::ops::Range<u64>,
    /// How long faults keep coming for each seed.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    per_seed: Duration,
    /// Heartbeat interval of the groups under test.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Failover timeout (lease) of the groups under test.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    failover_timeout: Duration,
    /// Run with TLS and node certificates (adds impostor sessions).
    #[arg(long)]
    tls: bool,
    /// `etcd`: three coordinator replicas on a three-member etcd cluster
    /// (replica and etcd faults instead of the coordinator's).
    #[arg(long, default_value = "sled", value_parser = ["sled", "etcd"])]
    store: String,
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or("write seeds as FIRST..END, e.g. 1..11")?;
    let a: u64 = a.parse().map_err(|e| format!("{e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{e}"))?;
    if a >= b {
        return Err("the range is empty".into());
    }
    Ok(a..b)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (mut faults, mut failovers, mut violations, mut dark_ms) = (0u32, 0usize, 0usize, 0u64);
    let mut notified = 0usize;
    for seed in args.seeds.clone() {
        let mut config = FaultConfig::new(seed, args.per_seed);
        config.heartbeat = args.heartbeat;
        config.failover_timeout = args.failover_timeout;
        config.tls = args.tls;
        config.replicas = args.store == "etcd";
        let report = run(config);
        println!("{report}");
        faults += report.faults.values().sum::<u32>();
        failovers += report.failovers;
        violations += report.violations.len();
        dark_ms = dark_ms.max(report.dark_ms);
        notified += report.notified;
    }
    println!(
        "summary: {} seeds, {faults} faults injected, {failovers} failovers, {violations} violations, \
         longest dark time {dark_ms} ms, {notified} events notified (at least once, in order)",
        args.seeds.end - args.seeds.start
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
