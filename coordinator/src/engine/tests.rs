//! Decision-core tests with explicit time: no clock, no IO, no sleeps.

use std::time::Duration;

use super::*;

const TTL: Duration = Duration::from_secs(3);
/// `TTL * (1 + rho)` with the default rho of 1%.
const WAIT: Duration = Duration::from_millis(3030);

/// A coordinator engine, a hand-driven clock and what the engine emitted.
struct Sim {
    engine: Engine,
    now: Now,
    next_session: SessionId,
    next_reply: ReplyId,
    sessions: HashMap<String, SessionId>,
    seqs: HashMap<String, u64>,
    /// The checks each node reports in its heartbeats.
    checks: HashMap<String, Vec<CheckStatus>>,
    /// Every effect emitted, in order.
    log: Vec<Effects>,
}

fn config() -> EngineConfig {
    EngineConfig {
        coordinator_id: "test".into(),
        clock_drift: 0.01,
        default_heartbeat_interval: Duration::from_millis(500),
        default_policy: Policy::default(),
    }
}

impl Sim {
    fn new() -> Self {
        Self::recovered(Recovered::default())
    }

    fn recovered(recovered: Recovered) -> Self {
        let now = Now {
            mono: Instant::now(),
            wall_ms: 1_000_000,
        };
        Sim {
            engine: Engine::new(config(), recovered, now),
            now,
            next_session: 1,
            next_reply: 1,
            sessions: HashMap::new(),
            seqs: HashMap::new(),
            checks: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn step(&mut self, input: Input) -> &Effects {
        let mut out = Effects::default();
        self.engine.handle(input, self.now, &mut out);
        self.engine.tick(self.now, &mut out);
        self.log.push(out);
        self.log.last().unwrap()
    }

    fn advance(&mut self, d: Duration) -> &Effects {
        self.now.mono += d;
        self.now.wall_ms += d.as_millis() as u64;
        let mut out = Effects::default();
        self.engine.tick(self.now, &mut out);
        self.log.push(out);
        self.log.last().unwrap()
    }

    fn connect_claiming(&mut self, node: &str, roles: Vec<ClaimedRole>) -> SessionId {
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.insert(node.into(), session);
        self.step(Input::SessionOpened {
            session,
            hello: Hello {
                node: node.into(),
                agent_version: "test".into(),
                address: "127.0.0.1:1".into(),
                roles,
            },
        });
        self.heartbeat(node);
        session
    }

    fn connect(&mut self, node: &str) -> SessionId {
        self.connect_claiming(node, vec![])
    }

    fn heartbeat(&mut self, node: &str) -> &Effects {
        self.heartbeat_claiming(node, vec![])
    }

    fn heartbeat_claiming(&mut self, node: &str, roles: Vec<ClaimedRole>) -> &Effects {
        let checks = self.checks.get(node).cloned().unwrap_or_default();
        let seq = self.seqs.entry(node.into()).or_default();
        *seq += 1;
        let input = Input::Heartbeat {
            session: self.sessions[node],
            seq: *seq,
            received: self.now.mono,
            checks,
            roles,
        };
        self.step(input)
    }

    /// From now on `node` reports one check, passing or not.
    fn set_healthy(&mut self, node: &str, passing: bool) {
        let check = CheckStatus {
            name: "service".into(),
            passing,
            groups: vec![],
            detail: String::new(),
        };
        self.checks.insert(node.into(), vec![check]);
    }

    fn goodbye(&mut self, node: &str) {
        let session = self.sessions.remove(node).unwrap();
        self.step(Input::Goodbye {
            session,
            reason: "stopping".into(),
        });
        self.step(Input::SessionClosed { session });
    }

    fn hook(&mut self, node: &str, group: &str, epoch: u64, role: Role, outcome: HookOutcome) {
        let session = self.sessions[node];
        self.step(Input::HookResult {
            session,
            report: HookReport {
                group: group.into(),
                epoch,
                role,
                outcome,
                exit_code: None,
                detail: String::new(),
            },
        });
    }

    fn set(&mut self, group: &str, policy: PolicyPatch) -> AdminResult {
        self.admin(AdminCommand::UpdatePolicy {
            group: group.into(),
            policy,
        })
        .1
        .expect("answered at once")
    }

    /// Kinds of every event recorded so far.
    fn event_kinds(&self) -> Vec<EventKind> {
        self.log
            .iter()
            .flat_map(|e| e.writes.iter())
            .filter_map(|w| match w {
                Write::Event(e) => Some(e.kind),
                _ => None,
            })
            .collect()
    }

    fn disconnect(&mut self, node: &str) {
        let session = self.sessions.remove(node).unwrap();
        self.step(Input::SessionClosed { session });
    }

    fn admin(&mut self, command: AdminCommand) -> (ReplyId, Option<AdminResult>) {
        let reply = self.next_reply;
        self.next_reply += 1;
        let out = self.step(Input::Admin {
            reply,
            actor: "test".into(),
            command,
        });
        let result = out
            .replies
            .iter()
            .find(|(r, _)| *r == reply)
            .map(|(_, r)| r.clone());
        (reply, result)
    }

    fn create(&mut self, name: &str, members: &[&str]) -> AdminResult {
        self.admin(AdminCommand::CreateGroup {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            policy: PolicyPatch::default(),
        })
        .1
        .expect("create answers at once")
    }

    fn view(&mut self, name: &str) -> GroupView {
        self.engine.group_view(name, self.now)
    }

    fn primary(&mut self, name: &str) -> (Option<String>, u64) {
        let v = self.view(name);
        (v.primary, v.epoch)
    }

    /// Every assignment sent to `node`'s sessions, in order.
    fn assignments_to(&self, node: &str) -> Vec<Assignment> {
        let session = self.sessions.get(node).copied();
        self.log
            .iter()
            .flat_map(|e| e.sends.iter())
            .filter(|(s, _)| Some(*s) == session)
            .filter_map(|(_, m)| match m {
                ToAgent::Assignment(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    fn hook_done(&mut self, node: &str, group: &str, epoch: u64, role: Role) -> &Effects {
        let session = self.sessions[node];
        self.step(Input::HookResult {
            session,
            report: HookReport {
                group: group.into(),
                epoch,
                role,
                outcome: HookOutcome::Succeeded,
                exit_code: Some(0),
                detail: String::new(),
            },
        })
    }

    /// Keeps every connected node heartbeating for `d`, in steps of 500 ms.
    fn run_for(&mut self, d: Duration, nodes: &[&str]) {
        let step = Duration::from_millis(500);
        let mut left = d;
        while left > Duration::ZERO {
            let s = step.min(left);
            self.advance(s);
            left -= s;
            for n in nodes {
                self.heartbeat(n);
            }
        }
    }
}

fn three_members() -> Sim {
    let mut sim = Sim::new();
    for n in ["rec-1", "rec-2", "rec-3"] {
        sim.connect(n);
    }
    sim.create("recorders", &["rec-1", "rec-2", "rec-3"])
        .unwrap();
    sim
}

#[test]
fn first_connected_member_in_order_becomes_primary_with_epoch_1() {
    let mut sim = Sim::new();
    sim.connect("rec-3");
    sim.connect("rec-2");
    sim.create("recorders", &["rec-1", "rec-2", "rec-3"])
        .unwrap();
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 1));
    let to_primary = sim.assignments_to("rec-2");
    assert_eq!(to_primary.last().unwrap().role, Role::Primary);
    let to_other = sim.assignments_to("rec-3");
    assert_eq!(to_other.last().unwrap().role, Role::Secondary);
    assert_eq!(to_other.last().unwrap().primary.as_deref(), Some("rec-2"));
}

#[test]
fn promotion_is_written_in_the_same_step_as_its_assignment() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("recorders", &["rec-1"]).unwrap();
    let step = sim.log.last().unwrap();
    let written = step.writes.iter().any(
        |w| matches!(w, Write::PutGroup(r) if r.epoch == 1 && r.primary.as_deref() == Some("rec-1")),
    );
    assert!(written, "the new epoch must be among this step's writes");
    let grant = step.sends.iter().any(|(_, m)| matches!(m, ToAgent::Ack { grants, .. } if grants.len() == 1 && grants[0].epoch == 1));
    assert!(grant, "the new primary gets a lease grant at once");
}

#[test]
fn silent_primary_is_replaced_only_after_its_lease_with_drift_margin() {
    let mut sim = three_members();
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    // rec-1 goes silent (kill -9): its last grant was at t0.
    sim.disconnect("rec-1");
    sim.run_for(TTL, &["rec-2", "rec-3"]);
    assert_eq!(
        sim.primary("recorders").0.as_deref(),
        Some("rec-1"),
        "promoted at ttl, inside the drift margin"
    );
    assert_eq!(sim.view("recorders").phase, Phase::FailingOver);
    sim.advance(WAIT - TTL);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    let kinds: Vec<_> = sim
        .log
        .last()
        .unwrap()
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Event(e) => Some(e.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [EventKind::PrimaryLapsed, EventKind::Promoted]);
    // The metrics learn when the lease had certainly run out.
    let note = &sim.log.last().unwrap().promotions[0];
    assert_eq!(note.lapsed_at, Some(sim.now.mono));
}

#[test]
fn a_connected_primary_that_stops_heartbeating_is_replaced() {
    // A partition that leaves the TCP session open, or a frozen agent.
    let mut sim = three_members();
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    let last = sim.assignments_to("rec-1").last().cloned().unwrap();
    assert_eq!((last.role, last.epoch), (Role::Secondary, 2));
}

#[test]
fn heartbeats_keep_the_primary_and_earn_grants() {
    let mut sim = three_members();
    sim.run_for(Duration::from_secs(20), &["rec-1", "rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    let out = sim.heartbeat("rec-1");
    let grants: Vec<_> = out
        .sends
        .iter()
        .filter_map(|(_, m)| match m {
            ToAgent::Ack { grants, .. } => Some(grants.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(grants[0][0].epoch, 1);
    assert!(out.writes.is_empty(), "a heartbeat never touches the store");
    let out = sim.heartbeat("rec-2");
    assert!(
        matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants.is_empty()),
        "secondaries get no lease"
    );
}

#[test]
fn old_primary_comes_back_as_secondary() {
    let mut sim = three_members();
    sim.disconnect("rec-1");
    sim.run_for(WAIT + Duration::from_millis(500), &["rec-2", "rec-3"]);
    sim.connect_claiming(
        "rec-1",
        vec![ClaimedRole {
            group: "recorders".into(),
            role: Role::Primary,
            epoch: 1,
        }],
    );
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    let last = sim.assignments_to("rec-1").last().cloned().unwrap();
    assert_eq!((last.role, last.epoch), (Role::Secondary, 2));
}

#[test]
fn no_candidate_means_no_primary_then_first_to_qualify_is_promoted() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("recorders", &["rec-1", "rec-2"]).unwrap();
    sim.disconnect("rec-1");
    sim.advance(WAIT);
    assert_eq!(sim.primary("recorders"), (None, 2));
    assert_eq!(sim.view("recorders").phase, Phase::NoPrimary);
    sim.connect("rec-2");
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
}

#[test]
fn restarted_coordinator_waits_out_a_full_lease_before_replacing_the_primary() {
    let record = GroupRecord {
        name: "recorders".into(),
        members: vec!["rec-1".into(), "rec-2".into()],
        policy: Policy::default(),
        primary: Some("rec-1".into()),
        epoch: 7,
        first_epoch: 0,
        maintenance: vec![],
        created_unix_ms: 0,
    };
    let mut sim = Sim::recovered(Recovered {
        groups: vec![record],
        ..Default::default()
    });
    sim.connect("rec-2");
    sim.run_for(WAIT - Duration::from_millis(10), &["rec-2"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 7));
    sim.run_for(Duration::from_millis(20), &["rec-2"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 8));
}

#[test]
fn restarted_coordinator_keeps_a_primary_that_comes_back() {
    let record = GroupRecord {
        name: "recorders".into(),
        members: vec!["rec-1".into(), "rec-2".into()],
        policy: Policy::default(),
        primary: Some("rec-1".into()),
        epoch: 7,
        first_epoch: 0,
        maintenance: vec![],
        created_unix_ms: 0,
    };
    let mut sim = Sim::recovered(Recovered {
        groups: vec![record],
        ..Default::default()
    });
    sim.connect("rec-2");
    sim.connect_claiming(
        "rec-1",
        vec![ClaimedRole {
            group: "recorders".into(),
            role: Role::Primary,
            epoch: 7,
        }],
    );
    sim.run_for(Duration::from_secs(10), &["rec-1", "rec-2"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 7));
    assert_eq!(sim.view("recorders").phase, Phase::Active);
}

#[test]
fn switchover_steps_down_first_and_promotes_on_confirmation() {
    let mut sim = three_members();
    let (reply, answer) = sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-3".into(),
    });
    assert!(
        answer.is_none(),
        "answered only once the promotion is durable"
    );
    assert_eq!(sim.primary("recorders"), (None, 2));
    let told = sim.assignments_to("rec-1").last().cloned().unwrap();
    assert_eq!((told.role, told.epoch), (Role::Secondary, 2));
    assert!(
        !sim.assignments_to("rec-3")
            .iter()
            .any(|a| a.role == Role::Primary),
        "no promotion before the old primary stepped down"
    );
    // The old primary's heartbeats no longer extend its lease.
    let out = sim.heartbeat("rec-1");
    assert!(matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants.is_empty()));

    let out = sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    let replied = out
        .replies
        .iter()
        .any(|(r, res)| *r == reply && res.is_ok());
    assert!(replied);
    assert_eq!(sim.primary("recorders"), (Some("rec-3".into()), 3));
}

#[test]
fn switchover_without_confirmation_waits_for_the_lease() {
    let mut sim = three_members();
    sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-2".into(),
    });
    sim.run_for(
        WAIT - Duration::from_millis(10),
        &["rec-1", "rec-2", "rec-3"],
    );
    assert_eq!(sim.primary("recorders"), (None, 2));
    sim.run_for(Duration::from_millis(20), &["rec-1", "rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
}

#[test]
fn a_stale_or_wrong_confirmation_does_not_end_the_wait() {
    let mut sim = three_members();
    sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-2".into(),
    });
    sim.hook_done("rec-1", "recorders", 1, Role::Secondary);
    sim.hook_done("rec-3", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (None, 2));
}

#[test]
fn refused_commands_change_nothing() {
    let mut sim = three_members();
    let before = sim.view("recorders");
    let writes_before: usize = sim.log.iter().map(|e| e.writes.len()).sum();
    let bad = [
        AdminCommand::CreateGroup {
            name: "recorders".into(),
            members: vec!["rec-1".into()],
            policy: PolicyPatch::default(),
        },
        AdminCommand::CreateGroup {
            name: "x".into(),
            members: vec![],
            policy: PolicyPatch::default(),
        },
        AdminCommand::CreateGroup {
            name: "x".into(),
            members: vec!["a".into(), "a".into()],
            policy: PolicyPatch::default(),
        },
        AdminCommand::CreateGroup {
            name: "Bad_Name".into(),
            members: vec!["a".into()],
            policy: PolicyPatch::default(),
        },
        AdminCommand::CreateGroup {
            name: "x".into(),
            members: vec!["a".into()],
            policy: PolicyPatch {
                failover_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
        },
        AdminCommand::GetGroup {
            name: "nope".into(),
        },
        AdminCommand::DeleteGroup {
            name: "nope".into(),
        },
        AdminCommand::AddMember {
            group: "recorders".into(),
            node: "rec-2".into(),
            position: None,
        },
        AdminCommand::AddMember {
            group: "recorders".into(),
            node: "rec-9".into(),
            position: Some(9),
        },
        AdminCommand::RemoveMember {
            group: "recorders".into(),
            node: "rec-9".into(),
        },
        AdminCommand::RemoveMember {
            group: "recorders".into(),
            node: "rec-1".into(),
        },
        AdminCommand::MoveMember {
            group: "recorders".into(),
            node: "rec-2".into(),
            position: 3,
        },
        AdminCommand::Promote {
            group: "recorders".into(),
            to: "rec-9".into(),
        },
    ];
    for command in bad {
        let (_, result) = sim.admin(command.clone());
        assert!(
            matches!(result, Some(Err(_))),
            "{command:?} was not refused: {result:?}"
        );
    }
    sim.disconnect("rec-3");
    let (_, result) = sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-3".into(),
    });
    assert!(matches!(
        result,
        Some(Err(AdminError::FailedPrecondition(_)))
    ));
    let writes_after: usize = sim.log.iter().map(|e| e.writes.len()).sum();
    assert_eq!(
        writes_before, writes_after,
        "a refused command wrote something"
    );
    let mut after = sim.view("recorders");
    after.members[2].connected = true;
    after.members[2].healthy = true;
    assert_eq!(before, after);
}

