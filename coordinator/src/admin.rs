//! The operators' gRPC service: a thin layer over [`Api`] that turns each
//! request into a command (one `TryFrom` per request, in `convert.rs`),
//! names the caller, and turns the answer into a response. Every refusal
//! carries a gRPC code from [`crate::error`] and a message that says what
//! to do.

use std::pin::Pin;

use futures::Stream;
use proto::v1 as pb;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::api::{Actor, Api, Credential};
use crate::auth::{Access, Auth, RESERVED_NAMES};
use crate::connections::{Connections, Trust};
use crate::convert::{Drain, Undrain, event_to_proto, group_to_proto, node_to_proto};
use crate::engine::{AdminCommand, AdminError};
use crate::error::{admin_status, api_status};
use proto::identity::{Named, named_by};

pub(crate) struct AdminApi {
    api: Api,
    /// Ends event watches at shutdown.
    shutdown: CancellationToken,
    auth: Arc<Auth>,
    /// The gRPC listener's connections: a call with a valid bearer token
    /// makes its connection hold as firmly as its role allows.
    connections: Arc<Connections>,
}

impl AdminApi {
    pub(crate) fn new(
        api: Api,
        shutdown: CancellationToken,
        auth: Arc<Auth>,
        connections: Arc<Connections>,
    ) -> Self {
        AdminApi {
            api,
            shutdown,
            auth,
            connections,
        }
    }

    /// Who made a request: the operator its client certificate or bearer
    /// token names, or else an anonymous caller known by its address (an
    /// admin while authentication is off, nobody otherwise).
    pub(crate) fn actor<T>(&self, request: &Request<T>) -> Actor {
        let address = request.remote_addr().map(|a| a.ip());
        let mut rejected = Vec::new();
        // A certificate wins over a token when both are presented.
        if let Some(cert) = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
        {
            match named_by(&cert) {
                Ok(Some(Named::Operator { name, .. }))
                    if RESERVED_NAMES.contains(&name.as_str()) =>
                {
                    rejected.push(format!(
                        "your certificate names operator {name}, a reserved name"
                    ));
                }
                Ok(Some(Named::Operator { role, name })) => {
                    if let Some(access) = Access::parse(&role) {
                        return Actor::Operator {
                            name,
                            access,
                            via: Credential::Certificate,
                        };
                    }
                }
                Ok(Some(Named::Node(node))) => rejected.push(format!(
                    "your certificate names node {node}, not an operator"
                )),
                Ok(None) => rejected.push("your certificate names no operator".to_owned()),
                Err(why) => rejected.push(format!("your certificate names no operator: {why}")),
            }
        }
        if let Some(token) = bearer(request) {
            match self.auth.token_holder(&token) {
                Some((name, access)) => {
                    if let Some(peer) = request.remote_addr() {
                        self.connections.trust_peer(peer, Trust::of_access(access));
                    }
                    return Actor::Operator {
                        name,
                        access,
                        via: Credential::Token,
                    };
                }
                None if self.auth.tokens.is_none() => rejected
                    .push("this coordinator takes no bearer tokens (no [auth] tokens)".to_owned()),
                None => rejected.push("your bearer token is not in the token file".to_owned()),
            }
        }
        Actor::Anonymous {
            address,
            access: self.auth.is_off().then_some(Access::Admin),
            rejected: (!rejected.is_empty()).then(|| rejected.join("; ")),
        }
    }

    /// A command whose answer is a group: converts, runs, converts back.
    async fn group<R, C>(
        &self,
        request: Request<R>,
        command: impl FnOnce(R) -> C,
    ) -> Result<Response<pb::GroupStatus>, Status>
    where
        AdminCommand: TryFrom<C, Error = AdminError>,
    {
        let actor = self.actor(&request);
        let command =
            AdminCommand::try_from(command(request.into_inner())).map_err(admin_status)?;
        let view = self
            .api
            .group_command(&actor, command)
            .await
            .map_err(api_status)?;
        Ok(Response::new(group_to_proto(view)))
    }
}

/// Groups in one answer at most: a group of 64 members with long names is
/// about 20 KB, so a page stays far below a client's 4 MiB limit.
const MAX_GROUPS_PER_PAGE: usize = 100;
/// Nodes in one answer at most (a node is well under 2 KB).
const MAX_NODES_PER_PAGE: usize = 500;

