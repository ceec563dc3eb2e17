//! The lease loop every fleet host runs, and what the holder does with the lease: close the
//! hours that are due and run the submit loop over the fleet's records (kept in PostgreSQL, so a
//! new holder resends exactly what the last one froze). Losing the lease, or failing to renew it
//! before it runs out, stops the holder's submit loop at once; the fencing epoch in every write
//! refuses whatever it still tries.
//!
//! | every | the loop |
//! |---|---|
//! | `lease_ttl / 3` | takes or renews the lease; as holder, (re)starts the submit loop for its epoch and hands it the pending records it was never given |
//! | second, as holder | closes the hours that are due, so an hour closes a second or two after the last host shipped it, and hands their records to the submit loop |
//! | turn after an error | learns the true state from PostgreSQL before anything else: a close whose reply was lost (committed, but the holder heard an error) is submitted all the same |
//! | second, as holder | hands the submit loop the dead letters an operator retried on any host (`dlq.rs`) |
//!
//! So no closed, unsubmitted record waits longer than about `lease_ttl / 3` while a holder lives,
//! whatever failed before.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::FleetSettings;
use super::close;
use super::db::{DbError, Target};
use super::dlq;
use super::lease::{self, Held};
use super::store::{self, FleetStore};
use crate::context::Context;
use crate::outbox::{RecordState, StoredRecord};
use crate::submit::{MeteringApi, Settings, Submitter};

/// The lease loop's state.
pub struct Holder<A> {
    pub ctx: Context,
    pub settings: Arc<FleetSettings>,
    pub target: Target,
    pub api: A,
    pub submit: Settings,
}

/// The holder's submit loop while it runs.
struct Running {
    records: mpsc::UnboundedSender<Vec<StoredRecord>>,
    /// The hours whose pending records this loop was given (and that still have some).
    handed: BTreeSet<i64>,
    /// The last operator's change of a fleet dead letter this loop knows of ([`dlq::last_action`]).
    actions_seen: i64,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Gives the submit loop `records`, the pending records of `hours`.
    fn hand(&mut self, hours: &[i64], records: Vec<StoredRecord>) {
        self.handed.extend(hours);
        let _ = self.records.send(records);
    }

    async fn end(self) {
        self.stop.cancel();
        surface_panic(self.task.await);
    }
}

/// The submit loop is spawned by the holder, not by the supervisor (it starts and stops with the
/// lease): a panic in it is raised again in the holder, a supervised task, so that it stops
/// meterd as any task's panic does instead of being taken for a database error.
fn surface_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        std::panic::resume_unwind(err.into_panic());
    }
}

/// What the lease loop keeps from one turn to the next.
#[derive(Default)]
struct Lease {
    client: Option<Client>,
    held: Option<Held>,
    running: Option<Running>,
    /// When the lease was last taken or renewed, or tried.
    tried: Option<Instant>,
    /// A turn failed: PostgreSQL may hold what the submit loop was not given.
    unsure: bool,
}

