//! Coordinator replicas on a real 3-member etcd cluster: one leads, the
//! others send agents and operators to it, and `kill -9` of the leader
//! moves the leadership without moving any group's primary or epoch.

use tests::{Cluster, epoch};

fn primary_and_epoch(c: &Cluster, group: &str) -> (String, u64) {
    let g = c.group(group);
    (g["primary"].as_str().unwrap_or("").to_owned(), epoch(&g))
}

#[test]
fn a_killed_leader_is_replaced_and_no_group_notices() {
    let mut c = Cluster::start_replicated(3, 3);
    let leader = c.wait_leader();
    for n in ["rec-1", "rec-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2"]);
    // A lease far longer than the leader's (2 s): the new leader renews
    // it before it runs out.
    c.ctl_ok(&[
        "group",
        "add",
        "recorders",
        "--member",
        "rec-1",
        "--member",
        "rec-2",
        "--heartbeat-interval",
        "200ms",
        "--failover-timeout",
        "10s",
    ]);
    c.wait_primary("recorders", "rec-1");
    let before = primary_and_epoch(&c, "recorders");

    // Every replica answers cluster status; followers name the leader.
    let follower = (leader + 1) % 3;
    let status = c.ctl_json(&["cluster", "status"]);
    assert_eq!(status["store"], "etcd", "{status}");
    assert_eq!(status["leader"], c.replica_url(leader).as_str(), "{status}");
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{status}");
    assert_eq!(
        replicas.iter().filter(|r| r["role"] == "leader").count(),
        1,
        "{status}"
    );
    let endpoints = status["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 3, "{status}");
    assert!(endpoints.iter().all(|e| e["healthy"] == true), "{status}");

    // failoverctl pointed at a follower alone is sent to the leader.
    let via_follower = c
        .ctl_command_at(&c.replica_url(follower))
        .args(["group", "show", "recorders", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        via_follower.status.success(),
        "{}",
        String::from_utf8_lossy(&via_follower.stderr)
    );
    assert!(String::from_utf8_lossy(&via_follower.stderr).contains("asking the leader"));

    // An acknowledged change just before the leader dies is kept.
    c.ctl_ok(&["group", "set", "recorders", "--failback-delay", "42s"]);
    c.kill_replica(leader);
    let next = c.wait_until("another replica leads", || {
        c.leader().filter(|l| *l != leader)
    });
    assert_ne!(next, leader);
    let g = c.wait_until("both agents are back", || {
        let g = c.group("recorders");
        tests::member(&g, "rec-2")["connected"]
            .as_bool()
            .filter(|c| *c)
            .map(|_| g.clone())
    });
    assert_eq!(g["policy"]["failback_delay"], "42s", "{g}");
    assert_eq!(
        primary_and_epoch(&c, "recorders"),
        before,
        "the primary and its epoch stay through the leader's death"
    );
    // No hook ever ran for a new primary.
    assert!(
        c.hooks()
            .iter()
            .all(|h| h.role != "primary" || h.node == "rec-1"),
        "{:?}",
        c.hooks()
    );

    // The killed replica comes back as a follower.
    c.start_replica(leader);
    assert_eq!(c.leader(), Some(next));
}

fn coordinator(args: &[&str]) -> std::process::Output {
    std::process::Command::new(tests::bin("failover-coordinator"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn groups_move_from_the_embedded_store_to_etcd_with_their_epochs_and_floors() {
    let mut c = Cluster::start();
    for n in ["rec-1", "rec-2"] {
        c.start_agent(n);
    }
    c.wait_nodes(&["rec-1", "rec-2"]);
    c.add_group("recorders", &["rec-1", "rec-2"]);
    c.wait_primary("recorders", "rec-1");
    c.ctl_ok(&["group", "promote", "recorders", "--to", "rec-2"]);
    c.add_group("gone", &["rec-1"]);
    c.ctl_ok(&["group", "delete", "gone", "--yes"]);
    let before = c.group("recorders");
    // The embedded store is exported while no coordinator uses it.
    c.kill_coordinator();
    let data = c.path("data");
    let file = c.path("export.json");
    let data_dir = data.to_str().unwrap();
    let file_name = file.to_str().unwrap();
    let out = coordinator(&["--data-dir", data_dir, "export", "--output", file_name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the export holds secrets: {mode:o}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let groups = doc["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{doc}");
    assert_eq!(groups[0]["epoch"], before["epoch"], "{doc}");
    assert_eq!(groups[0]["primary"], "rec-2", "{doc}");
    assert_eq!(doc["epoch_floors"][0]["group"], "gone", "{doc}");

    let etcd = tests::etcd::EtcdCluster::start(c.path("etcd"), 1);
    let endpoints = etcd.endpoints();
    let to_etcd = ["--store", "etcd", "--etcd-endpoints", endpoints.as_str()];
    // A file that is no export changes nothing.
    std::fs::write(c.path("bad.json"), "{\"format\": \"x\"}").unwrap();
    let bad = coordinator(
        &[
            &to_etcd[..],
            &["import", c.path("bad.json").to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let imported = coordinator(&[&to_etcd[..], &["import", file_name]].concat());
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert!(String::from_utf8_lossy(&imported.stderr).contains("imported 1 groups"));
    // Only into an empty store.
    let again = coordinator(&[&to_etcd[..], &["import", file_name]].concat());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds 1 groups"));
    // What etcd holds is what was exported.
    let back = coordinator(&[&to_etcd[..], &["export"]].concat());
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let back: serde_json::Value = serde_json::from_slice(&back.stdout).unwrap();
    assert_eq!(back["groups"], doc["groups"]);
    assert_eq!(back["epoch_floors"], doc["epoch_floors"]);
}

#[test]
fn replicas_reach_etcd_over_tls_with_a_client_certificate_and_without_one_say_why() {
    let mut c = Cluster::prepare();
    let pki = tests::tls::Pki::init(&c.path("pki"));
    // etcd serves with the certificate made for 127.0.0.1 and wants client
    // certificates from the same CA.
    let (server_cert, server_key) = pki.coordinator();
    let etcd = tests::etcd::EtcdCluster::start_with(
        c.path("etcd"),
        1,
        Some(tests::etcd::EtcdTls {
            cert: server_cert,
            key: server_key,
            ca: pki.ca(),
        }),
    );
    let (client_cert, client_key) = pki.node("etcd-client");
    let endpoints = etcd.endpoints();
    assert!(endpoints.starts_with("https://"), "{endpoints}");
    let ca = pki.ca().display().to_string();
    let (cert, key) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    // Without a client certificate etcd refuses the replica: it says so
    // and keeps trying (it does not serve, nor exit).
    let mut command = std::process::Command::new(tests::bin("failover-coordinator"));
    command
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-ca",
            &ca,
        ])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]);
    let without = tests::Proc::spawn(command, c.path("without-cert.log"));
    c.wait_until("the replica says it cannot reach etcd", || {
        without
            .log_text()
            .contains("cannot reach etcd yet")
            .then_some(())
    });
    drop(without);
    // With one, it leads and writes.
    c.coordinator_args = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        endpoints.as_str(),
        "--etcd-ca",
        ca.as_str(),
        "--etcd-cert",
        cert.as_str(),
        "--etcd-key",
        key.as_str(),
    ]
    .map(str::to_owned)
    .to_vec();
    c.etcd = Some(etcd);
    c.start_coordinator();
    c.ctl_ok(&["group", "add", "g", "--member", "a"]);
    let status = c.ctl_json(&["cluster", "status"]);
    assert_eq!(status["endpoints"][0]["healthy"], true, "{status}");
    assert_eq!(c.group("g")["name"], "g");
}
