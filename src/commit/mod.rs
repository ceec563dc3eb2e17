//! The commit stage: the committer owns the open hours, and one thread runs it (`inline.rs`: behind
//! a lock, which a connection takes to commit a lone event itself). It takes every submission waiting in its
//! queue (from any number of connections), checks and counts their events and logs the counted
//! ones as one group commit. A second thread, the sync thread, runs the durability barrier and only
//! then answers: while it waits on the device, the commit thread already logs the next groups, and
//! the next barrier covers all of them. Groups are answered strictly in order, so a duplicate is
//! never confirmed before the event it repeats is durable (the sync thread, `sync.rs`). At each checkpoint tick it
//! seals the hours that are due, encodes the changed state for a checkpoint thread to write while
//! it goes on (`checkpoint.rs`), and hands newly sealed records to the submit stage once they are
//! durable.
//!
//! On a storage failure nothing more can be promised: the events of the failed group are answered
//! `storage_error`, every later one too, and the process stops so that a restart replays the truth
//! from disk (the in-memory hours may hold events that were never made durable).

mod checkpoint;
mod inline;
mod outcome;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::aggregate::{Admission, AdmitError, Aggregator, Heartbeat, Rules};
use crate::context::Context;
use crate::model::{Customer, Event, Scope};
use crate::outbox::{LogEncoder, Outbox, OutboxError, Recovered, StoredRecord};
pub use inline::{Intake, Shared, run};
pub use outcome::{AckId, Outcome};
use outcome::{refuse_acks, take_logged_ids};
use sync::{Delivery, Logged};

/// Most events in a group the commit thread syncs and answers itself (when the sync thread is
/// idle): a lone event saves a thread hand-off, a large group is better overlapped with the next.
const INLINE_EVENTS: usize = 16;

/// Most events taken into one group commit.
const MAX_GROUP_EVENTS: usize = 16 * 1024;

/// The well-formed events of one read from one connection.
pub struct Submission {
    pub events: Vec<Event>,
    pub received: Instant,
    /// One outcome per event, in order.
    pub reply: oneshot::Sender<Vec<Outcome>>,
}

pub enum Command {
    Submit(Submission),
    /// Time to seal what is due and checkpoint.
    Tick,
    /// New time rules after a reload.
    Reconfigure(Rules),
    /// Seal the open hours of this customer (`None`: all) now, checkpoint, and answer how many
    /// records were sealed. Hours that have begun only, unless `every_hour` (a stopping fleet
    /// host: its partials of an hour still to come are summed when that hour closes). With
    /// `product`, only that product's records and the customer's license records (a record
    /// names its license, not the license's product).
    Flush {
        customer: Option<String>,
        product: Option<String>,
        every_hour: bool,
        reply: oneshot::Sender<usize>,
    },
    /// The open records of this customer (any product), as they stand (`meterd customer`).
    Open {
        customer: String,
        reply: oneshot::Sender<Vec<crate::aggregate::SealedRecord>>,
    },
}

/// How many ids ahead of the one being checked the commit thread reads where the id store will
/// look (see `Committer::admit_group`).
const ID_READ_AHEAD: usize = 16;

/// What the commit stage is configured with.
#[derive(Debug, Clone)]
pub struct CommitSettings {
    pub rules: Rules,
    /// `storage.max_bytes`: above it the outbox counts as full.
    pub max_bytes: u64,
    /// `submit.heartbeat_dimensions` (meter_usage mode).
    pub heartbeat: Option<Heartbeat>,
    /// Told the last sealed hour after each checkpoint (fleet mode's shipped-through hour).
    pub sealed_through: watch::Sender<Option<i64>>,
}

