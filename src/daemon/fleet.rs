//! Fleet mode's wiring (the ship stage and the lease loop), and what a stopping host does with
//! its open hours: seal them now (fleet partials are summed; a `meter_usage` instance is its own
//! customer) and, for `meter_usage`, submit them before exiting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Running, settings};
use crate::commit;
use crate::config::Config;
use crate::context::Context;
use crate::fleet::FleetSettings;
use crate::fleet::holder::Holder;
use crate::fleet::ship::Shipper;
use crate::outbox::{Outbox, RecordState, StoredRecord};
use crate::submit::MeteringApi;

/// Fleet mode's database and settings, shared by the ship stage and the lease loop.
#[derive(Clone)]
pub(super) struct FleetRuntime {
    pub(super) target: crate::fleet::db::Target,
    pub(super) settings: Arc<FleetSettings>,
}

impl FleetRuntime {
    pub(super) async fn new(config: &Config) -> anyhow::Result<Self> {
        let host_id = crate::fleet::host::host_id(&config.fleet.host_id).await.map_err(anyhow::Error::msg)?;
        let fleet = &config.fleet;
        let target = crate::fleet::db::Target::new(
            &fleet.database_url,
            &fleet.password_file,
            &fleet.ca_file,
            &fleet.schema,
        )?;
        tracing::info!(host_id = %host_id, schema = %fleet.schema, "fleet mode: partials go to PostgreSQL");
        Ok(Self { target, settings: Arc::new(FleetSettings::new(config, host_id)) })
    }
}

impl<A: MeteringApi + Clone + 'static> Running<A> {
    /// Fleet mode: the ship stage takes the sealed records (partials) and this host's unshipped
    /// ones; the lease loop closes hours and submits while it holds the lease.
    pub(super) fn spawn_fleet(
        &mut self,
        fleet: FleetRuntime,
        outbox: &Arc<Outbox>,
        records: Vec<StoredRecord>,
        sealed: mpsc::UnboundedReceiver<Vec<StoredRecord>>,
        sealed_through: watch::Receiver<Option<i64>>,
    ) {
        let pending = records
            .into_iter()
            .filter(|stored| stored.state == RecordState::Pending)
            .map(|stored| ((stored.record.key.hour, crate::fleet::local_partial_id(&stored)), stored))
            .collect();
        let shipper = Shipper {
            ctx: self.ctx.clone(),
            settings: fleet.settings.clone(),
            target: fleet.target.clone(),
            outbox: outbox.clone(),
            pending,
            sealed_through,
            stop_by: self.stops.shutdown_by.subscribe(),
        };
        self.supervisor.spawn_unit("ship", shipper.run(sealed, self.stops.submit.clone()));
        let holder = Holder {
            ctx: self.ctx.clone(),
            settings: fleet.settings,
            target: fleet.target,
            api: self.api.clone(),
            submit: settings(&self.config),
        };
        let stop = self.stops.submit.clone();
        self.supervisor.spawn("fleet", async move { Ok(holder.run(stop).await?) });
    }
}

/// Waits (at most `within`) until the submit loop has nothing pending or in flight: a stopping
/// `meter_usage` instance submits the hours it just sealed before it exits.
pub(super) async fn drain_submissions(ctx: &Context, within: Duration) {
    let records = &ctx.metrics.records;
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        // The gauges lag the queue by one turn of the loop: read them twice, a turn apart.
        let idle = || {
            records.with_label_values(&["pending"]).get() == 0
                && records.with_label_values(&["in_flight"]).get() == 0
        };
        if idle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if idle() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = records.with_label_values(&["pending"]).get();
    tracing::error!(
        records = left,
        "stopping with sealed records not yet accepted; they are resent when this data dir runs again"
    );
}

/// Seals the open hours now, before the commit thread's last checkpoint (scale-in). A fleet host
/// seals every open record, whatever its hour (`every_hour`): it ships all it acknowledged,
/// including events of the next hour (inside `future_tolerance`, or carried forward), before it
/// deregisters. A `meter_usage` instance seals the hours that have begun: it submits them now,
/// and a record of an hour to come cannot be sent yet.
pub(super) async fn flush_open_hours(commands: mpsc::Sender<commit::Command>, every_hour: bool) {
    let (reply, sealed) = oneshot::channel();
    let flush = commit::Command::Flush { customer: None, product: None, every_hour, reply };
    if commands.send(flush).await.is_ok()
        && let Ok(count) = sealed.await
    {
        tracing::info!(records = count, "stopping: open hours sealed now, to be shipped before exit");
    }
}
