//! Who should be primary: replacing a lapsed primary, carrying switchovers
//! through (operators', failback, a failing primary), choosing candidates,
//! and telling every member.
//!
//! **Architecture invariant (at most one primary):** a node is promoted only
//! when the group's outstanding lease has passed or was ended by a
//! confirmed step-down. Leases are extended by every grant (see
//! `sessions.rs`) and assumed live for a full wait at start-up
//! (`Group::recovered`); promotion happens only in [`promote`].
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

use std::time::Duration;

use super::group::{Group, RoleState, Switchover};
use super::node::{Node, Nodes};
use super::sync_lag;
use super::views::group_view;
use super::*;
use crate::policy::Failback;

/// Why a primary is being replaced without a step-down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cause {
    /// Its lease ran out: silent, cut off, or unable to get its renewals.
    Lapsed,
    /// Its agent stopped cleanly and the shutdown grace is over.
    Left,
    /// Its agent stepped down on its own before stopping.
    SteppedDown,
}

/// Brings one group forward after anything that may change who should be
/// primary, then tells members, refreshes its phase and its wake-up.
pub(super) fn reconcile(g: &mut Group, ctx: &mut Ctx<'_>) {
    let mut wake = Wake::default();
    decide(g, ctx, &mut wake);
    finish(g, ctx, wake);
}

/// Tells every member, refreshes the phase, and records when to look again.
fn finish(g: &mut Group, ctx: &mut Ctx<'_>, wake: Wake) {
    sync_group(g, ctx);
    g.forget_expired_lease(ctx.now.mono);
    g.wake = wake.0;
}

fn decide(g: &mut Group, ctx: &mut Ctx<'_>, wake: &mut Wake) {
    let lease_live = g.lease_live(ctx.now.mono);
    match g.primary().map(str::to_owned) {
        Some(primary) => {
            let held = held_after_goodbye(g, ctx.nodes, &primary, ctx.now, wake);
            if lease_live || held {
                primary_holds(g, ctx, &primary, wake);
            } else {
                let cause = if goodbye_of_holder(g, ctx.nodes, &primary).is_some() {
                    Cause::Left
                } else {
                    Cause::Lapsed
                };
                replace(g, ctx, &primary, cause, wake);
            }
        }
        // A former primary's lease is being waited out.
        None if lease_live => {}
        None => fill_vacancy(g, ctx, wake),
    }
}

/// When the agent instance holding the role said goodbye, if it did.
fn goodbye_of_holder(g: &Group, nodes: &Nodes, primary: &str) -> Option<Instant> {
    let holder = g.holder_instance()?;
    match &nodes.get(primary)?.goodbye {
        Some((at, instance)) if instance == holder => Some(*at),
        _ => None,
    }
}

/// Whether the group waits for a primary whose agent said goodbye
/// (within `shutdown_grace`, the primary keeps the role).
fn held_after_goodbye(g: &Group, nodes: &Nodes, primary: &str, now: Now, wake: &mut Wake) -> bool {
    let Some(left) = goodbye_of_holder(g, nodes, primary) else {
        return false;
    };
    let until = left + g.policy().shutdown_grace;
    if now.mono < until {
        wake.at(until);
        true
    } else {
        false
    }
}

