//! Bounded resources: connections that send nothing or dribble, event
//! watches — none of them can lock out operators, probes or agents, and
//! none makes a primary fence.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use tests::{Cluster, epoch};

/// Whether the coordinator has ended `stream`: a read sees the end of the
/// stream, an error, or (for HTTP) an answer to a request never finished.
fn ended(stream: &mut TcpStream, answer_ends: bool) -> bool {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => answer_ends,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

fn connect_many(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .inspect(|s| {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        })
        .collect()
}

/// Waits until the coordinator has ended every one of `streams`.
fn wait_all_ended(c: &Cluster, streams: Vec<TcpStream>, answer_ends: bool, what: &str) {
    let mut open = streams;
    c.wait_until(what, || {
        open.retain_mut(|s| !ended(s, answer_ends));
        open.is_empty().then_some(())
    });
}

/// A group of two with n1 primary, for checking that abuse moves nothing.
fn group_of_two(c: &mut Cluster) -> u64 {
    c.start_agent("n1");
    c.start_agent("n2");
    c.wait_nodes(&["n1", "n2"]);
    c.add_group("g", &["n1", "n2"]);
    epoch(&c.wait_primary("g", "n1"))
}

fn assert_undisturbed(c: &Cluster, before: u64) {
    let g = c.group("g");
    assert_eq!(g["primary"], "n1", "the primary moved: {g}");
    assert_eq!(epoch(&g), before, "the epoch moved: {g}");
    assert!(
        !c.hooks().iter().any(|h| h.role == "fenced"),
        "a primary fenced: {:?}",
        c.hooks()
    );
}

#[test]
fn silent_connections_are_closed_and_never_lock_out_operators_or_agents() {
    let mut c = Cluster::start_configured("[limits]\nmax_connections = 40\n");
    let before = group_of_two(&mut c);
    // Three times the cap in connections that never send a byte.
    let silent = connect_many(c.grpc, 120);
    // Operators get in: the silent connections make room for them.
    c.wait_until("failoverctl gets in past the silent connections", || {
        c.ctl(&["group", "list"]).status.success().then_some(())
    });
    // Every silent connection is closed within the first-bytes timeout.
    wait_all_ended(&c, silent, false, "every silent connection is closed");
    assert!(
        c.logs().contains("connections that sent nothing"),
        "no log line about the closed connections{}",
        c.logs()
    );
    assert_undisturbed(&c, before);
}

#[test]
fn slow_http_requests_are_cut_and_probes_still_answer() {
    let mut c = Cluster::start_configured("[limits]\nmax_http_connections = 16\n");
    let before = group_of_two(&mut c);
    // Requests whose headers never end, more than the listener holds.
    let mut partial = connect_many(c.http, 40);
    for s in &mut partial {
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: coordinator\r\n");
    }
    // One that dribbles a header byte every 200 ms, for up to 30 s.
    let mut slow = TcpStream::connect(c.http).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nX-Slow: ").unwrap();
    let dribbler = std::thread::spawn(move || {
        for _ in 0..150 {
            if slow.write_all(b"a").is_err() || ended(&mut slow, true) {
                return true;
            }
        }
        false
    });
    c.wait_until("the probe answers past the slow requests", || {
        (c.http_get("/readyz").map(|(code, _)| code) == Some(200)).then_some(())
    });
    wait_all_ended(&c, partial, true, "every unfinished request is cut");
    assert!(
        dribbler.join().unwrap(),
        "a request dribbling its headers was held for 30 s"
    );
    assert_undisturbed(&c, before);
}

#[test]
fn event_watches_are_capped_and_page_through_any_backlog() {
    let mut c = Cluster::start_configured("[limits]\nmax_watchers = 3\n");
    group_of_two(&mut c);
    // A backlog longer than one page of the store.
    for i in 0..300 {
        let delay = format!("{}s", 30 + i);
        c.ctl_ok(&["group", "set", "g", "--failback-delay", &delay]);
    }
    let total = c
        .ctl_json(&["events", "--limit", "0"])
        .as_array()
        .unwrap()
        .len();
    assert!(total > 300, "only {total} events");
    let follow = || {
        c.ctl_command()
            .args(["events", "--follow", "--limit", "0", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut watchers: Vec<_> = (0..3).map(|_| follow()).collect();
    for w in &mut watchers {
        // Each one gets the whole backlog, in order, without a gap.
        let lines = BufReader::new(w.stdout.as_mut().unwrap()).lines();
        let seqs: Vec<u64> = lines
            .take(total)
            .map(|l| {
                let event: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
                event["seq"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), total);
        assert!(
            seqs.windows(2).all(|p| p[1] == p[0] + 1),
            "gaps or disorder in the backlog"
        );
    }
    // A fourth is refused, saying why.
    let refused = c.ctl(&["events", "--follow"]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("too many event watches"),
        "{}",
        refused.stderr
    );
    // Ending one makes room.
    let mut first = watchers.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let fourth = c.wait_until("a watch is allowed again", || {
        let mut w = follow();
        let mut line = String::new();
        let got = BufReader::new(w.stdout.as_mut().unwrap()).read_line(&mut line);
        if matches!(got, Ok(n) if n > 0) {
            Some(w)
        } else {
            let _ = w.kill();
            let _ = w.wait();
            None
        }
    });
    for mut w in watchers.into_iter().chain(std::iter::once(fourth)) {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// A token file with operator `tina`'s token, and the file holding her
/// token: `(tokens, token_file)` in `dir`.
fn operator_token(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = tests::tls::pki(&["token", "--name", "tina", "--role", "operator"]);
    let lines: Vec<&str> = made.lines().collect();
    let (token, entry) = (lines[1].trim(), lines[3..].join("\n"));
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, format!("{entry}\n")).unwrap();
    let token_file = dir.join("tina.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    (tokens, token_file)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn oversized_client_text_is_cut_at_the_edge() {
    use proto::v1 as pb;
    use tests::raw::{self, RawSession, claim};
    let c = Cluster::start();
    c.add_group("solo", &["n3"]);
    let to = c.target("n3");
    let huge = "x".repeat(1_000_000);
    runtime().block_on(async {
        // A node id of a megabyte is refused with a short answer.
        let refused = RawSession::open(&to, raw::hello(&huge, vec![]))
            .await
            .err()
            .expect("a megabyte node id was accepted");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::OutOfRange
            ),
            "{refused:?}"
        );
        assert!(
            refused.message().len() < 1000,
            "the refusal echoes {} bytes",
            refused.message().len()
        );
        // A member that becomes primary, sends a check detail and a
        // goodbye reason of a megabyte each.
        let mut s = RawSession::open(&to, raw::hello("n3", vec![]))
            .await
            .expect("n3 accepted");
        let mut epoch = 0;
        for _ in 0..100 {
            let claims = if epoch > 0 {
                vec![claim("solo", pb::Role::Primary, epoch)]
            } else {
                vec![]
            };
            s.heartbeat(claims).await;
            let deadline = tokio::time::sleep(Duration::from_millis(100));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    m = s.inbound.message() => match m {
                        Ok(Some(pb::CoordinatorMessage {
                            kind: Some(pb::coordinator_message::Kind::Assignment(a)),
                        })) => epoch = a.epoch,
                        Ok(Some(_)) => {}
                        _ => panic!("the session ended"),
                    },
                }
            }
            if epoch > 0 {
                break;
            }
        }
        assert!(epoch > 0, "n3 was never assigned the role");
        s.send(pb::agent_message::Kind::Heartbeat(pb::Heartbeat {
            syncs: Vec::new(),
            seq: 1000,
            // Together just under the 256 KiB a message may be.
            checks: vec![pb::CheckStatus {
                name: huge[..120_000].to_owned(),
                passing: true,
                groups: vec![],
                detail: huge[..120_000].to_owned(),
            }],
            roles: vec![claim("solo", pb::Role::Primary, epoch)],
        }))
        .await;
        s.send(pb::agent_message::Kind::Goodbye(pb::Goodbye {
            reason: huge[..250_000].to_owned(),
        }))
        .await;
        s.drain(Duration::from_millis(500)).await;
    });
    let left = c.wait_until("the goodbye is recorded", || {
        let events = c.ctl_json(&["events", "--group", "solo"]);
        events
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "primary_left")
            .cloned()
    });
    let text = left.to_string();
    assert!(text.len() < 2000, "the event keeps {} bytes", text.len());
    let nodes = c.ctl_ok(&["node", "list", "-o", "json"]);
    assert!(
        nodes.len() < 10_000,
        "node list answers {} bytes",
        nodes.len()
    );
    let log = c.logs();
    assert!(
        !log.lines().any(|l| l.len() > 10_000),
        "a log line of more than 10 kB: {}",
        log.lines()
            .find(|l| l.len() > 10_000)
            .map(|l| &l[..300])
            .unwrap_or_default()
    );
}

#[test]
fn a_session_that_goes_silent_is_closed() {
    use tests::raw::{self, RawSession};
    let c = Cluster::start();
    c.add_group("g", &["n5"]);
    let to = c.target("n5");
    let closed = runtime().block_on(async {
        let mut s = RawSession::open(&to, raw::hello("n5", vec![]))
            .await
            .expect("accepted");
        s.heartbeat(vec![]).await;
        // Then nothing: the coordinator must end the stream by itself
        // (after twice the longest lease, 2 s here).
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match s.inbound.message().await {
                    Ok(Some(_)) => continue,
                    _ => return,
                }
            }
        })
        .await
        .is_ok()
    });
    assert!(closed, "a silent session was held open for 30 s");
    let nodes = c.ctl_json(&["node", "list"]);
    let n5 = nodes.as_array().unwrap().iter().find(|n| n["node"] == "n5");
    assert!(
        n5.is_none_or(|n| n["connected"] == false),
        "n5 still listed as connected: {nodes}"
    );
}

