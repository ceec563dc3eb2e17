//! What the consumer shares with the admin socket: the ledger (customers' states) and the
//! consumer's own state, for `meterd status` and `meterd customer`.

use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::ledger::{Ledger, Transition};
use crate::context::Context;

/// The consumer's state in `meterd status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerReport {
    pub queue_url: String,
    /// `starting`, `receiving`, or `failing` (SQS unreachable or refusing).
    pub state: String,
    pub last_error: Option<String>,
    /// When the last message was received (RFC 3339).
    pub last_message: Option<String>,
    /// For the last message: seconds from SQS taking it to meterd receiving it.
    pub lag_secs: Option<i64>,
    /// The last message meterd could not act on: its id and why.
    pub last_invalid: Option<(String, String)>,
    /// Messages by outcome since start (applied, duplicate, ignored, invalid) and SQS errors.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// Customers by lifecycle state.
    pub customers: std::collections::BTreeMap<String, usize>,
}

/// One customer's lifecycle in `meterd customer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerReport {
    /// `<ids> / <product or license>`.
    pub subscription: String,
    pub state: String,
    pub since: String,
    pub by: String,
    pub applied: bool,
    /// Earlier changes, oldest first: `<time> <state> (<kind> <message>)`.
    pub history: Vec<String>,
}

fn line(change: &Transition) -> String {
    format!("{} {} ({} {})", super::time_text(change.at), change.state.as_str(), change.kind, change.message)
}

/// Shared between the consumer and the admin socket; never held across an await.
pub struct Shared {
    ledger: Mutex<Ledger>,
    consumer: Mutex<ConsumerReport>,
}

impl Shared {
    pub fn new(ledger: Ledger, queue_url: &str) -> Self {
        let consumer =
            ConsumerReport { queue_url: queue_url.into(), state: "starting".into(), ..Default::default() };
        Self { ledger: Mutex::new(ledger), consumer: Mutex::new(consumer) }
    }

    pub(super) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn consumer(&self) -> MutexGuard<'_, ConsumerReport> {
        self.consumer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receive succeeded (`None`) or failed.
    pub(super) fn receiving(&self, error: Option<String>) {
        let mut consumer = self.consumer();
        consumer.state = if error.is_some() { "failing" } else { "receiving" }.into();
        if error.is_some() {
            consumer.last_error = error;
        }
    }

    pub(super) fn invalid(&self, id: &str, reason: &str) {
        self.consumer().last_invalid = Some((id.into(), reason.into()));
    }

    /// The customer gauges, from the ledger.
    pub(super) fn update_gauges(&self, ctx: &Context) {
        for (state, count) in self.ledger().counts() {
            ctx.metrics.customer.lifecycle.with_label_values(&[state.as_str()]).set(count as i64);
        }
    }

    /// The consumer's report, with counts from `ctx`'s metrics.
    pub fn report(&self, ctx: &Context) -> ConsumerReport {
        let mut report = self.consumer().clone();
        let metrics = &ctx.metrics.notifications;
        let last = metrics.last_message.get();
        report.last_message = (last > 0).then(|| super::time_text(last));
        report.lag_secs = (last > 0).then(|| metrics.lag.get());
        for outcome in crate::telemetry::metrics::NOTIFICATION_OUTCOMES {
            report.counts.insert(outcome.into(), metrics.messages.with_label_values(&[outcome]).get());
        }
        let errors: u64 = crate::telemetry::metrics::NOTIFICATION_ERRORS
            .iter()
            .map(|op| metrics.errors.with_label_values(&[op]).get())
            .sum();
        report.counts.insert("errors".into(), errors);
        for (state, count) in self.ledger().counts() {
            report.customers.insert(state.as_str().into(), count);
        }
        report
    }

    /// The lifecycle of every subscription that names `customer`.
    pub fn customer(&self, customer: &str) -> Vec<CustomerReport> {
        let ledger = self.ledger();
        let named =
            ledger.customers().filter(|c| c.current.subscriber.customers.iter().any(|id| id == customer));
        named
            .map(|c| CustomerReport {
                subscription: c.current.subscriber.describe(),
                state: c.current.state.as_str().into(),
                since: super::time_text(c.current.at),
                by: format!("{} {}", c.current.kind, c.current.message),
                applied: c.applied,
                history: c.history.iter().map(line).collect(),
            })
            .collect()
    }
}
