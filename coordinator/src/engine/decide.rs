//! Who should be primary: replacing a lapsed primary, carrying switchovers
//! through (operators', failback, a failing primary), choosing candidates,
//! and telling every member.
//!
//! **Architecture invariant (at most one primary):** a node is promoted only
//! when the group's `lease_until` has passed or was cleared by a confirmed
//! step-down. `lease_until` is pushed forward by every lease grant (see
//! `sessions.rs`) and set to a full lease wait at start-up (`Engine::new`).
//!
//! The rules, in order, for one group:
//! 1. The primary holds the role (its lease is live, or its agent left
//!    cleanly and `shutdown_grace` has not run out): a requested switchover
//!    moves it; with auto-failover, so do a failed promote hook, failing
//!    health checks (after `abnormal_timeout`) and failback — the last two
//!    at most once per `min_failover_interval`.
//! 2. The primary's lease ran out: it is marked failed and, with
//!    auto-failover, the vacancy is filled at once.
//! 3. Nobody holds the role: the requested target, or (with auto-failover,
//!    or for a group's first election) the vacancy is filled.
//!
//! A member *can serve* when it is connected, passes its checks and is not
//! in maintenance. It *qualifies* when it can serve and has not failed here
//! within `failback_delay` of being healthy again. Voluntary moves (failback,
//! restore, moves away from a live primary) go only to a member that
//! qualifies. A vacancy is never kept open for ranking's sake: it goes to the
//! first member that qualifies, else to the first that can serve — a member
//! whose promote hook failed only once its retry is due (backoff from
//! `min_failover_interval`, doubling, capped at `failback_delay`). Every rule
//! that waits records when to look again.

use super::*;
use crate::policy::Failback;

/// Why a primary is being replaced without a step-down.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    /// Its lease ran out: silent, cut off, or unable to get its renewals.
    Lapsed,
    /// Its agent stopped cleanly and the shutdown grace is over.
    Left,
    /// Its agent stepped down on its own before stopping.
    SteppedDown,
}

impl Engine {
    /// Brings one group forward after anything that may change who should
    /// be primary, then tells members, refreshes its phase and its timer.
    pub(super) fn reconcile(&mut self, name: &str, now: Now, out: &mut Effects) {
        if !self.groups.contains_key(name) {
            return;
        }
        let mut wake = Wake::default();
        self.decide(name, now, &mut wake, out);
        self.sync_group(name, now, out);
        self.set_wake(name, wake, now);
    }

    /// Records the group's next wake-up; a lease that has run out is
    /// forgotten (it means the same as none), so the timer only ever holds
    /// future instants.
    fn set_wake(&mut self, name: &str, wake: Wake, now: Now) {
        let g = self.groups.get_mut(name).expect("group exists");
        if g.lease_until.is_some_and(|t| t <= now.mono) {
            g.lease_until = None;
        }
        g.wake = wake.0;
        update_timer(&mut self.timers, name, g);
    }

    fn decide(&mut self, name: &str, now: Now, wake: &mut Wake, out: &mut Effects) {
        let g = &self.groups[name];
        let lease_live = g.lease_until.is_some_and(|t| t > now.mono);
        match g.record.primary.clone() {
            Some(primary) => {
                let held = self.held_after_goodbye(name, &primary, now, wake);
                if lease_live || held {
                    self.primary_holds(name, &primary, now, wake, out);
                } else {
                    let cause = if self.said_goodbye(name, &primary) {
                        Cause::Left
                    } else {
                        Cause::Lapsed
                    };
                    self.replace(name, &primary, cause, now, wake, out);
                }
            }
            // A stepping-down primary's lease is being waited out.
            None if lease_live => {}
            None => self.fill_vacancy(name, now, wake, out),
        }
    }

    /// When the agent instance holding the role said goodbye, if it did.
    fn goodbye_of_holder(&self, name: &str, primary: &str) -> Option<Instant> {
        let holder = self.groups.get(name)?.record.primary_instance.as_deref()?;
        match &self.nodes.get(primary)?.goodbye {
            Some((at, instance)) if instance == holder => Some(*at),
            _ => None,
        }
    }

