//! Notifications: every `[[notify]]` sink delivers the durable event log
//! — at least once, in order — from its own cursor kept in the store.
//!
//! The event log is the outbox: an event is committed in the same batch as
//! the change it records, so nothing recorded can be missed, and a sink
//! that was down (or a coordinator that was killed) resumes where its
//! cursor stopped. Each sink runs in its own task and only reads the store,
//! so a sink that keeps failing delays nothing but itself: it retries with
//! backoff, and its backlog shows in `failover_notify_backlog{sink}` and in
//! a warning. Only the runtime's holder delivers (the leader, among
//! replicas), and cursors are written under its fencing term.

pub mod config;
mod exec;
mod message;
mod smtp;
mod tls;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use self::config::{NotifyConfig, SinkKind};
use crate::engine::Write;
use crate::metrics::{Metrics, SinkLabels};
use crate::model::EventRecord;
use crate::store::{Fence, Store, StoreError};

/// Events read from the store at a time.
const PAGE: usize = 64;
/// The longest wait between attempts at a failing delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A failing sink is logged when it starts failing, then at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often an idle sink looks at the log even without news (a missed
/// broadcast, a store that came back).
const IDLE_LOOK: Duration = Duration::from_secs(5);

/// What delivers one event.
enum Deliver {
    Webhook(Box<webhook::Webhook>),
    Smtp(Box<smtp::Smtp>),
    Exec(exec::Exec),
}

impl Deliver {
    async fn deliver(&self, event: &EventRecord) -> anyhow::Result<()> {
        match self {
            Deliver::Webhook(w) => w.deliver(event).await,
            Deliver::Smtp(s) => s.deliver(event).await,
            Deliver::Exec(e) => e.deliver(event).await,
        }
    }
}

/// One configured sink, ready to deliver.
struct Sink {
    name: String,
    /// Where it delivers, for the log (never a secret).
    destination: String,
    config: NotifyConfig,
    deliver: Deliver,
}

/// Every configured sink.
#[derive(Clone, Default)]
pub(crate) struct Sinks(Arc<Vec<Sink>>);

impl Sinks {
    /// Builds every sink (reads passwords and CA files): a mistake stops
    /// the start, naming the sink and the key.
    pub(crate) fn build(configs: &[NotifyConfig]) -> anyhow::Result<Sinks> {
        config::validate_all(configs)?;
        let mut sinks = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let which = || format!("[[notify]] #{} ({})", i + 1, config.kind.as_str());
            let deliver = match config.kind {
                SinkKind::Webhook => {
                    Deliver::Webhook(Box::new(webhook::Webhook::new(config).with_context(which)?))
                }
                SinkKind::Smtp => {
                    Deliver::Smtp(Box::new(smtp::Smtp::new(config).with_context(which)?))
                }
                SinkKind::Exec => Deliver::Exec(exec::Exec::new(config)),
            };
            sinks.push(Sink {
                name: config.name(),
                destination: config.destination(),
                config: config.clone(),
                deliver,
            });
        }
        Ok(Sinks(Arc::new(sinks)))
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.name.clone()).collect()
    }

    /// Starts delivering, one task per sink, until `term.stop`.
    fn start(&self, term: &Term) {
        for index in 0..self.0.len() {
            let sinks = self.0.clone();
            let term = term.clone();
            tokio::spawn(async move { deliver_all(&sinks[index], term).await });
        }
    }
}

/// The sinks in use, delivering for the runtime's current term; replaced
/// whole when the configuration is reloaded. A replaced sink stops where
/// it is (an event being delivered is delivered again by its successor,
/// which starts from the same cursor when it keeps its name).
#[derive(Default)]
pub(crate) struct Notifier {
    state: std::sync::Mutex<NotifierState>,
}

#[derive(Default)]
struct NotifierState {
    sinks: Sinks,
    /// The current term, with the stop of the sinks' current generation.
    running: Option<Term>,
}

