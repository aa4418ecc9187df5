//! Choosing one leader among coordinator replicas that share an etcd store,
//! and knowing for how long the leadership is certain.
//!
//! Each replica holds an etcd lease for as long as it runs, and registers
//! itself under `replicas/ID` with it. The leader is the replica whose
//! record is under `leader`, written only if that key is absent and
//! attached to the writer's lease, so it goes when the lease does.
//!
//! **Architecture invariant (leases across leaders):** a leader acts only
//! until [`certain_until`] of its last renewal — the time the renewal was
//! *sent*, plus the lease shortened by the clock-drift bound and a margin —
//! which ends, in real time, before etcd can expire the lease and let
//! another replica take the key. The runtime checks it before announcing
//! anything (`runtime.rs::may_announce`). A new leader takes a new fencing
//! term before it reads the store, so anything the previous leader still
//! tries to write is refused, and it waits out every lease an agent may
//! hold, as after a restart (`Engine::new`).

use std::time::Duration;

use proto::etcd::TxnRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::etcd::{self, Etcd, EtcdError};

/// What a replica says about itself in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// Where agents and operators reach it.
    pub url: String,
}

/// A replica's view of the others, for `failoverctl cluster status`.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaView {
    pub replica: Replica,
    pub leader: bool,
}

/// One leadership: the etcd lease it rides on.
#[derive(Debug)]
pub(crate) struct Term {
    lease: i64,
    /// Until when this replica certainly leads (moves on with renewals).
    pub deadline: Instant,
}

pub(crate) struct Election {
    etcd: Etcd,
    leader_key: Vec<u8>,
    replicas_prefix: Vec<u8>,
    me: Replica,
    ttl: Duration,
    clock_drift: f64,
    /// An unreadable leader key is reported at most once a minute.
    unreadable_logged: crate::limits::LogEvery,
}

impl Election {
    /// `prefix` as the store's; `ttl` the etcd lease (whole seconds).
    pub(crate) fn new(
        etcd: Etcd,
        prefix: &str,
        me: Replica,
        ttl: Duration,
        clock_drift: f64,
    ) -> Election {
        Election {
            etcd,
            leader_key: format!("{prefix}leader").into_bytes(),
            replicas_prefix: format!("{prefix}replicas/").into_bytes(),
            me,
            ttl,
            clock_drift,
            unreadable_logged: crate::limits::LogEvery::new(Duration::from_secs(60)),
        }
    }

    fn replica_key(&self) -> Vec<u8> {
        [self.replicas_prefix.as_slice(), self.me.id.as_bytes()].concat()
    }

    fn my_record(&self) -> Vec<u8> {
        serde_json::to_vec(&self.me).unwrap_or_default()
    }

