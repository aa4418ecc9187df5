//! A connection to an etcd cluster: the few calls the coordinator makes —
//! reads of a key range, guarded transactions, leases and member status —
//! each with a deadline, balanced over every configured endpoint (a member
//! that is down or cut off is skipped).

use std::time::Duration;

use proto::client::{ClientTls, endpoint};
use proto::etcd::kv_client::KvClient;
use proto::etcd::lease_client::LeaseClient;
use proto::etcd::maintenance_client::MaintenanceClient;
use proto::etcd::{
    Compare, DeleteRangeRequest, KeyValue, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, StatusResponse,
    TxnRequest, TxnResponse, compare, request_op, response_op,
};
use tonic::transport::Channel;

/// The longest any one call may take: a member that accepted the request
/// and lost its quorum would otherwise hold it for good.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys read per request when reading a range.
const PAGE: i64 = 500;
/// Larger than any value the stores write, smaller than etcd's default
/// request limit (1.5 MiB).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EtcdError {
    #[error("etcd endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("etcd did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("etcd refused the call: {0}")]
    Status(String),
}

impl From<tonic::Status> for EtcdError {
    fn from(s: tonic::Status) -> EtcdError {
        EtcdError::Status(format!("{:?}: {}", s.code(), s.message()))
    }
}

/// The etcd cluster, reached through every endpoint given.
#[derive(Clone)]
pub(crate) struct Etcd {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    /// Each endpoint on its own, for status.
    members: Vec<(String, Channel)>,
}

impl Etcd {
    /// Prepares connections to `urls` (`http://` or `https://` with `tls`);
    /// nothing is dialled until the first call.
    pub(crate) fn new(urls: &[String], tls: &ClientTls) -> Result<Etcd, EtcdError> {
        let mut endpoints = Vec::new();
        for url in urls {
            let e = endpoint(url, tls, CONNECT_TIMEOUT).map_err(|e| EtcdError::Endpoint {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            endpoints.push((url.clone(), e));
        }
        let members = endpoints
            .iter()
            .map(|(url, e)| (url.clone(), e.connect_lazy()))
            .collect();
        let channel = Channel::balance_list(endpoints.into_iter().map(|(_, e)| e));
        Ok(Etcd {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            lease: LeaseClient::new(channel),
            members,
        })
    }

    /// Every key from `from` (inclusive) to `end` (exclusive), in order.
    pub(crate) async fn range(&self, from: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
        let mut all = Vec::new();
        let mut key = from.to_vec();
        loop {
            let page = self.range_page(&key, end, PAGE).await?;
            let more = page.len() == PAGE as usize;
            if let Some(last) = page.last() {
                key = [last.key.as_slice(), &[0]].concat();
            }
            all.extend(page);
            if !more {
                return Ok(all);
            }
        }
    }

    /// At most `limit` keys from `from` (inclusive) to `end` (exclusive).
    pub(crate) async fn range_page(
        &self,
        from: &[u8],
        end: &[u8],
        limit: i64,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            limit,
            ..RangeRequest::default()
        };
        let mut kv = self.kv.clone();
        Ok(within(kv.range(request)).await?.kvs)
    }

    /// The last key below `end` from `from`, if any.
    pub(crate) async fn last(
        &self,
        from: &[u8],
        end: &[u8],
    ) -> Result<Option<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            limit: 1,
            sort_order: proto::etcd::range_request::SortOrder::Descend as i32,
            sort_target: proto::etcd::range_request::SortTarget::Key as i32,
            ..RangeRequest::default()
        };
        let mut kv = self.kv.clone();
        Ok(within(kv.range(request)).await?.kvs.into_iter().next())
    }

    pub(crate) async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let request = RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        };
        let mut kv = self.kv.clone();
        Ok(within(kv.range(request)).await?.kvs.into_iter().next())
    }

    pub(crate) async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, EtcdError> {
        let mut kv = self.kv.clone();
        within(kv.txn(request)).await
    }

    pub(crate) async fn delete_range(&self, from: &[u8], end: &[u8]) -> Result<(), EtcdError> {
        let request = DeleteRangeRequest {
            key: from.to_vec(),
            range_end: end.to_vec(),
            prev_kv: false,
        };
        let mut kv = self.kv.clone();
        within(kv.delete_range(request)).await.map(|_| ())
    }

    /// A new lease of `ttl` (whole seconds, at least 1).
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let request = LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            id: 0,
        };
        let mut lease = self.lease.clone();
        let granted = within(lease.lease_grant(request)).await?;
        if !granted.error.is_empty() {
            return Err(EtcdError::Status(granted.error));
        }
        Ok(granted.id)
    }

    /// Renews lease `id` once; its remaining time to live, or `None` if the
    /// lease is gone (it expired or was revoked).
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<Option<Duration>, EtcdError> {
        let mut lease = self.lease.clone();
        let request = tokio_stream::once(LeaseKeepAliveRequest { id });
        let mut answers = within(lease.lease_keep_alive(request)).await?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, answers.message())
            .await
            .map_err(|_| EtcdError::Timeout)??;
        Ok(match answer {
            Some(a) if a.ttl > 0 => Some(Duration::from_secs(a.ttl.unsigned_abs())),
            _ => None,
        })
    }

    pub(crate) async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let mut lease = self.lease.clone();
        within(lease.lease_revoke(LeaseRevokeRequest { id }))
            .await
            .map(|_| ())
    }

    /// Each endpoint's own status (version, leader, errors), or why it did
    /// not answer.
    pub(crate) async fn member_status(&self) -> Vec<(String, Result<StatusResponse, EtcdError>)> {
        let mut all = Vec::new();
        for (url, channel) in &self.members {
            let mut client = MaintenanceClient::new(channel.clone());
            all.push((url.clone(), within(client.status(StatusRequest {})).await));
        }
        all
    }
}

async fn within<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(EtcdError::Timeout),
    }
}

/// The key just past every key that starts with `prefix` (etcd's
/// `range_end` for a prefix read).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    vec![0]
}

pub(crate) fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            ..PutRequest::default()
        })),
    }
}

pub(crate) fn put_with_lease(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            prev_kv: false,
        })),
    }
}

pub(crate) fn delete(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                ..DeleteRangeRequest::default()
            },
        )),
    }
}

/// Reads `key` (in a transaction, to learn what a failed comparison saw).
pub(crate) fn get_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key,
            ..RangeRequest::default()
        })),
    }
}

/// The value the first read of a transaction's answer found, if any.
pub(crate) fn read_value(answer: &TxnResponse) -> Option<Vec<u8>> {
    read_kv(answer).map(|kv| kv.value)
}

/// The key the first read of a transaction's answer found, if any.
pub(crate) fn read_kv(answer: &TxnResponse) -> Option<KeyValue> {
    answer.responses.iter().find_map(|r| match &r.response {
        Some(response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
        _ => None,
    })
}

/// `key`'s value is `value`.
pub(crate) fn value_is(key: Vec<u8>, value: Vec<u8>) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key,
        target_union: Some(compare::TargetUnion::Value(value)),
    }
}

/// `key` was last changed at `revision` (0: `key` does not exist).
pub(crate) fn unchanged_since(key: Vec<u8>, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
    }
}

/// `key` does not exist.
pub(crate) fn absent(key: Vec<u8>) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key,
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/failover/"), b"/failover0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
