//! Agent sessions as the engine sees them: hello (and who may say it),
//! heartbeats (and the lease grants they earn), hook results, goodbye,
//! silence and disconnection. A session speaks only for its own agent
//! instance (invariant 6); the lease arithmetic is in `lease.rs`.

use super::decide;
use super::group::Group;
use super::node::{Duplicate, Node, Session};
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
        if self.refuse_duplicate(session, &hello, now, out)
            || self.refuse_unassigned(session, &hello, now, out)
        {
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
        // A clean restart hands the role over only to the process that
        // proves it follows the one that left: it knows that one's secret
        // instance id, kept in the installation's state directory.
        // Anyone else leaves the goodbye in place: the grace runs on for
        // the process that left, and its real successor can still come.
        let same_installation = node.node_uuid.as_deref() == Some(hello.node_uuid.as_str());
        let handed_over = match &node.goodbye {
            Some((_, old))
                if same_installation
                    && hello.previous_instance.as_deref() == Some(old.as_str()) =>
            {
                node.goodbye.take()
            }
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
        node.last_contact_ms = now.wall_ms;
        node.address = hello.address;
        node.peer_address = hello.peer_address;
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
        for name in self.node_groups(&node_id) {
            self.with_group(&name, now, out, decide::sync_group);
        }
    }

    /// A primary's agent stopped cleanly (Goodbye) and the next agent process
    /// of the same installation — it names the old one's secret instance id
    /// — came back within the shutdown grace: it takes over the role at the
    /// same epoch. The old process renews nothing any
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
            self.with_group(&name, now, out, |g, ctx| {
                if g.held_by(node, old) && now.mono < left + g.policy().shutdown_grace {
                    tracing::info!(group = %g.name(), %node, epoch = g.epoch(), "the agent came back within the shutdown grace: it keeps the role");
                    g.bind_instance(new);
                    let away = humantime::format_duration(Duration::from_millis(
                        u64::try_from(now.mono.saturating_duration_since(left).as_millis())
                            .unwrap_or(u64::MAX),
                    ));
                    let group = g.name().to_owned();
                    ctx.event(NewEvent {
                        group: &group,
                        kind: EventKind::PrimaryReturned,
                        epoch: g.epoch(),
                        old_primary: Some(node),
                        new_primary: Some(node),
                        reason: format!(
                            "{node}'s agent came back after {away}, within the shutdown grace: it keeps the role"
                        ),
                        actor: COORDINATOR,
                    });
                }
            });
        }
    }

    /// Refuses a Hello from a node that is in no group while
    /// `MAX_UNASSIGNED_SESSIONS` such sessions are open. Returns whether it
    /// refused.
    fn refuse_unassigned(
        &mut self,
        session: SessionId,
        hello: &Hello,
        now: Now,
        out: &mut Effects,
    ) -> bool {
        let in_a_group = |node: &str| self.nodes.get(node).is_some_and(|n| !n.groups.is_empty());
        if in_a_group(&hello.node) {
            return false;
        }
        let open = self
            .sessions
            .values()
            .filter(|node| !in_a_group(node))
            .count();
        if open < MAX_UNASSIGNED_SESSIONS {
            return false;
        }
        let log = self
            .unassigned_refusal_logged
            .is_none_or(|at| now.mono.saturating_duration_since(at) >= REFUSAL_MEMORY);
        if log {
            self.unassigned_refusal_logged = Some(now.mono);
            tracing::warn!(
                node = %hello.node,
                from = %hello.address,
                "{MAX_UNASSIGNED_SESSIONS} agents of nodes that are in no group are connected: refusing more until one leaves or is added to a group"
            );
        }
        out.refusals.push((
            session,
            SessionRefusal {
                message: format!(
                    "node {} is in no group and {MAX_UNASSIGNED_SESSIONS} such agents are connected: \
                     add it to a group (failoverctl group add-member) or try later",
                    hello.node
                ),
                silence_limit: None,
            },
        ));
        true
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
            node.duplicate = None;
        }
        let d = node.duplicate.get_or_insert_with(|| Duplicate {
            instance: hello.instance.clone(),
            address: hello.address.clone(),
            node_uuid: hello.node_uuid.clone(),
            first_refused: now.mono,
            last_refused: now.mono,
            last_logged: now.mono,
            reported: false,
        });
        d.instance = hello.instance.clone();
        d.address = hello.address.clone();
        d.node_uuid = hello.node_uuid.clone();
        // A duplicate retrying every second is one line a minute, not sixty.
        let log = d.first_refused == now.mono
            || now.mono.saturating_duration_since(d.last_logged) >= REFUSAL_MEMORY;
        if log {
            d.last_logged = now.mono;
        }
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
        if log || report {
            tracing::warn!(node = %hello.node, from = %hello.address, "refused a duplicate agent session: {message}");
        }
        out.refusals.push((
            session,
            SessionRefusal {
                message: message.clone(),
                silence_limit: Some(limit),
            },
        ));
        if report {
            for name in self.node_groups(&hello.node) {
                let epoch = self.groups.get(&name).map_or(0, Group::epoch);
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
        let member = self
            .groups
            .get(&claim.group)
            .is_some_and(|g| g.is_member(node));
        if !member {
            out.sends.push((
                session,
                ToAgent::Release {
                    group: claim.group.clone(),
                    epoch: claim.epoch.max(floor),
                    reason: format!("{node} is not a member of group {}", claim.group),
                },
            ));
            return;
        }
        // A store restored from a backup is caught up by each member's
        // claim once; a member that is ahead again is not honest.
        let recovering = self
            .nodes
            .get(node)
            .is_some_and(|n| !n.raised.contains(&claim.group));
        self.with_group(&claim.group, now, out, |g, ctx| {
            let stored = g.epoch();
            // A record written before instances existed: the primary's
            // session that still claims the role at the stored epoch holds it.
            if g.primary() == Some(node)
                && g.holder_instance().is_none()
                && claim.epoch == stored
                && matches!(claim.role, Role::Primary | Role::Fenced)
            {
                g.bind_instance(instance);
            }
            if claim.epoch <= stored {
                return;
            }
            // Only possible if the store lost acknowledged state (restored
            // from an old backup): move the epoch past the claim so every
            // member's next command is newer than anything it has seen. A
            // claim further ahead than any honest agent could be is refused
            // and recorded.
            let ceiling = stored.max(floor).saturating_add(MAX_EPOCH_CLAIM_AHEAD);
            let primary = g.primary().map(str::to_owned);
            let name = g.name().to_owned();
            // Each raise re-runs the primary's hook at the new epoch: at most
            // one per lease, so no member can churn it. A claim held back
            // here is looked at again on a later heartbeat.
            let lease = g.policy().failover_timeout;
            if g.last_raise.is_some_and(|at| now.mono < at + lease) {
                return;
            }
            match claim
                .epoch
                .checked_add(1)
                .filter(|_| recovering && claim.epoch <= ceiling)
            {
                Some(raised) => {
                    g.last_raise = Some(now.mono);
                    if let Some(n) = ctx.nodes.get_mut(node) {
                        n.raised.insert(name.clone());
                    }
                    g.raise_epoch(raised);
                    decide::sync_group(g, ctx);
                    ctx.event(NewEvent {
                        group: &name,
                        kind: EventKind::EpochRaised,
                        epoch: raised,
                        old_primary: primary.as_deref(),
                        new_primary: primary.as_deref(),
                        reason: format!(
                            "{node} reported epoch {} above the stored {stored}",
                            claim.epoch
                        ),
                        actor: COORDINATOR,
                    });
                }
                None => {
                    let due = ctx.nodes.get_mut(node).is_some_and(|n| {
                        let due = n.refused_claims.get(&name).is_none_or(|at| {
                            now.mono.saturating_duration_since(*at) >= REFUSAL_MEMORY
                        });
                        if due {
                            n.refused_claims.insert(name.clone(), now.mono);
                        }
                        due
                    });
                    if due {
                        ctx.event(NewEvent {
                            group: &name,
                            kind: EventKind::EpochClaimRefused,
                            epoch: stored,
                            old_primary: primary.as_deref(),
                            new_primary: primary.as_deref(),
                            reason: if recovering {
                                format!(
                                    "{node} claimed epoch {} in group {name}, more than \
                                     {MAX_EPOCH_CLAIM_AHEAD} above the stored {stored}: refused \
                                     (a corrupt or hostile agent)",
                                    claim.epoch
                                )
                            } else {
                                format!(
                                    "{node} claimed epoch {} in group {name}, above the stored \
                                     {stored}, after its claim had already raised it once: \
                                     refused (a corrupt or hostile agent)",
                                    claim.epoch
                                )
                            },
                            actor: COORDINATOR,
                        });
                    }
                }
            }
        });
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
            syncs,
        } = beat;
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
        // Groups where a member's sync state changed may choose otherwise
        // (max_sync_lag, failback waiting for a fresh copy).
        let sync_moved: Vec<String> = node
            .groups
            .iter()
            .filter(|g| {
                let state = |list: &[crate::model::SyncReport]| {
                    list.iter()
                        .filter(|r| &r.group == *g)
                        .map(|r| (r.name.clone(), r.state))
                        .collect::<Vec<_>>()
                };
                state(&node.syncs) != state(&syncs)
            })
            .cloned()
            .collect();
        node.syncs = syncs;
        node.syncs_at = Some(received);
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
            match g.primary() {
                // Another instance of this node holds the lease: only it may
                // renew it; this one waits for it to run out like anyone.
                Some(p) if p == node_id && !g.held_by(&node_id, &instance) => {}
                Some(p) if p == node_id => {
                    if let Some(grant) = earn_grant(g, &self.leases, &roles, received) {
                        grants.push(grant);
                        update_timer(&mut self.timers, g);
                    }
                }
                Some(_) => {}
                None => vacant.push(name.clone()),
            }
        }
        out.sends.push((session, ToAgent::Ack { seq, grants }));
        self.contact_heard(&node_id, now, out);

        // A claim above a group's epoch (held back by the raise limit when
        // it came with the Hello) is looked at again.
        let ahead: Vec<ClaimedRole> = roles
            .into_iter()
            .filter(|r| {
                self.groups
                    .get(&r.group)
                    .is_some_and(|g| r.epoch > g.epoch() && g.is_member(&node_id))
            })
            .collect();
        for claim in ahead {
            self.check_claim(&node_id, session, &instance, claim, now, out);
        }

        // A node that just became reachable, or whose health changed, may
        // change who qualifies.
        let mut groups: Vec<String> = if first {
            self.node_groups(&node_id)
        } else {
            vacant
        };
        groups.extend(flipped.into_iter().map(|(name, _)| name));
        groups.extend(sync_moved);
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
        // A superseded hook is routine (a newer role change came first): no
        // warning, but it confirms nothing either.
        if level_ok || report.outcome == HookOutcome::Superseded {
            tracing::info!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, "hook finished");
        } else {
            tracing::warn!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, exit_code = ?report.exit_code, detail = ?report.detail, "hook did not succeed");
        }
        if !self.groups.contains_key(&report.group) {
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
        }
        let group = report.group.clone();
        self.with_group(&group, now, out, |g, ctx| {
            let current = report.epoch == g.epoch();
            // Only the instance that holds the role (or held it, while it
            // steps down) speaks for it: another process claiming the same
            // node id cannot confirm or give up a lease it was never granted.
            let holds = g.held_by(&node_id, &instance);
            let stepping_down = g.stepping_down_by(&node_id, &instance);
            if !current {
                return;
            }
            match report.role {
                Role::Primary if holds && level_ok => {
                    g.hook_failures.remove(&node_id);
                }
                Role::Primary
                    if holds
                        && matches!(
                            report.outcome,
                            HookOutcome::Failed | HookOutcome::TimedOut
                        ) =>
                {
                    promote_hook_failed(g, ctx, &node_id, &report);
                }
                Role::Secondary if stepping_down && level_ok => {
                    decide::confirm_step_down(g, ctx, &node_id);
                }
                // Its agent is stopping and stepped down by itself.
                Role::Secondary if holds && level_ok => {
                    decide::primary_stepped_down(g, ctx, &node_id);
                }
                _ => {}
            }
        });
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
        for name in self.node_groups(&node_id) {
            self.with_group(&name, now, out, |g, ctx| {
                if !g.held_by(&node_id, &instance) {
                    return;
                }
                let grace = humantime::format_duration(g.policy().shutdown_grace);
                let group = g.name().to_owned();
                ctx.event(NewEvent {
                    group: &group,
                    kind: EventKind::PrimaryLeft,
                    epoch: g.epoch(),
                    old_primary: Some(&node_id),
                    new_primary: None,
                    reason: format!(
                        "{node_id}'s agent is stopping ({reason}): waiting up to the shutdown grace of {grace} for it"
                    ),
                    actor: COORDINATOR,
                });
                decide::reconcile(g, ctx);
            });
        }
    }

    pub(super) fn on_session_closed(&mut self, session: SessionId, now: Now, out: &mut Effects) {
        let Some(node_id) = self.sessions.remove(&session) else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let (mut stopped, mut heard) = (false, false);
        if let Some(s) = node.session.take() {
            self.session_timers.remove(&(s.timer, session));
            stopped = s.leaving;
            heard = s.last_heartbeat.is_some();
        }
        node.health.clear();
        tracing::info!(node = %node_id, session, "agent session closed");
        self.contact_lost(
            &node_id,
            if stopped {
                "its agent stopped (it said goodbye)"
            } else {
                "its session ended (the agent crashed or froze, or the network cut it off)"
            },
            heard,
            now,
            out,
        );
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return;
        };
        let groups: Vec<String> = node.groups.iter().cloned().collect();
        if groups.is_empty() {
            self.nodes.remove(&node_id);
        }
        for name in groups {
            self.with_group(&name, now, out, decide::refresh_phase);
        }
    }

    /// A session claimed `node` with a certificate that does not name it:
    /// recorded (at most once a minute per node) in the node's groups.
    pub(super) fn on_identity_refused(
        &mut self,
        node: &str,
        address: &str,
        reason: String,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.identity_refused_at
            .is_some_and(|at| now.mono.saturating_duration_since(at) < REFUSAL_MEMORY)
        {
            return;
        }
        n.identity_refused_at = Some(now.mono);
        for name in self.node_groups(node) {
            let epoch = self.groups.get(&name).map_or(0, Group::epoch);
            self.record_event(
                NewEvent {
                    group: &name,
                    kind: EventKind::IdentityRefused,
                    epoch,
                    old_primary: None,
                    new_primary: None,
                    reason: format!(
                        "a session from {address} claiming {node} was refused: {reason}"
                    ),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
        }
    }

    /// The groups `node` is a member of.
    pub(super) fn node_groups(&self, node: &str) -> Vec<String> {
        self.nodes
            .get(node)
            .map(|n| n.groups.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The policies of the groups `node` is a member of.
    fn node_policies<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .filter_map(|g| self.groups.get(g))
            .map(Group::policy)
    }

    /// How long a session of `node` may stay silent before it counts as
    /// gone: twice the longest lease among its groups. Any lease it held
    /// has run out by then; the second lease's worth keeps a coordinator
    /// that was itself stalled for a moment from closing every session.
    pub(super) fn silence_limit(&self, node: &str) -> Duration {
        self.node_policies(node)
            .map(|p| p.failover_timeout)
            .max()
            .unwrap_or(self.config.default_policy.failover_timeout)
            .saturating_mul(2)
    }

    /// The smallest startup timeout among the node's groups.
    fn startup_timeout_for(&self, node: &str) -> Duration {
        self.node_policies(node)
            .map(|p| p.startup_timeout)
            .min()
            .unwrap_or(self.config.default_policy.startup_timeout)
    }

    /// The smallest heartbeat interval among the node's groups.
    pub(super) fn heartbeat_interval_for(&self, node: &str) -> Duration {
        self.node_policies(node)
            .map(|p| p.heartbeat_interval)
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

/// The lease a heartbeat from the holder earns in `g`, if any: none when it
/// says it no longer holds the role at this epoch (its last lease is waited
/// out until its hook result confirms), or when it has reported itself
/// fenced for a whole lease despite our grants (they do not reach it in
/// time: it is left to lapse and be replaced).
fn earn_grant(
    g: &mut Group,
    leases: &Leases,
    roles: &[ClaimedRole],
    received: Instant,
) -> Option<LeaseGrant> {
    let epoch = g.epoch();
    let ttl = g.policy().failover_timeout;
    let claimed = roles
        .iter()
        .find(|r| r.group == g.name() && r.epoch == epoch);
    if claimed.is_some_and(|r| r.role == Role::Secondary) {
        return None;
    }
    g.note_fenced(claimed.is_some_and(|r| r.role == Role::Fenced), received);
    let unreachable = g
        .fenced_since()
        .is_some_and(|since| received.saturating_duration_since(since) >= ttl);
    if unreachable {
        return None;
    }
    let (grant, until) = leases.grant(g.name(), epoch, ttl, received)?;
    g.extend_lease(until);
    Some(grant)
}

/// The primary's promote hook failed: it is not serving.
fn promote_hook_failed(g: &mut Group, ctx: &mut Ctx<'_>, node_id: &str, report: &HookReport) {
    g.note_promote_failed(ctx.now.mono);
    let detail = if report.detail.is_empty() {
        format!("{:?}", report.outcome)
    } else {
        report.detail.clone()
    };
    let name = g.name().to_owned();
    ctx.event(NewEvent {
        group: &name,
        kind: EventKind::PromoteFailed,
        epoch: g.epoch(),
        old_primary: Some(node_id),
        new_primary: None,
        reason: format!("{node_id}'s promote hook did not succeed: {detail}"),
        actor: COORDINATOR,
    });
    decide::reconcile(g, ctx);
}

/// The first 8 characters of an instance id, for logs and views.
pub(super) fn short(instance: &str) -> &str {
    instance.get(..8).unwrap_or(instance)
}