    fn said_goodbye(&self, name: &str, primary: &str) -> bool {
        self.goodbye_of_holder(name, primary).is_some()
    }

    /// Whether the group waits for a primary whose agent said goodbye
    /// (within `shutdown_grace`, the primary keeps the role).
    fn held_after_goodbye(&self, name: &str, primary: &str, now: Now, wake: &mut Wake) -> bool {
        let grace = self.groups[name].record.policy.shutdown_grace;
        let Some(left) = self.goodbye_of_holder(name, primary) else {
            return false;
        };
        let until = left + grace;
        if now.mono < until {
            wake.at(until);
            true
        } else {
            false
        }
    }

    /// Rule 1: the primary holds the role. Should it be moved?
    fn primary_holds(
        &mut self,
        name: &str,
        primary: &str,
        now: Now,
        wake: &mut Wake,
        out: &mut Effects,
    ) {
        let g = &self.groups[name];
        if let Some(sw) = &g.switchover {
            if sw.target != primary {
                return self.step_down(name, primary, now, out);
            }
            // Already there (e.g. the target was promoted meanwhile).
            let sw = self
                .groups
                .get_mut(name)
                .expect("group exists")
                .switchover
                .take();
            if let Some(reply) = sw.and_then(|s| s.reply) {
                self.sync_group(name, now, out);
                out.replies
                    .push((reply, Ok(AdminReply::Group(self.group_view(name, now)))));
            }
            return;
        }
        let policy = g.record.policy.clone();
        let unhealthy_since = self
            .nodes
            .get(primary)
            .and_then(|n| n.unhealthy_since(name));
        if !policy.auto_failover {
            if g.promote_failed {
                self.alarm(
                    name,
                    format!(
                        "{primary}'s promote hook failed and auto-failover is off: \
                    run failoverctl group takeover {name}"
                    ),
                    now,
                    out,
                );
            } else if unhealthy_since.is_some() {
                self.alarm(
                    name,
                    format!(
                        "{primary} fails its health checks and auto-failover is off: \
                    run failoverctl group takeover {name}"
                    ),
                    now,
                    out,
                );
            }
            return;
        }
        if g.promote_failed {
            // Not serving: a vacancy in all but name. Replace it now, even
            // with nobody to take over (it is retried after its backoff).
            let target = self.vacancy_candidate(name, Some(primary), now, wake);
            let reason = format!("{primary}'s promote hook failed");
            return self.move_role(name, primary, target, reason, now, out);
        }
        if let Some(since) = unhealthy_since {
            let due = since + policy.abnormal_timeout;
            if now.mono < due {
                wake.at(due);
                return;
            }
            match self.first_candidate(name, Some(primary), now, wake) {
                Some(target) if !self.rate_limited(name, now, wake) => {
                    let reason = format!(
                        "{primary} has failed its health checks for {}",
                        humantime::format_duration(policy.abnormal_timeout.max(now.mono - since))
                    );
                    self.record_event(
                        NewEvent {
                            group: name,
                            kind: EventKind::PrimaryUnhealthy,
                            epoch: g.record.epoch,
                            old_primary: Some(primary),
                            new_primary: Some(&target),
                            reason: reason.clone(),
                            actor: COORDINATOR,
                        },
                        now,
                        out,
                    );
                    self.mark_failed(name, primary, now);
                    self.move_role(name, primary, Some(target), reason, now, out);
                }
                Some(_) => {}
                None => self.alarm(
                    name,
                    format!("{primary} fails its health checks and no other member qualifies to take over"),
                    now,
                    out,
                ),
            }
            return;
        }
        if policy.failback == Failback::Delayed
            && let Some(target) = self.failback_target(name, primary, now, wake)
            && !self.rate_limited(name, now, wake)
        {
            let reason = format!(
                "failback to {target}, higher in priority and healthy for {}",
                humantime::format_duration(policy.failback_delay)
            );
            self.move_role(name, primary, Some(target), reason, now, out);
        }
    }

