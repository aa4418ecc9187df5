//! The operators' gRPC service: turns requests into engine commands and
//! engine answers into responses. Every refusal carries a gRPC code from
//! [`crate::error`] and a message that says what to do.

use std::pin::Pin;

use futures::Stream;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::convert::{event_to_proto, group_to_proto, node_to_proto, policy_patch_from_proto};
use crate::engine::{AdminCommand, AdminReply};
use crate::error::{admin_status, store_status};
use crate::runtime::Handle;

pub struct AdminApi {
    handle: Handle,
    /// Ends event watches at shutdown.
    shutdown: CancellationToken,
}

impl AdminApi {
    pub fn new(handle: Handle, shutdown: CancellationToken) -> Self {
        AdminApi { handle, shutdown }
    }

    async fn run(&self, actor: String, command: AdminCommand) -> Result<AdminReply, Status> {
        self.handle
            .admin(actor, command)
            .await
            .map_err(admin_status)
    }

    async fn group(
        &self,
        actor: String,
        command: AdminCommand,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        match self.run(actor, command).await? {
            AdminReply::Group(view) => Ok(Response::new(group_to_proto(view))),
            other => Err(unexpected(&other)),
        }
    }
}

/// Who made a request, for the event log.
fn actor<T>(request: &Request<T>) -> String {
    match request.remote_addr() {
        Some(addr) => format!("admin@{}", addr.ip()),
        None => "admin".to_owned(),
    }
}

fn unexpected(reply: &AdminReply) -> Status {
    Status::internal(format!("unexpected engine reply {reply:?}"))
}

fn position(p: u32) -> usize {
    p as usize
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        let policy = policy_patch_from_proto(r.policy).map_err(admin_status)?;
        self.group(
            actor,
            AdminCommand::CreateGroup {
                name: r.name,
                members: r.members,
                policy,
            },
        )
        .await
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        match self.run(actor(&request), AdminCommand::ListGroups).await? {
            AdminReply::Groups(groups) => Ok(Response::new(pb::ListGroupsResponse {
                groups: groups.into_iter().map(group_to_proto).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        self.group(actor, AdminCommand::GetGroup { name }).await
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let actor = actor(&request);
        let name = request.into_inner().name;
        match self.run(actor, AdminCommand::DeleteGroup { name }).await? {
            AdminReply::Deleted => Ok(Response::new(pb::DeleteGroupResponse {})),
            other => Err(unexpected(&other)),
        }
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::AddMember {
                group: r.group,
                node: r.node,
                position: r.position.map(position),
            },
        )
        .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::RemoveMember {
                group: r.group,
                node: r.node,
            },
        )
        .await
    }

    async fn move_member(
        &self,
        request: Request<pb::MoveMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::MoveMember {
                group: r.group,
                node: r.node,
                position: position(r.position),
            },
        )
        .await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::Promote {
                group: r.group,
                to: r.to,
            },
        )
        .await
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        let policy = policy_patch_from_proto(r.policy).map_err(admin_status)?;
        self.group(
            actor,
            AdminCommand::UpdatePolicy {
                group: r.name,
                policy,
            },
        )
        .await
    }

    async fn takeover(
        &self,
        request: Request<pb::TakeoverRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        let to = (!r.to.is_empty()).then_some(r.to);
        self.group(actor, AdminCommand::Takeover { group: r.group, to })
            .await
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let group = request.into_inner().group;
        self.group(actor, AdminCommand::Restore { group }).await
    }

    async fn drain_member(
        &self,
        request: Request<pb::DrainMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::Drain {
                group: r.group,
                node: r.node,
            },
        )
        .await
    }

    async fn undrain_member(
        &self,
        request: Request<pb::DrainMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        self.group(
            actor,
            AdminCommand::Undrain {
                group: r.group,
                node: r.node,
            },
        )
        .await
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        match self.run(actor(&request), AdminCommand::ListNodes).await? {
            AdminReply::Nodes(nodes) => Ok(Response::new(pb::ListNodesResponse {
                nodes: nodes.into_iter().map(node_to_proto).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let r = request.into_inner();
        let group = (!r.group.is_empty()).then_some(r.group);
        let events = self
            .handle
            .events(group, r.limit as usize)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = request.into_inner();
        let group = (!r.group.is_empty()).then_some(r.group);
        // Subscribe before reading the backlog so nothing falls between.
        let live = self.handle.subscribe_events();
        let backlog = self
            .handle
            .events(group.clone(), r.limit as usize)
            .await
            .map_err(store_status)?;
        let last_seq = backlog.last().map_or(0, |e| e.seq);
        let backlog = tokio_stream::iter(backlog.into_iter().map(|e| Ok(event_to_proto(e))));
        let live = BroadcastStream::new(live).filter_map(move |item| match item {
            Ok(e) if e.seq > last_seq && group.as_ref().is_none_or(|g| *g == e.group) => {
                Some(Ok(event_to_proto(e)))
            }
            Ok(_) => None,
            Err(lagged) => Some(Err(Status::data_loss(format!(
                "this watcher fell behind and missed events ({lagged}); watch again"
            )))),
        });
        let stream = futures::StreamExt::take_until(
            backlog.chain(live),
            self.shutdown.clone().cancelled_owned(),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
