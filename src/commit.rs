//! The commit stage: one thread that owns the open hours. It takes every submission waiting in its
//! queue (from any number of connections), checks and counts their events and logs the counted
//! ones as one group commit. A second thread, the sync thread, runs the durability barrier and only
//! then answers: while it waits on the device, the commit thread already logs the next groups, and
//! the next barrier covers all of them. Groups are answered strictly in order, so a duplicate is
//! never confirmed before the event it repeats is durable. At each checkpoint tick it
//! seals the hours that are due, writes the changed state and trims the log, and hands newly sealed
//! records to the submit stage once they are durable.
//!
//! On a storage failure nothing more can be promised: the events of the failed group are answered
//! `storage_error`, every later one too, and the process stops so that a restart replays the truth
//! from disk (the in-memory hours may hold events that were never made durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Admission, Aggregator, Rules};
use crate::clock::Clock;
use crate::ingest::{AckId, ErrorCode, Event, Reply};
use crate::outbox::{Outbox, OutboxError, RecordState, Recovered, StoredRecord};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// How long the commit and sync threads poll for work before they park.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// Most events taken into one group commit.
const MAX_GROUP_EVENTS: usize = 16 * 1024;

/// The well-formed events of one read from one connection.
pub struct Submission {
    pub events: Vec<Event>,
    pub received: Instant,
    /// One reply per event, in order.
    pub reply: oneshot::Sender<Vec<Reply>>,
}

pub enum Command {
    Submit(Submission),
    /// Time to seal what is due and checkpoint.
    Tick,
    /// New time rules after a reload.
    Reconfigure(Rules),
}

pub struct Committer {
    outbox: Arc<Outbox>,
    aggregator: Aggregator,
    clock: Clock,
    metrics: Arc<Metrics>,
    sealed_tx: mpsc::UnboundedSender<Vec<StoredRecord>>,
    /// Sequence of the last group commit.
    seq: u64,
    checkpointed_seq: u64,
    failed: Arc<AtomicBool>,
    fatal: CancellationToken,
    late_seen: (u64, u64),
    health: Arc<Health>,
    /// `storage.max_bytes`: above it the outbox counts as full.
    max_bytes: u64,
}

/// One group commit waiting for its barrier.
struct Logged {
    /// Whether the group wrote to the log (otherwise it only waits for earlier groups).
    wrote: bool,
    /// The log sequence of the last group written, as of this one.
    seq: u64,
    accepted: u64,
    deliveries: Vec<(oneshot::Sender<Vec<Reply>>, Vec<Reply>, Instant)>,
}

/// The sync thread: barrier, then answer, for every group logged meanwhile.
fn sync_loop(
    outbox: Arc<Outbox>,
    groups: std::sync::mpsc::Receiver<Logged>,
    metrics: Arc<Metrics>,
    failed: Arc<AtomicBool>,
    fatal: CancellationToken,
) {
    let mut groups = groups;
    let try_next = |groups: &mut std::sync::mpsc::Receiver<Logged>| match groups.try_recv() {
        Ok(group) => Ok(Some(group)),
        Err(std::sync::mpsc::TryRecvError::Empty) => Ok(None),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(()),
    };
    while let Some(first) = spin_then_wait(&mut groups, try_next, |groups| groups.recv().ok()) {
        let mut batch = vec![first];
        batch.extend(groups.try_iter());
        let mut ok = !failed.load(Ordering::SeqCst);
        if ok && batch.iter().any(|g| g.wrote) {
            let seq = batch.iter().map(|g| g.seq).max().unwrap_or(0);
            // The barrier, then the watermark: it never names a sequence sled does not hold.
            if let Err(err) = outbox.barrier().and_then(|()| outbox.mark_durable(seq)) {
                tracing::error!(%err, "outbox sync failed; refusing everything from now on and stopping");
                failed.store(true, Ordering::SeqCst);
                fatal.cancel();
                ok = false;
            }
        }
        for group in batch {
            if ok {
                metrics.events_accepted.inc_by(group.accepted);
            }
            for (reply, mut replies, received) in group.deliveries {
                if ok {
                    let latency = received.elapsed().as_secs_f64();
                    let acked = replies.iter().filter(|r| matches!(r, Reply::Ok { .. })).count();
                    (0..acked).for_each(|_| metrics.ack_latency.observe(latency));
                } else {
                    refuse_acks(&mut replies);
                }
                let _ = reply.send(replies);
            }
        }
    }
}

/// Turns every `ok` reply into `storage_error`: nothing of the group may be confirmed.
fn refuse_acks(replies: &mut [Reply]) {
    for reply in replies.iter_mut() {
        if let Reply::Ok { id, .. } = reply {
            let id = match id {
                AckId::Client(id) => Some(std::mem::take(id)),
                AckId::Generated { .. } => None,
            };
            *reply = storage_error(id);
        }
    }
}

