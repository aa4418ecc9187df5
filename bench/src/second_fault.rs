//! The second fault: a two-member group at the default settings (lease 3 s,
//! failback delay 60 s). One member is cut off (its partner takes over),
//! comes back — now recently failed — and soon after the new primary's agent
//! is killed. Measured: the kill → the recently failed member's promote
//! hook started. Nobody else can serve, so it must take over at the end of
//! the lease, not once its failback delay is over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tests::proxy::Mode;
use tests::{Cluster, epoch, member};

use crate::failover_time::{Measurement, Setting};
use crate::stats::summarize;

const NODES: [&str; 2] = ["n-1", "n-2"];

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

pub(crate) fn measure(runs: usize) -> Measurement {
    let setting = Setting::new(500, 3000);
    let mut c = Cluster::start();
    for (i, n) in NODES.iter().enumerate() {
        c.start_agent_proxied(n, i as u64);
    }
    c.wait_nodes(&NODES);
    c.add_group_with("bench", &NODES, &[]);
    let mut samples = Vec::with_capacity(runs);
    for run in 0..runs {
        let g = c.wait_until("the group has a primary", || {
            let g = c.group("bench");
            (g["phase"] == "active").then_some(g)
        });
        let first = g["primary"].as_str().expect("a primary").to_owned();
        let other = NODES
            .iter()
            .find(|n| **n != first)
            .expect("two")
            .to_string();
        // Fault one: the primary is cut off; the other takes over.
        c.proxy(&first).set(Mode::Blackhole);
        c.wait_primary("bench", &other);
        c.proxy(&first).set(Mode::Pass);
        c.wait_until("the cut-off member is back, recently failed", || {
            let g = c.group("bench");
            let m = member(&g, &first);
            (m["connected"] == true && m["recently_failed"] == true).then_some(())
        });
        let before = epoch(&c.group("bench"));
        c.wait_hook("the new primary's hook", |h| {
            h.role == "primary" && h.epoch == before
        });
        // Fault two, at a random phase of the heartbeat cycle.
        let phase = rand::rng().random_range(0..setting.heartbeat_ms);
        std::thread::sleep(Duration::from_millis(phase));
        let killed_at = now_ns();
        c.kill_agent(&other);
        let hook = c.wait_hook("the recently failed member's hook", |h| {
            h.role == "primary" && h.epoch > before && h.node == first
        });
        let sample = Duration::from_nanos(hook.at_ns.saturating_sub(killed_at) as u64);
        eprintln!(
            "  run {:>2}: {other} killed, {first} (recently failed) primary in {:.1} ms",
            run + 1,
            sample.as_secs_f64() * 1e3
        );
        samples.push(sample);
        c.start_agent(&other);
        c.wait_connected("bench", &[&other]);
    }
    Measurement {
        setting,
        summary: summarize(&samples),
        samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
    }
}
