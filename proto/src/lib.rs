//! The `failover.v1` wire contract (generated from proto/) and the naming
//! rules every part of the product agrees on.

pub mod client;
pub mod duration;
pub mod identity;
pub mod names;
pub mod toml_error;
pub mod vocab;

/// Generated messages and services of package `failover.v1`.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("failover.v1");
}

/// Encoded descriptor set of `failover.v1`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/failover_descriptor.bin"));

/// gRPC metadata key on the ALREADY_EXISTS status that refuses a duplicate
/// agent: how long (milliseconds) the connected instance may stay silent
/// before it counts as gone.
pub const SILENCE_LIMIT_METADATA: &str = "failover-silence-limit-ms";
