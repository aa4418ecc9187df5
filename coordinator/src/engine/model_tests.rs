//! Model-based test of the decision core: random interleavings of inputs
//! from honest, duplicated, stale and hostile sessions (any node id, any
//! claim, any hook result, any order, replayed heartbeats, delayed and
//! duplicated answers), admin commands, coordinator restarts and a store
//! that cannot write for a while (a full disk: whole batches are taken
//! back by `Engine::forget_unwritten`), with
//! explicit time. An independent checker watches only what the engine
//! emits and asserts after every step:
//!
//! 1. at most one agent instance per group holds an unexpired primary
//!    lease (a grant counts from when the acknowledged heartbeat was
//!    received, for `ttl * (1 + rho)`, until that same instance reports its
//!    own step-down or says goodbye — an agent that stops acts no more; with
//!    a shutdown grace the operator chose to let its service run on until
//!    a new agent of the same installation takes over);
//! 2. a group's epoch never decreases, not even across deletion and
//!    re-creation, and never wraps;
//! 3. a group shown `active` has a primary whose current session is the
//!    instance that was given the role at the current epoch (so its lease
//!    can be renewed).
//!
//! At the end of each case every node comes back honest and healthy, and
//! every group must have a primary again (no group stays dark while its
//! members can serve).
//!
//! `FAILOVER_MODEL_CASES` sets the number of cases (default 1500, more in
//! the soak); `FAILOVER_MODEL_SEED` replays one case.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::policy::Failback;

const NODES: [&str; 4] = ["a", "b", "c", "d"];
const GROUPS: [(&str, &[&str]); 2] = [("g1", &["a", "b", "c"]), ("g2", &["c", "a"])];
const RHO: f64 = 0.01;
const STEPS: usize = 160;

/// One agent process, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Instance {
    node: String,
    id: String,
}

/// A lease the engine granted to an instance, as long as it can last.
#[derive(Debug, Clone)]
struct Authorization {
    instance: Instance,
    epoch: u64,
    from: Instant,
    until: Instant,
}

/// One open session in the model.
struct OpenSession {
    instance: Instance,
    /// Follows the agent protocol (answers assignments with hook results,
    /// reports its roles); otherwise it sends anything.
    honest: bool,
    next_seq: u64,
    /// When each heartbeat was received, by sequence number.
    received: HashMap<u64, Instant>,
    /// What this instance was told: group -> (role, epoch).
    roles: BTreeMap<String, (Role, u64)>,
}

struct World {
    rng: StdRng,
    engine: Engine,
    now: Now,
    next_session: SessionId,
    next_reply: ReplyId,
    sessions: BTreeMap<SessionId, OpenSession>,
    /// Instance ids per node, by generation.
    generations: HashMap<String, u64>,
    /// The last instance of each node that said goodbye.
    left: HashMap<String, String>,
    /// The durable store, as the writes built it.
    store: BTreeMap<String, GroupRecord>,
    floors: HashMap<String, u64>,
    deleted_ttls: HashMap<String, Duration>,
    /// The same, as the runtime keeps it.
    durable: Durable,
    /// While set, every batch with writes fails to commit.
    disk_full: bool,
    /// Answers honest agents will send, delivered later (maybe twice).
    in_flight: Vec<(SessionId, Input)>,
    // --- the checker's own state ---
    authorizations: BTreeMap<String, Vec<Authorization>>,
    highest_epoch: HashMap<String, u64>,
    /// The instance last sent a primary assignment, per group, and at
    /// which epoch.
    given_to: HashMap<String, (Instance, u64)>,
    trace: Vec<String>,
}

fn instance_id(node: &str, generation: u64) -> String {
    let mut n: u128 = (u128::from(generation) << 64) | 0x5eed;
    for b in node.bytes() {
        n = n.wrapping_mul(257).wrapping_add(u128::from(b));
    }
    format!("{n:032x}")
}

