//! What the store durably holds, as last committed. The runtime keeps it
//! beside the engine so that when a commit fails (a full disk), the groups
//! that batch would have changed go back to exactly what is on disk
//! ([`Engine::forget_unwritten`]) and nothing unwritten is ever announced.

use std::collections::{BTreeSet, HashMap};

use std::time::Duration;

use tokio::time::Instant;

use super::group::Group;
use super::node::Node;
use super::{AdminError, DeletedLease, Effects, Engine, Now, Recovered, ToAgent, Write, decide};
use crate::model::GroupRecord;

/// The durable groups, epoch floors and event numbering.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    groups: HashMap<String, GroupRecord>,
    /// A deleted group's epoch floor and the longest lease its primary may
    /// have held (unknown for floors written before that was kept).
    floors: HashMap<String, (u64, Option<Duration>)>,
    next_event_seq: u64,
}

impl Durable {
    /// What the store held at start-up.
    pub fn of(recovered: &Recovered) -> Durable {
        Durable {
            groups: recovered
                .groups
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            floors: recovered
                .epoch_floors
                .iter()
                .map(|(name, floor)| {
                    (
                        name.clone(),
                        (*floor, recovered.deleted_ttls.get(name).copied()),
                    )
                })
                .collect(),
            next_event_seq: recovered.next_event_seq,
        }
    }

    /// Takes in a batch the store committed.
    pub fn committed(&mut self, writes: &[Write]) {
        for write in writes {
            match write {
                Write::PutGroup(record) => {
                    self.groups.insert(record.name.clone(), record.clone());
                }
                Write::DeleteGroup {
                    name,
                    epoch_floor,
                    lease_ttl,
                } => {
                    self.groups.remove(name);
                    self.floors
                        .insert(name.clone(), (*epoch_floor, Some(*lease_ttl)));
                }
                Write::Event(event) => {
                    self.next_event_seq = self.next_event_seq.max(event.seq.saturating_add(1));
                }
                Write::Cursor { .. } => {}
            }
        }
    }

    /// The groups a batch changes.
    pub fn touched_by(writes: &[Write]) -> BTreeSet<String> {
        writes
            .iter()
            .filter_map(|w| match w {
                Write::PutGroup(record) => Some(record.name.clone()),
                Write::DeleteGroup { name, .. } => Some(name.clone()),
                Write::Event(_) | Write::Cursor { .. } => None,
            })
            .collect()
    }
}

impl Engine {
    /// Takes back a batch the store could not write (a full disk): returns
    /// what of `out` may still be done. Nothing that needs the batch's
    /// writes is told — its admin calls are answered with `why` (nothing
    /// was changed), the assignments, releases and lease grants of the
    /// groups it changed are dropped — and those groups go back to their
    /// durable records with their leases assumed live for a full wait,
    /// exactly as at a start (so invariant 1 holds for the same reason);
    /// their connected members are told their durable assignment again. A
    /// switchover waiting in such a group is answered with `why`. Events
    /// that were not written are numbered again. Grants of other groups,
    /// settings and closes go out as usual, so primaries of unchanged
    /// groups keep their leases while the store recovers.
    pub fn forget_unwritten(
        &mut self,
        durable: &Durable,
        out: Effects,
        why: &str,
        now: Now,
    ) -> Effects {
        let names = Durable::touched_by(&out.writes);
        let Effects {
            writes: _,
            sends,
            closes,
            refusals,
            replies,
            promotions: _,
        } = out;
        let sends = sends
            .into_iter()
            .filter_map(|(session, message)| match message {
                ToAgent::Assignment(a) if names.contains(&a.group) => None,
                ToAgent::Release { group, .. } if names.contains(&group) => None,
                ToAgent::Ack { seq, grants } => Some((
                    session,
                    ToAgent::Ack {
                        seq,
                        grants: grants
                            .into_iter()
                            .filter(|g| !names.contains(&g.group))
                            .collect(),
                    },
                )),
                other => Some((session, other)),
            })
            .collect();
        let mut kept = Effects {
            sends,
            closes,
            refusals,
            replies: replies
                .into_iter()
                .map(|(id, _)| (id, Err(AdminError::Unavailable(why.to_owned()))))
                .collect(),
            ..Effects::default()
        };
        self.events.next_seq = durable.next_event_seq;
        for name in &names {
            self.restore_group(durable, name, why, now, &mut kept);
        }
        self.nodes
            .retain(|_, n| !n.groups.is_empty() || n.session.is_some());
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for node in nodes {
            self.sync_settings(&node, &mut kept);
        }
        // Nothing here changed a record: what it restored is what is on
        // disk.
        self.touched.clear();
        kept.writes.clear();
        kept
    }

    /// Puts group `name` back as the store holds it (or removes it).
    fn restore_group(
        &mut self,
        durable: &Durable,
        name: &String,
        why: &str,
        now: Now,
        out: &mut Effects,
    ) {
        if let Some(g) = self.groups.remove(name) {
            if let Some(at) = g.timer {
                self.timers.remove(&(at, name.clone()));
            }
            for member in g.members() {
                if let Some(n) = self.nodes.get_mut(member) {
                    n.groups.remove(name);
                    if let Some(s) = n.session.as_mut() {
                        s.sent.remove(name);
                    }
                }
            }
            if let Some(reply) = g.switchover.as_ref().and_then(|s| s.reply) {
                out.replies
                    .push((reply, Err(AdminError::Unavailable(why.to_owned()))));
            }
        }
        match durable.floors.get(name) {
            Some(&(floor, ttl)) => {
                self.epoch_floors.insert(name.clone(), floor);
                let ttl = ttl.unwrap_or(self.lease_fallback);
                self.deleted_leases.insert(
                    name.clone(),
                    DeletedLease {
                        until: self.leases.after_start(ttl, now.mono),
                        holder: None,
                        epoch_floor: floor,
                    },
                );
            }
            None => {
                self.epoch_floors.remove(name);
                self.deleted_leases.remove(name);
            }
        }
        let Some(record) = durable.groups.get(name) else {
            return;
        };
        for member in &record.members {
            self.nodes
                .entry(member.clone())
                .or_insert_with(Node::new)
                .groups
                .insert(name.clone());
        }
        let until: Instant = self.leases.after_start(record.lease_ttl_bound(), now.mono);
        let mut g = Group::recovered(record.clone(), until, now.wall_ms);
        g.hold_vacancy(until, "the store could not write: trying again");
        self.groups.insert(name.clone(), g);
        self.with_group(name, now, out, decide::sync_group);
    }
}
