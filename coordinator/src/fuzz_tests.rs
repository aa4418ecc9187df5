//! Bounded fuzzing of everything the coordinator reads from outside: agent
//! messages (as bytes off the wire and as arbitrary structures), operators'
//! requests, configuration files and stored records. Nothing may panic,
//! every free text that gets through is within its bound, and every error
//! is one short line. The cases run in the normal suite (a few seconds);
//! `PROPTEST_CASES` raises them for a longer run, and failures proptest
//! finds are kept in `proptest-regressions/` (the corpus) and replayed.

use proptest::prelude::*;
use prost::Message;
use proto::v1 as pb;

use crate::engine::{AdminCommand, Input};
use crate::limits::{MAX_CHECKS, MAX_CLAIMS, MAX_DETAIL, MAX_LABEL, MAX_REASON};
use crate::model::{EventRecord, GroupRecord};
use crate::session::{checked_hello, input_of};

/// Cases per property: 300, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Text of any length and any characters, biased to the interesting ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,70}",
        ".{0,300}",
        (0usize..200_000).prop_map(|n| "x".repeat(n)),
        Just(String::new()),
        Just("\u{0}\u{feff}é\n\r\t".to_owned()),
    ]
}

fn check() -> impl Strategy<Value = pb::CheckStatus> {
    (
        text(),
        any::<bool>(),
        prop::collection::vec(text(), 0..4),
        text(),
    )
        .prop_map(|(name, passing, groups, detail)| pb::CheckStatus {
            name,
            passing,
            groups,
            detail,
        })
}

fn role() -> impl Strategy<Value = pb::GroupRole> {
    (text(), any::<i32>(), any::<u64>()).prop_map(|(group, role, epoch)| pb::GroupRole {
        group,
        role,
        epoch,
    })
}

fn sync() -> impl Strategy<Value = pb::SyncStatus> {
    (
        (text(), text(), prop_oneof![text(), "[0-9a-fA-F]{64}"]),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u64>(),
            any::<i32>(),
        ),
        text(),
    )
        .prop_map(
            |((group, name, snapshot), (epoch, age_ms, bytes, state), error)| pb::SyncStatus {
                group,
                name,
                snapshot,
                epoch,
                age_ms,
                bytes,
                state,
                error,
            },
        )
}

fn message() -> impl Strategy<Value = pb::agent_message::Kind> {
    use pb::agent_message::Kind;
    prop_oneof![
        (
            any::<u64>(),
            prop::collection::vec(check(), 0..80),
            prop::collection::vec(role(), 0..8),
            prop::collection::vec(sync(), 0..80)
        )
            .prop_map(
                |(seq, checks, roles, syncs)| Kind::Heartbeat(pb::Heartbeat {
                    syncs,
                    seq,
                    checks,
                    roles
                })
            ),
        (
            text(),
            any::<u64>(),
            any::<i32>(),
            any::<i32>(),
            any::<Option<i32>>(),
            text()
        )
            .prop_map(|(group, epoch, role, outcome, exit_code, detail)| {
                Kind::HookResult(pb::HookResult {
                    group,
                    epoch,
                    role,
                    outcome,
                    exit_code,
                    detail,
                })
            }),
        text().prop_map(|reason| Kind::Goodbye(pb::Goodbye { reason })),
    ]
}

/// What an input keeps of the agent's text is bounded.
fn assert_bounded(input: &Input) {
    // A cut text ends with "… (N bytes cut)": allow for that.
    let within = |text: &str, max: usize| text.len() <= max + 40;
    match input {
        Input::Heartbeat {
            checks,
            roles,
            syncs,
            ..
        } => {
            assert!(syncs.len() <= crate::limits::MAX_SYNCS);
            for s in syncs {
                assert!(proto::names::validate_group_name(&s.group).is_ok());
                assert!(proto::names::validate_node_id(&s.name).is_ok());
                assert!(s.snapshot.is_empty() || s.snapshot.len() == 64);
                assert!(s.age.is_none_or(|a| a.as_millis() <= u128::from(crate::limits::MAX_SYNC_AGE_MS)));
                assert!(within(&s.error, MAX_DETAIL), "sync error {}", s.error.len());
            }
            assert!(checks.len() <= MAX_CHECKS);
            assert!(roles.len() <= MAX_CLAIMS);
            for c in checks {
                assert!(within(&c.name, MAX_LABEL), "check name {}", c.name.len());
                assert!(within(&c.detail, MAX_DETAIL), "detail {}", c.detail.len());
                assert!(c.groups.len() <= MAX_CHECKS);
            }
            for r in roles {
                assert!(proto::names::validate_group_name(&r.group).is_ok());
            }
        }
        Input::HookResult { report, .. } => {
            assert!(within(&report.detail, MAX_DETAIL));
        }
        Input::Goodbye { reason, .. } => assert!(within(reason, MAX_REASON)),
        _ => {}
    }
}

