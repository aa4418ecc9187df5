//! `kill -9` of the coordinator: acknowledged state survives, agents come
//! back by themselves, and a missing primary is replaced only after the
//! restarted coordinator has waited out the lease it may have granted.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tests::{Cluster, epoch, member, member_order};

/// The parts of `group show` that must survive a restart unchanged.
fn durable(g: &Value) -> Value {
    serde_json::json!({
        "name": g["name"],
        "epoch": g["epoch"],
        "primary": g["primary"],
        "members": member_order(g),
        "policy": g["policy"],
    })
}

#[test]
fn acknowledged_changes_survive_kill_9_and_the_primary_keeps_its_role() {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2", "rec-3"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2", "rec-3"]);
    c.ctl_ok(&[
        "group",
        "add",
        "recorders",
        "--member",
        "rec-1",
        "--member",
        "rec-2",
        "--heartbeat-interval",
        "100ms",
        "--failover-timeout",
        "1s",
        "--standby-mode",
        "warm",
    ]);
    c.ctl_ok(&[
        "group",
        "member",
        "add",
        "recorders",
        "rec-3",
        "--position",
        "1",
    ]);
    c.ctl_ok(&[
        "group",
        "member",
        "move",
        "recorders",
        "rec-2",
        "--position",
        "0",
    ]);
    c.ctl_ok(&["group", "promote", "recorders", "--to", "rec-3"]);
    c.add_group("spare", &["rec-2"]);
    c.ctl_ok(&["group", "delete", "spare", "--yes"]);
    let before = c.group("recorders");
    assert_eq!(member_order(&before), ["rec-2", "rec-1", "rec-3"]);
    assert_eq!(before["primary"], "rec-3");
    assert_eq!(before["policy"]["standby_mode"], "warm");

    c.kill_coordinator();
    c.start_coordinator();

    assert_eq!(durable(&c.group("recorders")), durable(&before));
    let out = c.ctl(&["group", "show", "spare"]);
    assert!(!out.status.success(), "the deleted group came back");

    // Agents reconnect by themselves; the primary keeps role and epoch.
    c.wait_connected("recorders", &["rec-1", "rec-2", "rec-3"]);
    let after = c.wait_until("the group is active again", || {
        let g = c.group("recorders");
        (g["phase"] == "active").then_some(g)
    });
    assert_eq!(durable(&after), durable(&before));
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.role == "primary" && (h.node != "rec-3" && h.epoch >= epoch(&before))),
        "nobody else was promoted: {:?}",
        c.hooks()
    );
}

#[test]
fn a_primary_that_does_not_come_back_is_replaced_after_the_lease_wait() {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2"]);
    let g = c.add_group("recorders", &["rec-1", "rec-2"]);
    assert_eq!(g["primary"], "rec-1");

    c.kill_coordinator();
    c.kill_agent("rec-1");
    let restarted_ms = now_ms();
    c.start_coordinator();

    let g = c.wait_primary("recorders", "rec-2");
    assert_eq!(epoch(&g), 2);
    assert_eq!(member(&g, "rec-1")["connected"], Value::Bool(false));
    let events = c.ctl_json(&["events", "--group", "recorders", "--limit", "1"]);
    let promoted_ms = events[0]["time"]
        .as_str()
        .and_then(rfc3339_ms)
        .expect("event time");
    // A lower bound, which a slow machine can only make later: the new
    // coordinator cannot know when the old one last renewed rec-1's lease
    // (failover timeout 1s), so it must wait at least that long.
    assert!(
        promoted_ms >= restarted_ms + 1000,
        "promoted {}ms after the restart, inside the possible lease",
        promoted_ms as i64 - restarted_ms as i64
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Parses failoverctl's RFC 3339 timestamps into Unix milliseconds.
fn rfc3339_ms(t: &str) -> Option<u64> {
    let at = humantime::parse_rfc3339(t).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}
