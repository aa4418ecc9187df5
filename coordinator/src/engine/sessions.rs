//! Agent sessions as the engine sees them: hello, heartbeats (and the lease
//! grants they earn), hook results, goodbye and disconnection.
//!
//! **Architecture invariant (lease arithmetic):** a grant acknowledging
//! heartbeat `seq` lets the agent act until `sent(seq) + ttl` on its own
//! clock; the coordinator records `received(seq) + ttl * (1 + rho)`. Since a
//! heartbeat is received after it is sent, and the agent's clock runs at
//! most `1 + rho` times slower, the agent's lease always ends first.

use super::*;

impl Engine {
    pub(super) fn on_session_opened(
        &mut self,
        session: SessionId,
        hello: Hello,
        now: Now,
        out: &mut Effects,
    ) {
        let node_id = hello.node.clone();
        if self.refuse_duplicate(session, &hello, now, out) {
            return;
        }
        let interval = self.heartbeat_interval_for(&node_id);
        let startup_deadline = now.mono + self.startup_timeout_for(&node_id);
        self.session_timers.insert((startup_deadline, session));
        let node = self.nodes.entry(node_id.clone()).or_insert_with(Node::new);
        // A node has one session. The same instance reconnecting (its old
        // stream not yet noticed dead) replaces it at once; another instance
        // gets here only if the old one was silent too long (see
        // `refuse_duplicate`) and inherits none of its leases.
        if let Some(old) = node.session.take() {
            if old.instance == hello.instance {
                tracing::info!(node = %node_id, old = old.id, new = session, "the agent reconnected: replacing its previous session");
            } else {
                tracing::warn!(node = %node_id, old = old.id, new = session, "a new agent instance replaces a silent one; the old instance's leases are waited out");
            }
            self.sessions.remove(&old.id);
            self.session_timers.remove(&(old.timer, old.id));
            out.closes.push(old.id);
        }
        if node
            .duplicate
            .as_ref()
            .is_some_and(|d| d.instance == hello.instance)
        {
            node.duplicate = None;
        }
        let same_installation = node.node_uuid.as_deref() == Some(hello.node_uuid.as_str());
        let handed_over = match node.goodbye.take() {
            Some((left, old)) if same_installation && old != hello.instance => Some((left, old)),
            _ => None,
        };
        if let Some(before) = node.node_uuid.as_deref()
            && before != hello.node_uuid
        {
            tracing::warn!(node = %node_id, before, now = %hello.node_uuid, "the node's agent reports another installation UUID: reinstalled, or another machine uses this node id");
        }
        node.session = Some(Session {
            id: session,
            instance: hello.instance.clone(),
            opened: now.mono,
            timer: startup_deadline,
            leaving: false,
            last_heartbeat: None,
            sent: HashMap::new(),
            heartbeat_interval: interval,
            startup_deadline: Some(startup_deadline),
        });
        // Back: a goodbye no longer holds its groups.
        node.goodbye = None;
        node.last_contact_ms = now.wall_ms;
        node.address = hello.address;
        node.agent_version = hello.agent_version;
        node.node_uuid = Some(hello.node_uuid);
        self.sessions.insert(session, node_id.clone());
        tracing::info!(node = %node_id, session, instance = short(&hello.instance), claims = hello.roles.len(), "agent session opened");
        out.sends.push((
            session,
            ToAgent::Welcome {
                coordinator_id: self.config.coordinator_id.clone(),
                heartbeat_interval: interval,
            },
        ));

        if let Some((left, old)) = handed_over {
            self.hand_over(&node_id, &old, &hello.instance, left, now, out);
        }
        for claim in hello.roles {
            self.check_claim(&node_id, session, &hello.instance, claim, now, out);
        }
        let groups: Vec<String> = self.node_groups(&node_id);
        for name in groups {
            self.sync_group(&name, now, out);
        }
    }

