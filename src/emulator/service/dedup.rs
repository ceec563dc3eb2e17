//! The dedup store: every accepted metering record, in order of acceptance, keyed per billing
//! scope, customer (or calling buyer), dimension and UTC hour, as the service keys them. The first
//! quantity accepted for a key wins: the same quantity again is the record already there, with
//! its id, which is what makes a client's retries safe; a different quantity is a duplicate, which
//! each operation answers in its own way (see [`super::operations`]). `GET /_emulator/records`
//! lists the store.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::emulator::wire::{Quantity, UsageRecord};

/// One accepted metering record, as `GET /_emulator/records` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedRecord {
    pub metering_record_id: String,
    pub operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub license_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_aws_account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_identifier: Option<String>,
    /// The access key id that sent it.
    pub caller: String,
    pub dimension: String,
    /// Start of the UTC hour it bills, epoch seconds.
    pub hour: i64,
    /// The `Timestamp` as first sent, epoch seconds.
    pub timestamp: i64,
    pub quantity: Value,
    pub allocations: Vec<Value>,
    /// When the emulator accepted it, epoch seconds on the emulator's clock.
    pub accepted_at: i64,
    /// The MeterUsage `ClientToken` of the call that stored it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// The quantity duplicates are compared by, in millionths (so `5` and `"5.0"` are the same).
    #[serde(skip)]
    pub(super) exact_quantity: Quantity,
}

/// What makes two records the same usage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum RecordKey {
    Batch { scope: String, customer: String, dimension: String, hour: i64 },
    Meter { caller: String, product: String, dimension: String, hour: i64 },
}

impl RecordKey {
    /// A BatchMeterUsage record: per license if it names one, else per product of the call; per
    /// customer by the field that names it, prefixed so that an account id and a customer
    /// identifier never meet.
    pub(super) fn batch(record: &UsageRecord, product: &str) -> Self {
        let scope = match &record.license_arn {
            Some(arn) => format!("license:{arn}"),
            None => format!("product:{product}"),
        };
        let customer = match &record.customer_aws_account_id {
            Some(acct) => format!("account:{acct}"),
            None => format!("identifier:{}", record.customer().unwrap_or_default()),
        };
        Self::Batch { scope, customer, dimension: record.dimension.clone(), hour: hour_of(record.timestamp) }
    }

    /// A MeterUsage call: the buyer who sends it, the product, the dimension, the hour.
    pub(super) fn meter(caller: &str, product: &str, dimension: &str, hour: i64) -> Self {
        Self::Meter {
            caller: caller.to_string(),
            product: product.to_string(),
            dimension: dimension.to_string(),
            hour,
        }
    }
}

/// The start of the UTC hour a timestamp falls in (epoch seconds; rounds down before 1970 too).
pub(super) fn hour_of(timestamp: i64) -> i64 {
    timestamp.div_euclid(3600) * 3600
}

/// A record whose key is taken by another quantity.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Duplicate;

#[derive(Default)]
pub(super) struct DedupStore {
    records: Vec<AcceptedRecord>,
    index: HashMap<RecordKey, usize>,
}

impl DedupStore {
    /// Stores a record under its key, or compares it with the one already there. `Ok(id)` for a
    /// new record (given a fresh id) or the same quantity again (the first one's id).
    pub(super) fn accept(&mut self, key: RecordKey, mut record: AcceptedRecord) -> Result<String, Duplicate> {
        if let Some(&at) = self.index.get(&key) {
            let existing = &self.records[at];
            return if existing.exact_quantity == record.exact_quantity {
                Ok(existing.metering_record_id.clone())
            } else {
                Err(Duplicate)
            };
        }
        record.metering_record_id = uuid::Uuid::new_v4().to_string();
        let id = record.metering_record_id.clone();
        self.index.insert(key, self.records.len());
        self.records.push(record);
        Ok(id)
    }

    /// Every accepted record, in order of acceptance.
    pub(super) fn records(&self) -> &[AcceptedRecord] {
        &self.records
    }

    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(quantity: u64) -> AcceptedRecord {
        AcceptedRecord {
            metering_record_id: String::new(),
            operation: "MeterUsage",
            product_code: Some("p".into()),
            license_arn: None,
            customer_aws_account_id: None,
            customer_identifier: None,
            caller: "AKID".into(),
            dimension: "d".into(),
            hour: 3600,
            timestamp: 3601,
            quantity: Quantity::from_units(quantity).to_json(),
            allocations: Vec::new(),
            accepted_at: 3700,
            client_token: None,
            exact_quantity: Quantity::from_units(quantity),
        }
    }

    #[test]
    fn the_first_quantity_wins() {
        let mut store = DedupStore::default();
        let key = || RecordKey::meter("AKID", "p", "d", 3600);
        let id = store.accept(key(), record(5)).unwrap();
        assert_eq!(store.accept(key(), record(5)), Ok(id.clone()), "the same quantity again: same id");
        assert_eq!(store.accept(key(), record(6)), Err(Duplicate));
        let next_hour = store.accept(RecordKey::meter("AKID", "p", "d", 7200), record(6)).unwrap();
        assert_ne!(next_hour, id);
        assert_eq!(store.records().len(), 2);
        store.clear();
        assert!(store.records().is_empty());
    }

    #[test]
    fn hours_round_down_including_before_the_epoch() {
        assert_eq!(hour_of(7199), 3600);
        assert_eq!(hour_of(7200), 7200);
        assert_eq!(hour_of(-1), -3600);
    }
}
