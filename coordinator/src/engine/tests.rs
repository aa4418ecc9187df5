//! Decision-core tests with explicit time: no clock, no IO, no sleeps.

use std::time::Duration;

use super::*;
use proto::vocab::SyncState;

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
    /// The agent instance each node's next session comes from.
    instances: HashMap<String, String>,
    seqs: HashMap<String, u64>,
    /// The checks each node reports in its heartbeats.
    checks: HashMap<String, Vec<CheckStatus>>,
    /// The sync reports each node sends in its heartbeats.
    syncs: HashMap<String, Vec<SyncReport>>,
    /// Every effect emitted, in order.
    log: Vec<Effects>,
}

/// A deterministic 32-hex-digit instance id.
fn instance_id(node: &str, generation: u64) -> String {
    let mut n: u128 = u128::from(generation) + 1;
    for b in node.bytes() {
        n = n.wrapping_mul(131).wrapping_add(u128::from(b));
    }
    format!("{n:032x}")
}

fn config() -> EngineConfig {
    EngineConfig {
        coordinator_id: "test".into(),
        clock_drift: 0.01,
        default_heartbeat_interval: Duration::from_millis(500),
        default_policy: Policy::default(),
        takeover_wait: Duration::ZERO,
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
            instances: HashMap::new(),
            seqs: HashMap::new(),
            checks: HashMap::new(),
            syncs: HashMap::new(),
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

    /// The instance id of `node`'s current agent process.
    fn instance(&mut self, node: &str) -> String {
        self.instances
            .entry(node.into())
            .or_insert_with(|| instance_id(node, 0))
            .clone()
    }

    /// `node`'s agent process is replaced by a new one (a new instance).
    fn restart_agent(&mut self, node: &str, generation: u64) {
        self.instances
            .insert(node.into(), instance_id(node, generation));
    }

    fn connect_claiming(&mut self, node: &str, roles: Vec<ClaimedRole>) -> SessionId {
        let session = self.open_session(node, roles);
        self.sessions.insert(node.into(), session);
        self.heartbeat(node);
        session
    }

    /// Opens a session with a Hello from `node`'s current instance and
    /// returns its id, without heartbeating.
    fn open_session(&mut self, node: &str, roles: Vec<ClaimedRole>) -> SessionId {
        let session = self.next_session;
        self.next_session += 1;
        let instance = self.instance(node);
        self.step(Input::SessionOpened {
            session,
            hello: Hello {
                peer_address: None,
                node: node.into(),
                instance,
                node_uuid: "00000000-0000-4000-8000-000000000001".into(),
                previous_instance: None,
                agent_version: "test".into(),
                address: "127.0.0.1:1".into(),
                roles,
            },
        });
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
            syncs: self.syncs.get(node).cloned().unwrap_or_default(),
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

    /// From now on `node` reports its copy of sync "data" in `group`.
    fn set_sync(&mut self, node: &str, group: &str, state: SyncState, age_secs: Option<u64>) {
        let snapshot = if age_secs.is_some() {
            "ab".repeat(32)
        } else {
            String::new()
        };
        self.set_sync_of(node, group, state, age_secs, snapshot);
    }

    fn set_sync_of(
        &mut self,
        node: &str,
        group: &str,
        state: SyncState,
        age_secs: Option<u64>,
        snapshot: String,
    ) {
        let report = SyncReport {
            group: group.into(),
            name: "data".into(),
            snapshot,
            epoch: 1,
            age: age_secs.map(Duration::from_secs),
            bytes: 0,
            state,
            error: String::new(),
        };
        self.syncs.insert(node.into(), vec![report]);
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
        self.engine
            .group_view(name, self.now)
            .unwrap_or_else(|| panic!("group {name} exists"))
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
        primary_instance: None,
        granted_ttl_max: None,
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
        primary_instance: None,
        granted_ttl_max: None,
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
    // What the commands wrote: not the contact lost when rec-3 goes below.
    let written = |sim: &Sim| -> usize {
        sim.log
            .iter()
            .flat_map(|e| e.writes.iter())
            .filter(|w| !matches!(w, Write::Event(e) if e.kind == EventKind::NodeLost))
            .count()
    };
    let writes_before = written(&sim);
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
    let writes_after = written(&sim);
    assert_eq!(
        writes_before, writes_after,
        "a refused command wrote something"
    );
    let mut after = sim.view("recorders");
    after.members[2].connected = true;
    after.members[2].healthy = true;
    after.members[2].qualifies = true;
    after.members[2].why_not = None;
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
    // The deleted group's primary may not have heard of its release (cut
    // off): nobody is promoted in the new group before its lease ends.
    assert_eq!(sim.primary("recorders"), (None, 2));
    sim.run_for(WAIT, &["rec-1", "rec-2"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 3));
}

#[test]
fn a_restarted_coordinator_waits_out_the_longest_lease_granted_at_the_epoch() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            failover_timeout: Some(Duration::from_millis(500)),
            heartbeat_interval: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    )
    .unwrap();
    let stored = sim
        .log
        .iter()
        .rev()
        .flat_map(|e| e.writes.iter().rev())
        .filter_map(|w| match w {
            Write::PutGroup(r) => Some(r.clone()),
            _ => None,
        })
        .next()
        .unwrap();
    // rec-1 was granted 3 s leases before the change: a restart must wait
    // for those, not for the new 500 ms.
    assert_eq!(stored.lease_ttl_bound(), TTL);
    let mut sim = Sim::recovered(Recovered {
        groups: vec![stored],
        ..Default::default()
    });
    sim.connect("rec-2");
    sim.run_for(Duration::from_millis(3000), &["rec-2"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-1"));
    sim.run_for(Duration::from_millis(100), &["rec-2"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
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
        syncs: Vec::new(),
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
fn a_sole_member_that_failed_is_promoted_again_as_soon_as_it_can_serve() {
    // rec-1's session stays open but goes silent past the failover timeout
    // (a partition that keeps TCP up), so the group has nobody to promote.
    let mut sim = Sim::new();
    sim.connect("rec-1");
    sim.create("recorders", &["rec-1"]).unwrap();
    sim.advance(WAIT + Duration::from_millis(10));
    assert_eq!(sim.primary("recorders"), (None, 2));
    assert_eq!(sim.view("recorders").phase, Phase::NoPrimary);
    // Its heartbeats resume on the same session. It failed here, but it is
    // the only member that can serve: a vacancy is never kept open.
    sim.heartbeat("rec-1");
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 3));
    assert!(!sim.view("recorders").members[0].recently_failed);
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
    // rec-1 failed here: a restore goes to it only once it has been
    // healthy for failback_delay (60 s).
    sim.run_for(secs(61), &ALL);
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
fn min_failover_interval_counts_from_the_last_move_away_from_a_live_primary() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            min_failover_interval: Some(secs(30)),
            ..Default::default()
        },
    )
    .unwrap();
    // A planned switchover moves the role away from a live primary.
    sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-2".into(),
    });
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
    sim.set_healthy("rec-2", false);
    sim.run_for(secs(20), &ALL);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    sim.run_for(secs(11), &ALL);
    assert_eq!(
        sim.primary("recorders").0,
        None,
        "moving once the interval passed"
    );
}