pub struct Committer {
    ctx: Context,
    outbox: Arc<Outbox>,
    aggregator: Aggregator,
    sealed_tx: mpsc::UnboundedSender<Vec<StoredRecord>>,
    sealed_through: watch::Sender<Option<i64>>,
    /// Sequence of the last group commit.
    seq: u64,
    checkpointed_seq: u64,
    failed: Arc<AtomicBool>,
    late_seen: (u64, u64),
    max_bytes: u64,
    /// The latest `now` seen, to notice a clock that steps back, and whether it is behind it.
    latest_now: i64,
    behind: bool,
    /// Legacy customer identifiers warned about, and the UTC day of the warnings.
    legacy_warned: (i64, HashSet<String>),
    /// Flushes waiting for the checkpoint that makes their records durable, with their counts.
    flushed: Vec<(oneshot::Sender<usize>, usize)>,
    /// The checkpoint being written beside this thread (`checkpoint.rs`).
    in_flight: Option<checkpoint::InFlight>,
    /// A checkpoint failed: no event is taken any more (the sync thread, which reads only
    /// `failed`, still answers the groups already in the journal).
    checkpoint_failed: bool,
    /// A group's record keys, admitted events and their encoding, in buffers kept from one group
    /// to the next.
    keys: Vec<Option<crate::aggregate::Prepared>>,
    id_hashes: Vec<Option<crate::ids::IdHash>>,
    logged: Vec<crate::aggregate::Admitted>,
    encoder: LogEncoder,
}

/// Stops meterd after a storage failure, from whichever thread met it: nothing more is
/// acknowledged (the sync thread reads `failed` before each barrier), and the process exits.
fn stop_after_storage_failure(failed: &AtomicBool, ctx: &Context) {
    failed.store(true, Ordering::SeqCst);
    ctx.fail();
}

/// The aggregator as the checkpoint left it, with the log after it replayed, and the number of
/// events replayed. Anything that cannot be restored (the remembered ids, an open-hours chunk,
/// the log) is an error, and meterd does not start: a start that went on would checkpoint what
/// it has, and the rest would be gone.
fn restore_aggregator(
    recovered: &mut Recovered,
    settings: &CommitSettings,
) -> Result<(Aggregator, u64), OutboxError> {
    let unrestorable =
        |what| move |err: std::io::Error| OutboxError::Unrestorable { what, reason: err.to_string() };
    let mut aggregator = Aggregator::restore(
        settings.rules,
        std::mem::take(&mut recovered.ids),
        std::mem::take(&mut recovered.id_files),
        recovered.meta.sealed_through,
    )
    .map_err(unrestorable("remembered ids"))?;
    for totals in std::mem::take(&mut recovered.legacy_open) {
        aggregator.restore_open(&totals);
    }
    // One chunk at a time, read from its file, so that a million open records are never held
    // or decoded all at once.
    let mut undecodable = None;
    std::mem::take(&mut recovered.open_chunks).for_each(|chunk| {
        match crate::outbox::decode_open_chunk(chunk) {
            Ok(totals) => totals.iter().for_each(|t| aggregator.restore_open(t)),
            Err(err) => {
                undecodable.get_or_insert(err);
            }
        }
    })?;
    if let Some(err) = undecodable {
        return Err(OutboxError::Unrestorable { what: "open hours", reason: err.to_string() });
    }
    aggregator.set_heartbeat(settings.heartbeat.clone());
    aggregator.remember_sealed(recovered.records.iter().map(|stored| &stored.record.key));
    // The log streams from the journal's files: never held whole, however long it grew.
    let mut unreadable = None;
    let replayed = recovered.replay(|admitted| match aggregator.apply(admitted) {
        Ok(()) => true,
        Err(err) => {
            unreadable = Some(err);
            false
        }
    })?;
    if let Some(err) = unreadable {
        return Err(unrestorable("remembered ids")(err));
    }
    recovered.legacy_log = Vec::new();
    Ok((aggregator, replayed))
}

