//! Day-to-day operations: node list, the event stream, deleting a group,
//! probes, clean shutdown, and the shipped example configuration files.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::Value;
use tests::{Cluster, bin, epoch, http_get, workspace_root};

#[test]
fn node_list_shows_every_agent_and_its_roles() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.start_agent("rec-2");
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-1", "rec-2", "rec-3"]);
    let nodes = c.ctl_json(&["node", "list"]);
    let by_name = |n: &str| -> Value {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["node"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing from {nodes}"))
    };
    let rec1 = by_name("rec-1");
    assert_eq!(rec1["connected"], Value::Bool(true));
    assert_eq!(rec1["groups"][0]["role"], "primary");
    assert!(rec1["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(by_name("rec-2")["groups"][0]["role"], "secondary");
    // A member whose agent never connected is listed, disconnected.
    assert_eq!(by_name("rec-3")["connected"], Value::Bool(false));
    let table = c.ctl_ok(&["node", "list"]);
    assert!(table.contains("recorders:primary"), "{table}");
}

#[test]
fn events_follow_streams_changes_as_they_happen() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.wait_nodes(&["rec-1"]);
    let mut follow = Command::new(bin("failoverctl"))
        .args([
            "--coordinator",
            &c.url(),
            "events",
            "--follow",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("failoverctl runs");
    let stdout = follow.stdout.take().unwrap();
    c.add_group("recorders", &["rec-1"]);
    let mut lines = BufReader::new(stdout).lines();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let line = lines.next().expect("a line").expect("readable");
        let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
        kinds.push(event["kind"].as_str().unwrap().to_owned());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(kinds, ["group_created", "promoted"]);
}

#[test]
fn deleting_a_group_steps_its_primary_down_and_epochs_continue() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.wait_nodes(&["rec-1"]);
    c.add_group("recorders", &["rec-1"]);
    c.wait_hook("rec-1 promoted", |h| h.role == "primary" && h.epoch == 1);
    c.ctl_ok(&["group", "delete", "recorders"]);
    let down = c.wait_hook("rec-1 steps down", |h| h.role == "secondary");
    assert_eq!(down.previous, "primary");
    let list = c.ctl_json(&["group", "list"]);
    assert_eq!(list, serde_json::json!([]));

    // Agents that missed the deletion still hold the old epochs: a group
    // created again under the same name starts above them.
    let g = c.add_group("recorders", &["rec-1"]);
    assert!(epoch(&g) > 2, "epoch {} restarted", epoch(&g));
    c.wait_hook("rec-1 promoted again", |h| {
        h.role == "primary" && h.epoch == epoch(&g)
    });
}

#[test]
fn probes_answer_and_sigterm_stops_everything_cleanly() {
    let mut c = Cluster::start();
    assert_eq!(http_get(c.http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(c.http, "/readyz").map(|r| r.0), Some(200));
    c.start_agent("rec-1");
    c.wait_nodes(&["rec-1"]);

    let mut agent = c.agents.remove("rec-1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(
        agent.wait_exit().success(),
        "agent exit:\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("agent stopping"));

    let mut coordinator = c.coordinator.take().unwrap();
    coordinator.signal(Signal::SIGTERM);
    assert!(
        coordinator.wait_exit().success(),
        "{}",
        coordinator.log_text()
    );
    assert!(coordinator.log_text().contains("coordinator stopped"));
}

#[test]
fn the_shipped_example_configurations_are_valid() {
    let deploy = workspace_root().join("deploy");
    for (binary, file) in [
        ("failover-coordinator", "coordinator.example.toml"),
        ("failover-coordinator", "kubernetes/coordinator.toml"),
        ("failover-agent", "agent.example.toml"),
    ] {
        let out = Command::new(bin(binary))
            .arg("--config")
            .arg(deploy.join(file))
            .arg("--check-config")
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_agent_installer_installs_a_working_configuration() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_root().join("deploy/install-agent.sh"))
        .args([
            "--node-id",
            "rec-7",
            "--coordinator",
            "http://127.0.0.1:7400",
        ])
        .args(["--hook", "/usr/local/bin/on-role-change"])
        .arg("--binary")
        .arg(bin("failover-agent"))
        .arg("--root")
        .arg(root.path())
        .output()
        .expect("installer runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = root.path().join("usr/local/bin/failover-agent");
    let config = root.path().join("etc/failover/agent.toml");
    assert!(installed.exists());
    assert!(
        root.path()
            .join("etc/systemd/system/failover-agent.service")
            .exists()
    );
    let check = Command::new(&installed)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("agent runs");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success());
    assert!(
        printed.contains("rec-7") && printed.contains("on-role-change"),
        "{printed}"
    );

    // A second run keeps the operator's configuration.
    std::fs::write(&config, "node_id = \"rec-8\"\n").unwrap();
    let again = Command::new(workspace_root().join("deploy/install-agent.sh"))
        .args(["--node-id", "rec-7", "--binary"])
        .arg(bin("failover-agent"))
        .arg("--root")
        .arg(root.path())
        .output()
        .expect("installer runs");
    assert!(again.status.success());
    assert!(std::fs::read_to_string(&config).unwrap().contains("rec-8"));
}

#[test]
fn metrics_report_sessions_commits_and_the_failover_split() {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-1", "rec-2"]);
    c.kill_agent("rec-1");
    c.wait_primary("recorders", "rec-2");
    let (code, text) = http_get(c.http, "/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    assert_eq!(value("failover_agent_sessions"), 1.0);
    assert_eq!(value("failover_promotions_total"), 2.0);
    assert_eq!(value("failover_events_total{kind=\"primary_lapsed\"}"), 1.0);
    // Only the failover is split into detect, decide and promote.
    for name in ["detect", "decide", "promote", "coordinator_overhead"] {
        assert_eq!(
            value(&format!("failover_{name}_seconds_count")),
            1.0,
            "{name}"
        );
    }
    // Creation and first election share one commit; the failover is one more.
    assert_eq!(value("failover_store_commits_total"), 2.0);
    assert!(value("failover_heartbeats_total") > 0.0);
}
