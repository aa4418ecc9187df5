//! The answer to "which replica leads, and is the store healthy?", which
//! every replica gives (followers too), for `failoverctl cluster status`
//! and for clients looking for the leader.

use std::sync::Arc;

use proto::v1 as pb;

use crate::election::{Election, Replica};
use crate::leadership::Leadership;

/// What this replica knows of the cluster.
#[derive(Clone)]
pub(crate) struct Cluster {
    pub me: Replica,
    pub leadership: Leadership,
    /// With etcd: the election (replicas, endpoints); `None`: one
    /// coordinator on the embedded store.
    pub election: Option<Arc<Election>>,
}

fn to_proto(r: &Replica, leader: bool) -> pb::Replica {
    pb::Replica {
        id: r.id.clone(),
        url: r.url.clone(),
        leader,
    }
}

impl Cluster {
    pub(crate) async fn status(&self) -> pb::ClusterStatusResponse {
        let Some(election) = &self.election else {
            return pb::ClusterStatusResponse {
                store: "sled".into(),
                answered_by: Some(to_proto(&self.me, true)),
                leader: Some(to_proto(&self.me, true)),
                replicas: vec![to_proto(&self.me, true)],
                endpoints: vec![],
            };
        };
        let leader = if self.leadership.leading() {
            Some(self.me.clone())
        } else {
            self.leadership.leader()
        };
        let replicas = election.replicas().await.unwrap_or_default();
        let mut endpoints = Vec::new();
        for (url, status) in election.etcd().member_status().await {
            endpoints.push(match status {
                Ok(s) => pb::StoreEndpoint {
                    url,
                    healthy: s.errors.is_empty(),
                    version: s.version,
                    leader: s.header.is_some_and(|h| h.member_id == s.leader),
                    error: s.errors.join("; "),
                },
                Err(e) => pb::StoreEndpoint {
                    url,
                    healthy: false,
                    error: e.to_string(),
                    ..pb::StoreEndpoint::default()
                },
            });
        }
        pb::ClusterStatusResponse {
            store: "etcd".into(),
            answered_by: Some(to_proto(&self.me, self.leadership.leading())),
            replicas: replicas
                .iter()
                .map(|r| to_proto(&r.replica, r.leader))
                .collect(),
            leader: leader.as_ref().map(|l| to_proto(l, true)),
            endpoints,
        }
    }
}