#[test]
fn a_brand_new_primary_whose_check_fails_is_replaced_after_the_abnormal_timeout() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            abnormal_timeout: Some(secs(2)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.set_healthy("rec-1", false);
    sim.run_for(Duration::from_millis(1500), &ALL);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-1"));
    sim.run_for(secs(1), &ALL);
    assert_eq!(
        sim.primary("recorders"),
        (None, 2),
        "the first election is not a move away from a live primary: no rate limit"
    );
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 3));
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
fn a_new_agent_naming_the_one_that_left_takes_the_role_and_it_is_recorded() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            shutdown_grace: Some(secs(20)),
            ..Default::default()
        },
    )
    .unwrap();
    let old = sim.instance("rec-1");
    sim.goodbye("rec-1");
    sim.run_for(secs(5), &["rec-2", "rec-3"]);
    sim.restart_agent("rec-1", 1);
    let instance = sim.instance("rec-1");
    let session = sim.next_session;
    sim.next_session += 1;
    sim.step(Input::SessionOpened {
        session,
        hello: Hello {
            peer_address: None,
            node: "rec-1".into(),
            instance,
            node_uuid: "00000000-0000-4000-8000-000000000001".into(),
            previous_instance: Some(old),
            agent_version: "test".into(),
            address: "127.0.0.1:1".into(),
            roles: vec![],
        },
    });
    sim.sessions.insert("rec-1".into(), session);
    sim.heartbeat("rec-1");
    sim.run_for(secs(30), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    assert!(sim.event_kinds().contains(&EventKind::PrimaryReturned));
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
            peer_address: None,
            node: "rec-1".into(),
            instance: instance_id("rec-1", 0),
            node_uuid: String::new(),
            previous_instance: None,
            agent_version: "test".into(),
            address: String::new(),
            roles: vec![],
        },
    });
    sim.advance(secs(29));
    assert!(sim.log.iter().all(|e| e.closes.is_empty()));
    let out = sim.advance(secs(2));
    assert_eq!(out.closes, vec![77]);
    assert!(!sim.engine.node_views(None, usize::MAX, sim.now)[0].connected);
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