impl Committer {
    /// Rebuilds the open hours from the checkpoint and the log after it.
    pub fn recover(
        ctx: Context,
        outbox: Arc<Outbox>,
        recovered: &mut Recovered,
        settings: CommitSettings,
        sealed_tx: mpsc::UnboundedSender<Vec<StoredRecord>>,
    ) -> Result<Self, OutboxError> {
        let (aggregator, replayed) = restore_aggregator(recovered, &settings)?;
        tracing::info!(
            open_records = aggregator.open_records(),
            replayed_events = replayed,
            "open hours restored"
        );
        let now = ctx.clock.now();
        if let Some(through) = recovered.meta.sealed_through
            && crate::clock::hour_of(now) <= through
        {
            tracing::warn!(
                now,
                sealed_through = through,
                "meterd's clock is behind the hours it has sealed (a restored snapshot, or a clock step); sealed hours stay sealed, events for them follow submit.late_events"
            );
        }
        Ok(Self {
            ctx,
            outbox,
            aggregator,
            sealed_tx,
            sealed_through: settings.sealed_through,
            seq: recovered.last_seq,
            checkpointed_seq: recovered.meta.log_seq,
            failed: Arc::new(AtomicBool::new(false)),
            late_seen: (0, 0),
            max_bytes: settings.max_bytes,
            latest_now: i64::MIN,
            behind: false,
            legacy_warned: (0, HashSet::new()),
            flushed: Vec::new(),
            in_flight: None,
            checkpoint_failed: false,
            keys: Vec::new(),
            id_hashes: Vec::new(),
            logged: Vec::new(),
            encoder: LogEncoder::default(),
        })
    }

    /// Seals the hours due before the first event is taken. The open hours a replay rebuilt are
    /// written at the first tick instead, so that a long replay does not hold readiness back by a
    /// full checkpoint.
    fn start(&mut self) -> Result<(), OutboxError> {
        let now = self.now();
        self.aggregator.seal_due(now);
        if self.aggregator.has_sealed() {
            self.checkpoint(true)?;
        }
        self.measure_outbox();
        self.ctx.health.commit_turned();
        Ok(())
    }

    /// Logs one group taken from the queue, then syncs and answers it here (a small group with
    /// nothing earlier waiting and nothing more queued: no wake-up of the sync thread) or hands
    /// it to the sync thread, which syncs while this thread counts and logs the next groups.
    /// `false` once the sync thread is gone.
    fn log_group(
        &mut self,
        group: &mut Vec<Submission>,
        stage: &Shared,
        commands: &mpsc::Receiver<Command>,
        sync_tx: &std::sync::mpsc::Sender<Logged>,
    ) -> bool {
        let submissions = group.len();
        let logged = self.commit(group);
        stage.queued.fetch_sub(submissions, Ordering::AcqRel);
        let small = logged.deliveries.iter().map(|d| d.outcomes.len()).sum::<usize>() <= INLINE_EVENTS;
        let answering = &stage.answering;
        if small && answering.outstanding.load(Ordering::Acquire) == 0 && commands.is_empty() {
            answering.barrier_and_answer(vec![logged], "commit");
            return true;
        }
        answering.outstanding.fetch_add(1, Ordering::AcqRel);
        sync_tx.send(logged).is_ok()
    }

    /// After a turn: flushes answered at once after a failure, and the checkpoint on a tick.
    fn after_turn(&mut self, tick: bool) -> Result<(), OutboxError> {
        let settled = self.settle_finished();
        if self.failed() {
            // Nothing more is sealed: a flush waiting on a checkpoint is answered at once.
            for (reply, _) in self.flushed.drain(..) {
                let _ = reply.send(0);
            }
        }
        settled?;
        // Full id segments hold memory until a checkpoint writes them as runs: one is started for
        // them when none is being written (never waiting for one here).
        let tick = tick || (self.aggregator.ids_waiting() && self.in_flight.is_none());
        if tick && !self.failed() {
            // A flush is answered once its checkpoint is written, even one that sealed nothing.
            self.checkpoint(!self.flushed.is_empty())?;
            self.measure_outbox();
            for (reply, count) in self.flushed.drain(..) {
                let _ = reply.send(count);
            }
        }
        self.ctx.health.commit_turned();
        Ok(())
    }

