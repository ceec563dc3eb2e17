//! The submit loop: sealed records in, receipts and dead letters out.
//!
//! Records wait in deadline order. A batch is up to 25 due records of one scope (one product code,
//! or license ARNs), kept under the 1 MB body limit, sent at most `max_requests_per_second`. What a
//! failure means is decided by [`classify`]: retry the same records after a backoff with full
//! jitter, split the batch to isolate a bad record, or pause everything on a configuration error.
//! A record is never changed: every attempt sends the frozen [`SealedRecord`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{ApiFailure, Disposition, FailureKind, MeteringApi, RecordOutcome, classify};
use crate::aggregate::SealedRecord;
use crate::clock::deadline;
use crate::context::Context;
use crate::model::{Customer, DeadReason, RecordKey, Scope};
use crate::outbox::{Outbox, RecordState, StoredRecord};

/// How often settled records older than `storage.retention` are compacted away.
const COMPACT_EVERY: Duration = Duration::from_secs(3600);

/// Most records in one BatchMeterUsage call.
pub const MAX_BATCH_RECORDS: usize = 25;
/// Request bodies stay below this (the service's limit is 1 MB).
pub const MAX_BATCH_BYTES: usize = 1_000_000;

/// Submission timing, from `[submit]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Seconds after its hour start by which a record must be accepted.
    pub deadline: i64,
    pub max_requests_per_second: f64,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub pause: Duration,
    /// Seconds receipts and dead letters are kept after they settled.
    pub retention: i64,
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
}

struct Entry {
    stored: StoredRecord,
    attempts: u32,
    next_at: Instant,
}

/// Queue order: oldest hour first, so the nearest deadline goes first.
type QueueKey = (i64, RecordKey);

fn queue_key(record: &SealedRecord) -> QueueKey {
    (record.key.hour, record.key.clone())
}

/// What to do after a failed call.
enum Next {
    /// Go on with the remaining work.
    Continue,
    /// Send these two halves of the batch separately.
    Split(Vec<QueueKey>, Vec<QueueKey>),
    /// Submission is paused: stop this batch.
    Paused,
}

pub struct Submitter<A> {
    ctx: Context,
    api: A,
    outbox: Arc<Outbox>,
    settings: Settings,
    queue: BTreeMap<QueueKey, Entry>,
    accepted: i64,
    dead: HashMap<DeadReason, i64>,
    next_request: Instant,
    paused_until: Option<Instant>,
    next_compaction: Instant,
}

impl<A: MeteringApi> Submitter<A> {
    /// Starts from the records found in the outbox: pending ones are queued, settled ones counted.
    pub fn new(
        ctx: Context,
        api: A,
        outbox: Arc<Outbox>,
        records: Vec<StoredRecord>,
        settings: Settings,
    ) -> Self {
        let mut this = Self {
            ctx,
            api,
            outbox,
            settings,
            queue: BTreeMap::new(),
            accepted: 0,
            dead: HashMap::new(),
            next_request: Instant::now(),
            paused_until: None,
            next_compaction: Instant::now(),
        };
        for stored in records {
            match &stored.state {
                RecordState::Pending => this.enqueue(stored),
                RecordState::Accepted { .. } => this.accepted += 1,
                RecordState::DeadLetter { reason, .. } => *this.dead.entry(*reason).or_default() += 1,
            }
        }
        if !this.queue.is_empty() {
            tracing::info!(records = this.queue.len(), "resending sealed records that were not confirmed");
        }
        this.update_gauges();
        this
    }

    fn enqueue(&mut self, stored: StoredRecord) {
        let entry = Entry { attempts: 0, next_at: Instant::now(), stored };
        self.queue.insert(queue_key(&entry.stored.record), entry);
    }

