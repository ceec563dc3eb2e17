//! Aggregation of usage events into hourly records per (product or license, customer, dimension,
//! UTC hour): the open hours in [`Aggregator`], and the [`SealedRecord`] every later stage works on.

mod frozen;
mod hours;
mod ids;
mod intern;
mod open;
mod record;
mod table;

pub use hours::{Admission, AdmitError, Admitted, Aggregator, Delta, Heartbeat, Rules};
pub use ids::{ClientId, ID_TTL_SECS, IdDelta, IdEntry, IdKey, digest, id_print};
pub use open::Prepared;
pub use record::{Allocation, MAX_RECORD_BYTES, SealedRecord, allocation_len, base_len, json_str_len};
