//! Bad input gets a clear one-line error, a non-zero exit, and changes
//! nothing: not the group, not the event log.

use std::process::Command;

use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use tests::{Cluster, bin, member_order};

fn snapshot(c: &Cluster) -> (serde_json::Value, usize) {
    let g = c.group("recorders");
    let state = serde_json::json!({
        "epoch": g["epoch"],
        "primary": g["primary"],
        "members": member_order(&g),
        "policy": g["policy"],
    });
    let events = c.ctl_json(&["events", "--limit", "0"]);
    (state, events.as_array().expect("array").len())
}

#[test]
fn failoverctl_refuses_bad_input_and_nothing_changes() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.start_agent("rec-2");
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    let before = snapshot(&c);

    let cases: &[(&[&str], &str)] = &[
        (
            &["group", "add", "recorders", "--member", "rec-1"],
            "already exists",
        ),
        (
            &["group", "add", "x", "--member", "a", "--member", "a"],
            "listed twice",
        ),
        (
            &["group", "add", "Bad_Name", "--member", "a"],
            "not allowed",
        ),
        (&["group", "add", "x", "--member", "Rec 1"], "not allowed"),
        (&["group", "add", "x"], "--member"),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--failover-timeout",
                "0s",
            ],
            "greater than zero",
        ),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--failover-timeout",
                "-1s",
            ],
            "-1",
        ),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--failover-timeout",
                "10ms",
            ],
            "between",
        ),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--failover-timeout",
                "3 parsecs",
            ],
            "parsecs",
        ),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--heartbeat-interval",
                "2s",
                "--failover-timeout",
                "3s",
            ],
            "at least twice",
        ),
        (
            &[
                "group",
                "add",
                "x",
                "--member",
                "a",
                "--standby-mode",
                "lukewarm",
            ],
            "lukewarm",
        ),
        (
            &[
                "group",
                "set",
                "recorders",
                "--shutdown-grace",
                "18446744073709611s 616ms",
            ],
            "too long",
        ),
        (
            &["group", "set", "recorders", "--shutdown-grace", "500us"],
            "whole number of milliseconds",
        ),
        (&["group", "show", "nope"], "does not exist"),
        (&["group", "delete", "nope", "--yes"], "does not exist"),
        (
            &["group", "promote", "nope", "--to", "rec-1"],
            "does not exist",
        ),
        (
            &["group", "promote", "recorders", "--to", "rec-3"],
            "not connected",
        ),
        (
            &["group", "promote", "recorders", "--to", "rec-9"],
            "not a member",
        ),
        (
            &["group", "member", "add", "recorders", "rec-2"],
            "already a member",
        ),
        (
            &[
                "group",
                "member",
                "add",
                "recorders",
                "rec-9",
                "--position",
                "7",
            ],
            "out of range",
        ),
        (
            &["group", "member", "add", "recorders", "rec_9"],
            "not allowed",
        ),
        (
            &["group", "member", "add", "nope", "rec-9"],
            "does not exist",
        ),
        (
            &["group", "member", "remove", "recorders", "rec-9"],
            "not a member",
        ),
        (
            &["group", "member", "remove", "recorders", "rec-1"],
            "is the primary",
        ),
        (
            &[
                "group",
                "member",
                "move",
                "recorders",
                "rec-2",
                "--position",
                "3",
            ],
            "out of range",
        ),
        (
            &[
                "group",
                "member",
                "move",
                "recorders",
                "rec-2",
                "--position",
                "-1",
            ],
            "-1",
        ),
        (
            &[
                "group",
                "member",
                "move",
                "recorders",
                "rec-9",
                "--position",
                "0",
            ],
            "not a member",
        ),
        (&["nodes", "list"], "nodes"),
    ];
    for (args, expect) in cases {
        let out = c.ctl(args);
        assert!(!out.status.success(), "{args:?} succeeded:\n{}", out.stdout);
        assert_eq!(
            out.stderr.lines().count(),
            1,
            "{args:?} must print one line, got:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(expect),
            "{args:?}: expected {expect:?} in {}",
            out.stderr
        );
    }
    assert_eq!(snapshot(&c), before, "a refused command changed something");
}

#[test]
fn an_unreachable_coordinator_is_a_one_line_error() {
    let port = tests::free_port();
    let out = Command::new(bin("failoverctl"))
        .args([
            "--coordinator",
            &format!("http://127.0.0.1:{port}"),
            "group",
            "list",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the coordinator"),
        "{stderr}"
    );
}

#[test]
fn malformed_config_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "failover-agent",
            "node_id = \"rec-1\"\nhookz = 1\n",
            "hookz",
        ),
        (
            "failover-agent",
            "coordinator = \"http://127.0.0.1:7400\"\n",
            "node_id is missing",
        ),
        (
            "failover-agent",
            "node_id = \"rec-1\"\n[hooks]\ntimeout = \"0s\"\n",
            "hooks.timeout",
        ),
        (
            "failover-agent",
            "node_id = \"rec-1\"\ncoordinator = \"127.0.0.1:7400\"\n",
            "http://HOST:PORT",
        ),
        (
            "failover-coordinator",
            "listn = \"127.0.0.1:7400\"\n",
            "listn",
        ),
        (
            "failover-coordinator",
            "[defaults]\nfailover_timeout = \"0s\"\n",
            "failover-timeout",
        ),
        ("failover-coordinator", "clock_drift = 3.0\n", "clock_drift"),
    ];
    for (i, (binary, text, expect)) in cases.iter().enumerate() {
        let out = tests::check_config(binary, dir.path(), &format!("{i}.toml"), text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{binary} accepted {text:?}");
        assert!(stderr.contains(expect), "{binary} {text:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_agent_sessions_get_a_clear_status() {
    let c = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let mut client = AgentServiceClient::connect(c.url()).await.unwrap();

    let heartbeat_first = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
            syncs: Vec::new(),
            seq: 1,
            checks: vec![],
            roles: vec![],
        })),
    };
    let status = first_error(&mut client, heartbeat_first).await;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("Hello"), "{status:?}");

    let bad_name = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(tests::raw::hello(
            "Not A Node",
            vec![],
        ))),
    };
    let status = first_error(&mut client, bad_name).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let nodes = tokio::task::spawn_blocking(move || c.ctl_json(&["node", "list"]))
        .await
        .unwrap();
    assert_eq!(
        nodes,
        serde_json::json!([]),
        "a refused session registered a node"
    );
}

/// Opens a session, sends one message, and returns the error it ends with.
async fn first_error(
    client: &mut AgentServiceClient<tonic::transport::Channel>,
    message: pb::AgentMessage,
) -> tonic::Status {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(message).await.unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the stream opens")
        .into_inner();
    match inbound.message().await {
        Ok(Some(m)) => panic!("expected an error, got {m:?}"),
        Ok(None) => panic!("the stream ended without an error"),
        Err(status) => status,
    }
}
