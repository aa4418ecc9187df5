//! The one table that maps the coordinator's errors to gRPC status codes.

use tonic::Status;

use crate::api::ApiError;
use crate::engine::AdminError;
use crate::leadership::NotLeader;
use crate::store::StoreError;

pub(crate) fn admin_status(e: AdminError) -> Status {
    match e {
        AdminError::InvalidArgument(m) => Status::invalid_argument(m),
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::AlreadyExists(m) => Status::already_exists(m),
        AdminError::FailedPrecondition(m) => Status::failed_precondition(m),
        AdminError::Aborted(m) => Status::aborted(m),
        AdminError::Unavailable(m) => Status::unavailable(m),
    }
}

pub(crate) fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("the coordinator's store failed: {e}"))
}

pub(crate) fn api_status(e: ApiError) -> Status {
    match e {
        ApiError::Refused(e) => admin_status(e),
        ApiError::Store(e) => store_status(e),
        ApiError::Unauthenticated(m) => Status::unauthenticated(m),
        ApiError::Denied(m) => Status::permission_denied(m),
        ApiError::Lagged { .. } => Status::data_loss(e.to_string()),
        ApiError::Busy { .. } | ApiError::BusyForYou { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        ApiError::NotLeader(e) => not_leader_status(&e),
    }
}

/// UNAVAILABLE, naming the leader in the message and, for clients to
/// follow, in [`proto::LEADER_METADATA`].
pub(crate) fn not_leader_status(e: &NotLeader) -> Status {
    let mut status = Status::unavailable(e.to_string());
    if let Some(url) = e.leader_url()
        && let Ok(value) = url.parse()
    {
        status.metadata_mut().insert(proto::LEADER_METADATA, value);
    }
    status
}
