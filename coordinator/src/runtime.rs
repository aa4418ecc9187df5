//! The coordinator's single actor: it owns the engine, the store and the
//! outbound half of every agent session, and applies the engine's effects.
//!
//! **Architecture invariant (write before tell):** the actor takes every
//! input that is waiting (up to [`MAX_BATCH`]), runs them through the
//! engine, commits all of the batch's writes with one flush and fsync, and
//! only then sends messages, closes sessions and answers admin calls. A new
//! epoch is therefore durable before any agent hears of it, an admin change
//! is durable before it is acknowledged, and 1,000 simultaneous promotions
//! cost one flush, not 1,000.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1::CoordinatorMessage;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::convert::to_proto;
use crate::engine::{
    AdminCommand, AdminError, AdminResult, Durable, Effects, Engine, Input, Now, ReplyId,
    SessionId, SessionRefusal, Write,
};
use crate::limits::LogEvery;
use crate::metrics::{EventLabels, Metrics, secs};
use crate::model::{EventKind, EventRecord};
use crate::store::{Fence, Store, StoreError};

/// Most inputs handled in one batch: bounds how long one batch delays the
/// acknowledgements it carries.
const MAX_BATCH: usize = 4096;
/// Inputs waiting for the actor; sessions wait (and stop reading their
/// streams) when it is full.
const INPUT_CAPACITY: usize = 65_536;
/// Events buffered for slow watchers before they are told they lagged.
const EVENT_BROADCAST_CAPACITY: usize = 4096;

/// Fault injection for the fault suite: with
/// `FAILOVER_CRASH_POINT=after-promotion-commit`, the process aborts right
/// after the first batch that promotes someone is durable and before any
/// agent hears of it — the window between deciding a promotion and
/// announcing it. Unset (always, in production) it does nothing.
const CRASH_POINT_VAR: &str = "FAILOVER_CRASH_POINT";

/// The outbound half of one agent session.
pub(crate) type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

enum Request {
    Input(Input),
    OpenSession {
        input: Input,
        outbound: Outbound,
        cancel: CancellationToken,
    },
    Admin {
        actor: String,
        command: AdminCommand,
        reply: oneshot::Sender<AdminResult>,
    },
}

/// Cloneable handle through which sessions and admin calls reach the actor.
#[derive(Clone)]
pub(crate) struct Handle {
    requests: mpsc::Sender<Request>,
    next_session: Arc<AtomicU64>,
    /// The engine's current pre-Hello timeout, in milliseconds.
    connect_timeout_ms: Arc<AtomicU64>,
    events: broadcast::Sender<EventRecord>,
    store: Arc<dyn Store>,
}

impl Handle {
    pub(crate) fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// How long a new session may take to send its Hello.
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.load(Ordering::Relaxed))
    }

    /// Registers a session's outbound stream and hands its Hello to the engine.
    pub(crate) async fn open_session(
        &self,
        input: Input,
        outbound: Outbound,
        cancel: CancellationToken,
    ) {
        let _ = self
            .requests
            .send(Request::OpenSession {
                input,
                outbound,
                cancel,
            })
            .await;
    }

    pub(crate) async fn input(&self, input: Input) {
        let _ = self.requests.send(Request::Input(input)).await;
    }

    pub(crate) async fn admin(&self, actor: String, command: AdminCommand) -> AdminResult {
        let (reply, answer) = oneshot::channel();
        let request = Request::Admin {
            actor,
            command,
            reply,
        };
        let stopped = || AdminError::Aborted("the coordinator is shutting down".into());
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// New events, as they are committed.
    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    /// Where new events are announced (for those that subscribe later).
    pub(crate) fn event_sender(&self) -> broadcast::Sender<EventRecord> {
        self.events.clone()
    }

    /// Retained events, read straight from the store.
    pub(crate) async fn events(
        &self,
        group: Option<String>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.events(group.as_deref(), limit))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("the event read failed: {e}"))))
    }

    /// A page of retained events after `after`, oldest first.
    pub(crate) async fn events_after(
        &self,
        group: Option<String>,
        after: u64,
        max: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.events_after(group.as_deref(), after, max))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("the event read failed: {e}"))))
    }
}

