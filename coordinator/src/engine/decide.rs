//! Who should be primary: replacing a lapsed primary, carrying a planned
//! switchover through, choosing a candidate, and telling every member.
//!
//! **Architecture invariant (at most one primary):** a node is promoted only
//! when the group's `lease_until` has passed or was cleared by a confirmed
//! step-down. `lease_until` is pushed forward by every lease grant (see
//! `sessions.rs`) and set to a full lease wait at start-up (`Engine::new`).

use super::*;

impl Engine {
    /// Brings one group forward after anything that may change who should
    /// be primary, then tells members and refreshes its phase.
    pub(super) fn reconcile(&mut self, name: &str, now: Now, out: &mut Effects) {
        let Some(g) = self.groups.get(name) else {
            return;
        };
        let lease_live = g.lease_until.is_some_and(|t| t > now.mono);
        match g.record.primary.clone() {
            Some(primary) if lease_live => {
                let wants_other = g.switchover.as_ref().is_some_and(|s| s.target != primary);
                if wants_other {
                    self.step_down(name, &primary, now, out);
                }
            }
            Some(primary) => self.replace_lapsed(name, &primary, now, out),
            None if lease_live => {}
            None => self.promote_candidate(name, now, out),
        }
        self.sync_group(name, now, out);
    }

