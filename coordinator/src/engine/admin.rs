//! Operators' commands: checked completely before anything changes, so a
//! refused command leaves the state exactly as it was.

use proto::names;

use super::*;

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
                match self.start_switchover(&group, &to, reply, actor, now, out) {
                    // The reply comes when the promotion is durable.
                    Ok(None) => return,
                    Ok(Some(done)) => Ok(done),
                    Err(e) => Err(e),
                }
            }
            AdminCommand::ListNodes => Ok(AdminReply::Nodes(self.node_views(now))),
        };
        out.replies.push((reply, result));
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

        let record = GroupRecord {
            name: name.clone(),
            members: members.clone(),
            policy,
            primary: None,
            epoch: self.epoch_floors.get(&name).copied().unwrap_or(0),
            created_unix_ms: now.wall_ms,
        };
        out.writes.push(Write::PutGroup(record.clone()));
        let epoch = record.epoch;
        self.groups.insert(name.clone(), Group::new(record, now));
        self.record_event(
            NewEvent {
                group: &name,
                kind: EventKind::GroupCreated,
                epoch,
                old_primary: None,
                new_primary: None,
                reason: format!("created with members {}", members.join(", ")),
                actor,
            },
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
        self.set_lease_until(name, None);
        let g = self.groups.remove(name).expect("checked above");
        let epoch_floor = g.record.epoch + 1;
        self.epoch_floors.insert(name.to_owned(), epoch_floor);
        out.writes.push(Write::DeleteGroup {
            name: name.to_owned(),
            epoch_floor,
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
        if let Some(sw) = g.switchover {
            out.replies.push((
                sw.reply,
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
        self.record_event(
            NewEvent {
                group,
                kind: EventKind::MemberAdded,
                epoch,
                old_primary: None,
                new_primary: None,
                reason: format!("{node} added at position {position}"),
                actor,
            },
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
        let in_switchover = g.stepping_down.as_deref() == Some(node)
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
        out.writes.push(Write::PutGroup(g.record.clone()));
        let epoch = g.record.epoch;
        self.record_event(
            NewEvent {
                group,
                kind: EventKind::MemberRemoved,
                epoch,
                old_primary: None,
                new_primary: None,
                reason: format!("{node} removed"),
                actor,
            },
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
        self.record_event(
            NewEvent {
                group,
                kind: EventKind::MemberMoved,
                epoch,
                old_primary: None,
                new_primary: None,
                reason: format!("{node} moved to position {position}"),
                actor,
            },
            now,
            out,
        );
        self.reconcile(group, now, out);
        Ok(AdminReply::Group(self.group_view(group, now)))
    }

    /// Starts a planned switchover. `Ok(None)`: the reply will come when
    /// the promotion is durable.
    fn start_switchover(
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
        let g = &self.groups[group];
        if g.record.primary.as_deref() == Some(to) {
            return Ok(Some(AdminReply::Group(self.group_view(group, now))));
        }
        if let Some(sw) = &g.switchover {
            return Err(AdminError::FailedPrecondition(format!(
                "a switchover of group {group} to {} is already in progress",
                sw.target
            )));
        }
        if !self.eligible(group, to, now) {
            return Err(AdminError::FailedPrecondition(format!(
                "{to} cannot be promoted: it is not connected and healthy"
            )));
        }
        self.groups
            .get_mut(group)
            .expect("checked above")
            .switchover = Some(Switchover {
            target: to.to_owned(),
            reply,
            actor: actor.to_owned(),
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

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::InvalidArgument(e.to_string())
}