    /// A primary's agent stopped cleanly (Goodbye) and a new agent process of
    /// the same installation came back within the shutdown grace: it takes
    /// over the role at the same epoch. The old process renews nothing any
    /// more, and the service it left running is the one the new agent now
    /// watches over.
    fn hand_over(
        &mut self,
        node: &str,
        old: &str,
        new: &str,
        left: Instant,
        now: Now,
        out: &mut Effects,
    ) {
        for name in self.node_groups(node) {
            let Some(g) = self.groups.get_mut(&name) else {
                continue;
            };
            let holds = g.record.primary.as_deref() == Some(node)
                && g.record.primary_instance.as_deref() == Some(old);
            if holds && now.mono < left + g.record.policy.shutdown_grace {
                tracing::info!(group = %name, %node, epoch = g.record.epoch, "the agent came back within the shutdown grace: it keeps the role");
                g.record.primary_instance = Some(new.to_owned());
                out.writes.push(Write::PutGroup(g.record.clone()));
            }
        }
    }

    /// Refuses a Hello from a second agent instance while the node's
    /// current session is alive (heard from within its silence limit), and
    /// reports a `duplicate_node` once the connected instance has shown it
    /// is alive after the first refusal (so a restart racing the old
    /// stream's close raises no alarm). Returns whether it refused.
    fn refuse_duplicate(
        &mut self,
        session: SessionId,
        hello: &Hello,
        now: Now,
        out: &mut Effects,
    ) -> bool {
        let limit = self.silence_limit(&hello.node);
        let Some(node) = self.nodes.get_mut(&hello.node) else {
            return false;
        };
        let (Some(current), Some(heard)) = (node.session.as_ref(), node.last_heard()) else {
            return false;
        };
        if current.instance == hello.instance || now.mono.saturating_duration_since(heard) >= limit
        {
            return false;
        }
        let same_install = node.node_uuid.as_deref() == Some(hello.node_uuid.as_str());
        let episode_over = node
            .duplicate
            .as_ref()
            .is_none_or(|d| now.mono.saturating_duration_since(d.last_refused) >= DUPLICATE_MEMORY);
        if episode_over {
            node.duplicate = Some(Duplicate {
                instance: hello.instance.clone(),
                address: hello.address.clone(),
                node_uuid: hello.node_uuid.clone(),
                first_refused: now.mono,
                last_refused: now.mono,
                reported: false,
            });
        }
        let d = node.duplicate.as_mut().expect("set above");
        d.instance = hello.instance.clone();
        d.address = hello.address.clone();
        d.node_uuid = hello.node_uuid.clone();
        d.last_refused = now.mono;
        let alive_since_first = current
            .last_heartbeat
            .is_some_and(|(_, at)| at > d.first_refused);
        let report = !d.reported && alive_since_first;
        if report {
            d.reported = true;
        }
        let message = format!(
            "node {} is already connected from {} (agent instance {}); this agent (instance {}, {}) \
             is a duplicate: give every agent its own node_id",
            hello.node,
            node.address,
            short(&current.instance),
            short(&hello.instance),
            if same_install {
                "same installation: a second process or a cloned machine"
            } else {
                "another installation"
            },
        );
        tracing::warn!(node = %hello.node, from = %hello.address, "refused a duplicate agent session: {message}");
        out.refusals.push((
            session,
            DuplicateRefusal {
                message: message.clone(),
                silence_limit: limit,
            },
        ));
        if report {
            for name in self.node_groups(&hello.node) {
                let epoch = self.groups.get(&name).map_or(0, |g| g.record.epoch);
                self.record_event(
                    NewEvent {
                        group: &name,
                        kind: EventKind::DuplicateNode,
                        epoch,
                        old_primary: None,
                        new_primary: None,
                        reason: format!("{message} (duplicate from {})", hello.address),
                        actor: COORDINATOR,
                    },
                    now,
                    out,
                );
            }
        }
        true
    }

