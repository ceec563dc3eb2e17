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
//!
//! The submit loop starts and stops with the lease, so the supervisor (which spawns the lease
//! loop, task `fleet`) does not spawn it; it runs in a scope of the lease loop's own
//! ([`SubmitScope`]) that cannot outlive it, and the lease loop watches it between turns:
//!
//! | the submit loop | the lease loop |
//! |---|---|
//! | stops because the lease loop told it (lease lost, new epoch, shutdown) | nothing more |
//! | stops because its store is fenced (the lease moved on, or a database error retired it) | starts another at the next renewal while it holds the lease |
//! | returns otherwise | ends with [`HolderError::SubmitLoopReturned`]: meterd stops, as for any task |
//! | panics | raises the panic again: meterd stops, as for any task |

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
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
use crate::submit::{MeteringApi, Settings, Store, Submitter};

/// What stops the lease loop, and with it meterd.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    #[error(
        "the fleet submit loop of epoch {epoch} returned while this host held the lease and had not stopped it"
    )]
    SubmitLoopReturned { epoch: i64 },
}

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
    epoch: i64,
    scope: SubmitScope,
}

impl Running {
    /// Gives the submit loop `records`, the pending records of `hours`.
    fn hand(&mut self, hours: &[i64], records: Vec<StoredRecord>) {
        self.handed.extend(hours);
        let _ = self.records.send(records);
    }

    async fn end(self) {
        self.scope.end().await;
    }
}

/// How the submit loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The lease loop stopped it.
    Stopped,
    /// Its store was fenced: the lease moved on, or a database error retired the store.
    Fenced,
    /// Neither: a defect, which stops meterd.
    Returned,
}

/// The submit loop's scope: the loop is a task of it, aborted when the scope is dropped (the
/// lease loop's task ended or was aborted by the supervisor), so that no submit loop runs on
/// without the lease loop that watches it.
struct SubmitScope {
    task: JoinSet<Ended>,
    stop: CancellationToken,
}

impl SubmitScope {
    /// Runs `submit_loop` (which ends on `stop`), telling afterwards whether it was stopped, its
    /// store `fenced`, or neither.
    fn spawn<F>(submit_loop: F, stop: CancellationToken, fenced: impl Fn() -> bool + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut task = JoinSet::new();
        let stopped = stop.clone();
        task.spawn(async move {
            submit_loop.await;
            if stopped.is_cancelled() {
                Ended::Stopped
            } else if fenced() {
                Ended::Fenced
            } else {
                Ended::Returned
            }
        });
        Self { task, stop }
    }

    /// Waits until the loop ends, and says how; a panic of the loop is raised again here.
    /// Pending forever once it has been told.
    async fn ended(&mut self) -> Ended {
        match self.task.join_next().await {
            Some(joined) => surface_panic(joined).unwrap_or(Ended::Stopped),
            None => std::future::pending().await,
        }
    }

    /// Stops the loop and waits for it.
    async fn end(mut self) {
        self.stop.cancel();
        if !self.task.is_empty() {
            self.ended().await;
        }
    }
}

/// A panic of the submit loop is raised again in the lease loop, a supervised task, so that it
/// stops meterd as any task's panic does instead of being taken for a database error. `None`: the
/// task was aborted.
fn surface_panic<T>(joined: Result<T, tokio::task::JoinError>) -> Option<T> {
    match joined {
        Ok(value) => Some(value),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => None,
    }
}