    /// How often the lease is renewed: a third of it, so two renewals may
    /// fail before it is in danger.
    fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(200))
    }

    /// Campaigns until this replica leads, telling `seen` the leader it
    /// sees meanwhile (`None`: none, or etcd unreachable).
    pub(crate) async fn campaign(&self, seen: impl Fn(Option<Replica>)) -> Term {
        loop {
            let sent = Instant::now();
            let lease = match self.etcd.grant(self.ttl).await {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach etcd to campaign; trying again");
                    seen(None);
                    tokio::time::sleep(self.renew_every()).await;
                    continue;
                }
            };
            let mut deadline = self.certain_until(sent, self.ttl);
            loop {
                match self.try_lead(lease).await {
                    Ok(None) => return Term { lease, deadline },
                    Ok(Some(leader)) => seen(leader),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach etcd to campaign");
                        seen(None);
                    }
                }
                tokio::time::sleep(self.renew_every()).await;
                let sent = Instant::now();
                match self.etcd.keep_alive(lease).await {
                    Ok(Some(ttl)) => deadline = self.certain_until(sent, ttl),
                    // Gone (expired while etcd was out of reach): a new one.
                    Ok(None) => break,
                    Err(_) if Instant::now() < deadline => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// Takes the leader key if nobody holds it. `Ok(None)`: this replica
    /// leads now; `Ok(Some(..))`: who does (`None` if the record is
    /// unreadable).
    async fn try_lead(&self, lease: i64) -> Result<Option<Option<Replica>>, EtcdError> {
        let answer = self
            .etcd
            .txn(TxnRequest {
                compare: vec![etcd::absent(self.leader_key.clone())],
                success: vec![
                    etcd::put_with_lease(self.leader_key.clone(), self.my_record(), lease),
                    etcd::put_with_lease(self.replica_key(), self.my_record(), lease),
                ],
                failure: vec![
                    etcd::put_with_lease(self.replica_key(), self.my_record(), lease),
                    etcd::get_op(self.leader_key.clone()),
                ],
            })
            .await?;
        if answer.succeeded {
            return Ok(None);
        }
        let Some(kv) = etcd::read_kv(&answer) else {
            return Ok(Some(None));
        };
        if kv.lease == lease {
            // Our own, written by an attempt whose answer was lost.
            return Ok(None);
        }
        if kv.lease == 0 {
            // No replica writes the key without its lease: this one would
            // never go away by itself. Remove it (if nobody changed it
            // since) and campaign again.
            tracing::error!(
                key = %String::from_utf8_lossy(&self.leader_key),
                "the leader key holds something no replica wrote (it has no lease): removing it"
            );
            self.etcd
                .txn(TxnRequest {
                    compare: vec![etcd::unchanged_since(
                        self.leader_key.clone(),
                        kv.mod_revision,
                    )],
                    success: vec![etcd::delete(self.leader_key.clone())],
                    failure: vec![],
                })
                .await?;
            return Ok(Some(None));
        }
        let leader: Option<Replica> = serde_json::from_slice(&kv.value).ok();
        if leader.is_none() && self.unreadable_logged.due() {
            tracing::warn!(
                lease = kv.lease,
                "the leader key is unreadable (not written by a replica); it goes when its etcd \
                 lease ends (etcdctl lease revoke to end it now)"
            );
        }
        if leader.as_ref().is_some_and(|l| l.id == self.me.id) {
            // Left from an earlier term of this process whose lease could
            // not be handed back: end that lease, which removes the key.
            self.etcd.revoke(kv.lease).await?;
            return Ok(Some(None));
        }
        Ok(Some(leader))
    }

    /// Renews the term's lease, moving `deadline` on, for as long as this
    /// replica certainly leads; returns why it stopped.
    pub(crate) async fn hold(&self, term: &Term, deadline: &watch::Sender<Instant>) -> String {
        let mut certain = term.deadline;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every()) => {}
                _ = tokio::time::sleep_until(certain) => {
                    return "the leadership could not be renewed in time".into();
                }
            }
            // The key first, then the renewal: once the key is gone (removed
            // by hand), the leadership is extended at most once more, by
            // one lease — what a new leader waits out on top of the agents'
            // leases (`EngineConfig::takeover_wait`).
            let key = tokio::select! {
                r = self.etcd.get(&self.leader_key) => r,
                _ = tokio::time::sleep_until(certain) => {
                    return "etcd did not answer in time".into();
                }
            };
            match key {
                Ok(Some(kv)) if kv.lease == term.lease => {}
                Ok(_) => return "another replica holds the leader key".into(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the leader key; trying again");
                    continue;
                }
            }
            let sent = Instant::now();
            let renewed = tokio::select! {
                r = self.etcd.keep_alive(term.lease) => r,
                _ = tokio::time::sleep_until(certain) => {
                    return "etcd did not renew the leadership in time".into();
                }
            };
            match renewed {
                Ok(Some(ttl)) => {
                    certain = self.certain_until(sent, ttl);
                    deadline.send_replace(certain);
                }
                Ok(None) => return "the leadership's etcd lease expired".into(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leadership; trying again");
                }
            }
        }
    }

    /// Gives the leadership up at once (a clean stop), so another replica
    /// need not wait for the lease to run out.
    pub(crate) async fn resign(&self, term: Term) {
        if let Err(e) = self.etcd.revoke(term.lease).await {
            tracing::warn!(error = %e, "could not hand the leadership back; another replica takes it when its lease runs out");
        }
    }

    /// Until when a lease renewed by a request sent at `sent` for `ttl` is
    /// certainly still held: etcd counts the lease from when it received
    /// the renewal (after `sent`), on its own clock, which may run up to
    /// `clock_drift` faster than ours; and a tenth of it (at most a
    /// second) is kept back so the runtime's check has time to act.
    fn certain_until(&self, sent: Instant, ttl: Duration) -> Instant {
        let margin = (ttl / 10).min(Duration::from_secs(1));
        let certain = ttl.div_f64(1.0 + self.clock_drift).saturating_sub(margin);
        sent + certain
    }

    /// Every replica registered, and which one leads.
    pub(crate) async fn replicas(&self) -> Result<Vec<ReplicaView>, EtcdError> {
        let leader: Option<Replica> = self
            .etcd
            .get(&self.leader_key)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let kvs = self
            .etcd
            .range(
                &self.replicas_prefix,
                &etcd::prefix_end(&self.replicas_prefix),
            )
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Replica>(&kv.value).ok())
            .map(|replica| ReplicaView {
                leader: leader.as_ref().is_some_and(|l| l.id == replica.id),
                replica,
            })
            .collect())
    }

    /// Each etcd endpoint's health, for status.
    pub(crate) fn etcd(&self) -> &Etcd {
        &self.etcd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_ends_before_etcd_could_expire_the_lease() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _e = rt.enter();
        let etcd = Etcd::new(&["http://127.0.0.1:1".into()], &Default::default()).unwrap();
        let me = Replica {
            id: "a".into(),
            url: "http://127.0.0.1:7400".into(),
        };
        let election = Election::new(etcd, "/f/", me, Duration::from_secs(3), 0.01);
        let sent = Instant::now();
        let until = election.certain_until(sent, Duration::from_secs(3));
        // 3 s / 1.01 − 300 ms.
        let expected = Duration::from_secs(3).div_f64(1.01) - Duration::from_millis(300);
        assert_eq!(until - sent, expected);
        assert!(until - sent < Duration::from_secs(3));
    }
}
