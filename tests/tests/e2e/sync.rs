//! State sync between real agents on loopback: a directory of thousands
//! of files and a 200 MB file reach every standby and follow the primary
//! through a failover; a primary killed in the middle of a transfer
//! leaves the standby with the old copy or the new one, never a mix;
//! `max_sync_lag` promotes the member with the fresh copy; bad `[[sync]]`
//! keys are refused in one line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tests::{Cluster, check_config, member};

/// A `[[sync]]` section for `path`, leaving out `*.lock`.
fn sync_section(path: &Path, extra: &str) -> String {
    sync_section_excluding(path, &["*.lock"], extra)
}

fn sync_section_excluding(path: &Path, exclude: &[&str], extra: &str) -> String {
    format!(
        "\n[[sync]]\nname = \"data\"\npath = \"{}\"\ninterval = \"300ms\"\nexclude = {exclude:?}\n{extra}",
        path.display()
    )
}

/// A copy of the tree at `from` as it is now, kept as `name`.
fn keep_copy(c: &Cluster, from: &Path, name: &str) -> PathBuf {
    let to = c.path(name);
    let copied = Command::new("cp").arg("-a").arg(from).arg(&to).status();
    assert!(
        copied.is_ok_and(|s| s.success()),
        "cp -a {}",
        from.display()
    );
    to
}

/// Starts `node`'s agent syncing its own data directory (one host, so
/// each agent has its own path; in production it is the same path).
fn start_syncing(c: &mut Cluster, node: &str, extra: &str) -> PathBuf {
    let data = c.path(&format!("data-{node}"));
    let config = c.agent_config(node, &sync_section(&data, extra));
    c.start_agent_with(node, &config);
    data
}

/// Whether two trees hold the same files, links and directories (what
/// `*.lock` excludes aside).
fn same_tree(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "*.lock"])
        .arg(a)
        .arg(b)
        .output()
        .expect("diff runs")
        .status
        .success()
}

fn syncs_of(group: &Value, node: &str) -> Vec<Value> {
    member(group, node)["syncs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The snapshot `node` reports holding, and its state.
fn held(group: &Value, node: &str) -> Option<(String, String)> {
    let s = syncs_of(group, node).into_iter().next()?;
    Some((
        s["snapshot"].as_str()?.to_owned(),
        s["state"].as_str()?.to_owned(),
    ))
}

/// Waits until every one of `nodes` holds the snapshot the primary
/// publishes (other than `not`), fresh; returns that snapshot.
fn wait_in_step(c: &Cluster, group: &str, source: &str, nodes: &[&str]) -> String {
    wait_in_step_past(c, group, source, nodes, "")
}

fn wait_in_step_past(c: &Cluster, group: &str, source: &str, nodes: &[&str], not: &str) -> String {
    c.wait_until(&format!("{nodes:?} hold {source}'s snapshot"), || {
        let g = c.try_ctl_json(&["group", "show", group])?;
        let (snapshot, state) = held(&g, source)?;
        (state == "source"
            && snapshot != not
            && nodes
                .iter()
                .all(|n| held(&g, n) == Some((snapshot.clone(), "fresh".into()))))
        .then_some(snapshot)
    })
}

fn write_tree(root: &Path, files: usize, tag: &str) {
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:04}.conf")), format!("{tag} {i}\n")).unwrap();
    }
}