struct SessionOut {
    outbound: Outbound,
    cancel: CancellationToken,
}

pub(crate) struct Runtime {
    engine: Engine,
    store: Arc<dyn Store>,
    /// The fencing term every commit of this process is guarded by: once
    /// another process takes a newer one, nothing more is written here.
    fence: Fence,
    requests: mpsc::Receiver<Request>,
    events: broadcast::Sender<EventRecord>,
    sessions: HashMap<SessionId, SessionOut>,
    replies: HashMap<ReplyId, oneshot::Sender<AdminResult>>,
    next_reply: ReplyId,
    connect_timeout_ms: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// What the store holds, as last committed: what the groups of a batch
    /// that could not be written go back to.
    durable: Durable,
    /// Since when writes fail (wall-clock ms), and why.
    unwritable: Option<(u64, String)>,
    failure_log: LogEvery,
    /// See [`CRASH_POINT_VAR`].
    crash_after_promotion_commit: bool,
    /// Among replicas: until when this one certainly leads (moved on by
    /// `election.rs`). `None`: the embedded store, always leading.
    leading_until: Option<watch::Receiver<Instant>>,
}

impl Runtime {
    pub(crate) fn new(
        engine: Engine,
        durable: Durable,
        store: Arc<dyn Store>,
        fence: Fence,
        metrics: Arc<Metrics>,
    ) -> (Runtime, Handle) {
        let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_BROADCAST_CAPACITY);
        let connect_timeout_ms =
            Arc::new(AtomicU64::new(engine.connect_timeout().as_millis() as u64));
        let handle = Handle {
            requests: tx,
            next_session: Arc::new(AtomicU64::new(1)),
            connect_timeout_ms: connect_timeout_ms.clone(),
            events: events.clone(),
            store: store.clone(),
        };
        let runtime = Runtime {
            engine,
            store,
            fence,
            requests: rx,
            events,
            sessions: HashMap::new(),
            replies: HashMap::new(),
            next_reply: 1,
            connect_timeout_ms,
            metrics,
            durable,
            unwritable: None,
            failure_log: LogEvery::new(Duration::from_secs(10)),
            crash_after_promotion_commit: std::env::var(CRASH_POINT_VAR)
                .is_ok_and(|v| v == "after-promotion-commit"),
            leading_until: None,
        };
        if runtime.crash_after_promotion_commit {
            tracing::warn!(
                "fault injection armed: will abort after the next promotion is committed"
            );
        }
        (runtime, handle)
    }

    /// Among replicas: announce nothing once `leading_until` has passed.
    pub(crate) fn leading_until(mut self, until: watch::Receiver<Instant>) -> Runtime {
        self.leading_until = Some(until);
        self
    }

    /// Whether this process may tell agents and operators anything now:
    /// a lease grant sent later than the leadership is certain could
    /// outlast what the next leader waits for.
    fn may_announce(&self) -> bool {
        self.leading_until
            .as_ref()
            .is_none_or(|until| Instant::now() < *until.borrow())
    }

    /// Runs until `shutdown` is cancelled. A batch the store cannot write
    /// is not told (see [`Runtime::unwritten`]); an error means another
    /// process took the store over (a newer fencing term), so this one must
    /// stop.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), StoreError> {
        loop {
            let deadline = self.engine.next_deadline();
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                request = self.requests.recv() => match request {
                    Some(r) => Some(r),
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => None,
                // While writes fail, look every second whether the store
                // works again, so the metric clears without a write.
                _ = tokio::time::sleep(Duration::from_secs(1)), if self.unwritable.is_some() => None,
            };
            if self.unwritable.is_some() && self.store.writable() {
                self.store_works_again();
            }
            let now = now();
            let mut out = Effects::default();
            let mut inputs = 0;
            if let Some(request) = first {
                self.accept(request, now, &mut out);
                inputs += 1;
                for _ in 1..MAX_BATCH {
                    match self.requests.try_recv() {
                        Ok(request) => {
                            self.accept(request, now, &mut out);
                            inputs += 1;
                        }
                        Err(_) => break,
                    }
                }
                self.metrics.batch_inputs.observe(inputs as f64);
            }
            self.engine.tick(now, &mut out);
            if let Err(e) = self.apply(out, now).await {
                self.end_sessions();
                return Err(e);
            }
            self.connect_timeout_ms.store(
                self.engine.connect_timeout().as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        self.end_sessions();
        Ok(())
    }

    /// Ends every session (their agents reconnect, to whichever
    /// coordinator leads next).
    fn end_sessions(&mut self) {
        for (_, s) in self.sessions.drain() {
            s.cancel.cancel();
        }
    }

    fn accept(&mut self, request: Request, now: Now, out: &mut Effects) {
        match request {
            Request::Input(input) => {
                match &input {
                    Input::SessionClosed { session } => {
                        self.sessions.remove(session);
                    }
                    Input::Heartbeat { .. } => {
                        self.metrics.heartbeats.inc();
                    }
                    _ => {}
                }
                self.engine.handle(input, now, out);
            }
            Request::OpenSession {
                input,
                outbound,
                cancel,
            } => {
                if let Input::SessionOpened { session, .. } = &input {
                    self.sessions
                        .insert(*session, SessionOut { outbound, cancel });
                }
                self.engine.handle(input, now, out);
            }
            Request::Admin {
                actor,
                command,
                reply,
            } => {
                let id = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(id, reply);
                self.engine.handle(
                    Input::Admin {
                        reply: id,
                        actor,
                        command,
                    },
                    now,
                    out,
                );
            }
        }
    }

    /// Applies one batch's effects; `now` is when the batch began.
    async fn apply(&mut self, mut out: Effects, now: Now) -> Result<(), StoreError> {
        let acted_at = now.mono;
        let batch = std::mem::take(&mut out.writes);
        let writes = if batch.is_empty() {
            batch
        } else {
            let store = self.store.clone();
            let fence = self.fence;
            let committing = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = store.commit(&batch, Some(fence));
                (batch, result.map(|()| started.elapsed()))
            });
            let (batch, result) = match committing.await {
                Ok(done) => done,
                // The commit panicked: nothing of this batch may be told.
                Err(e) => (
                    Vec::new(),
                    Err(StoreError::Io(format!("the commit did not finish: {e}"))),
                ),
            };
            match result {
                Ok(took) => {
                    self.metrics.store_commits.inc();
                    self.metrics.store_commit.observe(secs(took));
                    self.durable.committed(&batch);
                    self.store_works_again();
                    batch
                }
                Err(e @ (StoreError::Fenced { .. } | StoreError::Partial(_))) => {
                    tracing::error!(error = %e, "this coordinator may not write any more: stopping");
                    for (id, _) in out.replies {
                        if let Some(tx) = self.replies.remove(&id) {
                            let _ = tx.send(Err(AdminError::Aborted(e.to_string())));
                        }
                    }
                    return Err(e);
                }
                Err(e) => {
                    out = self.unwritten(&e, batch, out, now);
                    Vec::new()
                }
            }
        };
        let promoted = |w: &Write| matches!(w, Write::Event(e) if e.kind == EventKind::Promoted);
        if self.crash_after_promotion_commit && writes.iter().any(promoted) {
            eprintln!("{CRASH_POINT_VAR}: aborting after a promotion commit, before announcing it");
            std::process::abort();
        }
        let Effects {
            writes: _,
            sends,
            closes,
            refusals,
            replies,
            promotions,
        } = out;
        let durable_at = Instant::now();
        for write in writes {
            if let Write::Event(event) = write {
                tracing::info!(
                    group = %event.group,
                    epoch = event.epoch,
                    kind = event.kind.as_str(),
                    old_primary = event.old_primary.as_deref().unwrap_or("-"),
                    new_primary = event.new_primary.as_deref().unwrap_or("-"),
                    actor = %event.actor,
                    "{}",
                    event.reason
                );
                self.metrics
                    .events
                    .get_or_create(&EventLabels {
                        kind: event.kind.as_str().to_owned(),
                    })
                    .inc();
                let _ = self.events.send(event);
            }
        }
        if !self.may_announce() {
            // Committed, not told: as after a crash right after the commit.
            // The leadership loop ends this runtime; the next leader reads
            // the batch and waits out every lease.
            if self.failure_log.due() {
                tracing::error!(
                    "this replica's leadership is no longer certain: announcing nothing more"
                );
            }
            for (id, _) in replies {
                if let Some(tx) = self.replies.remove(&id) {
                    let _ = tx.send(Err(AdminError::Unavailable(
                        "this coordinator replica stopped leading; ask again (the new leader answers)"
                            .into(),
                    )));
                }
            }
            return Ok(());
        }
        for (session, message) in sends {
            let Some(s) = self.sessions.get(&session) else {
                continue;
            };
            if let Err(e) = s.outbound.try_send(Ok(to_proto(message))) {
                // A full buffer means the agent stopped reading: close the
                // session rather than drop messages silently; it reconnects.
                tracing::warn!(session, error = %e, "agent is not reading its session; closing it");
                if let Some(s) = self.sessions.remove(&session) {
                    s.cancel.cancel();
                }
            }
        }
        let sent_at = Instant::now();
        for note in &promotions {
            let m = &self.metrics;
            m.promotions.inc();
            if let Some(lapsed_at) = note.lapsed_at {
                m.detect
                    .observe(secs(acted_at.saturating_duration_since(lapsed_at)));
                m.decide.observe(secs(durable_at - acted_at));
                m.promote.observe(secs(sent_at - durable_at));
                m.overhead.observe(secs(sent_at - acted_at));
            }
        }
        for session in closes {
            if let Some(s) = self.sessions.remove(&session) {
                s.cancel.cancel();
            }
        }
        for (session, refusal) in refusals {
            if let Some(s) = self.sessions.remove(&session) {
                let _ = s.outbound.try_send(Err(refusal_status(&refusal)));
                s.cancel.cancel();
            }
        }
        self.metrics.sessions.set(self.sessions.len() as i64);
        for (id, result) in replies {
            if let Some(tx) = self.replies.remove(&id) {
                let _ = tx.send(result);
            }
        }
        Ok(())
    }
}