// ---------------------------------------------------------------------------
// A session speaks only for itself (agent instances)
// ---------------------------------------------------------------------------

/// Opens a session for `node` from another agent process (`generation`).
fn open_as(sim: &mut Sim, node: &str, generation: u64, roles: Vec<ClaimedRole>) -> SessionId {
    let kept = sim.instance(node);
    sim.restart_agent(node, generation);
    let session = sim.open_session(node, roles);
    sim.instances.insert(node.into(), kept);
    session
}

fn refused(out: &Effects, session: SessionId) -> bool {
    out.refusals.iter().any(|(s, _)| *s == session)
}

#[test]
fn a_second_instance_of_a_connected_node_is_refused_and_reported() {
    let mut sim = three_members();
    let dup = open_as(&mut sim, "rec-1", 1, vec![]);
    assert!(refused(sim.log.last().unwrap(), dup));
    assert!(!sim.engine.sessions.contains_key(&dup));
    // The original keeps heartbeating; the duplicate tries again: now it is
    // certain both are alive, and it is reported once.
    sim.run_for(secs(1), &ALL);
    let dup2 = open_as(&mut sim, "rec-1", 1, vec![]);
    assert!(refused(sim.log.last().unwrap(), dup2));
    let dup3 = open_as(&mut sim, "rec-1", 1, vec![]);
    assert!(refused(sim.log.last().unwrap(), dup3));
    let reported = sim
        .event_kinds()
        .iter()
        .filter(|k| **k == EventKind::DuplicateNode)
        .count();
    assert_eq!(reported, 1);
    let view = sim.view("recorders");
    assert!(view.members[0].duplicate.is_some(), "{view:?}");
    assert!(view.alarm.unwrap_or_default().contains("duplicate"));
    let node = sim
        .engine
        .node_views(None, usize::MAX, sim.now)
        .into_iter()
        .find(|n| n.node == "rec-1")
        .unwrap();
    assert!(node.duplicate.is_some());
    // The original holds the role and its lease throughout.
    sim.run_for(secs(10), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

#[test]
fn sessions_of_nodes_in_no_group_are_bounded_and_members_still_connect() {
    let mut sim = three_members();
    sim.disconnect("rec-3");
    for i in 0..MAX_UNASSIGNED_SESSIONS {
        let stray = format!("stray-{i}");
        let session = sim.open_session(&stray, vec![]);
        assert!(!refused(sim.log.last().unwrap(), session), "{stray}");
    }
    let one_more = sim.open_session("stray-extra", vec![]);
    let out = sim.log.last().unwrap();
    let refusal = out.refusals.iter().find(|(s, _)| *s == one_more);
    assert!(
        refusal
            .is_some_and(|(_, r)| r.silence_limit.is_none() && r.message.contains("in no group")),
        "{refusal:?}"
    );
    assert!(!sim.engine.sessions.contains_key(&one_more));
    // A member is never crowded out by strangers.
    let member = sim.connect("rec-3");
    assert!(!refused(sim.log.last().unwrap(), member));
    assert!(sim.engine.sessions.contains_key(&member));
    // Once a stranger leaves, another may come.
    sim.step(Input::SessionClosed { session: 4 });
    let later = sim.open_session("stray-later", vec![]);
    assert!(!refused(sim.log.last().unwrap(), later));
}

#[test]
fn the_same_instance_reconnecting_replaces_its_old_session_and_keeps_its_lease() {
    let mut sim = three_members();
    let old = sim.sessions["rec-1"];
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Primary,
        epoch: 1,
    }];
    let new = sim.connect_claiming("rec-1", claims);
    assert!(sim.log.iter().any(|e| e.closes.contains(&old)));
    assert!(!sim.log.iter().any(|e| refused(e, new)));
    let out = sim.heartbeat("rec-1");
    assert!(matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants.len() == 1));
    sim.run_for(secs(10), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

#[test]
fn a_new_instance_after_a_silence_gets_no_grants_and_waits_out_the_old_lease() {
    // rec-1 (primary) freezes; after its session has been silent for the
    // silence limit, another process opens as rec-1 and heartbeats.
    let mut sim = three_members();
    sim.run_for(secs(6) + Duration::from_millis(100), &["rec-2", "rec-3"]);
    // By now the lease ran out (3.03 s): someone else took over.
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    let mut sim = three_members();
    // Silent just past the silence limit but with the group's lease kept
    // alive by nobody: the new instance must not renew anything.
    sim.set(
        "recorders",
        PolicyPatch {
            auto_failover: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    sim.run_for(Duration::from_millis(2500), &["rec-2", "rec-3"]);
    sim.advance(Duration::from_millis(3600));
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Primary,
        epoch: 1,
    }];
    let imposter = open_as(&mut sim, "rec-1", 7, claims.clone());
    assert!(!refused(sim.log.last().unwrap(), imposter));
    sim.sessions.insert("rec-1".into(), imposter);
    let out = sim.heartbeat_claiming("rec-1", claims);
    assert!(
        matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants.is_empty()),
        "a new instance never renews the old instance's lease"
    );
}

