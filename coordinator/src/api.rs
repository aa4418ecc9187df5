//! The one API in front of the runtime, whatever the transport: typed calls
//! that say who is asking (an [`Actor`]) and answer views or typed errors.
//! Every call is checked against the caller's role here (see `auth.rs`),
//! so every front end enforces the same rules.
//! The gRPC admin service (`admin.rs`) is a thin conversion layer over it;
//! any other front end (REST, a status page) uses the same calls, so it
//! gets the same checks, errors and event records.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::Access;
use crate::cluster::Cluster;
use crate::engine::{AdminCommand, AdminError, AdminReply, GroupView, NodeView};
use crate::leadership::NotLeader;
use crate::model::EventRecord;
use crate::policy::PolicyPatch;
use crate::runtime::Handle;
use crate::store::StoreError;

/// Who is asking: recorded as the actor of every event the call causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// Not authenticated: known only by the address it came from. It may do
    /// what `access` allows: everything while authentication is off,
    /// nothing otherwise.
    Anonymous {
        address: Option<IpAddr>,
        access: Option<Access>,
        /// Why a credential it presented named no operator, if it presented
        /// one (said in a refusal).
        rejected: Option<String>,
    },
    /// An operator named by a client certificate or a bearer token.
    Operator {
        name: String,
        access: Access,
        via: Credential,
    },
}

/// How an operator proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Certificate,
    Token,
}

impl Actor {
    fn access(&self) -> Option<Access> {
        match self {
            Actor::Anonymous { access, .. } => *access,
            Actor::Operator { access, .. } => Some(*access),
        }
    }

    /// Whether the actor may see groups and nodes (a viewer or more).
    pub(crate) fn can_view(&self) -> bool {
        self.access().is_some_and(|a| a >= Access::Viewer)
    }

    /// Refuses the call unless the actor's role includes `needed`.
    fn may(&self, needed: Access, what: &str) -> Result<(), ApiError> {
        match self.access() {
            Some(has) if has >= needed => Ok(()),
            Some(has) => Err(ApiError::Denied(format!(
                "{what} needs the {needed} role; {self} has {has}"
            ))),
            None => Err(ApiError::Unauthenticated(match self {
                Actor::Anonymous {
                    rejected: Some(why),
                    ..
                } => format!("{what} needs the {needed} role: {why}"),
                _ => format!(
                    "{what} needs the {needed} role: present an operator certificate or a \
                     bearer token (failoverctl --tls-cert/--tls-key or --token-file)"
                ),
            })),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Anonymous {
                address: Some(address),
                ..
            } => write!(f, "anonymous@{address}"),
            Actor::Anonymous { address: None, .. } => f.write_str("anonymous"),
            Actor::Operator { name, .. } => f.write_str(name),
        }
    }
}

/// The role a command needs, and its name for a refusal.
fn needed(command: &AdminCommand) -> (Access, &'static str) {
    match command {
        AdminCommand::ListGroups { .. } => (Access::Viewer, "group list"),
        AdminCommand::GetGroup { .. } => (Access::Viewer, "group show"),
        AdminCommand::ListNodes { .. } => (Access::Viewer, "node list"),
        AdminCommand::Promote { .. } => (Access::Operator, "group promote"),
        AdminCommand::Takeover { .. } => (Access::Operator, "group takeover"),
        AdminCommand::Restore { .. } => (Access::Operator, "group restore"),
        AdminCommand::Drain { .. } => (Access::Operator, "group member drain"),
        AdminCommand::Undrain { .. } => (Access::Operator, "group member undrain"),
        AdminCommand::CreateGroup { .. } => (Access::Admin, "group add"),
        AdminCommand::DeleteGroup { .. } => (Access::Admin, "group delete"),
        AdminCommand::AddMember { .. } => (Access::Admin, "group member add"),
        AdminCommand::RemoveMember { .. } => (Access::Admin, "group member remove"),
        AdminCommand::MoveMember { .. } => (Access::Admin, "group member move"),
        AdminCommand::UpdatePolicy { .. } => (Access::Admin, "group set"),
    }
}

#[derive(Debug, Error)]
pub enum ApiError {
    /// The command was refused; nothing changed.
    #[error(transparent)]
    Refused(#[from] AdminError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller did not say who it is, and the call needs a role.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role does not allow the call.
    #[error("{0}")]
    Denied(String),
    /// An event watcher fell too far behind and missed events.
    #[error("this watcher fell behind and missed {missed} events; watch again")]
    Lagged { missed: u64 },
    /// Another coordinator replica leads.
    #[error(transparent)]
    NotLeader(#[from] NotLeader),
    /// Too many event watches are open.
    #[error(
        "too many event watches are open ({max}, [limits] max_watchers); try again later, or \
         close others"
    )]
    Busy { max: usize },
    /// This caller has as many event watches open as one caller may.
    #[error(
        "you have {max} event watches open, as many as one caller may (a share of [limits] \
         max_watchers); close one first"
    )]
    BusyForYou { max: usize },
}

