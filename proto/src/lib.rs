//! The `failover.v1` wire contract (generated from proto/) and the naming
//! rules every part of the product agrees on.

pub mod client;
pub mod duration;
pub mod identity;
pub mod json;
pub mod logging;
pub mod names;
pub mod pages;
pub mod toml_error;
pub mod vocab;

/// Generated messages and services of package `failover.v1`.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("failover.v1");
}

/// Clients of the part of etcd's v3 API the coordinator uses (package
/// `etcdserverpb`), for the etcd store.
#[allow(clippy::all)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// Encoded descriptor set of `failover.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/failover_descriptor.bin"));

/// gRPC metadata key on the ALREADY_EXISTS status that refuses a duplicate
/// agent: how long (milliseconds) the connected instance may stay silent
/// before it counts as gone.
pub const SILENCE_LIMIT_METADATA: &str = "failover-silence-limit-ms";

/// gRPC metadata key on the UNAVAILABLE status a coordinator replica that
/// is not the leader answers with: the URL of the replica that leads.
pub const LEADER_METADATA: &str = "failover-leader";