fn config() -> EngineConfig {
    EngineConfig {
        coordinator_id: "model".into(),
        clock_drift: RHO,
        default_heartbeat_interval: Duration::from_millis(100),
        default_policy: Policy {
            heartbeat_interval: Duration::from_millis(100),
            failover_timeout: Duration::from_secs(1),
            failback_delay: Duration::from_secs(5),
            min_failover_interval: Duration::from_secs(2),
            ..Policy::default()
        },
        takeover_wait: Duration::ZERO,
    }
}

impl World {
    fn new(seed: u64) -> World {
        let now = Now {
            mono: Instant::now(),
            wall_ms: 1_700_000_000_000,
        };
        let mut world = World {
            rng: StdRng::seed_from_u64(seed),
            engine: Engine::new(config(), Recovered::default(), now),
            now,
            next_session: 1,
            next_reply: 1,
            sessions: BTreeMap::new(),
            generations: HashMap::new(),
            left: HashMap::new(),
            store: BTreeMap::new(),
            floors: HashMap::new(),
            deleted_ttls: HashMap::new(),
            durable: Durable::default(),
            disk_full: false,
            in_flight: Vec::new(),
            authorizations: BTreeMap::new(),
            highest_epoch: HashMap::new(),
            given_to: HashMap::new(),
            trace: Vec::new(),
        };
        for (name, members) in GROUPS {
            world.admin(AdminCommand::CreateGroup {
                name: name.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                policy: PolicyPatch::default(),
            });
        }
        world
    }

    /// Feeds one input and checks everything the engine did.
    fn input(&mut self, input: Input) {
        self.trace.push(format!("{:?}", input_summary(&input)));
        let mut out = Effects::default();
        self.engine.handle(input, self.now, &mut out);
        self.engine.tick(self.now, &mut out);
        self.absorb(out);
    }

    fn advance(&mut self, d: Duration) {
        self.trace.push(format!("advance {d:?}"));
        // Step through due deadlines one at a time, as the runtime would.
        let target = self.now.mono + d;
        loop {
            let next = self.engine.next_deadline().filter(|t| *t <= target);
            let at = next.unwrap_or(target).max(self.now.mono);
            self.now.wall_ms += (at - self.now.mono).as_millis() as u64;
            self.now.mono = at;
            let mut out = Effects::default();
            self.engine.tick(self.now, &mut out);
            self.absorb(out);
            if next.is_none() || at >= target {
                break;
            }
        }
    }

    fn admin(&mut self, command: AdminCommand) {
        let reply = self.next_reply;
        self.next_reply += 1;
        self.input(Input::Admin {
            reply,
            actor: "model".into(),
            command,
        });
    }

    /// Applies effects to the model store, routes messages to honest
    /// agents, and runs the checker.
    fn absorb(&mut self, out: Effects) {
        let out = if self.disk_full && !out.writes.is_empty() {
            self.trace.push("  (the batch could not be written)".into());
            self.engine
                .forget_unwritten(&self.durable, out, "disk full", self.now)
        } else {
            self.durable.committed(&out.writes);
            out
        };
        for write in &out.writes {
            match write {
                Write::PutGroup(record) => {
                    let highest = self.highest_epoch.get(&record.name).copied().unwrap_or(0);
                    assert!(
                        record.epoch >= highest,
                        "epoch of {} went from {} down to {}\n{}",
                        record.name,
                        highest,
                        record.epoch,
                        self.trace_tail()
                    );
                    self.highest_epoch.insert(record.name.clone(), record.epoch);
                    self.store.insert(record.name.clone(), record.clone());
                }
                Write::DeleteGroup {
                    name,
                    epoch_floor,
                    lease_ttl,
                } => {
                    self.deleted_ttls.insert(name.clone(), *lease_ttl);
                    let highest = self.highest_epoch.entry(name.clone()).or_default();
                    assert!(*epoch_floor > *highest, "epoch floor below the epoch");
                    *highest = *epoch_floor;
                    self.store.remove(name);
                    self.floors.insert(name.clone(), *epoch_floor);
                }
                Write::Event(_) | Write::Cursor { .. } => {}
            }
        }
        for session in out.closes.iter().chain(out.refusals.iter().map(|(s, _)| s)) {
            self.sessions.remove(session);
        }
        for (session, message) in out.sends {
            self.deliver(session, message);
        }
        self.check_leases();
        self.check_active_groups();
    }