    /// Compares a role the agent says it holds with the stored state.
    fn check_claim(
        &mut self,
        node: &str,
        session: SessionId,
        instance: &str,
        claim: ClaimedRole,
        now: Now,
        out: &mut Effects,
    ) {
        let floor = self.epoch_floors.get(&claim.group).copied().unwrap_or(0);
        let Some(g) = self
            .groups
            .get_mut(&claim.group)
            .filter(|g| g.record.members.iter().any(|m| m == node))
        else {
            out.sends.push((
                session,
                ToAgent::Release {
                    group: claim.group.clone(),
                    epoch: claim.epoch.max(floor),
                    reason: format!("{node} is not a member of group {}", claim.group),
                },
            ));
            return;
        };
        let stored = g.record.epoch;
        // A record written before instances existed: the primary's session
        // that still claims the role at the stored epoch holds it.
        if g.record.primary.as_deref() == Some(node)
            && g.record.primary_instance.is_none()
            && claim.epoch == stored
            && matches!(claim.role, Role::Primary | Role::Fenced)
        {
            g.record.primary_instance = Some(instance.to_owned());
            out.writes.push(Write::PutGroup(g.record.clone()));
        }
        if claim.epoch <= stored {
            return;
        }
        // Only possible if the store lost acknowledged state (restored from
        // an old backup): move the epoch past the claim so every member's
        // next command is newer than anything it has seen. A claim further
        // ahead than any honest agent could be is refused and recorded.
        let ceiling = stored.max(floor).saturating_add(MAX_EPOCH_CLAIM_AHEAD);
        let raised = claim
            .epoch
            .checked_add(1)
            .filter(|_| claim.epoch <= ceiling);
        let Some(raised) = raised else {
            let repeated = self
                .nodes
                .get(node)
                .and_then(|n| n.refused_claims.get(&claim.group))
                == Some(&claim.epoch);
            if let Some(n) = self.nodes.get_mut(node) {
                n.refused_claims.insert(claim.group.clone(), claim.epoch);
            }
            if !repeated {
                let primary = g.record.primary.clone();
                self.record_event(
                    NewEvent {
                        group: &claim.group,
                        kind: EventKind::EpochClaimRefused,
                        epoch: stored,
                        old_primary: primary.as_deref(),
                        new_primary: primary.as_deref(),
                        reason: format!(
                            "{node} claimed epoch {} in group {}, more than {MAX_EPOCH_CLAIM_AHEAD} \
                             above the stored {stored}: refused (a corrupt or hostile agent)",
                            claim.epoch, claim.group
                        ),
                        actor: COORDINATOR,
                    },
                    now,
                    out,
                );
            }
            return;
        };
        g.record.epoch = raised;
        out.writes.push(Write::PutGroup(g.record.clone()));
        let primary = g.record.primary.clone();
        self.record_event(
            NewEvent {
                group: &claim.group,
                kind: EventKind::EpochRaised,
                epoch: raised,
                old_primary: primary.as_deref(),
                new_primary: primary.as_deref(),
                reason: format!(
                    "{node} reported epoch {} above the stored {stored}",
                    claim.epoch
                ),
                actor: COORDINATOR,
            },
            now,
            out,
        );
    }

