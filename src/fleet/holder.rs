//! The lease loop every fleet host runs, and what the holder does with the lease: close the
//! hours that are due and run the submit loop over the fleet's records (kept in PostgreSQL, so a
//! new holder resends exactly what the last one froze). Losing the lease, or failing to renew it
//! before it runs out, stops the holder's submit loop at once; the fencing epoch in every write
//! refuses whatever it still tries.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::FleetSettings;
use super::close;
use super::db::{DbError, Target};
use super::lease::{self, Held};
use super::store::FleetStore;
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
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl<A: MeteringApi + Clone + 'static> Holder<A> {
    /// Tries for the lease every `lease_ttl / 3` until `cancel`; gives it up at the end.
    pub async fn run(self, cancel: CancellationToken) {
        let mut client: Option<Client> = None;
        let mut held: Option<Held> = None;
        let mut running: Option<Running> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.lease_every()) => {}
                _ = cancel.cancelled() => break,
            }
            let now = self.ctx.clock.now();
            match self.turn(&mut client, held, &mut running, now).await {
                Ok(now_held) => held = now_held,
                Err(err) => {
                    client = None;
                    tracing::warn!(%err, "fleet database unreachable from the lease loop");
                    // A lease that could not be renewed is ours only until it runs out.
                    held = held.filter(|h| h.until > now + 1);
                }
            }
            if held.is_none()
                && let Some(run) = running.take()
            {
                tracing::warn!("the submitter lease is lost; this host stops submitting");
                run.stop.cancel();
                let _ = run.task.await;
            }
            self.ctx.metrics.fleet.lease_held.set(i64::from(held.is_some()));
        }
        if let Some(run) = running.take() {
            run.stop.cancel();
            let _ = run.task.await;
        }
        if let (Some(client), Some(held)) = (client.as_ref(), held) {
            let _ = lease::release(client, &self.settings.host_id, held).await;
        }
        self.ctx.metrics.fleet.lease_held.set(0);
    }

    /// One turn: take or renew the lease; as holder, start the submit loop and close due hours.
    async fn turn(
        &self,
        client: &mut Option<Client>,
        held: Option<Held>,
        running: &mut Option<Running>,
        now: i64,
    ) -> Result<Option<Held>, DbError> {
        if client.is_none() {
            self.target.migrate().await?;
            *client = Some(self.target.connect().await?);
        }
        let db = client.as_mut().expect("just connected");
        let host = &self.settings.host_id;
        let Some(now_held) = lease::acquire(db, host, now, self.settings.lease_ttl, held).await? else {
            return Ok(None);
        };
        let same_epoch = held.map(|h| h.epoch) == Some(now_held.epoch);
        let ended = running.as_ref().is_some_and(|run| run.task.is_finished());
        if same_epoch && ended {
            // Its store was retired by a database error: start again on a new connection.
            tracing::warn!(
                epoch = now_held.epoch,
                "the fleet submit loop stopped on a database error; starting it again"
            );
        }
        if !same_epoch || ended {
            tracing::info!(epoch = now_held.epoch, "this host holds the submitter lease");
            if let Some(run) = running.take() {
                run.stop.cancel();
                let _ = run.task.await;
            }
            *running = Some(self.start_submitting(db, now_held.epoch).await?);
        }
        let records = &running.as_ref().expect("started above").records;
        for (hour, waiting) in close::due_hours(db, &self.settings, now).await? {
            if !waiting.is_empty() {
                tracing::debug!(hour, hosts = ?waiting, "hour not closed yet: waiting for hosts");
                break;
            }
            if let Some(closed) = close::close(db, hour, now_held.epoch, now).await? {
                tracing::info!(hour, records = closed.len(), epoch = now_held.epoch, "fleet hour closed");
                self.ctx.metrics.fleet.hours_closed.inc();
                let stored = closed.into_iter().map(|record| StoredRecord {
                    record,
                    sealed_at: now,
                    state: RecordState::Pending,
                });
                let _ = records.send(stored.collect());
            }
        }
        Ok(Some(now_held))
    }

    /// The submit loop over the fleet's pending records, fenced by `epoch`.
    async fn start_submitting(&self, db: &Client, epoch: i64) -> Result<Running, DbError> {
        let store =
            FleetStore::new(self.target.clone(), self.ctx.clock, self.settings.host_id.clone(), epoch)
                .await?;
        let pending = super::store::pending(db).await?;
        tracing::info!(records = pending.len(), epoch, "submitting the fleet's records");
        let submitter =
            Submitter::new(self.ctx.clone(), self.api.clone(), Arc::new(store), pending, self.submit);
        let (records, records_rx) = mpsc::unbounded_channel();
        // Operators' dead-letter retries go to a host's own loop; the fleet loop takes none.
        let (_controls, control_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        // Fleet mode is batch mode: no RegisterUsage to wait for.
        let task = tokio::spawn(submitter.run(records_rx, control_rx, std::future::ready(()), stop.clone()));
        Ok(Running { records, stop, task })
    }
}
