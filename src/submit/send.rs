//! One batch through the service: [`Submitter::send`] → [`Submitter::pace`] /
//! [`Submitter::attempt`] / [`Submitter::apply_failure`], splitting the batch as [`classify`]
//! decides, and the outcomes of each record.
//!
//! Records refused alone by a validation error are collected until the batch is done: if every
//! record of it was refused alone with the same error (clock skew, a dimension the listing lost),
//! that is a configuration problem, and submission pauses with everything kept; otherwise they
//! become `invalid` dead letters.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{ApiFailure, Disposition, FailureKind, MeteringApi, RecordOutcome, classify};
use super::size::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, envelope_bytes};
use super::submitter::{Entry, QueueKey, Submitter};
use crate::aggregate::SealedRecord;
use crate::model::{Customer, DeadReason, Scope};
use crate::outbox::RecordState;

/// What to do after a failed call.
enum Next {
    /// Go on with the remaining work.
    Continue,
    /// Send these two halves separately; whether an unknown error may split them again.
    Split(Vec<QueueKey>, Vec<QueueKey>, bool),
    /// Submission is paused: stop this batch.
    Paused,
}

/// A record refused alone by a validation error.
pub(super) struct Refusal {
    key: QueueKey,
    code: String,
    message: String,
}

/// Which records may share a call with `entry`'s: those of its product code, or of license ARNs
/// (of its own license when `per_license`).
fn call_group(entry: &Entry, per_license: bool) -> (bool, Option<&str>) {
    match &entry.stored.record.key.scope {
        Scope::ProductCode(code) => (false, Some(code)),
        Scope::LicenseArn(arn) => (true, per_license.then_some(arn.as_str())),
    }
}

impl<A: MeteringApi> Submitter<A> {
    /// Due records of the first due record's scope, up to 25 and with a request under the size
    /// limit (each record's own size was checked when it was queued); a MeterUsage record goes
    /// alone. A call is for one product: records of one product code, or of license ARNs (of
    /// one license when several products are configured, see [`super::Settings`]).
    pub(super) fn next_batch(&self, now: Instant) -> Vec<QueueKey> {
        let due = || self.queue.iter().filter(move |(_, e)| e.next_at <= now);
        // Records of an ending subscription go first, and fill the batch first: they have an
        // hour left. Without one, the queue's order alone (no scan for them).
        let urgent_on = !self.hastened.is_empty();
        let urgent = |entry: &Entry| urgent_on && self.hastened(entry);
        let first = if urgent_on { due().find(|(_, e)| urgent(e)) } else { None };
        let Some((first_key, first)) = first.or_else(|| due().next()) else { return Vec::new() };
        if first.stored.record.key.customer == Customer::Caller {
            return vec![first_key.clone()];
        }
        let per_license = self.settings.call_per_license;
        let scope = call_group(first, per_license);
        let envelope = envelope_bytes(&first.stored.record);
        let mut size = first.bytes;
        let mut batch = vec![first_key.clone()];
        let rest = due().filter(|(_, e)| urgent(e)).chain(due().filter(|(_, e)| !urgent(e)));
        for (key, entry) in rest {
            if batch.len() == MAX_BATCH_RECORDS {
                break;
            }
            if key == first_key || call_group(entry, per_license) != scope {
                continue;
            }
            // A record's own size is its request's: the envelope (the same in one scope), the
            // record, and now a comma.
            let more = entry.bytes - envelope + 1;
            if size + more >= MAX_BATCH_BYTES {
                continue;
            }
            size += more;
            batch.push(key.clone());
        }
        batch
    }

