//! Initial election and failover after `kill -9` of the primary's agent.

use serde_json::Value;
use tests::{Cluster, epoch, member};

fn three_agents() -> Cluster {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2", "rec-3"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2", "rec-3"]);
    c
}

#[test]
fn the_first_connected_member_in_order_becomes_primary_with_epoch_1() {
    let mut c = Cluster::start();
    c.start_agent("rec-2");
    c.start_agent("rec-3");
    c.wait_nodes(&["rec-2", "rec-3"]);
    let g = c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    assert_eq!(
        g["primary"], "rec-2",
        "rec-1 is not connected: rec-2 is first in order"
    );
    assert_eq!(epoch(&g), 1);

    let promoted = c.wait_hook("rec-2's primary hook", |h| {
        h.node == "rec-2" && h.role == "primary"
    });
    assert_eq!((promoted.epoch, promoted.group.as_str()), (1, "recorders"));
    assert_eq!(promoted.primary, "rec-2");
    assert_eq!(promoted.standby_mode, "hot");
    let standby = c.wait_hook("rec-3's secondary hook", |h| {
        h.node == "rec-3" && h.role == "secondary" && h.epoch == 1
    });
    assert_eq!(standby.primary, "rec-2");

    // rec-1 arrives later: failback is off by default, so it stays secondary.
    c.start_agent("rec-1");
    c.wait_connected("recorders", &["rec-1"]);
    c.wait_hook("rec-1's secondary hook", |h| {
        h.node == "rec-1" && h.role == "secondary"
    });
    let g = c.group("recorders");
    assert_eq!(g["primary"], "rec-2");
    assert_eq!(member(&g, "rec-1")["role"], "secondary");
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.node == "rec-1" && h.role == "primary")
    );
}

#[test]
fn killing_the_primary_promotes_the_next_member_with_a_higher_epoch() {
    let mut c = three_agents();
    let g = c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-1"), 1));
    c.wait_hook("rec-1 promoted", |h| {
        h.node == "rec-1" && h.role == "primary"
    });

    c.kill_agent("rec-1");
    let g = c.wait_primary("recorders", "rec-2");
    assert_eq!(epoch(&g), 2);
    let promoted = c.wait_hook("rec-2 promoted", |h| {
        h.node == "rec-2" && h.role == "primary"
    });
    assert_eq!(promoted.epoch, 2);
    assert_eq!(promoted.previous, "secondary");
    c.wait_hook("rec-3 follows rec-2", |h| {
        h.node == "rec-3" && h.primary == "rec-2" && h.epoch == 2
    });
    assert_eq!(member(&g, "rec-1")["role"], "secondary");
    assert_eq!(member(&g, "rec-1")["connected"], Value::Bool(false));

    // The old primary comes back as a secondary of the new one.
    c.start_agent("rec-1");
    let back = c.wait_hook("rec-1 rejoins", |h| {
        h.node == "rec-1" && h.role == "secondary"
    });
    assert_eq!((back.epoch, back.primary.as_str()), (2, "rec-2"));
    c.wait_connected("recorders", &["rec-1"]);
    let g = c.group("recorders");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-2"), 2));

    let primaries: Vec<_> = c
        .hooks()
        .into_iter()
        .filter(|h| h.role == "primary")
        .collect();
    assert_eq!(primaries.len(), 2, "exactly two promotions: {primaries:?}");
    assert!(primaries[0].epoch < primaries[1].epoch);
}

#[test]
fn the_event_log_records_the_failover() {
    let mut c = three_agents();
    c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    c.kill_agent("rec-1");
    c.wait_primary("recorders", "rec-2");
    let events = c.ctl_json(&["events", "--group", "recorders"]);
    let kinds: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["group_created", "promoted", "primary_lapsed", "promoted"]
    );
    let last = &events[3];
    assert_eq!(
        (last["old_primary"].as_str(), last["new_primary"].as_str()),
        (Some("rec-1"), Some("rec-2"))
    );
    assert_eq!(last["epoch"], 2);
    assert_eq!(last["actor"], "coordinator");
}
