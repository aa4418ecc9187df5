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
    c.ctl_ok(&["group", "delete", "recorders", "--yes"]);
    let down = c.wait_hook("rec-1 steps down", |h| h.role == "secondary");
    assert_eq!(down.previous, "primary");
    let list = c.ctl_json(&["group", "list"]);
    assert_eq!(list, serde_json::json!([]));

    // Agents that missed the deletion still hold the old epochs: a group
    // created again under the same name starts above them.
    let g = c.add_group("recorders", &["rec-1"]);
    assert!(epoch(&g) >= 2, "epoch {} restarted", epoch(&g));
    let again = c.wait_hook("rec-1 promoted again", |h| {
        h.role == "primary" && h.epoch > 1
    });
    assert!(again.epoch > 2, "epoch {} restarted", again.epoch);
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
    // The agent's example names files on the node (/etc/failover/...):
    // check it with those paths under a scratch root, as installed there.
    let root = tempfile::tempdir().unwrap();
    let hook = root.path().join("etc/failover/on-role-change.sh");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::copy(deploy.join("on-role-change.example.sh"), &hook).unwrap();
    let text = std::fs::read_to_string(deploy.join("agent.example.toml")).unwrap();
    let agent_example = root.path().join("agent.toml");
    std::fs::write(
        &agent_example,
        text.replace("= \"/", &format!("= \"{}/", root.path().display())),
    )
    .unwrap();
    // The Kubernetes one names the TLS Secret's files: made here by
    // `failoverctl pki init`, whose file names the manifests expect.
    let pki = root.path().join("tls");
    tests::tls::pki(&["init", &pki.display().to_string()]);
    let overlay = |name: &str| {
        let path = format!("kubernetes/overlays/{name}/coordinator.toml");
        let text = std::fs::read_to_string(deploy.join(path)).unwrap();
        let file = root.path().join(format!("kubernetes-{name}.toml"));
        // The pods give each replica's address with --advertise-url.
        let text = match name {
            "ha" => format!("advertise_url = \"https://replica-0.example:7400\"\n{text}"),
            _ => text,
        };
        std::fs::write(
            &file,
            text.replace("/etc/failover/tls/", &format!("{}/", pki.display())),
        )
        .unwrap();
        file
    };
    for (binary, file) in [
        (
            "failover-coordinator",
            deploy.join("coordinator.example.toml"),
        ),
        ("failover-coordinator", overlay("single")),
        ("failover-coordinator", overlay("ha")),
        ("failover-agent", agent_example),
    ] {
        let file = file.display().to_string();
        let out = Command::new(bin(binary))
            .arg("--config")
            .arg(&file)
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

fn install(root: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(workspace_root().join("deploy/install-agent.sh"))
        .args(args)
        .arg("--binary")
        .arg(bin("failover-agent"))
        .arg("--root")
        .arg(root)
        .output()
        .expect("installer runs")
}

#[test]
fn the_agent_installer_installs_a_working_configuration() {
    let root = tempfile::tempdir().unwrap();
    let out = install(
        root.path(),
        &[
            "--node-id",
            "rec-7",
            "--coordinator",
            "http://127.0.0.1:7400",
            "--hook",
            "/usr/local/bin/on-role-change",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = root.path().join("usr/local/bin/failover-agent");
    let config = root.path().join("etc/failover/agent.toml");
    assert!(installed.exists());
    let unit = root
        .path()
        .join("etc/systemd/system/failover-agent.service");
    assert!(
        std::fs::read_to_string(unit)
            .unwrap()
            .contains("RestartPreventExitStatus=3")
    );
    // The hook did not exist: the example hook is installed there.
    let hook = root.path().join("usr/local/bin/on-role-change");
    assert!(std::fs::read_to_string(&hook).unwrap().starts_with("#!"));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("rec-7") && text.contains("/usr/local/bin/on-role-change"),
        "{text}"
    );
    assert!(root.path().join("var/lib/failover-agent").is_dir());

    // A second run for the same node keeps the operator's configuration.
    std::fs::write(&config, "node_id = \"rec-7\"\n# edited\n").unwrap();
    let again = install(root.path(), &["--node-id", "rec-7"]);
    assert!(again.status.success());
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("# edited")
    );
}

#[test]
fn the_agent_installer_refuses_another_nodes_config_unless_forced() {
    let root = tempfile::tempdir().unwrap();
    assert!(
        install(root.path(), &["--node-id", "rec-7"])
            .status
            .success()
    );
    let config = root.path().join("etc/failover/agent.toml");
    let before = std::fs::read_to_string(&config).unwrap();

    let other = install(root.path(), &["--node-id", "rec-8"]);
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("rec-7") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);

    let forced = install(root.path(), &["--node-id", "rec-8", "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("\"rec-8\"")
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/failover/agent.toml.bak")).unwrap(),
        before
    );
}