    /// Whether an automatic move away from a live primary must wait for
    /// `min_failover_interval` since the last such move.
    fn rate_limited(&self, name: &str, now: Now, wake: &mut Wake) -> bool {
        let g = &self.groups[name];
        let Some(last) = g.last_move_away else {
            return false;
        };
        let allowed = last + g.record.policy.min_failover_interval;
        if now.mono < allowed {
            wake.at(allowed);
            true
        } else {
            false
        }
    }

    /// The highest-priority member above the primary that has been healthy
    /// for `failback_delay`, if the window allows failing back now.
    fn failback_target(
        &self,
        name: &str,
        primary: &str,
        now: Now,
        wake: &mut Wake,
    ) -> Option<String> {
        let g = &self.groups[name];
        let above = &g.record.members[..g.record.position(primary)?];
        let best = above.iter().find(|m| self.qualifies(name, m, now, wake))?;
        let since = self.nodes.get(best)?.healthy_since(name)?;
        let ready = since + g.record.policy.failback_delay;
        if now.mono < ready {
            wake.at(ready);
            return None;
        }
        if let Some(window) = g.record.policy.failback_window
            && !window.contains(now.wall_ms)
        {
            wake.at(now.mono + Duration::from_millis(window.until_open(now.wall_ms)));
            return None;
        }
        Some(best.clone())
    }

    /// Starts moving the role away from a live primary, to `target` if
    /// there is one (otherwise the group will have no primary).
    fn move_role(
        &mut self,
        name: &str,
        primary: &str,
        target: Option<String>,
        reason: String,
        now: Now,
        out: &mut Effects,
    ) {
        let g = self.groups.get_mut(name).expect("group exists");
        g.switchover = target.map(|target| Switchover {
            target,
            reply: None,
            actor: COORDINATOR.to_owned(),
            reason,
        });
        self.step_down(name, primary, now, out);
    }

    /// Rule 2: the primary no longer holds the role. Record why and hand the
    /// role to the first qualifying member (with auto-failover).
    fn replace(
        &mut self,
        name: &str,
        primary: &str,
        cause: Cause,
        now: Now,
        wake: &mut Wake,
        out: &mut Effects,
    ) {
        let g = &self.groups[name];
        let lapsed_at = g.lease_until;
        let lease = humantime::format_duration(g.record.policy.failover_timeout);
        let reason = match cause {
            Cause::Lapsed if g.primary_fenced_since.is_some() => {
                format!(
                    "{primary} kept reporting itself fenced: its lease renewals did not reach it within {lease}"
                )
            }
            Cause::Lapsed => {
                format!(
                    "{primary} sent no heartbeat that could be acknowledged within its lease of {lease}"
                )
            }
            Cause::Left => format!(
                "{primary}'s agent stopped and did not come back within the shutdown grace of {}",
                humantime::format_duration(g.record.policy.shutdown_grace)
            ),
            Cause::SteppedDown => format!("{primary} stepped down before its agent stopped"),
        };
        let auto = g.record.policy.auto_failover;
        let kind = match cause {
            Cause::Lapsed => EventKind::PrimaryLapsed,
            Cause::Left => EventKind::ShutdownGraceExpired,
            Cause::SteppedDown => EventKind::PrimarySteppedDown,
        };
        self.record_event(
            NewEvent {
                group: name,
                kind,
                epoch: g.record.epoch,
                old_primary: Some(primary),
                new_primary: None,
                reason,
                actor: COORDINATOR,
            },
            now,
            out,
        );
        if cause == Cause::Lapsed {
            self.mark_failed(name, primary, now);
        }
        self.groups
            .get_mut(name)
            .expect("group exists")
            .last_primary = Some(primary.to_owned());
        let next = if auto {
            self.vacancy_candidate(name, Some(primary), now, wake)
        } else {
            None
        };
        match next {
            Some(next) => {
                let reason = match cause {
                    Cause::SteppedDown => format!("{primary} stepped down"),
                    Cause::Left => format!("{primary} left"),
                    Cause::Lapsed => format!("{primary} lapsed"),
                };
                self.promote(name, &next, reason, now, out);
                if cause == Cause::Lapsed
                    && let Some(note) = out.promotions.last_mut()
                {
                    note.lapsed_at = lapsed_at;
                }
            }
            None => {
                let g = self.groups.get_mut(name).expect("group exists");
                let Some(epoch) = g.record.epoch.checked_add(1) else {
                    return self.epoch_exhausted(name, now, out);
                };
                g.record.primary = None;
                g.record.primary_instance = None;
                g.record.epoch = epoch;
                g.primary_fenced_since = None;
                g.promote_failed = false;
                out.writes.push(Write::PutGroup(g.record.clone()));
                if !auto {
                    self.alarm(
                        name,
                        format!(
                            "{primary} is gone and auto-failover is off: \
                        run failoverctl group takeover {name}"
                        ),
                        now,
                        out,
                    );
                }
            }
        }
    }