    /// Takes `first` and whatever else is queued (up to [`MAX_GROUP_EVENTS`] events) into `group`;
    /// returns whether a checkpoint tick was among them. A reload or a flush ends the group: the
    /// events before it are admitted first, under the rules they came under, and a flush seals
    /// them; it is put in `held`, to be the first command of the next group.
    fn take_group(
        &mut self,
        first: Command,
        commands: &mut mpsc::Receiver<Command>,
        group: &mut Vec<Submission>,
        held: &mut Option<Command>,
    ) -> bool {
        let mut tick = false;
        let mut events = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Reconfigure(_) | Command::Flush { .. } if !group.is_empty() => {
                    *held = Some(command);
                    break;
                }
                Command::Tick => tick = true,
                Command::Reconfigure(rules) => self.aggregator.set_rules(rules),
                Command::Flush { customer, product, every_hour, reply } => {
                    let sealed = self.flush(customer.as_deref(), product.as_deref(), every_hour);
                    tracing::info!(customer = ?customer, product = ?product, records = sealed, every_hour, "open hours flushed: sealed now and submitted next");
                    self.flushed.push((reply, sealed));
                    tick = true;
                }
                Command::Open { customer, reply } => {
                    let _ = reply.send(self.aggregator.open_records_of(|key| match &key.customer {
                        Customer::AwsAccountId(id) | Customer::Identifier(id) => *id == customer,
                        Customer::Caller => false,
                    }));
                }
                Command::Submit(submission) => {
                    events += submission.events.len();
                    group.push(submission);
                }
            }
            if events < MAX_GROUP_EVENTS {
                next = commands.try_recv().ok();
            }
        }
        tick
    }

    /// Seals the open records of `customer` (`None`: every customer) now: those of hours that
    /// have begun (a record for a future hour cannot be sent yet), or of every hour.
    fn flush(&mut self, customer: Option<&str>, product: Option<&str>, every_hour: bool) -> usize {
        let current = crate::clock::hour_of(self.ctx.clock.now());
        self.aggregator.seal_now(|key| {
            (every_hour || key.hour <= current)
                && match (product, &key.scope) {
                    (Some(want), Scope::ProductCode(code)) => want == code,
                    (None, _) | (_, Scope::LicenseArn(_)) => true,
                }
                && match (customer, &key.customer) {
                    (None, _) => true,
                    (Some(want), Customer::AwsAccountId(id) | Customer::Identifier(id)) => want == id,
                    (Some(_), Customer::Caller) => false,
                }
        })
    }

    /// No event is taken any more: storage failed, or a checkpoint did.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst) || self.checkpoint_failed
    }

    /// Stops meterd after a storage failure: nothing more can be promised.
    fn storage_failed(&self) {
        stop_after_storage_failure(&self.failed, &self.ctx);
    }

    /// Checks, counts and logs one group; its outcomes wait in the returned [`Logged`] for the
    /// barrier.
    fn commit(&mut self, group: &mut Vec<Submission>) -> Logged {
        if self.failed() {
            let deliveries = group
                .drain(..)
                .map(|s| Delivery {
                    outcomes: s.events.iter().map(|e| Outcome::NotStored { id: e.id.clone() }).collect(),
                    reply: s.reply,
                    received: s.received,
                })
                .collect();
            return Logged { wrote: false, seq: self.seq, accepted: 0, deliveries };
        }
        let seq = self.seq + 1;
        let mut logged = std::mem::take(&mut self.logged);
        let mut deliveries = self.admit_group(group, seq, &mut logged);
        let accepted = logged.len() as u64;
        let appended = (!logged.is_empty()).then(|| self.outbox.append(seq, &logged, &mut self.encoder));
        take_logged_ids(&mut logged, &mut deliveries);
        self.logged = logged;
        let mut wrote = false;
        if let Some(appended) = appended {
            match appended {
                Ok(()) => {
                    self.seq = seq;
                    wrote = true;
                }
                Err(err) => {
                    tracing::error!(%err, "outbox write failed; refusing everything from now on and stopping");
                    self.storage_failed();
                    for delivery in &mut deliveries {
                        refuse_acks(&mut delivery.outcomes);
                    }
                    return Logged { wrote: false, seq: self.seq, accepted: 0, deliveries };
                }
            }
        }
        Logged { wrote, seq: self.seq, accepted, deliveries }
    }

    /// Runs every event of `group` through the aggregator: what to log (into `logged`), and each
    /// one's outcome.
    fn admit_group(
        &mut self,
        group: &mut Vec<Submission>,
        seq: u64,
        logged: &mut Vec<crate::aggregate::Admitted>,
    ) -> Vec<Delivery> {
        let now = self.now();
        let mut deliveries = Vec::with_capacity(group.len());
        let mut duplicates = 0u64;
        // Each event's key once, and reads ahead of the lookups below; `black_box` keeps the
        // reads, whose count is not needed.
        let mut keys = std::mem::take(&mut self.keys);
        std::hint::black_box(self.aggregator.prepare(
            group.iter().flat_map(|s| s.events.iter()),
            now,
            &mut keys,
        ));
        let mut id_hashes = std::mem::take(&mut self.id_hashes);
        self.aggregator.prepare_ids(group.iter().flat_map(|s| s.events.iter()), &mut id_hashes);
        // Where each id will be looked up is read [`ID_READ_AHEAD`] ids before its own turn: near
        // enough that the lines are still in the core's cache when it comes.
        let mut ahead = id_hashes.iter().flatten();
        let mut read =
            ahead.by_ref().take(ID_READ_AHEAD).fold(0, |sum, hash| sum ^ self.aggregator.read_ahead_id(hash));
        let mut prepared = keys.iter().copied();
        let mut hashed = id_hashes.iter().copied();
        for submission in group.drain(..) {
            let mut outcomes = Vec::with_capacity(submission.events.len());
            for event in submission.events {
                let key = prepared.next().flatten();
                let id_hash = hashed.next().flatten();
                // Only an event with an id moves the read-ahead on: `ahead` holds ids alone.
                if id_hash.is_some()
                    && let Some(hash) = ahead.next()
                {
                    read ^= self.aggregator.read_ahead_id(hash);
                }
                outcomes.push(match self.aggregator.admit_hashed(event, now, key, id_hash) {
                    Ok(Admission::Counted { admitted, .. }) => {
                        self.warn_legacy_customer(&admitted.key.customer, now);
                        // A client's id stays with what is logged until it is written
                        // ([`take_logged_ids`]).
                        let id = match admitted.id {
                            Some(_) => AckId::Client(String::new()),
                            None => AckId::Generated { commit: seq, index: logged.len() as u32 },
                        };
                        logged.push(admitted);
                        Outcome::Counted(id)
                    }
                    Ok(Admission::Duplicate { id }) => {
                        duplicates += 1;
                        Outcome::Duplicate(id)
                    }
                    Err((AdmitError::IdsUnreadable { reason }, id)) => {
                        tracing::error!(%reason, "the remembered ids are unreadable; refusing everything from now on and stopping");
                        self.storage_failed();
                        Outcome::NotStored { id }
                    }
                    Err((error, id)) => Outcome::Refused { id, error },
                });
            }
            deliveries.push(Delivery { reply: submission.reply, outcomes, received: submission.received });
        }
        std::hint::black_box(read);
        self.keys = keys;
        self.id_hashes = id_hashes;
        self.ctx.metrics.events_duplicate.inc_by(duplicates);
        self.record_late_metrics();
        self.ctx.metrics.records.with_label_values(&["open"]).set(self.aggregator.open_records() as i64);
        deliveries
    }

    /// The clock's time, with a WARN when it stepped back since the last reading: hours already
    /// sealed stay sealed (the aggregator sees to that), but late events become more likely.
    fn now(&mut self) -> i64 {
        let now = self.ctx.clock.now();
        // Once per step: while the clock catches up, every reading is behind the latest one.
        if now + 1 < self.latest_now && !self.behind {
            tracing::warn!(
                back_secs = self.latest_now - now,
                "meterd's clock moved backwards (an NTP step or a restored snapshot); sealed hours stay sealed, events for them follow submit.late_events"
            );
        }
        self.behind = now + 1 < self.latest_now;
        self.latest_now = self.latest_now.max(now);
        now
    }

    /// One WARN per legacy customer identifier per UTC day: the field is deprecated.
    fn warn_legacy_customer(&mut self, customer: &Customer, now: i64) {
        let Customer::Identifier(identifier) = customer else { return };
        let day = now.div_euclid(86_400);
        if self.legacy_warned.0 != day {
            self.legacy_warned = (day, HashSet::new());
        }
        if self.legacy_warned.1.insert(identifier.clone()) {
            tracing::warn!(
                customer_identifier = %identifier,
                "customer_identifier is deprecated for BatchMeterUsage; new SaaS products must name customers by customer_aws_account_id with license_arn"
            );
        }
    }

    fn record_late_metrics(&mut self) {
        let (carried, rejected) = (self.aggregator.late_carried, self.aggregator.late_rejected);
        let late = &self.ctx.metrics.late_events;
        late.with_label_values(&["carry_forward"]).inc_by(carried - self.late_seen.0);
        late.with_label_values(&["reject"]).inc_by(rejected - self.late_seen.1);
        self.late_seen = (carried, rejected);
    }

    /// Updates the outbox size and whether it is full: over `storage.max_bytes`, or less than
    /// `storage.min_free_bytes` free on its filesystem. Each limit clears with a margin, so that
    /// readiness does not flap at the boundary: below 90 % of max_bytes, above 110 % of
    /// min_free_bytes.
    fn measure_outbox(&self) {
        let room = match self.outbox.room() {
            Ok(room) => room,
            Err(err) => return tracing::warn!(%err, "cannot measure the outbox"),
        };
        let (bytes, free, min_free) = (room.bytes, room.free_bytes, room.min_free_bytes);
        self.ctx.metrics.outbox_bytes.set(bytes as i64);
        self.ctx.metrics.remembered_ids.set(self.aggregator.remembered_ids() as i64);
        self.ctx.metrics.id_files_bytes.set(self.outbox.id_bytes() as i64);
        self.ctx.metrics.receipts_archive_bytes.set(room.archive_bytes as i64);
        let was = self.ctx.health.outbox_fullness();
        let full = crate::telemetry::health::OutboxFull {
            over_max_bytes: if was.over_max_bytes {
                bytes.saturating_mul(10) >= self.max_bytes.saturating_mul(9)
            } else {
                bytes > self.max_bytes
            },
            low_free_space: if was.low_free_space {
                free.saturating_mul(10) <= min_free.saturating_mul(11)
            } else {
                free < min_free
            },
        };
        if full == was {
            return;
        }
        if full.over_max_bytes && !was.over_max_bytes {
            tracing::error!(
                bytes,
                max_bytes = self.max_bytes,
                "outbox full: new events are refused with overloaded until submission drains it"
            );
        }
        if full.low_free_space && !was.low_free_space {
            tracing::error!(
                free_bytes = free,
                min_free_bytes = min_free,
                "outbox full: less than storage.min_free_bytes free on the outbox's filesystem; new \
                 events are refused with overloaded until space is freed"
            );
        }
        if was.any() && !full.any() {
            tracing::info!(bytes, free_bytes = free, "outbox below its limits again: accepting events");
        }
        self.ctx.health.set_outbox_full(full);
    }
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
