//! Planned switchover with `failoverctl group promote`.

use tests::{Cluster, epoch, member};

#[test]
fn the_old_primary_steps_down_before_the_new_one_is_promoted() {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2", "rec-3"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2", "rec-3"]);
    c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    c.wait_hook("rec-1 promoted", |h| {
        h.node == "rec-1" && h.role == "primary"
    });

    let g = c.ctl_json(&["group", "promote", "recorders", "--to", "rec-3"]);
    assert_eq!(
        g["primary"], "rec-3",
        "promote answers once the promotion is done"
    );
    assert_eq!(
        epoch(&g),
        3,
        "one epoch for the step-down, one for the promotion"
    );
    assert_eq!(member(&g, "rec-1")["role"], "secondary");

    let step_down = c.wait_hook("rec-1 steps down", |h| {
        h.node == "rec-1" && h.role == "secondary"
    });
    let promote = c.wait_hook("rec-3 promoted", |h| {
        h.node == "rec-3" && h.role == "primary"
    });
    assert_eq!(
        (step_down.epoch, step_down.previous.as_str()),
        (2, "primary")
    );
    assert_eq!(promote.epoch, 3);
    assert!(
        step_down.at_ns < promote.at_ns,
        "the step-down hook must start before the promote hook: {step_down:?} {promote:?}"
    );
}

#[test]
fn promoting_a_disconnected_member_or_a_stranger_is_refused() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.start_agent("rec-2");
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    let before = c.group("recorders");

    for (target, expect) in [("rec-3", "not connected"), ("rec-9", "not a member")] {
        let out = c.ctl(&["group", "promote", "recorders", "--to", target]);
        assert!(!out.status.success(), "promote to {target} succeeded");
        assert!(out.stderr.contains(expect), "{target}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    }
    let after = c.group("recorders");
    assert_eq!(
        (after["primary"].clone(), after["epoch"].clone()),
        (before["primary"].clone(), before["epoch"].clone())
    );
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.role == "primary" && h.node != "rec-1")
    );
}

#[test]
fn promoting_the_current_primary_changes_nothing() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.wait_nodes(&["rec-1"]);
    c.add_group("recorders", &["rec-1"]);
    let g = c.ctl_json(&["group", "promote", "recorders", "--to", "rec-1"]);
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-1"), 1));
}