    /// Rule 3: nobody holds the role and no lease is outstanding.
    fn fill_vacancy(&mut self, name: &str, now: Now, wake: &mut Wake, out: &mut Effects) {
        let g = self.groups.get_mut(name).expect("group exists");
        g.stepping_down = None;
        if let Some(sw) = &g.switchover {
            let (target, reason) = (sw.target.clone(), sw.reason.clone());
            if self.eligible(name, &target, now) {
                return self.promote(name, &target, reason, now, out);
            }
            let sw = self
                .groups
                .get_mut(name)
                .expect("group exists")
                .switchover
                .take();
            if let Some(reply) = sw.and_then(|s| s.reply) {
                out.replies.push((
                    reply,
                    Err(AdminError::Aborted(format!(
                        "{target} stopped qualifying (disconnected, unhealthy or drained) during the \
                         switchover; group {name} fails over by its policy instead"
                    ))),
                ));
            }
        }
        let g = &self.groups[name];
        let first_election = g.record.epoch == g.record.first_epoch;
        if !g.record.policy.auto_failover && !first_election {
            return;
        }
        if let Some(next) = self.vacancy_candidate(name, None, now, wake) {
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
        // The role is bound to the agent instance it is given to: only that
        // process may renew its lease or confirm its step-down.
        let Some(instance) = self
            .nodes
            .get(node)
            .and_then(Node::instance)
            .map(str::to_owned)
        else {
            return;
        };
        let retry = self.groups[name].hook_failures.get(node).map(|f| f.count);
        let reason = match retry {
            Some(n) => format!(
                "{reason}; retrying {node}, whose promote hook failed {n} time{}",
                if n == 1 { "" } else { "s" }
            ),
            None => reason,
        };
        let g = self.groups.get_mut(name).expect("group exists");
        let Some(epoch) = g.record.epoch.checked_add(1) else {
            return self.epoch_exhausted(name, now, out);
        };
        let old = g.record.primary.take().or_else(|| g.last_primary.clone());
        g.primary_fenced_since = None;
        g.promote_failed = false;
        g.alarm = None;
        g.failed.remove(node);
        g.record.epoch = epoch;
        g.record.primary = Some(node.to_owned());
        g.record.primary_instance = Some(instance);
        // Every earlier lease has ended: only this one's length counts now.
        g.record.granted_ttl_max = Some(g.record.policy.failover_timeout);
        g.last_primary = Some(node.to_owned());
        g.stepping_down = None;
        let epoch = g.record.epoch;
        let switchover = g.switchover.take();
        out.writes.push(Write::PutGroup(g.record.clone()));
        out.promotions.push(PromotionNote {
            group: name.to_owned(),
            lapsed_at: None,
        });
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
        if let Some(reply) = switchover.and_then(|s| s.reply) {
            self.sync_group(name, now, out);
            out.replies
                .push((reply, Ok(AdminReply::Group(self.group_view(name, now)))));
        }
    }

    /// A switchover's first half: tell the primary to step down with a new
    /// epoch and stop extending its lease.
    fn step_down(&mut self, name: &str, primary: &str, now: Now, out: &mut Effects) {
        let g = self.groups.get_mut(name).expect("group exists");
        let Some(epoch) = g.record.epoch.checked_add(1) else {
            return self.epoch_exhausted(name, now, out);
        };
        g.record.epoch = epoch;
        g.record.primary = None;
        let holder = g.record.primary_instance.take();
        g.primary_fenced_since = None;
        g.promote_failed = false;
        g.last_move_away = Some(now.mono);
        g.last_primary = Some(primary.to_owned());
        g.stepping_down = Some((primary.to_owned(), holder));
        let epoch = g.record.epoch;
        let (reason, actor) = match &g.switchover {
            Some(sw) => (
                format!(
                    "{}: moving the role to {}, waiting for {primary} to step down",
                    sw.reason, sw.target
                ),
                sw.actor.clone(),
            ),
            None => (
                format!("{primary} steps down; nobody qualifies to take over"),
                COORDINATOR.to_owned(),
            ),
        };
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

    /// The primary stepped down on its own (its agent is stopping, with no
    /// shutdown grace): replace it at once, without waiting for its lease.
    pub(super) fn primary_stepped_down(
        &mut self,
        name: &str,
        node: &str,
        now: Now,
        out: &mut Effects,
    ) {
        self.set_lease_until(name, None);
        let mut wake = Wake::default();
        self.replace(name, node, Cause::SteppedDown, now, &mut wake, out);
        self.sync_group(name, now, out);
        self.set_wake(name, wake, now);
    }

    /// Raises an alarm once for the situation `message` describes.
    fn alarm(&mut self, name: &str, message: String, now: Now, out: &mut Effects) {
        let g = self.groups.get_mut(name).expect("group exists");
        if g.alarm.as_ref() == Some(&message) {
            return;
        }
        g.alarm = Some(message.clone());
        let (epoch, primary) = (g.record.epoch, g.record.primary.clone());
        tracing::warn!(group = name, epoch, "ALARM: {message}");
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::Alarm,
                epoch,
                old_primary: primary.as_deref(),
                new_primary: None,
                reason: message,
                actor: COORDINATOR,
            },
            now,
            out,
        );
    }