impl Notifier {
    pub(crate) fn new(sinks: Sinks) -> Arc<Notifier> {
        Arc::new(Notifier {
            state: std::sync::Mutex::new(NotifierState {
                sinks,
                running: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NotifierState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sinks deliver what `term` records, until it stops.
    pub(crate) fn start_term(&self, mut term: Term) {
        let mut state = self.lock();
        if let Some(old) = state.running.take() {
            old.stop.cancel();
        }
        term.term_stop = term.stop.clone();
        term.stop = term.term_stop.child_token();
        state.sinks.start(&term);
        state.running = Some(term);
    }

    /// Delivers through `sinks` from now on.
    pub(crate) fn replace(&self, sinks: Sinks) {
        let mut state = self.lock();
        let gone: Vec<String> = state
            .sinks
            .names()
            .into_iter()
            .filter(|n| !sinks.names().contains(n))
            .collect();
        state.sinks = sinks;
        let Some(old) = state.running.take() else {
            return;
        };
        old.stop.cancel();
        for name in gone {
            let labels = SinkLabels { sink: name };
            old.metrics.notify_backlog.remove(&labels);
        }
        if old.term_stop.is_cancelled() {
            return;
        }
        let mut term = old.clone();
        term.stop = old.term_stop.child_token();
        state.sinks.start(&term);
        state.running = Some(term);
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.lock().sinks.names()
    }
}

/// What a runtime's term gives its sinks.
#[derive(Clone)]
pub(crate) struct Term {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) fence: Fence,
    /// New events as they are committed (a wake-up; the store is the
    /// source).
    pub(crate) live: broadcast::Sender<EventRecord>,
    pub(crate) metrics: Arc<Metrics>,
    /// Ends the sinks' tasks: the term's end, or their replacement.
    pub(crate) stop: CancellationToken,
    /// The term's own end.
    pub(crate) term_stop: CancellationToken,
}

impl Term {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("store task failed: {e}"))))
    }

    async fn save(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        let write = Write::Cursor {
            sink: sink.to_owned(),
            seq,
        };
        let fence = self.fence;
        self.blocking(move |s| s.commit(&[write], Some(fence)))
            .await
    }

    /// Waits `d`; false when the term ends first.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// Where a sink starts: its stored cursor, or — new sink — the latest
/// event now (it is told what happens from now on, not the history).
async fn start_cursor(sink: &Sink, term: &Term) -> Option<u64> {
    loop {
        let name = sink.name.clone();
        let found = term
            .blocking(move |s| {
                Ok(match s.cursors()?.get(&name) {
                    Some(&seq) => (seq, false),
                    None => (s.last_event_seq()?.unwrap_or(0), true),
                })
            })
            .await;
        match found {
            Ok((seq, false)) => return Some(seq),
            Ok((seq, true)) => match term.save(&sink.name, seq).await {
                Ok(()) => {
                    tracing::info!(sink = %sink.name, after = seq, "new notification sink: delivering events from now on");
                    return Some(seq);
                }
                Err(StoreError::Fenced { .. }) => return None,
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, "cannot save a new sink's cursor; trying again")
                }
            },
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "cannot read the sink's cursor; trying again")
            }
        }
        if !term.pause(Duration::from_secs(1)).await {
            return None;
        }
    }
}

/// How far a sink is behind the log.
struct Progress {
    /// Delivered (or skipped) up to here.
    cursor: u64,
    /// The latest event known to be recorded.
    head: u64,
    live: broadcast::Receiver<EventRecord>,
    backlog: prometheus_client::metrics::gauge::Gauge,
}