#[test]
fn a_recreated_group_starts_above_the_deleted_one() {
    let mut sim = three_members();
    sim.admin(AdminCommand::DeleteGroup {
        name: "recorders".into(),
    });
    let released = sim
        .log
        .last()
        .unwrap()
        .sends
        .iter()
        .any(|(_, m)| matches!(m, ToAgent::Release { epoch, .. } if *epoch == 2));
    assert!(released);
    sim.create("recorders", &["rec-1", "rec-2"]).unwrap();
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 3));
}

#[test]
fn claim_above_the_stored_epoch_raises_it() {
    let mut sim = Sim::new();
    sim.create("recorders", &["rec-1"]).unwrap();
    sim.connect_claiming(
        "rec-1",
        vec![ClaimedRole {
            group: "recorders".into(),
            role: Role::Primary,
            epoch: 41,
        }],
    );
    let (primary, epoch) = sim.primary("recorders");
    assert_eq!(primary.as_deref(), Some("rec-1"));
    assert!(epoch > 41, "epoch {epoch} must exceed the claim");
}

#[test]
fn stale_session_heartbeats_are_ignored() {
    let mut sim = three_members();
    let old = sim.sessions["rec-2"];
    sim.connect("rec-2");
    let out = sim.step(Input::Heartbeat {
        session: old,
        seq: 99,
        received: sim.now.mono,
        checks: vec![],
        roles: vec![],
    });
    assert!(out.sends.is_empty());
}