/// Rule 1: the primary holds the role. Should it be moved?
fn primary_holds(g: &mut Group, ctx: &mut Ctx<'_>, primary: &str, wake: &mut Wake) {
    let now = ctx.now;
    if let Some(sw) = &g.switchover {
        if sw.target != primary {
            return step_down(g, ctx);
        }
        // Already there (e.g. the target was promoted meanwhile).
        if let Some(reply) = g.switchover.take().and_then(|s| s.reply) {
            sync_group(g, ctx);
            let view = group_view(g, ctx.nodes, now);
            ctx.out.replies.push((reply, Ok(AdminReply::Group(view))));
        }
        return;
    }
    let policy = g.policy().clone();
    let name = g.name().to_owned();
    let unhealthy_since = ctx
        .nodes
        .get(primary)
        .and_then(|n| n.unhealthy_since(&name));
    if !policy.auto_failover {
        if g.promote_failed() {
            let message = format!(
                "{primary}'s promote hook failed and auto-failover is off: \
                 run failoverctl group takeover {name}"
            );
            alarm(g, ctx, message);
        } else if unhealthy_since.is_some() {
            let message = format!(
                "{primary} fails its health checks and auto-failover is off: \
                 run failoverctl group takeover {name}"
            );
            alarm(g, ctx, message);
        }
        return;
    }
    if g.promote_failed() {
        // Not serving: a vacancy in all but name. Replace it now, even
        // with nobody to take over (it is retried after its backoff).
        let target = vacancy_candidate(g, ctx.nodes, Some(primary), now, wake);
        let reason = format!("{primary}'s promote hook failed");
        return move_role(g, ctx, target, reason);
    }
    if let Some(since) = unhealthy_since {
        let due = since + policy.abnormal_timeout;
        if now.mono < due {
            wake.at(due);
            return;
        }
        match first_candidate(g, ctx.nodes, Some(primary), now, wake) {
            Some(target) if !rate_limited(g, now, wake) => {
                let failing = policy.abnormal_timeout.max(now.mono - since);
                let reason = format!(
                    "{primary} has failed its health checks for {}",
                    humantime::format_duration(Duration::from_millis(failing.as_millis() as u64))
                );
                ctx.event(NewEvent {
                    group: &name,
                    kind: EventKind::PrimaryUnhealthy,
                    epoch: g.epoch(),
                    old_primary: Some(primary),
                    new_primary: Some(&target),
                    reason: reason.clone(),
                    actor: COORDINATOR,
                });
                g.failed.insert(primary.to_owned(), now.mono);
                move_role(g, ctx, Some(target), reason);
            }
            Some(_) => {}
            None => {
                let message = format!(
                    "{primary} fails its health checks and no other member qualifies to take over"
                );
                alarm(g, ctx, message);
            }
        }
        return;
    }
    if policy.failback == Failback::Delayed
        && let Some(target) = failback_target(g, ctx.nodes, primary, now, wake)
        && !rate_limited(g, now, wake)
    {
        let reason = format!(
            "failback to {target}, higher in priority and healthy for {}",
            humantime::format_duration(policy.failback_delay)
        );
        move_role(g, ctx, Some(target), reason);
    }
}

/// Whether an automatic move away from a live primary must wait for
/// `min_failover_interval` since the last such move.
fn rate_limited(g: &Group, now: Now, wake: &mut Wake) -> bool {
    match g.rate_limited_until(now.mono) {
        Some(allowed) => {
            wake.at(allowed);
            true
        }
        None => false,
    }
}

/// The highest-priority member above the primary that has been healthy
/// for `failback_delay`, if the window allows failing back now.
fn failback_target(
    g: &Group,
    nodes: &Nodes,
    primary: &str,
    now: Now,
    wake: &mut Wake,
) -> Option<String> {
    let position = g.record().position(primary)?;
    let above = &g.members()[..position];
    let best = above.iter().find(|m| qualifies(g, nodes, m, now, wake))?;
    if !sync_lag::within_lag(g, nodes, best, now) {
        // Its copy catches up first; its next report looks again.
        return None;
    }
    let since = nodes.get(best)?.healthy_since(g.name())?;
    let policy = g.policy();
    let ready = since + policy.failback_delay;
    if now.mono < ready {
        wake.at(ready);
        return None;
    }
    if let Some(window) = policy.failback_window
        && !window.contains(now.wall_ms)
    {
        wake.at(now.mono + Duration::from_millis(window.until_open(now.wall_ms)));
        return None;
    }
    Some(best.clone())
}

/// Starts moving the role away from a live primary, to `target` if there
/// is one (otherwise the group will have no primary).
fn move_role(g: &mut Group, ctx: &mut Ctx<'_>, target: Option<String>, reason: String) {
    g.switchover = target.map(|target| Switchover {
        target,
        reply: None,
        actor: COORDINATOR.to_owned(),
        reason,
    });
    step_down(g, ctx);
}

