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
        let interval = self.heartbeat_interval_for(&node_id);
        let startup_deadline = now.mono + self.startup_timeout_for(&node_id);
        self.startups.insert((startup_deadline, session));
        let node = self.nodes.entry(node_id.clone()).or_insert_with(Node::new);
        // A node has one session: the newest wins (an agent that reconnects
        // before its old stream was noticed dead).
        if let Some(old) = node.session.take() {
            tracing::warn!(node = %node_id, old = old.id, new = session, "replacing the node's previous session");
            self.sessions.remove(&old.id);
            if let Some(deadline) = old.startup_deadline {
                self.startups.remove(&(deadline, old.id));
            }
            out.closes.push(old.id);
        }
        node.session = Some(Session {
            id: session,
            last_heartbeat: None,
            sent: HashMap::new(),
            heartbeat_interval: interval,
            startup_deadline: Some(startup_deadline),
        });
        // Back: a goodbye no longer holds its groups.
        node.goodbye_at = None;
        node.last_contact_ms = now.wall_ms;
        node.address = hello.address;
        node.agent_version = hello.agent_version;
        self.sessions.insert(session, node_id.clone());
        tracing::info!(node = %node_id, session, claims = hello.roles.len(), "agent session opened");
        out.sends.push((
            session,
            ToAgent::Welcome {
                coordinator_id: self.config.coordinator_id.clone(),
                heartbeat_interval: interval,
            },
        ));

        for claim in hello.roles {
            self.check_claim(&node_id, session, claim, now, out);
        }
        let groups: Vec<String> = self.nodes[&node_id].groups.iter().cloned().collect();
        for name in groups {
            self.sync_group(&name, now, out);
        }
    }

    /// Compares a role the agent says it holds with the stored state.
    fn check_claim(
        &mut self,
        node: &str,
        session: SessionId,
        claim: ClaimedRole,
        now: Now,
        out: &mut Effects,
    ) {
        let is_member = self
            .groups
            .get(&claim.group)
            .is_some_and(|g| g.record.members.iter().any(|m| m == node));
        if !is_member {
            let floor = self.epoch_floors.get(&claim.group).copied().unwrap_or(0);
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
        let g = self.groups.get_mut(&claim.group).expect("checked above");
        if claim.epoch > g.record.epoch {
            // Only possible if the store lost acknowledged state. Move the
            // epoch past the claim so every member's next command is newer
            // than anything it has seen.
            let stored = g.record.epoch;
            g.record.epoch = claim.epoch + 1;
            let epoch = g.record.epoch;
            out.writes.push(Write::PutGroup(g.record.clone()));
            let primary = g.record.primary.clone();
            self.record_event(
                NewEvent {
                    group: &claim.group,
                    kind: EventKind::EpochRaised,
                    epoch,
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
    }

    pub(super) fn on_heartbeat(
        &mut self,
        session: SessionId,
        beat: Beat,
        now: Now,
        out: &mut Effects,
    ) {
        let Some(node_id) = self.sessions.get(&session).cloned() else {
            return; // a session that was replaced or closed
        };
        let Beat {
            seq,
            received,
            checks,
            roles,
        } = beat;
        let drift = self.config.clock_drift;
        let node = self.nodes.get_mut(&node_id).expect("session's node exists");
        let s = node.session.as_mut().expect("session is current");
        let first = s.last_heartbeat.is_none();
        s.last_heartbeat = Some((seq, received));
        if let Some(deadline) = s.startup_deadline.take() {
            self.startups.remove(&(deadline, session));
        }
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

        // Grant a lease in every group where this node holds the role, and
        // note groups without a primary: this node may now qualify for them
        // (its first heartbeat, or the first after a silence).
        let mut grants = Vec::new();
        let mut vacant = Vec::new();
        for name in &node.groups {
            let g = self
                .groups
                .get_mut(name)
                .expect("member of an existing group");
            match g.record.primary.as_deref() {
                Some(p) if p == node_id => {
                    let epoch = g.record.epoch;
                    let ttl = g.record.policy.failover_timeout;
                    let fenced = roles
                        .iter()
                        .any(|r| r.group == *name && r.epoch == epoch && r.role == Role::Fenced);
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
            self.nodes[&node_id].groups.iter().cloned().collect()
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
        let level_ok = report.outcome.took_effect();
        if level_ok {
            tracing::info!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, "hook finished");
        } else {
            tracing::warn!(node = %node_id, group = %report.group, epoch = report.epoch, role = ?report.role, outcome = ?report.outcome, exit_code = ?report.exit_code, detail = %report.detail, "hook did not succeed");
        }
        let Some(g) = self.groups.get(&report.group) else {
            return;
        };
        let current = report.epoch == g.record.epoch;
        let is_primary = g.record.primary.as_deref() == Some(node_id.as_str());
        let name = report.group.clone();
        if g.stepping_down.as_deref() == Some(node_id.as_str())
            && current
            && report.role == Role::Secondary
            && level_ok
        {
            self.confirm_step_down(&name, &node_id, now, out);
        } else if is_primary && current && report.role == Role::Secondary && level_ok {
            // Its agent is stopping and stepped down by itself.
            self.primary_stepped_down(&name, &node_id, now, out);
        } else if is_primary
            && current
            && report.role == Role::Primary
            && matches!(report.outcome, HookOutcome::Failed | HookOutcome::TimedOut)
        {
            let epoch = g.record.epoch;
            self.groups
                .get_mut(&name)
                .expect("group exists")
                .promote_failed = true;
            self.mark_failed(&name, &node_id, now);
            let detail = if report.detail.is_empty() {
                format!("{:?}", report.outcome)
            } else {
                report.detail.clone()
            };
            self.record_event(
                NewEvent {
                    group: &name,
                    kind: EventKind::PromoteFailed,
                    epoch,
                    old_primary: Some(&node_id),
                    new_primary: None,
                    reason: format!("{node_id}'s promote hook did not succeed: {detail}"),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
            self.reconcile(&name, now, out);
        }
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
        let node = self.nodes.get_mut(&node_id).expect("session's node exists");
        node.goodbye_at = Some(now.mono);
        let led: Vec<String> = node
            .groups
            .iter()
            .filter(|g| self.groups[*g].record.primary.as_deref() == Some(node_id.as_str()))
            .cloned()
            .collect();
        for name in led {
            let g = &self.groups[&name];
            let grace = humantime::format_duration(g.record.policy.shutdown_grace);
            self.record_event(
                NewEvent {
                    group: &name,
                    kind: EventKind::PrimaryLeft,
                    epoch: g.record.epoch,
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
        let node = self.nodes.get_mut(&node_id).expect("session's node exists");
        if let Some(deadline) = node.session.take().and_then(|s| s.startup_deadline) {
            self.startups.remove(&(deadline, session));
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

    /// The smallest startup timeout among the node's groups.
    fn startup_timeout_for(&self, node: &str) -> Duration {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .map(|g| self.groups[g].record.policy.startup_timeout)
            .min()
            .unwrap_or(self.config.default_policy.startup_timeout)
    }

    /// The smallest heartbeat interval among the node's groups.
    pub(super) fn heartbeat_interval_for(&self, node: &str) -> Duration {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.groups.iter())
            .map(|g| self.groups[g].record.policy.heartbeat_interval)
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