    /// A message reaches the model agent behind `session`.
    fn deliver(&mut self, session: SessionId, message: ToAgent) {
        let ttl_wait = |ttl: Duration| ttl.mul_f64(1.0 + RHO);
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        match message {
            ToAgent::Ack { seq, grants } => {
                let received = *s
                    .received
                    .get(&seq)
                    .unwrap_or_else(|| panic!("ack for a heartbeat never sent: {seq}"));
                for grant in grants {
                    let auth = Authorization {
                        instance: s.instance.clone(),
                        epoch: grant.epoch,
                        from: self.now.mono,
                        until: received + ttl_wait(grant.ttl),
                    };
                    self.authorizations
                        .entry(grant.group)
                        .or_default()
                        .push(auth);
                }
            }
            ToAgent::Assignment(a) => {
                if a.role == Role::Primary {
                    self.given_to
                        .insert(a.group.clone(), (s.instance.clone(), a.epoch));
                }
                let known = s.roles.get(&a.group).map_or(0, |(_, e)| *e);
                if a.epoch < known {
                    return;
                }
                let was = s.roles.insert(a.group.clone(), (a.role, a.epoch));
                if s.honest {
                    // The hook runs and its result comes back later.
                    let changed = was.is_none_or(|(r, e)| r != a.role || e != a.epoch);
                    if changed {
                        let report = HookReport {
                            group: a.group,
                            epoch: a.epoch,
                            role: a.role,
                            outcome: HookOutcome::Succeeded,
                            exit_code: Some(0),
                            detail: String::new(),
                        };
                        self.in_flight
                            .push((session, Input::HookResult { session, report }));
                    }
                }
            }
            ToAgent::Release { group, epoch, .. } => {
                if s.roles.get(&group).is_none_or(|(_, e)| *e <= epoch) {
                    s.roles.remove(&group);
                }
            }
            ToAgent::Welcome { .. } | ToAgent::Settings { .. } => {}
        }
    }

    /// An instance that reports its own step-down gives up its leases.
    fn revoke(&mut self, instance: &Instance, group: &str, epoch: u64) {
        if let Some(auths) = self.authorizations.get_mut(group) {
            auths.retain(|a| !(a.instance == *instance && a.epoch <= epoch));
        }
    }

    /// Invariant 1: at any instant, at most one instance per group holds
    /// an unexpired lease. Every grant starts at a step, so checking at
    /// every step is checking at every instant.
    fn check_leases(&mut self) {
        let now = self.now.mono;
        for (group, auths) in &mut self.authorizations {
            auths.retain(|a| a.until > now);
            let mut holders: Vec<&Instance> = auths.iter().map(|a| &a.instance).collect();
            holders.sort();
            holders.dedup();
            if holders.len() > 1 {
                let detail: Vec<String> = auths
                    .iter()
                    .map(|a| {
                        format!(
                            "{}#{} epoch {} from {:?} until {:?}",
                            a.instance.node,
                            &a.instance.id,
                            a.epoch,
                            a.from.duration_since(now.min(a.from)),
                            a.until.saturating_duration_since(now)
                        )
                    })
                    .collect();
                panic!(
                    "two instances hold a lease in {group}: {detail:?}\n{}",
                    trace_tail(&self.trace)
                );
            }
        }
    }