impl Committer {
    /// Rebuilds the open hours from the checkpoint and the log after it.
    #[allow(clippy::too_many_arguments)]
    pub fn recover(
        outbox: Arc<Outbox>,
        recovered: &mut Recovered,
        rules: Rules,
        clock: Clock,
        metrics: Arc<Metrics>,
        sealed_tx: mpsc::UnboundedSender<Vec<StoredRecord>>,
        fatal: CancellationToken,
        health: Arc<Health>,
        max_bytes: u64,
    ) -> Self {
        let mut aggregator = Aggregator::restore(
            rules,
            std::mem::take(&mut recovered.buckets),
            std::mem::take(&mut recovered.ids),
            recovered.meta.sealed_through,
        );
        for admitted in &recovered.log {
            aggregator.apply(admitted);
        }
        tracing::info!(
            open_records = aggregator.open_records(),
            replayed_events = recovered.log.len(),
            "open hours restored"
        );
        recovered.log = Vec::new();
        Self {
            outbox,
            aggregator,
            clock,
            metrics,
            sealed_tx,
            seq: recovered.last_seq,
            checkpointed_seq: recovered.meta.log_seq,
            failed: Arc::new(AtomicBool::new(false)),
            fatal,
            late_seen: (0, 0),
            health,
            max_bytes,
        }
    }

    /// Adds the hourly heartbeat of `submit.heartbeat_dimensions`.
    pub fn with_heartbeat(mut self, heartbeat: Option<crate::aggregate::Heartbeat>) -> Self {
        self.aggregator.set_heartbeat(heartbeat);
        self
    }