/// Where a page starts and how long it is, from a request's token and
/// size. The token is the last name of the previous page.
fn page(token: &str, size: u32, max: usize) -> Result<(Option<String>, usize), Status> {
    let after = if token.is_empty() {
        None
    } else {
        proto::names::validate_node_id(token)
            .map_err(|_| Status::invalid_argument("page_token is not one this coordinator gave"))?;
        Some(token.to_owned())
    };
    let size = usize::try_from(size).unwrap_or(max);
    let limit = if size == 0 { max } else { size.min(max) };
    Ok((after, limit))
}

/// The token of the page after one of `got` entries ending at `last`:
/// empty when this one was not full (the last page).
fn next_token(got: usize, limit: usize, last: Option<&String>) -> String {
    match last {
        Some(last) if got >= limit => last.clone(),
        _ => String::new(),
    }
}

/// The role of the bearer token an HTTP request carries, if it is valid.
pub(crate) fn bearer_access<B>(request: &http::Request<B>, auth: &Auth) -> Option<Access> {
    let value = request.headers().get("authorization")?.to_str().ok()?;
    let token = token_of(value)?;
    auth.token_holder(&token).map(|(_, access)| access)
}

/// The bearer token a request carries (`authorization: Bearer TOKEN`, the
/// scheme in any case), trimmed.
fn bearer<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    token_of(value)
}

fn token_of(value: &str) -> Option<String> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| value.get(7..).unwrap_or_default().trim().to_owned())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let actor = self.actor(&request);
        let r = request.into_inner();
        let (after, limit) = page(&r.page_token, r.page_size, MAX_GROUPS_PER_PAGE)?;
        let groups = self
            .api
            .groups(&actor, after, limit)
            .await
            .map_err(api_status)?;
        let next_page_token = next_token(groups.len(), limit, groups.last().map(|g| &g.name));
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().map(group_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let actor = self.actor(&request);
        let name = request.into_inner().name;
        self.api
            .delete_group(&actor, name)
            .await
            .map_err(api_status)?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn move_member(
        &self,
        request: Request<pb::MoveMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn takeover(
        &self,
        request: Request<pb::TakeoverRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, |r| r).await
    }

    async fn drain_member(
        &self,
        request: Request<pb::DrainMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, Drain).await
    }

    async fn undrain_member(
        &self,
        request: Request<pb::DrainMemberRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        self.group(request, Undrain).await
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let actor = self.actor(&request);
        let r = request.into_inner();
        let (after, limit) = page(&r.page_token, r.page_size, MAX_NODES_PER_PAGE)?;
        let nodes = self
            .api
            .nodes(&actor, after, limit)
            .await
            .map_err(api_status)?;
        let next_page_token = next_token(nodes.len(), limit, nodes.last().map(|n| &n.node));
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let actor = self.actor(&request);
        let status = self.api.cluster_status(&actor).await.map_err(api_status)?;
        Ok(Response::new(status))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let actor = self.actor(&request);
        let r = request.into_inner();
        let group = (!r.group.is_empty()).then_some(r.group);
        let events = self
            .api
            .events(&actor, group, r.limit as usize)
            .await
            .map_err(api_status)?;
        Ok(Response::new(pb::ListEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let actor = self.actor(&request);
        // A watch by token ends when the token is revoked.
        let token = match &actor {
            Actor::Operator {
                via: Credential::Token,
                ..
            } => bearer(&request),
            _ => None,
        };
        let auth = self.auth.clone();
        let r = request.into_inner();
        let group = (!r.group.is_empty()).then_some(r.group);
        let events = self
            .api
            .watch_events(&actor, group, r.limit as usize)
            .await
            .map_err(api_status)?
            .map(|item| item.map(event_to_proto).map_err(api_status));
        let events = futures::StreamExt::scan(events, false, move |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let revoked = token
                .as_deref()
                .is_some_and(|t| auth.token_holder(t).is_none());
            if revoked {
                *ended = true;
                return futures::future::ready(Some(Err(Status::unauthenticated(
                    "your bearer token was revoked: this watch ends",
                ))));
            }
            futures::future::ready(Some(item))
        });
        let stream =
            futures::StreamExt::take_until(events, self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
