//! Per-group policies through failoverctl and real agents: settings,
//! auto-failover off with takeover/restore, delayed failback, health
//! checks, failing promote hooks, maintenance, shutdown grace, standby
//! modes, and the connect/startup timeouts.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::Signal;
use serde_json::Value;
use tests::{Cluster, FAST, epoch, member};

const NODES: [&str; 3] = ["rec-1", "rec-2", "rec-3"];

fn cluster() -> Cluster {
    let mut c = Cluster::start();
    for n in NODES {
        c.start_agent(n);
    }
    c.wait_nodes(&NODES);
    c
}

fn add(c: &Cluster, extra: &[&str]) -> Value {
    let mut settings: Vec<&str> = FAST.to_vec();
    settings.extend(extra);
    c.add_group_with("recorders", &NODES, &settings)
}

fn events(c: &Cluster) -> Vec<Value> {
    c.ctl_json(&["events", "--group", "recorders", "--limit", "0"])
        .as_array()
        .expect("array")
        .clone()
}

fn has_event(c: &Cluster, kind: &str) -> bool {
    events(c).iter().any(|e| e["kind"] == kind)
}

#[test]
fn settings_are_set_shown_checked_and_kept_across_a_restart() {
    let mut c = cluster();
    let g = add(
        &c,
        &[
            "--auto-failover",
            "false",
            "--failback",
            "delayed",
            "--failback-delay",
            "30s",
            "--failback-window",
            "02:00-04:00",
            "--standby-mode",
            "warm",
            "--shutdown-grace",
            "5s",
            "--abnormal-timeout",
            "2s",
            "--min-failover-interval",
            "20s",
            "--connect-timeout",
            "10s",
            "--startup-timeout",
            "15s",
            "--fencing",
            "none",
            "--max-sync-lag",
            "45s",
        ],
    );
    let expected = serde_json::json!({
        "heartbeat_interval": "100ms", "failover_timeout": "1s", "connect_timeout": "10s",
        "startup_timeout": "15s", "shutdown_grace": "5s", "abnormal_timeout": "2s",
        "auto_failover": false, "failback": "delayed", "failback_delay": "30s",
        "failback_window": "02:00-04:00", "min_failover_interval": "20s",
        "standby_mode": "warm", "fencing": "none", "max_sync_lag": "45s",
    });
    assert_eq!(g["policy"], expected);

    let g = c.ctl_json(&[
        "group",
        "set",
        "recorders",
        "--failover-timeout",
        "2s",
        "--failback",
        "never",
        "--failback-window",
        "none",
        "--auto-failover",
        "true",
        "--fencing",
        "strict",
    ]);
    assert_eq!(g["policy"]["failover_timeout"], "2s");
    assert_eq!(g["policy"]["failback"], "never");
    assert_eq!(g["policy"]["failback_window"], Value::Null);
    assert_eq!(g["policy"]["auto_failover"], true);
    assert_eq!(
        g["policy"]["standby_mode"], "warm",
        "untouched settings stay"
    );
    let table = c.ctl_ok(&["group", "show", "recorders"]);
    assert!(
        table.contains("failover-timeout=2s") && table.contains("standby-mode=warm"),
        "{table}"
    );
    assert!(has_event(&c, "policy_changed"));

    let before = c.group("recorders")["policy"].clone();
    for (args, expect) in [
        (&["--heartbeat-interval", "1500ms"][..], "at least twice"),
        (&["--failback-delay", "0s"], "greater than zero"),
        (
            &["--connect-timeout", "500ms"],
            "connect-timeout must be between 1s and 1h",
        ),
        (
            &["--startup-timeout", "2h"],
            "startup-timeout must be between",
        ),
        (
            &["--shutdown-grace", "2h"],
            "shutdown-grace must be between",
        ),
        (
            &["--abnormal-timeout", "61m"],
            "abnormal-timeout must be between",
        ),
        (
            &["--min-failover-interval", "3h"],
            "min-failover-interval must be between",
        ),
        (
            &["--failback-delay", "25h"],
            "failback-delay must be between",
        ),
        (&["--max-sync-lag", "25h"], "max-sync-lag must be between"),
        (&["--failback-window", "25:00-01:00"], "02:00-04:00"),
        (
            &["--failback-window", "01:00-02:00"],
            "set --failback delayed",
        ),
        (&["--auto-failover", "maybe"], "maybe"),
        (&["--failback", "sometimes"], "sometimes"),
        (&[], "nothing to change"),
    ] {
        let mut full = vec!["group", "set", "recorders"];
        full.extend(args);
        let out = c.ctl(&full);
        assert!(!out.status.success(), "{args:?} accepted");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{args:?}: {}", out.stderr);
    }
    assert_eq!(
        c.group("recorders")["policy"],
        before,
        "a refused change changed something"
    );

    c.kill_coordinator();
    c.start_coordinator();
    assert_eq!(c.group("recorders")["policy"], before);
}