impl Progress {
    /// Takes in the events announced since, and shows the backlog.
    fn update(&mut self) -> u64 {
        loop {
            match self.live.try_recv() {
                Ok(event) => self.head = self.head.max(event.seq),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let waiting = self.head.saturating_sub(self.cursor);
        self.backlog.set(i64::try_from(waiting).unwrap_or(i64::MAX));
        waiting
    }
}

/// The sink's life within one term: deliver every event after its cursor,
/// in order, then wait for more.
async fn deliver_all(sink: &Sink, term: Term) {
    let labels = SinkLabels {
        sink: sink.name.clone(),
    };
    let delivered = term.metrics.notify_delivered.get_or_create(&labels).clone();
    let failures = term.metrics.notify_failures.get_or_create(&labels).clone();
    let live = term.live.subscribe();
    let Some(cursor) = start_cursor(sink, &term).await else {
        return;
    };
    // The backlog counts from the log's end, not from what this task has
    // seen: after a restart or a reload it may be long.
    let last = term.blocking(|s| s.last_event_seq()).await;
    let mut progress = Progress {
        cursor,
        head: last.ok().flatten().unwrap_or(cursor).max(cursor),
        live,
        backlog: term.metrics.notify_backlog.get_or_create(&labels).clone(),
    };
    progress.update();
    loop {
        let after = progress.cursor;
        let page = term
            .blocking(move |s| s.events_after(None, after, PAGE))
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(sink = %sink.name, error = %e, "cannot read the event log; trying again");
                if !term.pause(Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        let Some(last) = page.last() else {
            progress.update();
            tokio::select! {
                news = progress.live.recv() => match news {
                    Ok(event) => progress.head = progress.head.max(event.seq),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(IDLE_LOOK) => {}
                _ = term.stop.cancelled() => return,
            }
            continue;
        };
        progress.head = progress.head.max(last.seq);
        if let Some(first) = page.first()
            && after > 0
            && first.seq > after.saturating_add(1)
        {
            tracing::warn!(
                sink = %sink.name,
                missed = first.seq - after - 1,
                "events this sink had not delivered were pruned from the log (event_retention) before it could"
            );
        }
        for event in page {
            progress.update();
            if sink.config.wants(event.kind, &event.group) {
                if !deliver_one(sink, &event, &term, &failures, &mut progress).await {
                    return;
                }
                delivered.inc();
            }
            progress.cursor = event.seq;
            match term.save(&sink.name, event.seq).await {
                Ok(()) => {}
                Err(StoreError::Fenced { .. }) => return,
                // Delivered but not noted: a restart delivers it again
                // (at least once).
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, seq = event.seq, "cannot save the sink's cursor")
                }
            }
        }
    }
}

/// Delivers one event, retrying with backoff until it is delivered; false
/// when the term ends first.
async fn deliver_one(
    sink: &Sink,
    event: &EventRecord,
    term: &Term,
    failures: &prometheus_client::metrics::counter::Counter,
    progress: &mut Progress,
) -> bool {
    let mut backoff = Duration::from_secs(1);
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let attempt = tokio::select! {
            result = sink.deliver.deliver(event) => result,
            _ = term.stop.cancelled() => return false,
        };
        let waiting = progress.update();
        match attempt {
            Ok(()) => {
                if warned.is_some() {
                    tracing::info!(sink = %sink.name, seq = event.seq, "the notification sink delivers again");
                }
                return true;
            }
            Err(e) => {
                failures.inc();
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned = Some(tokio::time::Instant::now());
                    tracing::warn!(
                        sink = %sink.name,
                        to = %sink.destination,
                        seq = event.seq,
                        kind = event.kind.as_str(),
                        group = %event.group,
                        waiting,
                        retry_in = ?backoff,
                        "cannot deliver a notification: {e:#}"
                    );
                }
            }
        }
        // Waits out the backoff, keeping the backlog current meanwhile.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = term.stop.cancelled() => return false,
                news = progress.live.recv() => match news {
                    Ok(event) => {
                        progress.head = progress.head.max(event.seq);
                        progress.update();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The runtime is gone: so is this term.
                    Err(broadcast::error::RecvError::Closed) => return false,
                }
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