/// Waits until the submit loop in `running` ends (pending forever while none runs).
async fn submit_loop_ended(running: &mut Option<Running>) -> (i64, Ended) {
    match running {
        Some(run) => (run.epoch, run.scope.ended().await),
        None => std::future::pending().await,
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
    /// until `cancel`; gives the lease up at the end. Fails when the submit loop returns without
    /// a reason (see the module's table).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), HolderError> {
        let mut lease = Lease::default();
        let mut failed = None;
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
                (epoch, ended) = submit_loop_ended(&mut lease.running) => {
                    lease.running = None;
                    match ended {
                        Ended::Stopped => {}
                        Ended::Fenced => tracing::warn!(
                            epoch,
                            "the fleet submit loop stopped: the lease moved on, or a database error; it starts again while this host holds the lease"
                        ),
                        Ended::Returned => {
                            failed = Some(HolderError::SubmitLoopReturned { epoch });
                            break;
                        }
                    }
                }
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
        failed.map_or(Ok(()), Err)
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
        if same_epoch && running.is_some() {
            return Ok(());
        }
        if same_epoch {
            // Its store was fenced by a database error (the lease loop saw it end), or starting
            // it failed: again, on a new connection.
            tracing::warn!(epoch = held.epoch, "the fleet submit loop is not running; starting it again");
        } else {
            tracing::info!(epoch = held.epoch, "this host holds the submitter lease");
        }
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
        let store = Arc::new(
            FleetStore::new(
                self.target.clone(),
                self.ctx.clock,
                self.settings.host_id.clone(),
                epoch,
                write_timeout,
            )
            .await?,
        );
        // Read before the pending records: a retry after it is handed over at the next turn.
        let actions_seen = dlq::last_action(db).await?;
        let pending = store::pending(db).await?;
        tracing::info!(records = pending.len(), epoch, "submitting the fleet's records");
        let handed = pending.iter().map(|stored| stored.record.key.hour).collect();
        let fenced = store.clone();
        let submitter = Submitter::new(self.ctx.clone(), self.api.clone(), store, pending, self.submit);
        let (records, records_rx) = mpsc::unbounded_channel();
        // Operators' dead-letter retries go to a host's own loop; the fleet loop takes none.
        let (_controls, control_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        // Fleet mode is batch mode: no RegisterUsage to wait for.
        let submit_loop = submitter.run(records_rx, control_rx, std::future::ready(()), stop.clone());
        let scope = SubmitScope::spawn(submit_loop, stop, move || fenced.fenced());
        Ok(Running { records, handed, actions_seen, epoch, scope })
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio_util::sync::CancellationToken;

    use super::{Ended, SubmitScope};

    /// A submit loop that returns at once, or runs until `stop`.
    fn scope(returns: bool, fenced: bool) -> (SubmitScope, CancellationToken) {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let submit_loop = async move {
            if !returns {
                stopped.cancelled().await;
            }
        };
        (SubmitScope::spawn(submit_loop, stop.clone(), move || fenced), stop)
    }

    #[tokio::test]
    async fn the_submit_loop_ended_by_the_holder_by_its_fence_or_for_no_reason() {
        let (mut unasked, _) = scope(true, false);
        assert_eq!(unasked.ended().await, Ended::Returned, "a defect: the holder stops meterd");
        let (mut fenced, _) = scope(true, true);
        assert_eq!(fenced.ended().await, Ended::Fenced, "lease moved on or database error: started again");
        let (mut stopped, stop) = scope(false, false);
        stop.cancel();
        assert_eq!(stopped.ended().await, Ended::Stopped);
        let (running, _) = scope(false, false);
        running.end().await;
    }

    #[tokio::test]
    async fn the_submit_loop_does_not_outlive_its_scope() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let submit_loop = async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        };
        let scope = SubmitScope::spawn(submit_loop, CancellationToken::new(), || false);
        tokio::task::yield_now().await;
        assert!(!dropped.load(Ordering::SeqCst));
        // The lease loop's task ends or is aborted without stopping the loop first.
        drop(scope);
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the submit loop ran on after its scope was dropped");
    }

    #[tokio::test]
    async fn a_panic_of_the_submit_loop_is_raised_in_the_holders_watch() {
        let submit_loop = async { panic!("the submit loop panicked") };
        let mut scope = SubmitScope::spawn(submit_loop, CancellationToken::new(), || false);
        let watched = tokio::spawn(async move { scope.ended().await }).await;
        assert!(watched.unwrap_err().is_panic());
    }

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
