//! The one table that maps the coordinator's errors to gRPC status codes.

use tonic::Status;

use crate::engine::AdminError;
use crate::store::StoreError;

pub fn admin_status(e: AdminError) -> Status {
    match e {
        AdminError::InvalidArgument(m) => Status::invalid_argument(m),
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::AlreadyExists(m) => Status::already_exists(m),
        AdminError::FailedPrecondition(m) => Status::failed_precondition(m),
        AdminError::Aborted(m) => Status::aborted(m),
    }
}

pub fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("the coordinator's store failed: {e}"))
}
