//! A session speaks only for itself: duplicated node ids, impostor
//! sessions, a dead primary's node id reused, wild epoch claims — with
//! real agents, their role logs checked for overlapping primaries.

use std::time::Duration;

use nix::sys::signal::Signal;
use proto::v1 as pb;
use tests::checker::{self, Inflicted};
use tests::proxy::Mode;
use tests::raw::{self, RawSession, claim};
use tests::{Cluster, epoch, member};

/// The lease length of the FAST settings, in nanoseconds.
const LEASE_NS: u128 = 1_000_000_000;

fn no_overlap(c: &Cluster, inflicted: &[Inflicted]) {
    let verdict = checker::check(&checker::read_role_logs(c.dir.path()), inflicted, LEASE_NS);
    assert!(
        verdict.violations.is_empty(),
        "{:?}{}",
        verdict.violations,
        c.logs()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

#[test]
fn a_duplicate_agent_is_refused_reported_and_exits_while_the_original_keeps_the_role() {
    let mut c = Cluster::start();
    c.start_agent("rec-1");
    c.start_agent("rec-2");
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-2", "rec-1"]);
    c.wait_hook("rec-2 promoted", |h| {
        h.node == "rec-2" && h.role == "primary"
    });

    let dup = c.start_duplicate_agent("rec-2", "dup");
    c.wait_until("a duplicate_node event", || {
        (!c.events_of_kind("duplicate_node").is_empty()).then_some(())
    });
    let g = c.group("recorders");
    assert!(
        member(&g, "rec-2")["duplicate"].is_string(),
        "group show names the duplicate: {g}"
    );
    assert!(
        g["alarm"].as_str().unwrap_or("").contains("duplicate"),
        "{g}"
    );
    let nodes = c.ctl_json(&["node", "list"]);
    let rec2 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "rec-2")
        .unwrap();
    assert!(rec2["duplicate"].is_string(), "{rec2}");

    // The duplicate gives up with its own exit status and a clear reason.
    let mut proc = c.agents.remove(&dup).expect("duplicate running");
    let status = proc.wait_exit_within(Duration::from_secs(40));
    assert_eq!(status.code(), Some(3), "{}", proc.log_text());
    assert!(
        proc.log_text().contains("is a duplicate"),
        "{}",
        proc.log_text()
    );
    let g = c.group("recorders");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("rec-2"), 1));
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.role == "fenced" || (h.role == "primary" && h.node != "rec-2")),
        "nobody fenced or took over: {:?}",
        c.hooks()
    );
    no_overlap(&c, &[]);
}

#[test]
fn a_duplicate_started_while_the_original_is_frozen_never_overlaps_it() {
    let mut c = Cluster::start();
    for n in ["n-1", "n-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n-1", "n-2"]);
    c.add_group("g", &["n-1", "n-2"]);
    c.wait_hook("n-1 promoted", |h| h.node == "n-1" && h.role == "primary");

    let from_ns = c.freeze_agent("n-1");
    let dup = c.start_duplicate_agent("n-1", "dup");
    // The original's lease runs out: n-2 takes over (the duplicate is a new
    // instance of a member that just failed, so it ranks below n-2).
    c.wait_primary("g", "n-2");
    // Once the original has been silent past its silence limit, the
    // duplicate is accepted as n-1.
    c.wait_until("the duplicate holds n-1's session", || {
        let g = c.group("g");
        (member(&g, "n-1")["connected"] == true).then_some(())
    });
    let to_ns = c.thaw_agent("n-1");
    // The woken original fences first, is refused, and gives up.
    let mut original = c.agents.remove("n-1").expect("original");
    let status = original.wait_exit_within(Duration::from_secs(40));
    assert_eq!(status.code(), Some(3), "{}", original.log_text());
    no_overlap(
        &c,
        &[Inflicted::Frozen {
            node: "n-1".into(),
            from_ns,
            to_ns,
        }],
    );
    assert!(c.agents.contains_key(&dup));
}

