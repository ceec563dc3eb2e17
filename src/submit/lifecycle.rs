//! What the submit loop does with a customer's subscription lifecycle, as the notification
//! consumer reports it ([`Control::Hasten`], [`Control::Ended`], [`Control::Subscribed`]):
//!
//! | control | the loop |
//! |---|---|
//! | `Hasten` (the subscription is ending) | the customer's due records go ahead of every other record until `until` |
//! | `Ended` (the subscription ended) | its records waiting after `CustomerNotSubscribed` become dead letters now, naming the notification, and so does any record refused that way later |
//! | `Subscribed` | its records waiting for a re-check are offered now, and it is no longer ended |
//!
//! None of this changes a record: what is sent is still the frozen record.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::api::MeteringApi;
use super::submitter::{Entry, QueueKey, Submitter};
use crate::model::{DeadReason, Subscriber};

/// A lifecycle change from the notification consumer.
#[derive(Debug)]
pub enum Lifecycle {
    /// The subscription is ending: its records go first until `until` (epoch seconds, meterd's
    /// clock). Answers at once.
    Hasten { subscriber: Subscriber, until: i64, reply: oneshot::Sender<()> },
    /// The subscription ended: its records refused `CustomerNotSubscribed` become dead letters at
    /// once, their reason naming `note`. Answers how many became dead letters now, once durable.
    Ended { subscriber: Subscriber, note: String, reply: oneshot::Sender<usize> },
    /// The customer subscribed (again): its records waiting for a re-check are offered now.
    /// Answers how many.
    Subscribed { subscriber: Subscriber, reply: oneshot::Sender<usize> },
}

/// Whether two subscriptions may be the same one: a customer id in common, and the same product
/// where both name one.
fn overlaps(a: &Subscriber, b: &Subscriber) -> bool {
    a.customers.iter().any(|c| b.customers.contains(c))
        && match (&a.product, &b.product) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

impl<A: MeteringApi> Submitter<A> {
    pub(super) fn lifecycle(&mut self, change: Lifecycle) {
        match change {
            Lifecycle::Hasten { subscriber, until, reply } => {
                let now = self.ctx.clock.now();
                self.hastened.retain(|(s, until)| *until > now && *s != subscriber);
                tracing::info!(subscriber = %subscriber.describe(), until, "records of an ending subscription go ahead of the backlog");
                self.hastened.push((subscriber, until));
                let _ = reply.send(());
            }
            Lifecycle::Ended { subscriber, note, reply } => {
                let keys: Vec<QueueKey> = self
                    .queue
                    .iter()
                    .filter(|(_, e)| e.awaiting.is_some() && subscriber.matches(&e.stored.record.key))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &keys {
                    let answer =
                        self.queue[key].awaiting.as_ref().map(|(_, a)| a.clone()).unwrap_or_default();
                    self.dead_letter(key, DeadReason::CustomerNotSubscribed, format!("{answer}; {note}"));
                }
                self.barrier();
                self.ctx.metrics.customer.ended_dead_letters.inc_by(keys.len() as u64);
                self.ended.retain(|(s, _)| *s != subscriber);
                self.ended.push((subscriber, note));
                self.update_gauges();
                let _ = reply.send(keys.len());
            }
            Lifecycle::Subscribed { subscriber, reply } => {
                self.ended.retain(|(s, _)| !overlaps(s, &subscriber));
                let now = Instant::now();
                let mut offered = 0;
                for entry in self.queue.values_mut() {
                    if entry.awaiting.is_some() && subscriber.matches(&entry.stored.record.key) {
                        entry.next_at = now;
                        offered += 1;
                    }
                }
                let _ = reply.send(offered);
            }
        }
    }

    /// The note of the ended subscription `key`'s record belongs to, if any.
    pub(super) fn ended_note(&self, key: &QueueKey) -> Option<String> {
        let record = &self.queue.get(key)?.stored.record.key;
        self.ended.iter().find(|(s, _)| s.matches(record)).map(|(_, note)| note.clone())
    }

    /// Whether `entry` belongs to a subscription that is ending (its records go first).
    pub(super) fn hastened(&self, entry: &Entry) -> bool {
        let now = self.ctx.clock.now();
        self.hastened.iter().any(|(s, until)| *until > now && s.matches(&entry.stored.record.key))
    }
}
