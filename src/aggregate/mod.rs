//! Aggregation of usage events into hourly records per (product or license, customer, dimension,
//! UTC hour): the open hours in [`Aggregator`], and the [`SealedRecord`] every later stage works on.

mod hours;
mod record;

pub use hours::{Admission, Admitted, Aggregator, Bucket, Delta, Heartbeat, ID_TTL_SECS, Rules};
pub use record::{Allocation, Customer, MAX_QUANTITY, RecordKey, Scope, SealedRecord, TagSet};