/// One caller's place among the event watches, given back when dropped.
struct WatchOf {
    actor: String,
    counts: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl WatchOf {
    fn take(
        counts: &Arc<std::sync::Mutex<HashMap<String, usize>>>,
        actor: String,
        max: usize,
    ) -> Option<WatchOf> {
        let mut all = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = all.entry(actor.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(WatchOf {
            actor,
            counts: counts.clone(),
        })
    }
}

impl Drop for WatchOf {
    fn drop(&mut self) {
        let mut all = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = all.get_mut(&self.actor) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.actor);
            }
        }
    }
}

/// A stream of events as they are recorded.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EventRecord, ApiError>> + Send>>;

/// Events read from the store at a time by a watch: what one watch holds
/// at most, however long its backlog.
const WATCH_PAGE: usize = 256;
/// Events one answer (not a watch) holds at most, so no answer can exceed
/// a client's message limit; the watch pages through any number.
pub const MAX_EVENTS_PER_ANSWER: usize = 1000;

/// The coordinator's API.
#[derive(Clone)]
pub struct Api {
    cluster: Cluster,
    /// Open event watches per caller.
    watchers_by_actor: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    watchers: Arc<Semaphore>,
    max_watchers: usize,
}

impl Api {
    /// The API over the leading runtime, allowing `max_watchers` event
    /// watches at once.
    pub(crate) fn new(cluster: Cluster, max_watchers: usize) -> Api {
        Api {
            cluster,
            watchers_by_actor: Arc::default(),
            watchers: Arc::new(Semaphore::new(max_watchers)),
            max_watchers,
        }
    }

    /// Event watches one caller may hold: an eighth of all, so a few
    /// callers (a viewer's token) cannot keep everybody else out.
    fn max_per_actor(&self) -> usize {
        (self.max_watchers / 8).max(1)
    }

    /// The leading runtime, or who leads instead.
    fn handle(&self) -> Result<Handle, ApiError> {
        Ok(self.cluster.leadership.handle()?)
    }

    /// Which replica leads, every replica, the store's health: any
    /// replica answers.
    pub(crate) async fn cluster_status(
        &self,
        actor: &Actor,
    ) -> Result<proto::v1::ClusterStatusResponse, ApiError> {
        actor.may(Access::Viewer, "cluster status")?;
        Ok(self.cluster.status().await)
    }

    /// Runs one operator's command.
    pub async fn execute(
        &self,
        actor: &Actor,
        command: AdminCommand,
    ) -> Result<AdminReply, ApiError> {
        let (needs, what) = needed(&command);
        actor.may(needs, what)?;
        Ok(self.handle()?.admin(actor.to_string(), command).await?)
    }

