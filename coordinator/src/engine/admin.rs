//! Operators' commands: checked completely before anything changes, so a
//! refused command leaves the state exactly as it was.

use proto::names;

use super::decide::{self, eligible, first_candidate};
use super::group::{Group, Switchover};
use super::node::Node;
use super::views::group_view;
use super::*;

/// Most members a group may have. Failover groups are small; the bound also
/// keeps each stored record far below the size at which sled would move it
/// to a separate (unsynced) blob file.
pub(crate) const MAX_MEMBERS: usize = 64;

impl Engine {
    pub(super) fn on_admin(
        &mut self,
        reply: ReplyId,
        actor: &str,
        command: AdminCommand,
        now: Now,
        out: &mut Effects,
    ) {
        let result = match command {
            AdminCommand::CreateGroup {
                name,
                members,
                policy,
            } => self.create_group(name, members, &policy, actor, now, out),
            AdminCommand::ListGroups { after, limit } => Ok(AdminReply::Groups(
                self.groups
                    .range::<String, _>(after_bound(after.as_ref()))
                    .take(limit)
                    .map(|(_, g)| group_view(g, &self.nodes, now))
                    .collect(),
            )),
            AdminCommand::GetGroup { name } => self
                .group(&name)
                .map(|g| AdminReply::Group(group_view(g, &self.nodes, now))),
            AdminCommand::DeleteGroup { name } => self.delete_group(&name, actor, now, out),
            AdminCommand::AddMember {
                group,
                node,
                position,
            } => self.add_member(&group, &node, position, actor, now, out),
            AdminCommand::RemoveMember { group, node } => {
                self.remove_member(&group, &node, actor, now, out)
            }
            AdminCommand::MoveMember {
                group,
                node,
                position,
            } => self.move_member(&group, &node, position, actor, now, out),
            AdminCommand::Promote { group, to } => {
                let started = self.promote_to(&group, &to, reply, actor, now, out);
                return reply_later(reply, started, out);
            }
            AdminCommand::Takeover { group, to } => {
                let started = self.takeover(&group, to.as_deref(), reply, actor, now, out);
                return reply_later(reply, started, out);
            }
            AdminCommand::Restore { group } => {
                let started = self.restore(&group, reply, actor, now, out);
                return reply_later(reply, started, out);
            }
            AdminCommand::Drain { group, node } => {
                let started = self.drain(&group, &node, reply, actor, now, out);
                return reply_later(reply, started, out);
            }
            AdminCommand::Undrain { group, node } => self.undrain(&group, &node, actor, now, out),
            AdminCommand::UpdatePolicy { group, policy } => {
                self.update_policy(&group, &policy, actor, now, out)
            }
            AdminCommand::ListNodes { after, limit } => Ok(AdminReply::Nodes(self.node_views(
                after.as_ref(),
                limit,
                now,
            ))),
        };
        out.replies.push((reply, result));
    }

    fn group(&self, name: &str) -> Result<&Group, AdminError> {
        self.groups
            .get(name)
            .ok_or_else(|| AdminError::NotFound(format!("group {name} does not exist")))
    }

    /// The group, if `node` is one of its members.
    fn group_with(&self, group: &str, node: &str) -> Result<&Group, AdminError> {
        let g = self.group(group)?;
        if g.is_member(node) {
            Ok(g)
        } else {
            Err(AdminError::NotFound(format!(
                "{node} is not a member of group {group}"
            )))
        }
    }

    /// The group's current view, as most commands answer.
    fn view(&self, name: &str, now: Now) -> AdminResult {
        self.group(name)
            .map(|g| AdminReply::Group(group_view(g, &self.nodes, now)))
    }

