//! Operators' commands: checked completely before anything changes, so a
//! refused command leaves the state exactly as it was.

use proto::names;

use super::*;
use crate::policy::Policy;

/// Most members a group may have. Failover groups are small; the bound also
/// keeps each stored record far below the size at which sled would move it
/// to a separate (unsynced) blob file.
pub const MAX_MEMBERS: usize = 64;

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
            AdminCommand::ListGroups => Ok(AdminReply::Groups(
                self.groups
                    .keys()
                    .map(|name| self.group_view(name, now))
                    .collect(),
            )),
            AdminCommand::GetGroup { name } => self
                .existing(&name)
                .map(|()| AdminReply::Group(self.group_view(&name, now))),
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
                return self.reply_later(reply, started, out);
            }
            AdminCommand::Takeover { group, to } => {
                let started = self.takeover(&group, to.as_deref(), reply, actor, now, out);
                return self.reply_later(reply, started, out);
            }
            AdminCommand::Restore { group } => {
                let started = self.restore(&group, reply, actor, now, out);
                return self.reply_later(reply, started, out);
            }
            AdminCommand::Drain { group, node } => {
                let started = self.drain(&group, &node, reply, actor, now, out);
                return self.reply_later(reply, started, out);
            }
            AdminCommand::Undrain { group, node } => self.undrain(&group, &node, actor, now, out),
            AdminCommand::UpdatePolicy { group, policy } => {
                self.update_policy(&group, &policy, actor, now, out)
            }
            AdminCommand::ListNodes => Ok(AdminReply::Nodes(self.node_views(now))),
        };
        out.replies.push((reply, result));
    }

    /// Answers now, unless a switchover was started: its promotion answers.
    fn reply_later(
        &mut self,
        reply: ReplyId,
        started: Result<Option<AdminReply>, AdminError>,
        out: &mut Effects,
    ) {
        match started {
            Ok(None) => {}
            Ok(Some(done)) => out.replies.push((reply, Ok(done))),
            Err(e) => out.replies.push((reply, Err(e))),
        }
    }

    fn existing(&self, name: &str) -> Result<(), AdminError> {
        if self.groups.contains_key(name) {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!("group {name} does not exist")))
        }
    }

    fn member_of(&self, group: &str, node: &str) -> Result<(), AdminError> {
        self.existing(group)?;
        if self.groups[group].record.members.iter().any(|m| m == node) {
            Ok(())
        } else {
            Err(AdminError::NotFound(format!(
                "{node} is not a member of group {group}"
            )))
        }
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
        out.writes.push(Write::PutGroup(record.clone()));
        let epoch = record.epoch;
        self.groups.insert(name.clone(), Group::new(record, now));
        if let Some(lease) = self
            .deleted_leases
            .remove(&name)
            .filter(|l| l.until > now.mono)
        {
            // Its step-down (the hook it runs on release, at this epoch)
            // ends the wait, like any confirmed step-down.
            if let Some(g) = self.groups.get_mut(&name) {
                g.stepping_down = lease.holder.map(|(node, instance)| (node, Some(instance)));
            }
            self.set_lease_until(&name, Some(lease.until));
        }
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
        Ok(AdminReply::Group(self.group_view(&name, now)))
    }

    fn delete_group(
        &mut self,
        name: &str,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        self.existing(name)?;
        let Some(epoch_floor) = self.groups[name].record.epoch.checked_add(1) else {
            return Err(AdminError::FailedPrecondition(format!(
                "group {name}'s epoch cannot grow any further"
            )));
        };
        // Its primary is released, but one that is cut off may act until
        // its lease ends: a group re-created under this name waits for it.
        let lease_until = self.groups[name].lease_until;
        let lease_ttl = self.groups[name].record.lease_ttl_bound();
        self.set_lease_until(name, None);
        let g = self.groups.remove(name).expect("checked above");
        if let Some(until) = lease_until.filter(|t| *t > now.mono) {
            let holder = match (
                &g.record.primary,
                &g.record.primary_instance,
                &g.stepping_down,
            ) {
                (Some(node), Some(instance), _) => Some((node.clone(), instance.clone())),
                (None, _, Some((node, Some(instance)))) => Some((node.clone(), instance.clone())),
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
            lease_ttl,
        });
        self.record_event(
            NewEvent {
                group: name,
                kind: EventKind::GroupDeleted,
                epoch: epoch_floor,
                old_primary: g.record.primary.as_deref(),
                new_primary: None,
                reason: "group deleted".into(),
                actor,
            },
            now,
            out,
        );
        if let Some(reply) = g.switchover.and_then(|s| s.reply) {
            out.replies.push((
                reply,
                Err(AdminError::Aborted(format!(
                    "group {name} was deleted during the switchover"
                ))),
            ));
        }
        for member in &g.record.members {
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
        self.existing(group)?;
        names::validate_node_id(node).map_err(invalid)?;
        let members = &self.groups[group].record.members;
        if members.iter().any(|m| m == node) {
            return Err(AdminError::AlreadyExists(format!(
                "{node} is already a member of group {group}"
            )));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(AdminError::FailedPrecondition(format!(
                "group {group} already has the maximum of {MAX_MEMBERS} members"
            )));
        }
        let position = position.unwrap_or(members.len());
        if position > members.len() {
            return Err(AdminError::InvalidArgument(format!(
                "position {position} is out of range: group {group} has {} members, \
                 so use 0 to {}",
                members.len(),
                members.len()
            )));
        }
        let g = self.groups.get_mut(group).expect("checked above");
        g.record.members.insert(position, node.to_owned());
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        self.admin_event(
            group,
            EventKind::MemberAdded,
            epoch,
            format!("{node} added at position {position}"),
            actor,
            now,
            out,
        );
        self.join(group, node, out);
        self.reconcile(group, now, out);
        Ok(AdminReply::Group(self.group_view(group, now)))
    }

    fn remove_member(
        &mut self,
        group: &str,
        node: &str,
        actor: &str,
        now: Now,
        out: &mut Effects,
    ) -> AdminResult {
        self.member_of(group, node)?;
        let g = &self.groups[group];
        if g.record.primary.as_deref() == Some(node) {
            return Err(AdminError::FailedPrecondition(format!(
                "{node} is the primary of group {group}: promote another member first \
                 (failoverctl group promote {group} --to NODE)"
            )));
        }
        let in_switchover = g.stepping_down.as_ref().is_some_and(|(n, _)| n == node)
            || g.switchover.as_ref().is_some_and(|s| s.target == node);
        if in_switchover {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover involving {node} is in progress in group {group}; try again \
                 when it is over"
            )));
        }
        if g.record.members.len() == 1 {
            return Err(AdminError::FailedPrecondition(format!(
                "{node} is the last member of group {group}: delete the group instead"
            )));
        }
        let g = self.groups.get_mut(group).expect("checked above");
        g.record.members.retain(|m| m != node);
        g.record.maintenance.retain(|m| m != node);
        g.failed.remove(node);
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        self.admin_event(
            group,
            EventKind::MemberRemoved,
            epoch,
            format!("{node} removed"),
            actor,
            now,
            out,
        );
        self.leave(
            group,
            node,
            epoch,
            "the node was removed from the group",
            out,
        );
        self.reconcile(group, now, out);
        Ok(AdminReply::Group(self.group_view(group, now)))
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
        self.member_of(group, node)?;
        let g = self.groups.get_mut(group).expect("checked above");
        let len = g.record.members.len();
        if position >= len {
            return Err(AdminError::InvalidArgument(format!(
                "position {position} is out of range: group {group} has {len} members, \
                 so use 0 to {}",
                len - 1
            )));
        }
        g.record.members.retain(|m| m != node);
        g.record.members.insert(position, node.to_owned());
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        self.admin_event(
            group,
            EventKind::MemberMoved,
            epoch,
            format!("{node} moved to position {position}"),
            actor,
            now,
            out,
        );
        self.reconcile(group, now, out);
        Ok(AdminReply::Group(self.group_view(group, now)))
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
        self.existing(group)?;
        names::validate_node_id(to).map_err(invalid)?;
        self.member_of(group, to)?;
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
        self.existing(group)?;
        let target = match to {
            Some(to) => {
                names::validate_node_id(to).map_err(invalid)?;
                self.member_of(group, to)?;
                self.require_eligible(group, to, now)?;
                to.to_owned()
            }
            None => {
                let current = self.groups[group].record.primary.clone();
                self.successor(group, current.as_deref(), now)
                    .ok_or_else(|| {
                        AdminError::FailedPrecondition(format!(
                            "no other member of group {group} is connected, healthy and out of \
                             maintenance: nobody can take over"
                        ))
                    })?
            }
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
        self.existing(group)?;
        let target = self
            .first_candidate(group, None, now, &mut Wake::default())
            .ok_or_else(|| {
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
        self.member_of(group, node)?;
        let g = &self.groups[group];
        if g.record.in_maintenance(node) {
            return Ok(Some(AdminReply::Group(self.group_view(group, now))));
        }
        if g.switchover.as_ref().is_some_and(|s| s.target == node) {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover to {node} is in progress in group {group}; try again when it is over"
            )));
        }
        let is_primary = g.record.primary.as_deref() == Some(node);
        let successor = if is_primary {
            Some(self.successor(group, Some(node), now).ok_or_else(|| {
                AdminError::FailedPrecondition(format!(
                    "{node} is the primary of group {group} and no other member can take over: \
                     draining it would leave the group without a primary"
                ))
            })?)
        } else {
            None
        };
        let g = self.groups.get_mut(group).expect("checked above");
        g.record.maintenance.push(node.to_owned());
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        self.admin_event(
            group,
            EventKind::MemberDrained,
            epoch,
            format!("{node} put in maintenance"),
            actor,
            now,
            out,
        );
        match successor {
            Some(target) => {
                let reason = format!("{node} is drained for maintenance by {actor}");
                self.begin_switchover(group, &target, reply, actor, reason, now, out)
            }
            None => {
                self.reconcile(group, now, out);
                Ok(Some(AdminReply::Group(self.group_view(group, now))))
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
        self.member_of(group, node)?;
        let g = self.groups.get_mut(group).expect("checked above");
        if g.record.in_maintenance(node) {
            g.record.maintenance.retain(|m| m != node);
            out.writes.push(Write::PutGroup(g.record.clone()));
            let epoch = g.record.epoch;
            self.admin_event(
                group,
                EventKind::MemberUndrained,
                epoch,
                format!("{node} back from maintenance"),
                actor,
                now,
                out,
            );
            self.reconcile(group, now, out);
        }
        Ok(AdminReply::Group(self.group_view(group, now)))
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
        self.existing(group)?;
        if patch.is_empty() {
            return Err(AdminError::InvalidArgument(
                "nothing to change: give at least one setting (see failoverctl group set --help)"
                    .into(),
            ));
        }
        let g = self.groups.get_mut(group).expect("checked above");
        let policy = g.record.policy.merged(patch).map_err(invalid)?;
        let changes = describe_changes(&g.record.policy, &policy);
        // A lease granted under the old timeout keeps its length.
        g.record.granted_ttl_max = Some(g.record.lease_ttl_bound().max(policy.failover_timeout));
        g.record.policy = policy;
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        let members = g.record.members.clone();
        self.admin_event(
            group,
            EventKind::PolicyChanged,
            epoch,
            changes,
            actor,
            now,
            out,
        );
        for member in &members {
            self.sync_settings(member, out);
        }
        self.reconcile(group, now, out);
        Ok(AdminReply::Group(self.group_view(group, now)))
    }

    /// Who an operator's move hands the role to, other than `exclude`: the
    /// first member that qualifies, or else the first that is merely
    /// eligible (an operator may override a recent failure).
    fn successor(&self, group: &str, exclude: Option<&str>, now: Now) -> Option<String> {
        self.first_candidate(group, exclude, now, &mut Wake::default())
            .or_else(|| {
                self.groups[group]
                    .record
                    .members
                    .iter()
                    .filter(|m| Some(m.as_str()) != exclude)
                    .find(|m| self.eligible(group, m, now))
                    .cloned()
            })
    }

    fn require_eligible(&self, group: &str, node: &str, now: Now) -> Result<(), AdminError> {
        if self.eligible(group, node, now) {
            return Ok(());
        }
        let why = if self.groups[group].record.in_maintenance(node) {
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
        let g = &self.groups[group];
        if g.record.primary.as_deref() == Some(target) {
            return Ok(Some(AdminReply::Group(self.group_view(group, now))));
        }
        if let Some(sw) = &g.switchover {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover of group {group} to {} is already in progress",
                sw.target
            )));
        }
        self.groups
            .get_mut(group)
            .expect("checked above")
            .switchover = Some(Switchover {
            target: target.to_owned(),
            reply: Some(reply),
            actor: actor.to_owned(),
            reason,
        });
        self.reconcile(group, now, out);
        Ok(None)
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
}

/// "failover-timeout 3s -> 1s, failback never -> delayed"
fn describe_changes(old: &Policy, new: &Policy) -> String {
    let (old, new) = (
        serde_json::to_value(old).expect("policy serializes"),
        serde_json::to_value(new).expect("policy serializes"),
    );
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

impl Engine {
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

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::InvalidArgument(e.to_string())
}