/// A counter from the coordinator's /metrics.
fn metric(c: &Cluster, name: &str) -> Option<f64> {
    let (_, text) = c.http_get("/metrics")?;
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_full_disk_refuses_changes_keeps_leases_and_recovers_by_itself() {
    let (mut c, disk) = Cluster::start_on_small_disk("16m");
    let before = group_of_two(&mut c);
    c.add_group("kept", &["n1"]);
    disk.fill();
    // Changes are refused with one clear line, nothing changes; any that
    // still got through before the disk ran out was acknowledged and stays.
    // Seconds of the last change acknowledged.
    let mut acked: u64 = 60;
    let mut next: u64 = 100;
    let refused = c.wait_until("a change is refused for want of space", || {
        let delay = format!("{next}s");
        let out = c.ctl(&["group", "set", "g", "--failback-delay", &delay]);
        if out.status.success() {
            acked = next;
            next += 1;
            None
        } else {
            Some(out.stderr)
        }
    });
    assert!(refused.contains("cannot write"), "{refused}");
    assert_eq!(refused.trim().lines().count(), 1, "{refused}");
    assert_eq!(metric(&c, "failover_store_writable"), Some(0.0));
    // Three leases' worth of heartbeats later the primary still holds its
    // role: leases of unchanged groups are renewed without the disk.
    let start = metric(&c, "failover_heartbeats_total").unwrap();
    c.wait_until("three leases of heartbeats pass", || {
        (metric(&c, "failover_heartbeats_total")? >= start + 60.0).then_some(())
    });
    assert!(
        !c.coordinator_exited(),
        "the coordinator exited{}",
        c.logs()
    );
    assert_undisturbed(&c, before);
    let g = c.group("g");
    let delay = humantime::parse_duration(g["policy"]["failback_delay"].as_str().unwrap());
    assert_eq!(delay.unwrap().as_secs(), acked, "{g}");
    assert_eq!(c.group("kept")["members"].as_array().unwrap().len(), 1);
    // Space returns: the next change goes through, without a restart.
    disk.free();
    c.wait_until("changes are accepted again", || {
        c.ctl(&["group", "set", "g", "--failback-delay", "77s"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(metric(&c, "failover_store_writable"), Some(1.0));
    assert!(c.logs().contains("the store works again"), "{}", c.logs());
    assert_undisturbed(&c, before);
}

/// The peak resident memory of process `pid`, in kB.
fn peak_rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_hook_that_prints_without_end_bounds_the_agents_memory_and_log() {
    let mut c = Cluster::start();
    // The hook first prints one line of 50 MB and half a million empty ones.
    let hook = c.path("hook.sh");
    let recording = std::fs::read_to_string(&hook).unwrap();
    let loud = recording.replacen(
        "#!/bin/sh\n",
        "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' x; echo; yes '' | head -n 500000\n",
        1,
    );
    std::fs::write(&hook, loud).unwrap();
    c.start_agent("n1");
    c.wait_nodes(&["n1"]);
    c.add_group("g", &["n1"]);
    c.wait_hook("n1's hook ran to its end", |h| {
        h.node == "n1" && h.role == "primary"
    });
    let agent = c.agent("n1");
    c.wait_until("the agent logged the end of the hook's output", || {
        agent
            .log_text()
            .contains("bytes of output not logged")
            .then_some(())
    });
    let log = agent.log_text();
    assert!(
        log.len() < 512 * 1024,
        "the agent logged {} bytes",
        log.len()
    );
    let peak = peak_rss_kb(agent.pid().as_raw());
    assert!(peak < 64 * 1024, "the agent's memory peaked at {peak} kB");
}

#[test]
fn clients_without_a_certificate_cannot_crowd_out_agents_and_operators() {
    let config = tempfile::tempdir().unwrap();
    let path = config.path().join("limits.toml");
    std::fs::write(&path, "[limits]\nmax_connections = 30\n").unwrap();
    let mut c = Cluster::start_secure(&["--config", path.to_str().unwrap()]);
    let before = group_of_two(&mut c);
    // Twice the cap in TLS connections without a client certificate that
    // stay busy (HTTP/2 pings every second), so none of them is idle.
    let url = c.url();
    let anonymous = proto::client::ClientTls {
        ca: Some(c.pki.as_ref().unwrap().ca()),
        cert: None,
        key: None,
    };
    // And as many with a viewer's certificate: reading is all it may do,
    // so it holds a connection less firmly than an agent or an operator.
    let (cert, key) = c.pki.as_ref().unwrap().operator("eve", "viewer");
    let viewer = proto::client::ClientTls {
        cert: Some(cert),
        key: Some(key),
        ..anonymous.clone()
    };
    let rt = runtime();
    let crowd: Vec<_> = rt.block_on(async {
        let mut crowd = Vec::new();
        for tls in [&anonymous, &viewer] {
            for _ in 0..60 {
                let endpoint = proto::client::endpoint(&url, tls, Duration::from_secs(5))
                    .unwrap()
                    .http2_keep_alive_interval(Duration::from_secs(1));
                if let Ok(channel) = endpoint.connect().await {
                    crowd.push(channel);
                }
            }
        }
        crowd
    });
    // An operator with a certificate gets in, and so does a restarted agent.
    c.wait_until("the operator gets in past the crowd", || {
        c.ctl(&["group", "list"]).status.success().then_some(())
    });
    c.kill_agent("n2");
    c.start_agent("n2");
    c.wait_connected("g", &["n2"]);
    assert_undisturbed(&c, before);
    drop(crowd);
}

#[test]
fn lists_of_any_length_come_in_pages_that_fit() {
    use proto::v1 as pb;
    use proto::v1::admin_service_client::AdminServiceClient;
    let c = Cluster::start();
    // 1,000 groups of 64 members with 63-character names: one answer with
    // all of them would be far above a client's 4 MiB message limit.
    let url = c.url();
    runtime().block_on(async {
        let mut admin = AdminServiceClient::connect(url).await.unwrap();
        for g in 0..1000 {
            let members = (0..64).map(|m| format!("{g:0>31}-{m:0>31}")).collect();
            admin
                .create_group(pb::CreateGroupRequest {
                    name: format!("{g:x>63}"),
                    members,
                    policy: None,
                })
                .await
                .unwrap();
        }
    });
    let groups = c.ctl_json(&["group", "list"]);
    assert_eq!(groups.as_array().unwrap().len(), 1000);
    let nodes = c.ctl_json(&["node", "list"]);
    assert_eq!(nodes.as_array().unwrap().len(), 64_000);
}

#[test]
fn an_operator_with_a_token_keeps_its_watch_through_a_crowd() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, token_file) = operator_token(dir.path());
    let config = dir.path().join("limits.toml");
    std::fs::write(&config, "[limits]\nmax_connections = 30\n").unwrap();
    let mut c = Cluster::start_secure(&[
        "--auth-tokens",
        tokens.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    group_of_two(&mut c);
    // The operator follows the events with a token (no certificate).
    let mut watch = c
        .ctl_command_as(&["--token-file", token_file.to_str().unwrap()])
        .args(["events", "--follow", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_change = |c: &Cluster, delay: &str| {
        c.ctl_ok(&["group", "set", "g", "--failback-delay", delay]);
        c.wait_until("the watch shows the change", || {
            rx.try_iter()
                .any(|l| l.contains("policy_changed"))
                .then_some(())
        });
    };
    next_change(&c, "61s");
    // A crowd of busy clients without certificates, twice the cap.
    let url = c.url();
    let anonymous = proto::client::ClientTls {
        ca: Some(c.pki.as_ref().unwrap().ca()),
        cert: None,
        key: None,
    };
    let crowd: Vec<_> = runtime().block_on(async {
        let mut crowd = Vec::new();
        for _ in 0..60 {
            let endpoint = proto::client::endpoint(&url, &anonymous, Duration::from_secs(5))
                .unwrap()
                .http2_keep_alive_interval(Duration::from_secs(1));
            if let Ok(channel) = endpoint.connect().await {
                crowd.push(channel);
            }
        }
        crowd
    });
    // The watch is still there and still shows what happens.
    next_change(&c, "62s");
    assert!(watch.try_wait().unwrap().is_none(), "the watch ended");
    let _ = watch.kill();
    let _ = watch.wait();
    drop(crowd);
}

#[test]
fn half_sent_requests_of_strangers_neither_lock_out_operators_nor_hold_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, token_file) = operator_token(dir.path());
    let mut c = Cluster::start_secure(&["--auth-tokens", tokens.to_str().unwrap()]);
    let before = group_of_two(&mut c);
    let ca = c.pki.as_ref().unwrap().ca();
    // More half-sent calls than the whole budget once was (256), from
    // callers without a certificate, four per connection.
    let flood = tests::h2raw::half_sent(c.grpc, &ca, "/failover.v1.AdminService/ListGroups", 70, 4);
    assert!(flood.sent >= 260, "only {} calls were sent", flood.sent);
    // Operators have places of their own, with a certificate or a token.
    let out = c.ctl(&["group", "list"]);
    assert!(out.status.success(), "{}", out.stderr);
    let out = c.ctl_as(
        &["--token-file", token_file.to_str().unwrap()],
        &["group", "list"],
    );
    assert!(out.status.success(), "{}", out.stderr);
    // Reflection answers are large: not for callers without a certificate,
    // in either version.
    for version in ["v1", "v1alpha"] {
        let reflection = tests::h2raw::call_status(
            c.grpc,
            &ca,
            &format!("/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"),
        );
        assert_eq!(
            reflection.as_deref(),
            Some("16"),
            "UNAUTHENTICATED ({version})"
        );
    }
    assert_undisturbed(&c, before);
    // A stop does not wait for requests that never finish arriving.
    let mut coordinator = c.coordinator.take().unwrap();
    coordinator.signal(nix::sys::signal::Signal::SIGTERM);
    coordinator.wait_exit();
    let log = coordinator.log_text();
    assert!(!log.contains("did not finish within"), "{log}");
    drop(flood);
}

#[test]
fn one_caller_cannot_take_every_event_watch() {
    let config = tempfile::tempdir().unwrap();
    let path = config.path().join("limits.toml");
    std::fs::write(&path, "[limits]\nmax_watchers = 16\n").unwrap();
    let c = Cluster::start_secure(&["--config", path.to_str().unwrap()]);
    let (cert, key) = c.pki.as_ref().unwrap().operator("eve", "viewer");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let follow = |credentials: &[&str]| {
        let mut w = c
            .ctl_command_as(credentials)
            .args(["events", "--follow"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Refused at once, or still watching after a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if let Some(status) = w.try_wait().unwrap() {
                let mut err = String::new();
                w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                assert!(!status.success());
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(w)
    };
    let viewer = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    // An eighth of 16: two each.
    let mut held: Vec<_> = (0..2).map(|_| follow(&viewer).unwrap()).collect();
    let third = follow(&viewer).expect_err("a third watch is refused");
    assert!(third.contains("as many as one caller may"), "{third}");
    // Others still watch.
    let (acert, akey) = c.pki.as_ref().unwrap().operator("root", "admin");
    let (acert, akey) = (acert.display().to_string(), akey.display().to_string());
    held.push(follow(&["--tls-cert", acert.as_str(), "--tls-key", akey.as_str()]).unwrap());
    for mut w in held {
        let _ = w.kill();
        let _ = w.wait();
    }
}

#[test]
fn answers_nobody_reads_are_bounded_per_rank_of_caller() {
    let c = Cluster::start_secure(&[]);
    // Enough events that one answer of them is more than the server
    // buffers for a stream (64 KiB).
    c.ctl_ok(&["group", "add", "g", "--member", "n1"]);
    for i in 0..400 {
        let delay = format!("{}s", 30 + i);
        c.ctl_ok(&["group", "set", "g", "--failback-delay", &delay]);
    }
    let pki = c.pki.as_ref().unwrap();
    let (cert, key) = pki.operator("eve", "viewer");
    // 20 connections × 16 calls whose answers can never be sent: more
    // than the 256 a viewer's rank may leave unread.
    let refused = tests::h2raw::never_read(
        c.grpc,
        &pki.ca(),
        (&cert, &key),
        "/failover.v1.AdminService/ListEvents",
        20,
        16,
    );
    // (A few answers may fit the buffer and finish; most cannot.)
    assert!(refused >= 32, "only {refused} refused");
    // An operator is another rank.
    let out = c.ctl(&["events", "--limit", "1"]);
    assert!(out.status.success(), "{}", out.stderr);
}
