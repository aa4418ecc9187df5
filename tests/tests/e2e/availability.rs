//! A group with a member that can serve is never left without a primary:
//! two faults in a row, a promote hook that fails everywhere and then
//! recovers, a fresh primary whose check fails at once.

use serde_json::Value;
use tests::checker::{self, Inflicted};
use tests::proxy::Mode;
use tests::{Cluster, FAST, member, now_ns};

/// The lease of the FAST settings, in nanoseconds.
const LEASE_NS: u128 = 1_000_000_000;

#[derive(Clone, Copy)]
enum SecondFault {
    Freeze,
    Kill,
}

/// n1 is cut off (n2 takes over), comes back, and soon after n2 dies or
/// freezes. n1 failed a moment ago, and the default failback delay (60 s)
/// is far from over: it must still be promoted at the end of n2's lease,
/// since nobody else can serve. The wait is bounded by the harness's
/// patience (30 s), well under the failback delay.
fn partition_then_second_fault(members: usize, fault: SecondFault) {
    let mut c = Cluster::start();
    c.start_agent_proxied("n1", 7);
    c.start_agent("n2");
    let names: Vec<&str> = ["n1", "n2", "n3"][..members].to_vec();
    if members == 3 {
        c.start_agent("n3");
    }
    c.wait_nodes(&names);
    c.add_group_with("g", &names, &FAST);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");

    c.proxy("n1").set(Mode::Blackhole);
    c.wait_primary("g", "n2");
    c.proxy("n1").set(Mode::Pass);
    c.wait_connected("g", &["n1"]);
    let g = c.group("g");
    assert_eq!(member(&g, "n1")["recently_failed"], true, "{g}");
    let why = member(&g, "n1")["why_not"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(why.contains("recently failed"), "{why}");

    let mut inflicted = Vec::new();
    if members == 3 {
        // The one member that never failed is gone too.
        let at_ns = c.kill_agent("n3");
        inflicted.push(Inflicted::Killed {
            node: "n3".into(),
            at_ns,
        });
    }
    match fault {
        SecondFault::Freeze => {
            let from_ns = c.freeze_agent("n2");
            let g = c.wait_primary("g", "n1");
            // The fault lasts past n2's whole lease, so that the checker
            // knows n2 cannot have acted through it.
            while now_ns() - from_ns <= LEASE_NS {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let to_ns = c.thaw_agent("n2");
            c.wait_hook("n2 stops acting on waking", |h| {
                h.node == "n2" && h.role != "primary" && h.at_ns > to_ns
            });
            inflicted.push(Inflicted::Frozen {
                node: "n2".into(),
                from_ns,
                to_ns,
            });
            assert_eq!(g["phase"], "active", "{g}");
        }
        SecondFault::Kill => {
            let at_ns = c.kill_agent("n2");
            inflicted.push(Inflicted::Killed {
                node: "n2".into(),
                at_ns,
            });
            c.wait_primary("g", "n1");
        }
    }
    c.wait_hook("n1 acts as primary again", |h| {
        h.node == "n1" && h.role == "primary" && h.epoch > 1
    });
    let verdict = checker::check(&checker::read_role_logs(c.dir.path()), &inflicted, LEASE_NS);
    assert!(verdict.violations.is_empty(), "{:?}", verdict.violations);
}

#[test]
fn two_members_partition_then_freeze_fails_over_to_the_member_that_failed_first() {
    partition_then_second_fault(2, SecondFault::Freeze);
}

#[test]
fn two_members_partition_then_kill_fails_over_to_the_member_that_failed_first() {
    partition_then_second_fault(2, SecondFault::Kill);
}

#[test]
fn three_members_partition_then_freeze_fails_over_to_the_member_that_failed_first() {
    partition_then_second_fault(3, SecondFault::Freeze);
}

#[test]
fn three_members_partition_then_kill_fails_over_to_the_member_that_failed_first() {
    partition_then_second_fault(3, SecondFault::Kill);
}

/// A hook that records like the harness's, and fails when asked to become
/// primary while the file `fail-$FAILOVER_NODE` exists.
fn failing_hook(c: &Cluster) -> std::path::PathBuf {
    let path = c.path("failing-hook.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n{} \"$@\"\n[ \"$FAILOVER_ROLE\" != primary ] || [ ! -e {}/fail-$FAILOVER_NODE ]\n",
            c.path("hook.sh").display(),
            c.dir.path().display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap();
    path
}

#[test]
fn promote_hooks_failing_everywhere_are_retried_with_backoff_until_one_recovers() {
    let mut c = Cluster::start();
    let hook = failing_hook(&c);
    for n in ["n1", "n2"] {
        std::fs::write(c.path(&format!("fail-{n}")), "").unwrap();
        let config = c.agent_config(n, "");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &c.path("hook.sh").display().to_string(),
            &hook.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        c.start_agent_with(n, &config);
    }
    c.wait_nodes(&["n1", "n2"]);
    let mut settings = FAST.to_vec();
    settings.extend(["--min-failover-interval", "1s", "--failback-delay", "4s"]);
    c.add_group_with("g", &["n1", "n2"], &settings);

    // Both fail; the group is retried rather than left dark, and group
    // show says why nobody holds the role.
    let g = c.wait_until("both promote hooks failed twice", || {
        let failed = events(&c, "promote_failed");
        (failed >= 4).then(|| c.group("g"))
    });
    let whys: Vec<String> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["why_not"].as_str().map(str::to_owned))
        .collect();
    assert!(
        whys.iter().any(|w| w.contains("promote hook failed")),
        "{g}"
    );
    let retried = c
        .ctl_json(&["events", "--group", "g"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "promoted" && e["reason"].as_str().unwrap_or("").contains("retrying")
        })
        .count();
    assert!(retried >= 2, "every retry is an event");

    // n2's service recovers: the next retry sticks.
    std::fs::remove_file(c.path("fail-n2")).unwrap();
    let g = c.wait_until("n2 holds the role", || {
        let g = c.group("g");
        (g["primary"] == "n2" && g["phase"] == "active").then_some(g)
    });
    c.wait_hook("n2's primary hook succeeded", |h| {
        h.node == "n2" && h.role == "primary"
    });
    let failed_before = events(&c, "promote_failed");
    // It keeps the role: no more failures, no more moves.
    c.wait_until("n2 is still primary a lease later", || {
        let later = c.group("g");
        (later["epoch"] == g["epoch"] && later["primary"] == "n2").then_some(())
    });
    assert_eq!(events(&c, "promote_failed"), failed_before);
}

fn events(c: &Cluster, kind: &str) -> usize {
    c.ctl_json(&["events", "--group", "g", "--limit", "0"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .count()
}

#[test]
fn a_primary_elected_a_moment_ago_whose_check_fails_is_replaced_without_the_rate_limit() {
    let mut c = Cluster::start();
    for n in ["n1", "n2"] {
        let check = format!(
            "\n[[checks]]\nname = \"svc\"\nexec = \"test ! -e {}/down-{n}\"\ninterval = \"100ms\"\n\
             timeout = \"100ms\"\nrise = 1\nfall = 1\n",
            c.dir.path().display()
        );
        let config = c.agent_config(n, &check);
        c.start_agent_with(n, &config);
    }
    c.wait_nodes(&["n1", "n2"]);
    let mut settings = FAST.to_vec();
    // A rate limit longer than the harness's patience: only a move that
    // is not rate-limited can pass this test.
    settings.extend(["--min-failover-interval", "1h"]);
    c.add_group_with("g", &["n1", "n2"], &settings);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    std::fs::write(c.path("down-n1"), "").unwrap();
    let g = c.wait_primary("g", "n2");
    assert_eq!(member(&g, "n1")["healthy"], Value::Bool(false));
    assert!(
        member(&g, "n1")["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("failing check svc")),
        "{g}"
    );
    assert_eq!(events(&c, "primary_unhealthy"), 1);
}