/// Rule 2: the primary no longer holds the role. Record why and hand the
/// role on (with auto-failover).
pub(super) fn replace(
    g: &mut Group,
    ctx: &mut Ctx<'_>,
    primary: &str,
    cause: Cause,
    wake: &mut Wake,
) {
    let now = ctx.now;
    let name = g.name().to_owned();
    let lapsed_at = g.lease_until();
    let policy = g.policy().clone();
    let lease = humantime::format_duration(policy.failover_timeout);
    let reason = match cause {
        Cause::Lapsed if g.fenced_since().is_some() => format!(
            "{primary} kept reporting itself fenced: its lease renewals did not reach it within {lease}"
        ),
        Cause::Lapsed => format!(
            "{primary} sent no heartbeat that could be acknowledged within its lease of {lease}"
        ),
        Cause::Left => format!(
            "{primary}'s agent stopped and did not come back within the shutdown grace of {}",
            humantime::format_duration(policy.shutdown_grace)
        ),
        Cause::SteppedDown => format!("{primary} stepped down before its agent stopped"),
    };
    let kind = match cause {
        Cause::Lapsed => EventKind::PrimaryLapsed,
        Cause::Left => EventKind::ShutdownGraceExpired,
        Cause::SteppedDown => EventKind::PrimarySteppedDown,
    };
    ctx.event(NewEvent {
        group: &name,
        kind,
        epoch: g.epoch(),
        old_primary: Some(primary),
        new_primary: None,
        reason,
        actor: COORDINATOR,
    });
    if cause == Cause::Lapsed {
        g.failed.insert(primary.to_owned(), now.mono);
    }
    g.last_primary = Some(primary.to_owned());
    let next = if policy.auto_failover {
        vacancy_candidate(g, ctx.nodes, Some(primary), now, wake)
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
            promote(g, ctx, &next, reason);
            if cause == Cause::Lapsed
                && let Some(note) = ctx.out.promotions.last_mut()
            {
                note.lapsed_at = lapsed_at;
            }
        }
        None => {
            let reason = format!("{primary} is gone and nobody took over");
            if g.vacate(reason, now.wall_ms).is_err() {
                return epoch_exhausted(g, ctx);
            }
            if !policy.auto_failover {
                let message = format!(
                    "{primary} is gone and auto-failover is off: run failoverctl group takeover {name}"
                );
                alarm(g, ctx, message);
            }
        }
    }
}

/// Rule 3: nobody holds the role and no lease is outstanding.
fn fill_vacancy(g: &mut Group, ctx: &mut Ctx<'_>, wake: &mut Wake) {
    let now = ctx.now;
    if let RoleState::SteppingDown { from, .. } = g.role() {
        // Its lease ran out without a confirmation.
        let reason = format!("{from}'s lease ran out while it stepped down");
        g.end_step_down(reason, now.wall_ms);
    }
    if let Some(sw) = &g.switchover {
        let (target, reason) = (sw.target.clone(), sw.reason.clone());
        if eligible(g, ctx.nodes, &target, now) {
            return promote(g, ctx, &target, reason);
        }
        if let Some(reply) = g.switchover.take().and_then(|s| s.reply) {
            let name = g.name();
            ctx.out.replies.push((
                reply,
                Err(AdminError::Aborted(format!(
                    "{target} stopped qualifying (disconnected, unhealthy or drained) during the \
                     switchover; group {name} fails over by its policy instead"
                ))),
            ));
        }
    }
    let first_election = g.epoch() == g.record().first_epoch;
    if !g.policy().auto_failover && !first_election {
        return;
    }
    if let Some(next) = vacancy_candidate(g, ctx.nodes, None, now, wake) {
        let reason = match &g.last_primary {
            Some(last) => format!("{next} is the first qualifying member since {last}"),
            None => format!("{next} is the first qualifying member"),
        };
        promote(g, ctx, &next, reason);
    }
}

