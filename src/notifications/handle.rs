//! One message through the steps of the module header.

use tokio_util::sync::CancellationToken;

use super::envelope::{Change, Notice};
use super::ledger::{State, Transition};
use super::queue::{Queue, Received};
use super::{Consumer, Effects, Outcome};

impl<Q: Queue, E: Effects> Consumer<Q, E> {
    /// Handles one message; false once `cancel` ended a test hold.
    pub(super) async fn handle(&self, message: Received, hold: bool, cancel: &CancellationToken) -> bool {
        let now = self.ctx.clock.now();
        let metrics = &self.ctx.metrics.notifications;
        metrics.last_message.set(now);
        if let Some(sent) = message.sent_at_ms {
            metrics.lag.set((now - sent / 1000).max(0));
        }
        let outcome = match super::parse(&message.body) {
            Ok(notice) => self.act(&message, notice, now).await,
            Err(invalid) => {
                tracing::warn!(message_id = %message.id, reason = %invalid, "a notification meterd cannot act on; left in the queue for its redrive policy");
                self.shared.invalid(&message.id, &invalid.to_string());
                Outcome::Invalid
            }
        };
        let label = match outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Invalid => "invalid",
            Outcome::Failed => return true,
        };
        metrics.messages.with_label_values(&[label]).inc();
        self.shared.update_gauges(&self.ctx);
        if outcome == Outcome::Invalid {
            return true;
        }
        if hold && outcome == Outcome::Applied {
            tracing::warn!(message_id = %message.id, "{} is set: holding before the delete (tests only)", super::HOLD_DELETE_ENV);
            cancel.cancelled().await;
            return false;
        }
        if let Err(err) = self.queue.delete(&message.receipt).await {
            metrics.errors.with_label_values(&["delete"]).inc();
            tracing::warn!(message_id = %message.id, error = %err, "cannot delete a handled notification; when it comes again it is a duplicate");
        }
        true
    }

    /// What a readable notice does.
    async fn act(&self, message: &Received, notice: Notice, now: i64) -> Outcome {
        let mut ids = notice.ids.clone();
        ids.push(format!("sqs:{}", message.id));
        let (seen, pending) = {
            let ledger = self.shared.ledger();
            (ledger.seen(&ids), ledger.pending(&ids))
        };
        if seen {
            tracing::info!(message_id = %message.id, kind = %notice.kind, "a notification seen before; no second effect");
            if let Some(change) = pending
                && !self.apply(&change).await
            {
                return Outcome::Failed;
            }
            return Outcome::Duplicate;
        }
        let state = match (&notice.change, &notice.subscriber) {
            (Change::Subscribed, Some(_)) => State::Subscribed,
            (Change::Ending, Some(_)) => State::Ending,
            (Change::Ended, Some(_)) => State::Ended,
            (Change::Ignored(why), _) => return self.ignore(&ids, &notice, why, now),
            (_, None) => unreachable!("envelope::parse gives every effect a subscriber"),
        };
        let subscriber = notice.subscriber.clone().expect("matched above");
        if let Some(product) = &subscriber.product
            && !self.products.contains(product)
        {
            return self.ignore(&ids, &notice, &format!("product {product} is not configured"), now);
        }
        let change =
            Transition { subscriber, state, kind: notice.kind.clone(), message: ids[0].clone(), at: now };
        if let Err(err) = self.shared.ledger().record(&ids, Some(change.clone()), now) {
            tracing::error!(%err, message_id = %message.id, "cannot record a notification; left in the queue");
            self.ctx.metrics.notifications.errors.with_label_values(&["effect"]).inc();
            return Outcome::Failed;
        }
        self.ctx.metrics.notifications.effects.with_label_values(&[state.as_str()]).inc();
        tracing::info!(message_id = %message.id, kind = %notice.kind, subscriber = %change.subscriber.describe(), state = state.as_str(), "subscription notification");
        if self.apply(&change).await { Outcome::Applied } else { Outcome::Failed }
    }

    fn ignore(&self, ids: &[String], notice: &Notice, why: &str, now: i64) -> Outcome {
        tracing::info!(kind = %notice.kind, ids = ?ids, %why, "notification ignored");
        match self.shared.ledger().record(ids, None, now) {
            Ok(()) => Outcome::Ignored,
            Err(err) => {
                tracing::error!(%err, "cannot record a notification; left in the queue");
                Outcome::Failed
            }
        }
    }
}