#[test]
fn moving_members_does_not_move_the_role() {
    let mut sim = three_members();
    let (_, result) = sim.admin(AdminCommand::MoveMember {
        group: "recorders".into(),
        node: "rec-3".into(),
        position: 0,
    });
    let view = match result {
        Some(Ok(AdminReply::Group(v))) => v,
        other => panic!("{other:?}"),
    };
    let order: Vec<_> = view.members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(order, ["rec-3", "rec-1", "rec-2"]);
    assert_eq!(view.primary.as_deref(), Some("rec-1"));
}

#[test]
fn heartbeat_interval_is_the_smallest_among_the_nodes_groups() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("a", &["rec-1"]).unwrap();
    sim.admin(AdminCommand::CreateGroup {
        name: "b".into(),
        members: vec!["rec-1".into()],
        policy: PolicyPatch {
            heartbeat_interval: Some(Duration::from_millis(100)),
            failover_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    });
    let mut settings = sim
        .log
        .iter()
        .flat_map(|e| e.sends.iter())
        .filter_map(|(_, m)| match m {
            ToAgent::Settings { heartbeat_interval } => Some(*heartbeat_interval),
            _ => None,
        });
    assert_eq!(settings.next_back(), Some(Duration::from_millis(100)));
}

#[test]
fn a_member_whose_heartbeats_resume_is_promoted_once_it_is_healthy_for_the_delay() {
    // rec-1's session stays open but goes silent past the failover timeout
    // (a partition that keeps TCP up), so the group has nobody to promote.
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("recorders", &["rec-1"]).unwrap();
    sim.advance(WAIT + Duration::from_millis(10));
    assert_eq!(sim.primary("recorders"), (None, 2));
    // Its heartbeats resume on the same session, but it failed here: no
    // ping-pong, it must be healthy for failback_delay (60 s) first.
    sim.run_for(Duration::from_secs(59), &["rec-1"]);
    assert_eq!(sim.primary("recorders"), (None, 2));
    assert!(sim.view("recorders").members[0].recently_failed);
    sim.run_for(Duration::from_secs(2), &["rec-1"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 3));
}

