//! Aggregation of usage events into hourly records per (product or license, customer, dimension,
//! UTC hour). So far this holds the sealed record, the unit every later stage works on.

mod record;

pub use record::{Allocation, Customer, MAX_QUANTITY, RecordKey, Scope, SealedRecord, TagSet};
