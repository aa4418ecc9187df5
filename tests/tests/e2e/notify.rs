//! Notifications: a failover reaches a webhook, a mailbox and a command
//! without anyone asking; a sink that was down gets everything it missed,
//! in order, across a coordinator kill; bad sinks are refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::sinks::{Mailbox, WebhookReceiver};
use tests::tls::Pki;
use tests::{Cluster, FAST};

const SECRET: &str = "a-shared-secret-for-tests";

/// Waits up to `within` for `check`; fails with `what` and the logs.
fn wait_long<T>(
    c: &Cluster,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(c: &Cluster, name: &str) -> Option<f64> {
    let (_, text) = c.http_get("/metrics")?;
    text.lines()
        .find(|l| l.starts_with(name))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_failover_reaches_a_webhook_a_mailbox_and_a_command_unasked() {
    let receiver = WebhookReceiver::start(SECRET);
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::init(&work.path().join("pki"));
    let (cert, key) = pki.coordinator();
    let mailbox = Mailbox::start(work.path(), Some((&cert, &key)));
    let exec_out = work.path().join("exec.log");
    let script = work.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread -r json\necho \"$FAILOVER_EVENT_KIND $FAILOVER_EVENT_GROUP $FAILOVER_EVENT_NEW_PRIMARY $FAILOVER_EVENT_EPOCH $json\" >> {}\n",
            exec_out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A receiver that accepts and never answers: it must slow nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        r#"
[[notify]]
kind = "webhook"
name = "hook"
url = "{url}"
secret = "{SECRET}"

[[notify]]
kind = "smtp"
name = "mail"
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
from = "failover@example.com"
to = ["oncall@example.com"]
events = ["promoted", "primary_lapsed"]

[[notify]]
kind = "exec"
name = "script"
command = ["{script}"]
groups = ["db"]

[[notify]]
kind = "webhook"
name = "silent"
url = "http://{silent}/never"
secret = "{SECRET}"
timeout = "1s"
"#,
        url = receiver.url(),
        port = mailbox.addr.port(),
        ca = pki.ca().display(),
        script = script.display(),
        silent = silent.local_addr().unwrap(),
    );
    let mut c = Cluster::start_configured(&config);
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);
    c.kill_agent("rec-1");
    c.wait_primary("db", "rec-2");

    let promoted = |e: &Value| e["kind"] == "promoted" && e["new_primary"] == "rec-2";
    let event = c.wait_until("the webhook receives the promotion", || {
        receiver.events().into_iter().find(promoted)
    });
    assert_eq!(event["group"], "db");
    assert_eq!(event["old_primary"], "rec-1");
    assert!(event["epoch"].as_u64().unwrap() >= 2, "{event}");
    assert_eq!(
        receiver.forged(),
        0,
        "every delivery is signed with the secret"
    );
    // Everything the log holds reached the webhook, once or more, in order.
    let logged: Vec<u64> = c
        .ctl_json(&["events"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let got = c.wait_until("the webhook has every event", || {
        let got: Vec<u64> = receiver
            .events()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        logged.iter().all(|s| got.contains(s)).then_some(got)
    });
    assert!(got.windows(2).all(|w| w[0] <= w[1]), "in order: {got:?}");

    let mail = c.wait_until("the mail arrives", || {
        mailbox
            .mails()
            .into_iter()
            .find(|m| m.subject.contains("db: rec-2 is primary"))
    });
    assert!(mail.to.contains("oncall@example.com"), "{mail:?}");
    assert!(mail.text.contains("Old primary:  rec-1"), "{}", mail.text);
    assert!(
        mailbox
            .mails()
            .iter()
            .all(|m| !m.subject.contains("group created")),
        "the mail sink filters by kind"
    );

    let line = c.wait_until("the command runs", || {
        let text = std::fs::read_to_string(&exec_out).ok()?;
        text.lines()
            .find(|l| l.starts_with("promoted db rec-2 "))
            .map(str::to_owned)
    });
    let json: Value = serde_json::from_str(line.splitn(5, ' ').nth(4).unwrap()).unwrap();
    assert_eq!(json["new_primary"], "rec-2", "the event as JSON on stdin");

    // The silent receiver held only its own sink.
    let failures = c.wait_until("the silent sink's failures show", || {
        metric(&c, "failover_notify_failures_total{sink=\"silent\"}").filter(|v| *v >= 1.0)
    });
    assert!(failures >= 1.0);
    assert!(
        metric(&c, "failover_notify_backlog{sink=\"silent\"}").unwrap() >= 1.0,
        "its backlog shows"
    );
    assert!(
        c.logs().contains("cannot deliver a notification"),
        "and a warning"
    );
    drop(silent);
}

#[test]
fn a_sink_that_was_down_gets_everything_it_missed_in_order_across_a_kill() {
    let mut receiver = WebhookReceiver::start(SECRET);
    let config = format!(
        "[[notify]]\nkind = \"webhook\"\nname = \"hook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url()
    );
    let mut c = Cluster::start_configured(&config);
    c.add_group("first", &["rec-1"]);
    c.wait_until("the first event is delivered", || {
        receiver
            .events()
            .iter()
            .any(|e| e["group"] == "first")
            .then_some(())
    });
    // Down: everything from here on waits.
    receiver.pause();
    for name in ["second", "third"] {
        c.add_group(name, &["rec-1", "rec-2"]);
    }
    c.ctl_ok(&["group", "set", "second", "--auto-failover", "false"]);
    c.wait_until("the backlog shows", || {
        metric(&c, "failover_notify_backlog{sink=\"hook\"}").filter(|v| *v >= 3.0)
    });
    c.kill_coordinator();
    c.start_coordinator();
    c.add_group("fourth", &["rec-2"]);
    let expected: Vec<u64> = c
        .ctl_json(&["events"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    receiver.resume();
    let got = wait_long(&c, "the sink catches up", Duration::from_secs(120), || {
        let got: Vec<u64> = receiver
            .events()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        let have: BTreeSet<u64> = got.iter().copied().collect();
        expected.iter().all(|s| have.contains(s)).then_some(got)
    });
    assert!(got.windows(2).all(|w| w[0] <= w[1]), "in order: {got:?}");
    let groups: Vec<String> = receiver
        .events()
        .iter()
        .filter(|e| e["kind"] == "group_created")
        .map(|e| e["group"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ["first", "second", "third", "fourth"]
            .iter()
            .all(|g| groups.iter().any(|x| x == g)),
        "{groups:?}"
    );
    assert_eq!(receiver.forged(), 0);
}

#[test]
fn a_bad_sink_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[notify]]\nkind = \"smtp\"\nhost = \"mail\"\nto = [\"a@example.com\"]\n",
            "[[notify]] #1 (smtp): from is missing",
        ),
        (
            "[[notify]]\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret = \"0123456789abcdef\"\nevents = [\"promotd\"]\n",
            "events: \"promotd\" is not an event kind",
        ),
        (
            "[[notify]]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n[[notify]]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
            "[[notify]] #2 (smtp): password_file /nonexistent/pw",
        ),
        ("[[notify]]\nkind = \"pager\"\n", "unknown variant `pager`"),
        (
            "[[notify]]\nkind = \"exec\"\nname = \"page\"\ncommand = [\"/nonexistent/page.sh\"]\n",
            "[[notify]] page: command \"/nonexistent/page.sh\" is not an executable file",
        ),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let out = tests::check_config(
            "failover-coordinator",
            dir.path(),
            &format!("{i}.toml"),
            text,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "accepted {text:?}");
        assert!(stderr.contains(expect), "{text:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