#[test]
fn a_dead_primary_is_not_kept_alive_by_another_session_of_its_node() {
    let mut sim = three_members();
    sim.disconnect("rec-1"); // kill -9: its stream closes
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Primary,
        epoch: 1,
    }];
    let other = open_as(&mut sim, "rec-1", 5, claims.clone());
    sim.sessions.insert("rec-1".into(), other);
    sim.instances
        .insert("rec-1".into(), instance_id("rec-1", 5));
    for _ in 0..7 {
        let out = sim.heartbeat_claiming("rec-1", claims.clone());
        assert!(matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants.is_empty()));
        sim.advance(Duration::from_millis(500));
        sim.heartbeat("rec-2");
        sim.heartbeat("rec-3");
    }
    // The old lease ran out; the group failed over (the new instance of
    // rec-1 is itself a candidate, but it recently failed: rec-2 first).
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
}

#[test]
fn only_the_stepping_down_instance_can_confirm_its_step_down() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            auto_failover: Some(false),
            ..Default::default()
        },
    )
    .unwrap();
    sim.admin(AdminCommand::Promote {
        group: "recorders".into(),
        to: "rec-2".into(),
    });
    assert_eq!(sim.primary("recorders"), (None, 2));
    // rec-1's network is cut; past the silence limit another process opens
    // as rec-1 and confirms the step-down at once.
    sim.run_for(Duration::from_millis(2000), &["rec-2", "rec-3"]);
    sim.advance(Duration::from_millis(4100));
    sim.heartbeat("rec-2");
    sim.heartbeat("rec-3");
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Primary,
        epoch: 1,
    }];
    let imposter = open_as(&mut sim, "rec-1", 9, claims);
    sim.sessions.insert("rec-1".into(), imposter);
    sim.hook_done("rec-1", "recorders", 2, Role::Secondary);
    assert!(
        !sim.event_kinds().contains(&EventKind::StepDownConfirmed),
        "another instance confirmed rec-1's step-down"
    );
}

#[test]
fn a_wrong_instance_cannot_give_up_or_fail_the_role_either() {
    let mut sim = three_members();
    sim.disconnect("rec-1");
    let other = open_as(&mut sim, "rec-1", 3, vec![]);
    sim.sessions.insert("rec-1".into(), other);
    sim.hook_done("rec-1", "recorders", 1, Role::Secondary);
    let session = sim.sessions["rec-1"];
    sim.step(Input::HookResult {
        session,
        report: HookReport {
            group: "recorders".into(),
            epoch: 1,
            role: Role::Primary,
            outcome: HookOutcome::Failed,
            exit_code: Some(1),
            detail: String::new(),
        },
    });
    let kinds = sim.event_kinds();
    assert!(!kinds.contains(&EventKind::PrimarySteppedDown), "{kinds:?}");
    assert!(!kinds.contains(&EventKind::PromoteFailed), "{kinds:?}");
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
}

#[test]
fn an_epoch_claim_far_above_the_stored_one_is_refused_and_never_wraps() {
    let mut sim = three_members();
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Secondary,
        epoch: u64::MAX,
    }];
    sim.disconnect("rec-2");
    sim.connect_claiming("rec-2", claims);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    assert!(sim.event_kinds().contains(&EventKind::EpochClaimRefused));
    // A plausible claim (a store restored from a backup) is adopted.
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Secondary,
        epoch: 40,
    }];
    sim.disconnect("rec-3");
    sim.connect_claiming("rec-3", claims);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 41));
    assert_eq!(sim.view("recorders").phase, Phase::Active);
    // The primary is told the new epoch and keeps being granted leases.
    let told = sim.assignments_to("rec-1").last().cloned().unwrap();
    assert_eq!((told.role, told.epoch), (Role::Primary, 41));
    let out = sim.heartbeat("rec-1");
    assert!(matches!(&out.sends[0].1, ToAgent::Ack { grants, .. } if grants[0].epoch == 41));
}