    fn create_group(
        &mut self,
        name: String,
        members: Vec<String>,
        patch: &PolicyPatch,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        names::validate_group_name(&name).map_err(invalid)?;
        if members.is_empty() {
            return Err(AdminError::InvalidArgument(format!(
                "group {name} needs at least one member"
            )));
        }
        if members.len() > MAX_MEMBERS {
            return Err(AdminError::InvalidArgument(format!(
                "a group has at most {MAX_MEMBERS} members, got {}",
                members.len()
            )));
        }
        for (i, member) in members.iter().enumerate() {
            names::validate_node_id(member).map_err(invalid)?;
            if members[..i].contains(member) {
                return Err(AdminError::InvalidArgument(format!(
                    "{member} is listed twice as a member"
                )));
            }
        }
        if self.groups.contains_key(&name) {
            return Err(AdminError::AlreadyExists(format!(
                "group {name} already exists"
            )));
        }
        let policy = self.config.default_policy.merged(patch).map_err(invalid)?;

        let epoch = self.epoch_floors.get(&name).copied().unwrap_or(0);
        let record = GroupRecord {
            name: name.clone(),
            members: members.clone(),
            policy,
            primary: None,
            primary_instance: None,
            granted_ttl_max: None,
            epoch,
            first_epoch: epoch,
            maintenance: Vec::new(),
            created_unix_ms: now.wall_ms,
        };
        // Written whole now; later changes derive their writes.
        out.writes.push(Write::PutGroup(record.clone()));
        let mut g = Group::created(record, now.wall_ms);
        // A deleted group of this name may have left a primary that is cut
        // off and still acting: nobody is promoted before its lease ends,
        // unless it confirms its release (the hook it runs, at this epoch).
        if let Some(lease) = self
            .deleted_leases
            .remove(&name)
            .filter(|l| l.until > now.mono)
        {
            g.await_release(lease.holder, lease.until);
        }
        self.groups.insert(name.clone(), g);
        self.admin_event(
            &name,
            EventKind::GroupCreated,
            epoch,
            format!("created with members {}", members.join(", ")),
            actor,
            now,
            out,
        );
        for member in &members {
            self.join(&name, member, out);
        }
        self.reconcile(&name, now, out);
        self.view(&name, now)
    }

