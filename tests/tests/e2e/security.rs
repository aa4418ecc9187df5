//! TLS, node identities and operator roles, with certificates made by the
//! real `failoverctl pki` and real agents, coordinator and failoverctl.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;

use proto::v1 as pb;
use tests::raw::{self, RawSession, Target, claim};
use tests::tls::{Pki, pem_certificate, served_certificate};
use tests::{Cluster, bin, epoch};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn pki(c: &Cluster) -> &Pki {
    c.pki.as_ref().expect("a secure cluster")
}

/// `--tls-cert` and `--tls-key` for operator `name` with `role`.
fn operator(c: &Cluster, name: &str, role: &str) -> Vec<String> {
    let (cert, key) = pki(c).operator(name, role);
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn secure_pair() -> Cluster {
    let mut c = Cluster::start_secure(&[]);
    for n in ["n1", "n2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2"]);
    c.add_group("g", &["n1", "n2"]);
    c.wait_hook("n1 promoted", |h| h.node == "n1" && h.role == "primary");
    c
}

#[test]
fn agents_with_node_certificates_fail_over_over_tls() {
    let mut c = secure_pair();
    c.kill_agent("n1");
    let g = c.wait_primary("g", "n2");
    assert_eq!(epoch(&g), 2);
    c.wait_hook("n2 promoted", |h| h.node == "n2" && h.role == "primary");
    // The HTTP listener speaks TLS too.
    assert_eq!(c.http_get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(
        tests::http_get(c.http, "/healthz"),
        None,
        "plaintext HTTP was answered"
    );
}

#[test]
fn each_role_may_do_what_it_allows_and_is_told_what_it_lacks() {
    let c = secure_pair();
    let viewer = operator(&c, "vic", "viewer");
    let op = operator(&c, "olga", "operator");

    // A viewer reads but does not move roles.
    assert!(
        c.ctl_as(&strs(&viewer), &["group", "list"])
            .status
            .success()
    );
    let refused = c.ctl_as(&strs(&viewer), &["group", "promote", "g", "--to", "n2"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("needs the operator role") && refused.stderr.contains("vic"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        c.group("g")["primary"],
        "n1",
        "a refused promote moved the role"
    );

    // An operator moves roles but does not delete groups.
    let promoted = c.ctl_as(&strs(&op), &["group", "promote", "g", "--to", "n2"]);
    assert!(promoted.status.success(), "{}", promoted.stderr);
    assert_eq!(c.group("g")["primary"], "n2");
    let refused = c.ctl_as(&strs(&op), &["group", "delete", "g", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("needs the admin role"),
        "{}",
        refused.stderr
    );
    assert!(c.ctl(&["group", "show", "g"]).status.success());

    // Events name the authenticated operator.
    let moved = c.events_of_kind("stepping_down");
    assert!(
        moved.iter().any(|e| e["actor"] == "olga"),
        "the switchover is not recorded as olga's: {moved:?}"
    );

    // An admin deletes it.
    c.ctl_ok(&["group", "delete", "g", "--yes"]);
    assert_eq!(c.ctl(&["group", "show", "g"]).status.code(), Some(1));

    // Without any identity: refused, with what to present.
    let anonymous = c.ctl_as(&[], &["group", "list"]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        anonymous.stderr.contains("certificate") || anonymous.stderr.contains("token"),
        "{}",
        anonymous.stderr
    );
}

#[test]
fn tokens_authenticate_operators_and_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // `pki token` prints the secret on its second line and the entry for
    // the coordinator's token file after it.
    let made = tests::tls::pki(&["token", "--name", "tina", "--role", "operator"]);
    let lines: Vec<&str> = made.lines().collect();
    let token = lines[1].trim();
    let entry: String = lines[3..].join("\n");
    assert!(
        !entry.contains(token),
        "the token file would hold the secret"
    );
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("{entry}\n")).unwrap();
    let token_file = dir.path().join("tina.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let bad_file = dir.path().join("bad.token");
    std::fs::write(&bad_file, "0123456789abcdef\n").unwrap();

    let mut c = Cluster::start_secure(&["--auth-tokens", &tokens.display().to_string()]);
    for n in ["n1", "n2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2"]);
    c.add_group("g", &["n1", "n2"]);
    c.wait_primary("g", "n1");

    let tina = ["--token-file", token_file.to_str().unwrap()];
    assert!(c.ctl_as(&tina, &["group", "list"]).status.success());
    let moved = c.ctl_as(&tina, &["group", "promote", "g", "--to", "n2"]);
    assert!(moved.status.success(), "{}", moved.stderr);
    let refused = c.ctl_as(&tina, &["group", "delete", "g", "--yes"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("needs the admin role"),
        "{}",
        refused.stderr
    );
    assert!(
        c.events_of_kind("stepping_down")
            .iter()
            .any(|e| e["actor"] == "tina"),
        "the switchover is not recorded as tina's"
    );

    // The environment works as the flag does.
    let out = Command::new(bin("failoverctl"))
        .args(["--coordinator", &c.url(), "group", "list"])
        .env("FAILOVER_TLS_CA", pki(&c).ca())
        .env("FAILOVER_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = c.ctl_as(
        &["--token-file", bad_file.to_str().unwrap()],
        &["group", "list"],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stderr.contains("token"), "{}", bad.stderr);
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);

    // The token file is re-read when it changes: a new token works and a
    // removed one stops working, without a restart.
    let made = tests::tls::pki(&["token", "--name", "uma", "--role", "viewer"]);
    let lines: Vec<&str> = made.lines().collect();
    let uma_file = dir.path().join("uma.token");
    std::fs::write(&uma_file, format!("{}\n", lines[1].trim())).unwrap();
    std::fs::write(&tokens, format!("{}\n", lines[3..].join("\n"))).unwrap();
    let uma = ["--token-file", uma_file.to_str().unwrap()];
    c.wait_until("the new token is accepted", || {
        c.ctl_as(&uma, &["group", "list"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(c.ctl_as(&tina, &["group", "list"]).status.code(), Some(1));

    // A watch by a token that is then revoked ends at the next event.
    let mut watch = c
        .ctl_command_as(&uma)
        .args(["events", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Watching once its backlog (group_created, ...) is printed.
    let mut first = String::new();
    // Kept open to the end: a closed pipe would end the watch by itself.
    let mut out = std::io::BufReader::new(watch.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(!first.is_empty());
    // A file holding another token only: uma's is revoked.
    let other = tests::tls::pki(&["token", "--name", "vera", "--role", "viewer"]);
    let other: Vec<&str> = other.lines().collect();
    std::fs::write(&tokens, format!("{}\n", other[3..].join("\n"))).unwrap();
    c.wait_until("the revoked token is refused", || {
        (c.ctl_as(&uma, &["group", "list"]).status.code() == Some(1)).then_some(())
    });
    c.ctl_ok(&["group", "member", "drain", "g", "n2"]);
    let status = c.wait_until("the watch ends", || watch.try_wait().unwrap());
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(watch.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("revoked"), "{stderr}");
    drop(out);
}

#[test]
fn a_node_certificate_for_n2_claiming_n1_is_refused_and_n1_keeps_its_role() {
    let mut c = secure_pair();
    let before = c.group("g");
    // A real agent process for node id n1 holding n2's certificate.
    let config = c.agent_config_full("n1", "n1+impostor", "n2", "");
    c.start_agent_with("n1+impostor", &config);
    c.wait_until("the impostor says why it was refused", || {
        let log = c.agent("n1+impostor").log_text();
        log.contains("names node n2").then_some(())
    });
    let refused = c.wait_until("an identity_refused event", || {
        c.events_of_kind("identity_refused").into_iter().next()
    });
    assert!(
        refused["reason"].as_str().unwrap_or("").contains("n2"),
        "{refused}"
    );
    // Raw sessions claiming n1 without proof are refused as well, and
    // cannot touch n1's role.
    let attempts = [
        ("n2's certificate", c.target("n2")),
        (
            "no certificate",
            Target {
                url: c.url(),
                tls: pki(&c).anonymous_tls(),
            },
        ),
    ];
    for (label, to) in attempts {
        let refused = runtime().block_on(async {
            let claims = vec![claim("g", pb::Role::Secondary, epoch(&before))];
            RawSession::open(&to, raw::hello("n1", claims)).await.err()
        });
        assert_eq!(
            refused.as_ref().map(tonic::Status::code),
            Some(tonic::Code::PermissionDenied),
            "{label}: {refused:?}"
        );
    }
    // n1 keeps its role at the same epoch and never fenced.
    let after = c.group("g");
    assert_eq!(after["primary"], "n1");
    assert_eq!(epoch(&after), epoch(&before));
    assert!(
        !c.hooks()
            .iter()
            .any(|h| h.node == "n1" && h.role == "fenced"),
        "n1 fenced: {:?}",
        c.hooks()
    );
}

#[test]
fn a_certificate_from_another_ca_or_an_expired_one_is_refused() {
    let mut c = secure_pair();
    let foreign = Pki::init(&c.path("foreign"));
    let (expired_cert, expired_key) = pki(&c).expired_node("n3");
    let attempts = [
        (
            "another CA's certificate",
            Target {
                url: c.url(),
                tls: proto::client::ClientTls {
                    ca: Some(pki(&c).ca()),
                    ..foreign.node_tls("n3")
                },
            },
        ),
        (
            "an expired certificate",
            Target {
                url: c.url(),
                tls: proto::client::ClientTls {
                    ca: Some(pki(&c).ca()),
                    cert: Some(expired_cert.clone()),
                    key: Some(expired_key.clone()),
                },
            },
        ),
    ];
    for (label, to) in attempts {
        let result = runtime()
            .block_on(async { RawSession::open(&to, raw::hello("n3", vec![])).await.err() });
        assert!(result.is_some(), "{label}: accepted");
    }
    // A real agent with the expired certificate never connects.
    let config = c.agent_config("n3", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &pki(&c).node("n3").0.display().to_string(),
            &expired_cert.display().to_string(),
        )
        .replace(
            &pki(&c).node("n3").1.display().to_string(),
            &expired_key.display().to_string(),
        );
    std::fs::write(&config, text).unwrap();
    c.start_agent_with("n3", &config);
    c.wait_until("the agent reports the refused handshake", || {
        let log = c.agent("n3").log_text();
        log.contains("cannot open a session").then_some(())
    });
    let nodes = c.ctl_json(&["node", "list"]);
    assert!(
        !nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["node"] == "n3" && n["connected"] == true),
        "{nodes}"
    );
    // failoverctl trusting another CA refuses the coordinator.
    let out = Command::new(bin("failoverctl"))
        .args(["--coordinator", &c.url(), "--tls-ca"])
        .arg(foreign.ca())
        .args(["group", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn certificates_rotate_under_load_without_dropping_a_session() {
    let mut c = Cluster::start_secure(&[]);
    for n in ["n1", "n2", "n3"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["n1", "n2", "n3"]);
    c.add_group("g", &["n1", "n2", "n3"]);
    c.wait_primary("g", "n1");
    let pki = pki(&c).clone();
    let (cert, _) = pki.coordinator();
    let old = pem_certificate(&cert).unwrap();
    assert_eq!(served_certificate(c.grpc, &pki.ca()), Some(old.clone()));

    // A new certificate on disk is picked up by itself...
    pki.reissue_coordinator();
    let new = pem_certificate(&cert).unwrap();
    assert_ne!(new, old);
    c.wait_until("the gRPC listener serves the new certificate", || {
        (served_certificate(c.grpc, &pki.ca()) == Some(new.clone())).then_some(())
    });
    c.wait_until("the HTTP listener serves the new certificate", || {
        (served_certificate(c.http, &pki.ca()) == Some(new.clone())).then_some(())
    });
    // ... and SIGHUP reloads as well.
    pki.reissue_coordinator();
    let newer = pem_certificate(&cert).unwrap();
    c.coordinator
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    c.wait_until("SIGHUP loads the newer certificate", || {
        (served_certificate(c.grpc, &pki.ca()) == Some(newer.clone())).then_some(())
    });
    assert!(c.ctl(&["group", "list"]).status.success());

    // No agent lost its session, and nobody failed over.
    for n in ["n1", "n2", "n3"] {
        let log = c.agent(n).log_text();
        assert_eq!(
            log.matches("welcomed").count(),
            1,
            "{n} reconnected:\n{log}"
        );
    }
    let g = c.group("g");
    assert_eq!((g["primary"].as_str(), epoch(&g)), (Some("n1"), 1));
    assert!(
        c.coordinator
            .as_ref()
            .unwrap()
            .log_text()
            .contains("TLS certificates reloaded")
    );
}

#[test]
fn a_key_that_does_not_match_keeps_the_certificate_in_use() {
    let c = Cluster::start_secure(&[]);
    let pki = pki(&c).clone();
    let (cert, _) = pki.coordinator();
    let old = pem_certificate(&cert).unwrap();
    // Another certificate over the coordinator's, with the old key.
    let other = pki.node("n9").0;
    std::fs::copy(&other, &cert).unwrap();
    c.wait_until("the coordinator refuses the mismatched pair", || {
        let log = c.coordinator.as_ref().unwrap().log_text();
        log.contains("TLS certificates not reloaded").then_some(())
    });
    assert_eq!(served_certificate(c.grpc, &pki.ca()), Some(old));
    assert!(c.ctl(&["group", "list"]).status.success());
}

#[test]
fn garbage_and_silence_instead_of_a_tls_handshake_do_not_stall_agents() {
    let mut c = secure_pair();
    // Connections that never say anything, and ones that send junk.
    let mut held = Vec::new();
    for i in 0..300 {
        let Ok(mut s) = TcpStream::connect(c.grpc) else {
            continue;
        };
        if i % 3 == 0 {
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x16\x03\x01\xff\xff garbage");
        }
        held.push(s);
    }
    // A new agent still connects and the group still fails over.
    c.start_agent("n3");
    c.wait_nodes(&["n3"]);
    c.ctl_ok(&["group", "member", "add", "g", "n3"]);
    c.kill_agent("n1");
    c.wait_primary("g", "n2");
    assert_eq!(c.http_get("/readyz").map(|r| r.0), Some(200));
    drop(held);
}

#[test]
fn plaintext_beyond_loopback_is_refused_unless_chosen_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(bin("failover-coordinator"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let refused = check("listen = \"0.0.0.0:7400\"\n");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("plaintext") && stderr.contains("tls = \"off\""),
        "{stderr}"
    );
    let chosen = check("listen = \"0.0.0.0:7400\"\ntls = \"off\"\n");
    assert!(
        chosen.status.success(),
        "{}",
        String::from_utf8_lossy(&chosen.stderr)
    );
    // TLS without a client CA would let anyone act as any node: refused
    // beyond loopback too.
    let pki = Pki::init(&dir.path().join("pki"));
    let (cert, key) = pki.coordinator();
    let no_ca = check(&format!(
        "listen = \"0.0.0.0:7400\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    assert_eq!(no_ca.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&no_ca.stderr);
    assert!(stderr.contains("client CA"), "{stderr}");
    // failoverctl never sends a token in the clear to another machine (it
    // refuses before connecting).
    let token = dir.path().join("t.token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    let out = Command::new(bin("failoverctl"))
        .args(["--coordinator", "http://10.255.255.1:7400", "--token-file"])
        .arg(&token)
        .args(["group", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to send a bearer token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rotating_the_coordinator_certificate_keeps_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki_arg = pki.display().to_string();
    tests::tls::pki(&["init", &pki_arg, "--san", "coordinator.example.com"]);
    tests::tls::pki(&[
        "issue",
        &pki_arg,
        "--coordinator-cert",
        "--san",
        "127.0.0.5",
    ]);
    let names =
        proto::identity::server_names(&pem_certificate(&pki.join("coordinator.pem")).unwrap());
    for name in [
        "localhost",
        "127.0.0.1",
        "coordinator.example.com",
        "127.0.0.5",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} dropped: {names:?}");
    }
}

#[test]
fn check_config_refuses_certificates_that_could_never_work() {
    let c = Cluster::start_secure(&[]);
    let pki = pki(&c);
    let (n1_cert, n1_key) = pki.node("n1");
    let (_, n2_key) = pki.node("n2");
    let (op_cert, op_key) = pki.operator("olga", "operator");
    let agent = |cert: &std::path::Path, key: &std::path::Path, url: &str| {
        Command::new(bin("failover-agent"))
            .args(["--node-id", "n1", "--coordinator", url, "--tls-ca"])
            .arg(pki.ca())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let url = c.url();
    for (cert, key, coordinator, expect) in [
        (&n1_cert, &n2_key, url.as_str(), "is not the key of"),
        (&op_cert, &op_key, url.as_str(), "names operator olga"),
        (&n1_cert, &n1_key, "http://127.0.0.1:1", "is not https://"),
    ] {
        let out = agent(cert, key, coordinator);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expect}: {stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
    }
    assert!(agent(&n1_cert, &n1_key, &url).status.success());

    // The coordinator checks the files its configuration names.
    let config = c.path("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            n1_cert.display(),
            n2_key.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin("failover-coordinator"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[tls]"));
    // A misspelt key is named.
    std::fs::write(&config, "[tls]\nca = \"x\"\ncert = \"y\"\nkey = \"z\"\n").unwrap();
    let out = Command::new(bin("failover-coordinator"))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `ca`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_credential_that_names_no_operator_is_refused_with_the_reason() {
    let c = secure_pair();
    let (cert, key) = pki(&c).node("n1");
    let out = c.ctl_as(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &["group", "list"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("names node n1"), "{}", out.stderr);
    // An agent presenting an operator's certificate is turned away at
    // once, and says so.
    let mut c = c;
    let config = c.agent_config("n3", "");
    let (op_cert, op_key) = pki(&c).operator("olga", "operator");
    let (n3_cert, n3_key) = pki(&c).node("n3");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            &n3_cert.display().to_string(),
            &op_cert.display().to_string(),
        )
        .replace(&n3_key.display().to_string(), &op_key.display().to_string());
    std::fs::write(&config, text).unwrap();
    c.start_agent_with("n3", &config);
    c.wait_until("the agent says it was refused", || {
        let log = c.agent("n3").log_text();
        (log.contains("refused by the coordinator") && log.contains("not a node")).then_some(())
    });
}