#[test]
fn a_member_raises_a_groups_epoch_at_most_once() {
    let mut sim = three_members();
    let claim = |epoch| {
        vec![ClaimedRole {
            group: "recorders".into(),
            role: Role::Secondary,
            epoch,
        }]
    };
    sim.disconnect("rec-3");
    sim.connect_claiming("rec-3", claim(40));
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 41));
    // Long after, the same member is ahead again: refused, not adopted.
    sim.run_for(secs(10), &ALL);
    sim.heartbeat_claiming("rec-3", claim(90));
    sim.run_for(secs(10), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 41));
    assert!(sim.event_kinds().contains(&EventKind::EpochClaimRefused));
    // Another member that is ahead (a store restored from a backup) still
    // catches the group up.
    sim.heartbeat_claiming("rec-2", claim(60));
    sim.run_for(secs(5), &ALL);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 61));
}

#[test]
fn a_flood_of_refused_epoch_claims_records_one_event_a_minute() {
    let mut sim = three_members();
    let refused = |sim: &Sim| {
        sim.event_kinds()
            .iter()
            .filter(|k| **k == EventKind::EpochClaimRefused)
            .count()
    };
    // Each heartbeat claims a different epoch, all far above the stored one.
    for k in 0..200u64 {
        let claims = vec![ClaimedRole {
            group: "recorders".into(),
            role: Role::Primary,
            epoch: (1u64 << 40) + k,
        }];
        sim.heartbeat_claiming("rec-2", claims);
    }
    assert_eq!(refused(&sim), 1);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    // A minute later the next one is recorded again.
    sim.run_for(secs(61), &["rec-1", "rec-2", "rec-3"]);
    let claims = vec![ClaimedRole {
        group: "recorders".into(),
        role: Role::Primary,
        epoch: 1u64 << 41,
    }];
    sim.heartbeat_claiming("rec-2", claims);
    assert_eq!(refused(&sim), 2);
}

#[test]
fn replayed_heartbeats_earn_nothing() {
    let mut sim = three_members();
    let session = sim.sessions["rec-1"];
    let seq = sim.seqs["rec-1"];
    let out = sim.step(Input::Heartbeat {
        syncs: Vec::new(),
        session,
        seq,
        received: sim.now.mono,
        checks: vec![],
        roles: vec![],
    });
    assert!(
        out.sends.is_empty(),
        "a replayed heartbeat was acknowledged"
    );
}

#[test]
fn a_session_silent_for_twice_its_lease_is_closed() {
    let mut sim = three_members();
    let session = sim.sessions["rec-3"];
    sim.run_for(secs(5), &["rec-1", "rec-2"]);
    assert!(!sim.log.iter().any(|e| e.closes.contains(&session)));
    sim.run_for(secs(2), &["rec-1", "rec-2"]);
    assert!(sim.log.iter().any(|e| e.closes.contains(&session)));
    assert!(!sim.engine.node_views(None, usize::MAX, sim.now)[2].connected);
}

#[test]
fn a_clean_step_down_is_its_own_event_not_a_lapse() {
    let mut sim = three_members();
    sim.hook_done("rec-1", "recorders", 1, Role::Secondary);
    let kinds = sim.event_kinds();
    assert!(kinds.contains(&EventKind::PrimarySteppedDown), "{kinds:?}");
    assert!(!kinds.contains(&EventKind::PrimaryLapsed), "{kinds:?}");
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
}

// ---------------------------------------------------------------------------
// A vacancy is never kept open
// ---------------------------------------------------------------------------

#[test]
fn two_faults_a_minute_apart_still_fail_over_to_the_recently_failed_member() {
    let mut sim = Sim::new();
    sim.connect("n1");
    sim.connect("n2");
    sim.create("g", &["n1", "n2"]).unwrap();
    // n1 is cut off: n2 takes over.
    sim.run_for(WAIT + Duration::from_millis(10), &["n2"]);
    assert_eq!(sim.primary("g"), (Some("n2".into()), 2));
    // n1 is back and healthy; a few seconds later n2 freezes.
    sim.run_for(secs(5), &["n1", "n2"]);
    assert!(sim.view("g").members[0].recently_failed);
    sim.run_for(WAIT - Duration::from_millis(10), &["n1"]);
    assert_eq!(sim.primary("g").0.as_deref(), Some("n2"));
    sim.run_for(Duration::from_millis(500), &["n1"]);
    assert_eq!(
        sim.primary("g"),
        (Some("n1".into()), 3),
        "n1 promoted at the end of n2's lease"
    );
}