/// Makes `node` primary with a new epoch, durably, and grants it a lease
/// from its latest heartbeat.
pub(super) fn promote(g: &mut Group, ctx: &mut Ctx<'_>, node: &str, reason: String) {
    // The role is bound to the agent instance it is given to: only that
    // process may renew its lease or confirm its step-down.
    let Some(n) = ctx.nodes.get(node) else {
        return;
    };
    let Some(session) = n.session.as_ref() else {
        return;
    };
    let (session_id, instance, heartbeat) =
        (session.id, session.instance.clone(), session.last_heartbeat);
    let reason = match g.hook_failures.get(node).map(|f| f.count) {
        Some(n) => format!(
            "{reason}; retrying {node}, whose promote hook failed {n} time{}",
            if n == 1 { "" } else { "s" }
        ),
        None => reason,
    };
    let old = g
        .primary()
        .map(str::to_owned)
        .or_else(|| g.last_primary.clone());
    let switchover = g.switchover.take();
    let cleared = g.alarm.clone();
    let Ok(epoch) = g.promote(node, &instance) else {
        return epoch_exhausted(g, ctx);
    };
    let name = g.name().to_owned();
    ctx.out.promotions.push(PromotionNote {
        group: name.clone(),
        lapsed_at: None,
    });
    let actor = switchover
        .as_ref()
        .map_or(COORDINATOR, |s| s.actor.as_str())
        .to_owned();
    ctx.event(NewEvent {
        group: &name,
        kind: EventKind::Promoted,
        epoch,
        old_primary: old.as_deref(),
        new_primary: Some(node),
        reason,
        actor: &actor,
    });
    if let Some(alarm) = cleared {
        ctx.event(NewEvent {
            group: &name,
            kind: EventKind::AlarmCleared,
            epoch,
            old_primary: old.as_deref(),
            new_primary: Some(node),
            reason: format!("{node} is primary; the alarm was: {alarm}"),
            actor: &actor,
        });
    }

    // The assignment goes first, then the grant that lets it act: the
    // agent honours a grant only for the epoch it was assigned.
    send_assignment(g, ctx.nodes, node, ctx.out);
    if let Some((seq, received)) = heartbeat
        && let Some((grant, until)) =
            ctx.leases
                .grant(&name, epoch, g.policy().failover_timeout, received)
    {
        ctx.out.sends.push((
            session_id,
            ToAgent::Ack {
                seq,
                grants: vec![grant],
            },
        ));
        g.extend_lease(until);
    }
    if let Some(reply) = switchover.and_then(|s| s.reply) {
        sync_group(g, ctx);
        let view = group_view(g, ctx.nodes, ctx.now);
        ctx.out.replies.push((reply, Ok(AdminReply::Group(view))));
    }
}

/// A switchover's first half: tell the primary to step down with a new
/// epoch and stop extending its lease.
fn step_down(g: &mut Group, ctx: &mut Ctx<'_>) {
    let Ok((from, epoch)) = g.step_down(ctx.now.mono) else {
        return epoch_exhausted(g, ctx);
    };
    let (reason, actor) = match &g.switchover {
        Some(sw) => (
            format!(
                "{}: moving the role to {}, waiting for {from} to step down",
                sw.reason, sw.target
            ),
            sw.actor.clone(),
        ),
        None => (
            format!("{from} steps down; nobody qualifies to take over"),
            COORDINATOR.to_owned(),
        ),
    };
    let name = g.name().to_owned();
    ctx.event(NewEvent {
        group: &name,
        kind: EventKind::SteppingDown,
        epoch,
        old_primary: Some(&from),
        new_primary: None,
        reason,
        actor: &actor,
    });
}

/// A stepping-down primary confirmed: its lease no longer matters.
pub(super) fn confirm_step_down(g: &mut Group, ctx: &mut Ctx<'_>, node: &str) {
    g.end_step_down(format!("{node} stepped down"), ctx.now.wall_ms);
    let name = g.name().to_owned();
    ctx.event(NewEvent {
        group: &name,
        kind: EventKind::StepDownConfirmed,
        epoch: g.epoch(),
        old_primary: Some(node),
        new_primary: None,
        reason: format!("{node} ran its step-down hook and stopped acting as primary"),
        actor: COORDINATOR,
    });
    reconcile(g, ctx);
}

