//! Aggregation of usage events into hourly records per (product or license, customer, dimension,
//! UTC hour): the open hours in [`Aggregator`], and the [`SealedRecord`] every later stage works on.

mod hours;
mod record;

pub use hours::{Admission, AdmitError, Admitted, Aggregator, Bucket, Delta, Heartbeat, ID_TTL_SECS, Rules};
pub use record::{Allocation, SealedRecord};