    fn delete_group(
        &mut self,
        name: &str,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        let g = self.group(name)?;
        let Some(epoch_floor) = g.epoch().checked_add(1) else {
            return Err(AdminError::FailedPrecondition(format!(
                "group {name}'s epoch cannot grow any further"
            )));
        };
        let Some(g) = self.groups.remove(name) else {
            return Err(AdminError::NotFound(format!("group {name} does not exist")));
        };
        if let Some(at) = g.timer {
            self.timers.remove(&(at, name.to_owned()));
        }
        // Its primary is released, but one that is cut off may act until
        // its lease ends: a group re-created under this name waits for it.
        if let Some(until) = g.lease_until().filter(|t| *t > now.mono) {
            let holder = match g.role() {
                group::RoleState::Held {
                    node,
                    instance: Some(instance),
                    ..
                }
                | group::RoleState::SteppingDown {
                    from: node,
                    instance: Some(instance),
                    ..
                } => Some((node.clone(), instance.clone())),
                _ => None,
            };
            self.deleted_leases.insert(
                name.to_owned(),
                DeletedLease {
                    until,
                    holder,
                    epoch_floor,
                },
            );
        }
        self.epoch_floors.insert(name.to_owned(), epoch_floor);
        out.writes.push(Write::DeleteGroup {
            name: name.to_owned(),
            epoch_floor,
            lease_ttl: g.record().lease_ttl_bound(),
        });
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::GroupDeleted,
                epoch: epoch_floor,
                old_primary: g.primary(),
                new_primary: None,
                reason: "group deleted".into(),
                actor,
            },
            now,
            out,
        );
        if let Some(reply) = g.switchover.as_ref().and_then(|s| s.reply) {
            out.replies.push((
                reply,
                Err(AdminError::Aborted(format!(
                    "group {name} was deleted during the switchover"
                ))),
            ));
        }
        for member in g.members() {
            self.leave(name, member, epoch_floor, "the group was deleted", out);
        }
        Ok(AdminReply::Deleted)
    }

    fn add_member(
        &mut self,
        group: &str,
        node: &str,
        position: Option<usize>,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        let g = self.group(group)?;
        names::validate_node_id(node).map_err(invalid)?;
        if g.is_member(node) {
            return Err(AdminError::AlreadyExists(format!(
                "{node} is already a member of group {group}"
            )));
        }
        let count = g.members().len();
        if count >= MAX_MEMBERS {
            return Err(AdminError::FailedPrecondition(format!(
                "group {group} already has the maximum of {MAX_MEMBERS} members"
            )));
        }
        let position = position.unwrap_or(count);
        if position > count {
            return Err(AdminError::InvalidArgument(format!(
                "position {position} is out of range: group {group} has {count} members, \
                 so use 0 to {count}"
            )));
        }
        self.change(
            group,
            EventKind::MemberAdded,
            format!("{node} added at position {position}"),
            actor,
            now,
            out,
            |g| g.insert_member(position, node),
        );
        self.join(group, node, out);
        self.reconcile(group, now, out);
        self.view(group, now)
    }

    fn remove_member(
        &mut self,
        group: &str,
        node: &str,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        let g = self.group_with(group, node)?;
        if g.primary() == Some(node) {
            return Err(AdminError::FailedPrecondition(format!(
                "{node} is the primary of group {group}: promote another member first \
                 (failoverctl group promote {group} --to NODE)"
            )));
        }
        let in_switchover = g.stepping_down() == Some(node)
            || g.switchover.as_ref().is_some_and(|s| s.target == node);
        if in_switchover {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover involving {node} is in progress in group {group}; try again \
                 when it is over"
            )));
        }
        if g.members().len() == 1 {
            return Err(AdminError::FailedPrecondition(format!(
                "{node} is the last member of group {group}: delete the group instead"
            )));
        }
        let epoch = g.epoch();
        self.change(
            group,
            EventKind::MemberRemoved,
            format!("{node} removed"),
            actor,
            now,
            out,
            |g| g.remove_member(node),
        );
        self.leave(
            group,
            node,
            epoch,
            "the node was removed from the group",
            out,
        );
        self.reconcile(group, now, out);
        self.view(group, now)
    }

    fn move_member(
        &mut self,
        group: &str,
        node: &str,
        position: usize,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        let len = self.group_with(group, node)?.members().len();
        if position >= len {
            return Err(AdminError::InvalidArgument(format!(
                "position {position} is out of range: group {group} has {len} members, \
                 so use 0 to {}",
                len.saturating_sub(1)
            )));
        }
        self.change(
            group,
            EventKind::MemberMoved,
            format!("{node} moved to position {position}"),
            actor,
            now,
            out,
            |g| g.move_member(node, position),
        );
        self.reconcile(group, now, out);
        self.view(group, now)
    }

    /// `group promote --to`: a planned switchover to an eligible member.
    fn promote_to(
        &mut self,
        group: &str,
        to: &str,
        reply: ReplyId,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> Result<Option<AdminReply>, AdminError> {
        self.group(group)?;
        names::validate_node_id(to).map_err(invalid)?;
        self.require_eligible(group, to, now)?;
        let reason = format!("switchover to {to} requested by {actor}");
        self.begin_switchover(group, to, reply, actor, reason, now, out)
    }

    /// `group takeover`: move the role to `to`, or to the first other member
    /// that qualifies, whatever the state of the current primary.
    fn takeover(
        &mut self,
        group: &str,
        to: Option<&str>,
        reply: ReplyId,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> Result<Option<AdminReply>, AdminError> {
        let g = self.group(group)?;
        let target = match to {
            Some(to) => {
                names::validate_node_id(to).map_err(invalid)?;
                self.require_eligible(group, to, now)?;
                to.to_owned()
            }
            None => successor(g, &self.nodes, g.primary(), now).ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "no other member of group {group} is connected, healthy and out of \
                     maintenance: nobody can take over"
                ))
            })?,
        };
        let reason = format!("takeover by {target} requested by {actor}");
        self.begin_switchover(group, &target, reply, actor, reason, now, out)
    }

    /// `group restore`: hand the role back to the highest-priority member
    /// that qualifies (can serve and has not failed recently: a restore is
    /// a voluntary move).
    fn restore(
        &mut self,
        group: &str,
        reply: ReplyId,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> Result<Option<AdminReply>, AdminError> {
        let g = self.group(group)?;
        let target =
            first_candidate(g, &self.nodes, None, now, &mut Wake::default()).ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "no member of group {group} is connected, healthy, out of maintenance and \
                     free of recent failures (group show says why for each; promote --to \
                     forces a member)"
                ))
            })?;
        let reason = format!(
            "restore to {target}, the highest-priority member that qualifies, requested by {actor}"
        );
        self.begin_switchover(group, &target, reply, actor, reason, now, out)
    }

    /// `group member drain`: maintenance for `node`; a draining primary is
    /// switched over first, and the command answers once it has been.
    fn drain(
        &mut self,
        group: &str,
        node: &str,
        reply: ReplyId,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> Result<Option<AdminReply>, AdminError> {
        let g = self.group_with(group, node)?;
        if g.in_maintenance(node) {
            return Ok(Some(AdminReply::Group(group_view(g, &self.nodes, now))));
        }
        if g.switchover.as_ref().is_some_and(|s| s.target == node) {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover to {node} is in progress in group {group}; try again when it is over"
            )));
        }
        let successor = if g.primary() == Some(node) {
            Some(successor(g, &self.nodes, Some(node), now).ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "{node} is the primary of group {group} and no other member can take over: \
                     draining it would leave the group without a primary"
                ))
            })?)
        } else {
            None
        };
        self.change(
            group,
            EventKind::MemberDrained,
            format!("{node} put in maintenance"),
            actor,
            now,
            out,
            |g| g.set_maintenance(node, true),
        );
        match successor {
            Some(target) => {
                let reason = format!("{node} is drained for maintenance by {actor}");
                self.begin_switchover(group, &target, reply, actor, reason, now, out)
            }
            None => {
                self.reconcile(group, now, out);
                self.view(group, now).map(Some)
            }
        }
    }

    fn undrain(
        &mut self,
        group: &str,
        node: &str,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        if self.group_with(group, node)?.in_maintenance(node) {
            self.change(
                group,
                EventKind::MemberUndrained,
                format!("{node} back from maintenance"),
                actor,
                now,
                out,
                |g| g.set_maintenance(node, false),
            );
            self.reconcile(group, now, out);
        }
        self.view(group, now)
    }

    /// `group set`: new settings for an existing group.
    fn update_policy(
        &mut self,
        group: &str,
        patch: &PolicyPatch,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        let g = self.group(group)?;
        if patch.is_empty() {
            return Err(AdminError::InvalidArgument(
                "nothing to change: give at least one setting (see failoverctl group set --help)"
                    .into(),
            ));
        }
        let policy = g.policy().merged(patch).map_err(invalid)?;
        // The same settings again change nothing: no write, no event.
        if &policy == g.policy() {
            return self.view(group, now);
        }
        let changes = describe_changes(g.policy(), &policy);
        let members = g.members().to_vec();
        self.change(
            group,
            EventKind::PolicyChanged,
            changes,
            actor,
            now,
            out,
            |g| g.set_policy(policy),
        );
        for member in &members {
            self.sync_settings(member, out);
        }
        self.reconcile(group, now, out);
        self.view(group, now)
    }

    fn require_eligible(&self, group: &str, node: &str, now: Now) -> Result<(), AdminError> {
        let g = self.group_with(group, node)?;
        if eligible(g, &self.nodes, node, now) {
            return Ok(());
        }
        let why = if g.in_maintenance(node) {
            "it is in maintenance (failoverctl group member undrain first)"
        } else {
            "it is not connected and healthy"
        };
        Err(AdminError::FailedPrecondition(format!(
            "{node} cannot be promoted: {why}"
        )))
    }

    /// Moves the role to `target` (stepping the current primary down first).
    /// `Ok(None)`: the reply comes when the promotion is durable.
    #[allow(clippy::too_many_arguments)]
    fn begin_switchover(
        &mut self,
        group: &str,
        target: &str,
        reply: ReplyId,
        actor: &str,
        reason: String,
        now: Now,
        out: &mut Effects,
    ) -> Result<Option<AdminReply>, AdminError> {
        let g = self.group(group)?;
        if g.primary() == Some(target) {
            return Ok(Some(AdminReply::Group(group_view(g, &self.nodes, now))));
        }
        if let Some(sw) = &g.switchover {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover of group {group} to {} is already in progress",
                sw.target
            )));
        }
        self.with_group(group, now, out, |g, ctx| {
            g.switchover = Some(Switchover {
                target: target.to_owned(),
                reply: Some(reply),
                actor: actor.to_owned(),
                reason,
            });
            decide::reconcile(g, ctx);
        });
        Ok(None)
    }

    /// An operator's change that does not move the role by itself: applies
    /// it and records it.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &mut self,
        group: &str,
        kind: EventKind,
        reason: String,
        actor: &str,
        now: Now,
        out: &mut Effects,
        apply: impl FnOnce(&mut Group),
    ) {
        self.with_group(group, now, out, |g, ctx| {
            apply(g);
            let name = g.name().to_owned();
            ctx.event(NewEvent {
                group: &name,
                kind,
                epoch: g.epoch(),
                old_primary: None,
                new_primary: None,
                reason,
                actor,
            });
        });
    }

    /// Records that `node` is a member of `group` and tells it.
    fn join(&mut self, group: &str, node: &str, out: &mut Effects) {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(Node::new)
            .groups
            .insert(group.to_owned());
        self.sync_settings(node, out);
    }

    /// Forgets that `node` is a member of `group` and releases it.
    fn leave(&mut self, group: &str, node: &str, epoch: u64, reason: &str, out: &mut Effects) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.groups.remove(group);
        if let Some(s) = n.session.as_mut() {
            s.sent.remove(group);
            out.sends.push((
                s.id,
                ToAgent::Release {
                    group: group.to_owned(),
                    epoch,
                    reason: reason.to_owned(),
                },
            ));
        }
        if n.groups.is_empty() && n.session.is_none() {
            self.nodes.remove(node);
        } else {
            self.sync_settings(node, out);
        }
    }

    /// Records an operator's change that does not move the role.
    #[allow(clippy::too_many_arguments)]
    fn admin_event(
        &mut self,
        group: &str,
        kind: EventKind,
        epoch: u64,
        reason: String,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) {
        self.record_event(
            NewEvent {
                group,
                kind,
                epoch,
                old_primary: None,
                new_primary: None,
                reason,
                actor,
            },
            now,
            out,
        );
    }
}

