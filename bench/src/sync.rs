//! State sync between two real agents on loopback: how long a standby
//! takes to catch up after a large change (a new file of the given size
//! on the primary, from the moment it is on disk to the standby holding
//! the new snapshot), the transfer's throughput and both agents' CPU; and
//! how closely `max_rate` holds (the standby's received-bytes counter
//! over the transfer).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tests::Cluster;

use crate::procfs;

#[derive(Debug, Serialize)]
pub(crate) struct CatchUp {
    pub change_mib: u64,
    pub max_rate: Option<String>,
    /// The new file on disk → the standby reports the new snapshot, fresh.
    pub catch_up_s: f64,
    /// From the first received byte to the last (the counter's samples).
    pub transfer_s: f64,
    pub transfer_mib_per_s: f64,
    /// CPU seconds each agent used during the catch-up.
    pub primary_cpu_s: f64,
    pub standby_cpu_s: f64,
    /// For a rate limit: how far the measured rate is from it.
    pub rate_error_pct: Option<f64>,
}

fn write_file(path: &Path, mib: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        file.write_all(&block).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
}

/// The standby's (bytes, snapshot, state) and the primary's snapshot.
fn sample(c: &Cluster) -> Option<(u64, String, String, String)> {
    let g = c.try_ctl_json(&["group", "show", "g"])?;
    let sync = |node: &str| -> Option<Value> {
        let m = g["members"]
            .as_array()?
            .iter()
            .find(|m| m["node"] == node)?;
        m["syncs"].as_array()?.first().cloned()
    };
    let b = sync("b")?;
    let a = sync("a")?;
    Some((
        b["bytes"].as_u64()?,
        b["snapshot"].as_str()?.to_owned(),
        b["state"].as_str()?.to_owned(),
        a["snapshot"].as_str()?.to_owned(),
    ))
}

/// One catch-up of a `change_mib` file, with `max_rate` on both agents.
pub(crate) fn catch_up(change_mib: u64, max_rate: Option<&str>) -> CatchUp {
    let mut c = Cluster::start();
    let rate = max_rate.map_or(String::new(), |r| format!("max_rate = \"{r}\"\n"));
    let mut configs = Vec::new();
    for node in ["a", "b"] {
        let data = c.path(&format!("data-{node}"));
        std::fs::create_dir_all(&data).unwrap();
        let section = format!(
            "\n[[sync]]\nname = \"data\"\npath = \"{}\"\ninterval = \"200ms\"\n{rate}",
            data.display()
        );
        configs.push((node, c.agent_config(node, &section), data));
    }
    std::fs::write(configs[0].2.join("seed"), "seed\n").unwrap();
    // Heartbeats carry the byte counter: often, for fine samples.
    c.add_group_with("g", &["a", "b"], &["--heartbeat-interval", "100ms"]);
    c.start_agent_with("a", &configs[0].1);
    c.wait_primary("g", "a");
    c.start_agent_with("b", &configs[1].1);
    let first = c.wait_until("b holds a's first snapshot", || {
        let (_, b, state, a) = sample(&c)?;
        (b == a && state == "fresh").then_some(b)
    });
    let pid = |node: &str| c.agent(node).pid().as_raw();
    let cpu = |node: &str| procfs::cpu(pid(node)).as_secs_f64();
    let (a_cpu, b_cpu) = (cpu("a"), cpu("b"));
    write_file(&configs[0].2.join("big.bin"), change_mib);
    let start = Instant::now();
    let before = sample(&c).map_or(0, |s| s.0);
    let mut first_byte: Option<(Instant, u64)> = None;
    let mut last_byte: Option<(Instant, u64)> = None;
    let deadline = start + Duration::from_secs(3600);
    let done = loop {
        let now = Instant::now();
        assert!(now < deadline, "the standby never caught up");
        let Some((bytes, b, state, a)) = sample(&c) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if bytes > before {
            first_byte.get_or_insert((now, bytes));
            if last_byte.is_none_or(|(_, seen)| bytes > seen) {
                last_byte = Some((now, bytes));
            }
        }
        if b != first && b == a && state == "fresh" {
            break now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (t0, b0) = first_byte.unwrap_or((start, before));
    let (t1, b1) = last_byte.unwrap_or((done, before));
    let transfer_s = t1.saturating_duration_since(t0).as_secs_f64();
    let moved = b1.saturating_sub(b0) as f64 / f64::from(1 << 20);
    let transfer_mib_per_s = if transfer_s > 0.0 {
        moved / transfer_s
    } else {
        0.0
    };
    let limit =
        max_rate.map(|r| agent::sync::config::parse_rate(r).unwrap() as f64 / f64::from(1 << 20));
    CatchUp {
        change_mib,
        max_rate: max_rate.map(str::to_owned),
        catch_up_s: done.duration_since(start).as_secs_f64(),
        transfer_s,
        transfer_mib_per_s,
        primary_cpu_s: cpu("a") - a_cpu,
        standby_cpu_s: cpu("b") - b_cpu,
        rate_error_pct: limit.map(|l| (transfer_mib_per_s - l) / l * 100.0),
    }
}
