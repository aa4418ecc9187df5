//! The one API in front of the runtime, whatever the transport: typed calls
//! that say who is asking (an [`Actor`]) and answer views or typed errors.
//! The gRPC admin service (`admin.rs`) is a thin conversion layer over it;
//! any other front end (REST, a status page) uses the same calls, so it
//! gets the same checks, errors and event records.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;

use futures::Stream;
use thiserror::Error;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::engine::{AdminCommand, AdminError, AdminReply, GroupView, NodeView};
use crate::model::EventRecord;
use crate::policy::PolicyPatch;
use crate::runtime::Handle;
use crate::store::StoreError;

/// Who is asking: recorded as the actor of every event the call causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// Not authenticated: known only by the address it came from.
    Anonymous { address: Option<IpAddr> },
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Anonymous {
                address: Some(address),
            } => write!(f, "anonymous@{address}"),
            Actor::Anonymous { address: None } => f.write_str("anonymous"),
        }
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
    /// An event watcher fell too far behind and missed events.
    #[error("this watcher fell behind and missed {missed} events; watch again")]
    Lagged { missed: u64 },
}

/// A stream of events as they are recorded.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EventRecord, ApiError>> + Send>>;

/// The coordinator's API.
#[derive(Clone)]
pub struct Api {
    handle: Handle,
}

impl Api {
    pub fn new(handle: Handle) -> Api {
        Api { handle }
    }

    /// Runs one operator's command.
    pub async fn execute(
        &self,
        actor: &Actor,
        command: AdminCommand,
    ) -> Result<AdminReply, ApiError> {
        Ok(self.handle.admin(actor.to_string(), command).await?)
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

    pub async fn groups(&self, actor: &Actor) -> Result<Vec<GroupView>, ApiError> {
        match self.execute(actor, AdminCommand::ListGroups).await? {
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

    pub async fn nodes(&self, actor: &Actor) -> Result<Vec<NodeView>, ApiError> {
        match self.execute(actor, AdminCommand::ListNodes).await? {
            AdminReply::Nodes(nodes) => Ok(nodes),
            other => Err(unexpected(&other)),
        }
    }

    /// The retained events, oldest first, optionally of one group, the most
    /// recent `limit` (0 = all).
    pub async fn events(
        &self,
        _actor: &Actor,
        group: Option<String>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, ApiError> {
        Ok(self.handle.events(group, limit).await?)
    }

    /// The retained events that match, then new ones as they are recorded.
    /// A watcher that falls too far behind gets [`ApiError::Lagged`].
    pub async fn watch_events(
        &self,
        actor: &Actor,
        group: Option<String>,
        limit: usize,
    ) -> Result<EventStream, ApiError> {
        // Subscribe before reading the backlog so nothing falls between.
        let live = self.handle.subscribe_events();
        let backlog = self.events(actor, group.clone(), limit).await?;
        let last_seq = backlog.last().map_or(0, |e| e.seq);
        let backlog = tokio_stream::iter(backlog.into_iter().map(Ok));
        let live = BroadcastStream::new(live).filter_map(move |item| match item {
            Ok(e) if e.seq > last_seq && group.as_ref().is_none_or(|g| *g == e.group) => {
                Some(Ok(e))
            }
            Ok(_) => None,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                Some(Err(ApiError::Lagged { missed }))
            }
        });
        Ok(Box::pin(backlog.chain(live)))
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
        };
        assert_eq!(actor.to_string(), "anonymous@10.0.0.7");
        assert_eq!(Actor::Anonymous { address: None }.to_string(), "anonymous");
    }
}