    /// Invariant 3: an active group's primary can be renewed.
    fn check_active_groups(&self) {
        for name in self.store.keys() {
            let Some(view) = self.engine.group_view(name, self.now) else {
                panic!("{name} is in the store but not in the engine");
            };
            if view.phase != Phase::Active {
                continue;
            }
            let primary = view.primary.as_deref().expect("active means a primary");
            let (given, epoch) = self
                .given_to
                .get(name)
                .unwrap_or_else(|| panic!("{name} is active but nobody was given the role"));
            assert_eq!(
                (given.node.as_str(), *epoch),
                (primary, view.epoch),
                "{name} is active with {primary} at epoch {} but the role was last given to {given:?} at {epoch}\n{}",
                view.epoch,
                self.trace_tail()
            );
            let connected = self.sessions.values().any(|s| s.instance == *given);
            assert!(
                connected,
                "{name} is active but the instance holding the role has no session\n{}",
                self.trace_tail()
            );
        }
    }

    fn trace_tail(&self) -> String {
        trace_tail(&self.trace)
    }

    // --- random actions ---

    fn random_node(&mut self) -> String {
        NODES[self.rng.random_range(0..NODES.len())].to_owned()
    }

    fn random_group(&mut self) -> String {
        match self.rng.random_range(0..10) {
            0 => "nope".into(),
            1 => "g3".into(),
            _ => GROUPS[self.rng.random_range(0..GROUPS.len())].0.to_owned(),
        }
    }

    /// An epoch near the group's current one, or a wild one.
    fn random_epoch(&mut self, group: &str) -> u64 {
        let current = self.highest_epoch.get(group).copied().unwrap_or(0);
        match self.rng.random_range(0..12) {
            0 => u64::MAX,
            1 => u64::MAX - 1,
            2 => current.saturating_add(MAX_EPOCH_CLAIM_AHEAD),
            3 => current.saturating_add(MAX_EPOCH_CLAIM_AHEAD + 1),
            4 => self.rng.random(),
            5 => 0,
            6 => current.saturating_sub(1),
            7 => current.saturating_add(1),
            _ => current,
        }
    }

    fn random_role(&mut self) -> Role {
        match self.rng.random_range(0..3) {
            0 => Role::Primary,
            1 => Role::Secondary,
            _ => Role::Fenced,
        }
    }

    fn random_claims(&mut self) -> Vec<ClaimedRole> {
        let n = self.rng.random_range(0..3);
        (0..n)
            .map(|_| {
                let group = self.random_group();
                ClaimedRole {
                    epoch: self.random_epoch(&group),
                    role: self.random_role(),
                    group,
                }
            })
            .collect()
    }

    /// A new session: a reconnect of a known instance, a restarted agent,
    /// a duplicate, or a hostile client.
    fn open(&mut self) {
        let node = self.random_node();
        let generation = self.generations.get(&node).copied().unwrap_or(0);
        let generation = match self.rng.random_range(0..4) {
            0 => {
                let g = generation + 1;
                self.generations.insert(node.clone(), g);
                g
            }
            1 => generation + 100 + self.rng.random_range(0..3), // a duplicate
            _ => generation,
        };
        let instance = Instance {
            id: instance_id(&node, generation),
            node: node.clone(),
        };
        let honest = self.rng.random_bool(0.6);
        // An honest agent claims what it holds; others claim anything.
        let claims = if honest {
            self.sessions
                .values()
                .filter(|s| s.instance == instance)
                .flat_map(|s| s.roles.iter())
                .map(|(group, (role, epoch))| ClaimedRole {
                    group: group.clone(),
                    role: *role,
                    epoch: *epoch,
                })
                .collect()
        } else {
            self.random_claims()
        };
        // A new process of the node names the one that said goodbye last
        // (as a restarted agent does, from its state directory).
        let previous_instance = self
            .left
            .get(&node)
            .filter(|_| self.rng.random_bool(0.7))
            .cloned();
        let session = self.next_session;
        self.next_session += 1;
        let roles = self
            .sessions
            .values()
            .find(|s| s.instance == instance)
            .map(|s| s.roles.clone())
            .unwrap_or_default();
        let next_seq = self
            .sessions
            .values()
            .filter(|s| s.instance == instance)
            .map(|s| s.next_seq)
            .max()
            .unwrap_or(1);
        self.sessions.insert(
            session,
            OpenSession {
                instance: instance.clone(),
                honest,
                next_seq,
                received: HashMap::new(),
                roles,
            },
        );
        self.input(Input::SessionOpened {
            session,
            hello: Hello {
                peer_address: None,
                node,
                instance: instance.id,
                node_uuid: "00000000-0000-4000-8000-000000000000".into(),
                previous_instance,
                agent_version: "model".into(),
                address: format!("127.0.0.1:{session}"),
                roles: claims,
            },
        });
    }

