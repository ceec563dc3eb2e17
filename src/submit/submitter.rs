//! The submit loop: sealed records in, receipts and dead letters out.
//!
//! Records wait in deadline order. A batch is up to 25 due records of one scope (one product code,
//! or license ARNs), its request under the 1 MB body limit ([`super::size`]), sent at most
//! `max_requests_per_second` ([`super::send`]). What a failure means is decided by [`classify`](super::api::classify);
//! a record is never changed: every attempt sends the frozen [`SealedRecord`].
//!
//! | what happened to a record | what the loop does |
//! |---|---|
//! | accepted | a receipt |
//! | throttled, 5xx, timeout, lost answer, unprocessed | retried unchanged after a backoff with full jitter |
//! | its batch refused by a validation error | split until it stands alone; refused alone: an `invalid` dead letter, unless every record of the batch was refused alone with the same error (a pause) |
//! | `CustomerNotSubscribed`, `CustomerNotEntitledException` | kept, asked again every `submit.subscription_recheck`; a `customer_not_subscribed` dead letter if its deadline comes first |
//! | an error no model names | its batch split once, the part still refused backed off; the rest goes on |
//! | a configuration or credential error | everything paused for `submit.pause`, kept |
//! | its request alone would be over 1 MB | an `invalid` dead letter, never sent |
//! | its deadline passed | an `expired` dead letter naming the last error |
//!
//! With `aws.register_usage`, the loop sends nothing until RegisterUsage has succeeded at this
//! start (the `cleared` future of [`Submitter::run`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::MeteringApi;
use super::size::{MAX_BATCH_BYTES, request_bytes};
use super::store::Store;
use crate::aggregate::SealedRecord;
use crate::clock::deadline;
use crate::context::Context;
use crate::model::{DeadReason, RecordKey, Subscriber};
use crate::outbox::{RecordState, StoredRecord};

/// How often settled records older than `storage.retention` are compacted away.
const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// Submission timing, from `[submit]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds after its hour start by which a record must be accepted.
    pub deadline: i64,
    pub max_requests_per_second: f64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub pause: Duration,
    /// How often a record whose customer is not subscribed (yet) is offered again.
    pub subscription_recheck: Duration,
    /// Seconds receipts and dead letters are kept after they settled.
    pub retention: i64,
    /// Several products are configured: records of different license ARNs never share a call,
    /// since meterd does not know which product a license belongs to (one license, one product).
    pub call_per_license: bool,
}

/// Requests to the submit loop from the admin socket and the reload handler. The loop owns the
/// records' states, so every change to one goes through it.
#[derive(Debug)]
pub enum Control {
    /// Puts these dead letters back in the queue, unchanged; answers how many were dead letters.
    Retry { keys: Vec<RecordKey>, reply: oneshot::Sender<usize> },
    /// Deletes these dead letters; answers how many were dead letters.
    Drop { keys: Vec<RecordKey>, reply: oneshot::Sender<usize> },
    /// New settings after a reload.
    Reconfigure(Settings),
    /// A customer's subscription changed (the notification consumer).
    Lifecycle(super::lifecycle::Lifecycle),
}

/// A pending record and what the loop knows about it.
pub(super) struct Entry {
    pub(super) stored: StoredRecord,
    /// Bytes its request takes alone.
    pub(super) bytes: usize,
    pub(super) attempts: u32,
    pub(super) next_at: Instant,
    /// Not billable yet: the service's answer, which becomes the dead letter if the record's
    /// deadline comes first.
    pub(super) awaiting: Option<(DeadReason, String)>,
    /// The last failure, named in an `expired` dead letter.
    pub(super) last_error: Option<String>,
}

/// Queue order: oldest hour first, so the nearest deadline goes first.
pub(super) type QueueKey = (i64, RecordKey);

fn queue_key(record: &SealedRecord) -> QueueKey {
    (record.key.hour, record.key.clone())
}

pub struct Submitter<A> {
    pub(super) ctx: Context,
    pub(super) api: A,
    pub(super) store: Arc<dyn Store>,
    pub(super) settings: Settings,
    pub(super) queue: BTreeMap<QueueKey, Entry>,
    pub(super) accepted: i64,
    dead: HashMap<DeadReason, i64>,
    /// Queued records whose customer was not subscribed at the last answer.
    pub(super) awaiting: i64,
    pub(super) next_request: Instant,
    pub(super) paused_until: Option<Instant>,
    /// The validation error every record of a batch was refused alone with, while it holds: the
    /// batch is not split again for it.
    pub(super) systemic: Option<String>,
    next_compaction: Instant,
    /// The hour (of meterd's clock) of the last move to the receipts archive; `None` before the
    /// first, which runs at start.
    archived_hour: Option<i64>,
    /// Ending subscriptions, whose records go first, each until its instant (`lifecycle.rs`).
    pub(super) hastened: Vec<(Subscriber, i64)>,
    /// Ended subscriptions and the note their refused records' dead letters name.
    pub(super) ended: Vec<(Subscriber, String)>,
}