fn one_short_line(e: &str) {
    assert!(!e.contains('\n'), "two lines: {e}");
    assert!(e.len() < 1000, "an error of {} bytes", e.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn agent_messages_are_bounded_whatever_they_hold(kind in message()) {
        if let Ok(Some(input)) = input_of(1, kind) {
            assert_bounded(&input);
        }
    }

    #[test]
    fn bytes_off_the_wire_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(m) = pb::AgentMessage::decode(bytes.as_slice()) {
            match m.kind {
                Some(pb::agent_message::Kind::Hello(h)) => {
                    if let Err(status) = checked_hello(h) {
                        one_short_line(status.message());
                    }
                }
                Some(kind) => {
                    if let Ok(Some(input)) = input_of(1, kind) {
                        assert_bounded(&input);
                    }
                }
                None => {}
            }
        }
    }

    #[test]
    fn hellos_are_refused_in_one_short_line(
        node_id in text(),
        instance_id in text(),
        node_uuid in text(),
        previous_instance in text(),
        agent_version in text(),
    ) {
        let hello = pb::Hello {
            peer_address: agent_version.clone(),
            node_id,
            agent_version,
            roles: vec![],
            instance_id,
            node_uuid,
            previous_instance,
        };
        if let Err(status) = checked_hello(hello) {
            one_short_line(status.message());
        }
    }

    #[test]
    fn operators_requests_are_checked_in_one_short_line(
        name in text(),
        members in prop::collection::vec(text(), 0..70),
        node in text(),
        position in any::<u32>(),
        ms in prop::option::of(any::<u64>()),
        window in prop::option::of(text()),
        mode in prop::option::of(any::<i32>()),
    ) {
        let policy = pb::Policy {
            failover_timeout_ms: ms,
            heartbeat_interval_ms: ms,
            failback_delay_ms: ms,
            failback_window: window,
            standby_mode: mode,
            fencing: mode,
            failback: mode,
            ..pb::Policy::default()
        };
        let results: Vec<Result<AdminCommand, String>> = vec![
            AdminCommand::try_from(pb::CreateGroupRequest {
                name: name.clone(),
                members: members.clone(),
                policy: Some(policy.clone()),
            }).map_err(|e| e.to_string()),
            AdminCommand::try_from(pb::UpdateGroupRequest {
                name: name.clone(),
                policy: Some(policy),
            }).map_err(|e| e.to_string()),
            AdminCommand::try_from(pb::MoveMemberRequest {
                group: name.clone(),
                node: node.clone(),
                position,
            }).map_err(|e| e.to_string()),
            AdminCommand::try_from(pb::AddMemberRequest {
                group: name.clone(),
                node: node.clone(),
                position: Some(position),
            }).map_err(|e| e.to_string()),
            AdminCommand::try_from(pb::PromoteRequest {
                group: name,
                to: node,
            }).map_err(|e| e.to_string()),
        ];
        for r in results {
            if let Err(e) = r {
                one_short_line(&e);
            }
        }
    }

    #[test]
    fn configuration_files_never_panic(text in config_text()) {
        if let Ok(config) = toml::from_str::<crate::config::Config>(&text) {
            let _ = config.describe();
        }
    }

    #[test]
    fn stored_records_that_do_not_decode_are_a_clear_error(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = crate::store::decode::<GroupRecord>(b"g/x", &bytes);
        let _ = crate::store::decode::<EventRecord>(b"e/x", &bytes);
        // A real record cut anywhere.
        let record = serde_json::to_vec(&sample_record()).unwrap();
        let at = cut.index(record.len());
        if let Err(e) = crate::store::decode::<GroupRecord>(b"g/x", &record[..at]) {
            one_short_line(&e.to_string());
        }
    }
}

/// TOML that is mostly well formed, with the configuration's own keys and
/// odd values.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "listen",
        "http_listen",
        "data_dir",
        "clock_drift",
        "event_retention",
        "tls",
        "[tls]\ncert",
        "[defaults]\nfailover_timeout",
        "[defaults]\nheartbeat_interval",
        "[defaults]\nfailback_window",
        "[limits]\nidle_timeout",
        "[limits]\nmax_connections",
        "[log]\nlevel",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "\"[0-9a-z .:]{0,30}\"",
        Just("\"18446744073709611s 616ms\"".to_owned()),
        Just("\"500us\"".to_owned()),
        Just("\"off\"".to_owned()),
        ".{0,20}",
    ];
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

fn sample_record() -> GroupRecord {
    GroupRecord {
        name: "g".into(),
        members: vec!["a".into(), "b".into()],
        policy: crate::policy::Policy::default(),
        primary: Some("a".into()),
        primary_instance: Some("0".repeat(32)),
        granted_ttl_max: Some(std::time::Duration::from_secs(3)),
        epoch: 7,
        first_epoch: 0,
        maintenance: vec![],
        created_unix_ms: 1,
    }
}