impl<A: MeteringApi + Clone + 'static> Holder<A> {
    /// Tries for the lease every `lease_ttl / 3` and, as holder, closes due hours every second,
    /// until `cancel`; gives the lease up at the end.
    pub async fn run(self, cancel: CancellationToken) {
        let mut lease = Lease::default();
        loop {
            let renew = lease.tried.is_none_or(|at| at.elapsed() >= self.settings.lease_every());
            // A database that stopped answering must not hold the shutdown up: a turn cut short
            // is rolled back, and its writes are fenced anyway.
            if renew || lease.held.is_some() {
                tokio::select! {
                    _ = self.step(&mut lease, renew) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.close_every()) => {}
                _ = cancel.cancelled() => break,
            }
        }
        if let Some(run) = lease.running.take() {
            run.end().await;
        }
        if let (Some(client), Some(held)) = (lease.client.as_ref(), lease.held) {
            // Given up after a moment: the lease then runs out by itself within `lease_ttl`.
            let release = lease::release(client, &self.settings.host_id, held);
            let _ = tokio::time::timeout(self.settings.close_every(), release).await;
        }
        self.ctx.metrics.fleet.lease_held.set(0);
    }

    /// One turn, and what follows from its outcome: a lease not renewed in time is lost, and
    /// the submit loop with it.
    async fn step(&self, lease: &mut Lease, renew: bool) {
        let now = self.ctx.clock.now();
        if let Err(err) = self.turn(lease, renew, now).await {
            lease.client = None;
            lease.unsure = true;
            tracing::warn!(%err, "fleet database unreachable from the lease loop");
            // A lease that could not be renewed is ours only until it runs out.
            lease.held = lease.held.filter(|h| h.until > now + 1);
        }
        if renew {
            lease.tried = Some(Instant::now());
        }
        if lease.held.is_none()
            && let Some(run) = lease.running.take()
        {
            tracing::warn!("the submitter lease is lost; this host stops submitting");
            run.end().await;
        }
        self.ctx.metrics.fleet.lease_held.set(i64::from(lease.held.is_some()));
    }

    /// With `renew`: take or renew the lease, and as holder keep the submit loop running. As
    /// holder: hand it what it misses (on a renewal, or after an error), then close due hours.
    async fn turn(&self, lease: &mut Lease, renew: bool, now: i64) -> Result<(), DbError> {
        if lease.client.is_none() {
            self.target.migrate().await?;
            lease.client = Some(self.target.connect().await?);
        }
        let Lease { client, held, running, unsure, .. } = lease;
        let db = client.as_mut().expect("just connected");
        if renew {
            let before = *held;
            let host = &self.settings.host_id;
            *held = lease::acquire(db, host, now, self.settings.lease_ttl, before).await?;
            if let Some(now_held) = *held {
                self.keep_submitting(db, running, before, now_held).await?;
            }
        }
        let (Some(held), Some(running)) = (*held, running.as_mut()) else { return Ok(()) };
        if renew || *unsure {
            self.hand_over_missed(db, running).await?;
            *unsure = false;
        }
        hand_over_retried(db, running).await?;
        self.close_due(db, held.epoch, running, now).await
    }

    /// Starts the submit loop for `held`'s epoch, or again after it stopped on a database error.
    async fn keep_submitting(
        &self,
        db: &Client,
        running: &mut Option<Running>,
        before: Option<Held>,
        held: Held,
    ) -> Result<(), DbError> {
        let same_epoch = before.map(|h| h.epoch) == Some(held.epoch);
        let ended = running.as_ref().is_some_and(|run| run.task.is_finished());
        if same_epoch && ended {
            // A loop that panicked ends the holder the same way (the supervisor stops meterd);
            // one whose store was retired by a database error starts again on a new connection.
            if let Some(run) = running.take() {
                surface_panic(run.task.await);
            }
            tracing::warn!(
                epoch = held.epoch,
                "the fleet submit loop stopped on a database error; starting it again"
            );
        }
        if same_epoch && !ended && running.is_some() {
            return Ok(());
        }
        tracing::info!(epoch = held.epoch, "this host holds the submitter lease");
        if let Some(run) = running.take() {
            run.end().await;
        }
        *running = Some(self.start_submitting(db, held.epoch).await?);
        Ok(())
    }

    /// Closes the hours that are due, oldest first, and hands their records to the submit loop.
    async fn close_due(
        &self,
        db: &mut Client,
        epoch: i64,
        running: &mut Running,
        now: i64,
    ) -> Result<(), DbError> {
        for (hour, waiting) in close::due_hours(db, &self.settings, now).await? {
            if !waiting.is_empty() {
                tracing::debug!(hour, hosts = ?waiting, "hour not closed yet: waiting for hosts");
                break;
            }
            if let Some(closed) = close::close(db, hour, epoch, now).await? {
                tracing::info!(hour, records = closed.len(), epoch, "fleet hour closed");
                self.ctx.metrics.fleet.hours_closed.inc();
                let stored = closed.into_iter().map(|record| StoredRecord {
                    record,
                    sealed_at: now,
                    state: RecordState::Pending,
                    generation: 0,
                });
                running.hand(&[hour], stored.collect());
            }
        }
        Ok(())
    }

    /// Hands the submit loop the pending records of hours it was never given: a close whose
    /// reply was lost (PostgreSQL committed it, this holder heard an error), or anything else
    /// that failed between a close and the submit loop.
    async fn hand_over_missed(&self, db: &Client, running: &mut Running) -> Result<(), DbError> {
        let pending = store::pending_hours(db).await?;
        // An hour without pending records has none in the submit loop either.
        running.handed.retain(|hour| pending.contains(hour));
        let missed: Vec<i64> = pending.into_iter().filter(|hour| !running.handed.contains(hour)).collect();
        if missed.is_empty() {
            return Ok(());
        }
        let records = store::pending_in(db, &missed).await?;
        tracing::warn!(
            hours = ?missed,
            records = records.len(),
            "closed fleet records the submit loop was not given (a lost reply to a close?); submitting them now"
        );
        running.hand(&missed, records);
        Ok(())
    }

    /// The submit loop over the fleet's pending records, fenced by `epoch`.
    async fn start_submitting(&self, db: &Client, epoch: i64) -> Result<Running, DbError> {
        let write_timeout = std::time::Duration::from_secs(self.settings.lease_ttl.max(1) as u64);
        let store = FleetStore::new(
            self.target.clone(),
            self.ctx.clock,
            self.settings.host_id.clone(),
            epoch,
            write_timeout,
        )
        .await?;
        // Read before the pending records: a retry after it is handed over at the next turn.
        let actions_seen = dlq::last_action(db).await?;
        let pending = store::pending(db).await?;
        tracing::info!(records = pending.len(), epoch, "submitting the fleet's records");
        let handed = pending.iter().map(|stored| stored.record.key.hour).collect();
        let submitter =
            Submitter::new(self.ctx.clone(), self.api.clone(), Arc::new(store), pending, self.submit);
        let (records, records_rx) = mpsc::unbounded_channel();
        // Operators' dead-letter retries go to a host's own loop; the fleet loop takes none.
        let (_controls, control_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        // Fleet mode is batch mode: no RegisterUsage to wait for.
        let task = tokio::spawn(submitter.run(records_rx, control_rx, std::future::ready(()), stop.clone()));
        Ok(Running { records, handed, actions_seen, stop, task })
    }
}

/// Hands the submit loop the fleet records an operator retried since it last looked (`meterd dlq
/// retry` on any host made them pending again).
async fn hand_over_retried(db: &Client, running: &mut Running) -> Result<(), DbError> {
    let (last, retried) = dlq::retried_since(db, running.actions_seen).await?;
    running.actions_seen = last;
    if !retried.is_empty() {
        tracing::info!(records = retried.len(), "submitting fleet dead letters an operator retried");
        let hours: Vec<i64> = retried.iter().map(|stored| stored.record.key.hour).collect();
        running.hand(&hours, retried);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[tokio::test]
    async fn a_panic_of_the_submit_loop_is_raised_again_in_the_holder() {
        let panicked = tokio::spawn(async { panic!("the submit loop panicked") }).await;
        assert!(catch_unwind(AssertUnwindSafe(|| super::surface_panic(panicked))).is_err());
        // A loop that returned, or was cancelled, is no panic.
        super::surface_panic(tokio::spawn(async {}).await);
        let aborted = tokio::spawn(std::future::pending::<()>());
        aborted.abort();
        super::surface_panic(aborted.await);
    }
}