#[test]
fn the_agent_installer_installs_certificates_and_keeps_them_on_a_rerun() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    let pki_arg = pki.display().to_string();
    tests::tls::pki(&["init", &pki_arg]);
    tests::tls::pki(&["issue", &pki_arg, "--node", "rec-7"]);
    tests::tls::pki(&["issue", &pki_arg, "--node", "rec-8"]);
    let target = root.path().join("target");
    let flags = |node: &str| -> Vec<String> {
        vec![
            "--node-id".into(),
            "rec-7".into(),
            "--coordinator".into(),
            "https://127.0.0.1:7400".into(),
            "--tls-ca".into(),
            pki.join("ca.pem").display().to_string(),
            "--tls-cert".into(),
            pki.join(format!("node-{node}.pem")).display().to_string(),
            "--tls-key".into(),
            pki.join(format!("node-{node}-key.pem"))
                .display()
                .to_string(),
        ]
    };
    let run = |node: &str| {
        let args = flags(node);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        install(&target, &args)
    };
    let out = run("rec-7");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(target.join("etc/failover/agent.toml")).unwrap();
    assert!(
        config.contains("[tls]") && config.contains("/etc/failover/tls/node.pem"),
        "{config}"
    );
    let key = target.join("etc/failover/tls/node-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The same command again is fine; another node's certificate is not
    // (that one would also be refused by the check: it names rec-8).
    assert!(run("rec-7").status.success());
    let other = run("rec-8");
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("--force"));
}

#[test]
fn a_failed_install_leaves_no_half_written_config() {
    let root = tempfile::tempdir().unwrap();
    // An invalid coordinator URL: the new configuration is refused.
    let out = install(
        root.path(),
        &["--node-id", "rec-7", "--coordinator", "not a url"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    // Nothing at all: no binary, no directories, no config.
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // With a config already there, a refused re-install keeps it as it was.
    assert!(
        install(root.path(), &["--node-id", "rec-7"])
            .status
            .success()
    );
    let config = root.path().join("etc/failover/agent.toml");
    let before = std::fs::read_to_string(&config).unwrap();
    let again = install(
        root.path(),
        &[
            "--node-id",
            "rec-7",
            "--force",
            "--coordinator",
            "not a url",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    assert!(
        !String::from_utf8_lossy(&again.stdout).contains("replacing"),
        "said it replaced a config it kept"
    );

    // A different coordinator for the installed node, without --force, is
    // refused rather than silently ignored.
    let ignored = install(
        root.path(),
        &[
            "--node-id",
            "rec-7",
            "--coordinator",
            "http://10.0.0.9:7400",
        ],
    );
    assert_eq!(ignored.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&ignored.stderr);
    assert!(
        stderr.contains("--force") && stderr.contains("http://10.0.0.9:7400"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

#[test]
fn check_config_reports_a_missing_hook_or_role_log_directory() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("hook.sh");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let cases = [
        (
            format!(
                "node_id = \"a\"\n[hooks]\non_role_change = \"{}/missing.sh\"\n",
                dir.path().display()
            ),
            "cannot be used",
        ),
        (
            format!(
                "node_id = \"a\"\n[hooks]\non_role_change = \"{} --flag\"\n",
                not_exec.display()
            ),
            "not executable",
        ),
        (
            // A bare name is looked up in PATH, as /bin/sh would.
            "node_id = \"a\"\n[hooks]\non_role_change = \"no-such-hook-anywhere.sh\"\n".to_owned(),
            "not found in PATH",
        ),
        (
            format!(
                "node_id = \"a\"\nrole_log = \"{}/nope/roles.jsonl\"\n",
                dir.path().display()
            ),
            "does not exist",
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(bin("failover-agent"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(expect), "{text}: {stderr}");
    }
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
    // Creation and first election share one commit; the lost contact is
    // one more, the failover another.
    assert_eq!(value("failover_store_commits_total"), 3.0);
    assert!(value("failover_heartbeats_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_answers_in_both_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let c = tokio::task::spawn_blocking(tests::Cluster::start)
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(c.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "failover.v1.AdminService"),
        "{list:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1alpha: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "failover.v1.AdminService"),
        "{list:?}"
    );
}

#[test]
fn metrics_show_each_group_and_node_and_pass_promtool() {
    use std::io::Write;
    let mut c = tests::Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &tests::FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    let (_, text) = c.http_get("/metrics").unwrap();
    let value = |text: &str, sample: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ').map(str::to_owned))
    };
    let epoch = c.group("db")["epoch"].to_string();
    assert_eq!(
        value(&text, "failover_group_has_primary{group=\"db\"}").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        value(&text, "failover_group_epoch{group=\"db\"}"),
        Some(epoch),
        "{text}"
    );
    assert_eq!(
        value(&text, "failover_group_phase{group=\"db\",phase=\"active\"}").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        value(&text, "failover_node_connected{node=\"rec-1\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        value(&text, "failover_node_connected{node=\"rec-2\"}").as_deref(),
        Some("0")
    );
    assert!(text.contains("failover_build_info{version=\""), "{text}");

    // The classic text format passes promtool's checks (HELP on every
    // family, counters named after their samples).
    let (ok, said) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .output_with_stdin(text.as_bytes());
    assert!(ok, "promtool check metrics: {said}");

    // OpenMetrics when the scraper asks for it.
    let open = {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(c.http_addr()).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(open.contains("application/openmetrics-text"), "{open}");
    assert!(open.trim_end().ends_with("# EOF"), "{open}");

    c.kill_agent("rec-1");
    let text = c.wait_until("the gauges show the lost primary", || {
        let (_, text) = c.http_get("/metrics")?;
        (value(&text, "failover_node_connected{node=\"rec-1\"}").as_deref() == Some("0"))
            .then_some(text)
    });
    assert!(
        text.contains("failover_group_has_primary{group=\"db\"}"),
        "{text}"
    );
}

/// Runs a command with `input` on its stdin: (success, stdout + stderr).
trait WithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String);
}

impl WithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String) {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}