fn write_big(path: &Path, megabytes: usize, seed: u8) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for mb in 0..megabytes {
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(mb as u8) ^ seed;
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

#[test]
fn a_directory_reaches_every_standby_and_follows_the_primary() {
    let mut c = Cluster::start();
    let a = c.path("data-a");
    write_tree(&a, 3000, "v1");
    write_big(&a.join("big.bin"), 200, 1);
    std::os::unix::fs::symlink("d00/f0000.conf", a.join("current")).unwrap();
    std::fs::write(a.join("app.lock"), "a's own").unwrap();
    c.add_group("g", &["a", "b", "c"]);
    let a = start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    let b = start_syncing(&mut c, "b", "");
    let cc = start_syncing(&mut c, "c", "");
    let first = wait_in_step(&c, "g", "a", &["b", "c"]);
    assert!(same_tree(&a, &b) && same_tree(&a, &cc), "copies differ");
    // Excluded paths stay where they are.
    assert!(!b.join("app.lock").exists());
    std::fs::write(b.join("app.lock"), "b's own").unwrap();
    // A standby's hook hears how its copy stands.
    let hook = c.wait_hook("b's secondary hook", |h| {
        h.node == "b" && h.role == "secondary"
    });
    assert!(
        ["none", "stale", "fresh"].contains(&hook.sync_state.as_str()),
        "{hook:?}"
    );

    // A change on the primary: only it travels.
    std::fs::write(a.join("d07/f0007.conf"), "v2 7\n").unwrap();
    std::fs::remove_file(a.join("d01/f0001.conf")).unwrap();
    let before = c.group("g");
    let received = |g: &Value| syncs_of(g, "b")[0]["bytes"].as_u64().unwrap();
    let second = c.wait_until("b holds the change", || {
        let g = c.try_ctl_json(&["group", "show", "g"])?;
        let (snapshot, state) = held(&g, "b")?;
        (snapshot != first && state == "fresh" && same_tree(&a, &b)).then_some(g)
    });
    assert!(
        received(&second) - received(&before) < 1 << 20,
        "an unchanged 200 MB file was sent again"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("app.lock")).unwrap(),
        "b's own"
    );

    // The primary dies: b takes over with a fresh copy and publishes it.
    c.kill_agent("a");
    c.wait_primary("g", "b");
    let promoted = c.wait_hook("b's primary hook", |h| h.node == "b" && h.role == "primary");
    assert_eq!(promoted.sync_state, "fresh", "{promoted:?}");
    let (taken_over, _) = held(&c.group("g"), "c").unwrap();
    std::fs::write(b.join("d09/new.conf"), "written on b\n").unwrap();
    std::fs::write(b.join("d02/f0002.conf"), "changed on b\n").unwrap();
    wait_in_step_past(&c, "g", "b", &["c"], &taken_over);
    assert!(same_tree(&b, &cc));
    // The old primary comes back as a standby and receives b's copy.
    let config = c.path("a.toml");
    c.start_agent_with("a", &config);
    wait_in_step(&c, "g", "b", &["a", "c"]);
    assert!(same_tree(&a, &b), "the old primary kept its own copy");
    assert_eq!(
        std::fs::read_to_string(a.join("app.lock")).unwrap(),
        "a's own",
        "a's excluded file did not survive the new copy"
    );
    // The metrics show every member's copy.
    let (_, metrics) = c.http_get("/metrics").unwrap();
    assert!(
        metrics.contains("failover_sync_age_seconds{group=\"g\",node=\"c\",sync=\"data\"}"),
        "{metrics}"
    );
}

#[test]
fn a_primary_killed_mid_transfer_leaves_the_old_copy_or_the_new_never_a_mix() {
    let mut c = Cluster::start();
    let a = c.path("data-a");
    write_tree(&a, 200, "v1");
    c.add_group_with("g", &["a", "b"], &["--failover-timeout", "2s"]);
    let a = start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    // The standby fetches slowly, so the primary dies in the middle.
    let b = start_syncing(&mut c, "b", "max_rate = \"256KiB/s\"\n");
    wait_in_step(&c, "g", "a", &["b"]);
    let old = keep_copy(&c, &a, "old");

    write_tree(&a, 200, "v2");
    write_big(&a.join("big.bin"), 8, 2);
    let new = keep_copy(&c, &a, "new");
    let start = syncs_of(&c.group("g"), "b")[0]["bytes"].as_u64().unwrap();
    c.wait_until("b is receiving the new snapshot", || {
        let g = c.try_ctl_json(&["group", "show", "g"])?;
        let s = syncs_of(&g, "b").into_iter().next()?;
        (s["bytes"].as_u64()? > start + 64 * 1024 && s["state"] == "stale").then_some(())
    });
    c.kill_agent("a");
    c.wait_primary("g", "b");
    let mixed = !same_tree(&b, &old) && !same_tree(&b, &new);
    assert!(!mixed, "b holds a mix of two snapshots");
    assert!(
        same_tree(&b, &old),
        "b applied a snapshot it never finished fetching"
    );
    let promoted = c.wait_hook("b's primary hook", |h| h.node == "b" && h.role == "primary");
    assert_eq!(promoted.sync_state, "stale", "{promoted:?}");
}