    pub(super) fn mark_failed(&mut self, name: &str, node: &str, now: Now) {
        let g = self.groups.get_mut(name).expect("group exists");
        g.failed.insert(node.to_owned(), now.mono);
    }

    /// The epoch cannot grow any further (never in practice: claims from
    /// agents are bounded, see `sessions.rs::check_claim`). Nothing changes;
    /// an operator must re-create the group under a new name.
    fn epoch_exhausted(&mut self, name: &str, now: Now, out: &mut Effects) {
        self.alarm(
            name,
            format!("group {name}'s epoch cannot grow any further: create the group again under another name"),
            now,
            out,
        );
    }

    /// Who fills a vacancy, never keeping it open for ranking's sake: the
    /// first member that qualifies; else the first that can serve, recently
    /// failed or not — one whose promote hook failed only once its retry
    /// is due.
    pub(super) fn vacancy_candidate(
        &self,
        name: &str,
        exclude: Option<&str>,
        now: Now,
        wake: &mut Wake,
    ) -> Option<String> {
        if let Some(best) = self.first_candidate(name, exclude, now, wake) {
            return Some(best);
        }
        self.groups[name]
            .record
            .members
            .iter()
            .filter(|m| Some(m.as_str()) != exclude)
            .filter(|m| self.eligible(name, m, now))
            .find(|m| match self.hook_retry_at(name, m) {
                Some(at) if now.mono < at => {
                    wake.at(at);
                    false
                }
                _ => true,
            })
            .cloned()
    }