    /// The primary's lease ran out with no heartbeat acknowledged: record
    /// it and hand the role to the next candidate, if any.
    fn replace_lapsed(&mut self, name: &str, primary: &str, now: Now, out: &mut Effects) {
        let g = &self.groups[name];
        let lease = humantime::format_duration(g.record.policy.failover_timeout);
        let reason = if g.primary_fenced_since.is_some() {
            format!(
                "{primary} kept reporting itself fenced: its lease renewals did not reach it within {lease}"
            )
        } else {
            format!(
                "{primary} sent no heartbeat that could be acknowledged within its lease of {lease}"
            )
        };
        let epoch = g.record.epoch;
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::PrimaryLapsed,
                epoch,
                old_primary: Some(primary),
                new_primary: None,
                reason,
                actor: COORDINATOR,
            },
            now,
            out,
        );
        let g = self.groups.get_mut(name).expect("group exists");
        g.last_primary = Some(primary.to_owned());
        match self.first_candidate(name, Some(primary), now) {
            Some(next) => self.promote(name, &next, format!("{primary} lapsed"), now, out),
            None => {
                let g = self.groups.get_mut(name).expect("group exists");
                g.record.primary = None;
                g.primary_fenced_since = None;
                g.record.epoch += 1;
                out.writes.push(Write::PutGroup(g.record.clone()));
            }
        }
    }

    /// Nobody holds the role and no lease is outstanding: finish a
    /// switchover, or promote the first member that qualifies.
    fn promote_candidate(&mut self, name: &str, now: Now, out: &mut Effects) {
        let g = self.groups.get_mut(name).expect("group exists");
        g.stepping_down = None;
        if let Some(sw) = &g.switchover {
            let (target, actor) = (sw.target.clone(), sw.actor.clone());
            if self.eligible(name, &target, now) {
                let reason = format!("switchover requested by {actor}");
                return self.promote(name, &target, reason, now, out);
            }
            let sw = self
                .groups
                .get_mut(name)
                .expect("group exists")
                .switchover
                .take();
            let reply = sw.expect("switchover in progress").reply;
            out.replies.push((
                reply,
                Err(AdminError::Aborted(format!(
                    "{target} stopped qualifying (disconnected or unhealthy) during the \
                     switchover; group {name} fails over automatically instead"
                ))),
            ));
        }
        if let Some(next) = self.first_candidate(name, None, now) {
            let reason = match &self.groups[name].last_primary {
                Some(last) => format!("{next} is the first qualifying member since {last}"),
                None => format!("{next} is the first qualifying member"),
            };
            self.promote(name, &next, reason, now, out);
        }
    }

    /// Makes `node` primary with a new epoch, durably, and grants it a lease
    /// from its latest heartbeat.
    fn promote(&mut self, name: &str, node: &str, reason: String, now: Now, out: &mut Effects) {
        let wait = self.lease_wait(&self.groups[name].record.policy);
        let g = self.groups.get_mut(name).expect("group exists");
        let old = g.record.primary.take().or_else(|| g.last_primary.clone());
        g.primary_fenced_since = None;
        g.record.epoch += 1;
        g.record.primary = Some(node.to_owned());
        g.last_primary = Some(node.to_owned());
        g.stepping_down = None;
        let epoch = g.record.epoch;
        let switchover = g.switchover.take();
        out.writes.push(Write::PutGroup(g.record.clone()));
        let actor = switchover
            .as_ref()
            .map_or(COORDINATOR, |s| s.actor.as_str())
            .to_owned();
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::Promoted,
                epoch,
                old_primary: old.as_deref(),
                new_primary: Some(node),
                reason,
                actor: &actor,
            },
            now,
            out,
        );

        // The assignment goes first, then the grant that lets it act: the
        // agent honours a grant only for the epoch it was assigned.
        self.send_assignment(name, node, out);
        let heartbeat = self.nodes[node]
            .session
            .as_ref()
            .and_then(|s| s.last_heartbeat.map(|hb| (s.id, hb)));
        if let Some((session, (seq, received))) = heartbeat {
            let ttl = self.groups[name].record.policy.failover_timeout;
            out.sends.push((
                session,
                ToAgent::Ack {
                    seq,
                    grants: vec![LeaseGrant {
                        group: name.to_owned(),
                        epoch,
                        ttl,
                    }],
                },
            ));
            self.set_lease_until(name, Some(received + wait));
        }
        if let Some(sw) = switchover {
            self.sync_group(name, now, out);
            out.replies
                .push((sw.reply, Ok(AdminReply::Group(self.group_view(name, now)))));
        }
    }

    /// Planned switchover, first half: tell the primary to step down with a
    /// new epoch and stop extending its lease.
    fn step_down(&mut self, name: &str, primary: &str, now: Now, out: &mut Effects) {
        let g = self.groups.get_mut(name).expect("group exists");
        g.record.epoch += 1;
        g.record.primary = None;
        g.primary_fenced_since = None;
        g.last_primary = Some(primary.to_owned());
        g.stepping_down = Some(primary.to_owned());
        let epoch = g.record.epoch;
        let sw = g.switchover.as_ref().expect("switchover in progress");
        let reason = format!(
            "switchover to {} requested by {}: waiting for {primary} to step down",
            sw.target, sw.actor
        );
        let actor = sw.actor.clone();
        out.writes.push(Write::PutGroup(g.record.clone()));
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::SteppingDown,
                epoch,
                old_primary: Some(primary),
                new_primary: None,
                reason,
                actor: &actor,
            },
            now,
            out,
        );
    }

    /// A stepping-down primary confirmed: its lease no longer matters.
    pub(super) fn confirm_step_down(
        &mut self,
        name: &str,
        node: &str,
        now: Now,
        out: &mut Effects,
    ) {
        let epoch = self.groups[name].record.epoch;
        self.groups
            .get_mut(name)
            .expect("group exists")
            .stepping_down = None;
        self.set_lease_until(name, None);
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::StepDownConfirmed,
                epoch,
                old_primary: Some(node),
                new_primary: None,
                reason: format!("{node} ran its step-down hook and stopped acting as primary"),
                actor: COORDINATOR,
            },
            now,
            out,
        );
        self.reconcile(name, now, out);
    }

    /// The first member in priority order that may become primary.
    fn first_candidate(&self, name: &str, exclude: Option<&str>, now: Now) -> Option<String> {
        self.groups[name]
            .record
            .members
            .iter()
            .filter(|m| Some(m.as_str()) != exclude)
            .find(|m| self.eligible(name, m, now))
            .cloned()
    }

    /// A member qualifies when it is connected (heard from within the
    /// group's failover timeout) and passes its health checks.
    pub(super) fn eligible(&self, name: &str, node: &str, now: Now) -> bool {
        let g = &self.groups[name];
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        g.record.members.iter().any(|m| m == node)
            && n.heard_within(now.mono, g.record.policy.failover_timeout)
            && n.passes_checks(name)
    }

    /// What `node` should be told about group `name` right now.
    pub(super) fn assignment_for(&self, name: &str, node: &str) -> Assignment {
        let g = &self.groups[name];
        let role = if g.record.primary.as_deref() == Some(node) {
            Role::Primary
        } else {
            Role::Secondary
        };
        Assignment {
            group: name.to_owned(),
            epoch: g.record.epoch,
            role,
            primary: g.record.primary.clone(),
            standby_mode: g.record.policy.standby_mode,
            fencing: g.record.policy.fencing,
        }
    }

    /// Sends `node` its assignment for `name` if it has a session and the
    /// assignment differs from the last one it was sent.
    pub(super) fn send_assignment(&mut self, name: &str, node: &str, out: &mut Effects) {
        let assignment = self.assignment_for(name, node);
        let Some(session) = self.nodes.get_mut(node).and_then(|n| n.session.as_mut()) else {
            return;
        };
        if session.sent.get(name) != Some(&assignment) {
            session.sent.insert(name.to_owned(), assignment.clone());
            out.sends
                .push((session.id, ToAgent::Assignment(assignment)));
        }
    }

    /// Tells every connected member its current assignment and refreshes
    /// the group's phase.
    pub(super) fn sync_group(&mut self, name: &str, now: Now, out: &mut Effects) {
        let Some(g) = self.groups.get(name) else {
            return;
        };
        for member in g.record.members.clone() {
            self.send_assignment(name, &member, out);
        }
        self.refresh_phase(name, now, out);
    }

    /// What the group is doing, derived from its state.
    pub(super) fn compute_phase(&self, name: &str, now: Now) -> Phase {
        let g = &self.groups[name];
        match &g.record.primary {
            Some(p) if self.nodes.get(p).is_some_and(|n| n.session.is_some()) => Phase::Active,
            Some(_) => Phase::FailingOver,
            None if g.stepping_down.is_some() || g.lease_until.is_some_and(|t| t > now.mono) => {
                Phase::FailingOver
            }
            None => Phase::NoPrimary,
        }
    }

    /// Recomputes the phase; entering `no_primary` is recorded as an alarm.
    pub(super) fn refresh_phase(&mut self, name: &str, now: Now, out: &mut Effects) {
        let phase = self.compute_phase(name, now);
        let g = self.groups.get_mut(name).expect("group exists");
        if phase == g.phase {
            return;
        }
        g.phase = phase;
        g.phase_since_ms = now.wall_ms;
        let epoch = g.record.epoch;
        let last = g.last_primary.clone();
        if phase == Phase::NoPrimary && epoch > 0 {
            self.record_event(
                NewEvent {
                    group: name,
                    kind: EventKind::NoPrimary,
                    epoch,
                    old_primary: last.as_deref(),
                    new_primary: None,
                    reason: "no member is connected and healthy: nobody can be promoted".into(),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
        }
    }
}
