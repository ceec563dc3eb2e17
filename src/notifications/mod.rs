//! The notification consumer: AWS Marketplace's subscription and agreement notifications, read
//! from an SQS queue (`[notifications]`), become lifecycle changes of customers, and each change
//! its effect (docs/notifications.md).
//!
//! - `queue.rs`: SQS behind the [`Queue`] seam (long polling, deletes).
//! - `envelope.rs`: the three envelopes and their payloads, read into a [`Notice`].
//! - `ledger.rs`: the ids seen and each customer's state, in a file of their own in the data dir.
//! - `effects.rs`: what a change does, behind the [`Effects`] seam (one host's: [`LocalEffects`]).
//!
//! Delivery is at least once; a message is handled in this order, and deleted only at the end:
//!
//! | step | a crash here means |
//! |---|---|
//! | read; not readable (not JSON, no known envelope, an unknown action, nobody to match) ⇒ WARN, counted, **not deleted** | the queue's redrive policy takes it (to its dead-letter queue after `maxReceiveCount`) |
//! | one of its ids seen ⇒ deleted (a change still pending is applied first) | — |
//! | its ids and the customer's new state written to the ledger (fsync) | at the next start the state's effect is applied |
//! | the effect applied, durable (a flush checkpointed; dead letters synced) | the same |
//! | the change marked applied in the ledger (fsync) | the message comes again, is seen, and is deleted |
//! | the message deleted | the same |
//!
//! A failing queue (unreachable, access denied) is retried with the one backoff; meterd goes on
//! ingesting and submitting, `/readyz` stays ready, and `meterd_notifications_receiving` and
//! `meterd status` show it.

mod effects;
mod envelope;
mod ledger;
mod queue;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::Context;
pub use effects::{EffectError, Effects, FINAL_WINDOW, LocalEffects};
pub use envelope::{Change, Invalid, Notice, parse};
pub use ledger::{CustomerState, Ledger, LedgerError, State, Transition};
pub use queue::{Queue, QueueError, QueueSettings, Received, SqsQueue};
pub use status::{ConsumerReport, CustomerReport, Shared};

/// Test fault point: the consumer stops before its first delete after an effect, and waits
/// there until meterd stops (the crash tests kill it there).
pub const HOLD_DELETE_ENV: &str = "METERD_TEST_NOTIFICATIONS_HOLD_DELETE";

/// The longest pause between receives after SQS failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// An instant as RFC 3339.
pub(crate) fn time_text(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Duplicate,
    Ignored,
    Invalid,
    /// Its effect or the ledger failed: left in the queue, to come again.
    Failed,
}

/// The consumer: one task, one message at a time.
pub struct Consumer<Q, E> {
    pub ctx: Context,
    pub queue: Q,
    pub effects: E,
    pub shared: Arc<Shared>,
    /// The configured product codes: a notification for another product is ignored.
    pub products: Vec<String>,
}

impl<Q: Queue, E: Effects> Consumer<Q, E> {
    /// Applies what the ledger holds (pending changes, ending and ended customers), then
    /// receives until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        self.ctx.metrics.notifications.enabled.set(1);
        self.restore().await;
        let hold = std::env::var_os(HOLD_DELETE_ENV).is_some();
        let mut failures = 0u32;
        let mut reflush = tokio::time::interval(effects::REFLUSH_EVERY);
        reflush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut compacted = self.ctx.clock.now();
        loop {
            let received = tokio::select! {
                received = self.queue.receive() => received,
                _ = reflush.tick() => {
                    self.reflush().await;
                    continue;
                }
                _ = cancel.cancelled() => return,
            };
            match received {
                Ok(messages) => {
                    failures = 0;
                    self.shared.receiving(None);
                    self.ctx.metrics.notifications.receiving.set(1);
                    for message in messages {
                        if !self.handle(message, hold, &cancel).await {
                            return;
                        }
                    }
                }
                Err(err) => {
                    failures += 1;
                    self.receive_failed(&err, failures);
                    let pause = crate::backoff::delay(Duration::from_secs(1), MAX_BACKOFF, failures);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = cancel.cancelled() => return,
                    }
                }
            }
            let now = self.ctx.clock.now();
            if now - compacted >= 3600 {
                compacted = now;
                if let Err(err) = self.shared.ledger().compact(now) {
                    tracing::error!(%err, "compacting the notification ledger failed; will try again");
                }
            }
        }
    }

    fn receive_failed(&self, err: &QueueError, failures: u32) {
        let metrics = &self.ctx.metrics.notifications;
        metrics.errors.with_label_values(&["receive"]).inc();
        metrics.receiving.set(0);
        self.shared.receiving(Some(err.to_string()));
        // The first failure is an ERROR (an operator must act: credentials, the queue policy,
        // the network); the retries after it repeat it at WARN.
        if failures == 1 {
            tracing::error!(error = %err, "cannot receive notifications from SQS; metering goes on, subscription changes wait in the queue");
        } else {
            tracing::warn!(error = %err, failures, "still cannot receive notifications from SQS");
        }
    }

    /// Applies, at start, what the ledger says: changes not yet applied, and the effects that
    /// last (an ended customer's dead letters; an ending one's window).
    async fn restore(&self) {
        let now = self.ctx.clock.now();
        let states: Vec<CustomerState> = self.shared.ledger().customers().cloned().collect();
        for state in states {
            let current = &state.current;
            let lasting = match current.state {
                State::Ended => true,
                State::Ending => current.at + FINAL_WINDOW > now,
                State::Subscribed => false,
            };
            if !state.applied || lasting {
                let _ = self.apply(current).await;
            }
        }
        self.shared.update_gauges(&self.ctx);
    }

    /// Seals the newly begun hours of customers still in their final window.
    async fn reflush(&self) {
        let now = self.ctx.clock.now();
        let ending: Vec<Transition> = self
            .shared
            .ledger()
            .customers()
            .filter(|c| c.current.state == State::Ending && c.current.at + FINAL_WINDOW > now)
            .map(|c| c.current.clone())
            .collect();
        for change in ending {
            // The same effect again, for hours begun since: nothing to mark.
            if let Err(err) = self.effects.apply(&change).await {
                tracing::warn!(%err, "sealing an ending customer's new hours failed; will try again");
            }
        }
    }

    /// Applies `change`'s effect and marks it applied; false if either failed.
    async fn apply(&self, change: &Transition) -> bool {
        match self.effects.apply(change).await {
            Ok(records) => {
                tracing::info!(subscriber = %change.subscriber.describe(), state = change.state.as_str(), records, message = %change.message, "subscription change applied");
                let marked = self.shared.ledger().applied(&change.message);
                marked.map_err(|err| tracing::error!(%err, "cannot record an applied change")).is_ok()
            }
            Err(err) => {
                self.ctx.metrics.notifications.errors.with_label_values(&["effect"]).inc();
                tracing::warn!(%err, message = %change.message, "a subscription change could not be applied; it is applied again at the next start or delivery");
                false
            }
        }
    }
}

mod handle;
