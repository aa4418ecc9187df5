//! Lease arithmetic, in one place: what a grant lets an agent do, how long
//! the coordinator waits one out, and how long it waits after a start.
//!
//! **Architecture invariant (lease arithmetic):** a grant acknowledging
//! heartbeat `seq` lets the agent act until `sent(seq) + ttl` on its own
//! clock; the coordinator assumes it may act until `received(seq) + ttl *
//! (1 + rho)` on its clock. A heartbeat is received after it is sent, and
//! the agent's clock runs at most `1 + rho` times slower, so the agent's
//! lease always ends first. Nothing outside this file multiplies a lease
//! by `1 + rho` or decides whether a grant may be made.

use std::time::Duration;

use tokio::time::Instant;

use super::LeaseGrant;

/// The lease rules of this coordinator.
#[derive(Debug, Clone, Copy)]
pub(super) struct Leases {
    /// Bound `rho` on how much slower an agent's clock may run than ours.
    clock_drift: f64,
    /// How long after a start another process may still be granting
    /// leases: a replica's predecessor as leader (whose leadership may
    /// outlast the moment this one took over by one leader lease, if its
    /// key was removed by hand); zero for a single coordinator.
    takeover: Duration,
}

impl Leases {
    pub(super) fn new(clock_drift: f64, takeover: Duration) -> Leases {
        Leases {
            clock_drift,
            takeover,
        }
    }

    /// `ttl * (1 + rho)`: how long after a grant its holder may still be
    /// acting, as far as this coordinator can tell.
    pub(super) fn wait(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(1.0 + self.clock_drift)
    }

    /// A grant of `ttl` at `epoch` in answer to a heartbeat received at
    /// `received`, and the instant until which its holder may act. `None`
    /// when no grant may be made now (today never: the one place where a
    /// replica's leadership will bound it).
    pub(super) fn grant(
        &self,
        group: &str,
        epoch: u64,
        ttl: Duration,
        received: Instant,
    ) -> Option<(LeaseGrant, Instant)> {
        let grant = LeaseGrant {
            group: group.to_owned(),
            epoch,
            ttl,
        };
        Some((grant, received + self.wait(ttl)))
    }

    /// After a start nobody knows when the previous process last granted a
    /// lease of up to `ttl`: it is waited out in full from `start` (from
    /// the end of the predecessor's possible leadership, among replicas).
    pub(super) fn after_start(&self, ttl: Duration, start: Instant) -> Instant {
        start + self.takeover + self.wait(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_outlasts_the_lease_by_the_drift_margin() {
        let leases = Leases::new(0.01, Duration::ZERO);
        assert_eq!(
            leases.wait(Duration::from_secs(3)),
            Duration::from_millis(3030)
        );
        let received = Instant::now();
        let (grant, until) = leases
            .grant("g", 4, Duration::from_secs(1), received)
            .unwrap();
        assert_eq!((grant.epoch, grant.ttl), (4, Duration::from_secs(1)));
        assert_eq!(until, received + Duration::from_millis(1010));
    }

    #[test]
    fn a_new_leader_also_waits_out_its_predecessors_leadership() {
        let leases = Leases::new(0.01, Duration::from_secs(2));
        let start = Instant::now();
        assert_eq!(
            leases.after_start(Duration::from_secs(1), start),
            start + Duration::from_millis(3010)
        );
    }
}