impl<A: MeteringApi> Submitter<A> {
    /// Starts from the records found in the outbox: pending ones are queued, settled ones counted.
    pub fn new(
        ctx: Context,
        api: A,
        store: Arc<dyn Store>,
        records: Vec<StoredRecord>,
        settings: Settings,
    ) -> Self {
        let mut this = Self {
            ctx,
            api,
            store,
            settings,
            queue: BTreeMap::new(),
            accepted: 0,
            dead: HashMap::new(),
            awaiting: 0,
            next_request: Instant::now(),
            paused_until: None,
            systemic: None,
            next_compaction: Instant::now(),
            archived_hour: None,
            hastened: Vec::new(),
            ended: Vec::new(),
        };
        this.accepted = i64::try_from(this.store.archived_receipts()).expect("receipts fit in i64");
        for stored in records {
            match &stored.state {
                RecordState::Pending => this.enqueue(stored),
                RecordState::Accepted { .. } => this.accepted += 1,
                RecordState::DeadLetter { reason, .. } => *this.dead.entry(*reason).or_default() += 1,
                // A fleet partial: the fleet database bills it, not this loop.
                RecordState::Shipped { .. } => {}
            }
        }
        if !this.queue.is_empty() {
            tracing::info!(records = this.queue.len(), "resending sealed records that were not confirmed");
        }
        this.barrier();
        this.update_gauges();
        this
    }

    /// Queues a pending record, unless its request could never be sent: that one is an `invalid`
    /// dead letter at once (durable at the caller's next barrier).
    fn enqueue(&mut self, stored: StoredRecord) {
        let bytes = request_bytes(&[&stored.record]);
        let key = queue_key(&stored.record);
        let entry =
            Entry { attempts: 0, next_at: Instant::now(), stored, bytes, awaiting: None, last_error: None };
        self.queue.insert(key.clone(), entry);
        if bytes >= MAX_BATCH_BYTES {
            let message = format!(
                "its request would be {bytes} bytes; the service takes requests under 1 MB ({MAX_BATCH_BYTES} bytes)"
            );
            tracing::error!(hour = key.0, bytes, "a record is too large to send; it was never sent");
            self.dead_letter(&key, DeadReason::Invalid, message);
        }
    }

    fn enqueue_all(&mut self, records: Vec<StoredRecord>) {
        records.into_iter().for_each(|r| self.enqueue(r));
        self.barrier();
    }

    /// Runs until `cancel`; a call in progress is finished first. Nothing is sent before
    /// `cleared` completes (RegisterUsage at this start, where it is on); records and controls
    /// are taken meanwhile.
    pub async fn run(
        mut self,
        mut sealed: mpsc::UnboundedReceiver<Vec<StoredRecord>>,
        mut controls: mpsc::Receiver<Control>,
        cleared: impl Future<Output = ()>,
        cancel: CancellationToken,
    ) {
        if !self.wait_until_cleared(cleared, &mut sealed, &mut controls, &cancel).await {
            return;
        }
        // Whether sealed records may still come: once the commit stage has stopped, what is
        // queued is still sent, and the loop ends when it is all settled.
        let mut sealed_open = true;
        loop {
            if self.store.fenced() {
                tracing::warn!("this submit loop's store is fenced (the lease moved on); it stops");
                return;
            }
            while let Ok(records) = sealed.try_recv() {
                self.enqueue_all(records);
            }
            while let Ok(control) = controls.try_recv() {
                self.control(control);
            }
            if Instant::now() >= self.next_compaction {
                self.compact();
            }
            self.archive();
            self.expire();
            self.update_gauges();
            let now = Instant::now();
            let wake = match self.paused_until {
                Some(until) if until > now => Some(until),
                _ => self.queue.values().map(|e| e.next_at).min(),
            };
            if wake.is_none_or(|at| at > now) {
                if !sealed_open && self.queue.is_empty() {
                    return;
                }
                // Nothing due: wait for new records, the next due time (at most a minute, so
                // deadlines are checked), or shutdown.
                let sleep_until =
                    wake.unwrap_or(now + Duration::from_secs(60)).min(now + Duration::from_secs(60));
                tokio::select! {
                    // A closed channel answers at once: once closed it is not asked again, or
                    // the loop would turn without end while queued records wait.
                    received = sealed.recv(), if sealed_open => match received {
                        Some(records) => self.enqueue_all(records),
                        None => sealed_open = false,
                    },
                    Some(control) = controls.recv() => self.control(control),
                    _ = tokio::time::sleep_until(sleep_until) => {}
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            self.paused_until = None;
            let batch = self.next_batch(now);
            if !self.send(batch, &cancel).await {
                return;
            }
        }
    }

    /// Takes sealed records and controls until `cleared`; false on shutdown.
    async fn wait_until_cleared(
        &mut self,
        cleared: impl Future<Output = ()>,
        sealed: &mut mpsc::UnboundedReceiver<Vec<StoredRecord>>,
        controls: &mut mpsc::Receiver<Control>,
        cancel: &CancellationToken,
    ) -> bool {
        tokio::pin!(cleared);
        let mut announced = false;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return false,
                () = &mut cleared => return true,
                Some(records) = sealed.recv() => self.enqueue_all(records),
                Some(control) = controls.recv() => self.control(control),
                _ = tokio::time::sleep(Duration::from_millis(100)), if !announced => {
                    announced = true;
                    tracing::info!(records = self.queue.len(), "submission waits for RegisterUsage to succeed");
                }
            }
            self.update_gauges();
        }
    }