#[test]
fn max_sync_lag_promotes_the_member_with_the_fresh_copy() {
    let mut c = Cluster::start();
    let a = c.path("data-a");
    write_tree(&a, 10, "v1");
    c.add_group_with(
        "g",
        &["a", "b", "c"],
        &["--failover-timeout", "2s", "--max-sync-lag", "2s"],
    );
    let a = start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    // b can take a kilobyte a second: it falls behind on a large change.
    start_syncing(&mut c, "b", "max_rate = \"1KiB/s\"\n");
    start_syncing(&mut c, "c", "");
    wait_in_step(&c, "g", "a", &["b", "c"]);
    write_big(&a.join("big.bin"), 1, 3);
    let g = c.wait_until("c is fresh and b's copy is older than 2s", || {
        let g = c.try_ctl_json(&["group", "show", "g"])?;
        let (source, _) = held(&g, "a")?;
        let b = syncs_of(&g, "b").into_iter().next()?;
        let stale = b["state"] == "stale" && b["age_ms"].as_u64()? > 2500;
        (stale && held(&g, "c") == Some((source, "fresh".into()))).then_some(g)
    });
    let why = member(&g, "b")["why_not"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("synced copy"), "{why}");
    c.kill_agent("a");
    let g = c.wait_until("a new primary", || {
        let g = c.try_ctl_json(&["group", "show", "g"])?;
        g["primary"].as_str().filter(|p| *p != "a")?;
        Some(g)
    });
    assert_eq!(
        g["primary"], "c",
        "the member with the stale copy was promoted"
    );
}

#[test]
fn bad_sync_keys_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = "node_id = \"a\"\n";
    // A sync that holds the agent's own configuration is refused.
    let own = check_config(
        "failover-agent",
        dir.path(),
        "agent.toml",
        &format!(
            "{base}[[sync]]\nname = \"x\"\npath = \"{}\"\n",
            dir.path().display()
        ),
    );
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert!(stderr.contains("own files"), "{stderr}");
    let cases = [
        (
            "[[sync]]\nname = \"x\"\npath = \"/no/such/dir/data\"\n",
            "does not exist",
        ),
        ("[[sync]]\nname = \"x\"\npath = \"relative\"\n", "absolute"),
        (
            "[[sync]]\nname = \"x\"\npath = \"/tmp/x\"\nmax_rate = \"fast\"\n",
            "max_rate",
        ),
        (
            "[[sync]]\nname = \"x\"\npath = \"/tmp/x\"\nexclude = [\"a[\"]\n",
            "exclude",
        ),
        (
            "[[sync]]\nname = \"x\"\npath = \"/tmp/x\"\n[[sync]]\nname = \"x\"\npath = \"/tmp/y\"\n",
            "unique",
        ),
        ("peer_listen = \"everywhere\"\n", "peer_listen"),
        (
            "[[sync]]\nname = \"x\"\npath = \"/tmp/x\"\nexclude = [\"/tmp/x/run\"]\n",
            "can never match",
        ),
        (
            "[[sync]]\nname = \"My Config\"\npath = \"/tmp/x\"\n",
            "name must be lowercase",
        ),
        (
            "[[sync]]\nname = \"x\"\npath = \"/tmp/x\"\n[[sync]]\nname = \"y\"\npath = \"/tmp/x/y\"\n",
            "must not nest",
        ),
        ("peer_advertise = \"no-port\"\n", "peer_advertise"),
    ];
    for (text, expected) in cases {
        let out = check_config(
            "failover-agent",
            dir.path(),
            "agent.toml",
            &format!("{base}{text}"),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} accepted");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{text}: {stderr}");
    }
}

