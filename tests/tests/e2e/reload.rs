//! SIGHUP: the coordinator re-reads its notification sinks, defaults and
//! log level, the agent its checks, hooks and log level — without
//! dropping a session; a bad file is refused and the old one kept.

use nix::sys::signal::Signal;
use serde_json::Value;
use tests::sinks::WebhookReceiver;
use tests::{Cluster, FAST};

const SECRET: &str = "a-shared-secret-for-tests";

fn coordinator_config(receiver: &WebhookReceiver, failover_timeout: &str, level: &str) -> String {
    format!(
        "[defaults]\nfailover_timeout = \"{failover_timeout}\"\n\n[log]\nlevel = \"{level}\"\n\n\
         [[notify]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url()
    )
}

fn sessions_opened(c: &Cluster) -> usize {
    c.coordinator
        .as_ref()
        .unwrap()
        .log_text()
        .matches("agent session opened")
        .count()
}

#[test]
fn sighup_makes_the_coordinator_take_new_sinks_defaults_and_log_level_without_dropping_sessions() {
    let first = WebhookReceiver::start(SECRET);
    let second = WebhookReceiver::start(SECRET);
    // RUST_LOG (which wins over the file) left empty: the file's level rules.
    let mut c = Cluster::prepare();
    let file = c.path("coordinator.toml");
    std::fs::write(&file, coordinator_config(&first, "3s", "info")).unwrap();
    c.coordinator_args = vec!["--config".to_owned(), file.display().to_string()];
    c.start_coordinator_with(&[("RUST_LOG", "")]);
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);
    let epoch = c.group("db")["epoch"].clone();
    let opened = sessions_opened(&c);

    std::fs::write(&file, coordinator_config(&second, "7s", "debug")).unwrap();
    c.coordinator.as_ref().unwrap().signal(Signal::SIGHUP);
    c.wait_until("the reload is logged", || {
        c.logs()
            .contains("configuration reloaded (SIGHUP)")
            .then_some(())
    });
    // The harness gives --listen, --http-listen and --data-dir as flags:
    // the file not naming them is no change waiting for a restart.
    assert!(
        !c.coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("take effect only at the next start"),
        "{}",
        c.logs()
    );
    // New groups take the new defaults; events go to the new sink.
    let g = c.ctl_json(&["group", "add", "web", "--member", "rec-2"]);
    assert_eq!(g["policy"]["failover_timeout"], "7s", "{g}");
    c.wait_until("the new sink gets the new group", || {
        second
            .events()
            .iter()
            .any(|e| e["kind"] == "group_created" && e["group"] == "web")
            .then_some(())
    });
    assert!(
        !first.events().iter().any(|e| e["group"] == "web"),
        "the old sink is no longer used"
    );
    // The log level changed: debug lines appear.
    c.wait_until("debug lines in the log", || {
        c.logs().contains(" DEBUG ").then_some(())
    });
    // Nothing was dropped: no session reopened, the primary kept its epoch.
    assert_eq!(sessions_opened(&c), opened, "no session was dropped");
    assert_eq!(c.group("db")["epoch"], epoch);
    assert_eq!(c.group("db")["primary"], "rec-1");

    // A bad file is refused whole; the running configuration stays.
    std::fs::write(
        &file,
        "[defaults]\nfailover_timeout = \"1s\"\nnot_a_key = 1\n",
    )
    .unwrap();
    c.coordinator.as_ref().unwrap().signal(Signal::SIGHUP);
    c.wait_until("the refusal is logged", || {
        c.logs()
            .contains("configuration not reloaded (SIGHUP), the running one stays")
            .then_some(())
    });
    assert!(c.logs().contains("not_a_key"), "the reason names the key");
    // So is a sink that cannot work.
    std::fs::write(
        &file,
        "[[notify]]\nkind = \"smtp\"\nhost = \"mail\"\nto = [\"oncall@example.com\"]\n",
    )
    .unwrap();
    c.coordinator.as_ref().unwrap().signal(Signal::SIGHUP);
    c.wait_until("the bad sink is refused, naming the key", || {
        c.logs()
            .contains("[[notify]] #1 (smtp): from is missing")
            .then_some(())
    });
    let g = c.ctl_json(&["group", "add", "api", "--member", "rec-2"]);
    assert_eq!(
        g["policy"]["failover_timeout"], "7s",
        "the old defaults stay: {g}"
    );
    c.wait_until("the sink still delivers", || {
        second
            .events()
            .iter()
            .any(|e| e["group"] == "api")
            .then_some(())
    });
    assert!(
        c.coordinator.as_mut().map(|p| !p.exited()).unwrap(),
        "still running"
    );
}

#[test]
fn sighup_makes_the_agent_take_new_checks_and_hooks_without_dropping_its_role() {
    let mut c = Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    let config = c.agent_config("rec-1", "");
    c.start_agent_with("rec-1", &config);
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);
    let epoch = c.group("db")["epoch"].clone();

    // A second hook that records elsewhere, and a check.
    let marks = c.path("second-hook.log");
    let hook = c.path("second-hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$FAILOVER_ROLE $FAILOVER_EPOCH\" >> {}\n",
            marks.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &c.path("hook.sh").display().to_string(),
        &hook.display().to_string(),
    );
    std::fs::write(
        &config,
        format!("{text}\n[[checks]]\nname = \"always\"\nexec = \"true\"\ninterval = \"1s\"\n"),
    )
    .unwrap();
    c.agent("rec-1").signal(Signal::SIGHUP);
    let node = c.wait_until(
        &format!("the new check is reported: {}", c.agent("rec-1").log_text()),
        || {
            let nodes = c.ctl_json(&["node", "list"]);
            nodes
                .as_array()?
                .iter()
                .find(|n| {
                    n["node"] == "rec-1" && n["checks"].as_array().is_some_and(|a| !a.is_empty())
                })
                .cloned()
        },
    );
    assert_eq!(node["checks"][0]["name"], "always", "{node}");
    assert_eq!(c.group("db")["epoch"], epoch, "the role was not touched");
    assert_eq!(c.group("db")["primary"], "rec-1");

    // The next role change runs the new hook.
    c.ctl_ok(&["group", "promote", "db", "--to", "rec-2"]);
    c.wait_primary("db", "rec-2");
    let line = c.wait_until("the new hook ran", || {
        std::fs::read_to_string(&marks)
            .ok()
            .filter(|t| t.contains("secondary"))
    });
    assert!(line.contains("secondary"), "{line}");

    // A bad file is refused; the agent goes on.
    std::fs::write(
        &config,
        "node_id = \"rec-1\"\n[hooks]\ntimeout = \"forever\"\n",
    )
    .unwrap();
    c.agent("rec-1").signal(Signal::SIGHUP);
    c.wait_until("the refusal is logged", || {
        c.agent("rec-1")
            .log_text()
            .contains("configuration not reloaded (SIGHUP), the running one stays")
            .then_some(())
    });
    let g: Value = c.group("db");
    let member = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == "rec-1")
        .unwrap()
        .clone();
    assert_eq!(member["connected"], true, "{g}");
}
