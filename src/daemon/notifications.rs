//! The notification consumer's place in the daemon: started after the submit loop (its effects
//! go to the commit stage and the submit loop), stopped with the intake, before the commit stage.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Running;
use crate::commit;
use crate::notifications::{Consumer, Ledger, LocalEffects, QueueSettings, Shared, SqsQueue};
use crate::submit::{Control, MeteringApi};

impl<A: MeteringApi + Clone + 'static> Running<A> {
    /// The notification consumer (`[notifications]`): its ledger is read now, SQS is reached in
    /// the task, so that a queue that cannot be reached never holds the start up.
    pub(super) fn spawn_notifications(
        &mut self,
        commands: mpsc::Sender<commit::Command>,
        controls: mpsc::Sender<Control>,
    ) -> anyhow::Result<()> {
        let n = &self.config.notifications;
        let dir = self.config.storage.data_dir.join("notifications");
        let ledger = Ledger::open(&dir, self.ctx.clock.now())?;
        let shared = Arc::new(Shared::new(ledger, &n.queue_url));
        self.notifications = Some(shared.clone());
        let settings = QueueSettings {
            queue_url: n.queue_url.clone(),
            region: if n.region.is_empty() { self.config.aws.region.clone() } else { n.region.clone() },
            endpoint_url: (!n.endpoint_url.is_empty()).then(|| n.endpoint_url.clone()),
            wait_time: n.wait_time,
            batch_size: n.batch_size,
            visibility_timeout: n.visibility_timeout,
        };
        let ctx = self.ctx.clone();
        let products = self.config.aws.products().into_iter().map(|p| p.code).collect();
        let effects = LocalEffects { ctx: ctx.clone(), commands, controls };
        let cancel = self.stops.intake.clone();
        tracing::info!(queue_url = %settings.queue_url, "reading subscription notifications from SQS");
        self.supervisor.spawn_unit("notifications", async move {
            let queue = SqsQueue::new(settings).await;
            Consumer { ctx, queue, effects, shared, products }.run(cancel).await;
        });
        Ok(())
    }
}
