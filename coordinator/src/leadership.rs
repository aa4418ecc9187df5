//! What the services see of the replicas: this replica's runtime while it
//! leads, or which replica leads, so agents and operators are sent there.
//! With the embedded store there is one coordinator and it always leads.

use tokio::sync::watch;

use crate::election::Replica;
use crate::runtime::Handle;

/// This replica's part right now.
#[derive(Clone)]
pub(crate) enum Part {
    Leading(Handle),
    /// Another replica leads (`None`: none is known yet).
    Following(Option<Replica>),
}

/// Refused because another replica leads.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotLeader {
    #[error("this coordinator replica is not the leader; the leader is {} ({})", .0.url, .0.id)]
    Elsewhere(Replica),
    #[error(
        "this coordinator replica is not the leader and knows of none: an election is under way, or etcd cannot be reached (see failoverctl cluster status); try again shortly"
    )]
    Unknown,
}

impl NotLeader {
    /// Where the leader is reached, if known.
    pub fn leader_url(&self) -> Option<&str> {
        match self {
            NotLeader::Elsewhere(r) => Some(&r.url),
            NotLeader::Unknown => None,
        }
    }
}

/// The services' view of [`Part`], cheap to clone.
#[derive(Clone)]
pub(crate) struct Leadership {
    part: watch::Receiver<Part>,
}

impl Leadership {
    pub(crate) fn new(part: watch::Receiver<Part>) -> Leadership {
        Leadership { part }
    }

    /// The one coordinator of the embedded store.
    pub(crate) fn always(handle: Handle) -> Leadership {
        // Nobody changes it; a receiver keeps the last value.
        let (_, rx) = watch::channel(Part::Leading(handle));
        Leadership { part: rx }
    }

    /// The leading runtime, or who leads instead.
    pub(crate) fn handle(&self) -> Result<Handle, NotLeader> {
        match &*self.part.borrow() {
            Part::Leading(handle) => Ok(handle.clone()),
            Part::Following(Some(leader)) => Err(NotLeader::Elsewhere(leader.clone())),
            Part::Following(None) => Err(NotLeader::Unknown),
        }
    }

    /// The leader this replica follows, if it knows one.
    pub(crate) fn leader(&self) -> Option<Replica> {
        match &*self.part.borrow() {
            Part::Following(leader) => leader.clone(),
            Part::Leading(_) => None,
        }
    }

    pub(crate) fn leading(&self) -> bool {
        matches!(&*self.part.borrow(), Part::Leading(_))
    }
}