    fn random_session(&mut self) -> Option<SessionId> {
        if self.sessions.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.sessions.len());
        self.sessions.keys().nth(i).copied()
    }

    fn heartbeat(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let honest = s.honest;
        let last = s.next_seq.saturating_sub(1);
        let claims: Vec<ClaimedRole> = s
            .roles
            .iter()
            .map(|(group, (role, epoch))| ClaimedRole {
                group: group.clone(),
                role: *role,
                epoch: *epoch,
            })
            .collect();
        let seq = if honest {
            s.next_seq
        } else {
            match self.rng.random_range(0..10) {
                0 => last,                   // replayed
                1 => last.saturating_sub(3), // stale
                2 => u64::MAX,               // hostile
                _ => s.next_seq,
            }
        };
        let roles = if honest { claims } else { self.random_claims() };
        let passing = honest || self.rng.random_bool(0.7);
        let checks = vec![CheckStatus {
            name: "svc".into(),
            passing,
            groups: vec![],
            detail: String::new(),
        }];
        let now = self.now.mono;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.next_seq = s.next_seq.max(seq.saturating_add(1));
            // A replayed sequence number keeps its first reception time:
            // that is what the agent's lease would count from.
            s.received.entry(seq).or_insert(now);
        }
        let syncs = self.random_syncs();
        self.input(Input::Heartbeat {
            syncs,
            session,
            seq,
            received: now,
            checks,
            roles,
        });
    }

    fn hook_result(&mut self, session: SessionId) {
        let group = self.random_group();
        let epoch = self.random_epoch(&group);
        let role = self.random_role();
        let outcome = match self.rng.random_range(0..5) {
            0 => HookOutcome::Failed,
            1 => HookOutcome::TimedOut,
            2 => HookOutcome::Superseded,
            3 => HookOutcome::NotConfigured,
            _ => HookOutcome::Succeeded,
        };
        self.send_hook_result(
            session,
            HookReport {
                group,
                epoch,
                role,
                outcome,
                exit_code: None,
                detail: "model".into(),
            },
        );
    }

    fn send_hook_result(&mut self, session: SessionId, report: HookReport) {
        if let Some(s) = self.sessions.get(&session)
            && report.role == Role::Secondary
            && report.outcome.took_effect()
        {
            // Whatever the engine makes of it, this instance has said it
            // no longer acts at this epoch or below.
            let instance = s.instance.clone();
            self.revoke(&instance, &report.group, report.epoch);
        }
        self.input(Input::HookResult { session, report });
    }

    /// Delivers an honest agent's queued answer (sometimes twice, sometimes
    /// late, in any order).
    fn deliver_in_flight(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.in_flight.len());
        let duplicate = self.rng.random_bool(0.2);
        let (session, input) = if duplicate {
            let (s, i) = &self.in_flight[i];
            (*s, clone_hook(i))
        } else {
            self.in_flight.swap_remove(i)
        };
        if !self.sessions.contains_key(&session) {
            return;
        }
        if let Input::HookResult { report, .. } = input {
            self.send_hook_result(session, report);
        }
    }

    fn random_admin(&mut self) {
        let group = self.random_group();
        let node = self.random_node();
        let command = match self.rng.random_range(0..11) {
            0 => AdminCommand::Promote { group, to: node },
            1 => AdminCommand::Takeover {
                group,
                to: self.rng.random_bool(0.5).then_some(node),
            },
            2 => AdminCommand::Restore { group },
            3 => AdminCommand::Drain { group, node },
            4 => AdminCommand::Undrain { group, node },
            5 => AdminCommand::MoveMember {
                group,
                node,
                position: self.rng.random_range(0..3),
            },
            6 => AdminCommand::AddMember {
                group,
                node,
                position: None,
            },
            7 => AdminCommand::RemoveMember { group, node },
            8 => AdminCommand::DeleteGroup { name: group },
            9 => {
                let members = GROUPS
                    .iter()
                    .find(|(g, _)| *g == group)
                    .map_or(vec!["d".to_string()], |(_, m)| {
                        m.iter().map(|m| m.to_string()).collect()
                    });
                AdminCommand::CreateGroup {
                    name: group,
                    members,
                    policy: PolicyPatch::default(),
                }
            }
            _ => AdminCommand::UpdatePolicy {
                group,
                policy: self.random_policy(),
            },
        };
        self.admin(command);
    }

    /// Sync reports of any state and age, honest or not: they may change
    /// who is chosen, never whether a promotion is safe.
    fn random_syncs(&mut self) -> Vec<crate::model::SyncReport> {
        use proto::vocab::SyncState;
        (0..self.rng.random_range(0..3))
            .map(|_| {
                let group = self.random_group();
                let state = [
                    SyncState::Source,
                    SyncState::Fresh,
                    SyncState::Stale,
                    SyncState::None,
                ][self.rng.random_range(0..4)];
                let age = match self.rng.random_range(0..4) {
                    0 => None,
                    1 => Some(Duration::MAX),
                    _ => Some(Duration::from_millis(self.rng.random_range(0..60_000))),
                };
                crate::model::SyncReport {
                    group,
                    name: ["data", "conf"][self.rng.random_range(0..2)].into(),
                    snapshot: "ab".repeat(32),
                    epoch: self.rng.random_range(0..5),
                    age,
                    bytes: self.rng.random(),
                    state,
                    error: String::new(),
                }
            })
            .collect()
    }

    fn random_policy(&mut self) -> PolicyPatch {
        let ms = Duration::from_millis;
        let mut p = PolicyPatch::default();
        match self.rng.random_range(0..6) {
            0 => {
                p.failover_timeout =
                    Some([ms(300), ms(1000), ms(3000)][self.rng.random_range(0..3)])
            }
            1 => p.auto_failover = Some(self.rng.random_bool(0.7)),
            2 => {
                p.failback = Some(if self.rng.random_bool(0.5) {
                    Failback::Delayed
                } else {
                    Failback::Never
                })
            }
            3 => p.shutdown_grace = Some([ms(0), ms(500), ms(2000)][self.rng.random_range(0..3)]),
            4 => p.abnormal_timeout = Some([ms(0), ms(700)][self.rng.random_range(0..2)]),
            5 if self.rng.random_bool(0.5) => {
                p.max_sync_lag = Some([ms(0), ms(500), ms(30_000)][self.rng.random_range(0..3)])
            }
            _ => p.min_failover_interval = Some([ms(0), ms(2000)][self.rng.random_range(0..2)]),
        }
        p
    }

    /// The coordinator restarts: a new engine from what was durable; every
    /// session is gone (agents reconnect as they would).
    fn restart(&mut self) {
        self.trace.push("restart".into());
        let recovered = Recovered {
            groups: self.store.values().cloned().collect(),
            epoch_floors: self.floors.clone(),
            deleted_ttls: self.deleted_ttls.clone(),
            next_event_seq: 1,
        };
        self.engine = Engine::new(config(), recovered, self.now);
        // Agents keep their roles; their sessions are gone.
        let kept: Vec<OpenSession> = std::mem::take(&mut self.sessions).into_values().collect();
        self.in_flight.clear();
        for s in kept.into_iter().filter(|s| s.honest) {
            let session = self.next_session;
            self.next_session += 1;
            let claims = s
                .roles
                .iter()
                .map(|(group, (role, epoch))| ClaimedRole {
                    group: group.clone(),
                    role: *role,
                    epoch: *epoch,
                })
                .collect();
            let node = s.instance.node.clone();
            let id = s.instance.id.clone();
            self.sessions.insert(
                session,
                OpenSession {
                    received: HashMap::new(),
                    ..s
                },
            );
            self.input(Input::SessionOpened {
                session,
                hello: Hello {
                    peer_address: None,
                    node,
                    instance: id,
                    node_uuid: "00000000-0000-4000-8000-000000000000".into(),
                    previous_instance: None,
                    agent_version: "model".into(),
                    address: format!("127.0.0.1:{session}"),
                    roles: claims,
                },
            });
        }
    }

    fn step(&mut self) {
        match self.rng.random_range(0..100) {
            0..12 => self.open(),
            12..45 => {
                if let Some(s) = self.random_session() {
                    self.heartbeat(s);
                }
            }
            45..52 => {
                if let Some(s) = self.random_session() {
                    self.hook_result(s);
                }
            }
            52..64 => self.deliver_in_flight(),
            64..67 => {
                if let Some(session) = self.random_session() {
                    if let Some(s) = self.sessions.get(&session) {
                        let instance = s.instance.clone();
                        for auths in self.authorizations.values_mut() {
                            auths.retain(|a| a.instance != instance);
                        }
                        self.left.insert(instance.node.clone(), instance.id.clone());
                    }
                    self.input(Input::Goodbye {
                        session,
                        reason: "model".into(),
                    });
                }
            }
            67..71 => {
                if let Some(session) = self.random_session() {
                    self.sessions.remove(&session);
                    self.input(Input::SessionClosed { session });
                }
            }
            71..78 => self.random_admin(),
            78..79 => self.restart(),
            79..80 => {
                self.disk_full = !self.disk_full;
                self.trace.push(format!("disk full: {}", self.disk_full));
            }
            80..81 => {
                // A configuration reload: groups created from now on get
                // another failover timeout.
                let ms = self.rng.random_range(300..3000);
                let policy = Policy {
                    failover_timeout: Duration::from_millis(ms),
                    ..config().default_policy
                };
                self.input(Input::Defaults { policy });
            }
            81..94 => {
                let ms = self.rng.random_range(10..400);
                self.advance(Duration::from_millis(ms));
            }
            _ => {
                let ms = self.rng.random_range(400..4000);
                self.advance(Duration::from_millis(ms));
            }
        }
    }

    /// Every node comes back honest and healthy, with default-like
    /// settings; every group must have a primary again.
    fn heal_and_check_liveness(&mut self) {
        self.trace.push("--- heal ---".into());
        self.disk_full = false;
        let open: Vec<SessionId> = self.sessions.keys().copied().collect();
        for session in open {
            self.sessions.remove(&session);
            self.input(Input::SessionClosed { session });
        }
        self.in_flight.clear();
        for name in self.store.keys().cloned().collect::<Vec<_>>() {
            let record = self.store[&name].clone();
            for node in &record.maintenance {
                self.admin(AdminCommand::Undrain {
                    group: name.clone(),
                    node: node.clone(),
                });
            }
            self.admin(AdminCommand::UpdatePolicy {
                group: name.clone(),
                policy: PolicyPatch {
                    auto_failover: Some(true),
                    ..Default::default()
                },
            });
        }
        for node in NODES {
            let generation = self.generations.get(node).copied().unwrap_or(0) + 1000;
            self.generations.insert(node.into(), generation);
            let session = self.next_session;
            self.next_session += 1;
            let instance = Instance {
                node: node.into(),
                id: instance_id(node, generation),
            };
            self.sessions.insert(
                session,
                OpenSession {
                    instance: instance.clone(),
                    honest: true,
                    next_seq: 1,
                    received: HashMap::new(),
                    roles: BTreeMap::new(),
                },
            );
            self.input(Input::SessionOpened {
                session,
                hello: Hello {
                    peer_address: None,
                    node: node.into(),
                    instance: instance.id,
                    node_uuid: "00000000-0000-4000-8000-000000000000".into(),
                    previous_instance: None,
                    agent_version: "model".into(),
                    address: format!("127.0.0.1:{session}"),
                    roles: vec![],
                },
            });
        }
        // Honest agents: heartbeat every 100 ms, answers arrive at once.
        // The longest wait is a lease of the longest timeout plus a hook
        // retry backoff (capped at failback_delay).
        for _ in 0..1200 {
            let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
            for s in sessions {
                self.heartbeat(s);
            }
            while !self.in_flight.is_empty() {
                let (session, input) = self.in_flight.remove(0);
                if let Input::HookResult { report, .. } = input
                    && self.sessions.contains_key(&session)
                {
                    self.send_hook_result(session, report);
                }
            }
            let all_active = self.store.keys().all(|name| {
                self.engine
                    .group_view(name, self.now)
                    .is_some_and(|v| v.phase == Phase::Active)
            });
            if all_active {
                return;
            }
            self.advance(Duration::from_millis(100));
        }
        let views: Vec<String> = self
            .store
            .keys()
            .map(|n| format!("{:?}", self.engine.group_view(n, self.now)))
            .collect();
        panic!(
            "groups still dark 120 s after every member came back healthy: {views:#?}\n{}",
            self.trace_tail()
        );
    }
}