#[test]
fn recently_failed_members_rank_below_the_others() {
    let mut sim = three_members();
    // rec-1 lapses, rec-2 takes over; rec-1 comes back.
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    sim.run_for(secs(1), &ALL);
    // rec-2 lapses: rec-3 (never failed) goes before rec-1 (recently failed).
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-1", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
}

#[test]
fn recently_failed_members_are_no_failback_or_restore_target() {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            failback: Some(crate::policy::Failback::Delayed),
            failback_delay: Some(secs(30)),
            ..Default::default()
        },
    )
    .unwrap();
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    sim.run_for(secs(10), &ALL);
    let (_, answer) = sim.admin(AdminCommand::Restore {
        group: "recorders".into(),
    });
    // rec-1 recently failed: restore picks the best member that qualifies,
    // which is rec-2 itself.
    assert!(matches!(answer, Some(Ok(_))), "{answer:?}");
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
    let why = sim.view("recorders").members[0].why_not.clone().unwrap();
    assert!(why.contains("recently failed"), "{why}");
    // Once healthy for the delay, failback moves the role back.
    sim.run_for(secs(25), &ALL);
    assert_eq!(
        sim.primary("recorders"),
        (Some("rec-1".into()), 4),
        "failed back"
    );
}

#[test]
fn a_failed_promote_hook_is_retried_with_backoff_when_nobody_else_can_serve() {
    let mut sim = Sim::new();
    sim.connect("solo");
    sim.create("g", &["solo"]).unwrap();
    let mut promotions = Vec::new();
    for attempt in 1..=4u64 {
        let (_, epoch) = sim.primary("g");
        assert_eq!(
            sim.primary("g").0.as_deref(),
            Some("solo"),
            "attempt {attempt}"
        );
        promotions.push(sim.now.mono);
        let session = sim.sessions["solo"];
        sim.step(Input::HookResult {
            session,
            report: HookReport {
                group: "g".into(),
                epoch,
                role: Role::Primary,
                outcome: HookOutcome::Failed,
                exit_code: Some(1),
                detail: "exit 1".into(),
            },
        });
        // Stepped down; it confirms; then it is retried after its backoff.
        let (_, down) = sim.primary("g");
        sim.hook_done("solo", "g", down, Role::Secondary);
        assert_eq!(sim.primary("g").0, None);
        let why = sim.view("g").members[0].why_not.clone().unwrap();
        assert!(why.contains("promote hook failed"), "{why}");
        for _ in 0..200 {
            if sim.primary("g").0.is_some() {
                break;
            }
            sim.run_for(Duration::from_millis(500), &["solo"]);
        }
    }
    let gaps: Vec<u64> = promotions
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs())
        .collect();
    // 10 s (min_failover_interval), 20 s, 40 s: doubling, capped at 60 s.
    assert_eq!(gaps, [10, 20, 40], "{gaps:?}");
    assert!(
        sim.event_kinds()
            .iter()
            .filter(|k| **k == EventKind::Promoted)
            .count()
            >= 4
    );
}

/// The writes of every step from `first` on could not be committed: the
/// engine takes them back.
fn forget_steps_since(sim: &mut Sim, durable: &Durable, first: usize) -> Effects {
    let writes = sim.log[first..]
        .iter()
        .flat_map(|e| e.writes.clone())
        .collect();
    let out = Effects {
        writes,
        ..Effects::default()
    };
    sim.engine
        .forget_unwritten(durable, out, "disk full", sim.now)
}

/// What the store would hold had every step so far been written.
fn durable_so_far(sim: &Sim) -> Durable {
    let mut durable = Durable::default();
    for step in &sim.log {
        durable.committed(&step.writes);
    }
    durable
}