fn fenced(group: &str, epoch: u64) -> Vec<ClaimedRole> {
    vec![ClaimedRole {
        group: group.into(),
        role: Role::Fenced,
        epoch,
    }]
}

#[test]
fn a_primary_whose_grants_never_reach_it_in_time_is_replaced() {
    // rec-1's heartbeats arrive, but it keeps reporting itself fenced: the
    // acknowledgements carrying its grants arrive too late (or not at all).
    let mut sim = three_members();
    let mut replaced_after = None;
    for step in 1..=40 {
        sim.advance(Duration::from_millis(250));
        sim.heartbeat_claiming("rec-1", fenced("recorders", 1));
        sim.heartbeat("rec-2");
        sim.heartbeat("rec-3");
        if sim.primary("recorders").0.as_deref() != Some("rec-1") {
            replaced_after = Some(step * 250);
            break;
        }
    }
    // It keeps its grants while fenced for less than a lease (3 s), then
    // gets none, then its last lease is waited out (3.03 s).
    let after = replaced_after.expect("rec-1 was never replaced");
    assert!((6000..=6500).contains(&after), "replaced after {after} ms");
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    let reason = sim
        .log
        .iter()
        .flat_map(|e| e.writes.iter())
        .find_map(|w| match w {
            Write::Event(e) if e.kind == EventKind::PrimaryLapsed => Some(e.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("fenced"), "{reason}");
}

#[test]
fn a_primary_fenced_only_briefly_keeps_its_role() {
    let mut sim = three_members();
    for step in 0..40 {
        sim.advance(Duration::from_millis(250));
        // Fenced now and then (a late acknowledgement), never for a lease.
        if step % 4 == 0 {
            sim.heartbeat_claiming("rec-1", fenced("recorders", 1));
        } else {
            sim.heartbeat("rec-1");
        }
        sim.heartbeat("rec-2");
    }
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const ALL: [&str; 3] = ["rec-1", "rec-2", "rec-3"];

#[test]
fn with_auto_failover_off_a_lapse_raises_an_alarm_and_takeover_moves_the_role() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            auto_failover: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    sim.disconnect("rec-1");
    sim.run_for(secs(30), &["rec-2", "rec-3"]);
    let view = sim.view("recorders");
    assert_eq!(
        (view.primary, view.epoch),
        (None, 2),
        "nothing promoted by itself"
    );
    assert!(view.alarm.unwrap().contains("takeover"));
    assert!(sim.event_kinds().contains(&EventKind::Alarm));

    let (_, result) = sim.admin(AdminCommand::Takeover {
        group: "recorders".into(),
        to: None,
    });
    assert!(matches!(result, Some(Ok(_))), "{result:?}");
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
    assert_eq!(sim.view("recorders").alarm, None);
}

#[test]
fn the_first_election_is_automatic_even_with_auto_failover_off() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.admin(AdminCommand::CreateGroup {
        name: "recorders".into(),
        members: vec!["rec-1".into()],
        policy: PolicyPatch {
            auto_failover: Some(false),
            ..Default::default()
        },
    });
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

#[test]
fn takeover_to_a_node_moves_a_healthy_primary_after_it_steps_down() {
    let mut sim = three_members();
    let (reply, answer) = sim.admin(AdminCommand::Takeover {
        group: "recorders".into(),
        to: Some("rec-3".into()),
    });
    assert!(answer.is_none());
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-3".into()), 3));
    assert!(
        sim.log
            .last()
            .unwrap()
            .replies
            .iter()
            .any(|(r, res)| *r == reply && res.is_ok())
    );
}

#[test]
fn restore_hands_the_role_back_to_the_highest_priority_healthy_member() {
    let mut sim = three_members();
    sim.disconnect("rec-1");
    sim.run_for(WAIT + Duration::from_millis(500), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    sim.connect("rec-1");
    sim.admin(AdminCommand::Restore {
        group: "recorders".into(),
    });
    sim.hook_done("rec-2", "recorders", 3, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 4));
}

#[test]
fn delayed_failback_waits_for_the_delay_then_switches_over() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            failback: Some(crate::policy::Failback::Delayed),
            failback_delay: Some(secs(20)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.disconnect("rec-1");
    sim.run_for(WAIT + Duration::from_millis(500), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    sim.connect("rec-1");
    sim.run_for(secs(19), &ALL);
    assert_eq!(
        sim.primary("recorders"),
        (Some("rec-2".into()), 2),
        "failback too early"
    );
    sim.run_for(secs(2), &ALL);
    // rec-2 is told to step down first; rec-1 follows on confirmation.
    assert_eq!(sim.primary("recorders"), (None, 3));
    sim.hook_done("rec-2", "recorders", 3, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 4));
}

#[test]
fn failback_waits_for_its_window() {
    let mut sim = three_members();
    // The simulated clock starts at 00:16:40 UTC: the window opens at 01:00.
    sim.set(
        "recorders",
        PolicyPatch {
            failback: Some(crate::policy::Failback::Delayed),
            failback_delay: Some(secs(5)),
            failback_window: Some(Some("01:00-02:00".parse().unwrap())),
            ..Default::default()
        },
    )
    .unwrap();
    sim.disconnect("rec-1");
    sim.run_for(WAIT + Duration::from_millis(500), &["rec-2", "rec-3"]);
    sim.connect("rec-1");
    sim.run_for(secs(600), &ALL);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    sim.run_for(secs(2400), &ALL);
    let promoted = sim
        .log
        .iter()
        .flat_map(|e| e.writes.iter())
        .find_map(|w| match w {
            Write::Event(e)
                if e.kind == EventKind::Promoted
                    && e.new_primary.as_deref() == Some("rec-1")
                    && e.epoch > 1 =>
            {
                Some(e.unix_ms)
            }
            _ => None,
        });
    // 01:00 UTC is 3,600,000 ms after the start of the day.
    let at = promoted.expect("failback happened") % 86_400_000;
    assert!(
        (3_600_000..3_700_000).contains(&at),
        "failback at {at} ms into the day"
    );
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-1"));
}

#[test]
fn an_unhealthy_primary_is_replaced_after_the_abnormal_timeout() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            abnormal_timeout: Some(secs(5)),
            min_failover_interval: Some(Duration::ZERO),
            ..Default::default()
        },
    )
    .unwrap();
    sim.set_healthy("rec-1", false);
    sim.run_for(secs(4), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    sim.run_for(secs(2), &ALL);
    assert_eq!(sim.primary("recorders"), (None, 2), "told to step down");
    assert!(sim.event_kinds().contains(&EventKind::PrimaryUnhealthy));
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
}