    /// Removes a record from the queue.
    pub(super) fn take(&mut self, key: &QueueKey) -> Option<Entry> {
        let entry = self.queue.remove(key)?;
        if entry.awaiting.is_some() {
            self.awaiting -= 1;
        }
        Some(entry)
    }

    pub(super) fn dead_letter(&mut self, key: &QueueKey, reason: DeadReason, message: String) {
        let Some(mut entry) = self.take(key) else { return };
        tracing::warn!(reason = reason.as_str(), hour = key.0, %message, "record dead-lettered");
        entry.stored.state = RecordState::DeadLetter { reason, message, at: self.ctx.clock.now() };
        self.persist(&entry.stored);
        *self.dead.entry(reason).or_default() += 1;
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::Retry { keys, reply } => {
                let mut retried = 0;
                for key in keys {
                    let Some(mut stored) = self.dead_letter_record(&key) else { continue };
                    if let RecordState::DeadLetter { reason, message, .. } = &stored.state {
                        tracing::info!(reason = reason.as_str(), hour = key.hour, %message, "dead letter retried by an operator");
                        *self.dead.entry(*reason).or_default() -= 1;
                    }
                    stored.state = RecordState::Pending;
                    self.persist(&stored);
                    self.enqueue(stored);
                    retried += 1;
                }
                self.barrier();
                self.update_gauges();
                let _ = reply.send(retried);
            }
            Control::Drop { keys, reply } => {
                let mut dropped = 0;
                for key in keys {
                    let Some(stored) = self.dead_letter_record(&key) else { continue };
                    if let RecordState::DeadLetter { reason, message, .. } = &stored.state {
                        tracing::warn!(reason = reason.as_str(), hour = key.hour, quantity = stored.record.quantity, %message, "dead letter dropped by an operator");
                        *self.dead.entry(*reason).or_default() -= 1;
                    }
                    if let Err(err) = self.store.remove_record(&key) {
                        tracing::error!(%err, "failed to drop a dead letter; stopping");
                        self.ctx.fail();
                    }
                    dropped += 1;
                }
                self.barrier();
                self.update_gauges();
                let _ = reply.send(dropped);
            }
            Control::Reconfigure(settings) => self.settings = settings,
            Control::Lifecycle(change) => self.lifecycle(change),
        }
    }

    fn dead_letter_record(&self, key: &RecordKey) -> Option<StoredRecord> {
        match self.store.record(key) {
            Ok(Some(stored)) if matches!(stored.state, RecordState::DeadLetter { .. }) => Some(stored),
            Ok(_) => None,
            Err(err) => {
                tracing::error!(%err, "failed to read a dead letter");
                None
            }
        }
    }

    /// Deletes receipts and dead letters older than the retention: archived receipts by whole
    /// days, records in sled one by one.
    fn compact(&mut self) {
        self.next_compaction = Instant::now() + COMPACT_EVERY;
        let before = self.ctx.clock.now() - self.settings.retention;
        match self.store.expire_archive(before) {
            Ok(0) => {}
            Ok(receipts) => {
                self.accepted -= i64::try_from(receipts).expect("receipts fit in i64");
                self.update_gauges();
                tracing::info!(receipts, "deleted archived receipts past the retention");
            }
            Err(err) => tracing::error!(%err, "expiring archived receipts failed; will try again"),
        }
        match self.store.compact(before) {
            Ok(removed) if !removed.is_empty() => {
                for stored in &removed {
                    match &stored.state {
                        RecordState::Accepted { .. } => self.accepted -= 1,
                        RecordState::DeadLetter { reason, .. } => *self.dead.entry(*reason).or_default() -= 1,
                        RecordState::Pending | RecordState::Shipped { .. } => {}
                    }
                }
                // Logged once durable and counted, so that what the log says the gauges show.
                self.barrier();
                self.update_gauges();
                tracing::info!(
                    records = removed.len(),
                    "compacted receipts and dead letters past the retention"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "compaction failed; will try again"),
        }
    }

    /// At start and at each new hour of meterd's clock, moves the receipts whose hour is past
    /// `submit.deadline` out of sled to the receipts archive. Younger ones stay: the commit stage
    /// learns at start which keys were sealed from the records in sled, and an hour inside the
    /// deadline must not be sealed twice.
    fn archive(&mut self) {
        let now = self.ctx.clock.now();
        if self.archived_hour == Some(now.div_euclid(3600)) {
            return;
        }
        self.archived_hour = Some(now.div_euclid(3600));
        match self.store.archive(now - self.settings.deadline) {
            Ok(0) => {}
            Ok(records) => tracing::info!(records, "moved receipts to the receipts archive"),
            Err(err) if self.store.fenced() => tracing::warn!(%err, "another submitter took over"),
            Err(err) => {
                tracing::error!(%err, "failed to move receipts to the receipts archive; stopping");
                self.ctx.fail();
            }
        }
    }

    /// Records past their deadline can no longer be accepted by the service.
    fn expire(&mut self) {
        let now = self.ctx.clock.now();
        let window = self.settings.deadline;
        // Deadlines grow with the hour (the month close only ever shortens the last hours of a
        // month), so the expired records are a prefix of the queue.
        let expired: Vec<QueueKey> =
            self.queue.keys().take_while(|(hour, _)| deadline(*hour, window) <= now).cloned().collect();
        for key in &expired {
            let (reason, message) = self.expiry(key);
            self.dead_letter(key, reason, message);
        }
        if !expired.is_empty() {
            tracing::error!(
                records = expired.len(),
                "records reached their deadline before the service accepted them"
            );
            self.barrier();
        }
    }

    /// The dead letter a record becomes at its deadline: the service's last answer for one that
    /// was waiting for its customer's subscription, `expired` (with the last error) otherwise.
    fn expiry(&self, key: &QueueKey) -> (DeadReason, String) {
        let entry = &self.queue[key];
        let attempts = entry.attempts;
        let window = self.settings.deadline;
        if let Some((reason, answer)) = &entry.awaiting {
            let every = crate::duration::format(self.settings.subscription_recheck);
            let message = format!(
                "{answer} (checked again every {every} until the record's deadline; {attempts} attempts)"
            );
            return (*reason, message);
        }
        let last = entry.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
        let message = if deadline(key.0, window) < key.0 + window {
            format!("not accepted before its billing month closed ({attempts} attempts{last})")
        } else {
            format!(
                "not accepted within {} of its hour start ({attempts} attempts{last})",
                crate::duration::format(Duration::from_secs(window as u64))
            )
        };
        (DeadReason::Expired, message)
    }

    pub(super) fn persist(&self, stored: &StoredRecord) {
        match self.store.settle(stored) {
            Ok(()) => {}
            Err(err) if self.store.fenced() => tracing::warn!(%err, "another submitter took over"),
            Err(err) => {
                tracing::error!(%err, "failed to record a submission result; stopping");
                self.ctx.fail();
            }
        }
    }

    pub(super) fn barrier(&self) {
        if let Err(err) = self.store.barrier() {
            tracing::error!(%err, "failed to make submission results durable; stopping");
            self.ctx.fail();
        }
    }

    pub(super) fn update_gauges(&self) {
        let records = &self.ctx.metrics.records;
        records.with_label_values(&["pending"]).set(self.queue.len() as i64);
        records.with_label_values(&["accepted"]).set(self.accepted);
        records.with_label_values(&["dead_letter"]).set(self.dead.values().sum());
        for reason in DeadReason::ALL {
            let count = self.dead.get(&reason).copied().unwrap_or(0);
            self.ctx.metrics.dead_letters.with_label_values(&[reason.as_str()]).set(count);
        }
        let oldest = self.queue.keys().next().map_or(0, |(hour, _)| (self.ctx.clock.now() - hour).max(0));
        self.ctx.metrics.oldest_unsubmitted_age.set(oldest);
        self.ctx.metrics.records_awaiting_subscription.set(self.awaiting);
    }
}
