//! The REST API on the HTTP listener: the same JSON as failoverctl, the
//! same refusals, and the same roles.

use serde_json::Value;
use tests::{Cluster, FAST};

fn json(answer: Option<(u16, String)>) -> (u16, Value) {
    let (code, body) = answer.expect("the HTTP listener answers");
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON ({code}): {body}"));
    (code, value)
}

/// A group's JSON without what changes from one moment to the next.
fn steady(mut group: Value) -> Value {
    for m in group["members"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("last_contact");
    }
    group
}

#[test]
fn the_rest_api_answers_and_acts_like_failoverctl() {
    let mut c = Cluster::start();
    let (code, created) = json(c.http_call(
        "POST",
        "/api/v1/groups",
        None,
        Some(r#"{"name": "db", "members": ["rec-1", "rec-2"]}"#),
    ));
    assert_eq!(code, 201, "{created}");
    c.ctl_ok(&["group", "set", "db", FAST[0], FAST[1], FAST[2], FAST[3]]);
    c.start_agent("rec-1");
    c.wait_primary("db", "rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-2"]);

    let (code, group) = json(c.http_get("/api/v1/groups/db"));
    assert_eq!(code, 200);
    assert_eq!(
        steady(group),
        steady(c.group("db")),
        "the JSON of group show -o json"
    );
    let (_, groups) = json(c.http_get("/api/v1/groups"));
    assert_eq!(groups.as_array().unwrap().len(), 1);

    // Acting: a promotion as {"to": NODE}.
    let (code, promoted) = json(c.http_call(
        "POST",
        "/api/v1/groups/db/promote",
        None,
        Some(r#"{"to": "rec-2"}"#),
    ));
    assert_eq!(code, 200, "{promoted}");
    c.wait_primary("db", "rec-2");
    let (_, none) = json(c.http_get("/api/v1/events?since=2999-01-01T00:00:00Z"));
    assert_eq!(none, serde_json::json!([]), "nothing since a time to come");
    let (_, events) = json(c.http_get("/api/v1/events?group=db&limit=50&since=1h"));
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "stepping_down"),
        "{events}"
    );

    // Refusals: the gRPC code as an HTTP status, one line, nothing changed.
    let long_name = format!("/api/v1/groups/{}", "a".repeat(5000));
    let cases = [
        (
            "POST",
            "/api/v1/groups/db/promote",
            Some(r#"{"to": "rec-9"}"#),
            404,
            "not a member",
        ),
        (
            "POST",
            "/api/v1/groups/db/promote",
            Some(r#"{"too": "rec-1"}"#),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/api/v1/groups/db/promote",
            Some("{"),
            400,
            "the request body",
        ),
        ("GET", "/api/v1/groups/nope", None, 404, "does not exist"),
        (
            "POST",
            "/api/v1/groups",
            Some(r#"{"name": "Bad Name"}"#),
            400,
            "not allowed",
        ),
        ("GET", "/api/v1/elsewhere", None, 404, "openapi.json"),
        ("GET", &long_name, None, 400, "longer than 63"),
        // A form on another site cannot act: a POST must declare JSON.
        (
            "POST",
            "/api/v1/groups/db/restore",
            None,
            415,
            "application/json",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let (code, answer) = json(c.http_call(method, path, None, body));
        assert_eq!(code, status, "{method} {path}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{method} {path}: {error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }
    assert_eq!(
        c.group("db")["primary"],
        "rec-2",
        "refusals changed nothing"
    );

    let (code, spec) = json(c.http_get("/api/v1/openapi.json"));
    assert_eq!(code, 200);
    assert!(
        spec["paths"]["/api/v1/groups/{name}/promote"]["post"].is_object(),
        "{spec}"
    );
}

#[test]
fn the_rest_api_takes_the_same_credentials_and_roles_as_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let made = tests::tls::pki(&["token", "--name", "vera", "--role", "viewer"]);
    let lines: Vec<&str> = made.lines().collect();
    let (viewer, entry) = (lines[1].trim().to_owned(), lines[3..].join("\n"));
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, format!("{entry}\n")).unwrap();
    let c = Cluster::start_secure(&["--auth-tokens", tokens.to_str().unwrap()]);
    c.add_group("db", &["rec-1", "rec-2"]);

    let (code, anonymous) = json(c.http_call("GET", "/api/v1/groups", None, None));
    assert_eq!(code, 401, "{anonymous}");
    let (code, wrong) = json(c.http_call("GET", "/api/v1/groups", Some("not-a-token"), None));
    assert_eq!(code, 401, "{wrong}");
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .contains("not in the token file"),
        "{wrong}"
    );
    let (code, groups) = json(c.http_call("GET", "/api/v1/groups", Some(&viewer), None));
    assert_eq!(code, 200, "{groups}");
    let (code, refused) = json(c.http_call("DELETE", "/api/v1/groups/db", Some(&viewer), None));
    assert_eq!(code, 403, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("admin"),
        "{refused}"
    );
    assert_eq!(c.group("db")["name"], "db", "still there");

    // Metrics: totals for anyone, names only for those who may see them.
    let (code, totals) = c.http_call("GET", "/metrics", None, None).unwrap();
    assert_eq!(code, 200);
    assert!(totals.contains("failover_heartbeats_total"), "{totals}");
    assert!(
        !totals.contains("group=\"db\""),
        "no names for strangers: {totals}"
    );
    let (_, named) = c.http_call("GET", "/metrics", Some(&viewer), None).unwrap();
    assert!(
        named.contains("failover_group_epoch{group=\"db\"}"),
        "{named}"
    );
}

#[test]
fn the_rest_api_keeps_to_its_openapi_document() {
    // schemathesis (PyPI) generates requests from the document — valid and
    // invalid ones, and sequences (create, then act on what was created) —
    // and checks every answer against it: status codes, content types,
    // schemas, no server errors, invalid input refused. Two checks are
    // left out: the settings' ranges and a member's existence cannot be
    // said in a schema, so a schema-valid request may rightly be refused.
    let mut c = Cluster::start();
    c.add_group_with("db", &["rec-1", "rec-2"], &FAST);
    c.start_agent("rec-1");
    c.start_agent("rec-2");
    c.wait_connected("db", &["rec-1", "rec-2"]);
    let out = std::process::Command::new(tests::sinks::python())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/api/v1/openapi.json", c.http_addr()))
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,ensure_resource_availability",
            "--exclude-path",
            "/api/v1/events/stream",
            "--max-examples",
            "40",
            "--workers",
            "1",
            "--no-color",
        ])
        .current_dir(c.path(""))
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(text.contains("passed"), "{text}");
    assert!(!c.logs().contains("panicked"), "{}", c.logs());
    // The coordinator still serves.
    assert_eq!(c.http_get("/readyz").map(|(code, _)| code), Some(200));
}