/// The primary stepped down on its own (its agent is stopping, with no
/// shutdown grace): replace it at once, without waiting for its lease.
pub(super) fn primary_stepped_down(g: &mut Group, ctx: &mut Ctx<'_>, node: &str) {
    g.release_lease();
    let mut wake = Wake::default();
    replace(g, ctx, node, Cause::SteppedDown, &mut wake);
    finish(g, ctx, wake);
}

/// Raises an alarm once for the situation `message` describes.
pub(super) fn alarm(g: &mut Group, ctx: &mut Ctx<'_>, message: String) {
    if g.alarm.as_ref() == Some(&message) {
        return;
    }
    g.alarm = Some(message.clone());
    let name = g.name().to_owned();
    let primary = g.primary().map(str::to_owned);
    tracing::warn!(group = %name, epoch = g.epoch(), "ALARM: {message}");
    ctx.event(NewEvent {
        group: &name,
        kind: EventKind::Alarm,
        epoch: g.epoch(),
        old_primary: primary.as_deref(),
        new_primary: None,
        reason: message,
        actor: COORDINATOR,
    });
}

/// The epoch cannot grow any further (never in practice: claims from
/// agents are bounded, see `sessions.rs::check_claim`). Nothing changes;
/// an operator must re-create the group under a new name.
fn epoch_exhausted(g: &mut Group, ctx: &mut Ctx<'_>) {
    let message = format!(
        "group {}'s epoch cannot grow any further: create the group again under another name",
        g.name()
    );
    alarm(g, ctx, message);
}

/// Who fills a vacancy, never keeping it open for ranking's sake: the
/// first member that qualifies; else the first that can serve, recently
/// failed or not — one whose promote hook failed only once its retry is
/// due.
pub(super) fn vacancy_candidate(
    g: &Group,
    nodes: &Nodes,
    exclude: Option<&str>,
    now: Now,
    wake: &mut Wake,
) -> Option<String> {
    if let Some(best) = first_candidate(g, nodes, exclude, now, wake) {
        return Some(best);
    }
    g.members()
        .iter()
        .filter(|m| Some(m.as_str()) != exclude)
        .filter(|m| eligible(g, nodes, m, now))
        .filter(|m| !sync_lag::too_stale(g, nodes, m, exclude, now))
        .find(|m| match g.hook_retry_at(m, MIN_HOOK_RETRY) {
            Some(at) if now.mono < at => {
                wake.at(at);
                false
            }
            _ => true,
        })
        .cloned()
}

/// The first member in priority order that qualifies for an automatic
/// promotion.
pub(super) fn first_candidate(
    g: &Group,
    nodes: &Nodes,
    exclude: Option<&str>,
    now: Now,
    wake: &mut Wake,
) -> Option<String> {
    g.members()
        .iter()
        .filter(|m| Some(m.as_str()) != exclude)
        .filter(|m| !sync_lag::too_stale(g, nodes, m, exclude, now))
        .find(|m| qualifies(g, nodes, m, now, wake))
        .cloned()
}

/// Can serve, and not a member that failed here recently.
fn qualifies(g: &Group, nodes: &Nodes, node: &str, now: Now, wake: &mut Wake) -> bool {
    if !eligible(g, nodes, node, now) {
        return false;
    }
    match requalifies_at(g, nodes, node, now) {
        Some(at) if now.mono < at => {
            wake.at(at);
            false
        }
        _ => true,
    }
}

/// For a member that failed here: when it qualifies again — once it has
/// been healthy for `failback_delay` since. `None` if it has no failure on
/// record.
pub(super) fn requalifies_at(g: &Group, nodes: &Nodes, node: &str, now: Now) -> Option<Instant> {
    let failed_at = *g.failed.get(node)?;
    let healthy_since = nodes
        .get(node)
        .and_then(|n| n.healthy_since(g.name()))
        .unwrap_or(now.mono);
    Some(failed_at.max(healthy_since) + g.policy().failback_delay)
}

/// Failed here and not yet healthy for `failback_delay` since.
pub(super) fn recently_failed(g: &Group, nodes: &Nodes, node: &str, now: Now) -> bool {
    requalifies_at(g, nodes, node, now).is_some_and(|at| now.mono < at)
}