/// Answers now, unless a switchover was started: its promotion answers.
fn reply_later(reply: ReplyId, started: Result<Option<AdminReply>, AdminError>, out: &mut Effects) {
    match started {
        Ok(None) => {}
        Ok(Some(done)) => out.replies.push((reply, Ok(done))),
        Err(e) => out.replies.push((reply, Err(e))),
    }
}

/// Who an operator's move hands the role to, other than `exclude`: the
/// first member that qualifies, or else the first that can serve (an
/// operator may override a recent failure).
fn successor(g: &Group, nodes: &node::Nodes, exclude: Option<&str>, now: Now) -> Option<String> {
    first_candidate(g, nodes, exclude, now, &mut Wake::default()).or_else(|| {
        g.members()
            .iter()
            .filter(|m| Some(m.as_str()) != exclude)
            .filter(|m| eligible(g, nodes, m, now))
            .find(|m| !super::sync_lag::too_stale(g, nodes, m, exclude, now))
            .cloned()
    })
}

/// "failover-timeout 3s -> 1s, failback never -> delayed"
fn describe_changes(old: &Policy, new: &Policy) -> String {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return "settings changed".into();
    };
    let mut changes = Vec::new();
    if let (Some(old), Some(new)) = (old.as_object(), new.as_object()) {
        for (key, value) in new {
            if old.get(key) != Some(value) {
                let show = |v: Option<&serde_json::Value>| match v {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => "none".into(),
                    Some(v) => v.to_string(),
                };
                changes.push(format!(
                    "{} {} -> {}",
                    key.replace('_', "-"),
                    show(old.get(key)),
                    show(Some(value))
                ));
            }
        }
    }
    if changes.is_empty() {
        "settings unchanged".into()
    } else {
        changes.join(", ")
    }
}

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::InvalidArgument(e.to_string())
}

/// The range of names after `after` (all of them without one).
pub(super) fn after_bound(
    after: Option<&String>,
) -> (std::ops::Bound<&String>, std::ops::Bound<&String>) {
    use std::ops::Bound;
    match after {
        Some(name) => (Bound::Excluded(name), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}
