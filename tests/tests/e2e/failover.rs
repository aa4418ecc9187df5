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
    // The kill ends rec-1's session at once: contact lost, then its lease
    // lapses.
    assert_eq!(
        kinds,
        [
            "group_created",
            "promoted",
            "node_lost",
            "primary_lapsed",
            "promoted"
        ]
    );
    assert!(
        events[2]["reason"]
            .as_str()
            .unwrap()
            .contains("lost contact with rec-1"),
        "{events}"
    );
    assert_eq!(events[2]["node"], "rec-1", "the event names the node");
    let last = &events[4];
    assert_eq!(
        (last["old_primary"].as_str(), last["new_primary"].as_str()),
        (Some("rec-1"), Some("rec-2"))
    );
    assert_eq!(last["epoch"], 2);
    assert_eq!(last["actor"], "coordinator");
}

#[test]
fn a_woken_primary_runs_its_fenced_hook_to_the_end_before_the_secondary_one() {
    let mut c = Cluster::start();
    // n-1's hook takes a while to stop the service when fenced.
    let slow = c.path("slow-fence.sh");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\n[ \"$FAILOVER_ROLE\" = fenced ] && sleep 2\nexec {} \"$@\"\n",
            c.path("hook.sh").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = c.agent_config("n-1", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &c.path("hook.sh").display().to_string(),
        &slow.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    c.start_agent_with("n-1", &config);
    c.start_agent("n-2");
    c.wait_nodes(&["n-1", "n-2"]);
    c.add_group_with("g", &["n-1", "n-2"], &["--failover-timeout", "1s"]);
    c.wait_hook("n-1 promoted", |h| h.node == "n-1" && h.role == "primary");

    c.freeze_agent("n-1");
    c.wait_primary("g", "n-2");
    c.thaw_agent("n-1");
    // Woken, n-1 fences at once and soon hears it is a secondary: the
    // fenced hook is not cut short by the secondary one.
    c.wait_hook("n-1's secondary hook", |h| {
        h.node == "n-1" && h.role == "secondary" && h.epoch >= 2
    });
    let done = c.wait_until("n-1's hooks are reported done", || {
        let events = tests::checker::read_role_logs(c.dir.path());
        let done: Vec<(String, String)> = events
            .iter()
            .filter(|e| e.node == "n-1" && e.event == "hook_done")
            .map(|e| (e.role.clone(), e.detail.clone()))
            .collect();
        done.iter()
            .any(|(role, _)| role == "secondary")
            .then_some(done)
    });
    let fenced: Vec<_> = done.iter().filter(|(role, _)| role == "fenced").collect();
    assert!(!fenced.is_empty(), "no fenced hook ran: {done:?}");
    assert!(
        fenced.iter().all(|(_, outcome)| outcome == "succeeded"),
        "a fenced hook was cut short: {done:?}"
    );
}