    /// Runs until `cancel`; a call in progress is finished first.
    pub async fn run(
        mut self,
        mut sealed: mpsc::UnboundedReceiver<Vec<StoredRecord>>,
        mut controls: mpsc::Receiver<Control>,
        cancel: CancellationToken,
    ) {
        loop {
            while let Ok(records) = sealed.try_recv() {
                records.into_iter().for_each(|r| self.enqueue(r));
            }
            while let Ok(control) = controls.try_recv() {
                self.control(control);
            }
            if Instant::now() >= self.next_compaction {
                self.compact();
            }
            self.expire();
            self.update_gauges();
            let now = Instant::now();
            let wake = match self.paused_until {
                Some(until) if until > now => Some(until),
                _ => self.queue.values().map(|e| e.next_at).min(),
            };
            if wake.is_none_or(|at| at > now) {
                // Nothing due: wait for new records, the next due time (at most a minute, so
                // deadlines are checked), or shutdown.
                let sleep_until =
                    wake.unwrap_or(now + Duration::from_secs(60)).min(now + Duration::from_secs(60));
                tokio::select! {
                    received = sealed.recv() => match received {
                        Some(records) => records.into_iter().for_each(|r| self.enqueue(r)),
                        None => if self.queue.is_empty() { return },
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

    /// Due records of the first due record's scope, up to 25 and under the size limit; a
    /// MeterUsage record goes alone.
    fn next_batch(&self, now: Instant) -> Vec<QueueKey> {
        let mut due = self.queue.iter().filter(|(_, e)| e.next_at <= now);
        let Some((first_key, first)) = due.next() else { return Vec::new() };
        if first.stored.record.key.customer == Customer::Caller {
            return vec![first_key.clone()];
        }
        let scope_of = |e: &Entry| match &e.stored.record.key.scope {
            Scope::ProductCode(code) => Some(code.clone()),
            Scope::LicenseArn(_) => None,
        };
        let scope = scope_of(first);
        let mut size = 200 + estimated_size(&first.stored.record);
        let mut batch = vec![first_key.clone()];
        for (key, entry) in due {
            if batch.len() == MAX_BATCH_RECORDS {
                break;
            }
            if scope_of(entry) != scope {
                continue;
            }
            let more = estimated_size(&entry.stored.record);
            if size + more >= MAX_BATCH_BYTES {
                break;
            }
            size += more;
            batch.push(key.clone());
        }
        batch
    }

    /// Sends a batch, splitting it as needed. Returns false when the loop must stop.
    async fn send(&mut self, batch: Vec<QueueKey>, cancel: &CancellationToken) -> bool {
        let mut work = vec![batch];
        while let Some(keys) = work.pop() {
            if keys.is_empty() {
                continue;
            }
            if !self.pace(cancel).await {
                return false;
            }
            match self.attempt(&keys).await {
                Ok(outcomes) => self.settle_outcomes(&keys, outcomes),
                Err(failure) => match self.apply_failure(keys, &failure) {
                    Next::Continue => {}
                    Next::Split(first, second) => {
                        work.push(second);
                        work.push(first);
                    }
                    Next::Paused => return true,
                },
            }
        }
        true
    }

    /// Waits for the rate limiter's next slot; false on shutdown.
    async fn pace(&mut self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(self.next_request) => {}
            _ = cancel.cancelled() => return false,
        }
        let spacing = Duration::from_secs_f64(1.0 / self.settings.max_requests_per_second);
        self.next_request = Instant::now() + spacing;
        true
    }

    /// One call for the records of `keys`, with its metrics and health.
    async fn attempt(&mut self, keys: &[QueueKey]) -> Result<Vec<RecordOutcome>, ApiFailure> {
        let records: Vec<SealedRecord> = keys.iter().map(|k| self.queue[k].stored.record.clone()).collect();
        let metrics = &self.ctx.metrics;
        metrics.records.with_label_values(&["in_flight"]).set(records.len() as i64);
        let started = std::time::Instant::now();
        let (operation, result) = self.call(&records).await;
        metrics.api_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
        metrics.records.with_label_values(&["in_flight"]).set(0);
        let outcome = match &result {
            Ok(_) => "success",
            Err(failure) => outcome_label(failure),
        };
        metrics.api_requests.with_label_values(&[operation, outcome]).inc();
        self.ctx.health.record_outcome(outcome, self.ctx.clock.now());
        if !matches!(&result, Err(failure) if classify(failure) == Disposition::Pause) {
            self.ctx.health.set_paused(None);
            metrics.submission_paused.set(0);
        }
        result
    }

    /// Applies what [`classify`] decided for a failed call of `keys`.
    fn apply_failure(&mut self, mut keys: Vec<QueueKey>, failure: &ApiFailure) -> Next {
        let disposition = classify(failure);
        let Some(reason) = disposition.dead_reason() else {
            if disposition == Disposition::Pause {
                self.pause(failure);
                return Next::Paused;
            }
            tracing::warn!(records = keys.len(), error = %failure, "batch not delivered; will retry unchanged");
            keys.iter().for_each(|k| self.back_off(k));
            return Next::Continue;
        };
        if keys.len() > 1 {
            tracing::warn!(records = keys.len(), error = %failure, "batch refused as a whole; splitting it to find the bad records");
            let second = keys.split_off(keys.len() / 2);
            return Next::Split(keys, second);
        }
        if reason == DeadReason::DuplicateRecord {
            tracing::error!(
                hour = keys[0].0,
                "DuplicateRequestException: this caller already reported another quantity for this dimension and hour"
            );
        }
        let code = failure.code().unwrap_or("error");
        self.dead_letter(&keys[0], reason, format!("{code}: {}", failure.message));
        self.barrier();
        Next::Continue
    }

    /// Stops submitting for `submit.pause`: the service refuses the configuration or credentials.
    fn pause(&mut self, failure: &ApiFailure) {
        tracing::error!(
            error = %failure,
            pause_secs = self.settings.pause.as_secs(),
            "submission paused: the service refuses meterd's configuration or credentials; records are kept"
        );
        self.ctx.health.set_paused(Some(failure.to_string()));
        self.ctx.metrics.submission_paused.set(1);
        self.paused_until = Some(Instant::now() + self.settings.pause);
    }

    /// One call for `records`: MeterUsage for a caller's own record, BatchMeterUsage otherwise.
    async fn call(&self, records: &[SealedRecord]) -> (&'static str, Result<Vec<RecordOutcome>, ApiFailure>) {
        let key = &records[0].key;
        match (&key.customer, &key.scope) {
            (Customer::Caller, Scope::ProductCode(code)) => {
                let result = self.api.meter_usage(code, &records[0]).await;
                let outcome = result.map(|id| vec![RecordOutcome::Accepted { metering_record_id: id }]);
                ("MeterUsage", outcome)
            }
            (_, scope) => {
                let product_code = match scope {
                    Scope::ProductCode(code) => Some(code.as_str()),
                    Scope::LicenseArn(_) => None,
                };
                ("BatchMeterUsage", self.api.batch_meter_usage(product_code, records).await)
            }
        }
    }

    fn settle_outcomes(&mut self, keys: &[QueueKey], outcomes: Vec<RecordOutcome>) {
        let now = self.ctx.clock.now();
        for (key, outcome) in keys.iter().zip(outcomes) {
            let status = match outcome {
                RecordOutcome::Accepted { metering_record_id } => {
                    let mut entry = self.queue.remove(key).expect("a sent record is queued");
                    entry.stored.state = RecordState::Accepted { metering_record_id, at: now };
                    self.persist(&entry.stored);
                    self.accepted += 1;
                    "success"
                }
                RecordOutcome::CustomerNotSubscribed => {
                    let message =
                        "CustomerNotSubscribed: the customer has no subscription to the product".into();
                    self.dead_letter(key, DeadReason::CustomerNotSubscribed, message);
                    "customer_not_subscribed"
                }
                RecordOutcome::DuplicateRecord => {
                    tracing::error!(
                        hour = key.0,
                        "DuplicateRecord: another quantity was already billed for this record's key"
                    );
                    let message =
                        "DuplicateRecord: a different quantity was already billed for this key and hour"
                            .into();
                    self.dead_letter(key, DeadReason::DuplicateRecord, message);
                    "duplicate_record"
                }
                RecordOutcome::Unprocessed => {
                    self.back_off(key);
                    "unprocessed"
                }
            };
            self.ctx.metrics.records_submitted.with_label_values(&[status]).inc();
        }
        self.barrier();
    }

    fn back_off(&mut self, key: &QueueKey) {
        let settings = self.settings;
        let Some(entry) = self.queue.get_mut(key) else { return };
        entry.attempts += 1;
        entry.next_at = Instant::now() + backoff(settings.backoff_base, settings.backoff_max, entry.attempts);
    }

    fn dead_letter(&mut self, key: &QueueKey, reason: DeadReason, message: String) {
        let Some(mut entry) = self.queue.remove(key) else { return };
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
                    if let Err(err) = self.outbox.remove_record(&key) {
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
        }
    }

    fn dead_letter_record(&self, key: &RecordKey) -> Option<StoredRecord> {
        match self.outbox.record(key) {
            Ok(Some(stored)) if matches!(stored.state, RecordState::DeadLetter { .. }) => Some(stored),
            Ok(_) => None,
            Err(err) => {
                tracing::error!(%err, "failed to read a dead letter");
                None
            }
        }
    }

    /// Deletes receipts and dead letters older than the retention.
    fn compact(&mut self) {
        self.next_compaction = Instant::now() + COMPACT_EVERY;
        let before = self.ctx.clock.now() - self.settings.retention;
        match self.outbox.compact(before) {
            Ok(removed) if !removed.is_empty() => {
                for stored in &removed {
                    match &stored.state {
                        RecordState::Accepted { .. } => self.accepted -= 1,
                        RecordState::DeadLetter { reason, .. } => *self.dead.entry(*reason).or_default() -= 1,
                        RecordState::Pending => {}
                    }
                }
                tracing::info!(
                    records = removed.len(),
                    "compacted receipts and dead letters past the retention"
                );
                self.barrier();
                self.update_gauges();
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "compaction failed; will try again"),
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
            let attempts = self.queue[key].attempts;
            let message = if deadline(key.0, window) < key.0 + window {
                format!("not accepted before its billing month closed ({attempts} attempts)")
            } else {
                format!(
                    "not accepted within {} of its hour start ({attempts} attempts)",
                    crate::duration::format(Duration::from_secs(window as u64))
                )
            };
            self.dead_letter(key, DeadReason::Expired, message);
        }
        if !expired.is_empty() {
            tracing::error!(records = expired.len(), "records expired before the service accepted them");
            self.barrier();
        }
    }

    fn persist(&self, stored: &StoredRecord) {
        if let Err(err) = self.outbox.settle(stored) {
            tracing::error!(%err, "failed to record a submission result; stopping");
            self.ctx.fail();
        }
    }

    fn barrier(&self) {
        if let Err(err) = self.outbox.barrier() {
            tracing::error!(%err, "failed to make submission results durable; stopping");
            self.ctx.fail();
        }
    }

    fn update_gauges(&self) {
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
    }
}

/// A generous estimate of a record's JSON size in the request body.
fn estimated_size(record: &SealedRecord) -> usize {
    let key = &record.key;
    let customer = match &key.customer {
        Customer::AwsAccountId(id) | Customer::Identifier(id) => id.len(),
        Customer::Caller => 0,
    };
    let license = match &key.scope {
        Scope::LicenseArn(arn) => arn.len(),
        Scope::ProductCode(_) => 0,
    };
    let allocations: usize = record
        .allocations
        .iter()
        .map(|a| 64 + a.tags.iter().map(|(k, v)| 32 + 2 * (k.len() + v.len())).sum::<usize>())
        .sum();
    // JSON escaping can at most double a string; six bytes per char covers \u escapes of control bytes.
    160 + 6 * (customer + license + key.dimension.len()) + allocations
}

/// The wait before attempt `attempts + 1`: full jitter, anywhere between now and an exponential
/// ceiling of `base · 2^(attempts-1)`, at most `max`.
pub(super) fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let ceiling =
        base.saturating_mul(1u32.checked_shl(attempts.clamp(1, 20) - 1).unwrap_or(u32::MAX)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

/// The `outcome` label of `meterd_api_requests_total` for a failed call.
pub(super) fn outcome_label(failure: &ApiFailure) -> &'static str {
    match &failure.kind {
        FailureKind::Service { code, .. } if code == "ThrottlingException" => "throttled",
        FailureKind::Service { status, .. } if *status >= 500 => "server_error",
        FailureKind::Service { .. } => "client_error",
        FailureKind::Timeout => "timeout",
        FailureKind::Connection => "connection",
        FailureKind::Local => "local",
    }
}