#[test]
fn kill_9_and_an_immediate_restart_never_overlap() {
    let mut c = Cluster::start();
    for n in ["n-1", "n-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n-1", "n-2"]);
    c.add_group("g", &["n-1", "n-2"]);
    c.wait_hook("n-1 promoted", |h| h.node == "n-1" && h.role == "primary");
    let at_ns = c.kill_agent("n-1");
    c.start_agent("n-1");
    // The new instance inherits nothing: the old lease is waited out and
    // the role moves (to n-2, since n-1 just failed).
    c.wait_primary("g", "n-2");
    c.wait_connected("g", &["n-1"]);
    no_overlap(
        &c,
        &[Inflicted::Killed {
            node: "n-1".into(),
            at_ns,
        }],
    );
    assert!(
        c.events_of_kind("duplicate_node").is_empty(),
        "a restart is not a duplicate"
    );
}

#[test]
fn an_impostor_cannot_confirm_a_cut_off_primarys_step_down() {
    // Default settings: a 3 s lease, so a confirmation that counted would
    // make two primaries for seconds.
    let mut c = Cluster::start();
    c.start_agent_proxied("n1", 1);
    c.start_agent("n2");
    c.wait_nodes(&["n1", "n2"]);
    c.add_group_with("g", &["n1", "n2"], &[]);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    c.wait_connected("g", &["n2"]);

    // n1 is cut off. While its session is alive, nobody else may open one.
    c.proxy("n1").set(Mode::Blackhole);
    let to = c.target("n1");
    let refused = runtime().block_on(async {
        let claims = vec![claim("g", pb::Role::Primary, 1)];
        RawSession::open(&to, raw::hello("n1", claims)).await.err()
    });
    assert_eq!(
        refused.map(|s| s.code()),
        Some(tonic::Code::AlreadyExists),
        "a second session as n1 was accepted while n1 was connected"
    );

    // The coordinator restarts: no session at all. An impostor opens as n1
    // at once, claims the role and confirms a step-down.
    c.kill_coordinator();
    c.start_coordinator();
    runtime().block_on(async {
        let claims = vec![claim("g", pb::Role::Primary, 1)];
        let mut s = RawSession::open(&to, raw::hello("n1", claims.clone()))
            .await
            .expect("no session of n1 yet: accepted");
        s.heartbeat(claims).await;
        s.hook_result("g", 1, pb::Role::Secondary).await;
        s.drain(Duration::from_millis(500)).await;
    });
    c.wait_primary("g", "n2");
    let events = c.ctl_json(&["events", "--group", "g"]);
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| { e["kind"] == "step_down_confirmed" || e["kind"] == "primary_stepped_down" }),
        "the impostor's confirmation counted: {events}"
    );
    // n1 fenced on its own, before n2 started acting.
    c.wait_until("n1 fenced", || {
        c.hooks()
            .iter()
            .any(|h| h.node == "n1" && h.role == "fenced")
            .then_some(())
    });
    no_overlap(&c, &[]);
}

#[test]
fn an_impostor_cannot_take_over_a_role_left_running_within_the_shutdown_grace() {
    let mut c = Cluster::start();
    for n in ["n1", "n2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2"]);
    let mut settings = tests::FAST.to_vec();
    settings.extend(["--shutdown-grace", "1m"]);
    c.add_group_with("g", &["n1", "n2"], &settings);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    let nodes = c.ctl_json(&["node", "list"]);
    let uuid = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "n1")
        .and_then(|n| n["node_uuid"].as_str())
        .expect("node list shows n1's installation UUID")
        .to_owned();
    // n1's agent stops cleanly, leaving its service running for the grace.
    let mut agent = c.agents.remove("n1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().success());

    // An impostor with n1's (public) installation UUID but without the
    // departed process's secret instance id.
    let to = c.target("n1");
    let grants = runtime().block_on(async {
        let claims = vec![claim("g", pb::Role::Primary, 1)];
        let mut hello = raw::hello("n1", claims.clone());
        hello.node_uuid = uuid;
        let mut s = RawSession::open(&to, hello).await.expect("accepted");
        let mut grants = 0;
        for _ in 0..10 {
            s.heartbeat(claims.clone()).await;
            grants += s.drain(Duration::from_millis(100)).await;
        }
        s.hook_result("g", 1, pb::Role::Secondary).await;
        grants + s.drain(Duration::from_millis(300)).await
    });
    assert_eq!(grants, 0, "the impostor was granted n1's lease");
    let events = c.ctl_json(&["events", "--group", "g"]);
    assert!(
        !events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "primary_stepped_down"
                || e["kind"] == "promoted" && e["epoch"] != 1),
        "{events}"
    );
    // The real agent comes back within the grace and keeps the role.
    c.start_agent("n1");
    c.wait_until("n1 holds the role again", || {
        let g = c.group("g");
        (g["phase"] == "active" && member(&g, "n1")["connected"] == true).then_some(g)
    });
    let g = c.group("g");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("n1"), 1));
}

