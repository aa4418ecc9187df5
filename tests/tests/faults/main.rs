//! The fault-injection suite: randomized faults against real processes,
//! with fixed seeds, checked against the promises of DESIGN.md section 4;
//! and the lease arithmetic under simulated clock drift.
//!
//! A longer soak over more seeds: `failover-soak` (see the README).
// Test tooling: a harness or benchmark that cannot go on stops loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lease_drift;

use std::time::Duration;

use tests::faults::{FaultConfig, run};

/// Long enough for a dozen or more faults per seed.
const PER_SEED: Duration = Duration::from_secs(60);

fn seed(seed: u64) {
    check(FaultConfig::new(seed, PER_SEED));
}

fn check(config: FaultConfig) {
    let report = run(config);
    println!("{report}");
    assert!(
        report.faults.values().sum::<u32>() >= 5,
        "too few faults: {report}"
    );
    assert!(report.violations.is_empty(), "{report}");
}

#[test]
fn seed_1() {
    seed(1);
}

#[test]
fn seed_2() {
    seed(2);
}

#[test]
fn seed_3() {
    seed(3);
}

/// With TLS and node certificates: impostor sessions join the faults.
#[test]
fn seed_4_with_tls() {
    check(FaultConfig::secure(4, PER_SEED));
}

/// Three coordinator replicas on a three-member etcd cluster: the leader
/// killed, frozen and cut off from etcd, etcd members killed, etcd's
/// quorum lost, followers restarted.
#[test]
fn seed_5_with_replicas() {
    check(FaultConfig::replicated(5, PER_SEED));
}