/// Whether `node` can serve: a member that is connected (heard from within
/// the failover timeout), passes its health checks and is not in
/// maintenance. An operator may put the role on any such member.
pub(super) fn eligible(g: &Group, nodes: &Nodes, node: &str, now: Now) -> bool {
    let Some(n) = nodes.get(node) else {
        return false;
    };
    g.is_member(node)
        && !g.in_maintenance(node)
        && n.heard_within(now.mono, g.policy().failover_timeout)
        && n.passes_checks(g.name())
}

/// What `node` should be told about group `g` right now.
pub(super) fn assignment_for(g: &Group, nodes: &Nodes, node: &str) -> Assignment {
    let policy = g.policy();
    let primary_peer = g
        .primary()
        .and_then(|p| nodes.get(p))
        .filter(|p| p.session.is_some())
        .and_then(|p| p.peer_address.clone());
    Assignment {
        group: g.name().to_owned(),
        epoch: g.epoch(),
        role: if g.primary() == Some(node) {
            Role::Primary
        } else {
            Role::Secondary
        },
        primary: g.primary().map(str::to_owned),
        standby_mode: policy.standby_mode,
        fencing: policy.fencing,
        shutdown_grace: policy.shutdown_grace,
        primary_peer,
    }
}

/// Sends `node` its assignment for `g` if it has a session and the
/// assignment differs from the last one it was sent.
pub(super) fn send_assignment(g: &Group, nodes: &mut Nodes, node: &str, out: &mut Effects) {
    let assignment = assignment_for(g, nodes, node);
    let Some(session) = nodes.get_mut(node).and_then(|n| n.session.as_mut()) else {
        return;
    };
    if session.sent.get(g.name()) != Some(&assignment) {
        session.sent.insert(g.name().to_owned(), assignment.clone());
        out.sends
            .push((session.id, ToAgent::Assignment(assignment)));
    }
}

/// Tells every connected member its current assignment and refreshes the
/// group's phase.
pub(super) fn sync_group(g: &mut Group, ctx: &mut Ctx<'_>) {
    for member in g.members().to_vec() {
        send_assignment(g, ctx.nodes, &member, ctx.out);
    }
    refresh_phase(g, ctx);
}

/// What the group is doing, derived from its state.
pub(super) fn compute_phase(g: &Group, nodes: &Nodes, now: Now) -> Phase {
    match g.role() {
        // Active only while the instance that holds the role is connected:
        // nobody else can renew its lease.
        RoleState::Held { node, instance, .. } => {
            let connected = nodes.get(node).and_then(Node::instance);
            if connected.is_some() && connected == instance.as_deref() {
                Phase::Active
            } else {
                Phase::FailingOver
            }
        }
        RoleState::SteppingDown { .. } => Phase::FailingOver,
        RoleState::Vacant { .. } if g.lease_live(now.mono) => Phase::FailingOver,
        RoleState::Vacant { .. } if g.members().iter().all(|m| g.in_maintenance(m)) => {
            Phase::Maintenance
        }
        RoleState::Vacant { .. } => Phase::NoPrimary,
    }
}

/// Recomputes the phase; entering `no_primary` is recorded as an alarm.
pub(super) fn refresh_phase(g: &mut Group, ctx: &mut Ctx<'_>) {
    let phase = compute_phase(g, ctx.nodes, ctx.now);
    if phase == g.phase {
        return;
    }
    g.phase = phase;
    g.phase_since_ms = ctx.now.wall_ms;
    if phase == Phase::NoPrimary && g.epoch() > g.record().first_epoch {
        let name = g.name().to_owned();
        let last = g.last_primary.clone();
        let reason = if g.policy().auto_failover {
            "no member can serve (connected, passing its checks, not in maintenance, promote \
             hook not failing): nobody can be promoted; group show says why for each member"
                .to_owned()
        } else {
            format!(
                "nobody holds the role and auto-failover is off: nobody is promoted until an \
                 operator runs failoverctl group takeover {name}"
            )
        };
        ctx.event(NewEvent {
            group: &name,
            kind: EventKind::NoPrimary,
            epoch: g.epoch(),
            old_primary: last.as_deref(),
            new_primary: None,
            reason,
            actor: COORDINATOR,
        });
    }
}
