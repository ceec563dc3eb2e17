//! `meterd customer ID`: one customer's subscription lifecycle (as notifications reported it),
//! its open hours (from the commit stage, which owns them) and its sealed records by state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::view::time_text;
use crate::aggregate::SealedRecord;
use crate::model::Customer;
use crate::notifications::CustomerReport;
use crate::outbox::{RecordState, StoredRecord};

/// One open record of the customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenView {
    /// The product code, or `(license)`.
    pub product: String,
    pub dimension: String,
    pub hour: String,
    pub quantity: u64,
}

/// What `meterd customer ID` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerView {
    pub customer: String,
    /// `None`: the notification consumer is off.
    pub lifecycle: Option<Vec<CustomerReport>>,
    pub open: Vec<OpenView>,
    /// Sealed records by state (pending, accepted, dead_letter).
    pub records: BTreeMap<String, u64>,
}

fn is(customer: &str, key: &Customer) -> bool {
    matches!(key, Customer::AwsAccountId(id) | Customer::Identifier(id) if id == customer)
}

impl CustomerView {
    pub fn new(
        customer: &str,
        lifecycle: Option<Vec<CustomerReport>>,
        open: Vec<SealedRecord>,
        sealed: &[StoredRecord],
    ) -> Self {
        let mut open: Vec<OpenView> = open
            .into_iter()
            .map(|r| OpenView {
                product: r.key.scope.product_label().to_string(),
                dimension: r.key.dimension.clone(),
                hour: time_text(r.key.hour),
                quantity: u64::from(r.quantity),
            })
            .collect();
        open.sort_by(|a, b| (&a.hour, &a.product, &a.dimension).cmp(&(&b.hour, &b.product, &b.dimension)));
        let mut records = BTreeMap::new();
        for stored in sealed.iter().filter(|s| is(customer, &s.record.key.customer)) {
            let state = match stored.state {
                RecordState::Pending => "pending",
                RecordState::Accepted { .. } => "accepted",
                RecordState::DeadLetter { .. } => "dead_letter",
                RecordState::Shipped { .. } => "shipped",
            };
            *records.entry(state.to_string()).or_default() += 1;
        }
        Self { customer: customer.into(), lifecycle, open, records }
    }

    /// Plain text for a person.
    pub fn text(&self) -> String {
        let mut out = format!("customer {}\n", self.customer);
        match &self.lifecycle {
            None => out.push_str("lifecycle: unknown (notifications.queue_url is not set)\n"),
            Some(list) if list.is_empty() => out.push_str("lifecycle: no notification names this customer\n"),
            Some(list) => {
                for c in list {
                    let applied = if c.applied { "" } else { " (effect not applied yet)" };
                    out.push_str(&format!(
                        "lifecycle: {} {} since {} by {}{applied}\n",
                        c.subscription, c.state, c.since, c.by
                    ));
                    c.history.iter().for_each(|h| out.push_str(&format!("  {h}\n")));
                }
            }
        }
        out.push_str(&format!("open records: {}\n", self.open.len()));
        for o in &self.open {
            out.push_str(&format!("  {} {} {} quantity {}\n", o.hour, o.product, o.dimension, o.quantity));
        }
        let records: Vec<String> = self.records.iter().map(|(s, n)| format!("{s} {n}")).collect();
        out.push_str(&format!(
            "sealed records: {}\n",
            if records.is_empty() { "none".into() } else { records.join(", ") }
        ));
        out
    }
}
