//! What a lifecycle change does, behind one seam ([`Effects`]) so that fleet mode can route the
//! same changes through its database. [`LocalEffects`] is one host's: the commit stage seals, the
//! submit loop sends first, dead-letters or re-checks.
//!
//! | state | effect |
//! |---|---|
//! | ending | the customer's records go ahead of the backlog for [`FINAL_WINDOW`]; its open hours that have begun are sealed now (`commit::Command::Flush`), durable before the answer; while the window lasts, again every [`REFLUSH_EVERY`] |
//! | ended | its records refused `CustomerNotSubscribed` become dead letters now, and later ones at once |
//! | subscribed | its records waiting for a re-check are offered now; no longer ended |
//!
//! Each effect depends on the state alone, so applying it again (after a crash, or while the
//! window lasts) changes nothing that was already done.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::ledger::{State, Transition};
use crate::commit::Command;
use crate::context::Context;
use crate::submit::{Control, Lifecycle};

/// How long after an end-of-subscription signal the service still takes the customer's usage.
pub const FINAL_WINDOW: i64 = 3600;

/// How often an ending customer's newly begun hours are sealed while the window lasts.
pub const REFLUSH_EVERY: Duration = Duration::from_secs(30);

/// An effect could not be applied: meterd is stopping.
#[derive(Debug, thiserror::Error)]
#[error("meterd is stopping: the {0} stage no longer takes requests")]
pub struct EffectError(&'static str);

/// Applies lifecycle changes. Fleet mode can implement it to record a change in PostgreSQL, for
/// every host to apply.
pub trait Effects: Send + Sync + 'static {
    /// Applies `change`; returns the records it sealed or dead-lettered. Durable on return.
    fn apply(&self, change: &Transition) -> impl Future<Output = Result<usize, EffectError>> + Send;
}

/// One host's effects: the commit stage and the submit loop.
pub struct LocalEffects {
    pub ctx: Context,
    pub commands: mpsc::Sender<Command>,
    pub controls: mpsc::Sender<Control>,
}

impl LocalEffects {
    async fn control<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Lifecycle) -> Result<T, EffectError> {
        let (reply, answer) = oneshot::channel();
        self.controls.send(Control::Lifecycle(make(reply))).await.map_err(|_| EffectError("submit"))?;
        answer.await.map_err(|_| EffectError("submit"))
    }

    /// Seals the customer's open hours that have begun, under each of its ids.
    async fn flush(&self, change: &Transition) -> Result<usize, EffectError> {
        let mut sealed = 0;
        for customer in &change.subscriber.customers {
            let (reply, answer) = oneshot::channel();
            let flush = Command::Flush {
                customer: Some(customer.clone()),
                product: change.subscriber.product.clone(),
                every_hour: false,
                reply,
            };
            self.commands.send(flush).await.map_err(|_| EffectError("commit"))?;
            sealed += answer.await.map_err(|_| EffectError("commit"))?;
        }
        self.ctx.metrics.customer.final_records.inc_by(sealed as u64);
        Ok(sealed)
    }
}

impl Effects for LocalEffects {
    async fn apply(&self, change: &Transition) -> Result<usize, EffectError> {
        let subscriber = change.subscriber.clone();
        match change.state {
            State::Ending => {
                // First: what the flush seals must find the customer already first in line.
                let until = change.at + FINAL_WINDOW;
                self.control(|reply| Lifecycle::Hasten { subscriber, until, reply }).await?;
                self.flush(change).await
            }
            State::Ended => {
                let note = format!(
                    "the subscription ended ({} notification {} at {})",
                    change.kind,
                    change.message,
                    super::time_text(change.at)
                );
                self.control(|reply| Lifecycle::Ended { subscriber, note, reply }).await
            }
            State::Subscribed => self.control(|reply| Lifecycle::Subscribed { subscriber, reply }).await,
        }
    }
}
