//! The ship stage (every fleet host): sealed hourly records are this host's *partials*; they go
//! to PostgreSQL instead of to the Metering Service.
//!
//! A partial's id is this outbox's instance id and the record's id (with its generation after the
//! first: a key sealed early, by a flush or a stop, and sealed again within its hour), so a
//! resend is a no-op and a data dir started afresh never reuses one. One transaction per batch: the hours it names are
//! locked `FOR SHARE` (the lease holder closes an hour `FOR UPDATE`, so a partial is either in the
//! sum or late, never lost between); a partial already there with the same digest is done, with
//! another digest it is an ERROR and the stored one stays; a partial of an open hour is inserted;
//! one of a closed hour is *late* (see [`Late`]). The host's row (heartbeat, shipped-through hour)
//! is written in the same transaction. Only after the commit are the partials marked `Shipped` in
//! the local outbox. While the database is unreachable nothing is lost: partials wait in the
//! outbox, ingest goes on, and shipping resumes with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::db::{DbError, Target, key_columns};
use super::{FleetSettings, partial_digest};
use crate::clock::{deadline, hour_of, same_month};
use crate::context::Context;
use crate::model::{DeadReason, LateEvents};
use crate::outbox::{Outbox, RecordState, StoredRecord};

/// Most partials in one transaction.
const BATCH: usize = 500;

/// What the last shipment leaves of the shutdown's grace, for the rest of the shutdown.
const FINISH_MARGIN: Duration = Duration::from_millis(500);

/// What happens to a partial whose hour the fleet already closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Counted into the fleet's open hour now (`late_events = carry_forward`, same billing month,
    /// inside the deadline): a derived partial `late:<id>` in that hour.
    Carried { to: i64 },
    /// A fleet dead letter `late_partial` with its host and quantity.
    DeadLetter,
}

/// Decides where a late partial of `hour` goes at `now`.
pub fn late(hour: i64, now: i64, settings: &FleetSettings) -> Late {
    let to = hour_of(now);
    let carry = settings.late_events == LateEvents::CarryForward
        && to > hour
        && same_month(hour, to)
        && deadline(to, settings.deadline) > now + 3600;
    if carry { Late::Carried { to } } else { Late::DeadLetter }
}

/// The ship stage's state.
pub struct Shipper {
    pub ctx: Context,
    pub settings: Arc<FleetSettings>,
    pub target: Target,
    pub outbox: Arc<Outbox>,
    /// This host's unshipped partials, by outbox key order.
    pub pending: BTreeMap<(i64, String), StoredRecord>,
    /// The commit stage's last sealed hour (a partial of every hour up to it was handed over).
    pub sealed_through: watch::Receiver<Option<i64>>,
    /// When the daemon's shutdown must be over (set as it begins): the last shipment retries
    /// until shortly before. `None`: one attempt.
    pub stop_by: watch::Receiver<Option<Instant>>,
}