    /// Runs a command whose answer is a group.
    pub async fn group_command(
        &self,
        actor: &Actor,
        command: AdminCommand,
    ) -> Result<GroupView, ApiError> {
        match self.execute(actor, command).await? {
            AdminReply::Group(view) => Ok(view),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn create_group(
        &self,
        actor: &Actor,
        name: String,
        members: Vec<String>,
        policy: PolicyPatch,
    ) -> Result<GroupView, ApiError> {
        let command = AdminCommand::CreateGroup {
            name,
            members,
            policy,
        };
        self.group_command(actor, command).await
    }

    pub async fn group(&self, actor: &Actor, name: String) -> Result<GroupView, ApiError> {
        self.group_command(actor, AdminCommand::GetGroup { name })
            .await
    }

    /// A page of groups in name order: after `after`, at most `limit`.
    pub async fn groups(
        &self,
        actor: &Actor,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<GroupView>, ApiError> {
        match self
            .execute(actor, AdminCommand::ListGroups { after, limit })
            .await?
        {
            AdminReply::Groups(groups) => Ok(groups),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn delete_group(&self, actor: &Actor, name: String) -> Result<(), ApiError> {
        match self
            .execute(actor, AdminCommand::DeleteGroup { name })
            .await?
        {
            AdminReply::Deleted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of nodes in name order: after `after`, at most `limit`.
    pub async fn nodes(
        &self,
        actor: &Actor,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<NodeView>, ApiError> {
        match self
            .execute(actor, AdminCommand::ListNodes { after, limit })
            .await?
        {
            AdminReply::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(&other)),
        }
    }

    /// The retained events, oldest first, optionally of one group: the
    /// most recent `limit`, and never more than [`MAX_EVENTS_PER_ANSWER`]
    /// (0 = as many as that).
    pub async fn events(
        &self,
        actor: &Actor,
        group: Option<String>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, ApiError> {
        actor.may(Access::Viewer, "events")?;
        let limit = match limit {
            0 => MAX_EVENTS_PER_ANSWER,
            n => n.min(MAX_EVENTS_PER_ANSWER),
        };
        Ok(self.handle()?.events(group, limit).await?)
    }

    /// The retained events that match — the most recent `limit`, 0 = all —
    /// then new ones as they are recorded. The backlog is read from the
    /// store a page at a time as the client takes it, so a watch holds
    /// little whatever its backlog or its pace. A watcher that falls too
    /// far behind the new events gets [`ApiError::Lagged`]; more than
    /// `max_watchers` at once get [`ApiError::Busy`].
    pub async fn watch_events(
        &self,
        actor: &Actor,
        group: Option<String>,
        limit: usize,
    ) -> Result<EventStream, ApiError> {
        actor.may(Access::Viewer, "events")?;
        // Each authenticated caller gets a share (anonymous callers may
        // watch only while authentication is off, when all are admins).
        let mine = match actor {
            Actor::Operator { .. } => Some(
                WatchOf::take(
                    &self.watchers_by_actor,
                    actor.to_string(),
                    self.max_per_actor(),
                )
                .ok_or(ApiError::BusyForYou {
                    max: self.max_per_actor(),
                })?,
            ),
            Actor::Anonymous { .. } => None,
        };
        let permit = self
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Busy {
                max: self.max_watchers,
            })?;
        // Subscribe before reading the backlog so nothing falls between.
        let handle = self.handle()?;
        let live = handle.subscribe_events();
        let after = match limit {
            0 => 0,
            n => handle
                .events(group.clone(), n)
                .await?
                .first()
                .map_or(0, |e| e.seq.saturating_sub(1)),
        };
        let filter = group.clone();
        // The backlog: pages until one comes back empty; remembers the last
        // event it gave, so the live part starts after it.
        let last = Arc::new(std::sync::atomic::AtomicU64::new(after));
        let seen = last.clone();
        let pages = futures::stream::unfold(Some(after), move |cursor| {
            let handle = handle.clone();
            let group = filter.clone();
            let seen = seen.clone();
            async move {
                let after = cursor?;
                match handle.events_after(group, after, WATCH_PAGE).await {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => {
                        let next = page.last().map_or(after, |e| e.seq);
                        seen.store(next, std::sync::atomic::Ordering::Relaxed);
                        let page = page.into_iter().map(Ok).collect::<Vec<_>>();
                        Some((futures::stream::iter(page), Some(next)))
                    }
                    Err(e) => Some((futures::stream::iter(vec![Err(e.into())]), None)),
                }
            }
        });
        let backlog = futures::StreamExt::flatten(pages);
        let live = BroadcastStream::new(live).filter_map(move |item| match item {
            Ok(e)
                if e.seq > last.load(std::sync::atomic::Ordering::Relaxed)
                    && group.as_ref().is_none_or(|g| *g == e.group) =>
            {
                Some(Ok(e))
            }
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                Some(Err(ApiError::Lagged { missed }))
            }
        });
        // The permit goes with the stream: the watch counts until it ends.
        let events = backlog.chain(live).map(move |item| {
            let _held = (&permit, &mine);
            item
        });
        Ok(Box::pin(events))
    }
}

fn unexpected(reply: &AdminReply) -> ApiError {
    ApiError::Refused(AdminError::Aborted(format!(
        "unexpected answer from the engine: {reply:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_name_themselves_in_events() {
        let actor = Actor::Anonymous {
            address: Some("10.0.0.7".parse().unwrap()),
            rejected: None,
            access: None,
        };
        assert_eq!(actor.to_string(), "anonymous@10.0.0.7");
        let alice = Actor::Operator {
            name: "alice".into(),
            access: Access::Viewer,
            via: Credential::Token,
        };
        assert_eq!(alice.to_string(), "alice");
    }

    #[test]
    fn refusals_say_which_role_is_needed() {
        let viewer = Actor::Operator {
            name: "vic".into(),
            access: Access::Viewer,
            via: Credential::Certificate,
        };
        let err = viewer.may(Access::Operator, "group promote").unwrap_err();
        assert_eq!(
            err.to_string(),
            "group promote needs the operator role; vic has viewer"
        );
        assert!(viewer.may(Access::Viewer, "group show").is_ok());
        let nobody = Actor::Anonymous {
            rejected: None,
            address: None,
            access: None,
        };
        assert!(matches!(
            nobody.may(Access::Viewer, "events"),
            Err(ApiError::Unauthenticated(_))
        ));
    }
}
