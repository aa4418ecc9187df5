//! How records are written as bytes, the same in every store: groups and
//! events as JSON, an epoch floor as two big-endian numbers, and the size
//! every value must stay under.

use std::time::Duration;

use super::StoreError;

/// The largest value a store writes. A group of 64 members is about 10 KiB;
/// this turns any mistake into a refused write (sled would move a larger
/// one to blob files it never syncs; etcd refuses requests above 1.5 MiB).
pub(crate) const MAX_VALUE: usize = 32 * 1024;

pub(crate) fn encode<T: serde::Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StoreError::Io(format!("cannot encode a record: {e}")))?;
    if bytes.len() > MAX_VALUE {
        return Err(StoreError::TooLarge {
            key: String::from_utf8_lossy(key).into_owned(),
            size: bytes.len(),
        });
    }
    Ok(bytes)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// A deleted group's epoch floor and the longest lease its primary may
/// still hold.
pub(crate) fn encode_floor(epoch_floor: u64, lease_ttl: Duration) -> Vec<u8> {
    let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX);
    [epoch_floor.to_be_bytes(), ttl_ms.to_be_bytes()].concat()
}

/// 8 bytes of epoch, then (in records written since leases were kept) 8
/// of lease milliseconds.
pub(crate) fn decode_floor(value: &[u8]) -> (u64, Option<Duration>) {
    let (epoch, ttl) = value.split_at(value.len().min(8));
    let lease = (ttl.len() == 8).then(|| Duration::from_millis(be_u64(ttl)));
    (be_u64(epoch), lease)
}

pub(crate) fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}