impl Shipper {
    /// Ships until `cancel`, then once more (scale-in: within the stop timeout) and deregisters.
    pub async fn run(
        mut self,
        mut sealed: mpsc::UnboundedReceiver<Vec<StoredRecord>>,
        cancel: CancellationToken,
    ) {
        let mut client: Option<Client> = None;
        let mut failures = 0u32;
        let every = self.settings.heartbeat_every();
        let mut next_compaction = Instant::now();
        self.ctx.metrics.fleet.backlog.set(self.pending.len() as i64);
        // The first turn ships (and registers the host again) at once: a host back from a
        // restart is waited for from its start, not from its first heartbeat, so an hour that
        // closes meanwhile does not turn its later events into late partials.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                received = sealed.recv() => match received {
                    Some(records) => self.add(records),
                    None => break,
                },
                // A newly sealed hour is shipped at once, so that the holder can close it.
                Ok(()) = self.sealed_through.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break,
            }
            // The sealed hour first, then the channel: the commit stage sends an hour's records
            // before it announces the hour, so all of them are drained below and shipped in the
            // same transaction as the hour.
            let through = *self.sealed_through.borrow_and_update();
            while let Ok(records) = sealed.try_recv() {
                self.add(records);
            }
            if Instant::now() >= next_compaction {
                next_compaction = Instant::now() + Duration::from_secs(3600);
                self.compact();
            }
            // Cut short by the shutdown (a database that stopped answering must not hold it up):
            // `finish` ships again on a new connection within the grace, and a resend is a no-op.
            let shipped = tokio::select! {
                shipped = self.ship(&mut client, through) => Some(shipped),
                _ = cancel.cancelled() => None,
            };
            let Some(shipped) = shipped else {
                client = None;
                break;
            };
            match shipped {
                Ok(()) => failures = 0,
                Err(err) => {
                    failures += 1;
                    client = None;
                    self.ctx.metrics.fleet.ship_errors.inc();
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(%err, backlog = self.pending.len(), "cannot ship partials to the fleet database; they wait in the outbox");
                    }
                }
            }
            wait = if failures == 0 { every } else { backoff(failures) };
        }
        let through = *self.sealed_through.borrow();
        while let Ok(records) = sealed.try_recv() {
            self.add(records);
        }
        self.finish(&mut client, through).await;
    }

    /// Ships everything pending now, on a connection of its own (the fleet benchmark).
    pub async fn ship_pending(&mut self) -> Result<(), DbError> {
        let through = *self.sealed_through.borrow();
        self.ship(&mut None, through).await
    }

    /// Deletes shipped partials (and local dead letters) older than `storage.retention`.
    fn compact(&self) {
        let before = self.ctx.clock.now() - self.settings.retention;
        // Shipped partials leave sled for the receipts archive, which expires by whole days: those
        // of the hours sealed as a whole, which are frozen without them. A later hour's stay, so
        // that a key sealed early and again takes the next generation, never an id it shipped.
        let sealed = *self.sealed_through.borrow();
        let hours_before = sealed.map_or(i64::MIN, |through| through + 3600);
        let archived =
            self.outbox.archive_settled(hours_before).and_then(|_| self.outbox.expire_archive(before));
        if let Err(err) = archived {
            tracing::error!(%err, "failed to move shipped partials to the receipts archive; stopping");
            self.ctx.fail();
        }
        match self.outbox.compact(before) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(records = removed.len(), "compacted shipped partials past the retention");
                if self.outbox.barrier().is_err() {
                    self.ctx.fail();
                }
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "compaction failed; will try again"),
        }
    }

    fn add(&mut self, records: Vec<StoredRecord>) {
        for stored in records {
            let id = super::local_partial_id(&stored);
            self.pending.insert((stored.record.key.hour, id), stored);
        }
        self.ctx.metrics.fleet.backlog.set(self.pending.len() as i64);
    }

    /// Ships what is pending (in batches) and beats the host's heart.
    async fn ship(&mut self, client: &mut Option<Client>, through: Option<i64>) -> Result<(), DbError> {
        if client.is_none() {
            // The schema as this meterd knows it, whether or not a lease loop got to it first: a
            // host stopped right after its first start still ships, and registers, what it took.
            self.target.migrate().await?;
            *client = Some(self.target.connect().await?);
        }
        let client = client.as_mut().expect("just connected");
        loop {
            let batch: Vec<((i64, String), StoredRecord)> =
                self.pending.iter().take(BATCH).map(|(k, v)| (k.clone(), v.clone())).collect();
            let (shipped, conflicts) = self.ship_batch(client, &batch, through).await?;
            for key in &shipped {
                if let Some(mut stored) = self.pending.remove(key) {
                    stored.state = RecordState::Shipped { at: self.ctx.clock.now() };
                    self.persist(&stored);
                }
            }
            for key in &conflicts {
                if let Some(stored) = self.pending.remove(key) {
                    self.mark_conflict(&stored);
                }
            }
            if !shipped.is_empty() && self.outbox.barrier().is_err() {
                self.ctx.fail();
            }
            self.ctx.metrics.fleet.partials_shipped.inc_by(shipped.len() as u64);
            self.ctx.metrics.fleet.backlog.set(self.pending.len() as i64);
            if batch.len() < BATCH {
                return Ok(());
            }
        }
    }

    fn persist(&self, stored: &StoredRecord) {
        if let Err(err) = self.outbox.settle(stored) {
            tracing::error!(%err, "failed to mark a partial shipped; stopping");
            self.ctx.fail();
        }
    }

    /// The highest hour this host has sealed and shipped whole once the first `shipping` pending
    /// partials are (they go in the same transaction), given the last sealed hour as it was read
    /// before the channel was drained.
    fn shipped_through(&self, sealed: Option<i64>, shipping: usize) -> Option<i64> {
        let sealed = sealed?;
        match self.pending.keys().nth(shipping) {
            Some((hour, _)) if *hour <= sealed => Some(hour - 3600),
            _ => Some(sealed),
        }
    }

    /// One transaction: the batch's partials and the host's row. Returns the partials now in
    /// the database (or dead-lettered there), and those refused as conflicts.
    async fn ship_batch(
        &self,
        client: &mut Client,
        batch: &[((i64, String), StoredRecord)],
        through: Option<i64>,
    ) -> Result<(Vec<(i64, String)>, Vec<(i64, String)>), DbError> {
        let now = self.ctx.clock.now();
        let host = &self.settings.host_id;
        let instance = self.outbox.instance();
        let tx = client.transaction().await?;
        let mut hours: Vec<i64> = batch.iter().map(|((hour, _), _)| *hour).collect();
        hours.push(hour_of(now));
        hours.sort_unstable();
        hours.dedup();
        tx.execute("INSERT INTO hours (hour) SELECT unnest($1::bigint[]) ON CONFLICT DO NOTHING", &[&hours])
            .await?;
        let states: HashMap<i64, String> = tx
            .query("SELECT hour, state FROM hours WHERE hour = ANY($1) ORDER BY hour FOR SHARE", &[&hours])
            .await?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let ids: Vec<String> = batch.iter().map(|((_, id), _)| format!("{instance}:{id}")).collect();
        let known = known_partials(&tx, &ids).await?;
        let mut rows = Rows::default();
        let (mut done, mut conflicts) = (Vec::new(), Vec::new());
        for (((hour, local), stored), partial_id) in batch.iter().zip(&ids) {
            let digest = partial_digest(&stored.record);
            match known.get(partial_id) {
                Some(stored_digest) if *stored_digest == digest => {}
                Some(_) => {
                    tracing::error!(
                        partial_id,
                        hour,
                        "a different partial is stored under this id; the stored one stays and this one is not billed"
                    );
                    conflicts.push((*hour, local.clone()));
                    continue;
                }
                None if states.get(hour).is_some_and(|s| s == "open") => {
                    rows.add(partial_id, &stored.record, stored.generation, digest)
                }
                None => {
                    self.ship_late(&tx, &mut rows, Partial { id: partial_id, stored, digest }, &states, now)
                        .await?
                }
            }
            done.push((*hour, local.clone()));
        }
        rows.insert(&tx, host).await?;
        let through = self.shipped_through(through, batch.len());
        tx.execute(
            "INSERT INTO hosts (host_id, first_seen, heartbeat, shipped_through) VALUES ($1, $2, $2, $3)
             ON CONFLICT (host_id) DO UPDATE SET heartbeat = $2, deregistered_at = NULL,
               shipped_through = greatest(hosts.shipped_through, excluded.shipped_through)",
            &[host, &now, &through],
        )
        .await?;
        tx.commit().await?;
        Ok((done, conflicts))
    }

    /// A partial of a closed hour: carried into the open hour, or a fleet dead letter.
    async fn ship_late(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        rows: &mut Rows,
        partial: Partial<'_>,
        states: &HashMap<i64, String>,
        now: i64,
    ) -> Result<(), DbError> {
        let Partial { id: partial_id, stored, digest } = partial;
        let record = &stored.record;
        let outcome = match late(record.key.hour, now, &self.settings) {
            Late::Carried { to } if states.get(&to).is_some_and(|s| s == "open") => Late::Carried { to },
            _ => Late::DeadLetter,
        };
        let (carried_to, reason, label) = match outcome {
            Late::Carried { to } => {
                let mut moved = record.clone();
                moved.key.hour = to;
                rows.add(&format!("late:{partial_id}"), &moved, stored.generation, digest);
                (Some(to), None, "carried")
            }
            Late::DeadLetter => (None, Some("late_partial"), "dead_letter"),
        };
        let bytes = postcard::to_allocvec(record).expect("a record always encodes");
        tx.execute(
            "INSERT INTO late_partials (host_id, partial_id, hour, quantity, digest, carried_to, reason, noted_at, record, generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            &[&self.settings.host_id, &partial_id, &record.key.hour, &i64::from(record.quantity), &digest, &carried_to, &reason, &now, &bytes, &(stored.generation as i32)],
        )
        .await?;
        self.ctx.metrics.fleet.late_partials.with_label_values(&[label]).inc();
        tracing::warn!(
            hour = record.key.hour,
            quantity = record.quantity,
            carried_to,
            "a partial arrived after its hour closed"
        );
        Ok(())
    }

    fn mark_conflict(&self, stored: &StoredRecord) {
        let mut stored = stored.clone();
        let message =
            "partial_conflict: the fleet database holds a different partial under this id".to_string();
        stored.state =
            RecordState::DeadLetter { reason: DeadReason::Invalid, message, at: self.ctx.clock.now() };
        self.persist(&stored);
    }

    /// At shutdown (scale-in): ships everything left, retrying until shortly before the stop
    /// deadline, and deregisters only once all of it is committed, so that the fleet never stops
    /// waiting for a host whose partials it lacks. What cannot be shipped stays in the outbox,
    /// and the host stays registered.
    async fn finish(&mut self, client: &mut Option<Client>, through: Option<i64>) {
        let until = (*self.stop_by.borrow()).map(|by| by.checked_sub(FINISH_MARGIN).unwrap_or(by));
        let mut failures = 0;
        loop {
            match within(until, self.ship(client, through)).await {
                Ok(()) => return self.deregister(client, until).await,
                Err(err) => {
                    failures += 1;
                    *client = None;
                    tracing::warn!(%err, backlog = self.pending.len(), "last shipment failed");
                }
            }
            let retry_at = Instant::now() + backoff(failures);
            if until.is_none_or(|until| retry_at >= until) {
                break;
            }
            tokio::time::sleep_until(retry_at).await;
        }
        let quantity: u64 = self.pending.values().map(|s| u64::from(s.record.quantity)).sum();
        tracing::error!(
            partials = self.pending.len(),
            quantity,
            "stopping with partials not shipped: this host stays registered, and they stay in the outbox and ship when this data dir runs again (lost with it if it is not kept)"
        );
    }

    /// Marks this host deregistered: the fleet no longer waits for it.
    async fn deregister(&self, client: &Option<Client>, until: Option<Instant>) {
        let Some(client) = client.as_ref() else { return };
        let now = self.ctx.clock.now();
        let update = async {
            let host = &self.settings.host_id;
            Ok(client
                .execute("UPDATE hosts SET deregistered_at = $2 WHERE host_id = $1", &[host, &now])
                .await?)
        };
        match within(until, update).await {
            Ok(_) => tracing::info!("every partial shipped; deregistered from the fleet"),
            Err(err) => tracing::warn!(
                %err,
                "every partial shipped, but could not deregister from the fleet; it stops waiting after fleet.host_timeout"
            ),
        }
    }
}