    pub(super) fn on_heartbeat(
        &mut self,
        session: SessionId,
        beat: Beat,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(node_id) = self.sessions.get(&session).cloned() else {
            return; // a session that was replaced, refused or closed
        };
        let Beat {
            seq,
            received,
            checks,
            roles,
        } = beat;
        let drift = self.config.clock_drift;
        let limit = self.silence_limit(&node_id);
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let Some(s) = node.session.as_mut() else {
            return;
        };
        // A duplicated or replayed heartbeat earns nothing: grants answer
        // each heartbeat once, in order. Nor does one after a goodbye.
        if s.leaving || s.last_heartbeat.is_some_and(|(last, _)| seq <= last) {
            tracing::debug!(node = %node_id, session, seq, "stale heartbeat ignored");
            return;
        }
        let first = s.last_heartbeat.is_none();
        s.last_heartbeat = Some((seq, received));
        if s.startup_deadline.take().is_some() {
            // From now on the timer watches for silence instead.
            self.session_timers.remove(&(s.timer, session));
            s.timer = received + limit;
            self.session_timers.insert((s.timer, session));
        }
        let instance = s.instance.clone();
        node.last_contact_ms = now.wall_ms;
        if node.checks != checks {
            node.checks = checks;
        }
        // Groups whose health verdict for this node flipped (or is new).
        let mut flipped = Vec::new();
        for name in &node.groups {
            let healthy = node.passes_checks(name);
            if node.health.get(name).is_none_or(|&(h, _)| h != healthy) {
                flipped.push((name.clone(), healthy));
            }
        }
        for (name, healthy) in &flipped {
            node.health.insert(name.clone(), (*healthy, received));
        }

        // Grant a lease in every group where this instance holds the role,
        // and note groups without a primary: this node may now qualify for
        // them (its first heartbeat, or the first after a silence).
        let mut grants = Vec::new();
        let mut vacant = Vec::new();
        for name in &node.groups {
            let Some(g) = self.groups.get_mut(name) else {
                continue;
            };
            match g.record.primary.as_deref() {
                // Another instance of this node holds the lease: only it may
                // renew it; this one waits for it to run out like anyone.
                Some(p)
                    if p == node_id && g.record.primary_instance.as_deref() != Some(&instance) => {}
                Some(p) if p == node_id => {
                    let epoch = g.record.epoch;
                    let ttl = g.record.policy.failover_timeout;
                    let claimed = roles.iter().find(|r| r.group == *name && r.epoch == epoch);
                    // It says it is no longer primary at this epoch: it
                    // needs no lease, and until its hook result confirms
                    // the step-down its last lease is waited out.
                    if claimed.is_some_and(|r| r.role == Role::Secondary) {
                        continue;
                    }
                    let fenced = claimed.is_some_and(|r| r.role == Role::Fenced);
                    if !fenced {
                        g.primary_fenced_since = None;
                    } else if g.primary_fenced_since.is_none() {
                        g.primary_fenced_since = Some(received);
                    }
                    // A primary that stays fenced for a whole lease despite
                    // our grants is not reachable in time: stop granting, so
                    // its lease runs out here too and it is replaced.
                    let unreachable = g
                        .primary_fenced_since
                        .is_some_and(|since| received.saturating_duration_since(since) >= ttl);
                    if unreachable {
                        continue;
                    }
                    grants.push(LeaseGrant {
                        group: name.clone(),
                        epoch,
                        ttl,
                    });
                    let until = received + lease_wait(drift, &g.record.policy);
                    if g.lease_until.is_none_or(|current| current < until) {
                        g.lease_until = Some(until);
                        update_timer(&mut self.timers, name, g);
                    }
                }
                Some(_) => {}
                None => vacant.push(name.clone()),
            }
        }
        out.sends.push((session, ToAgent::Ack { seq, grants }));

        // A node that just became reachable, or whose health changed, may
        // change who qualifies.
        let mut groups: Vec<String> = if first {
            self.node_groups(&node_id)
        } else {
            vacant
        };
        groups.extend(flipped.into_iter().map(|(name, _)| name));
        groups.sort();
        groups.dedup();
        for name in groups {
            self.reconcile(&name, now, out);
        }
    }

