//! The lease arithmetic under clock-rate drift, simulated: the real decision
//! engine of the coordinator and the real role table of the agent, driven by
//! a simulated clock in 100 µs steps, with random network delays.
//!
//! Node A is primary; at 3 s it is cut off from the coordinator (it keeps
//! running). A's clock runs at rate `r` relative to the coordinator's. The
//! old primary must stop acting before B starts, for every `r` within the
//! drift bound `1 / (1 + rho)`; far beyond it, the suite must see overlap
//! (so it can see one).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use agent::roles::{self, Roles};
use coordinator::engine::{
    AdminCommand, ClaimedRole, Effects, Engine, EngineConfig, Hello, Input, Now, Recovered, ToAgent,
};
use coordinator::policy::{Policy, PolicyPatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

const STEP_US: u64 = 100;
const RHO: f64 = 0.01;
const TTL: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_millis(100);
const CUT_AT_US: u64 = 3_000_000;
const END_US: u64 = 8_000_000;
const MAX_DELAY_US: u64 = 20_000;

#[derive(Debug)]
enum Delivery {
    ToCoordinator(Input),
    ToAgent(usize, ToAgent),
}

/// Messages in flight, released in order of arrival time.
#[derive(Default)]
struct Network {
    arrivals: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, Delivery>,
    sent: u64,
}

impl Network {
    fn send(&mut self, at_us: u64, delivery: Delivery) {
        self.sent += 1;
        self.arrivals.push(Reverse((at_us, self.sent)));
        self.in_flight.insert(self.sent, delivery);
    }

    fn arrived(&mut self, t_us: u64) -> Option<Delivery> {
        let &Reverse((at, id)) = self.arrivals.peek()?;
        if at > t_us {
            return None;
        }
        self.arrivals.pop();
        self.in_flight.remove(&id)
    }
}

/// One simulated agent.
struct SimAgent {
    node: &'static str,
    session: u64,
    /// Its clock's rate relative to the coordinator's.
    rate: f64,
    roles: Roles,
    next_seq: u64,
    /// Heartbeat `seq` -> when it was sent, on the agent's clock.
    sent: BTreeMap<u64, Duration>,
    next_heartbeat: Duration,
    acting_since: Option<u64>,
    stopped_at: Option<u64>,
}

impl SimAgent {
    fn clock(&self, t_us: u64) -> Duration {
        // An arbitrary offset: agents' clocks do not agree on the origin.
        Duration::from_secs(1000) + Duration::from_micros(t_us).mul_f64(self.rate)
    }
}

/// Real times (µs) at which A stopped acting and B started, if they did.
fn simulate(seed: u64, rate_a: f64) -> (Option<u64>, Option<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = Instant::now();
    let now = |t_us: u64| Now {
        mono: base + Duration::from_micros(t_us),
        wall_ms: t_us / 1000,
    };
    let mut engine = Engine::new(
        EngineConfig {
            coordinator_id: "sim".into(),
            clock_drift: RHO,
            default_heartbeat_interval: HEARTBEAT,
            default_policy: Policy::default(),
            takeover_wait: Duration::ZERO,
        },
        Recovered::default(),
        now(0),
    );
    let mut agents = [("a", rate_a), ("b", 1.0)].map(|(node, rate)| SimAgent {
        node,
        session: if node == "a" { 1 } else { 2 },
        rate,
        roles: Roles::default(),
        next_seq: 1,
        sent: BTreeMap::new(),
        next_heartbeat: Duration::ZERO,
        acting_since: None,
        stopped_at: None,
    });
    for a in &agents {
        let mut out = Effects::default();
        let hello = Hello {
            peer_address: None,
            node: a.node.into(),
            instance: format!("{:032x}", a.session),
            node_uuid: String::new(),
            previous_instance: None,
            agent_version: "sim".into(),
            address: String::new(),
            roles: vec![],
        };
        engine.handle(
            Input::SessionOpened {
                session: a.session,
                hello,
            },
            now(0),
            &mut out,
        );
    }
    let mut network = Network::default();
    let cut = |t: u64, agent: usize| agent == 0 && t >= CUT_AT_US;
    let mut created = false;

    let mut t = 0;
    while t < END_US {
        let mut out = Effects::default();
        // The group is created once both have heartbeated.
        if !created && t >= 300_000 {
            created = true;
            let command = AdminCommand::CreateGroup {
                name: "g".into(),
                members: vec!["a".into(), "b".into()],
                policy: PolicyPatch {
                    heartbeat_interval: Some(HEARTBEAT),
                    failover_timeout: Some(TTL),
                    ..Default::default()
                },
            };
            engine.handle(
                Input::Admin {
                    reply: 1,
                    actor: "sim".into(),
                    command,
                },
                now(t),
                &mut out,
            );
        }
        while let Some(delivery) = network.arrived(t) {
            match delivery {
                Delivery::ToCoordinator(input) => engine.handle(input, now(t), &mut out),
                Delivery::ToAgent(i, message) => {
                    let a = &mut agents[i];
                    let clock = a.clock(t);
                    match message {
                        ToAgent::Ack { seq, grants } => {
                            if let Some(&sent) = a.sent.get(&seq) {
                                for g in grants {
                                    let until = sent + g.ttl - roles::fence_margin(g.ttl);
                                    a.roles.grant(&g.group, g.epoch, until, clock);
                                }
                            }
                        }
                        ToAgent::Assignment(x) => {
                            let _ = a.roles.assign(roles::Assignment {
                                group: x.group,
                                epoch: x.epoch,
                                role: match x.role {
                                    coordinator::model::Role::Primary => roles::Role::Primary,
                                    _ => roles::Role::Secondary,
                                },
                                primary: x.primary,
                                standby_mode: roles::StandbyMode::Hot,
                                fencing: roles::Fencing::Strict,
                                shutdown_grace: x.shutdown_grace,
                                primary_peer: x.primary_peer,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        engine.tick(now(t), &mut out);
        for (session, message) in out.sends {
            let i = if session == 1 { 0 } else { 1 };
            if !cut(t, i) {
                let at = t + rng.random_range(0..=MAX_DELAY_US);
                network.send(at, Delivery::ToAgent(i, message));
            }
        }
        for (i, a) in agents.iter_mut().enumerate() {
            let clock = a.clock(t);
            a.roles.fence_expired(clock);
            let acting = a.roles.may_act("g", clock);
            match (acting, a.acting_since) {
                (true, None) => a.acting_since = Some(t),
                (false, Some(_)) if a.stopped_at.is_none() => a.stopped_at = Some(t),
                _ => {}
            }
            if clock >= a.next_heartbeat {
                a.next_heartbeat = clock + HEARTBEAT;
                let seq = a.next_seq;
                a.next_seq += 1;
                a.sent.insert(seq, clock);
                if !cut(t, i) {
                    let at = t + rng.random_range(0..=MAX_DELAY_US);
                    let roles = a
                        .roles
                        .iter()
                        .map(|(group, g)| ClaimedRole {
                            group: group.clone(),
                            role: match g.role {
                                roles::Role::Primary => coordinator::model::Role::Primary,
                                roles::Role::Secondary => coordinator::model::Role::Secondary,
                                roles::Role::Fenced => coordinator::model::Role::Fenced,
                            },
                            epoch: g.epoch,
                        })
                        .collect();
                    let input = Input::Heartbeat {
                        syncs: Vec::new(),
                        session: a.session,
                        seq,
                        received: now(at).mono,
                        checks: vec![],
                        roles,
                    };
                    network.send(at, Delivery::ToCoordinator(input));
                }
            }
        }
        t += STEP_US;
    }
    (agents[0].stopped_at, agents[1].acting_since)
}

#[test]
fn within_the_drift_bound_the_old_primary_always_stops_first() {
    for rate in [1.0 / (1.0 + RHO), 1.0, 1.0 + RHO] {
        for seed in 0..40 {
            let (a_stopped, b_started) = simulate(seed, rate);
            let a_stopped = a_stopped.expect("A stops acting once cut off");
            let b_started = b_started.expect("B takes over");
            assert!(
                a_stopped < b_started,
                "rate {rate}, seed {seed}: A stopped at {a_stopped} µs, B started at {b_started} µs"
            );
        }
    }
}

#[test]
fn far_beyond_the_margins_the_primaries_would_overlap() {
    // A's clock 25% slow: far more than rho (1%) plus the fence margin
    // (10%) absorb. The simulation must see A still acting when B starts,
    // which shows the test above could fail.
    let overlapping = (0..40)
        .filter(|&seed| {
            let (a_stopped, b_started) = simulate(seed, 0.75);
            a_stopped.expect("A stops") > b_started.expect("B starts")
        })
        .count();
    assert!(overlapping > 0, "no overlap even with a 25% slow clock");
}