#[test]
fn with_auto_failover_off_an_operator_takes_over_and_restores() {
    let mut c = cluster();
    add(&c, &["--auto-failover", "false", "--failback-delay", "1s"]);
    c.wait_hook("rec-1 promoted", |h| {
        h.node == "rec-1" && h.role == "primary"
    });

    c.kill_agent("rec-1");
    let g = c.wait_until("the alarm", || {
        let g = c.group("recorders");
        g["alarm"].is_string().then_some(g)
    });
    assert_eq!(g["primary"], Value::Null);
    assert_eq!(g["phase"], "no_primary");
    assert!(g["alarm"].as_str().unwrap().contains("takeover"), "{g}");
    // The lapse and the decision not to promote happen in one step: no
    // promotion has followed the lapse, and none will.
    let kinds: Vec<Value> = events(&c).iter().map(|e| e["kind"].clone()).collect();
    let lapsed = kinds
        .iter()
        .position(|k| k == "primary_lapsed")
        .expect("lapse recorded");
    assert!(
        !kinds[lapsed..].iter().any(|k| k == "promoted"),
        "{kinds:?}"
    );

    let g = c.ctl_json(&["group", "takeover", "recorders", "--yes"]);
    assert_eq!(g["primary"], "rec-2");
    assert_eq!(g["alarm"], Value::Null);
    c.wait_hook("rec-2 takes over", |h| {
        h.node == "rec-2" && h.role == "primary"
    });

    c.start_agent("rec-1");
    c.wait_connected("recorders", &["rec-1"]);
    // rec-1 failed here: restore goes back to it once it has been healthy
    // for the failback delay, and group show says so meanwhile.
    let g = c.group("recorders");
    assert!(
        member(&g, "rec-1")["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("recently failed")),
        "{g}"
    );
    c.wait_until("rec-1 qualifies again", || {
        (member(&c.group("recorders"), "rec-1")["qualifies"] == true).then_some(())
    });
    let g = c.ctl_json(&["group", "restore", "recorders"]);
    assert_eq!(
        g["primary"], "rec-1",
        "back to the highest-priority healthy member"
    );
    let down = c.wait_hook("rec-2 steps down", |h| {
        h.node == "rec-2" && h.role == "secondary" && h.previous == "primary"
    });
    let restored = epoch(&g);
    let up = c.wait_hook("rec-1 restored", |h| {
        h.node == "rec-1" && h.role == "primary" && h.epoch == restored
    });
    assert!(down.at_ns < up.at_ns);

    let g = c.ctl_json(&["group", "takeover", "recorders", "--to", "rec-3", "--yes"]);
    assert_eq!(g["primary"], "rec-3");
    let out = c.ctl(&["group", "takeover", "recorders", "--to", "rec-9", "--yes"]);
    assert!(out.stderr.contains("not a member"), "{}", out.stderr);
}

#[test]
fn delayed_failback_returns_the_role_once_the_member_has_been_healthy() {
    let mut c = cluster();
    add(
        &c,
        &[
            "--failback",
            "delayed",
            "--failback-delay",
            "2s",
            "--min-failover-interval",
            "0s",
        ],
    );
    c.kill_agent("rec-1");
    c.wait_primary("recorders", "rec-2");

    // Before the agent starts: the coordinator can only count rec-1
    // healthy later than this (its hook's own clock reading may come after
    // the coordinator's, by as much as a loaded machine delays a process).
    let rejoining = tests::now_ns();
    c.start_agent("rec-1");
    c.wait_hook("rec-1 rejoins", |h| {
        h.node == "rec-1" && h.role == "secondary"
    });
    let g = c.wait_primary("recorders", "rec-1");
    assert_eq!(
        epoch(&g),
        4,
        "one epoch to step rec-2 down, one to promote rec-1"
    );
    let promoted = c.wait_hook("rec-1 promoted again", |h| {
        h.node == "rec-1" && h.role == "primary" && h.epoch == 4
    });
    // A lower bound, which load can only make later.
    assert!(
        promoted.at_ns - rejoining >= 2_000_000_000,
        "failback before the delay"
    );
    assert!(
        events(&c)
            .iter()
            .any(|e| e["reason"].as_str().unwrap_or("").contains("failback"))
    );
}

/// An agent config whose check passes while the file `up-<node>` exists
/// (created here).
fn flag_check(c: &Cluster, node: &str) -> std::path::PathBuf {
    let flag = c.path(&format!("up-{node}"));
    std::fs::write(&flag, "").unwrap();
    let extra = format!(
        "\n[[checks]]\nname = \"service\"\nexec = \"test -f {}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n",
        flag.display()
    );
    c.agent_config(node, &extra)
}

#[test]
fn failing_health_checks_move_the_role_and_bar_secondaries() {
    let mut c = Cluster::start();
    for n in NODES {
        let config = flag_check(&c, n);
        c.start_agent_with(n, &config);
    }
    c.wait_nodes(&NODES);
    add(
        &c,
        &["--abnormal-timeout", "0s", "--min-failover-interval", "0s"],
    );
    c.wait_until("everyone healthy", || {
        let g = c.group("recorders");
        NODES
            .iter()
            .all(|n| member(&g, n)["healthy"] == true)
            .then_some(())
    });
    assert_eq!(c.group("recorders")["primary"], "rec-1");

    // rec-2's service dies: it is no longer eligible.
    std::fs::remove_file(c.path("up-rec-2")).unwrap();
    c.wait_until("rec-2 unhealthy", || {
        let g = c.group("recorders");
        (member(&g, "rec-2")["healthy"] == false).then_some(())
    });
    let nodes = c.ctl_json(&["node", "list"]);
    let rec2 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "rec-2")
        .unwrap();
    assert_eq!(rec2["checks"][0]["passing"], false);
    assert!(
        rec2["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("exited"),
        "{rec2}"
    );

    // The primary's service dies: its agent is alive, yet it is replaced,
    // by rec-3 (rec-2 is unhealthy).
    std::fs::remove_file(c.path("up-rec-1")).unwrap();
    let g = c.wait_primary("recorders", "rec-3");
    assert_eq!(member(&g, "rec-1")["connected"], true);
    assert!(has_event(&c, "primary_unhealthy"));
    let down = c.wait_hook("rec-1 steps down", |h| {
        h.node == "rec-1" && h.role == "secondary" && h.previous == "primary"
    });
    let up = c.wait_hook("rec-3 promoted", |h| {
        h.node == "rec-3" && h.role == "primary"
    });
    assert!(down.at_ns < up.at_ns);
}

/// A one-page HTTP server answering 200 or 503.
fn http_server(up: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let status = if up.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn tcp_and_http_checks_report_through_node_list() {
    let mut c = Cluster::start();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let http_port = http_server(up.clone());
    let extra = format!(
        "\n[[checks]]\nname = \"db\"\ntcp = \"{}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n\
         \n[[checks]]\nname = \"api\"\nhttp = \"http://127.0.0.1:{http_port}/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\ngroups = [\"recorders\"]\n",
        tcp.local_addr().unwrap()
    );
    let config = c.agent_config("rec-1", &extra);
    c.start_agent_with("rec-1", &config);
    let checks = |c: &Cluster| -> Value {
        let nodes = c.ctl_json(&["node", "list"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "rec-1")
            .map(|n| n["checks"].clone())
            .unwrap_or(Value::Null)
    };
    c.wait_until("both checks pass", || {
        let checks = checks(&c);
        (checks[0]["passing"] == true && checks[1]["passing"] == true).then_some(())
    });
    assert_eq!(checks(&c)[1]["groups"], serde_json::json!(["recorders"]));
    up.store(false, Ordering::SeqCst);
    c.wait_until("the HTTP check fails", || {
        let checks = checks(&c);
        let detail = checks[1]["detail"].as_str().unwrap_or("").to_owned();
        (checks[1]["passing"] == false && detail.contains("503")).then_some(())
    });
    drop(tcp);
    c.wait_until("the TCP check fails", || {
        (checks(&c)[0]["passing"] == false).then_some(())
    });
}

#[test]
fn a_failing_promote_hook_moves_the_role_on_and_all_failing_leaves_no_primary_between_retries() {
    let mut c = Cluster::start();
    // Hooks that record, then fail when asked to become primary.
    let failing = c.path("failing-hook.sh");
    std::fs::write(
        &failing,
        format!(
            "#!/bin/sh\n{} \"$@\"\n[ \"$FAILOVER_ROLE\" != primary ]\n",
            c.path("hook.sh").display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&failing)
        .status()
        .unwrap();
    for n in ["rec-1", "rec-2"] {
        let config = c.agent_config(n, "");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(
            &c.path("hook.sh").display().to_string(),
            &failing.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        c.start_agent_with(n, &config);
    }
    c.start_agent("rec-3");
    c.wait_nodes(&NODES);
    add(&c, &[]);
    // rec-1 fails, rec-2 fails, rec-3 (a working hook) ends up primary.
    let g = c.wait_primary("recorders", "rec-3");
    assert_eq!(member(&g, "rec-1")["recently_failed"], true);
    assert_eq!(member(&g, "rec-2")["recently_failed"], true);
    let failed = events(&c)
        .iter()
        .filter(|e| e["kind"] == "promote_failed")
        .count();
    assert_eq!(failed, 2);
    let promoted: Vec<String> = c
        .hooks()
        .iter()
        .filter(|h| h.role == "primary")
        .map(|h| h.node.clone())
        .collect();
    assert_eq!(promoted, ["rec-1", "rec-2", "rec-3"]);

    // All failing: a group of the two failing nodes has no primary between
    // retries (see availability.rs for the retries themselves).
    c.add_group_with("spare", &["rec-1", "rec-2"], &FAST);
    let g = c.wait_until("spare has no primary", || {
        let g = c.group("spare");
        (g["phase"] == "no_primary" && g["primary"].is_null()).then_some(g)
    });
    assert!(
        g["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["recently_failed"] == true),
        "{g}"
    );
}

#[test]
fn a_drained_member_is_switched_away_from_and_never_promoted() {
    let mut c = cluster();
    add(&c, &[]);
    let g = c.ctl_json(&["group", "member", "drain", "recorders", "rec-1"]);
    assert_eq!(
        g["primary"], "rec-2",
        "drain answers once the switchover is done"
    );
    assert_eq!(member(&g, "rec-1")["maintenance"], true);
    assert!(has_event(&c, "member_drained"));

    c.kill_agent("rec-2");
    let g = c.wait_primary("recorders", "rec-3");
    assert_eq!(member(&g, "rec-1")["role"], "secondary");
    let out = c.ctl(&["group", "promote", "recorders", "--to", "rec-1"]);
    assert!(out.stderr.contains("maintenance"), "{}", out.stderr);

    c.start_agent("rec-2");
    c.wait_connected("recorders", &["rec-2"]);
    let out = c.ctl(&["group", "member", "drain", "recorders", "rec-3"]);
    assert!(out.status.success(), "rec-2 can take over: {}", out.stderr);
    let out = c.ctl(&["group", "member", "drain", "recorders", "rec-2"]);
    assert!(
        out.stderr.contains("no other member can take over"),
        "{}",
        out.stderr
    );

    let g = c.ctl_json(&["group", "member", "undrain", "recorders", "rec-1"]);
    assert_eq!(member(&g, "rec-1")["maintenance"], false);
    let g = c.ctl_json(&["group", "promote", "recorders", "--to", "rec-1"]);
    assert_eq!(g["primary"], "rec-1");
}

#[test]
fn an_agent_stopped_with_no_grace_steps_down_and_the_role_moves_at_once() {
    let mut c = cluster();
    add(&c, &["--shutdown-grace", "0s"]);
    c.wait_hook("rec-1 promoted", |h| {
        h.node == "rec-1" && h.role == "primary"
    });
    let mut agent = c.agents.remove("rec-1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().success());
    let down = c.wait_hook("rec-1 steps down", |h| {
        h.node == "rec-1" && h.role == "secondary" && h.previous == "primary"
    });
    assert_eq!(down.epoch, 1, "it stepped down on its own, at its epoch");
    c.wait_primary("recorders", "rec-2");
    let kinds: Vec<Value> = events(&c).iter().map(|e| e["kind"].clone()).collect();
    assert!(
        !kinds.iter().any(|k| k == "primary_lapsed"),
        "a clean stop is not a lapse: {kinds:?}"
    );
    let stepped = events(&c)
        .into_iter()
        .find(|e| e["kind"] == "primary_stepped_down")
        .unwrap();
    assert!(
        stepped["reason"].as_str().unwrap().contains("stepped down"),
        "{stepped}"
    );
}

#[test]
fn an_agent_stopped_within_its_grace_keeps_the_role_when_it_returns() {
    let mut c = cluster();
    add(&c, &["--shutdown-grace", "1m"]);
    c.wait_hook("rec-1 promoted", |h| {
        h.node == "rec-1" && h.role == "primary"
    });
    let mut agent = c.agents.remove("rec-1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().success());
    c.wait_until("the goodbye is recorded", || {
        has_event(&c, "primary_left").then_some(())
    });
    let g = c.group("recorders");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-1"), 1));
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.node == "rec-1" && h.role == "secondary"),
        "no step-down with a grace"
    );

    c.start_agent("rec-1");
    c.wait_until("rec-1 acts as primary again", || {
        let g = c.group("recorders");
        (g["phase"] == "active" && member(&g, "rec-1")["connected"] == true).then_some(())
    });
    let g = c.group("recorders");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-1"), 1));
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.role == "primary" && h.node != "rec-1")
    );
}

#[test]
fn standby_modes_reach_the_hooks() {
    let c = cluster();
    add(&c, &["--standby-mode", "cold"]);
    let cold = c.wait_hook("rec-2 stands by", |h| {
        h.node == "rec-2" && h.role == "secondary"
    });
    assert_eq!(cold.standby_mode, "cold");
    c.ctl_ok(&["group", "set", "recorders", "--standby-mode", "warm"]);
    c.wait_hook("rec-2 is told to stand by warm", |h| {
        h.node == "rec-2" && h.standby_mode == "warm"
    });
    c.wait_hook("rec-3 is told to stand by warm", |h| {
        h.node == "rec-3" && h.standby_mode == "warm"
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_sessions_are_closed_by_the_connect_and_startup_timeouts() {
    use proto::v1 as pb;
    use proto::v1::agent_service_client::AgentServiceClient;

    let c = tokio::task::spawn_blocking(|| {
        let c = Cluster::start();
        let mut settings = FAST.to_vec();
        settings.extend(["--connect-timeout", "1s", "--startup-timeout", "1s"]);
        c.add_group_with("recorders", &["rec-1"], &settings);
        c
    })
    .await
    .unwrap();
    let mut client = AgentServiceClient::connect(c.url()).await.unwrap();

    // A stream that never says Hello.
    let (_quiet, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(1);
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = inbound.message().await.expect_err("closed with an error");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("Hello"), "{status:?}");

    // A Hello, then nothing: closed after the startup timeout.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(tests::raw::hello(
            "rec-1",
            vec![],
        ))),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the session stayed open without heartbeats");
    let nodes = tokio::task::spawn_blocking(move || c.ctl_json(&["node", "list"]))
        .await
        .unwrap();
    assert_eq!(nodes[0]["connected"], false, "{nodes}");
    drop(tx);
}
