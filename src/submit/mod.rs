//! Submission of sealed records to the Metering Service: the [`MeteringApi`] seam and the submit loop.

pub mod api;
mod submitter;

pub use api::{
    ApiFailure, Disposition, MeteringApi, RecordOutcome, ResolvedCustomer, SdkMeteringApi, classify,
};
pub use submitter::{Control, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, Settings, Submitter};