    /// For a member whose promote hook failed: when it may be tried again
    /// (while nobody else can serve). The backoff starts at
    /// `min_failover_interval` (at least a second), doubles with every
    /// failure and is capped at `failback_delay`.
    pub(super) fn hook_retry_at(&self, name: &str, node: &str) -> Option<Instant> {
        let g = &self.groups[name];
        let f = g.hook_failures.get(node)?;
        let policy = &g.record.policy;
        let base = policy.min_failover_interval.max(MIN_HOOK_RETRY);
        let doublings = f.count.saturating_sub(1).min(32);
        let backoff = base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(policy.failback_delay)
            .min(policy.failback_delay.max(base));
        Some(f.last + backoff)
    }

    /// The first member in priority order that qualifies for an automatic
    /// promotion.
    pub(super) fn first_candidate(
        &self,
        name: &str,
        exclude: Option<&str>,
        now: Now,
        wake: &mut Wake,
    ) -> Option<String> {
        self.groups[name]
            .record
            .members
            .iter()
            .filter(|m| Some(m.as_str()) != exclude)
            .find(|m| self.qualifies(name, m, now, wake))
            .cloned()
    }

    /// Eligible, and not a member that failed here recently.
    fn qualifies(&self, name: &str, node: &str, now: Now, wake: &mut Wake) -> bool {
        if !self.eligible(name, node, now) {
            return false;
        }
        match self.requalifies_at(name, node, now) {
            Some(at) if now.mono < at => {
                wake.at(at);
                false
            }
            _ => true,
        }
    }

    /// For a member that failed here: when it may be promoted again — once
    /// it has been healthy for `failback_delay` since the failure. `None`
    /// if it has no failure on record.
    pub(super) fn requalifies_at(&self, name: &str, node: &str, now: Now) -> Option<Instant> {
        let g = &self.groups[name];
        let failed_at = *g.failed.get(node)?;
        let healthy_since = self
            .nodes
            .get(node)
            .and_then(|n| n.healthy_since(name))
            .unwrap_or(now.mono);
        Some(failed_at.max(healthy_since) + g.record.policy.failback_delay)
    }

    /// Failed here and not yet healthy for `failback_delay` since.
    pub(super) fn recently_failed(&self, name: &str, node: &str, now: Now) -> bool {
        self.requalifies_at(name, node, now)
            .is_some_and(|at| now.mono < at)
    }

    /// Whether an operator may put the role on `node`: a member that is
    /// connected (heard from within the failover timeout), passes its
    /// health checks and is not in maintenance.
    pub(super) fn eligible(&self, name: &str, node: &str, now: Now) -> bool {
        let g = &self.groups[name];
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        g.record.position(node).is_some()
            && !g.record.in_maintenance(node)
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
            shutdown_grace: g.record.policy.shutdown_grace,
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
        // Active only while the instance that holds the role is connected:
        // nobody else can renew its lease.
        let holder_connected = |p: &String| {
            self.nodes.get(p).and_then(Node::instance).is_some()
                && self.nodes.get(p).and_then(Node::instance)
                    == g.record.primary_instance.as_deref()
        };
        match &g.record.primary {
            Some(p) if holder_connected(p) => Phase::Active,
            Some(_) => Phase::FailingOver,
            None if g.stepping_down.is_some() || g.lease_until.is_some_and(|t| t > now.mono) => {
                Phase::FailingOver
            }
            None if g.record.members.iter().all(|m| g.record.in_maintenance(m)) => {
                Phase::Maintenance
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
        if phase == Phase::NoPrimary && epoch > g.record.first_epoch {
            self.record_event(
                NewEvent {
                    group: name,
                    kind: EventKind::NoPrimary,
                    epoch,
                    old_primary: last.as_deref(),
                    new_primary: None,
                    reason: "no member can serve (connected, passing its checks, not in maintenance, promote hook not failing): nobody can be promoted; group show says why for each member".into(),
                    actor: COORDINATOR,
                },
                now,
                out,
            );
        }
    }
}