#[test]
fn min_failover_interval_delays_moves_away_from_a_live_primary() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            min_failover_interval: Some(secs(30)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.set_healthy("rec-1", false);
    sim.run_for(secs(20), &ALL);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-1"));
    sim.run_for(secs(11), &ALL);
    assert_eq!(
        sim.primary("recorders").0,
        None,
        "moving once the interval passed"
    );
}

#[test]
fn an_unhealthy_secondary_is_not_eligible() {
    let mut sim = three_members();
    sim.set_healthy("rec-2", false);
    sim.run_for(secs(1), &ALL);
    assert!(!sim.view("recorders").members[1].healthy);
    sim.disconnect("rec-1");
    sim.run_for(WAIT, &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
}

#[test]
fn a_failed_promote_hook_moves_the_role_on_and_all_failing_means_no_primary() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.connect("rec-2");
    sim.create("recorders", &["rec-1", "rec-2"]).unwrap();
    sim.hook("rec-1", "recorders", 1, Role::Primary, HookOutcome::Failed);
    assert!(sim.event_kinds().contains(&EventKind::PromoteFailed));
    // Told to step down with rec-2 lined up.
    assert_eq!(sim.primary("recorders"), (None, 2));
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
    sim.hook(
        "rec-2",
        "recorders",
        3,
        Role::Primary,
        HookOutcome::TimedOut,
    );
    sim.hook_done("rec-2", "recorders", 4, Role::Secondary);
    let view = sim.view("recorders");
    assert_eq!((view.primary, view.phase), (None, Phase::NoPrimary));
    // Both failed: promotion once one has been healthy for the delay.
    sim.run_for(secs(61), &["rec-1", "rec-2"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-1"));
}

#[test]
fn draining_the_primary_switches_over_and_a_drained_member_is_never_promoted() {
    let mut sim = three_members();
    let (reply, answer) = sim.admin(AdminCommand::Drain {
        group: "recorders".into(),
        node: "rec-1".into(),
    });
    assert!(answer.is_none(), "answers once the switchover is done");
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
    assert!(
        sim.log
            .last()
            .unwrap()
            .replies
            .iter()
            .any(|(r, res)| *r == reply && res.is_ok())
    );
    assert!(sim.view("recorders").members[0].maintenance);

    // rec-2 dies: rec-3 is next, never the drained rec-1.
    sim.disconnect("rec-2");
    sim.run_for(WAIT, &["rec-1", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
    let (_, refused) = sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-1".into(),
    });
    assert!(
        matches!(refused, Some(Err(AdminError::FailedPrecondition(m))) if m.contains("maintenance"))
    );

    sim.admin(AdminCommand::Undrain {
        group: "recorders".into(),
        node: "rec-1".into(),
    });
    assert!(!sim.view("recorders").members[0].maintenance);
}

#[test]
fn draining_the_only_candidate_is_refused() {
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("recorders", &["rec-1", "rec-2"]).unwrap();
    let (_, result) = sim.admin(AdminCommand::Drain {
        group: "recorders".into(),
        node: "rec-1".into(),
    });
    assert!(
        matches!(result, Some(Err(AdminError::FailedPrecondition(_)))),
        "{result:?}"
    );
    assert!(!sim.view("recorders").members[0].maintenance);
}

#[test]
fn shutdown_grace_holds_the_role_for_a_primary_that_said_goodbye() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            shutdown_grace: Some(secs(20)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.goodbye("rec-1");
    sim.run_for(secs(19), &["rec-2", "rec-3"]);
    assert_eq!(
        sim.primary("recorders"),
        (Some("rec-1".into()), 1),
        "held during the grace"
    );
    sim.run_for(secs(2), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    assert!(sim.event_kinds().contains(&EventKind::PrimaryLeft));
}

#[test]
fn a_primary_that_comes_back_within_the_grace_keeps_its_role() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            shutdown_grace: Some(secs(20)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.goodbye("rec-1");
    sim.run_for(secs(10), &["rec-2", "rec-3"]);
    sim.connect("rec-1");
    sim.run_for(secs(30), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

#[test]
fn a_primary_that_steps_down_on_its_own_is_replaced_at_once() {
    let mut sim = three_members();
    // Shutdown grace 0: the agent stops, runs its secondary hook at the
    // same epoch, then says goodbye.
    sim.hook_done("rec-1", "recorders", 1, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
}

#[test]
fn a_session_that_never_heartbeats_is_closed_after_the_startup_timeout() {
    let mut sim = Sim::new();
    sim.create("recorders", &["rec-1"]).unwrap();
    sim.step(Input::SessionOpened {
        session: 77,
        hello: Hello {
            node: "rec-1".into(),
            agent_version: "test".into(),
            address: String::new(),
            roles: vec![],
        },
    });
    sim.advance(secs(29));
    assert!(sim.log.iter().all(|e| e.closes.is_empty()));
    let out = sim.advance(secs(2));
    assert_eq!(out.closes, vec![77]);
    assert!(!sim.engine.node_views(sim.now)[0].connected);
}

#[test]
fn settings_are_changed_validated_and_recorded() {
    let mut sim = three_members();
    let view = match sim.set(
        "recorders",
        PolicyPatch {
            failover_timeout: Some(secs(10)),
            standby_mode: Some(crate::policy::StandbyMode::Cold),
            ..Default::default()
        },
    ) {
        Ok(AdminReply::Group(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(view.policy.failover_timeout, secs(10));
    // Members hear of the new standby mode.
    let last = sim.assignments_to("rec-2").last().cloned().unwrap();
    assert_eq!(last.standby_mode, crate::policy::StandbyMode::Cold);
    assert!(sim.event_kinds().contains(&EventKind::PolicyChanged));
    let before = sim.view("recorders");
    for bad in [
        PolicyPatch::default(),
        PolicyPatch {
            failback_delay: Some(Duration::ZERO),
            ..Default::default()
        },
        PolicyPatch {
            heartbeat_interval: Some(secs(9)),
            ..Default::default()
        },
    ] {
        assert!(sim.set("recorders", bad).is_err());
    }
    assert_eq!(sim.view("recorders").policy, before.policy);
}