/// `work`, given up at `until` (if any).
async fn within<T>(
    until: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    match until {
        Some(until) => tokio::time::timeout_at(until, work).await.unwrap_or(Err(DbError::TimedOut)),
        None => work.await,
    }
}

/// One partial on its way.
struct Partial<'a> {
    id: &'a str,
    stored: &'a StoredRecord,
    digest: i64,
}

/// Partials already in the database (or in `late_partials`), with their digests. By id alone:
/// an id names its outbox, so a data dir that moved to another host id is still recognised.
async fn known_partials(
    tx: &tokio_postgres::Transaction<'_>,
    ids: &[String],
) -> Result<HashMap<String, i64>, DbError> {
    let rows = tx
        .query(
            "SELECT DISTINCT partial_id, digest FROM partials WHERE partial_id = ANY($1)
             UNION ALL SELECT partial_id, digest FROM late_partials WHERE partial_id = ANY($1)",
            &[&ids],
        )
        .await?;
    Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Partial rows to insert, one per tag set, as column arrays (one statement per batch).
#[derive(Default)]
pub(super) struct Rows {
    partial_id: Vec<String>,
    tags: Vec<String>,
    scope_kind: Vec<&'static str>,
    scope: Vec<String>,
    customer_kind: Vec<&'static str>,
    customer: Vec<String>,
    dimension: Vec<String>,
    hour: Vec<i64>,
    quantity: Vec<i64>,
    digest: Vec<i64>,
    generation: Vec<i32>,
}

impl Rows {
    pub(super) fn add(
        &mut self,
        partial_id: &str,
        record: &crate::aggregate::SealedRecord,
        generation: u32,
        digest: i64,
    ) {
        let (scope_kind, scope, customer_kind, customer) = key_columns(&record.key);
        let allocations: Vec<(String, i64)> = if record.allocations.is_empty() {
            vec![("[]".into(), i64::from(record.quantity))]
        } else {
            record
                .allocations
                .iter()
                .map(|a| (serde_json::to_string(&a.tags).expect("tags encode"), i64::from(a.quantity)))
                .collect()
        };
        for (tags, quantity) in allocations {
            self.partial_id.push(partial_id.to_string());
            self.tags.push(tags);
            self.scope_kind.push(scope_kind);
            self.scope.push(scope.to_string());
            self.customer_kind.push(customer_kind);
            self.customer.push(customer.to_string());
            self.dimension.push(record.key.dimension.clone());
            self.hour.push(record.key.hour);
            self.quantity.push(quantity);
            self.digest.push(digest);
            self.generation.push(generation as i32);
        }
    }

    pub(super) async fn insert(
        self,
        tx: &tokio_postgres::Transaction<'_>,
        host: &str,
    ) -> Result<(), DbError> {
        if self.partial_id.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO partials (host_id, partial_id, tags, scope_kind, scope, customer_kind, customer, dimension, hour, quantity, digest, generation)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::int[])
             ON CONFLICT DO NOTHING",
            &[&host, &self.partial_id, &self.tags, &self.scope_kind, &self.scope, &self.customer_kind, &self.customer, &self.dimension, &self.hour, &self.quantity, &self.digest, &self.generation],
        )
        .await?;
        Ok(())
    }
}

/// The wait after `failures` failed attempts: the project's backoff with full jitter (a fleet
/// that lost its database does not retry in lock-step), under a ceiling of 1 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    crate::backoff::delay(Duration::from_secs(1), Duration::from_secs(30), failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ship_backoff_is_jittered_under_a_ceiling_of_one_second_doubling_to_thirty() {
        for failures in 1..12u32 {
            let ceiling = Duration::from_secs(1 << (failures - 1).min(5)).min(Duration::from_secs(30));
            let waits: Vec<Duration> = (0..200).map(|_| backoff(failures)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "{failures}: {waits:?} above {ceiling:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "{failures}: every wait is {:?}", waits[0]);
        }
        assert!((0..200).map(|_| backoff(20)).any(|w| w > Duration::from_secs(16)), "up to 30 s");
    }
}