#[test]
fn a_promotion_that_could_not_be_written_is_forgotten_and_tried_again_after_a_full_wait() {
    let mut sim = three_members();
    let durable = durable_so_far(&sim);
    // rec-1 goes silent; rec-2 is promoted at epoch 2 — and the disk is full.
    sim.disconnect("rec-1");
    sim.run_for(WAIT + Duration::from_millis(500), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
    let out = forget_steps_since(&mut sim, &durable, 0);
    assert!(out.writes.is_empty(), "going back writes nothing");
    // Back to what is on disk, and nobody is promoted before a full wait:
    // the lease rec-1 holds on disk is assumed live, as at a start.
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    sim.run_for(WAIT - Duration::from_millis(100), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-1".into()), 1));
    sim.run_for(Duration::from_millis(600), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders"), (Some("rec-2".into()), 2));
}

#[test]
fn admin_changes_that_could_not_be_written_leave_no_trace() {
    let mut sim = three_members();
    let durable = durable_so_far(&sim);
    let before = sim.view("recorders");
    let log_len = sim.log.len();
    sim.create("other", &["rec-1", "rec-4"]).unwrap();
    sim.admin(AdminCommand::DeleteGroup {
        name: "recorders".into(),
    });
    let out = forget_steps_since(&mut sim, &durable, log_len);
    // The deleted group is back as it was, the created one is gone, and so
    // is the node only it named.
    let after = sim.view("recorders");
    assert_eq!(
        (after.primary, after.epoch),
        (before.primary.clone(), before.epoch)
    );
    assert!(sim.engine.group_view("other", sim.now).is_none());
    assert!(!sim.engine.nodes.contains_key("rec-4"));
    assert!(!sim.engine.epoch_floors.contains_key("recorders"));
    // Its members are told their durable assignment again.
    let again = out.sends.iter().any(|(_, m)| {
        matches!(m, ToAgent::Assignment(a) if a.group == "recorders" && a.epoch == before.epoch)
    });
    assert!(again, "{:?}", out.sends);
    // And the primary keeps earning its lease.
    let grants = sim.heartbeat("rec-1").sends.iter().any(
        |(_, m)| matches!(m, ToAgent::Ack { grants, .. } if grants.iter().any(|g| g.group == "recorders")),
    );
    assert!(grants, "the primary lost its grants");
}

#[test]
fn reloaded_defaults_shape_new_groups_only_and_never_shorten_a_lease_wait() {
    let mut sim = Sim::new();
    sim.create("old", &["a"]).unwrap();
    let longer = Policy {
        failover_timeout: Duration::from_secs(9),
        ..Policy::default()
    };
    let out = sim.step(Input::Defaults {
        policy: longer.clone(),
    });
    assert!(out.writes.is_empty(), "a reload writes nothing");
    sim.create("new", &["a"]).unwrap();
    assert_eq!(
        sim.view("new").policy.failover_timeout,
        Duration::from_secs(9)
    );
    assert_eq!(
        sim.view("old").policy.failover_timeout,
        Policy::default().failover_timeout,
        "existing groups keep their settings"
    );
    // Shortened again: the fallback lease of a deleted group's record
    // without one stays the longest seen.
    sim.step(Input::Defaults {
        policy: Policy {
            failover_timeout: Duration::from_secs(1),
            ..Policy::default()
        },
    });
    assert_eq!(sim.engine.lease_fallback, Duration::from_secs(9));
}

#[test]
fn a_member_losing_and_regaining_contact_is_recorded_and_flapping_is_bounded() {
    let mut sim = Sim::new();
    sim.create("g", &["a", "b"]).unwrap();
    sim.connect("a");
    sim.heartbeat("a");
    sim.connect("b");
    sim.heartbeat("b");
    let count =
        |sim: &Sim, kind: EventKind| sim.event_kinds().into_iter().filter(|k| *k == kind).count();
    assert_eq!(
        count(&sim, EventKind::NodeRegained),
        0,
        "a first contact is no news"
    );
    sim.disconnect("b");
    assert_eq!(count(&sim, EventKind::NodeLost), 1);
    sim.connect("b");
    sim.heartbeat("b");
    assert_eq!(count(&sim, EventKind::NodeRegained), 1);
    // A node that flaps a hundred times within a second: a few events.
    for _ in 0..100 {
        sim.disconnect("b");
        sim.connect("b");
        sim.heartbeat("b");
        sim.advance(Duration::from_millis(10));
    }
    let regained = count(&sim, EventKind::NodeRegained);
    let lost = count(&sim, EventKind::NodeLost);
    assert!(regained <= 4, "{regained} regains recorded");
    assert!(lost <= regained + 1, "{lost} losses, {regained} regains");
    // Once it settles, a regain not yet recorded is, at a later heartbeat.
    sim.disconnect("b");
    sim.advance(Duration::from_secs(60));
    sim.connect("b");
    sim.heartbeat("b");
    assert!(
        count(&sim, EventKind::NodeRegained) > regained,
        "the return is told"
    );
}

#[test]
fn a_promotion_clears_the_alarm_and_says_so() {
    let mut sim = Sim::new();
    sim.create("g", &["a", "b"]).unwrap();
    sim.set(
        "g",
        PolicyPatch {
            auto_failover: Some(false),
            ..PolicyPatch::default()
        },
    )
    .unwrap();
    sim.connect("a");
    sim.heartbeat("a");
    sim.connect("b");
    sim.heartbeat("b");
    sim.disconnect("a");
    sim.run_for(Duration::from_secs(10), &["b"]);
    assert!(
        sim.view("g").alarm.is_some(),
        "auto-failover is off: an alarm"
    );
    sim.admin(AdminCommand::Takeover {
        group: "g".into(),
        to: Some("b".into()),
    });
    sim.run_for(Duration::from_secs(1), &["b"]);
    assert!(sim.view("g").alarm.is_none());
    assert!(sim.event_kinds().contains(&EventKind::AlarmCleared));
}

/// rec-1 is primary and goes silent; rec-2 (next in order) and rec-3
/// report copies of the given ages (`None`: no copy).
fn lapse_with_copies(max_sync_lag: Duration, rec2: Option<u64>, rec3: Option<u64>) -> Sim {
    let mut sim = with_copies(max_sync_lag, rec2, rec3);
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    sim
}

fn with_copies(max_sync_lag: Duration, rec2: Option<u64>, rec3: Option<u64>) -> Sim {
    let mut sim = three_members();
    sim.set(
        "recorders",
        PolicyPatch {
            max_sync_lag: Some(max_sync_lag),
            ..Default::default()
        },
    )
    .unwrap();
    let state = |age: Option<u64>| match age {
        None => SyncState::None,
        Some(a) if a <= 1 => SyncState::Fresh,
        Some(_) => SyncState::Stale,
    };
    sim.set_sync("rec-1", "recorders", SyncState::Source, Some(0));
    sim.set_sync("rec-2", "recorders", state(rec2), rec2);
    sim.set_sync("rec-3", "recorders", state(rec3), rec3);
    for node in ["rec-1", "rec-2", "rec-3"] {
        sim.heartbeat(node);
    }
    sim
}

#[test]
fn max_sync_lag_skips_a_stale_copy_while_a_fresher_member_can_serve() {
    let mut sim = with_copies(Duration::from_secs(30), Some(120), Some(1));
    let view = sim.view("recorders");
    let rec2 = view.members.iter().find(|m| m.node == "rec-2").unwrap();
    assert!(
        rec2.why_not
            .as_deref()
            .unwrap_or("")
            .contains("synced copy"),
        "{:?}",
        rec2.why_not
    );
    assert_eq!(rec2.syncs[0].state, SyncState::Stale);
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
}

#[test]
fn the_freshest_member_is_promoted_even_past_max_sync_lag() {
    // Nobody is within the limit: the freshest copy still serves (no
    // group stays dark for it); no copy at all ranks last.
    let mut sim = lapse_with_copies(Duration::from_secs(30), None, Some(120));
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
    let mut sim = lapse_with_copies(Duration::from_secs(30), Some(300), Some(120));
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-3"));
    let mut sim = lapse_with_copies(Duration::from_secs(30), Some(60), Some(120));
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
}

#[test]
fn without_max_sync_lag_the_order_decides() {
    let mut sim = lapse_with_copies(Duration::ZERO, Some(120), Some(1));
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
}

#[test]
fn an_operator_may_still_take_over_to_a_stale_member() {
    let mut sim = lapse_with_copies(Duration::from_secs(30), Some(120), Some(1));
    sim.run_for(Duration::from_secs(1), &["rec-2", "rec-3"]);
    let (_, reply) = sim.admin(AdminCommand::Takeover {
        group: "recorders".into(),
        to: Some("rec-2".into()),
    });
    let _ = reply;
    sim.run_for(WAIT * 2, &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
}

#[test]
fn a_copy_that_is_not_the_published_snapshot_ranks_below_one_that_is() {
    // rec-3 claims a fresh copy of a snapshot the primary never
    // published (a lie, or a configuration out of step); rec-2 holds what
    // was published, older than the limit: rec-2 is not skipped for it.
    let mut sim = with_copies(Duration::from_secs(30), Some(40), Some(0));
    sim.set_sync_of(
        "rec-3",
        "recorders",
        SyncState::Fresh,
        Some(0),
        "cd".repeat(32),
    );
    // A sync only rec-3 reports, even as its source, counts for nothing:
    // rec-3 never held the role.
    let mut extra = sim.syncs["rec-3"].clone();
    extra.push(SyncReport {
        name: "ghost".into(),
        state: SyncState::Source,
        snapshot: "ef".repeat(32),
        ..extra[0].clone()
    });
    sim.syncs.insert("rec-3".into(), extra);
    sim.run_for(WAIT + Duration::from_millis(10), &["rec-2", "rec-3"]);
    assert_eq!(sim.primary("recorders").0.as_deref(), Some("rec-2"));
}