    /// Sends a batch, splitting it as needed. Returns false when the loop must stop.
    pub(super) async fn send(&mut self, batch: Vec<QueueKey>, cancel: &CancellationToken) -> bool {
        let size = batch.len();
        let mut refused = Vec::new();
        let mut work = vec![(batch, true)];
        while let Some((keys, may_split)) = work.pop() {
            if keys.is_empty() {
                continue;
            }
            if !self.pace(cancel).await {
                return false;
            }
            if !self.store.may_submit() {
                tracing::warn!("this submit loop may no longer submit (the lease moved on); it stops");
                return false;
            }
            match self.attempt(&keys).await {
                Ok(outcomes) => {
                    self.systemic = None;
                    self.resume();
                    self.settle_outcomes(&keys, outcomes);
                }
                Err(failure) => match self.apply_failure(keys, may_split, &failure, &mut refused) {
                    Next::Continue => {}
                    Next::Split(first, second, may_split) => {
                        work.push((second, may_split));
                        work.push((first, may_split));
                    }
                    // What was refused so far stays pending: the pause may be its cause.
                    Next::Paused => return true,
                },
            }
        }
        self.settle_refusals(size, refused);
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
        result
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

    /// Applies what [`classify`] decided for a failed call of `keys`. `may_split`: whether an
    /// unknown error may still split them.
    fn apply_failure(
        &mut self,
        mut keys: Vec<QueueKey>,
        may_split: bool,
        failure: &ApiFailure,
        refused: &mut Vec<Refusal>,
    ) -> Next {
        let disposition = classify(failure);
        let code = failure.code().unwrap_or("error").to_string();
        let halves = |keys: &mut Vec<QueueKey>| keys.split_off(keys.len() / 2);
        match disposition {
            // Paused first, then said: whoever reads the log line finds readiness saying so too.
            Disposition::Pause => {
                self.pause(failure.to_string());
                tracing::error!(
                    error = %failure,
                    pause_secs = self.settings.pause.as_secs(),
                    "submission paused: the service refuses meterd's configuration or credentials; records are kept"
                );
                return Next::Paused;
            }
            Disposition::Isolate if self.systemic.as_deref() == Some(code.as_str()) => {
                self.pause(format!("every record of a batch is refused alone with {code}: {failure}"));
                tracing::error!(%code, records = keys.len(), "the batch is still refused with {code}; submission stays paused");
                return Next::Paused;
            }
            _ => self.resume(),
        }
        match disposition {
            Disposition::Retry => {
                tracing::warn!(records = keys.len(), error = %failure, "batch not delivered; will retry unchanged");
                keys.iter().for_each(|k| self.back_off(k, failure));
            }
            Disposition::BackOff if keys.len() > 1 && may_split => {
                tracing::warn!(records = keys.len(), error = %failure, "batch refused with an unknown error; splitting it once to see whether one record is the cause");
                let second = halves(&mut keys);
                return Next::Split(keys, second, false);
            }
            Disposition::BackOff => {
                tracing::warn!(records = keys.len(), error = %failure, "records refused with an unknown error; backing off only these");
                keys.iter().for_each(|k| self.back_off(k, failure));
            }
            Disposition::Recheck(reason) => {
                keys.iter()
                    .for_each(|k| self.await_subscription(k, reason, format!("{code}: {}", failure.message)));
                self.barrier();
            }
            Disposition::Isolate | Disposition::DeadLetter(_) if keys.len() > 1 => {
                tracing::warn!(records = keys.len(), error = %failure, "batch refused as a whole; splitting it to find the bad records");
                let second = halves(&mut keys);
                return Next::Split(keys, second, may_split);
            }
            Disposition::Isolate => {
                let message = format!("{code}: {}", failure.message);
                refused.push(Refusal { key: keys.remove(0), code, message });
            }
            Disposition::DeadLetter(reason) => {
                if reason == DeadReason::DuplicateRecord {
                    tracing::error!(
                        hour = keys[0].0,
                        "DuplicateRequestException: this caller already reported another quantity for this dimension and hour"
                    );
                }
                self.dead_letter(&keys[0], reason, format!("{code}: {}", failure.message));
                self.barrier();
            }
            Disposition::Pause => unreachable!("handled above"),
        }
        Next::Continue
    }

    /// The records of a batch refused alone: `invalid` dead letters, or, when every record of a
    /// batch of several was refused alone with the same error, a pause with everything kept.
    fn settle_refusals(&mut self, batch: usize, refused: Vec<Refusal>) {
        let Some(first) = refused.first() else { return };
        if batch > 1 && refused.len() == batch && refused.iter().all(|r| r.code == first.code) {
            let code = first.code.clone();
            for refusal in &refused {
                if let Some(entry) = self.queue.get_mut(&refusal.key) {
                    entry.last_error = Some(refusal.message.clone());
                }
            }
            self.pause(format!("every record of a batch is refused alone with {code}: {}", first.message));
            tracing::error!(
                %code,
                records = batch,
                pause_secs = self.settings.pause.as_secs(),
                example = %first.message,
                "every record of a batch was refused alone with the same error: a configuration problem \
                 (clock skew, a dimension missing from the listing), not the records'; submission paused, records are kept"
            );
            self.systemic = Some(code);
            return;
        }
        for refusal in refused {
            self.dead_letter(&refusal.key, DeadReason::Invalid, refusal.message);
        }
        self.barrier();
    }

    /// Stops submitting for `submit.pause`; `/readyz` and `meterd status` say why.
    fn pause(&mut self, reason: String) {
        self.ctx.health.set_paused(Some(reason));
        self.ctx.metrics.submission_paused.set(1);
        self.paused_until = Some(Instant::now() + self.settings.pause);
    }

    /// The service takes requests again: whatever paused submission is over.
    fn resume(&mut self) {
        self.ctx.health.set_paused(None);
        self.ctx.metrics.submission_paused.set(0);
    }

    fn settle_outcomes(&mut self, keys: &[QueueKey], outcomes: Vec<RecordOutcome>) {
        let now = self.ctx.clock.now();
        for (key, outcome) in keys.iter().zip(outcomes) {
            let product = self.queue[key].stored.record.key.scope.product_label().to_string();
            let status = match outcome {
                RecordOutcome::Accepted { metering_record_id } => {
                    let mut entry = self.take(key).expect("a sent record is queued");
                    entry.stored.state = RecordState::Accepted { metering_record_id, at: now };
                    self.persist(&entry.stored);
                    self.accepted += 1;
                    "success"
                }
                RecordOutcome::CustomerNotSubscribed => {
                    let answer = "CustomerNotSubscribed: the customer has no subscription to the product";
                    self.await_subscription(key, DeadReason::CustomerNotSubscribed, answer.into());
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
                    if let Some(entry) = self.queue.get_mut(key) {
                        entry.last_error = Some("UnprocessedRecords".into());
                    }
                    self.back_off_entry(key);
                    "unprocessed"
                }
            };
            self.ctx.metrics.records_submitted.with_label_values(&[status]).inc();
            self.ctx.metrics.records_submitted_by_product.with_label_values(&[&product, status]).inc();
        }
        self.barrier();
    }

    /// The customer is not subscribed (yet): ask again after `submit.subscription_recheck`.
    /// A customer whose subscription ended (a notification said so): a dead letter at once.
    fn await_subscription(&mut self, key: &QueueKey, reason: DeadReason, answer: String) {
        if let Some(note) = self.ended_note(key) {
            self.ctx.metrics.customer.ended_dead_letters.inc();
            return self.dead_letter(key, reason, format!("{answer}; {note}"));
        }
        let recheck = self.settings.subscription_recheck;
        let Some(entry) = self.queue.get_mut(key) else { return };
        if entry.awaiting.is_none() {
            self.awaiting += 1;
            tracing::warn!(hour = key.0, %answer, "customer not subscribed; the record is kept and offered again until its deadline");
        }
        entry.attempts += 1;
        entry.next_at = Instant::now() + recheck;
        entry.last_error = Some(answer.clone());
        entry.awaiting = Some((reason, answer));
    }

    fn back_off(&mut self, key: &QueueKey, failure: &ApiFailure) {
        if let Some(entry) = self.queue.get_mut(key) {
            entry.last_error = Some(match failure.code() {
                Some(code) => format!("{code}: {}", failure.message),
                None => failure.message.clone(),
            });
        }
        self.back_off_entry(key);
    }

    fn back_off_entry(&mut self, key: &QueueKey) {
        let settings = self.settings;
        let Some(entry) = self.queue.get_mut(key) else { return };
        entry.attempts += 1;
        entry.next_at = Instant::now()
            + crate::backoff::delay(settings.backoff_base, settings.backoff_max, entry.attempts);
    }
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