impl Runtime {
    /// Clears the failed-write state, if any.
    fn store_works_again(&mut self) {
        if let Some((since_ms, why)) = self.unwritable.take() {
            self.metrics.store_writable.set(1);
            tracing::warn!(
                since_ms,
                "the store writes again (it could not since {since_ms} ms after the epoch: {why})"
            );
        }
    }

    /// A batch the store could not write (a full disk): the engine takes it
    /// back ([`Engine::forget_unwritten`]) and says what may still be done;
    /// the failure is logged (rate-limited) and shown in the
    /// `failover_store_writable` metric until a commit works again.
    fn unwritten(&mut self, e: &StoreError, batch: Vec<Write>, out: Effects, now: Now) -> Effects {
        let why = format!(
            "the coordinator cannot write to its store ({e}): nothing was changed; try again \
             once it can (see its log)"
        );
        self.metrics.store_writable.set(0);
        self.unwritable
            .get_or_insert_with(|| (now.wall_ms, e.to_string()));
        if self.failure_log.due() {
            tracing::error!(
                error = %e,
                groups = Durable::touched_by(&batch).len(),
                "a batch could not be written: its changes are dropped and refused until the \
                 store works again"
            );
        }
        let out = Effects {
            writes: batch,
            ..out
        };
        self.engine.forget_unwritten(&self.durable, out, &why, now)
    }
}

/// The status that ends a refused session. A duplicate's carries the
/// silence limit, which the agent reads to know how long to keep trying
/// before it gives up; any other refusal is retried with backoff.
fn refusal_status(refusal: &SessionRefusal) -> Status {
    let Some(limit) = refusal.silence_limit else {
        return Status::resource_exhausted(refusal.message.clone());
    };
    let mut status = Status::already_exists(refusal.message.clone());
    if let Ok(value) = limit.as_millis().to_string().parse() {
        status
            .metadata_mut()
            .insert(proto::SILENCE_LIMIT_METADATA, value);
    }
    status
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The current time in both forms the engine uses.
pub(crate) fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}