    /// Runs until every sender of `commands` is gone, then writes a last checkpoint.
    pub fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), OutboxError> {
        self.checkpoint()?;
        self.measure_outbox();
        self.health.commit_turned();
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let sync = {
            let (outbox, metrics) = (self.outbox.clone(), self.metrics.clone());
            let (failed, fatal) = (self.failed.clone(), self.fatal.clone());
            std::thread::Builder::new()
                .name("meterd-sync".into())
                .spawn(move || sync_loop(outbox, sync_rx, metrics, failed, fatal))
                .map_err(OutboxError::Sync)?
        };
        let mut group: Vec<Submission> = Vec::new();
        let try_next = |commands: &mut mpsc::Receiver<Command>| match commands.try_recv() {
            Ok(command) => Ok(Some(command)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
        };
        while let Some(first) = spin_then_wait(&mut commands, try_next, |c| c.blocking_recv()) {
            let mut tick = false;
            let mut events = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Tick => tick = true,
                    Command::Reconfigure(rules) => self.aggregator.set_rules(rules),
                    Command::Submit(submission) => {
                        events += submission.events.len();
                        group.push(submission);
                    }
                }
                if events < MAX_GROUP_EVENTS {
                    next = commands.try_recv().ok();
                }
            }
            if !group.is_empty() {
                let logged = self.commit(&mut group);
                if sync_tx.send(logged).is_err() {
                    break;
                }
            }
            if tick && !self.failed() {
                self.checkpoint()?;
                self.measure_outbox();
            }
            self.health.commit_turned();
        }
        drop(sync_tx);
        let _ = sync.join();
        if self.failed() {
            return Ok(());
        }
        self.checkpoint()
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Checks, counts and logs one group; its replies wait in the returned [`Logged`] for the barrier.
    fn commit(&mut self, group: &mut Vec<Submission>) -> Logged {
        let mut deliveries = Vec::with_capacity(group.len());
        if self.failed() {
            for submission in group.drain(..) {
                let replies = submission.events.iter().map(|e| storage_error(e.id.clone())).collect();
                deliveries.push((submission.reply, replies, submission.received));
            }
            return Logged { wrote: false, seq: self.seq, accepted: 0, deliveries };
        }
        let now = self.clock.now();
        let seq = self.seq + 1;
        let mut logged = Vec::new();
        let mut duplicates = 0u64;
        for submission in group.drain(..) {
            let mut out = Vec::with_capacity(submission.events.len());
            for event in submission.events {
                let client_id = event.id.clone();
                let reply = match self.aggregator.admit(event, now) {
                    Ok(Admission::Counted { admitted, .. }) => {
                        let id = match client_id {
                            Some(id) => AckId::Client(id),
                            None => AckId::Generated { commit: seq, index: logged.len() as u32 },
                        };
                        logged.push(admitted);
                        Reply::Ok { id, duplicate: false }
                    }
                    Ok(Admission::Duplicate { id }) => {
                        duplicates += 1;
                        Reply::Ok { id: AckId::Client(id), duplicate: true }
                    }
                    Err(rejection) => {
                        self.metrics.events_rejected.with_label_values(&[rejection.code.as_str()]).inc();
                        Reply::Err(crate::ingest::LineError { id: client_id, rejection })
                    }
                };
                out.push(reply);
            }
            deliveries.push((submission.reply, out, submission.received));
        }
        self.metrics.events_duplicate.inc_by(duplicates);
        self.record_late_metrics();
        self.metrics.records.with_label_values(&["open"]).set(self.aggregator.open_records() as i64);
        let mut wrote = false;
        if !logged.is_empty() {
            match self.outbox.append(seq, &logged) {
                Ok(()) => {
                    self.seq = seq;
                    wrote = true;
                }
                Err(err) => {
                    tracing::error!(%err, "outbox write failed; refusing everything from now on and stopping");
                    self.failed.store(true, Ordering::SeqCst);
                    self.fatal.cancel();
                    for (_, replies, _) in &mut deliveries {
                        refuse_acks(replies);
                    }
                    return Logged { wrote: false, seq: self.seq, accepted: 0, deliveries };
                }
            }
        }
        Logged { wrote, seq: self.seq, accepted: logged.len() as u64, deliveries }
    }

    fn record_late_metrics(&mut self) {
        let (carried, rejected) = (self.aggregator.late_carried, self.aggregator.late_rejected);
        let late = &self.metrics.late_events;
        late.with_label_values(&["carry_forward"]).inc_by(carried - self.late_seen.0);
        late.with_label_values(&["reject"]).inc_by(rejected - self.late_seen.1);
        self.late_seen = (carried, rejected);
    }

    /// Updates the outbox size and whether it is full; full clears below 90 % of the limit, so
    /// readiness does not flap at the boundary.
    fn measure_outbox(&self) {
        match self.outbox.size_on_disk() {
            Ok(bytes) => {
                self.metrics.outbox_bytes.set(bytes as i64);
                let was_full = self.health.outbox_full();
                let full = if was_full { bytes * 10 >= self.max_bytes * 9 } else { bytes > self.max_bytes };
                if full != was_full {
                    if full {
                        tracing::error!(
                            bytes,
                            max_bytes = self.max_bytes,
                            "outbox full: new events are refused with overloaded until submission drains it"
                        );
                    } else {
                        tracing::info!(bytes, "outbox below its limit again: accepting events");
                    }
                    self.health.set_outbox_full(full);
                }
            }
            Err(err) => tracing::warn!(%err, "cannot measure the outbox"),
        }
    }

    /// Seals what is due, writes the changes, trims the log, and passes sealed records on.
    fn checkpoint(&mut self) -> Result<(), OutboxError> {
        let now = self.clock.now();
        self.aggregator.seal_due(now);
        let delta = self.aggregator.take_delta();
        if delta.is_empty() && !delta.sealed_through_advanced && self.seq == self.checkpointed_seq {
            return Ok(());
        }
        let sealing = !delta.sealed.is_empty();
        if let Err(err) = self.outbox.checkpoint(self.seq, &delta, now, sealing) {
            tracing::error!(%err, "outbox checkpoint failed; stopping");
            self.failed.store(true, Ordering::SeqCst);
            self.fatal.cancel();
            return Err(err);
        }
        self.checkpointed_seq = self.seq;
        self.metrics.records.with_label_values(&["open"]).set(self.aggregator.open_records() as i64);
        if sealing {
            tracing::info!(records = delta.sealed.len(), "sealed hourly records");
            let stored = delta
                .sealed
                .into_iter()
                .map(|record| StoredRecord { record, sealed_at: now, state: RecordState::Pending })
                .collect();
            let _ = self.sealed_tx.send(stored);
        }
        Ok(())
    }
}

fn storage_error(id: Option<String>) -> Reply {
    Reply::rejected(
        id,
        ErrorCode::StorageError,
        "the outbox could not make the event durable; it was not counted",
    )
}

/// The next item of a queue: polls `try_next` (`Ok(None)` = empty, `Err` = closed) for up to
/// [`SPIN_BEFORE_PARK`], yielding the CPU between tries, and only then parks in `wait`. Under load
/// the next item usually comes within microseconds, and a futex wake-up would add more than that
/// to every ack.
fn spin_then_wait<Q, T>(
    queue: &mut Q,
    try_next: impl Fn(&mut Q) -> Result<Option<T>, ()>,
    wait: impl FnOnce(&mut Q) -> Option<T>,
) -> Option<T> {
    let started = Instant::now();
    while started.elapsed() < SPIN_BEFORE_PARK {
        match try_next(queue) {
            Ok(Some(item)) => return Some(item),
            Ok(None) => std::thread::yield_now(),
            Err(()) => return None,
        }
    }
    wait(queue)
}

/// Sends [`Command::Tick`] every `every` until `cancel`.
pub async fn tick(commands: mpsc::Sender<Command>, every: Duration, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if commands.send(Command::Tick).await.is_err() {
                    return;
                }
            }
            _ = cancel.cancelled() => return,
        }
    }
}