fn clone_hook(input: &Input) -> Input {
    match input {
        Input::HookResult { session, report } => Input::HookResult {
            session: *session,
            report: report.clone(),
        },
        _ => unreachable!("only hook results are in flight"),
    }
}

fn input_summary(input: &Input) -> String {
    match input {
        Input::SessionOpened { session, hello } => format!(
            "open s{session} {}#{} claims {:?}",
            hello.node, &hello.instance, hello.roles
        ),
        Input::Heartbeat {
            session,
            seq,
            roles,
            ..
        } => {
            format!("heartbeat s{session} seq {seq} roles {roles:?}")
        }
        Input::HookResult { session, report } => format!(
            "hook s{session} {} e{} {:?} {:?}",
            report.group, report.epoch, report.role, report.outcome
        ),
        Input::Goodbye { session, .. } => format!("goodbye s{session}"),
        Input::SessionClosed { session } => format!("closed s{session}"),
        Input::IdentityRefused { node, .. } => format!("identity refused {node}"),
        Input::Admin { command, .. } => format!("admin {command:?}"),
        Input::Defaults { policy } => {
            format!("defaults: failover timeout {:?}", policy.failover_timeout)
        }
    }
}

fn trace_tail(trace: &[String]) -> String {
    let start = trace.len().saturating_sub(150);
    trace[start..].join("\n")
}

fn run_case(seed: u64) {
    let mut world = World::new(seed);
    for _ in 0..STEPS {
        world.step();
    }
    world.heal_and_check_liveness();
}

#[test]
fn no_interleaving_of_sessions_makes_two_primaries_or_a_dark_group() {
    if let Some(seed) = std::env::var("FAILOVER_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run_case(seed);
    }
    let cases: u64 = std::env::var("FAILOVER_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    for seed in 0..cases {
        let result = std::panic::catch_unwind(|| run_case(seed));
        if let Err(e) = result {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("case {seed} failed (replay with FAILOVER_MODEL_SEED={seed}):\n{message}");
        }
    }
}