#[test]
fn copies_travel_over_tls_and_only_to_node_certificates() {
    use agent::sync::tls::{PeerTls, channel};
    use proto::v1 as pb;
    let mut c = Cluster::start_secure(&[]);
    write_tree(&c.path("data-a"), 20, "v1");
    c.add_group("g", &["a", "b"]);
    start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    start_syncing(&mut c, "b", "");
    wait_in_step(&c, "g", "a", &["b"]);
    let log = c.agent("a").log_text();
    assert!(log.contains("tls=true"), "{log}");
    let port: u16 = log
        .split("peer service listening port=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the peer port in a's log");
    let address = format!("127.0.0.1:{port}");
    let pki = c.pki.as_ref().unwrap();
    let ask = |cert: (PathBuf, PathBuf), expected: &str| {
        let tls = PeerTls::load(&pki.ca(), &cert.0, &cert.1).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut client = agent::sync::fetch::client(channel(&address, expected, Some(&tls))?);
            let request = pb::ManifestRequest {
                group: "g".into(),
                sync: "data".into(),
                epoch: 0,
                have: String::new(),
            };
            client
                .get_manifest(request)
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    };
    // Another node of the fleet is answered.
    assert_eq!(ask(pki.node("c"), "a"), Ok(()));
    // An operator's certificate is no agent's.
    let refused = ask(pki.operator("viewer-1", "viewer"), "a").unwrap_err();
    assert!(refused.starts_with("PermissionDenied"), "{refused}");
    // A member checks that the peer is the primary it was told of.
    let impostor = ask(pki.node("c"), "b").unwrap_err();
    assert!(impostor.contains("does not name node b"), "{impostor}");
}

#[test]
fn a_full_disk_on_the_standby_is_a_clear_error_and_the_old_copy_stays() {
    let mut c = Cluster::start();
    let a = c.path("data-a");
    write_tree(&a, 20, "v1");
    write_big(&a.join("big.bin"), 3, 4);
    c.add_group("g", &["a", "b"]);
    let a = start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    // b's copy lives on a file system of its own, 16 MB.
    let standby = c.path("standby");
    let (disk, wrapper) = c.small_disk(&standby, "standby-disk", "16m");
    let b = standby.join("data");
    let config = c.agent_config("b", &sync_section(&b, ""));
    c.start_agent_wrapped("b", &config, &wrapper);
    wait_in_step(&c, "g", "a", &["b"]);
    let old = keep_copy(&c, &a, "old");

    disk.fill();
    write_big(&a.join("big.bin"), 3, 5);
    let g = c.wait_until("b reports the full disk", || {
        let g = c.try_ctl_json(&["group", "show", "g"])?;
        let error = syncs_of(&g, "b").first()?["error"].as_str()?.to_owned();
        error.contains("No space left").then_some(g)
    });
    assert_eq!(held(&g, "b").unwrap().1, "stale");
    // What b holds (seen from inside its namespace) is the old copy.
    let mut inside = Command::new(&wrapper[0]);
    inside
        .args(&wrapper[1..])
        .args(["diff", "-r", "-x", "*.lock"]);
    let status = inside.arg(&old).arg(&b).status().unwrap();
    assert!(status.success(), "b's copy changed while its disk was full");

    disk.free();
    wait_in_step(&c, "g", "a", &["b"]);
}

#[test]
fn a_standby_that_excludes_more_does_not_fetch_again_and_again() {
    let mut c = Cluster::start();
    let a = c.path("data-a");
    write_tree(&a, 5, "v1");
    c.add_group("g", &["a", "b"]);
    // The primary excludes only *.lock; b also leaves logs out of its scans.
    let a = start_syncing(&mut c, "a", "");
    c.wait_primary("g", "a");
    let b_data = c.path("data-b");
    let config = c.agent_config(
        "b",
        &sync_section_excluding(&b_data, &["*.lock", "*.log"], ""),
    );
    c.start_agent_with("b", &config);
    let before_log = wait_in_step(&c, "g", "a", &["b"]);
    write_big(&a.join("trace.log"), 1, 6);
    let first = wait_in_step_past(&c, "g", "a", &["b"], &before_log);
    // Many rounds later b still holds that one copy: nothing was fetched
    // again (a loop would count megabytes).
    let bytes = |g: &Value| syncs_of(g, "b")[0]["bytes"].as_u64().unwrap();
    let after_first = bytes(&c.group("g"));
    let applied = |c: &Cluster| {
        c.agent("b")
            .log_text()
            .matches("new snapshot in place")
            .count()
    };
    let settled = applied(&c);
    std::fs::write(a.join("d00/f0000.conf"), "v2\n").unwrap();
    wait_in_step_past(&c, "g", "a", &["b"], &first);
    assert_eq!(
        applied(&c),
        settled + 1,
        "b rebuilt its copy more than once"
    );
    let now = bytes(&c.group("g"));
    assert!(
        now - after_first < 64 * 1024,
        "b fetched the log again: {after_first} then {now} bytes\n{}",
        c.agent("b").log_text()
    );
}
