//! failoverctl's habits: an overview, watching, confirmations, warnings,
//! completions and manual pages, and one clean line per error.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tests::{Cluster, FAST, bin};

#[test]
fn status_shows_every_group_and_watch_repeats_it() {
    let mut c = Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.add_group_with("web", &["rec-2"], &FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");

    let table = c.ctl_ok(&["status"]);
    for expected in [
        "GROUP",
        "db",
        "web",
        "rec-1",
        "rec-2",
        "primary",
        "disconnected",
    ] {
        assert!(table.contains(expected), "{expected} in:\n{table}");
    }
    assert!(
        !table.contains('\x1b'),
        "no colour off a terminal:\n{table}"
    );
    let json = c.ctl_json(&["status"]);
    assert_eq!(
        json,
        c.ctl_json(&["group", "list"]).clone(),
        "the same JSON as group list"
    );

    // --watch: the overview again and again, until interrupted.
    let mut watch = c
        .ctl_command()
        .args(["status", "--watch", "500ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut frames = 0;
    for line in lines {
        if line.unwrap().contains("GROUP") {
            frames += 1;
            if frames == 3 {
                break;
            }
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(frames, 3, "the overview was shown again");

    // group show: when the primary took over, a lost member as disconnected.
    let show = c.ctl_ok(&["group", "show", "db"]);
    assert!(show.contains("primary since"), "{show}");
    assert!(
        show.lines()
            .any(|l| l.contains("rec-2") && l.contains("disconnected")),
        "{show}"
    );
}

#[test]
fn destructive_commands_ask_first_unless_yes() {
    let mut c = Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);

    // No terminal to ask on: refused, nothing changed.
    let out = c.ctl(&["group", "takeover", "db", "--to", "rec-2"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("healthy primary rec-1") && out.stderr.contains("--yes"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert_eq!(c.group("db")["primary"], "rec-1");
    let out = c.ctl(&["group", "delete", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(c.group("db")["name"], "db", "still there");

    c.ctl_ok(&["group", "takeover", "db", "--to", "rec-2", "--yes"]);
    c.wait_primary("db", "rec-2");
    c.ctl_ok(&["group", "delete", "db", "--yes"]);
    let out = c.ctl(&["group", "show", "db"]);
    assert!(!out.status.success(), "deleted");
}

#[test]
fn adding_a_member_that_never_connected_warns_of_a_typo() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.wait_nodes(&["rec-1"]);
    let out = c.ctl(&[
        "group", "add", "db", "--member", "rec-l", "--member", "rec-1",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: rec-l has not connected"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("warning: rec-1"),
        "rec-1 is connected: {}",
        out.stderr
    );
    let out = c.ctl(&["group", "member", "add", "db", "rec-9"]);
    assert!(
        out.stderr.contains("warning: rec-9 has not connected"),
        "{}",
        out.stderr
    );
}

#[test]
fn events_follow_goes_on_across_a_coordinator_restart() {
    let mut c = Cluster::start();
    c.add_group("db", &["rec-1"]);
    let mut follow = c
        .ctl_command()
        .args(["events", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = tests::lines_of(follow.stdout.take().unwrap());
    let next = || lines.recv_timeout(tests::PATIENCE).expect("an event line");
    assert!(next().contains("group_created"));
    c.kill_coordinator();
    c.start_coordinator();
    c.add_group("web", &["rec-2"]);
    let line = next();
    assert!(
        line.contains("web") && line.contains("group_created"),
        "{line}"
    );
    assert!(follow.try_wait().unwrap().is_none(), "still following");
    let _ = follow.kill();
    let output = follow.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

#[test]
fn events_since_a_time_or_a_while_ago() {
    let c = Cluster::start();
    c.add_group("db", &["rec-1"]);
    let recent = c.ctl_json(&["events", "--since", "1h"]);
    assert!(!recent.as_array().unwrap().is_empty(), "{recent}");
    let future = c.ctl_json(&["events", "--since", "2999-01-01T00:00:00Z"]);
    assert!(future.as_array().unwrap().is_empty(), "{future}");
    let out = c.ctl(&["events", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("neither a time"), "{}", out.stderr);
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_definitions() {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(bin(program)).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run("failoverctl", &["completions", shell]);
        assert!(script.contains("takeover"), "{shell}: {script}");
    }
    assert!(run("failoverctl", &["man"]).contains(".TH failoverctl 1"));
    let pages = tempfile::tempdir().unwrap();
    run(
        "failoverctl",
        &["man", "--dir", pages.path().to_str().unwrap()],
    );
    let page = std::fs::read_to_string(pages.path().join("failoverctl-group-add.1")).unwrap();
    assert!(page.contains("member"), "a page per subcommand: {page}");
    assert!(run("failover-coordinator", &["--man-page"]).contains(".TH failover-coordinator 1"));
    assert!(run("failover-agent", &["--man-page"]).contains(".TH failover-agent 1"));
    // clap's hints are kept.
    let out = Command::new(bin("failoverctl"))
        .args(["stauts"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("status"));
}

#[test]
fn pointed_at_the_http_port_failoverctl_says_so_in_one_line() {
    let c = Cluster::start();
    let out = c
        .ctl_command_at(&format!("http://{}", c.http_addr()))
        .args(["group", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("HTTP listener"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Nothing listening: one line, each cause once.
    let out = c
        .ctl_command_at("http://127.0.0.1:1")
        .args(["group", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("tcp connect error").count(), 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