    /// A session's timer is due: close it if it never heartbeated within
    /// the startup timeout, or has been silent for longer than any lease
    /// it could hold; otherwise look again when it could be.
    pub(super) fn check_session_timer(&mut self, session: SessionId, now: Now, out: &mut Effects) {
        let Some(node_id) = self.sessions.get(&session).cloned() else {
            return;
        };
        let limit = self.silence_limit(&node_id);
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let Some(s) = node.session.as_mut().filter(|s| s.id == session) else {
            return;
        };
        let why = match (s.startup_deadline, s.last_heartbeat) {
            (Some(_), _) => "no heartbeat within the startup timeout",
            (None, Some((_, at))) if now.mono.saturating_duration_since(at) < limit => {
                s.timer = at + limit;
                self.session_timers.insert((s.timer, session));
                return;
            }
            (None, _) => "silent for longer than its longest lease",
        };
        tracing::warn!(node = %node_id, session, "{why}: closing the session");
        out.closes.push(session);
        self.on_session_closed(session, now, out);
    }

    pub(super) fn on_hook_result(
        &mut self,
        session: SessionId,
        report: HookReport,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(node_id) = self.sessions.get(&session).cloned() else {
            return;
        };
        let Some(instance) = self
            .nodes
            .get(&node_id)
            .and_then(Node::instance)
            .map(str::to_owned)
        else {
            return;
        };
        let level_ok = report.outcome.took_effect();
        if level_ok {
            tracing::info!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, "hook finished");
        } else {
            tracing::warn!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, exit_code = ?report.exit_code, detail = %report.detail, "hook did not succeed");
        }
        let Some(g) = self.groups.get(&report.group) else {
            // A deleted group's released primary confirms its step-down: a
            // group re-created under the name need not wait for its lease.
            let confirms = self.deleted_leases.get(&report.group).is_some_and(|l| {
                l.holder.as_ref() == Some(&(node_id.clone(), instance.clone()))
                    && report.epoch >= l.epoch_floor
                    && report.role == Role::Secondary
                    && level_ok
            });
            if confirms {
                self.deleted_leases.remove(&report.group);
            }
            return;
        };
        let current = report.epoch == g.record.epoch;
        // Only the instance that holds the role (or held it, while it steps
        // down) speaks for it: another process claiming the same node id
        // cannot confirm or give up a lease it was never granted.
        let holds = g.record.primary.as_deref() == Some(node_id.as_str())
            && g.record.primary_instance.as_deref() == Some(instance.as_str());
        let stepping_down = g
            .stepping_down
            .as_ref()
            .is_some_and(|(n, i)| *n == node_id && i.as_deref() == Some(instance.as_str()));
        let name = report.group.clone();
        if holds && current && report.role == Role::Primary && level_ok {
            if let Some(g) = self.groups.get_mut(&name) {
                g.hook_failures.remove(&node_id);
            }
        } else if stepping_down && current && report.role == Role::Secondary && level_ok {
            self.confirm_step_down(&name, &node_id, now, out);
        } else if holds && current && report.role == Role::Secondary && level_ok {
            // Its agent is stopping and stepped down by itself.
            self.primary_stepped_down(&name, &node_id, now, out);
        } else if holds
            && current
            && report.role == Role::Primary
            && matches!(report.outcome, HookOutcome::Failed | HookOutcome::TimedOut)
        {
            self.promote_hook_failed(&name, &node_id, &report, now, out);
        }
    }

    /// The primary's promote hook failed: it is not serving.
    fn promote_hook_failed(
        &mut self,
        name: &str,
        node_id: &str,
        report: &HookReport,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        g.promote_failed = true;
        let failures = g
            .hook_failures
            .entry(node_id.to_owned())
            .or_insert(HookFailures {
                count: 0,
                last: now.mono,
            });
        failures.count = failures.count.saturating_add(1);
        failures.last = now.mono;
        let epoch = g.record.epoch;
        self.mark_failed(name, node_id, now);
        let detail = if report.detail.is_empty() {
            format!("{:?}", report.outcome)
        } else {
            report.detail.clone()
        };
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::PromoteFailed,
                epoch,
                old_primary: Some(node_id),
                new_primary: None,
                reason: format!("{node_id}'s promote hook did not succeed: {detail}"),
                actor: COORDINATOR,
            },
            now,
            out,
        );
        self.reconcile(name, now, out);
    }

    pub(super) fn on_goodbye(
        &mut self,
        session: SessionId,
        reason: &str,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(node_id) = self.sessions.get(&session).cloned() else {
            return;
        };
        tracing::info!(node = %node_id, reason, "agent said goodbye");
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let Some(s) = node.session.as_mut() else {
            return;
        };
        if s.leaving {
            return;
        }
        s.leaving = true;
        let instance = s.instance.clone();
        node.goodbye = Some((now.mono, instance.clone()));
        let led: Vec<String> = node
            .groups
            .iter()
            .filter(|g| {
                self.groups.get(*g).is_some_and(|g| {
                    g.record.primary.as_deref() == Some(node_id.as_str())
                        && g.record.primary_instance.as_deref() == Some(instance.as_str())
                })
            })
            .cloned()
            .collect();
        for name in led {
            let Some(g) = self.groups.get(&name) else {
                continue;
            };
            let grace = humantime::format_duration(g.record.policy.shutdown_grace);
            let epoch = g.record.epoch;
            self.record_event(
                NewEvent {
                    group: &name,
                    kind: EventKind::PrimaryLeft,
                    epoch,
                    old_primary: Some(&node_id),
                    new_primary: None,
                    reason: format!(
                        "{node_id}'s agent is stopping ({reason}): waiting up to the shutdown grace of {grace} for it"
                    ),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
            self.reconcile(&name, now, out);
        }
    }

    pub(super) fn on_session_closed(&mut self, session: SessionId, now: Now, out: &mut Effects) {
        let Some(node_id) = self.sessions.remove(&session) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        if let Some(s) = node.session.take() {
            self.session_timers.remove(&(s.timer, session));
        }
        node.health.clear();
        tracing::info!(node = %node_id, session, "agent session closed");
        let groups: Vec<String> = node.groups.iter().cloned().collect();
        if groups.is_empty() {
            self.nodes.remove(&node_id);
        }
        for name in groups {
            self.refresh_phase(&name, now, out);
        }
    }

    /// The groups `node` is a member of.
    pub(super) fn node_groups(&self, node: &str) -> Vec<String> {
        self.nodes
            .get(node)
            .map(|n| n.groups.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How long a session of `node` may stay silent before it counts as
    /// gone: twice the longest lease among its groups. Any lease it held
    /// has run out by then; the second lease's worth keeps a coordinator
    /// that was itself stalled for a moment from closing every session.
    pub(super) fn silence_limit(&self, node: &str) -> Duration {
        let longest = self
            .nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.record.policy.failover_timeout)
            .max()
            .unwrap_or(self.config.default_policy.failover_timeout);
        longest.saturating_mul(2)
    }

    /// The smallest startup timeout among the node's groups.
    fn startup_timeout_for(&self, node: &str) -> Duration {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.record.policy.startup_timeout)
            .min()
            .unwrap_or(self.config.default_policy.startup_timeout)
    }

    /// The smallest heartbeat interval among the node's groups.
    pub(super) fn heartbeat_interval_for(&self, node: &str) -> Duration {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .filter_map(|g| self.groups.get(g))
            .map(|g| g.record.policy.heartbeat_interval)
            .min()
            .unwrap_or(self.config.default_heartbeat_interval)
    }

    /// Tells a connected node its heartbeat interval if it changed.
    pub(super) fn sync_settings(&mut self, node: &str, out: &mut Effects) {
        let interval = self.heartbeat_interval_for(node);
        if let Some(s) = self.nodes.get_mut(node).and_then(|n| n.session.as_mut())
            && s.heartbeat_interval != interval
        {
            s.heartbeat_interval = interval;
            out.sends.push((
                s.id,
                ToAgent::Settings {
                    heartbeat_interval: interval,
                },
            ));
        }
    }
}

/// The first 8 characters of an instance id, for logs and views.
pub(super) fn short(instance: &str) -> &str {
    instance.get(..8).unwrap_or(instance)
}