#[test]
fn a_dead_primary_is_not_kept_alive_by_another_session_under_its_name() {
    let mut c = Cluster::start();
    for n in ["n1", "n2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2"]);
    c.add_group("g", &["n1", "n2"]);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    let at_ns = c.kill_agent("n1");
    let to = c.target("n1");
    let grants = runtime().block_on(async {
        let claims = vec![claim("g", pb::Role::Primary, 1)];
        let mut s = raw::open_when_accepted(&to, "n1", claims.clone(), Duration::from_secs(20))
            .await
            .expect("accepted: n1's own session is closed");
        let mut grants = 0;
        for _ in 0..30 {
            s.heartbeat(claims.clone()).await;
            grants += s.drain(Duration::from_millis(100)).await;
        }
        grants
    });
    assert_eq!(grants, 0, "the impostor was granted n1's lease");
    c.wait_primary("g", "n2");
    no_overlap(
        &c,
        &[Inflicted::Killed {
            node: "n1".into(),
            at_ns,
        }],
    );
}

#[test]
fn an_epoch_claim_of_u64_max_is_refused_and_changes_nothing() {
    let mut c = Cluster::start();
    for n in ["n1", "n2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2"]);
    c.add_group("g", &["n1", "n2", "n3"]);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    let to = c.target("n3");
    runtime().block_on(async {
        let claims = vec![claim("g", pb::Role::Primary, u64::MAX)];
        let mut s = RawSession::open(&to, raw::hello("n3", claims.clone()))
            .await
            .expect("n3 has no session: accepted");
        s.heartbeat(claims).await;
        s.drain(Duration::from_millis(300)).await;
    });
    c.wait_until("an epoch_claim_refused event", || {
        (!c.events_of_kind("epoch_claim_refused").is_empty()).then_some(())
    });
    let g = c.group("g");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("n1"), 1));
    assert_eq!(g["phase"], "active");
    assert!(c.events_of_kind("epoch_raised").is_empty());
    // The primary keeps acting: no fencing, no new hook.
    assert!(!c.hooks().iter().any(|h| h.role == "fenced"));
}

#[test]
fn sighup_stops_neither_the_coordinator_nor_the_agent() {
    let mut c = Cluster::start();
    c.start_agent("n1");
    c.wait_nodes(&["n1"]);
    c.add_group("g", &["n1"]);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    c.coordinator.as_ref().unwrap().signal(Signal::SIGHUP);
    c.agent("n1").signal(Signal::SIGHUP);
    c.wait_until("both logged that they reload", || {
        let both = c
            .coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("SIGHUP")
            && c.agent("n1").log_text().contains("SIGHUP");
        both.then_some(())
    });
    assert!(!c.coordinator_exited());
    assert!(!c.agents.get_mut("n1").unwrap().exited());
    let g = c.group("g");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("n1"), 1));
    assert_eq!(c.hooks().len(), 1, "no role change: {:?}", c.hooks());
}

#[test]
fn a_coordinator_address_that_accepts_and_never_answers_does_not_hold_the_agent() {
    // A listener that accepts connections and says nothing: a partition
    // behind a proxy, a load balancer with a dead backend.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        // Keep up to a few accepted connections open, answering nothing.
        let mut open = Vec::new();
        for stream in silent.incoming().take(3) {
            open.push(stream);
        }
        open
    });
    let mut c = Cluster::start();
    let config = c.agent_config("n1", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("coordinator = \"{}\"", c.url()),
        &format!("coordinator = [\"http://{silent_addr}\", \"{}\"]", c.url()),
    );
    std::fs::write(&config, text).unwrap();
    c.start_agent_with("n1", &config);
    c.wait_nodes(&["n1"]);
    drop(held);
}
